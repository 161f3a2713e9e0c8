//! The `[web]` section: the listen address, the web config file (TLS, auth, headers) and
//! the HTTP server's resource limits, with their rows of the configuration reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vpswatch_model::config_doc::KeyDoc;
use vpswatch_model::problem::Problem;

use super::limits::{ServerLimits, MIN_HEADER_BYTES};

/// The port vpswatch listens on by default. Prometheus' allocation list for exporters
/// (9100–9999) is exhausted; 10047 was unallocated when chosen.
pub const DEFAULT_PORT: u16 = 10047;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawWeb {
    listen_address: String,
    // --- web config file and server limits ---
    config_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    config_reload_interval: Duration,
    max_connections: usize,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    max_header_bytes: usize,
    max_request_body_bytes: u64,
}

impl Default for RawWeb {
    fn default() -> Self {
        let limits = ServerLimits::default();
        Self {
            listen_address: format!("0.0.0.0:{DEFAULT_PORT}"),
            config_file: None,
            config_reload_interval: DEFAULT_WEB_CONFIG_RELOAD,
            max_connections: limits.max_connections,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            max_header_bytes: limits.max_header_bytes,
            max_request_body_bytes: limits.max_request_body_bytes,
        }
    }
}

/// How often the web config file is checked for changes unless configured.
pub const DEFAULT_WEB_CONFIG_RELOAD: Duration = Duration::from_secs(5);

/// `[web]` beyond the listen address: the web config file (TLS, auth, headers) and the
/// server's resource limits.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    /// `--web.config.file` / `web.config_file`: exporter-toolkit YAML; `None` = plain
    /// HTTP without auth.
    pub config_file: Option<PathBuf>,
    /// How often the file (and the files it names) are checked for changes.
    pub config_reload_interval: Duration,
    pub limits: ServerLimits,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            config_file: None,
            config_reload_interval: DEFAULT_WEB_CONFIG_RELOAD,
            limits: ServerLimits::default(),
        }
    }
}

/// `[web]`.
pub const WEB_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`web.listen_address`"#,
        default: r#"`0.0.0.0:10047`"#,
        meaning: r#"address:port of the HTTP server"#,
    },
    KeyDoc {
        key: r#"`web.config_file`"#,
        default: r#"—"#,
        meaning: r#"web config file (exporter-toolkit YAML: TLS, client certificates, basic auth, headers); `--web.config.file` overrides it. See [Security](security.md#web-config-tls-client-certificates-basic-auth-headers)"#,
    },
    KeyDoc {
        key: r#"`web.config_reload_interval`"#,
        default: r#"`5s`"#,
        meaning: r#"how often the web config file and the certificate, key and CA files it names are checked for changes"#,
    },
    KeyDoc {
        key: r#"`web.max_connections`"#,
        default: r#"256"#,
        meaning: r#"HTTP connections served at once; at the cap a new client is still accepted and the connection cheapest to lose is closed (one without a complete request head, else the longest idle)"#,
    },
    KeyDoc {
        key: r#"`web.header_read_timeout`"#,
        default: r#"`10s`"#,
        meaning: r#"deadline for a request head (HTTP/1) and for the TLS handshake; also closes an idle HTTP/1 keep-alive connection"#,
    },
    KeyDoc {
        key: r#"`web.idle_timeout`"#,
        default: r#"`2m`"#,
        meaning: r#"a connection on which no byte moves in either direction for this long is closed (HTTP/1 and HTTP/2, also a client that stops reading)"#,
    },
    KeyDoc {
        key: r#"`web.max_header_bytes`"#,
        default: r#"16384"#,
        meaning: r#"largest request head; larger gets 431 (HTTP/1) or a stream error (HTTP/2); at least 8192"#,
    },
    KeyDoc {
        key: r#"`web.max_request_body_bytes`"#,
        default: r#"65536"#,
        meaning: r#"largest request body; larger (declared or chunked) gets 413 and the connection is closed"#,
    },
];

/// Checks `[web]`: the listen address and the settings, or `None` with every problem
/// recorded under its `web.` key path.
pub fn check(raw: RawWeb, problems: &mut Vec<Problem>) -> Option<(SocketAddr, WebSettings)> {
    let before = problems.len();
    let mut problem = vpswatch_model::problem::under("web", problems);
    for (key, d) in [
        ("config_reload_interval", raw.config_reload_interval),
        ("header_read_timeout", raw.header_read_timeout),
        ("idle_timeout", raw.idle_timeout),
    ] {
        if d.is_zero() {
            problem(key, "must be greater than zero".into());
        }
    }
    let listen_address = match raw.listen_address.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problem(
                "listen_address",
                format!(
                    "{:?} is not an address:port (e.g. \"0.0.0.0:{DEFAULT_PORT}\")",
                    raw.listen_address
                ),
            );
            None
        }
    };
    if raw.max_connections == 0 {
        problem("max_connections", "must be at least 1".into());
    }
    if raw.max_header_bytes < MIN_HEADER_BYTES {
        problem(
            "max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES}"),
        );
    }
    drop(problem);
    if problems.len() > before {
        return None;
    }
    let web = WebSettings {
        config_file: raw.config_file,
        config_reload_interval: raw.config_reload_interval,
        limits: ServerLimits {
            max_connections: raw.max_connections,
            header_read_timeout: raw.header_read_timeout,
            idle_timeout: raw.idle_timeout,
            max_header_bytes: raw.max_header_bytes,
            max_request_body_bytes: raw.max_request_body_bytes,
        },
    };
    Some((listen_address?, web))
}
