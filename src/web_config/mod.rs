//! `--web.config.file`: TLS, client certificates, basic auth and response headers for the
//! HTTP endpoints, in the Prometheus exporter-toolkit format (YAML), so the file an
//! operator already writes for node_exporter works here too.
//!
//! Loading reads and checks everything the file names (certificates, keys, CA bundle,
//! bcrypt hashes), so `check-config` and a live reload fail on exactly the same problems,
//! each reported with its key path (`tls_server_config.cert_file: cannot read …`).
//! The loaded [`WebConfig`] is immutable; [`live`] swaps a new one in when the file
//! changes and keeps the last good one when it does not load.
//!
//! Supported keys (exporter-toolkit names):
//! - `tls_server_config`: `cert_file`/`cert`, `key_file`/`key`, `client_auth_type`,
//!   `client_ca_file`/`client_ca`, `min_version`, `max_version`,
//!   `prefer_server_cipher_suites` (accepted and ignored, as Go does);
//! - `http_server_config`: `http2`, `headers` (the toolkit's five security headers);
//! - `basic_auth_users`: user → bcrypt hash (`htpasswd -nBC 10 USER`);
//! - vpswatch's one extension: `healthy_without_auth` (serve `/-/healthy` without basic
//!   auth, for load balancers and container health checks).
//!
//! Toolkit keys vpswatch does not implement (`cipher_suites`, `curve_preferences`,
//! `client_allowed_sans`, the no-verification client-auth types) are refused with a
//! reason instead of being silently ignored: a security setting that quietly does
//! nothing is worse than an error.

pub mod auth;
pub mod limits;
pub mod live;
pub mod section;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use vpswatch_model::problem::{ConfigError, Problem};

pub use auth::BasicAuth;
pub use tls::ClientAuth;

/// A loaded web configuration: what the server applies to connections and requests.
#[derive(Clone)]
pub struct WebConfig {
    /// TLS for new connections; `None` = plain HTTP.
    pub tls: Option<tls::TlsSettings>,
    /// Basic auth for every request; `None` = no authentication.
    pub auth: Option<Arc<BasicAuth>>,
    /// Added to every response (including 401s).
    pub headers: HeaderMap,
    /// Whether HTTP/2 is offered (ALPN `h2` with TLS; prior knowledge without).
    pub http2: bool,
    /// `/-/healthy` is served without basic auth (client certificates still apply: they
    /// are checked per connection).
    pub healthy_without_auth: bool,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.as_ref().map(|t| t.client_auth))
            .field("users", &self.auth.as_ref().map(|a| a.user_count()))
            .field("headers", &self.headers.len())
            .field("http2", &self.http2)
            .field("healthy_without_auth", &self.healthy_without_auth)
            .finish()
    }
}

impl Default for WebConfig {
    /// No web config file: plain HTTP, no auth, no extra headers.
    fn default() -> Self {
        Self {
            tls: None,
            auth: None,
            headers: HeaderMap::new(),
            http2: true,
            healthy_without_auth: false,
        }
    }
}

impl WebConfig {
    /// The URL scheme clients use.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A one-line summary for logs and `check-config` (never a secret).
    pub fn summary(&self) -> String {
        let tls = match &self.tls {
            None => "plain HTTP".to_string(),
            Some(t) => format!("TLS, client certificates: {}", t.client_auth.as_str()),
        };
        let auth = match &self.auth {
            None => "no basic auth".to_string(),
            Some(a) => format!(
                "basic auth for {} user{}{}",
                a.user_count(),
                if a.user_count() == 1 { "" } else { "s" },
                if self.healthy_without_auth {
                    " (except /-/healthy)"
                } else {
                    ""
                }
            ),
        };
        format!("{tls}; {auth}; {} extra header(s)", self.headers.len())
    }
}

// ---------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawWebConfig {
    tls_server_config: Option<tls::RawTls>,
    http_server_config: RawHttp,
    basic_auth_users: BTreeMap<String, String>,
    healthy_without_auth: bool,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawHttp {
    http2: bool,
    headers: BTreeMap<String, String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            http2: true,
            headers: BTreeMap::new(),
        }
    }
}

/// Loads and checks a web configuration file. Also returns every file it read, so the
/// reloader can notice a renewed certificate as well as an edited config.
pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
    load_tracked(path).0
}

/// [`load`] plus the files it depends on (the config itself first), known even when
/// loading fails part-way.
pub fn load_tracked(path: &Path) -> (Result<WebConfig, ConfigError>, Vec<PathBuf>) {
    let file = path.display().to_string();
    let mut deps = vec![path.to_path_buf()];
    let text = match read_limited(path)
        .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("not UTF-8 text")))
    {
        Ok(t) => t,
        Err(e) => {
            return (
                Err(ConfigError {
                    file,
                    problems: vec![Problem {
                        path: String::new(),
                        message: format!("cannot read the file: {e}"),
                    }],
                }),
                deps,
            )
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let result = parse(&text, base, &mut deps).map_err(|problems| ConfigError { file, problems });
    (result, deps)
}

/// Parses web configuration text; relative file names are resolved against `base` (the
/// directory of the config file, as the exporter toolkit does). Files read are appended
/// to `deps`.
pub fn parse(text: &str, base: &Path, deps: &mut Vec<PathBuf>) -> Result<WebConfig, Vec<Problem>> {
    let flow = flow_collections(text);
    if flow > MAX_FLOW_COLLECTIONS {
        return Err(vec![Problem {
            path: String::new(),
            message: format!(
                "refused before parsing: {flow} '[' or '{{' characters, at most \
                 {MAX_FLOW_COLLECTIONS} accepted (flow collections nest that deep at most; \
                 a web config needs a handful)"
            ),
        }]);
    }
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: format!("not valid YAML: {}", one_line(&e.to_string())),
        }]
    })?;
    let mut problems = Vec::new();
    // An empty file is a valid, empty configuration (as in the exporter toolkit).
    let raw: RawWebConfig = if value.is_null() {
        RawWebConfig::default()
    } else {
        match read_yaml(value, &mut problems) {
            Some(r) => r,
            None => return Err(problems),
        }
    };

    let tls = match raw.tls_server_config {
        None => None,
        Some(t) => tls::build(t, raw.http_server_config.http2, base, deps, &mut problems),
    };
    let headers = check_headers(&raw.http_server_config.headers, &mut problems);
    let auth = if raw.basic_auth_users.is_empty() {
        None
    } else {
        BasicAuth::new(&raw.basic_auth_users, &mut problems).map(Arc::new)
    };
    if raw.healthy_without_auth && raw.basic_auth_users.is_empty() {
        problems.push(Problem {
            path: "healthy_without_auth".into(),
            message: "has no effect without basic_auth_users; remove it or add users".into(),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(WebConfig {
        tls,
        auth,
        headers,
        http2: raw.http_server_config.http2,
        healthy_without_auth: raw.healthy_without_auth,
    })
}

/// Deserializes the document, recording unknown keys and the first type error with
/// their key paths (`tls_server_config.min_versoin`).
fn read_yaml<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let mut on_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let de = serde_path_to_error::Deserializer::new(ignored, &mut track);
        T::deserialize(de)
    };
    for key in unknown {
        // serde_ignored shows an `Option` layer as `?`; it is not part of the key path.
        let path = key
            .split('.')
            .filter(|seg| *seg != "?")
            .collect::<Vec<_>>()
            .join(".");
        problems.push(Problem {
            path,
            message: "unknown key (check the spelling; see docs/security.md)".into(),
        });
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = track.path().to_string();
            problems.push(Problem {
                path: if path == "." { String::new() } else { path },
                message: one_line(&e.to_string()),
            });
            None
        }
    }
}

/// The headers the exporter toolkit lets a web config set, with its value rules.
const ALLOWED_HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

fn check_headers(raw: &BTreeMap<String, String>, problems: &mut Vec<Problem>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in raw {
        let path = format!("http_server_config.headers.{name}");
        let Some(canonical) = ALLOWED_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(name))
        else {
            problems.push(Problem {
                path,
                message: format!(
                    "this header cannot be configured (allowed: {})",
                    ALLOWED_HEADERS.join(", ")
                ),
            });
            continue;
        };
        let lower = value.trim().to_ascii_lowercase();
        let rule = match *canonical {
            "X-Content-Type-Options" if lower != "nosniff" => Some("must be \"nosniff\""),
            "X-Frame-Options" if lower != "deny" && lower != "sameorigin" => {
                Some("must be \"deny\" or \"sameorigin\"")
            }
            _ => None,
        };
        if let Some(rule) = rule {
            problems.push(Problem {
                path,
                message: format!("{value:?} {rule}"),
            });
            continue;
        }
        match (
            HeaderName::from_bytes(canonical.as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            (Ok(n), Ok(v)) => {
                out.insert(n, v);
            }
            _ => problems.push(Problem {
                path,
                message: "is not a valid header value (printable ASCII, no line breaks)".into(),
            }),
        }
    }
    out
}

/// `[` and `{` a web config may contain, nested or not. The YAML parser's time grows with
/// the square of the flow nesting depth (100,000 levels in 200 KB: minutes of CPU); the
/// count bounds that depth from above with a scan that cannot be fooled by quoting, and
/// a web config needs a handful. Block nesting needs no such guard: its depth costs
/// indentation, and the parser stops at its recursion limit early.
pub const MAX_FLOW_COLLECTIONS: usize = 64;

/// Counts the characters that can open a flow collection, quoted or not.
fn flow_collections(text: &str) -> usize {
    text.bytes().filter(|b| matches!(b, b'[' | b'{')).count()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Files the web config reads (itself, certificates, keys, CA bundles) are small; a
/// larger one is refused instead of read (a path such as /dev/zero must not exhaust
/// memory).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads at most [`MAX_FILE_BYTES`] of a regular file; more, or anything else (a FIFO, a
/// device, a directory), is an error.
pub(crate) fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO would wait for a writer; without blocking, its type can be checked.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a FIFO, device or directory is refused)",
        ));
    }
    let mut out = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// Resolves a file name from the web config against the config file's directory.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let mut deps = Vec::new();
        match parse(text, Path::new("/nonexistent"), &mut deps) {
            Ok(_) => Vec::new(),
            Err(p) => p
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
        }
    }

    #[test]
    fn empty_file_is_plain_http() {
        let mut deps = Vec::new();
        let c = parse("", Path::new("."), &mut deps).expect("empty is valid");
        assert!(c.tls.is_none() && c.auth.is_none() && c.http2);
        let c = parse("# only a comment\n", Path::new("."), &mut deps).expect("valid");
        assert!(c.tls.is_none());
    }

    #[test]
    fn unknown_keys_have_paths() {
        let p = problems("tls_server_config:\n  cert_fil: x\nbasic_auth_user: {}\n");
        assert!(
            p.iter()
                .any(|l| l.starts_with("tls_server_config.cert_fil: unknown key")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("basic_auth_user: unknown key")),
            "{p:?}"
        );
    }

    #[test]
    fn headers_follow_the_toolkit_rules() {
        let p = problems(
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n    Server: x\n",
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("http_server_config.headers.X-Frame-Options:")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("http_server_config.headers.Server: this header")),
            "{p:?}"
        );
        let mut deps = Vec::new();
        let c = parse(
            "http_server_config:\n  headers:\n    strict-transport-security: max-age=31536000\n",
            Path::new("."),
            &mut deps,
        )
        .expect("valid");
        assert_eq!(
            c.headers
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000")
        );
    }

    #[test]
    fn type_errors_have_paths() {
        let p = problems("http_server_config:\n  http2: sometimes\n");
        assert!(
            p.iter().any(|l| l.starts_with("http_server_config.http2:")),
            "{p:?}"
        );
        let p = problems("- a\n- b\n");
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let p = problems(&deep);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(": refused before parsing: 100000 '['"),
            "{p:?}"
        );
        // Quoting does not hide brackets from the count.
        let quoted = format!("a: \"{}\"\n", "]".repeat(10) + &"[".repeat(100));
        assert!(problems(&quoted)[0].contains("refused before parsing"));
        // A handful is fine.
        let mut deps = Vec::new();
        let c = parse(
            "http_server_config: {http2: false, headers: {X-Frame-Options: deny}}\n",
            Path::new("."),
            &mut deps,
        )
        .expect("valid");
        assert!(!c.http2);
    }

    #[test]
    fn only_regular_files_are_read() {
        let err = read_limited(Path::new("/dev/zero")).expect_err("a device");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_limited(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_limited(&fifo).expect_err("a FIFO");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.path().join("big.yml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).expect("write");
        let err = read_limited(&big).expect_err("too large");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn healthy_without_auth_needs_users() {
        let p = problems("healthy_without_auth: true\n");
        assert!(p[0].starts_with("healthy_without_auth:"), "{p:?}");
    }
}
