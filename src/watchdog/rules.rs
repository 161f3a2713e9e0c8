//! Watchdog rules as configured: `[watchdog]` settings and `[[rules]]`, read into checked
//! [`Rule`]s.
//!
//! Validation rejects rules that could only do harm: an action on an account-level
//! condition, `start` on a VM vpswatch cannot know should run (`keep_running`), an
//! action without patience or cap. Every problem carries its key path (`rules[2].action`).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::selector::{Selector, SelectorConfig};
use vpswatch_model::problem::Problem;

/// Journal entries kept by default (`[watchdog] journal_entries`); older ones are pruned
/// (they only serve the API and audits).
pub const DEFAULT_KEEP_ENTRIES: u64 = 10_000;

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The provider reports the VM stopped (or crashed).
    VmNotRunning,
    /// The provider reports the VM running but its TCP port does not answer.
    ProbeFailing,
    /// The account's API has not answered successfully for longer than the staleness
    /// limit. Account-level.
    ProviderUnreachable,
    /// CPU usage ratio (0–1, all cores) above the threshold.
    CpuAbove(f64),
    /// Memory in use over the VM's memory above the threshold (0–1).
    MemoryAbove(f64),
    /// The account's API key expires within the duration. Account-level.
    ApiKeyExpiring(Duration),
    /// An Alertmanager alert mapped by `[[alertmanager.actions]]`: never evaluated on
    /// vpswatch's own data, only acted on when the webhook delivers it.
    Alertmanager,
}

impl Condition {
    pub fn name(&self) -> &'static str {
        match self {
            Condition::VmNotRunning => "vm_not_running",
            Condition::ProbeFailing => "probe_failing",
            Condition::ProviderUnreachable => "provider_unreachable",
            Condition::CpuAbove(_) => "cpu_above",
            Condition::MemoryAbove(_) => "memory_above",
            Condition::ApiKeyExpiring(_) => "api_key_expiring",
            Condition::Alertmanager => "alertmanager",
        }
    }

    /// Whether the condition is about a whole account rather than one VM.
    pub fn is_account_level(&self) -> bool {
        matches!(
            self,
            Condition::ProviderUnreachable | Condition::ApiKeyExpiring(_)
        )
    }
}

/// One rung of an escalation ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Remedy {
    Reboot,
    Start,
    /// Stop, wait until the provider reports it stopped, then start: a power cycle for
    /// guests a reset does not cure.
    StopStart,
}

impl Remedy {
    pub fn as_str(self) -> &'static str {
        match self {
            Remedy::Reboot => "reboot",
            Remedy::Start => "start",
            Remedy::StopStart => "stop_start",
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    /// How long the condition must hold (measured on the data's own timestamps).
    pub hold_for: Duration,
    /// Consecutive failing observations needed to fire (N).
    pub failures: u32,
    /// Consecutive good observations needed to clear (M).
    pub recoveries: u32,
    /// Remedies in order; empty = alert only.
    pub ladder: Vec<Remedy>,
    /// Least time between two actions on the same VM (by any rule).
    pub cooldown: Duration,
    /// At most this many actions per VM within `window`; then stop and escalate.
    pub max_actions: u32,
    pub window: Duration,
    /// How long after an action the VM has to come back before the next rung.
    pub patience: Duration,
    /// Start the VM even though vpswatch cannot tell a crash from its owner stopping it.
    pub keep_running: bool,
    pub dry_run: bool,
    pub selector: Selector,
    /// probe_failing only: probe this port instead of the account's default.
    pub port: Option<u16>,
}

/// `[watchdog]` plus the rules.
#[derive(Debug, Clone, Default)]
pub struct WatchdogConfig {
    /// Global dry-run: everything but the provider call.
    pub dry_run: bool,
    /// Alertmanager whose active silences suppress actions.
    pub alertmanager_url: Option<Url>,
    pub alertmanager_timeout: Duration,
    /// How often the silence list is re-read (at most).
    pub silence_refresh: Duration,
    /// Journal entries kept; the oldest are pruned beyond this (they only serve
    /// `/api/v1/actions` and audits; rule state is kept separately).
    pub journal_entries: u64,
    pub rules: Vec<Rule>,
    /// `[[maintenance]]` windows (validated).
    pub maintenance: Vec<super::maintenance::MaintenanceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub(crate) struct RawWatchdog {
    dry_run: bool,
    alertmanager_url: Option<String>,
    #[serde(with = "humantime_serde")]
    alertmanager_timeout: Duration,
    #[serde(with = "humantime_serde")]
    silence_refresh: Duration,
    journal_entries: u64,
}

impl Default for RawWatchdog {
    fn default() -> Self {
        Self {
            dry_run: false,
            alertmanager_url: None,
            alertmanager_timeout: Duration::from_secs(5),
            silence_refresh: Duration::from_secs(15),
            journal_entries: DEFAULT_KEEP_ENTRIES,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRule {
    name: String,
    condition: String,
    threshold: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    within: Option<Duration>,
    #[serde(default, rename = "for", with = "humantime_serde")]
    hold_for: Option<Duration>,
    failures: Option<u32>,
    recoveries: Option<u32>,
    action: Option<String>,
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
    port: Option<u16>,
}

const CONDITIONS: &str = "vm_not_running, probe_failing, provider_unreachable, cpu_above, \
                          memory_above, api_key_expiring";

pub(crate) fn check_watchdog(
    raw: RawWatchdog,
    rules: Vec<Rule>,
    maintenance: Vec<super::maintenance::MaintenanceConfig>,
    problems: &mut Vec<Problem>,
) -> WatchdogConfig {
    problems.extend(super::maintenance::validate(&maintenance));
    let alertmanager_url = raw
        .alertmanager_url
        .and_then(|text| match Url::parse(&text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(u) => {
                problems.push(Problem {
                    path: "watchdog.alertmanager_url".into(),
                    message: format!("scheme {:?} is not http or https", u.scheme()),
                });
                None
            }
            Err(e) => {
                problems.push(Problem {
                    path: "watchdog.alertmanager_url".into(),
                    message: format!("{text:?} is not a URL: {e}"),
                });
                None
            }
        });
    for (key, d) in [
        ("watchdog.alertmanager_timeout", raw.alertmanager_timeout),
        ("watchdog.silence_refresh", raw.silence_refresh),
    ] {
        if d.is_zero() {
            problems.push(Problem {
                path: key.into(),
                message: "must be greater than zero".into(),
            });
        }
    }
    if raw.journal_entries == 0 {
        problems.push(Problem {
            path: "watchdog.journal_entries".into(),
            message: "must be at least 1".into(),
        });
    }
    WatchdogConfig {
        dry_run: raw.dry_run,
        alertmanager_url,
        alertmanager_timeout: raw.alertmanager_timeout,
        silence_refresh: raw.silence_refresh,
        journal_entries: raw.journal_entries,
        rules,
        maintenance,
    }
}

/// Why a ladder with `start` needs `keep_running` (rules and Alertmanager mappings).
pub(crate) const KEEP_RUNNING_NEEDED: &str = "starting a stopped VM needs keep_running = true: \
     vpswatch cannot tell a crash from its owner stopping it";

/// The guards every acting rule and Alertmanager mapping has, with their defaults.
pub(crate) struct Guards {
    pub cooldown: Duration,
    pub max_actions: u32,
    pub window: Duration,
    pub patience: Duration,
}

impl Guards {
    /// The configured keys, each defaulted when absent.
    pub(crate) fn configured(
        cooldown: Option<Duration>,
        max_actions: Option<u32>,
        window: Option<Duration>,
        patience: Option<Duration>,
    ) -> Guards {
        Guards {
            cooldown: cooldown.unwrap_or(Duration::from_secs(15 * 60)),
            max_actions: max_actions.unwrap_or(3),
            window: window.unwrap_or(Duration::from_secs(24 * 3600)),
            patience: patience.unwrap_or(Duration::from_secs(5 * 60)),
        }
    }

    /// Records what makes the guards unable to bound an action: no patience to judge
    /// it, no window to count in, a cap of nothing (`cap_hint` says what to use instead).
    pub(crate) fn check(&self, problem: &mut dyn FnMut(&str, String), cap_hint: &str) {
        for (key, d) in [("patience", self.patience), ("window", self.window)] {
            if d.is_zero() {
                problem(key, "must be greater than zero for an action".into());
            }
        }
        if self.max_actions == 0 {
            problem("max_actions", format!("must be at least 1{cap_hint}"));
        }
    }
}

/// Checks one rule; `None` when it has problems (all of them recorded).
pub(crate) fn check_rule(prefix: &str, raw: RawRule, problems: &mut Vec<Problem>) -> Option<Rule> {
    let before = problems.len();
    let mut problem = vpswatch_model::problem::under(prefix, problems);
    if let Err(why) = vpswatch_model::problem::check_label_name(&raw.name) {
        problem("name", why.to_string());
    }
    let ratio = |problem: &mut dyn FnMut(&str, String)| match raw.threshold {
        Some(t) if t > 0.0 && t < 1.0 => Some(t),
        Some(t) => {
            problem(
                "threshold",
                format!("{t} is not a ratio between 0 and 1 (e.g. 0.9 for 90 %)"),
            );
            None
        }
        None => {
            problem(
                "threshold",
                format!("{} needs a threshold (a ratio, e.g. 0.9)", raw.condition),
            );
            None
        }
    };
    let condition = match raw.condition.as_str() {
        "vm_not_running" => Some(Condition::VmNotRunning),
        "probe_failing" => Some(Condition::ProbeFailing),
        "provider_unreachable" => Some(Condition::ProviderUnreachable),
        "cpu_above" => ratio(&mut problem).map(Condition::CpuAbove),
        "memory_above" => ratio(&mut problem).map(Condition::MemoryAbove),
        "api_key_expiring" => match raw.within {
            Some(d) if !d.is_zero() => Some(Condition::ApiKeyExpiring(d)),
            _ => {
                problem(
                    "within",
                    "api_key_expiring needs `within`, a duration such as \"14d\"".into(),
                );
                None
            }
        },
        other => {
            problem(
                "condition",
                format!("{other:?} is not a condition (one of: {CONDITIONS})"),
            );
            None
        }
    };
    if raw.threshold.is_some() && !matches!(raw.condition.as_str(), "cpu_above" | "memory_above") {
        problem("threshold", format!("{} takes no threshold", raw.condition));
    }
    if raw.port.is_some() && raw.condition != "probe_failing" {
        problem("port", format!("{} takes no probe port", raw.condition));
    }
    if raw.port == Some(0) {
        problem("port", "must be a TCP port (1-65535)".into());
    }
    if raw.within.is_some() && raw.condition != "api_key_expiring" {
        problem("within", format!("{} takes no `within`", raw.condition));
    }

    let first = match raw.action.as_deref() {
        None | Some("none") => None,
        Some("reboot") => Some(Remedy::Reboot),
        Some("start") => Some(Remedy::Start),
        Some("stop_start") => Some(Remedy::StopStart),
        Some(other) => {
            problem(
                "action",
                format!("{other:?} is not an action (one of: none, reboot, start, stop_start)"),
            );
            None
        }
    };
    let ladder: Vec<Remedy> = first
        .into_iter()
        .chain(raw.escalate.iter().copied())
        .collect();
    if first.is_none() && !raw.escalate.is_empty() {
        problem("escalate", "escalation rungs need a first `action`".into());
    }
    if let Some(c) = &condition {
        if c.is_account_level() && !ladder.is_empty() {
            problem(
                "action",
                format!(
                    "{} is about a whole account: it can alert but not act on a VM",
                    c.name()
                ),
            );
        }
        if *c == Condition::VmNotRunning {
            if let Some(r) = ladder.iter().find(|r| **r != Remedy::Start) {
                problem(
                    "action",
                    format!(
                        "a VM that is not running can only be started; {:?} does not apply",
                        r.as_str()
                    ),
                );
            }
            if !ladder.is_empty() && !raw.keep_running {
                problem("keep_running", KEEP_RUNNING_NEEDED.into());
            }
        } else if ladder.contains(&Remedy::Start) {
            problem(
                "action",
                "`start` only applies to vm_not_running (a running VM is rebooted, not started)"
                    .into(),
            );
        }
    }
    let guards = Guards::configured(raw.cooldown, raw.max_actions, raw.window, raw.patience);
    if !ladder.is_empty() {
        guards.check(
            &mut problem,
            " (use action = \"none\" for alert-only rules)",
        );
    }
    let failures = raw.failures.unwrap_or(3);
    let recoveries = raw.recoveries.unwrap_or(2);
    if failures == 0 {
        problem("failures", "must be at least 1".into());
    }
    if recoveries == 0 {
        problem("recoveries", "must be at least 1".into());
    }
    let selector = Selector::new(&raw.selector);
    if let Some(c) = &condition {
        if c.is_account_level() && selector.names_vms() {
            problem(
                "match",
                format!(
                    "{} is about a whole account: match by provider or accounts, not VMs",
                    c.name()
                ),
            );
        }
    }
    // Done recording under this prefix: `problems` itself is read next.
    drop(problem);
    if problems.len() > before {
        return None;
    }
    Some(Rule {
        name: raw.name,
        condition: condition?,
        hold_for: raw.hold_for.unwrap_or(Duration::ZERO),
        failures,
        recoveries,
        ladder,
        cooldown: guards.cooldown,
        max_actions: guards.max_actions,
        window: guards.window,
        patience: guards.patience,
        keep_running: raw.keep_running,
        dry_run: raw.dry_run,
        selector,
        port: raw.port,
    })
}
