//! The `[email]` configuration section: SMTP server, security, credentials, addresses and
//! timing, validated the way the rest of the config is (every problem with its key path,
//! e.g. `email.to[1]`), with the password loaded from a file or an environment variable.
//!
//! It lives beside the email code rather than in `config.rs` so the channel's knobs and
//! their meaning stay in one place; `config.rs` only hands the raw section over.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use vpswatch_model::problem::{read_section, Problem};
use vpswatch_model::secret::{self, Secret};
use vpswatch_model::{bounded_file, redact};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS; fails when the server does not offer it.
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No encryption at all: only with `allow_insecure = true`, meant for a local relay.
    None,
}

impl Security {
    pub fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Security::Starttls => "starttls",
            Security::Tls => "tls",
            Security::None => "none",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawEmail {
    smtp_host: String,
    smtp_port: Option<u16>,
    #[serde(default = "default_security")]
    security: Security,
    #[serde(default)]
    allow_insecure: bool,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    from: String,
    to: Vec<String>,
    #[serde(default = "default_repeat", with = "humantime_serde")]
    repeat_interval: Duration,
    #[serde(default, with = "humantime_serde")]
    digest_window: Option<Duration>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    rule_recipients: BTreeMap<String, Vec<String>>,
}

fn default_security() -> Security {
    Security::Starttls
}

fn default_repeat() -> Duration {
    Duration::from_secs(4 * 3600)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// SMTP login, the password kept out of every `Debug` and message.
#[derive(Clone)]
pub struct SmtpAuth {
    pub username: String,
    pub password: Secret<String>,
}

impl fmt::Debug for SmtpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpAuth")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// The validated `[email]` section.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub security: Security,
    pub auth: Option<SmtpAuth>,
    /// Extra trusted certificates (PEM): a private CA or the server's self-signed cert.
    pub ca_pem: Option<Vec<u8>>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    /// A firing alert is re-announced this often until it resolves.
    pub repeat_interval: Duration,
    /// When set, alerts of one account that start firing within this window go out as one
    /// mail.
    pub digest_window: Option<Duration>,
    /// Limit for each SMTP step (connect, greeting, TLS, AUTH, each command, DATA).
    pub timeout: Duration,
    /// Rule name → recipients used instead of `to` for that rule's mails.
    pub rule_recipients: BTreeMap<String, Vec<Mailbox>>,
}

impl EmailSettings {
    /// Who gets mail about `rule`.
    pub fn recipients(&self, rule: &str) -> &[Mailbox] {
        self.rule_recipients
            .get(rule)
            .map(Vec::as_slice)
            .unwrap_or(&self.to)
    }

    /// The server as `host:port`, for messages.
    pub fn server(&self) -> String {
        if self.smtp_host.contains(':') {
            format!("[{}]:{}", self.smtp_host, self.smtp_port)
        } else {
            format!("{}:{}", self.smtp_host, self.smtp_port)
        }
    }
}

/// Validates the raw `[email]` table. Problems and warnings carry `email.`-prefixed key
/// paths; `None` when anything is wrong.
pub fn from_toml(
    value: toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<EmailSettings> {
    let raw: RawEmail = read_section(value, "email", problems)?;
    let before = problems.len();
    let mut problem = |key: String, message: String| {
        problems.push(Problem {
            path: format!("email.{key}"),
            message,
        })
    };

    let host = raw.smtp_host.trim().to_string();
    if host.is_empty() {
        problem("smtp_host".into(), "must not be empty".into());
    }
    let loopback = is_loopback(&host);
    if raw.smtp_port == Some(0) {
        problem("smtp_port".into(), "must be 1-65535".into());
    }
    if raw.security == Security::None {
        if !raw.allow_insecure {
            problem(
                "security".into(),
                "\"none\" sends mail unencrypted: set allow_insecure = true to confirm \
                 (meant for a relay on this host), or use \"starttls\" / \"tls\""
                    .into(),
            );
        } else if !loopback {
            warnings.push(Problem {
                path: "email.security".into(),
                message: format!(
                    "mail to {} travels unencrypted; \"none\" is only sensible for a relay \
                     on this host",
                    redact::value(&host)
                ),
            });
        }
    }

    let auth = match (&raw.username, &raw.password_file, &raw.password_env) {
        (None, None, None) => None,
        (None, _, _) => {
            problem(
                "username".into(),
                "a password is configured but no username".into(),
            );
            None
        }
        (Some(user), file, var) => {
            if user.trim().is_empty() {
                problem("username".into(), "must not be empty".into());
            }
            if raw.security == Security::None && !loopback {
                problem(
                    "username".into(),
                    format!(
                        "the SMTP password would travel unencrypted to {}: use \
                         security = \"starttls\" or \"tls\"",
                        redact::value(&host)
                    ),
                );
            }
            match secret::load_one(
                file.as_deref(),
                var.as_deref(),
                "password_file",
                "password_env",
                env,
            ) {
                Ok((text, _source, warn)) => {
                    if let Some(w) = warn {
                        warnings.push(Problem {
                            path: "email.password_file".into(),
                            message: w,
                        });
                    }
                    Some(SmtpAuth {
                        username: user.clone(),
                        password: Secret::new(text),
                    })
                }
                Err((key, why)) => {
                    problem(key.into(), why);
                    None
                }
            }
        }
    };

    let ca_pem = match &raw.ca_file {
        None => None,
        Some(path) => match bounded_file::read(path, bounded_file::CERTIFICATES) {
            Err(e) => {
                problem(
                    "ca_file".into(),
                    format!("cannot read {}: {e}", redact::path(path)),
                );
                None
            }
            Ok(pem) => {
                let has_cert =
                    String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----");
                if !has_cert
                    || lettre::transport::smtp::client::Certificate::from_pem(&pem).is_err()
                {
                    problem(
                        "ca_file".into(),
                        format!(
                            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                            redact::path(path)
                        ),
                    );
                    None
                } else {
                    if raw.security == Security::None {
                        warnings.push(Problem {
                            path: "email.ca_file".into(),
                            message: "unused: security is \"none\"".into(),
                        });
                    }
                    Some(pem)
                }
            }
        },
    };

    let from = match raw.from.parse::<Mailbox>() {
        Ok(m) => Some(m),
        Err(e) => {
            problem(
                "from".into(),
                format!("{:?} is not an email address: {e}", raw.from),
            );
            None
        }
    };
    let mut parse_list = |key: &str, list: &[String]| -> Vec<Mailbox> {
        if list.is_empty() {
            problem(key.to_string(), "needs at least one address".into());
        }
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            match a.parse::<Mailbox>() {
                Ok(m) => out.push(m),
                Err(e) => problem(
                    format!("{key}[{i}]"),
                    format!("{a:?} is not an email address: {e}"),
                ),
            }
        }
        out
    };
    let to = parse_list("to", &raw.to);
    let mut rule_recipients = BTreeMap::new();
    for (rule, list) in &raw.rule_recipients {
        let key = if rule
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            format!("rule_recipients.{rule}")
        } else {
            format!("rule_recipients.{rule:?}")
        };
        rule_recipients.insert(rule.clone(), parse_list(&key, list));
    }

    for (key, d) in [
        ("repeat_interval", Some(raw.repeat_interval)),
        ("digest_window", raw.digest_window),
        ("timeout", Some(raw.timeout)),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            problem(key.into(), "must be greater than zero".into());
        }
    }

    if problems.len() > before {
        return None;
    }
    Some(EmailSettings {
        smtp_port: raw.smtp_port.unwrap_or(raw.security.default_port()),
        smtp_host: host,
        security: raw.security,
        auth,
        ca_pem,
        from: from?,
        to,
        repeat_interval: raw.repeat_interval,
        digest_window: raw.digest_window,
        timeout: raw.timeout,
        rule_recipients,
    })
}

/// A loopback host: plain SMTP to it never leaves the machine.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}
