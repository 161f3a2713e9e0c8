//! What the watchdog shows on /metrics: rule states, action counters, last actions.
//!
//! The engine writes here; the metrics encoder reads a copy when it renders. A change
//! bumps a generation the encoder waits on, so a firing rule or an action appears on
//! /metrics at once, not only at the next poll.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::journal::TargetKey;
use crate::metrics::defs;
use crate::metrics::families::FamilySet;
use crate::metrics::FamilySource;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::unix_seconds;

/// (rule, provider, account, vm, action, result-or-outcome).
type CounterKey = (String, ProviderKind, String, String, String, String);

/// What `vpswatch_alertmanager_alerts_total` counts, all shown from the start.
pub const ALERT_RESULTS: &[&str] = &[
    "acted",
    "dry_run",
    "skipped",
    "duplicate",
    "resolved",
    "no_mapping",
    "unknown_vm",
    "not_owner",
];

/// The statuses the webhook answers; `vpswatch_alertmanager_requests_total` shows each
/// from the start, so a first 401 is a rise from 0 that `increase()` sees.
pub const WEBHOOK_CODES: &[u16] = &[200, 400, 401, 405, 413, 429, 500, 503];

#[derive(Debug, Default, Clone)]
struct Data {
    /// (firing, unknown) per target.
    targets: BTreeMap<TargetKey, (bool, bool)>,
    actions: BTreeMap<CounterKey, u64>,
    outcomes: BTreeMap<CounterKey, u64>,
    last_action: BTreeMap<(ProviderKind, String, String, String), f64>,
    errors: BTreeMap<String, u64>,
    last_evaluation: Option<f64>,
    dry_run: bool,
    /// Rules that are Alertmanager mappings (their actions' `source`).
    alertmanager_rules: HashSet<String>,
    /// Webhook alerts by result; `None` while the webhook is off.
    alertmanager_alerts: Option<BTreeMap<&'static str, u64>>,
    /// Webhook requests by the status answered; empty while the webhook is off.
    alertmanager_requests: BTreeMap<u16, u64>,
}

/// Shared between the engine and the encoder.
pub struct WatchdogReport {
    data: Mutex<Data>,
    generation: watch::Sender<u64>,
}

impl Default for WatchdogReport {
    fn default() -> Self {
        Self {
            data: Mutex::new(Data::default()),
            generation: watch::channel(0).0,
        }
    }
}

impl WatchdogReport {
    fn with<R>(&self, notify: bool, f: impl FnOnce(&mut Data) -> R) -> R {
        let r = {
            let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut d)
        };
        if notify {
            self.generation.send_modify(|g| *g += 1);
        }
        r
    }

    /// Changes whenever something worth re-rendering changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Turns on `vpswatch_alertmanager_alerts_total` and names the rules that are
    /// Alertmanager mappings, whose actions count with `source="alertmanager"`.
    pub fn enable_alertmanager(&self, mapping_rules: impl IntoIterator<Item = String>) {
        self.with(true, |d| {
            d.alertmanager_rules = mapping_rules.into_iter().collect();
            d.alertmanager_alerts = Some(ALERT_RESULTS.iter().map(|r| (*r, 0)).collect());
        });
    }

    /// Counts one webhook alert by what came of it (one of [`ALERT_RESULTS`]).
    pub fn count_alertmanager(&self, result: &'static str) {
        self.with(true, |d| {
            *d.alertmanager_alerts
                .get_or_insert_with(BTreeMap::new)
                .entry(result)
                .or_default() += 1;
        });
    }

    /// Shows `vpswatch_alertmanager_requests_total` (the webhook is on), every code at 0.
    pub fn enable_alertmanager_requests(&self) {
        self.with(true, |d| {
            for code in WEBHOOK_CODES {
                d.alertmanager_requests.entry(*code).or_default();
            }
        });
    }

    /// Counts one webhook request by the status it was answered with.
    pub fn count_alertmanager_request(&self, code: u16) {
        self.with(true, |d| {
            *d.alertmanager_requests.entry(code).or_default() += 1
        });
    }

    /// The webhook count for one result (tests and the demo).
    pub fn alertmanager_count(&self, result: &str) -> u64 {
        self.with(false, |d| {
            d.alertmanager_alerts
                .as_ref()
                .and_then(|m| m.get(result).copied())
                .unwrap_or(0)
        })
    }

    pub fn set_dry_run(&self, on: bool) {
        self.with(true, |d| d.dry_run = on);
    }

    /// Records the rule's state for a target; re-renders only on change.
    pub fn set_target(&self, key: &TargetKey, firing: bool, unknown: bool) {
        let changed = {
            let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
            d.targets.insert(key.clone(), (firing, unknown)) != Some((firing, unknown))
        };
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Forgets a target (its VM is gone, or its rule or account no longer configured):
    /// its series leave /metrics with it, so label sets never pile up for VMs that are
    /// gone.
    pub fn remove_target(&self, key: &TargetKey) {
        self.with(true, |d| {
            d.targets.remove(key);
            let same = |c: &CounterKey| {
                c.0 == key.rule && c.1 == key.provider && c.2 == key.account && c.3 == key.vm
            };
            d.actions.retain(|c, _| !same(c));
            d.outcomes.retain(|c, _| !same(c));
            let vm_still_watched = d
                .targets
                .keys()
                .any(|t| t.provider == key.provider && t.account == key.account && t.vm == key.vm);
            if !vm_still_watched {
                d.last_action.retain(|(p, a, vm, _), _| {
                    !(*p == key.provider && *a == key.account && *vm == key.vm)
                });
            }
        });
    }

    pub fn count_action(&self, key: &TargetKey, action: &str, result: &str) {
        self.with(true, |d| {
            *d.actions
                .entry(counter_key(key, action, result))
                .or_default() += 1;
        });
    }

    pub fn count_outcome(&self, key: &TargetKey, action: &str, outcome: &str) {
        self.with(true, |d| {
            *d.outcomes
                .entry(counter_key(key, action, outcome))
                .or_default() += 1;
        });
    }

    pub fn set_last_action(&self, key: &TargetKey, action: &str, at: DateTime<Utc>) {
        self.with(true, |d| {
            d.last_action.insert(
                (
                    key.provider,
                    key.account.clone(),
                    key.vm.clone(),
                    action.into(),
                ),
                unix_seconds(at),
            );
        });
    }

    pub fn count_error(&self, kind: &str) {
        self.with(true, |d| *d.errors.entry(kind.into()).or_default() += 1);
    }

    /// The time of the latest round; not worth a re-render on its own.
    pub fn evaluated(&self, at: DateTime<Utc>) {
        self.with(false, |d| d.last_evaluation = Some(unix_seconds(at)));
    }

    /// The count for one (target, action, result), for tests and the demo.
    pub fn action_count(&self, key: &TargetKey, action: &str, result: &str) -> u64 {
        self.with(false, |d| {
            d.actions
                .get(&counter_key(key, action, result))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Asks the encoder to re-render.
    pub fn touch(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Every target's rule state as (target, firing, unknown), in key order: what the
    /// status page shows beside each VM and account.
    pub fn rule_states(&self) -> Vec<(TargetKey, bool, bool)> {
        self.with(false, |d| {
            d.targets
                .iter()
                .map(|(k, (firing, unknown))| (k.clone(), *firing, *unknown))
                .collect()
        })
    }

    /// Whether the global dry run is on.
    pub fn dry_run(&self) -> bool {
        self.with(false, |d| d.dry_run)
    }

    /// Adds the watchdog's families.
    pub fn render(&self, set: &mut FamilySet) {
        let d = self.with(false, |d| d.clone());
        set.gauge(
            &defs::WATCHDOG_DRY_RUN,
            &[],
            if d.dry_run { 1.0 } else { 0.0 },
        );
        if let Some(t) = d.last_evaluation {
            set.gauge(&defs::WATCHDOG_LAST_EVALUATION, &[], t);
        }
        for (k, (firing, unknown)) in &d.targets {
            let labels = [
                k.rule.as_str(),
                k.provider.as_str(),
                k.account.as_str(),
                k.vm.as_str(),
            ];
            set.gauge(&defs::RULE_FIRING, &labels, f64::from(u8::from(*firing)));
            set.gauge(&defs::RULE_UNKNOWN, &labels, f64::from(u8::from(*unknown)));
        }
        let source = |rule: &str| {
            if d.alertmanager_rules.contains(rule) {
                "alertmanager"
            } else {
                "rule"
            }
        };
        for ((rule, p, account, vm, action, result), n) in &d.actions {
            set.counter(
                &defs::ACTIONS,
                &[rule, p.as_str(), account, vm, action, result, source(rule)],
                *n as f64,
            );
        }
        for ((rule, p, account, vm, action, outcome), n) in &d.outcomes {
            set.counter(
                &defs::ACTION_OUTCOMES,
                &[rule, p.as_str(), account, vm, action, outcome, source(rule)],
                *n as f64,
            );
        }
        for ((p, account, vm, action), t) in &d.last_action {
            set.gauge(&defs::LAST_ACTION, &[p.as_str(), account, vm, action], *t);
        }
        for (kind, n) in &d.errors {
            set.counter(&defs::WATCHDOG_ERRORS, &[kind], *n as f64);
        }
        for (result, n) in d.alertmanager_alerts.iter().flatten() {
            set.counter(&defs::ALERTMANAGER_ALERTS, &[result], *n as f64);
        }
        for (code, n) in &d.alertmanager_requests {
            set.counter(
                &defs::ALERTMANAGER_REQUESTS,
                &[&code.to_string()],
                *n as f64,
            );
        }
    }
}

fn counter_key(key: &TargetKey, action: &str, result: &str) -> CounterKey {
    (
        key.rule.clone(),
        key.provider,
        key.account.clone(),
        key.vm.clone(),
        action.to_string(),
        result.to_string(),
    )
}

impl FamilySource for WatchdogReport {
    fn render(&self, set: &mut FamilySet) {
        WatchdogReport::render(self, set);
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        WatchdogReport::subscribe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rule: &str, vm: &str) -> TargetKey {
        TargetKey {
            rule: rule.into(),
            provider: ProviderKind::Lnvps,
            account: "a".into(),
            vm: vm.into(),
        }
    }

    fn rendered(r: &WatchdogReport) -> String {
        let mut set = FamilySet::default();
        r.render(&mut set);
        String::from_utf8(set.render().to_vec()).unwrap_or_default()
    }

    #[test]
    fn a_forgotten_vm_takes_its_series_with_it() {
        let r = WatchdogReport::default();
        for vm in ["1", "2"] {
            r.set_target(&key("ssh", vm), true, false);
            r.count_action(&key("ssh", vm), "reboot", "ok");
            r.count_outcome(&key("ssh", vm), "reboot", "recovered");
            r.set_last_action(&key("ssh", vm), "reboot", chrono::Utc::now());
        }
        r.remove_target(&key("ssh", "1"));
        let text = rendered(&r);
        assert!(!text.contains("vm=\"1\""), "{text}");
        assert_eq!(text.matches("vm=\"2\"").count(), 5, "{text}");
    }

    #[test]
    fn actions_and_outcomes_say_where_the_action_came_from() {
        let r = WatchdogReport::default();
        r.enable_alertmanager(["am".to_string()]);
        for rule in ["ssh", "am"] {
            r.count_action(&key(rule, "1"), "reboot", "ok");
            r.count_outcome(&key(rule, "1"), "reboot", "recovered");
        }
        let text = rendered(&r);
        for (family, rule, source) in [
            ("vpswatch_actions_total", "ssh", "rule"),
            ("vpswatch_action_outcomes_total", "ssh", "rule"),
            ("vpswatch_actions_total", "am", "alertmanager"),
            ("vpswatch_action_outcomes_total", "am", "alertmanager"),
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(family) && l.contains(&format!("rule=\"{rule}\"")));
            assert!(
                line.is_some_and(|l| l.contains(&format!("source=\"{source}\""))),
                "{family} {rule}: {text}"
            );
        }
    }
}
