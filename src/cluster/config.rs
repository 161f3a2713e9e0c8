//! The `[cluster]` section: how a replica reaches etcd and who it is.
//!
//! ```toml
//! [cluster]
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//! member = "vpswatch-a"          # unique per replica; becomes a metric label
//! prefix = "/vpswatch"           # every key vpswatch writes lives under it
//! lease_ttl = "10s"              # a dead replica's accounts move after this
//! user = "vpswatch"              # etcd authentication (optional)
//! password_file = "/etc/vpswatch/etcd.password"
//! ca_file = "/etc/vpswatch/etcd-ca.pem"     # TLS (https:// endpoints)
//! cert_file = "/etc/vpswatch/etcd-client.pem"
//! key_file = "/etc/vpswatch/etcd-client.key"
//! source_address = "10.0.0.5"   # provider requests leave from this address
//! ```
//!
//! Without the section nothing of this runs: one process owns every account.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpswatch_model::bounded_file;
use vpswatch_model::config_doc::KeyDoc;
use vpswatch_model::problem::{check_label_name, read_section, Problem};
use vpswatch_model::secret::{load_one, Secret};

/// Default lease TTL: a dead replica's accounts move after about this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// etcd leases are whole seconds; below this a busy replica loses its lease to GC pauses.
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
struct RawCluster {
    #[serde(default)]
    endpoints: Vec<String>,
    member: Option<String>,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_ttl", with = "humantime_serde")]
    lease_ttl: Duration,
    user: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    source_address: Option<IpAddr>,
}

fn default_prefix() -> String {
    "/vpswatch".into()
}

fn default_ttl() -> Duration {
    DEFAULT_LEASE_TTL
}

/// TLS material for the etcd connection, read at load time (PEM).
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// CA bundle that signs the etcd servers' certificates; `None` = the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (mutual TLS).
    pub identity: Option<(Vec<u8>, Secret<Vec<u8>>)>,
}

/// A checked `[cluster]` section.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    /// This replica's name: its key under `<prefix>/members/` and its metric label.
    pub member: String,
    /// Without a trailing slash.
    pub prefix: String,
    pub lease_ttl: Duration,
    /// User name and password for etcd authentication.
    pub auth: Option<(String, Secret<String>)>,
    /// Set when any endpoint is `https://`.
    pub tls: Option<ClusterTls>,
    /// Where this replica's provider requests come from.
    pub source_address: Option<IpAddr>,
}

/// The `[cluster]` keys.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`[cluster]`"#,
        default: r#"—"#,
        meaning: r#"run as one replica of several coordinated through etcd (see [Cluster](cluster.md)); without it one process owns every account"#,
    },
    KeyDoc {
        key: r#"`cluster.endpoints`"#,
        default: r#"—"#,
        meaning: r#"etcd client URLs (`http://` or `https://host:port`), at least one"#,
    },
    KeyDoc {
        key: r#"`cluster.member`"#,
        default: r#"—"#,
        meaning: r#"this replica's name, unique in the cluster (1-64 of A-Z a-z 0-9 _ - .)"#,
    },
    KeyDoc {
        key: r#"`cluster.prefix`"#,
        default: r#"`/vpswatch`"#,
        meaning: r#"etcd key prefix of everything vpswatch writes (members, owners, intents)"#,
    },
    KeyDoc {
        key: r#"`cluster.lease_ttl`"#,
        default: r#"`10s`"#,
        meaning: r#"lease of this replica's registration (whole seconds, at least 2s): its accounts move to other replicas this long after it stops renewing"#,
    },
    KeyDoc {
        key: r#"`cluster.user`, `cluster.password_file` / `cluster.password_env`"#,
        default: r#"—"#,
        meaning: r#"etcd user name and where its password is (a file or an environment variable); all or nothing"#,
    },
    KeyDoc {
        key: r#"`cluster.ca_file`"#,
        default: r#"system roots"#,
        meaning: r#"PEM CA bundle for `https://` endpoints"#,
    },
    KeyDoc {
        key: r#"`cluster.cert_file`, `cluster.key_file`"#,
        default: r#"—"#,
        meaning: r#"PEM client certificate and key for etcd's client-certificate authentication; both or neither"#,
    },
    KeyDoc {
        key: r#"`cluster.source_address`"#,
        default: r#"any"#,
        meaning: r#"local IP address this replica's provider requests leave from (several replicas on one host, each under its own per-IP rate limit)"#,
    },
];

fn read_pem(path: &Path, key: &str, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
    match bounded_file::read(path, bounded_file::CERTIFICATES) {
        Ok(bytes) if bytes.windows(11).any(|w| w == b"-----BEGIN ") => Some(bytes),
        Ok(_) => {
            problems.push(Problem {
                path: format!("cluster.{key}"),
                message: format!("{} holds no PEM block", path.display()),
            });
            None
        }
        Err(e) => {
            problems.push(Problem {
                path: format!("cluster.{key}"),
                message: format!("cannot read {}: {e}", path.display()),
            });
            None
        }
    }
}

/// Reads and checks `[cluster]`; `None` when absent or broken (problems say why).
pub fn read(
    value: Option<toml::Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<ClusterConfig> {
    let raw = read_section::<RawCluster>(value?, "cluster", problems)?;
    if !cfg!(feature = "cluster") {
        problems.push(Problem {
            path: "cluster".into(),
            message: "this vpswatch was built without replicas (the `cluster` feature, which \
                      needs protoc to build); rebuild with `--features cluster` or remove the \
                      section"
                .into(),
        });
        return None;
    }
    let before = problems.len();
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            path: format!("cluster.{key}"),
            message,
        })
    };
    if raw.endpoints.is_empty() {
        problem("endpoints", "at least one etcd endpoint is needed".into());
    }
    let mut https = false;
    for (i, e) in raw.endpoints.iter().enumerate() {
        match url::Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                https |= u.scheme() == "https";
            }
            _ => problem(
                &format!("endpoints[{i}]"),
                format!("{e:?} is not an http:// or https:// URL with a host"),
            ),
        }
    }
    let member = match raw.member {
        None => {
            problem(
                "member",
                "missing: each replica needs its own name (e.g. the host name)".into(),
            );
            String::new()
        }
        Some(m) => {
            if let Err(e) = check_label_name(&m) {
                problem("member", e.to_string());
            }
            m
        }
    };
    let prefix = raw.prefix.trim_end_matches('/').to_string();
    if prefix.is_empty() || !prefix.starts_with('/') {
        problem(
            "prefix",
            format!(
                "{:?} must start with / and name more than the root",
                raw.prefix
            ),
        );
    }
    if raw.lease_ttl < MIN_LEASE_TTL || raw.lease_ttl.subsec_nanos() != 0 {
        problem(
            "lease_ttl",
            "must be whole seconds, at least 2s (etcd leases count seconds)".into(),
        );
    }
    let auth = match (
        raw.user,
        raw.password_file.is_some() || raw.password_env.is_some(),
    ) {
        (None, false) => None,
        (None, true) => {
            problem("user", "a password is set but no user".into());
            None
        }
        (Some(user), _) => match load_one(
            raw.password_file.as_deref(),
            raw.password_env.as_deref(),
            "cluster.password_file",
            "cluster.password_env",
            env,
        ) {
            Ok((password, _, warning)) => {
                if let Some(w) = warning {
                    warnings.push(Problem {
                        path: "cluster.password_file".into(),
                        message: w,
                    });
                }
                Some((user, Secret::new(password)))
            }
            Err((key, message)) => {
                problems.push(Problem {
                    path: key.into(),
                    message,
                });
                None
            }
        },
    };
    let tls_keys = raw.ca_file.is_some() || raw.cert_file.is_some() || raw.key_file.is_some();
    if tls_keys && !https {
        problems.push(Problem {
            path: "cluster.endpoints".into(),
            message: "TLS files are set but no endpoint is https://".into(),
        });
    }
    let ca_pem = raw
        .ca_file
        .as_deref()
        .and_then(|p| read_pem(p, "ca_file", problems));
    let identity = match (raw.cert_file.as_deref(), raw.key_file.as_deref()) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let cert = read_pem(c, "cert_file", problems);
            let key = read_pem(k, "key_file", problems);
            cert.zip(key).map(|(c, k)| (c, Secret::new(k)))
        }
        (Some(_), None) => {
            problems.push(Problem {
                path: "cluster.key_file".into(),
                message: "cert_file is set: the client certificate needs its key_file".into(),
            });
            None
        }
        (None, Some(_)) => {
            problems.push(Problem {
                path: "cluster.cert_file".into(),
                message: "key_file is set: it needs its cert_file".into(),
            });
            None
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(ClusterConfig {
        endpoints: raw.endpoints,
        member,
        prefix,
        lease_ttl: raw.lease_ttl,
        auth,
        tls: https.then_some(ClusterTls { ca_pem, identity }),
        source_address: raw.source_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (Option<ClusterConfig>, Vec<Problem>) {
        let value: toml::Value = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let c = read(
            value.get("cluster").cloned(),
            &|_| None,
            &mut problems,
            &mut warnings,
        );
        (c, problems)
    }

    #[test]
    fn minimal_section_takes_defaults() {
        let (c, p) = check(
            "[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\nmember = \"a\"\nsource_address = \"127.0.0.2\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!(c.prefix, "/vpswatch");
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.source_address, Some("127.0.0.2".parse().unwrap()));
        assert!(c.tls.is_none() && c.auth.is_none());
    }

    #[test]
    fn every_problem_names_its_key() {
        let (c, p) = check(
            "[cluster]\nendpoints = [\"ftp://x\"]\nmember = \"a b\"\nprefix = \"v\"\nlease_ttl = \"1500ms\"\nuser = \"u\"\ncert_file = \"/nonexistent.pem\"\n",
        );
        assert!(c.is_none());
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for key in [
            "cluster.endpoints[0]",
            "cluster.member",
            "cluster.prefix",
            "cluster.lease_ttl",
            "cluster.password_file",
            "cluster.key_file",
            "cluster.endpoints",
        ] {
            assert!(paths.contains(&key), "{key} missing from {p:?}");
        }
        let (_, p) = check("[cluster]\nmember = \"a\"\nendpoint = \"http://x:1\"\n");
        assert!(
            p.iter()
                .any(|p| p.path == "cluster.endpoints" || p.path == "cluster.endpoint"),
            "{p:?}"
        );
    }
}
