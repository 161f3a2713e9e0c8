//! Secrets: loaded from a file or an environment variable, kept in a wrapper whose
//! `Debug` prints `[redacted]`, and never echoed in error messages (a message names the
//! file or variable, never its content, and even the name goes through
//! [`crate::redact`] in case a key was pasted where its path belongs). Secret files are
//! read with [`bounded_file::SECRET`]'s limit and must be regular files.

use std::fmt;
use std::path::Path;

use crate::bounded_file;

/// A value that must not be printed.
#[derive(Clone)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(v: T) -> Self {
        Self(v)
    }

    /// The secret itself; call sites are easy to audit with grep.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret came from, for messages.
pub enum SecretSource {
    File(String, &'static str),
    Env(String, &'static str),
}

impl SecretSource {
    pub fn key(&self) -> &'static str {
        match self {
            SecretSource::File(_, k) | SecretSource::Env(_, k) => k,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(p, _) => format!("file {p}"),
            SecretSource::Env(v, _) => format!("environment variable {v}"),
        }
    }
}

type Loaded = (String, SecretSource, Option<String>);

/// Loads a secret given exactly one of a file path and an env variable name. Returns
/// the trimmed text, where it came from, and an optional warning (loose file
/// permissions). Errors are (config key, reason).
pub fn load_one(
    file: Option<&Path>,
    env_name: Option<&str>,
    file_key: &'static str,
    env_key: &'static str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, (&'static str, String)> {
    match (file, env_name) {
        (Some(_), Some(_)) => Err((
            file_key,
            format!("set either {file_key} or {env_key}, not both"),
        )),
        (None, None) => Err((
            file_key,
            format!("missing: set {file_key} (a file holding the secret) or {env_key} (an environment variable name)"),
        )),
        (Some(path), None) => {
            let shown = shown_path(path);
            let text = bounded_file::read_text(path, bounded_file::SECRET)
                .map_err(|e| (file_key, format!("cannot read {shown}: {e}")))?;
            let warning = loose_permissions(path);
            let text = text.trim().to_string();
            if text.is_empty() {
                return Err((file_key, format!("{shown} is empty")));
            }
            Ok((text, SecretSource::File(shown, file_key), warning))
        }
        (None, Some(var)) => {
            let shown = shown_variable(var);
            let text = env(var)
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    (
                        env_key,
                        format!("environment variable {shown} is not set or empty"),
                    )
                })?;
            Ok((text, SecretSource::Env(shown, env_key), None))
        }
    }
}

/// A secret file's path for messages. Only shown when it is plainly a path (absolute, or
/// naming something that exists): a password pasted into a `*_file` key looks like a
/// relative path to a missing file, and no pattern tells a password from a file name.
fn shown_path(path: &Path) -> String {
    if path.is_absolute() || path.symlink_metadata().is_ok() {
        crate::redact::path(path)
    } else {
        "<a relative path, not shown in case it is a pasted secret; use an absolute path>".into()
    }
}

/// A variable name for messages, shown only when it is one (letters, digits, `_`): a
/// password pasted into a `*_env` key is usually not.
fn shown_variable(var: &str) -> String {
    let is_name = var.len() <= crate::redact::VALUE_CAP
        && var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if is_name {
        crate::redact::value(var)
    } else {
        "<not a variable name, not shown in case it is a pasted secret>".into()
    }
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            crate::redact::path(path),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_: &Path) -> Option<String> {
    None
}

/// Why a secret file's text is not a usable key. The messages describe the problem and
/// never echo the text: it may be a secret of another kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "holds a public key (npub); vpswatch needs the secret key (nsec1… or 64 hex characters)"
    )]
    NostrPublicKey,
    #[error("is not a Nostr secret key (expected nsec1… or 64 hex characters)")]
    NotNostrKey,
    #[error("is not a valid Nostr secret key (bad checksum or out of range)")]
    InvalidNostrKey,
    #[error("holds a Nostr key; stablevps accounts need an API key (svps_live_…)")]
    NostrKeyForApi,
    #[error(
        "contains spaces, control or non-ASCII characters; an API key is one \
         word like svps_live_ followed by hex characters"
    )]
    NotOneWord,
}

/// Parses a Nostr secret key given as `nsec1…` or 64 hex characters.
pub fn parse_nostr_key(text: &str) -> Result<nostr::Keys, KeyError> {
    let t = text.trim();
    if t.starts_with("npub1") {
        return Err(KeyError::NostrPublicKey);
    }
    let looks_hex = t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit());
    if !(t.starts_with("nsec1") || looks_hex) {
        return Err(KeyError::NotNostrKey);
    }
    nostr::Keys::parse(t).map_err(|_| KeyError::InvalidNostrKey)
}

/// Checks a StableVPS API key. Returns the key and an optional note for a key that does
/// not look like StableVPS's `svps_live_…` (used anyway: the format is not a contract).
pub fn parse_api_key(text: &str) -> Result<(String, Option<String>), KeyError> {
    let t = text.trim();
    if t.starts_with("nsec1") || t.starts_with("npub1") {
        return Err(KeyError::NostrKeyForApi);
    }
    if !t.chars().all(|c| c.is_ascii_graphic()) {
        return Err(KeyError::NotOneWord);
    }
    let note = (!t.starts_with("svps_")).then(|| {
        "does not start with svps_ (StableVPS keys look like svps_live_…); using it anyway"
            .to_string()
    });
    Ok((t.to_string(), note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_forms() {
        let ok = parse_api_key(" svps_live_00ff \n").expect("valid");
        assert_eq!(ok, ("svps_live_00ff".to_string(), None));
        let (_, note) = parse_api_key("sk_other").expect("accepted with a note");
        assert!(note.is_some());
        for bad in [
            "svps live secret",
            "nsec1secretsecret",
            "svps_live_\u{e9}secret",
        ] {
            let why = parse_api_key(bad).expect_err("refused").to_string();
            assert!(!why.contains("secret"), "text echoed: {why}");
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "[redacted]");
    }

    #[test]
    fn nostr_key_forms() {
        let keys = nostr::Keys::generate();
        let hex = keys.secret_key().to_secret_hex();
        assert!(parse_nostr_key(&hex).is_ok());
        use nostr::ToBech32;
        let nsec = keys.secret_key().to_bech32().expect("bech32");
        assert!(parse_nostr_key(&nsec).is_ok());
        let npub = keys.public_key().to_bech32().expect("bech32");
        let err = parse_nostr_key(&npub)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("public key"), "{err}");
        let bad = parse_nostr_key("not-a-key")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !bad.contains("not-a-key"),
            "secret text must not be echoed: {bad}"
        );
    }
}
