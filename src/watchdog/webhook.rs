//! The Alertmanager webhook receiver: its `[alertmanager]` config section, the payload
//! Alertmanager's `webhook_configs` POST (version "4"), which alert maps to which action,
//! and the hand-over to the engine.
//!
//! The receiver itself decides nothing: every alert goes to the watchdog engine, which
//! runs the same guards and journal as for its own rules, so an alert-driven action is
//! dry-run, cooled down, capped, gated by maintenance windows and silences and refused
//! on stale data exactly like a rule's. One firing episode (fingerprint + `startsAt`)
//! acts at most once: the episode is journaled with the action, before the provider is
//! called, so re-sends, HA peers and restarts all find it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::report::WatchdogReport;
use super::rules::{Condition, Guards, Remedy, Rule, KEEP_RUNNING_NEEDED};
use super::selector::{Selector, SelectorConfig};
use vpswatch_model::account::ProviderKind;
use vpswatch_model::config_doc::KeyDoc;
use vpswatch_model::problem::{read_section, Problem};
use vpswatch_model::secret::Secret;

/// Where Alertmanager posts.
pub const PATH: &str = "/api/v1/alertmanager";

/// Largest payload accepted unless `alertmanager.max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// How long a delivery waits for the engine before answering 503 (Alertmanager retries).
const ENGINE_WAIT: Duration = Duration::from_secs(20);

/// `[alertmanager]` and `[[alertmanager.actions]]`.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`[alertmanager]`"#,
        default: r#"off"#,
        meaning: r#"the Alertmanager webhook (`POST /api/v1/alertmanager`): present = on. See [Alertmanager-driven actions](watchdog.md#alertmanager-driven-actions)"#,
    },
    KeyDoc {
        key: r#"`alertmanager.bearer_token_file` / `.bearer_token_env`"#,
        default: r#"—"#,
        meaning: r#"the token Alertmanager sends (`http_config.authorization.credentials_file`); compared in constant time, never logged"#,
    },
    KeyDoc {
        key: r#"`alertmanager.basic_auth`"#,
        default: r#"`false`"#,
        meaning: r#"also accept the web config's basic-auth users on the webhook; a token, basic auth or both must be configured"#,
    },
    KeyDoc {
        key: r#"`alertmanager.max_body_bytes`"#,
        default: r#"1048576"#,
        meaning: r#"largest webhook payload; larger gets 413 (the webhook's own limit, instead of `web.max_request_body_bytes`)"#,
    },
    KeyDoc {
        key: r#"`[[alertmanager.actions]]` `name`, `alertname`, `labels`"#,
        default: r#"—"#,
        meaning: r#"one mapping: alerts named `alertname` whose labels include every `labels` pair act; `name` is the `rule` label of its series and journal entries (unique among rules)"#,
    },
    KeyDoc {
        key: r#"`alertmanager.actions[].action`, `escalate`, `cooldown`, `max_actions`, `window`, `patience`, `keep_running`, `dry_run`, `match`"#,
        default: r#"as `[[rules]]`"#,
        meaning: r#"what to do and the guards, as for a rule (`action` is `reboot` (alias `restart`), `start` or `stop_start`); `match` narrows the VMs the mapping may act on"#,
    },
];

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawAlertmanager {
    bearer_token_file: Option<PathBuf>,
    bearer_token_env: Option<String>,
    basic_auth: bool,
    max_body_bytes: u64,
    actions: Vec<toml::Value>,
}

impl Default for RawAlertmanager {
    fn default() -> Self {
        Self {
            bearer_token_file: None,
            bearer_token_env: None,
            basic_auth: false,
            max_body_bytes: DEFAULT_MAX_BODY,
            actions: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawMapping {
    name: String,
    alertname: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    action: String,
    #[serde(default)]
    escalate: Vec<Remedy>,
    #[serde(default, with = "humantime_serde")]
    cooldown: Option<Duration>,
    max_actions: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    patience: Option<Duration>,
    #[serde(default)]
    keep_running: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default, rename = "match")]
    selector: SelectorConfig,
}

/// One alert → action mapping. `rule` carries the guards and the ladder; its condition
/// is [`Condition::Alertmanager`].
#[derive(Debug, Clone)]
pub struct Mapping {
    pub alertname: String,
    pub labels: Vec<(String, String)>,
    pub rule: Rule,
}

impl Mapping {
    /// Whether the alert's name and labels are this mapping's.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get("alertname") == Some(&self.alertname)
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|x| x == v))
    }
}

/// The validated `[alertmanager]` section.
#[derive(Clone)]
pub struct WebhookConfig {
    pub bearer_token: Option<Secret<String>>,
    pub basic_auth: bool,
    pub max_body_bytes: u64,
    pub mappings: Vec<Mapping>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("bearer_token", &self.bearer_token.is_some())
            .field("basic_auth", &self.basic_auth)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("mappings", &self.mappings.len())
            .finish()
    }
}

impl WebhookConfig {
    /// The mappings' rules, which the engine keeps beside the configured ones.
    pub fn rules(&self) -> Vec<Rule> {
        self.mappings.iter().map(|m| m.rule.clone()).collect()
    }
}

/// Reads `[alertmanager]`; `None` when absent or broken (problems recorded). `rule_names`
/// are the `[[rules]]` names a mapping's name must not reuse.
pub fn read(
    value: Option<toml::Value>,
    rule_names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<WebhookConfig> {
    let raw = read_section::<RawAlertmanager>(value?, "alertmanager", problems)?;
    let before = problems.len();
    let bearer_token = if raw.bearer_token_file.is_none() && raw.bearer_token_env.is_none() {
        None
    } else {
        match vpswatch_model::secret::load_one(
            raw.bearer_token_file.as_deref(),
            raw.bearer_token_env.as_deref(),
            "alertmanager.bearer_token_file",
            "alertmanager.bearer_token_env",
            env,
        ) {
            Ok((token, _, warning)) => {
                if let Some(w) = warning {
                    warnings.push(Problem {
                        path: "alertmanager.bearer_token_file".into(),
                        message: w,
                    });
                }
                Some(Secret::new(token))
            }
            Err((key, message)) => {
                problems.push(Problem {
                    path: key.into(),
                    message,
                });
                None
            }
        }
    };
    if bearer_token.is_none() && !raw.basic_auth && problems.len() == before {
        problems.push(Problem {
            path: "alertmanager".into(),
            message: "the webhook needs a credential: set bearer_token_file (or \
                      bearer_token_env), or basic_auth = true with users in the web config"
                .into(),
        });
    }
    if raw.max_body_bytes == 0 {
        problems.push(Problem {
            path: "alertmanager.max_body_bytes".into(),
            message: "must be at least 1".into(),
        });
    }
    if raw.actions.is_empty() {
        warnings.push(Problem {
            path: "alertmanager.actions".into(),
            message: "no [[alertmanager.actions]]: alerts are accepted but never act".into(),
        });
    }
    let mut mappings: Vec<Mapping> = Vec::new();
    for (i, item) in raw.actions.into_iter().enumerate() {
        let prefix = format!("alertmanager.actions[{i}]");
        let Some(m) = read_section::<RawMapping>(item, &prefix, problems) else {
            continue;
        };
        if rule_names.contains(&m.name) || mappings.iter().any(|x| x.rule.name == m.name) {
            problems.push(Problem {
                path: format!("{prefix}.name"),
                message: format!("{:?} is already used by a rule or another mapping", m.name),
            });
        }
        if let Some(m) = check_mapping(&prefix, m, problems) {
            mappings.push(m);
        }
    }
    (problems.len() == before).then_some(WebhookConfig {
        bearer_token,
        basic_auth: raw.basic_auth,
        max_body_bytes: raw.max_body_bytes,
        mappings,
    })
}

fn check_mapping(prefix: &str, raw: RawMapping, problems: &mut Vec<Problem>) -> Option<Mapping> {
    let before = problems.len();
    let mut problem = vpswatch_model::problem::under(prefix, problems);
    if let Err(why) = vpswatch_model::problem::check_label_name(&raw.name) {
        problem("name", why.to_string());
    }
    if raw.alertname.trim().is_empty() {
        problem("alertname", "must name an alert".into());
    }
    let first = match raw.action.as_str() {
        "reboot" | "restart" => Some(Remedy::Reboot),
        "start" => Some(Remedy::Start),
        "stop_start" => Some(Remedy::StopStart),
        other => {
            problem(
                "action",
                format!("{other:?} is not an action (one of: reboot, restart, start, stop_start)"),
            );
            None
        }
    };
    let ladder: Vec<Remedy> = first.into_iter().chain(raw.escalate).collect();
    if ladder.contains(&Remedy::Start) && !raw.keep_running {
        problem("keep_running", KEEP_RUNNING_NEEDED.into());
    }
    let guards = Guards::configured(raw.cooldown, raw.max_actions, raw.window, raw.patience);
    guards.check(&mut problem, "");
    for k in raw.labels.keys() {
        if let Err(why) = vpswatch_model::problem::check_label_name(k) {
            problem("labels", format!("{k:?}: {why}"));
        }
    }
    drop(problem);
    if problems.len() > before {
        return None;
    }
    Some(Mapping {
        alertname: raw.alertname,
        labels: raw.labels.into_iter().collect(),
        rule: Rule {
            name: raw.name,
            condition: Condition::Alertmanager,
            hold_for: Duration::ZERO,
            failures: 1,
            recoveries: 1,
            ladder,
            cooldown: guards.cooldown,
            max_actions: guards.max_actions,
            window: guards.window,
            patience: guards.patience,
            keep_running: raw.keep_running,
            dry_run: raw.dry_run,
            selector: Selector::new(&raw.selector),
            port: None,
        },
    })
}

// ---------------------------------------------------------------------------------------
// Payload
// ---------------------------------------------------------------------------------------

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One alert of a notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
}

/// A webhook notification (version "4").
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub receiver: String,
    pub status: AlertStatus,
    pub alerts: Vec<Alert>,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
}

/// Parses a notification; the error is the reason for a 400.
pub fn parse(body: &[u8]) -> Result<Payload, String> {
    let mut p: Payload = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not an Alertmanager webhook payload: {}",
            vpswatch_model::problem::one_line(&e.to_string())
        )
    })?;
    if p.version != "4" {
        return Err(format!(
            "unsupported payload version {:?} (this receiver reads version \"4\")",
            vpswatch_model::redact::value(&p.version)
        ));
    }
    for a in &mut p.alerts {
        if a.fingerprint.is_empty() {
            // A hand-made alert (curl): the labels identify it, as in Alertmanager.
            a.fingerprint = label_fingerprint(&a.labels);
        }
    }
    Ok(p)
}

fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k);
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    hex::encode(&h.finalize()[..8])
}

impl Alert {
    /// The episode: one firing of one alert.
    pub fn episode(&self) -> String {
        format!("{}@{}", self.fingerprint, self.starts_at.to_rfc3339())
    }

    /// The VM the alert names by its `provider`, `account` and `vm` labels.
    pub fn vm(&self) -> Result<(ProviderKind, &str, &str), String> {
        let get = |k: &str| {
            self.labels
                .get(k)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("no {k:?} label"))
        };
        let provider = match get("provider")? {
            "lnvps" => ProviderKind::Lnvps,
            "stablevps" => ProviderKind::Stablevps,
            other => {
                return Err(format!(
                    "provider {:?} is not lnvps or stablevps",
                    vpswatch_model::redact::value(other)
                ))
            }
        };
        Ok((provider, get("account")?, get("vm")?))
    }

    pub fn alertname(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }
}

// ---------------------------------------------------------------------------------------
// Hand-over to the engine
// ---------------------------------------------------------------------------------------

/// What came of one alert (the `result` label of `vpswatch_alertmanager_alerts_total`).
#[derive(Debug, Clone, Serialize)]
pub struct AlertResult {
    pub fingerprint: String,
    pub result: &'static str,
    pub reason: String,
}

/// One notification for the engine and where its answer goes.
pub struct Delivery {
    pub alerts: Vec<Alert>,
    pub reply: oneshot::Sender<Result<Vec<AlertResult>, String>>,
}

/// Why a delivery could not be handled; each maps to a status Alertmanager retries.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The engine is not running (its journal could not be read) or is busy too long.
    #[error("the watchdog is not running or not answering")]
    Unavailable,
    /// The journal could not be written: nothing was acted on.
    #[error("the watchdog journal cannot be written: {0}")]
    Journal(String),
}

/// The receiver as the web layer sees it: credentials, limit, the engine's inbox, and
/// where each request's answer is counted.
pub struct Receiver {
    token_digest: Option<[u8; 32]>,
    pub basic_auth: bool,
    pub max_body_bytes: u64,
    inbox: mpsc::Sender<Delivery>,
    report: Arc<WatchdogReport>,
}

impl Receiver {
    /// The receiver and the inbox the engine reads.
    pub fn new(
        config: &WebhookConfig,
        report: Arc<WatchdogReport>,
    ) -> (Receiver, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(16);
        report.enable_alertmanager_requests();
        (
            Receiver {
                token_digest: config
                    .bearer_token
                    .as_ref()
                    .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
                basic_auth: config.basic_auth,
                max_body_bytes: config.max_body_bytes,
                inbox: tx,
                report,
            },
            rx,
        )
    }

    /// Counts a request by the status it is answered with, so refusals (a wrong token
    /// above all: Alertmanager only logs it on its side) show on /metrics.
    pub fn answered(&self, status: u16) {
        self.report.count_alertmanager_request(status);
    }

    /// Whether the `Authorization` header carries the configured bearer token. Both
    /// sides are hashed first and compared without an early exit, so neither the
    /// token's length nor how much of it matched shows in the time taken.
    pub fn bearer_ok(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(want) = &self.token_digest else {
            return false;
        };
        let Some(given) = header.and_then(|h| {
            let b = h.as_bytes();
            (b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &b[7..])
        }) else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(given.trim_ascii()).into();
        got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Hands the alerts to the engine and waits for what came of them.
    pub async fn deliver(&self, alerts: Vec<Alert>) -> Result<Vec<AlertResult>, DeliveryError> {
        let (reply, answer) = oneshot::channel();
        let send = self.inbox.send(Delivery { alerts, reply });
        let wait = async {
            send.await.map_err(|_| DeliveryError::Unavailable)?;
            answer
                .await
                .map_err(|_| DeliveryError::Unavailable)?
                .map_err(DeliveryError::Journal)
        };
        tokio::time::timeout(ENGINE_WAIT, wait)
            .await
            .map_err(|_| DeliveryError::Unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{
      "version": "4", "groupKey": "{}:{alertname=\"VpsUnhealthy\"}", "truncatedAlerts": 0,
      "status": "firing", "receiver": "vpswatch",
      "groupLabels": {"alertname": "VpsUnhealthy"},
      "commonLabels": {"alertname": "VpsUnhealthy"}, "commonAnnotations": {},
      "externalURL": "http://am:9093",
      "alerts": [{
        "status": "firing",
        "labels": {"alertname": "VpsUnhealthy", "provider": "lnvps", "account": "main",
                   "vm": "101", "severity": "critical"},
        "annotations": {"summary": "down"},
        "startsAt": "2030-01-02T03:04:05.678Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prom/graph", "fingerprint": "c0ffee0123456789"
      }]
    }"#;

    fn config(text: &str) -> Result<WebhookConfig, Vec<Problem>> {
        let table: toml::Table = text.parse().expect("toml");
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let env = |n: &str| (n == "AM_TOKEN").then(|| "s3cret".to_string());
        let c = read(
            table.get("alertmanager").cloned(),
            &["ssh".to_string()],
            &env,
            &mut problems,
            &mut warnings,
        );
        match c {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(problems),
        }
    }

    #[test]
    fn a_real_alertmanager_payload_parses() {
        let p = parse(PAYLOAD.as_bytes()).expect("parses");
        assert_eq!(p.status, AlertStatus::Firing);
        let a = &p.alerts[0];
        assert_eq!(a.alertname(), "VpsUnhealthy");
        assert_eq!(a.vm(), Ok((ProviderKind::Lnvps, "main", "101")));
        assert_eq!(
            a.episode(),
            "c0ffee0123456789@2030-01-02T03:04:05.678+00:00"
        );
    }

    #[test]
    fn bad_payloads_say_why() {
        let e = parse(b"{").expect_err("truncated");
        assert!(e.contains("not an Alertmanager webhook payload"), "{e}");
        let e = parse(PAYLOAD.replace("\"4\"", "\"3\"").as_bytes()).expect_err("v3");
        assert!(e.contains("unsupported payload version \"3\""), "{e}");
        let e = parse(PAYLOAD.replace("\"startsAt\"", "\"x\"").as_bytes()).expect_err("no start");
        assert!(e.contains("startsAt"), "{e}");
    }

    #[test]
    fn a_hand_made_alert_gets_a_fingerprint_from_its_labels() {
        let text = PAYLOAD.replace("\"fingerprint\": \"c0ffee0123456789\"", "\"x\": 1");
        let a = parse(text.as_bytes()).expect("parses").alerts.remove(0);
        let b = parse(text.as_bytes()).expect("parses").alerts.remove(0);
        assert_eq!(a.fingerprint.len(), 16);
        assert_eq!(a.episode(), b.episode());
    }

    #[test]
    fn labels_must_name_a_vm() {
        let mut a = parse(PAYLOAD.as_bytes()).expect("parses").alerts.remove(0);
        a.labels.remove("vm");
        assert_eq!(a.vm(), Err("no \"vm\" label".into()));
        a.labels.insert("vm".into(), "1".into());
        a.labels.insert("provider".into(), "aws".into());
        assert!(a.vm().is_err_and(|e| e.contains("not lnvps or stablevps")));
    }

    #[test]
    fn mappings_match_by_name_and_labels() {
        let c = config(
            r#"[alertmanager]
bearer_token_env = "AM_TOKEN"
[[alertmanager.actions]]
name = "unhealthy"
alertname = "VpsUnhealthy"
labels = { severity = "critical" }
action = "restart"
"#,
        )
        .expect("valid");
        let m = &c.mappings[0];
        assert_eq!(m.rule.ladder, vec![Remedy::Reboot]);
        let mut labels = parse(PAYLOAD.as_bytes()).expect("parses").alerts[0]
            .labels
            .clone();
        assert!(m.matches(&labels));
        labels.insert("severity".into(), "warning".into());
        assert!(!m.matches(&labels));
        labels.insert("severity".into(), "critical".into());
        labels.insert("alertname".into(), "Other".into());
        assert!(!m.matches(&labels));
    }

    /// The problems of one `[[alertmanager.actions]]` entry with these keys.
    fn mapping_problems(keys: &str) -> Vec<Problem> {
        config(&format!(
            "[alertmanager]\nbearer_token_env = \"AM_TOKEN\"\n[[alertmanager.actions]]\n{keys}"
        ))
        .expect_err("a bad mapping")
    }

    #[test]
    fn config_problems_name_their_keys() {
        let e = config("[alertmanager]\n").expect_err("no credential");
        assert_eq!(e[0].path, "alertmanager");
        let e = mapping_problems("name = \"ssh\"\nalertname = \"X\"\naction = \"explode\"\n");
        let paths: Vec<&str> = e.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "alertmanager.actions[0].name",
                "alertmanager.actions[0].action"
            ]
        );
        // The guards are a rule's: checked the same way, under the mapping's path.
        let e = mapping_problems(
            r#"name = "dead"
alertname = "X"
action = "start"
patience = "0s"
window = "0s"
max_actions = 0
"#,
        );
        let found: Vec<(&str, &str)> = e
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("alertmanager.actions[0].keep_running", KEEP_RUNNING_NEEDED),
                (
                    "alertmanager.actions[0].patience",
                    "must be greater than zero for an action"
                ),
                (
                    "alertmanager.actions[0].window",
                    "must be greater than zero for an action"
                ),
                ("alertmanager.actions[0].max_actions", "must be at least 1"),
            ]
        );
    }

    #[test]
    fn only_the_configured_token_passes() {
        let c = config("[alertmanager]\nbearer_token_env = \"AM_TOKEN\"\n").expect("valid");
        let (r, _rx) = Receiver::new(&c, Arc::new(WatchdogReport::default()));
        let h = |v: &str| http::HeaderValue::from_str(v).expect("header");
        assert!(r.bearer_ok(Some(&h("Bearer s3cret"))));
        assert!(r.bearer_ok(Some(&h("bearer s3cret"))));
        assert!(!r.bearer_ok(Some(&h("Bearer s3cre"))));
        assert!(!r.bearer_ok(Some(&h("Bearer s3cret2"))));
        assert!(!r.bearer_ok(Some(&h("Basic czNjcmV0"))));
        assert!(!r.bearer_ok(None));
    }
}
