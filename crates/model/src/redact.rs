//! Redaction of what configuration errors, warnings and `check-config` echo back.
//!
//! A message about a configuration may quote what the operator wrote: a path, a name, a
//! value the parser choked on. Operators paste keys into the wrong field (`nsec_file =
//! "nsec1…"`, `nsec_env = "<64 hex>"`, an unquoted `nsec = nsec1…`), so anything echoed
//! goes through here first:
//!
//! - key material is replaced by [`PLACEHOLDER`]: Nostr secret keys in bech32 (`nsec1…`,
//!   `ncryptsec1…`), runs of 32 or more hex digits (a 64-hex secret key, or most of
//!   one), StableVPS API keys (`svps_…`), Nostr Wallet Connect URIs, and the value in any
//!   `key = value` whose key names a password, secret, token, API key or nsec;
//! - every echoed value is capped at [`VALUE_CAP`] characters (paths at [`PATH_CAP`]),
//!   followed by its full size: `"aaaa…" (52428800 bytes)`;
//! - a whole message is capped at [`MESSAGE_CAP`] characters.

use std::borrow::Cow;
use std::path::Path;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What replaces key material.
pub const PLACEHOLDER: &str = "<redacted>";

/// Characters of one echoed value (a name, an address, a quoted string in a parser's
/// message).
pub const VALUE_CAP: usize = 64;

/// Characters of an echoed file path or key path: longer than a value, since the end of
/// a path is what tells files apart.
pub const PATH_CAP: usize = 128;

/// Characters of one whole message.
pub const MESSAGE_CAP: usize = 1024;

static KEY_MATERIAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?ix)
        # key = value, where the key names a secret: keep the key, drop the value
        (?P<kv>\b[a-z0-9_.\-]*(?:password|passwd|secret|token|nsec|api_?key|private_?key|nwc_uri)[a-z0-9_.\-]*\s*=\s*)
            (?:"(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s,;)\]]+)
        # a bech32 secret: long enough to be a key, not a file called nsec1.key
        | n(?:crypt)?sec1[0-9a-z]{6,}
        | nostr\+walletconnect:[^\s"'`]*
        # svps_live_<hex>: a word with a digit in it, not a file called svps_prod.key
        | svps_(?:[a-z]+_)*[0-9a-z]*[0-9][0-9a-z]*
        | [0-9a-f]{32,}
        "#,
    )
    .unwrap_or_else(|e| panic!("the key material pattern is valid: {e}"))
});

/// A quoted string in a message: "…" (Rust and serde quoting, with escapes) or `…`
/// (TOML's quoting of keys).
static QUOTED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""(?:[^"\\]|\\.)*"|`[^`]*`"#)
        .unwrap_or_else(|e| panic!("the quoted string pattern is valid: {e}"))
});

/// Replaces key material in `s` by [`PLACEHOLDER`].
pub fn key_material(s: &str) -> Cow<'_, str> {
    KEY_MATERIAL.replace_all(s, |c: &Captures<'_>| match c.name("kv") {
        Some(key) => format!("{}{PLACEHOLDER}", key.as_str()),
        None => PLACEHOLDER.to_string(),
    })
}

/// The first `max - 1` characters of `s` when it is longer than `max` characters.
fn head(s: &str, max: usize) -> Option<&str> {
    s.char_indices().nth(max)?;
    let cut = s
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(s.len(), |(i, _)| i);
    Some(&s[..cut])
}

/// `s` cut to `max` characters (the last one `…`) followed by ` (N bytes)`, N being
/// `original_len`; unchanged when it fits.
fn cap(s: &str, max: usize, original_len: usize) -> Cow<'_, str> {
    match head(s, max) {
        None => Cow::Borrowed(s),
        Some(h) => Cow::Owned(format!("{h}… ({original_len} bytes)")),
    }
}

/// A value from the configuration, fit to be echoed: key material replaced, at most
/// [`VALUE_CAP`] characters.
pub fn value(s: &str) -> String {
    cap(&key_material(s), VALUE_CAP, s.len()).into_owned()
}

/// A file path from the configuration or the command line, fit to be echoed.
pub fn path(p: &Path) -> String {
    let shown = p.display().to_string();
    cap(&key_material(&shown), PATH_CAP, shown.len()).into_owned()
}

/// A key path (`accounts[0].nsec_file`), fit to be echoed: unknown keys are the
/// operator's text.
pub fn key_path(s: &str) -> String {
    cap(&key_material(s), PATH_CAP, s.len()).into_owned()
}

/// A whole message, fit to be printed or logged: key material replaced, each quoted
/// string capped at [`VALUE_CAP`] characters, the message at [`MESSAGE_CAP`].
pub fn message(s: &str) -> String {
    let clean = key_material(s);
    let quoted = QUOTED.replace_all(&clean, |c: &Captures<'_>| {
        let all = c.get(0).map_or("", |m| m.as_str());
        let (open, inner) = all.split_at(1);
        let inner = &inner[..inner.len() - 1];
        match head(inner, VALUE_CAP) {
            None => all.to_string(),
            Some(h) => format!("{open}{h}…{open} ({} bytes)", inner.len()),
        }
    });
    cap(&quoted, MESSAGE_CAP, quoted.len()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e";
    const NSEC: &str = "nsec1dwg3l5muvawv5ctc3s7p2kmrszz8pyhdh8vj9ndvnt4d4tgu9n8qzf8a7y";

    #[test]
    fn key_material_is_replaced() {
        for (input, expected) in [
            (
                format!("cannot read {NSEC}: no such file"),
                "cannot read <redacted>: no such file".to_string(),
            ),
            (
                format!("variable {HEX} is not set"),
                "variable <redacted> is not set".into(),
            ),
            (
                "key svps_live_00ff11 here".into(),
                "key <redacted> here".into(),
            ),
            (
                "nostr+walletconnect://abc?relay=wss://r&secret=00 next".into(),
                "<redacted> next".into(),
            ),
            (
                "password = hunter2, more".into(),
                "password = <redacted>, more".into(),
            ),
            (
                "smtp_password=\"a b c\" rest".into(),
                "smtp_password=<redacted> rest".into(),
            ),
            ("nsec = nsec1abc".into(), "nsec = <redacted>".into()),
            (
                "set either nsec_file or nsec_env".into(),
                "set either nsec_file or nsec_env".into(),
            ),
            (
                "/etc/vpswatch/svps_prod.key".into(),
                "/etc/vpswatch/svps_prod.key".into(),
            ),
            (
                "/etc/vpswatch/nsec1.key".into(),
                "/etc/vpswatch/nsec1.key".into(),
            ),
            (
                "poll_interval = \"30s\"".into(),
                "poll_interval = \"30s\"".into(),
            ),
        ] {
            assert_eq!(key_material(&input), expected);
        }
    }

    #[test]
    fn values_and_quoted_strings_are_capped() {
        let long = "x".repeat(1000);
        let v = value(&long);
        assert_eq!(v, format!("{}… (1000 bytes)", "x".repeat(63)));
        let m = message(&format!(
            "invalid type: string \"{long}\", expected a duration"
        ));
        assert_eq!(
            m,
            format!(
                "invalid type: string \"{}…\" (1000 bytes), expected a duration",
                "x".repeat(63)
            )
        );
        // Capping is idempotent.
        assert_eq!(message(&m), m);
        assert!(message(&"b ".repeat(100_000)).chars().count() < MESSAGE_CAP + 32);
        assert_eq!(value("main"), "main");
        assert_eq!(
            value("é".repeat(70).as_str()).chars().count(),
            64 + " (140 bytes)".len()
        );
    }
}
