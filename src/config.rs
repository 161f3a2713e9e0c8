//! Configuration: TOML on disk → validated [`Config`] with secrets loaded.
//!
//! Loading never stops at the first problem: syntax errors aside, each section and each
//! account is read on its own and every problem is reported with its key path
//! (`accounts[1].nsec_file`) and reason, so `check-config` can list them all at once.
//! Secrets are read from files or environment variables and never appear in messages.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpswatch_model::config_doc::KeyDoc;
use vpswatch_model::problem::{one_line, read_section, ConfigError, Problem};
use vpswatch_providers::{AccountConfig, ProviderLimits};

use crate::notify::email::settings::{self as email_settings, EmailSettings};
use crate::watchdog::maintenance::MaintenanceConfig;
use crate::watchdog::rules::{self, RawRule, RawWatchdog, WatchdogConfig};
use vpswatch_model::account::ProviderKind;
use vpswatch_model::{bounded_file, redact};
use vpswatch_providers::stablevps::PlanTable;

/// Where the journal and the alert outbox live unless `state_dir` says otherwise
/// (systemd's `StateDirectory=vpswatch`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vpswatch";

// ---------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawGlobals {
    #[serde(with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    poll_timeout: Duration,
    #[serde(with = "humantime_serde")]
    staleness_limit: Duration,
    max_response_bytes: usize,
    state_dir: PathBuf,
    web: crate::web_config::section::RawWeb,
    providers: vpswatch_providers::section::RawProviders,
    probes: crate::watchdog::probe_targets::ProbeConfig,
}

impl Default for RawGlobals {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(600),
            staleness_limit: Duration::from_secs(300),
            max_response_bytes: 16 * 1024 * 1024,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            web: crate::web_config::section::RawWeb::default(),
            providers: vpswatch_providers::section::RawProviders::default(),
            probes: crate::watchdog::probe_targets::ProbeConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    pub poll_timeout: Duration,
    pub staleness_limit: Duration,
    pub max_response_bytes: usize,
    /// The journal and the alert outbox (see `store`).
    pub state_dir: PathBuf,
    pub listen_address: SocketAddr,
    /// Web config file and HTTP server limits (`[web]`).
    pub web: crate::web_config::section::WebSettings,
    pub providers: BTreeMap<ProviderKind, ProviderLimits>,
    pub accounts: Vec<AccountConfig>,
    pub probes: crate::watchdog::probe_targets::ProbeConfig,
    pub watchdog: WatchdogConfig,
    /// `[[rules]]` with `action = "renew"` (Lightning renewal, run by `crate::renew`).
    pub renew_rules: Vec<crate::renew::config::RenewRule>,
    /// The `[email]` section; `None` when mail is not configured (alerts go to the log).
    pub email: Option<EmailSettings>,
    /// `[alertmanager]`: the webhook receiver; `None` = off.
    pub alertmanager: Option<crate::watchdog::webhook::WebhookConfig>,
    /// StableVPS plans by `planId`: the built-in table with the config's overrides.
    pub stablevps_plans: PlanTable,
    /// `[cluster]`: one replica of several coordinated through etcd; `None` = alone.
    pub cluster: Option<crate::cluster::config::ClusterConfig>,
    /// Things worth telling the operator that do not stop the daemon.
    pub warnings: Vec<Problem>,
}

impl Config {
    pub fn limits(&self, kind: ProviderKind) -> ProviderLimits {
        self.providers.get(&kind).cloned().unwrap_or_default()
    }

    /// What the clients of an account at `kind` are built with.
    pub fn client_settings(&self, kind: ProviderKind) -> vpswatch_providers::ClientSettings {
        vpswatch_providers::ClientSettings {
            limits: self.limits(kind),
            request_timeout: self.request_timeout,
            max_response_bytes: self.max_response_bytes,
            stablevps_plans: std::sync::Arc::new(self.stablevps_plans.clone()),
            source_address: self.cluster.as_ref().and_then(|c| c.source_address),
        }
    }
}

// The keys this file reads itself; the other sections document their own keys.

/// The top-level keys, and where the sections read elsewhere are documented.
pub const GLOBAL_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`poll_interval`"#,
        default: r#"`60s`"#,
        meaning: r#"time between the starts of two polls of an account; while an account keeps failing the gap doubles per failure up to 4×"#,
    },
    KeyDoc {
        key: r#"`request_timeout`"#,
        default: r#"`10s`"#,
        meaning: r#"timeout of one HTTP request"#,
    },
    KeyDoc {
        key: r#"`poll_timeout`"#,
        default: r#"`10m`"#,
        meaning: r#"a poll still running after this is abandoned and counted as failed"#,
    },
    KeyDoc {
        key: r#"`staleness_limit`"#,
        default: r#"`5m`"#,
        meaning: r#"age after which data counts as stale"#,
    },
    KeyDoc {
        key: r#"`max_response_bytes`"#,
        default: r#"16 MiB"#,
        meaning: r#"responses are read with this limit (a larger declared length is refused unread; a longer body is cut off there); lists are also capped at 100,000 entries"#,
    },
    KeyDoc {
        key: r#"`state_dir`"#,
        default: r#"`/var/lib/vpswatch`"#,
        meaning: r#"directory of the state database (one daemon per directory); used when rules or `[email]` are configured"#,
    },
    KeyDoc {
        key: r#"`[watchdog]`, `[[rules]]`"#,
        default: r#"—"#,
        meaning: r#"watchdog settings and rules: see [Watchdog](watchdog.md)"#,
    },
    KeyDoc {
        key: r#"`[[rules]]` with `action = "renew"`"#,
        default: r#"—"#,
        meaning: r#"Lightning renewal of LNVPS VMs: see [Lightning renewal](renewal.md)"#,
    },
    KeyDoc {
        key: r#"`[[maintenance]]`"#,
        default: r#"—"#,
        meaning: r#"maintenance windows: see [Maintenance windows and silences](watchdog.md#maintenance-windows-and-silences)"#,
    },
    KeyDoc {
        key: r#"`[email]`"#,
        default: r#"—"#,
        meaning: r#"email alerts: see [Email alerts](email.md)"#,
    },
];

/// The configuration reference (docs/configuration.md), every section in file order.
pub fn reference_table() -> String {
    vpswatch_model::config_doc::markdown_table(&[
        GLOBAL_KEYS,
        crate::web_config::section::WEB_KEYS,
        crate::watchdog::probe_targets::SECTION_KEYS,
        crate::watchdog::probe_targets::KEYS,
        vpswatch_providers::account::LIMIT_KEYS,
        vpswatch_providers::account::ACCOUNT_KEYS,
        crate::watchdog::webhook::KEYS,
        crate::cluster::config::KEYS,
    ])
}

/// Reads and validates a configuration file (a regular file of at most
/// [`bounded_file::CONFIG`]'s size).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = bounded_file::read_text(path, bounded_file::CONFIG).map_err(|e| ConfigError {
        file: redact::path(path),
        problems: vec![Problem {
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(&text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
}

/// Parses and validates configuration text. `env` looks up environment variables (a
/// parameter so tests need not touch the process environment).
///
/// Every problem and warning has passed through [`redact`]: whatever of the text it
/// quotes is capped and free of key material.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let clean = |problems: Vec<Problem>| -> Vec<Problem> {
        problems
            .into_iter()
            .map(|p| Problem {
                path: redact::key_path(&p.path),
                message: redact::message(&p.message),
            })
            .collect()
    };
    match parse_unredacted(text, env) {
        Ok(mut config) => {
            config.warnings = clean(std::mem::take(&mut config.warnings));
            Ok(config)
        }
        Err(problems) => Err(ConfigError {
            file: redact::path(Path::new(file)),
            problems: clean(problems),
        }),
    }
}

/// Where a TOML syntax error is and what it is, without the parser's snippet of the
/// offending line (it would show whatever was written there, a pasted key included):
/// line, column, the key being written and the table it is in.
fn toml_syntax_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return format!("not valid TOML: {}", one_line(e.message()));
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let mut place = format!("line {line_no}, column {column}");
    // The key on the offending line, when it has one: `name = …`.
    if let Some((key, _)) = line.split_once('=') {
        let key = key.trim();
        if !key.is_empty()
            && !key.starts_with('[')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
        {
            place.push_str(&format!(", key {}", redact::value(key)));
        }
    }
    // The table it belongs to: the last header above it.
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    if let Some(h) = header {
        let h = h.split('#').next().unwrap_or(h).trim();
        place.push_str(&format!(" in {}", redact::value(h)));
    }
    format!("not valid TOML at {place}: {}", one_line(e.message()))
}

fn parse_unredacted(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![Problem {
            path: String::new(),
            message: toml_syntax_error(text, &e),
        }]
    })?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let raw_accounts = table.remove("accounts");
    let raw_rules = table.remove("rules");
    let raw_watchdog = table.remove("watchdog");
    let raw_maintenance = table.remove("maintenance");
    let raw_email = table.remove("email");
    let raw_alertmanager = table.remove("alertmanager");
    let raw_cluster = table.remove("cluster");
    let globals: Option<RawGlobals> = read_section(toml::Value::Table(table), "", &mut problems);

    let mut accounts = Vec::new();
    match raw_accounts {
        None => problems.push(Problem {
            path: "accounts".into(),
            message: "no [[accounts]] configured; add at least one".into(),
        }),
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                let prefix = format!("accounts[{i}]");
                if let Some(raw) = read_section::<vpswatch_providers::account::RawAccount>(
                    item,
                    &prefix,
                    &mut problems,
                ) {
                    accounts.push((prefix, raw));
                }
            }
        }
        Some(_) => problems.push(Problem {
            path: "accounts".into(),
            message: "must be an array of tables ([[accounts]])".into(),
        }),
    }

    // Lightning renewal rules are read beside the watchdog's, out of its list.
    let mut renew_rules = Vec::new();
    let watchdog = read_watchdog(
        raw_watchdog,
        raw_rules,
        raw_maintenance,
        &mut problems,
        (env, &mut warnings, &mut renew_rules),
    );
    let rule_names: Vec<String> = watchdog
        .rules
        .iter()
        .map(|r| r.name.clone())
        .chain(renew_rules.iter().map(|r| r.name.clone()))
        .collect();
    let alertmanager = crate::watchdog::webhook::read(
        raw_alertmanager,
        &rule_names,
        env,
        &mut problems,
        &mut warnings,
    );
    // Read before the early return below so every section's problems are listed.
    let email =
        raw_email.and_then(|v| email_settings::from_toml(v, env, &mut problems, &mut warnings));

    let cluster = crate::cluster::config::read(raw_cluster, env, &mut problems, &mut warnings);

    let Some(g) = globals else {
        return Err(problems);
    };
    for (key, d) in [
        ("poll_interval", g.poll_interval),
        ("request_timeout", g.request_timeout),
        ("poll_timeout", g.poll_timeout),
        ("staleness_limit", g.staleness_limit),
    ] {
        if d.is_zero() {
            problems.push(Problem {
                path: key.into(),
                message: "must be greater than zero".into(),
            });
        }
    }
    let web = crate::web_config::section::check(g.web, &mut problems);
    let (provider_limits, stablevps_plans) =
        vpswatch_providers::section::check(g.providers, &mut problems);

    let mut seen = HashMap::new();
    let mut valid_accounts = Vec::new();
    for (prefix, raw) in accounts {
        if let Some(prev) = seen.insert(raw.name.clone(), prefix.clone()) {
            problems.push(Problem {
                path: format!("{prefix}.name"),
                message: format!("{:?} is already used by {prev}", raw.name),
            });
        }
        if let Some(acc) = vpswatch_providers::account::validate(
            &prefix,
            raw,
            g.poll_interval,
            env,
            &mut problems,
            &mut warnings,
        ) {
            valid_accounts.push(acc);
        }
    }

    check_rule_targets(&watchdog, &valid_accounts, &mut warnings);
    crate::watchdog::probe_targets::check_section(
        &g.probes,
        &valid_accounts
            .iter()
            .map(|a| (a.provider, a.name.clone()))
            .collect::<Vec<_>>(),
        &mut problems,
        &mut warnings,
    );

    match web {
        Some((listen_address, web)) if problems.is_empty() => Ok(Config {
            poll_interval: g.poll_interval,
            request_timeout: g.request_timeout,
            poll_timeout: g.poll_timeout,
            staleness_limit: g.staleness_limit,
            max_response_bytes: g.max_response_bytes,
            state_dir: g.state_dir,
            listen_address,
            web,
            providers: provider_limits,
            accounts: valid_accounts,
            probes: g.probes,
            watchdog,
            renew_rules,
            email,
            alertmanager,
            stablevps_plans,
            cluster,
            warnings,
        }),
        _ => Err(problems),
    }
}

/// Where renewal rules found among `[[rules]]` go: env lookup, warnings, the rules.
type RenewSink<'a> = (
    &'a dyn Fn(&str) -> Option<String>,
    &'a mut Vec<Problem>,
    &'a mut Vec<crate::renew::config::RenewRule>,
);

/// Reads `[watchdog]` and `[[rules]]`; rule names must be unique.
fn read_watchdog(
    raw_watchdog: Option<toml::Value>,
    raw_rules: Option<toml::Value>,
    raw_maintenance: Option<toml::Value>,
    problems: &mut Vec<Problem>,
    renew: RenewSink<'_>,
) -> WatchdogConfig {
    let (env, renew_warnings, renew_rules) = renew;
    let mut windows = Vec::new();
    match raw_maintenance {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                let prefix = format!("maintenance[{i}]");
                if let Some(w) = read_section::<MaintenanceConfig>(item, &prefix, problems) {
                    windows.push(w);
                }
            }
        }
        Some(_) => problems.push(Problem {
            path: "maintenance".into(),
            message: "must be an array of tables ([[maintenance]])".into(),
        }),
    }
    let settings = match raw_watchdog {
        None => Some(RawWatchdog::default()),
        Some(v) => read_section::<RawWatchdog>(v, "watchdog", problems),
    };
    let mut checked = Vec::new();
    match raw_rules {
        None => {}
        Some(toml::Value::Array(items)) => {
            let mut seen = HashMap::new();
            for (i, item) in items.into_iter().enumerate() {
                let prefix = format!("rules[{i}]");
                // action = "renew" rules are Lightning renewal's (src/renew).
                if crate::renew::is_renew_rule(&item) {
                    let rule = crate::renew::config::read_rule(
                        item,
                        &prefix,
                        env,
                        problems,
                        renew_warnings,
                    );
                    if let Some(rule) = rule {
                        if let Some(prev) = seen.insert(rule.name.clone(), prefix.clone()) {
                            problems.push(Problem {
                                path: format!("{prefix}.name"),
                                message: format!("{:?} is already used by {prev}", rule.name),
                            });
                        }
                        renew_rules.push(rule);
                    }
                    continue;
                }
                let Some(raw) = read_section::<RawRule>(item, &prefix, problems) else {
                    continue;
                };
                if let Some(rule) = rules::check_rule(&prefix, raw, problems) {
                    if let Some(prev) = seen.insert(rule.name.clone(), prefix.clone()) {
                        problems.push(Problem {
                            path: format!("{prefix}.name"),
                            message: format!("{:?} is already used by {prev}", rule.name),
                        });
                    }
                    checked.push(rule);
                }
            }
        }
        Some(_) => problems.push(Problem {
            path: "rules".into(),
            message: "must be an array of tables ([[rules]])".into(),
        }),
    }
    rules::check_watchdog(settings.unwrap_or_default(), checked, windows, problems)
}

/// A rule whose `match` names no configured account is almost always a typo.
fn check_rule_targets(
    watchdog: &WatchdogConfig,
    accounts: &[AccountConfig],
    warnings: &mut Vec<Problem>,
) {
    for (i, rule) in watchdog.rules.iter().enumerate() {
        if !accounts.is_empty()
            && !accounts
                .iter()
                .any(|a| rule.selector.may_match_account(a.provider, &a.name))
        {
            warnings.push(Problem {
                path: format!("rules[{i}].match"),
                message: format!(
                    "rule {:?} matches none of the configured accounts",
                    rule.name
                ),
            });
        }
    }
}
