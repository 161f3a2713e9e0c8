//! The watchdog loop: after every poll, probe round or tick, evaluate each rule on each
//! target, run the hysteresis, and when a rule asks for a remedy pass it through the
//! guards, journal it, then send it.
//!
//! Decisions are made only when new data arrives (or a patience window ends), so skips
//! are counted per observation, not per tick. Provider calls run in their own tasks and
//! report back over a channel; a target with a call in flight is never acted on again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::action::{self, Skip};
use super::evaluate::{self, Freshness, Observation, Verdict};
use super::journal::{ActionRecord, ActionStatus, Episode, Journal, Outcome, Source, TargetKey};
use super::probe::{ProbeResult, ProbeStore, VmKey};
use super::report::WatchdogReport;
use super::rules::{Condition, Remedy, Rule, WatchdogConfig};
use super::selector::Target;
use super::state::{Changes, TargetState, Want};
use super::webhook::{Alert, AlertResult, AlertStatus as AmStatus, Delivery, Mapping};
use crate::notify::{AlertKey, AlertStatus, AlertUpdate, Event, EventKind, Facts, Notify};
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::SharedClock;
use vpswatch_model::snapshot::{AccountSnapshot, SnapshotStore};
use vpswatch_model::vm::Vm;
use vpswatch_providers::{ProviderError, SharedProvider};

/// How often the loop wakes without new data (patience deadlines, stale data).
const TICK: Duration = Duration::from_secs(1);

/// How often the running engine prunes Alertmanager episodes past their retention
/// (restore prunes at start-up; this bounds a daemon that runs for months).
const EPISODE_PRUNE_EVERY: chrono::Duration = chrono::Duration::hours(1);

/// Optional gates on actions (maintenance windows, Alertmanager silences).
#[async_trait::async_trait]
pub trait ActionGate: Send + Sync {
    /// `Some(skip)` when the action on this target must not happen now.
    async fn check(&self, target: Target<'_>, now: DateTime<Utc>) -> Option<Skip>;
}

/// Everything the engine needs.
pub struct WatchdogParts {
    pub config: WatchdogConfig,
    pub staleness_limit: Duration,
    pub store: Arc<SnapshotStore>,
    pub probes: Arc<ProbeStore>,
    pub providers: Vec<SharedProvider>,
    pub journal: Journal,
    pub notifier: Arc<dyn Notify>,
    pub clock: SharedClock,
    pub report: Arc<WatchdogReport>,
    pub gates: Vec<Arc<dyn ActionGate>>,
    /// The Alertmanager webhook's mappings and the inbox its deliveries arrive in.
    pub webhook: Option<(Vec<Mapping>, mpsc::Receiver<Delivery>)>,
    /// Replicas sharing the accounts: every provider call first proves ownership in etcd.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The result of one provider call, sent back to the loop.
struct Finished {
    key: TargetKey,
    id: u64,
    result: Result<(), ProviderError>,
    /// Not sent because etcd could not be asked (see `FenceError::etcd_unavailable`).
    unsent: bool,
}

struct Engine {
    /// Shared so a round can hold a rule while mutating the engine, without copying it.
    rules: Vec<Arc<Rule>>,
    dry_run: bool,
    freshness: Freshness,
    store: Arc<SnapshotStore>,
    probes: Arc<ProbeStore>,
    providers: HashMap<(ProviderKind, String), SharedProvider>,
    journal: Journal,
    notifier: Arc<dyn Notify>,
    clock: SharedClock,
    report: Arc<WatchdogReport>,
    gates: Vec<Arc<dyn ActionGate>>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    targets: HashMap<TargetKey, TargetState>,
    /// Newest action per VM, any rule (the cooldown is per VM).
    last_action: HashMap<VmKey, DateTime<Utc>>,
    /// Per VM whose last action etcd could not fence: when to try again (one lease TTL,
    /// doubling up to the cooldown), and how many
    /// refusals in a row (the first is told to a human, the rest only logged).
    fence_retry: HashMap<VmKey, (DateTime<Utc>, u32)>,
    next_id: u64,
    dirty: HashSet<TargetKey>,
    removed: Vec<TargetKey>,
    records: Vec<ActionRecord>,
    in_flight: HashSet<TargetKey>,
    /// Last skip reason per target, so a repeated skip is logged once.
    last_skip: HashMap<TargetKey, String>,
    /// Whether the last journal write failed, so an outage of the state store (retried
    /// every round) is logged when it starts and ends, not every round.
    journal_failing: bool,
    done_tx: mpsc::UnboundedSender<Finished>,
    /// `[[alertmanager.actions]]`; their rules are in `rules` too.
    mappings: Vec<Mapping>,
    /// Alertmanager firing episodes remembered (journaled), by `fingerprint@startsAt`.
    episodes: HashMap<String, Episode>,
    /// Episodes changed since the last commit.
    pending_episodes: Vec<Episode>,
    /// Episodes whose "not acted on" reason was logged, so re-sends do not log again.
    logged_episodes: HashSet<String>,
    /// When episodes past their retention were last pruned (restore counts).
    episodes_pruned_at: DateTime<Utc>,
}

/// Waits for the next webhook delivery; never resolves without a webhook.
async fn next_delivery(inbox: &mut Option<mpsc::Receiver<Delivery>>) -> Option<Delivery> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Restores the journal and runs until cancelled.
pub async fn run(parts: WatchdogParts, cancel: CancellationToken) {
    let now = parts.clock.now();
    let restored = match parts.journal.restore(now) {
        Ok(r) => r,
        Err(e) => {
            // Without the journal, cooldowns and caps are unknown: acting would be unsafe.
            tracing::error!(error = %e, "watchdog disabled: cannot read its journal");
            parts.report.count_error("journal");
            return;
        }
    };
    for id in &restored.interrupted {
        tracing::warn!(
            id,
            "action was in flight when vpswatch stopped; counted as sent, outcome unknown"
        );
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let providers = parts
        .providers
        .iter()
        .map(|p| ((p.kind(), p.account().to_string()), p.clone()))
        .collect();
    parts.report.set_dry_run(parts.config.dry_run);
    for (key, s) in &restored.targets {
        parts.report.set_target(key, s.firing, s.unknown.is_some());
    }
    let (mappings, mut inbox) = match parts.webhook {
        Some((m, rx)) => (m, Some(rx)),
        None => (Vec::new(), None),
    };
    if inbox.is_some() {
        parts
            .report
            .enable_alertmanager(mappings.iter().map(|m| m.rule.name.clone()));
    }
    let mut rules: Vec<Arc<Rule>> = parts.config.rules.into_iter().map(Arc::new).collect();
    rules.extend(mappings.iter().map(|m| Arc::new(m.rule.clone())));
    let mut engine = Engine {
        rules,
        dry_run: parts.config.dry_run,
        freshness: Freshness {
            staleness_limit: parts.staleness_limit,
        },
        store: parts.store,
        probes: parts.probes,
        providers,
        journal: parts.journal,
        notifier: parts.notifier,
        clock: parts.clock,
        report: parts.report,
        gates: parts.gates,
        cluster: parts.cluster,
        targets: restored.targets,
        last_action: restored.last_action,
        fence_retry: HashMap::new(),
        next_id: restored.next_id,
        dirty: HashSet::new(),
        removed: Vec::new(),
        records: Vec::new(),
        in_flight: HashSet::new(),
        last_skip: HashMap::new(),
        journal_failing: false,
        done_tx,
        mappings,
        episodes: restored.episodes,
        pending_episodes: Vec::new(),
        logged_episodes: HashSet::new(),
        episodes_pruned_at: now,
    };
    // Alerts that were open when vpswatch stopped are announced again; the notifier
    // drops repeats, so a crash between its queue and our commit loses nothing.
    engine.reannounce();
    tracing::info!(
        rules = engine.rules.len(),
        restored = engine.targets.len(),
        dry_run = engine.dry_run,
        "watchdog started"
    );
    let mut snaps = engine.store.subscribe();
    let mut probes = engine.probes.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = snaps.changed() => if r.is_err() { break },
            r = probes.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
            Some(done) = done_rx.recv() => engine.finished(done),
            Some(delivery) = next_delivery(&mut inbox) => {
                engine.delivery(delivery).await;
                continue;
            }
        }
        engine.round().await;
    }
    // Let calls in flight report, so their outcome is journaled (bounded by shutdown).
    while !engine.in_flight.is_empty() {
        tokio::select! {
            Some(done) = done_rx.recv() => engine.finished(done),
            _ = tokio::time::sleep(Duration::from_secs(5)) => break,
        }
    }
    engine.flush();
}

impl Engine {
    fn reannounce(&mut self) {
        let now = self.clock.now();
        let firing: Vec<(TargetKey, TargetState)> = self
            .targets
            .iter()
            .filter(|(_, s)| s.firing)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, s) in firing {
            self.notifier.alert(AlertUpdate {
                key: alert_key(&key),
                status: AlertStatus::Firing,
                facts: Facts {
                    vm_name: s.vm_name.clone(),
                    summary: s.last_summary.clone(),
                    ..Facts::default()
                },
                at: now,
            });
        }
    }

    /// One evaluation of every rule on every target.
    async fn round(&mut self) {
        let now = self.clock.now();
        let snapshots = self.store.all();
        let probes = self.probes.latest();
        let mut seen: HashSet<TargetKey> = HashSet::new();
        for rule_idx in 0..self.rules.len() {
            for snap in &snapshots {
                self.evaluate_account(rule_idx, snap, &probes, now, &mut seen)
                    .await;
            }
        }
        // Targets whose rule is gone from the config, or whose account is.
        let stale: Vec<TargetKey> = self
            .targets
            .keys()
            .filter(|k| !seen.contains(k))
            .filter(|k| {
                !self.rules.iter().any(|r| r.name == k.rule)
                    || !snapshots
                        .iter()
                        .any(|s| s.provider == k.provider && s.account == k.account)
            })
            .cloned()
            .collect();
        for key in stale {
            self.forget(&key, "rule or account no longer configured", now);
        }
        self.report.evaluated(now);
        self.flush();
    }

    async fn evaluate_account(
        &mut self,
        rule_idx: usize,
        snap: &Arc<AccountSnapshot>,
        probes: &HashMap<VmKey, Vec<ProbeResult>>,
        now: DateTime<Utc>,
        seen: &mut HashSet<TargetKey>,
    ) {
        let rule = &self.rules[rule_idx];
        // Alertmanager mappings act on deliveries, not on vpswatch's own data.
        if rule.condition == Condition::Alertmanager
            || !rule
                .selector
                .may_match_account(snap.provider, &snap.account)
        {
            return;
        }
        let key_for = |vm: &str| TargetKey {
            rule: rule.name.clone(),
            provider: snap.provider,
            account: snap.account.clone(),
            vm: vm.to_string(),
        };
        if rule.condition.is_account_level() {
            let target = Target {
                provider: snap.provider,
                account: &snap.account,
                vm: None,
                vm_name: None,
            };
            if !rule.selector.matches(target) {
                return;
            }
            let Some(obs) = evaluate::evaluate_account(&rule.condition, snap, now, self.freshness)
            else {
                return;
            };
            let key = key_for("");
            seen.insert(key.clone());
            self.process(rule_idx, key, obs, snap, None, now).await;
            return;
        }
        // A cheap handle on the snapshot's data: the VMs are borrowed, not copied.
        let data = snap.data.clone();
        let vms: &[Vm] = data.as_deref().map(|d| d.vms.as_slice()).unwrap_or(&[]);
        for vm in vms {
            let target = Target {
                provider: snap.provider,
                account: &snap.account,
                vm: Some(&vm.id),
                vm_name: Some(&vm.name),
            };
            if !self.rules[rule_idx].selector.matches(target) {
                continue;
            }
            let probe_key = (snap.provider, snap.account.clone(), vm.id.clone());
            if self.rules[rule_idx].condition == Condition::ProbeFailing
                && probes.get(&probe_key).is_some_and(Vec::is_empty)
            {
                // Excluded from probing ([[probes.targets]]): not this rule's target.
                continue;
            }
            let port = self.rules[rule_idx].port;
            let probe = probes
                .get(&(snap.provider, snap.account.clone(), vm.id.clone()))
                .and_then(|rs| {
                    rs.iter().find(|r| match port {
                        Some(p) => r.port == p,
                        None => r.default,
                    })
                });
            let obs = evaluate::evaluate_vm(
                &self.rules[rule_idx].condition,
                snap,
                Some(vm),
                probe,
                now,
                self.freshness,
            );
            let key = TargetKey {
                rule: self.rules[rule_idx].name.clone(),
                provider: snap.provider,
                account: snap.account.clone(),
                vm: vm.id.clone(),
            };
            seen.insert(key.clone());
            self.process(rule_idx, key, obs, snap, Some(vm), now).await;
        }
        // Known targets of this rule and account that the provider no longer lists.
        let rule_name = self.rules[rule_idx].name.clone();
        let missing: Vec<TargetKey> = self
            .targets
            .keys()
            .filter(|k| {
                k.rule == rule_name
                    && k.provider == snap.provider
                    && k.account == snap.account
                    && !k.vm.is_empty()
                    && !seen.contains(*k)
            })
            .cloned()
            .collect();
        let fresh = snap.is_up() && snap.data.is_some();
        for key in missing {
            seen.insert(key.clone());
            if fresh {
                // A fresh, successful list without the VM: it is gone (deleted or moved).
                self.forget(&key, "the VM is no longer listed by the provider", now);
            } else {
                let obs = evaluate::evaluate_vm(
                    &self.rules[rule_idx].condition,
                    snap,
                    None,
                    None,
                    now,
                    self.freshness,
                );
                self.process(rule_idx, key, obs, snap, None, now).await;
            }
        }
    }

    /// Drops a target's state (resolving its alert if it was firing).
    fn forget(&mut self, key: &TargetKey, why: &str, now: DateTime<Utc>) {
        if let Some(s) = self.targets.remove(key) {
            if s.firing {
                self.notifier.alert(AlertUpdate {
                    key: alert_key(key),
                    status: AlertStatus::Resolved,
                    facts: Facts {
                        vm_name: s.vm_name.clone(),
                        summary: why.to_string(),
                        next_step: "nothing: vpswatch stopped watching this target".into(),
                        ..Facts::default()
                    },
                    at: now,
                });
            }
            tracing::info!(rule = %key.rule, account = %key.account, vm = %key.vm, why, "watchdog target dropped");
            self.report.remove_target(key);
            self.last_skip.remove(key);
            self.dirty.remove(key);
            self.removed.push(key.clone());
        }
    }

    async fn process(
        &mut self,
        rule_idx: usize,
        key: TargetKey,
        obs: Observation,
        snap: &AccountSnapshot,
        vm: Option<&Vm>,
        now: DateTime<Utc>,
    ) {
        let rule = self.rules[rule_idx].clone();
        let state = self.targets.entry(key.clone()).or_default();
        if let Some(vm) = vm {
            if state.vm_name != vm.name {
                state.vm_name = vm.name.clone();
            }
        }
        let before = state.clone();
        let changes = state.observe(&rule, &obs, now);
        // An action still under way (a slow provider, a fence waiting on etcd) has no
        // effect to judge yet: its patience starts when the provider accepts it.
        let expired = if self.in_flight.contains(&key) {
            None
        } else {
            state.patience_expired(now)
        };
        let after = state.clone();
        if after.durably_differs(&before, &rule) {
            self.dirty.insert(key.clone());
        }
        self.report
            .set_target(&key, after.firing, after.unknown.is_some());
        self.announce(&rule, &key, &after, &obs, &changes, snap, vm, now);
        if let Some(a) = &expired {
            self.outcome(
                &rule,
                &key,
                &after,
                a.journal_id,
                a.remedy,
                Outcome::NotRecovered,
                now,
            );
        }
        if let Some(why) = &changes.became_unknown {
            if after.firing && !rule.ladder.is_empty() && !after.gave_up {
                self.skipped(
                    &key,
                    "none",
                    &Skip::Error(format!("data unknown: {why}")),
                    "skipped_unknown",
                );
            }
        }
        if changes.counted || expired.is_some() {
            self.decide(&rule, &key, snap, vm, &obs, now).await;
        }
    }

    /// Tells the notifier and the log about state changes.
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &mut self,
        rule: &Rule,
        key: &TargetKey,
        state: &TargetState,
        obs: &Observation,
        changes: &Changes,
        snap: &AccountSnapshot,
        vm: Option<&Vm>,
        now: DateTime<Utc>,
    ) {
        if changes.fired {
            tracing::warn!(rule = %rule.name, account = %key.account, vm = %key.vm, summary = %obs.summary, "rule firing");
            let next = if !rule.ladder.is_empty() && !self.actions_enabled(key) {
                format!("alert only: {}", Skip::Disabled.describe())
            } else {
                next_step_when_firing(rule, state)
            };
            self.notifier.alert(AlertUpdate {
                key: alert_key(key),
                status: AlertStatus::Firing,
                facts: facts(rule, state, obs, snap, vm, next),
                at: now,
            });
        }
        if changes.resolved {
            tracing::info!(rule = %rule.name, account = %key.account, vm = %key.vm, summary = %obs.summary, "rule resolved");
            let next = match &changes.recovered {
                Some(a) => format!(
                    "recovered after the {} sent at {} (journal #{}); counters reset",
                    a.remedy.as_str(),
                    a.sent_at.to_rfc3339(),
                    a.journal_id
                ),
                None => "nothing: recovered on its own".into(),
            };
            let mut f = facts(rule, state, obs, snap, vm, next);
            f.journal_id = changes.recovered.as_ref().map(|a| a.journal_id);
            self.notifier.alert(AlertUpdate {
                key: alert_key(key),
                status: AlertStatus::Resolved,
                facts: f,
                at: now,
            });
        }
        if let Some(a) = &changes.recovered {
            self.outcome(
                rule,
                key,
                state,
                a.journal_id,
                a.remedy,
                Outcome::Recovered,
                now,
            );
        }
    }

    /// Journals and reports what followed an action.
    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &mut self,
        rule: &Rule,
        key: &TargetKey,
        state: &TargetState,
        id: u64,
        remedy: Remedy,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) {
        let label = match outcome {
            Outcome::Recovered => "recovered",
            Outcome::NotRecovered => "not_recovered",
        };
        self.report.count_outcome(key, remedy.as_str(), label);
        if let Some(mut rec) = self.record(id) {
            rec.outcome = Some(outcome);
            rec.outcome_at = Some(now);
            self.records.push(rec);
        }
        if outcome == Outcome::NotRecovered {
            tracing::warn!(rule = %rule.name, account = %key.account, vm = %key.vm, action = remedy.as_str(), "no recovery within the rule's patience");
            let next = match rule.ladder.get(state.rung) {
                Some(r) => format!("next: {} once the failure is confirmed again", r.as_str()),
                None => "no rung left: vpswatch stops acting; a human must look".into(),
            };
            self.notifier.event(Event {
                id: format!("action-{id}-not-recovered"),
                kind: EventKind::ActionNotRecovered,
                key: alert_key(key),
                facts: Facts {
                    vm_name: state.vm_name.clone(),
                    summary: format!(
                        "{} did not bring the VM back within {}",
                        remedy.as_str(),
                        humantime::format_duration(rule.patience)
                    ),
                    details: vec![],
                    next_step: next,
                    journal_id: Some(id),
                },
                at: now,
            });
        }
    }

    /// Whether the target's account may act at all (false for a read-only key).
    fn actions_enabled(&self, key: &TargetKey) -> bool {
        self.providers
            .get(&(key.provider, key.account.clone()))
            .is_some_and(|p| p.actions_enabled())
    }

    /// A journal entry, from this round's pending writes or the store.
    fn record(&self, id: u64) -> Option<ActionRecord> {
        if let Some(r) = self.records.iter().rev().find(|r| r.id == id) {
            return Some(r.clone());
        }
        match self.journal.get(id) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, id, "cannot read journal entry");
                None
            }
        }
    }

    fn skipped(&mut self, key: &TargetKey, action: &str, skip: &Skip, result: &str) {
        self.report.count_action(key, action, result);
        let text = skip.describe();
        if self.last_skip.get(key) != Some(&text) {
            tracing::info!(rule = %key.rule, account = %key.account, vm = %key.vm, action, why = %text, "action skipped");
            self.last_skip.insert(key.clone(), text);
        }
    }

    /// Turns what the ladder wants into an action, a skip or giving up.
    async fn decide(
        &mut self,
        rule: &Rule,
        key: &TargetKey,
        snap: &AccountSnapshot,
        vm: Option<&Vm>,
        obs: &Observation,
        now: DateTime<Utc>,
    ) {
        if self.in_flight.contains(key) {
            return;
        }
        let Some(state) = self.targets.get(key) else {
            return;
        };
        let remedy = match state.want(rule, now) {
            Want::Nothing => return,
            Want::GiveUp => {
                self.give_up(
                    rule,
                    key,
                    "every rung of the ladder was tried without recovery",
                    now,
                );
                return;
            }
            Want::Act(r) => r,
        };
        // The verdict must be a fresh "bad" right now; anything else is not evidence.
        if obs.verdict != Verdict::Bad {
            return;
        }
        let Some(vm) = vm else { return };
        let Some(provider) = self
            .providers
            .get(&(key.provider, key.account.clone()))
            .cloned()
        else {
            return;
        };
        let Some(remedy) = self.shared_ladder(rule, key, remedy, now).await else {
            return;
        };
        if self
            .guards(rule, key, remedy, vm, &provider, now)
            .await
            .is_err()
        {
            return;
        }
        self.act(rule, key, remedy, snap, vm, obs, provider, now, None);
    }

    /// With replicas: continues the ladder where the replica that acted last left it. An
    /// action by this rule on this VM recorded in etcd within the rule's window, on this
    /// target's rung or a later one, belongs to this failure (this replica did not see it,
    /// e.g. after a failover): inside its cooldown the rung is left to the fence (which
    /// refuses it, naming that action), then its patience is waited out, then the next
    /// rung is due. An action sent whose outcome never came back counts as taken.
    /// `None`: nothing now.
    /// When etcd cannot be read the rung stays; the fence refuses the action anyway.
    async fn shared_ladder(
        &mut self,
        rule: &Rule,
        key: &TargetKey,
        remedy: Remedy,
        now: DateTime<Utc>,
    ) -> Option<Remedy> {
        let Some(cluster) = self.cluster.clone() else {
            return Some(remedy);
        };
        let idx = cluster.index_of(key.provider.as_str(), &key.account)?;
        let last = match cluster.last_action(idx, &key.vm).await {
            Ok(Some(l)) => l,
            Ok(None) => return Some(remedy),
            Err(e) => {
                tracing::debug!(account = %key.account, vm = %key.vm, error = %e,
                    "cannot read the VM's last action from etcd");
                return Some(remedy);
            }
        };
        let state = self.targets.get_mut(key)?;
        let window = chrono::Duration::from_std(rule.window).unwrap_or(chrono::Duration::MAX);
        if last.rule != rule.name || last.rung < state.rung || now - last.at >= window {
            return Some(remedy);
        }
        let cooldown = chrono::Duration::from_std(rule.cooldown).unwrap_or(chrono::Duration::MAX);
        if now < last.at + cooldown {
            // The fence refuses it, naming the other replica's action (journaled).
            return Some(remedy);
        }
        let patience = chrono::Duration::from_std(rule.patience).unwrap_or(chrono::Duration::MAX);
        if now < last.at + patience {
            let s = Skip::Guard(format!(
                "waiting until {} for the effect of the {} replica {} sent at {} (rung {})",
                (last.at + patience).to_rfc3339(),
                last.action,
                last.member,
                last.at.to_rfc3339(),
                last.rung + 1
            ));
            self.skipped(key, remedy.as_str(), &s, s.result());
            return None;
        }
        state.rung = last.rung + 1;
        self.dirty.insert(key.clone());
        tracing::info!(rule = %rule.name, account = %key.account, vm = %key.vm,
            member = %last.member, action = %last.action, at = %last.at.to_rfc3339(),
            rung = last.rung + 1, "ladder continues after another replica's action");
        match rule.ladder.get(last.rung + 1) {
            Some(r) => Some(*r),
            None => {
                let why = format!(
                    "every rung of the ladder was tried without recovery (the last, {}, by replica {})",
                    last.action, last.member
                );
                self.give_up(rule, key, &why, now);
                None
            }
        }
    }

    /// The guards and gates every action passes, rule- or alert-driven: read-only key,
    /// the VM's state, cooldown, cap (giving up at it), maintenance and silences. A skip
    /// is counted and logged here.
    async fn guards(
        &mut self,
        rule: &Rule,
        key: &TargetKey,
        remedy: Remedy,
        vm: &Vm,
        provider: &SharedProvider,
        now: DateTime<Utc>,
    ) -> Result<(), Skip> {
        let action = remedy.as_str();
        if !provider.actions_enabled() {
            self.skipped(key, action, &Skip::Disabled, Skip::Disabled.result());
            return Err(Skip::Disabled);
        }
        if let Err(why) = action::vm_guard(rule, remedy, vm, now) {
            let s = Skip::Guard(why);
            self.skipped(key, action, &s, s.result());
            return Err(s);
        }
        let vm_key = (key.provider, key.account.clone(), key.vm.clone());
        if let Some(last) = self.last_action.get(&vm_key) {
            let until =
                *last + chrono::Duration::from_std(rule.cooldown).unwrap_or(chrono::Duration::MAX);
            if now < until {
                let s = Skip::Cooldown { until };
                self.skipped(key, action, &s, s.result());
                return Err(s);
            }
        }
        if let Some((until, _)) = self.fence_retry.get(&vm_key).copied() {
            if now < until {
                let s = Skip::Cooldown { until };
                self.skipped(key, action, &s, s.result());
                return Err(s);
            }
        }
        let count = self
            .targets
            .get_mut(key)
            .map(|s| s.actions_in_window(rule, now))
            .unwrap_or(0);
        if count >= rule.max_actions as usize {
            let s = Skip::Cap { count };
            self.skipped(key, action, &s, s.result());
            self.give_up(rule, key, &s.describe(), now);
            return Err(s);
        }
        let target = Target {
            provider: key.provider,
            account: &key.account,
            vm: Some(&vm.id),
            vm_name: Some(&vm.name),
        };
        for gate in self.gates.clone() {
            if let Some(s) = gate.check(target, now).await {
                if matches!(s, Skip::Error(_)) {
                    self.report.count_error("gate");
                }
                self.skipped(key, action, &s, s.result());
                return Err(s);
            }
        }
        Ok(())
    }

    fn give_up(&mut self, rule: &Rule, key: &TargetKey, why: &str, now: DateTime<Utc>) {
        let Some(state) = self.targets.get_mut(key) else {
            return;
        };
        if state.gave_up {
            return;
        }
        state.gave_up = true;
        let state = state.clone();
        self.dirty.insert(key.clone());
        self.report.count_action(key, "none", "gave_up");
        tracing::error!(rule = %rule.name, account = %key.account, vm = %key.vm, why, "watchdog gave up on this VM; a human must look");
        let since = state
            .firing_since
            .map(|t| t.timestamp())
            .unwrap_or_default();
        self.notifier.event(Event {
            id: format!(
                "gave-up-{}-{}-{}-{}-{since}",
                key.rule, key.provider, key.account, key.vm
            ),
            kind: EventKind::GaveUp,
            key: alert_key(key),
            facts: Facts {
                vm_name: state.vm_name.clone(),
                summary: format!("vpswatch stopped acting: {why}"),
                details: vec![("Last observation".into(), state.last_summary.clone())],
                next_step:
                    "no further actions until the VM is seen healthy again; please look at it"
                        .into(),
                journal_id: state.awaiting.as_ref().map(|a| a.journal_id),
            },
            at: now,
        });
    }

    /// Journals the action (with the state it changes, and the Alertmanager episode it
    /// consumes) and sends it. The journal id, or `None` when the journal could not be
    /// written (nothing was sent).
    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        rule: &Rule,
        key: &TargetKey,
        remedy: Remedy,
        snap: &AccountSnapshot,
        vm: &Vm,
        obs: &Observation,
        provider: SharedProvider,
        now: DateTime<Utc>,
        episode: Option<Episode>,
    ) -> Option<u64> {
        let state = self.targets.get_mut(key)?;
        let dry_run = self.dry_run || rule.dry_run;
        let id = self.next_id;
        let rung = state.rung;
        let previous = state.clone();
        state.acted(rule, remedy, id, now);
        let state = state.clone();
        let record = ActionRecord {
            id,
            at: now,
            rule: rule.name.clone(),
            provider: key.provider,
            account: key.account.clone(),
            vm: key.vm.clone(),
            vm_name: vm.name.clone(),
            action: remedy,
            rung,
            reason: obs.summary.clone(),
            status: if dry_run {
                ActionStatus::DryRun
            } else {
                ActionStatus::Sending
            },
            dry_run,
            finished_at: dry_run.then_some(now),
            error: None,
            outcome: None,
            outcome_at: None,
            source: if episode.is_some() {
                Source::Alertmanager
            } else {
                Source::Rule
            },
            alert: episode
                .as_ref()
                .map(|e| format!("{} {}", e.alertname, e.key)),
        };
        let episode = episode.map(|mut e| {
            e.action = Some(id);
            e
        });
        // Written before it is sent: if this fails, do not act.
        if let Err(e) = self.journal.commit_with_episodes(
            &[(key.clone(), Some(state.clone()))],
            std::slice::from_ref(&record),
            episode.as_slice(),
        ) {
            self.targets.insert(key.clone(), previous);
            self.report.count_error("journal");
            let s = Skip::Error(e.to_string());
            self.skipped(key, remedy.as_str(), &s, s.result());
            return None;
        }
        if let Some(e) = episode {
            self.episodes.insert(e.key.clone(), e);
        }
        self.next_id += 1;
        self.dirty.remove(key);
        self.last_action
            .insert((key.provider, key.account.clone(), key.vm.clone()), now);
        self.report.set_last_action(key, remedy.as_str(), now);
        self.last_skip.remove(key);
        tracing::warn!(
            id,
            rule = %rule.name,
            account = %key.account,
            vm = %key.vm,
            name = %vm.name,
            action = remedy.as_str(),
            dry_run,
            reason = %obs.summary,
            source = record.source.as_str(),
            "watchdog action"
        );
        if dry_run {
            self.report.count_action(key, remedy.as_str(), "dry_run");
            self.notifier.event(Event {
                id: format!("action-{id}-dry-run"),
                kind: EventKind::ActionTaken,
                key: alert_key(key),
                facts: facts(
                    rule,
                    &state,
                    obs,
                    snap,
                    Some(vm),
                    format!(
                        "dry run: would have sent {} (journal #{id})",
                        remedy.as_str()
                    ),
                ),
                at: now,
            });
            return Some(id);
        }
        self.in_flight.insert(key.clone());
        let tx = self.done_tx.clone();
        let key = key.clone();
        let vm_id = vm.id.clone();
        let fence = self.cluster.clone().map(|c| {
            let idx = c.index_of(key.provider.as_str(), &key.account);
            let guard = crate::cluster::ActionGuard {
                vm: vm.id.clone(),
                now,
                cooldown: rule.cooldown,
                max_actions: rule.max_actions,
                window: rule.window,
                rule: rule.name.clone(),
                action: remedy.as_str().to_string(),
                rung,
            };
            (c, idx, guard)
        });
        tokio::spawn(async move {
            // Another replica may own the account by now: prove ownership (and record the
            // intent) in etcd first, or send nothing.
            if let Some((cluster, idx, guard)) = fence {
                let intent = format!("{} {vm_id} (journal #{id})", remedy.as_str());
                let fenced = match idx {
                    Some(idx) => cluster
                        .fence_action(idx, &intent, guard)
                        .await
                        .err()
                        .map(|e| (e.to_string(), e.etcd_unavailable())),
                    None => Some(("the account is not in the cluster's list".into(), false)),
                };
                if let Some((reason, unsent)) = fenced {
                    tracing::warn!(id, account = %key.account, vm = %vm_id, %reason, "watchdog action not sent");
                    let result = Err(vpswatch_providers::ProviderError::NotSent {
                        endpoint: "cluster".into(),
                        reason,
                    });
                    let _ = tx.send(Finished {
                        key,
                        id,
                        result,
                        unsent,
                    });
                    return;
                }
            }
            let result = action::execute(provider.as_ref(), &vm_id, remedy).await;
            let _ = tx.send(Finished {
                key,
                id,
                result,
                unsent: false,
            });
        });
        Some(id)
    }

    /// Journals a provider call's result.
    fn finished(&mut self, done: Finished) {
        self.in_flight.remove(&done.key);
        let now = self.clock.now();
        let Some(mut rec) = self.record(done.id) else {
            return;
        };
        rec.finished_at = Some(now);
        let action = rec.action.as_str();
        let vm_name = rec.vm_name.clone();
        let vm_key = (
            done.key.provider,
            done.key.account.clone(),
            done.key.vm.clone(),
        );
        // Nothing reached the provider and nothing was decided: try again soon (backing
        // off), without spending the cooldown or the cap on it.
        let retry = if done.unsent {
            // The first wait is one lease TTL (the time scale of the cluster's own
            // recovery), doubling with each refusal in a row up to the rule's cooldown.
            let first = self
                .cluster
                .as_ref()
                .map_or(std::time::Duration::from_secs(10), |c| c.lease_ttl());
            let rule_cooldown = self
                .rules
                .iter()
                .find(|r| r.name == done.key.rule)
                .map_or(first, |r| r.cooldown);
            let streak = self.fence_retry.get(&vm_key).map_or(0, |(_, n)| *n);
            let wait = first
                .saturating_mul(1u32 << streak.min(16))
                .min(rule_cooldown.max(first));
            let until = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
            self.fence_retry.insert(vm_key.clone(), (until, streak + 1));
            if self.last_action.get(&vm_key) == Some(&rec.at) {
                self.last_action.remove(&vm_key);
            }
            if let Some(s) = self.targets.get_mut(&done.key) {
                s.action_not_sent(done.id, rec.at);
            }
            Some((wait, streak))
        } else {
            self.fence_retry.remove(&vm_key);
            None
        };
        let (kind, summary) = match &done.result {
            Ok(()) => {
                rec.status = ActionStatus::Ok;
                let patience = self
                    .rules
                    .iter()
                    .find(|r| r.name == done.key.rule)
                    .map(|r| r.patience);
                if let (Some(s), Some(patience)) = (self.targets.get_mut(&done.key), patience) {
                    s.action_accepted(done.id, now, patience);
                    self.dirty.insert(done.key.clone());
                }
                self.report.count_action(&done.key, action, "ok");
                (
                    EventKind::ActionTaken,
                    format!("{action} accepted by the provider; watching for recovery"),
                )
            }
            Err(e) => {
                rec.status = ActionStatus::Failed;
                rec.error = Some(e.to_string());
                self.report.count_action(&done.key, action, "failed");
                if let Some(s) = self.targets.get_mut(&done.key) {
                    if retry.is_none() {
                        s.action_failed(done.id);
                    }
                    self.dirty.insert(done.key.clone());
                }
                tracing::error!(id = done.id, account = %done.key.account, vm = %done.key.vm, action, error = %e, "watchdog action failed");
                (EventKind::ActionFailed, format!("{action} failed: {e}"))
            }
        };
        let next = self
            .rules
            .iter()
            .find(|r| r.name == done.key.rule)
            .map(|r| match (kind, retry) {
                (_, Some((wait, _))) => format!(
                    "not sent while etcd cannot confirm this replica's ownership; tried again in {} (not counted against the cooldown or the cap)",
                    humantime::format_duration(wait)
                ),
                (EventKind::ActionFailed, None) => format!(
                    "will retry after the cooldown ({}) while the failure lasts, at most {} per {}",
                    humantime::format_duration(r.cooldown),
                    r.max_actions,
                    humantime::format_duration(r.window)
                ),
                _ => format!(
                    "waiting up to {} for the VM to be seen healthy",
                    humantime::format_duration(r.patience)
                ),
            })
            .unwrap_or_default();
        self.records.push(rec);
        if matches!(retry, Some((_, streak)) if streak > 0) {
            // Told once per outage; the journal still has every try.
            self.flush();
            return;
        }
        self.notifier.event(Event {
            id: format!(
                "action-{}-{}",
                done.id,
                if done.result.is_ok() { "ok" } else { "failed" }
            ),
            kind,
            key: alert_key(&done.key),
            facts: Facts {
                vm_name,
                summary,
                details: vec![],
                next_step: next,
                journal_id: Some(done.id),
            },
            at: now,
        });
        self.flush();
    }

    /// Commits changed states, journal updates and episodes in one transaction; false
    /// when that failed (everything is kept for the next attempt).
    fn flush(&mut self) -> bool {
        if self.dirty.is_empty()
            && self.removed.is_empty()
            && self.records.is_empty()
            && self.pending_episodes.is_empty()
        {
            return true;
        }
        let mut targets: Vec<(TargetKey, Option<TargetState>)> = self
            .dirty
            .iter()
            .filter_map(|k| self.targets.get(k).map(|s| (k.clone(), Some(s.clone()))))
            .collect();
        targets.extend(self.removed.iter().map(|k| (k.clone(), None)));
        match self
            .journal
            .commit_with_episodes(&targets, &self.records, &self.pending_episodes)
        {
            Ok(()) => {
                self.dirty.clear();
                self.removed.clear();
                self.records.clear();
                self.pending_episodes.clear();
                if std::mem::take(&mut self.journal_failing) {
                    tracing::info!("watchdog journal written again");
                }
                self.prune_episodes();
                true
            }
            Err(e) => {
                // Kept for the next attempt; actions are refused meanwhile (act() commits
                // first and fails the same way).
                self.report.count_error("journal");
                if !std::mem::replace(&mut self.journal_failing, true) {
                    tracing::error!(error = %e, "cannot write the watchdog journal; retrying every round, no action until it works");
                }
                false
            }
        }
    }
}

/// The Alertmanager webhook: each delivered alert through the same guards and journal.
impl Engine {
    /// At most once an hour, after a write: forgets episodes past their retention, in
    /// the journal and in memory, so neither grows for as long as the daemon runs.
    fn prune_episodes(&mut self) {
        let now = self.clock.now();
        if now - self.episodes_pruned_at < EPISODE_PRUNE_EVERY {
            return;
        }
        let horizon = super::journal::episode_horizon(now);
        match self.journal.prune_episodes(horizon) {
            Ok(n) => {
                self.episodes_pruned_at = now;
                self.episodes.retain(|_, e| e.updated_at >= horizon);
                if n > 0 {
                    tracing::debug!(pruned = n, "old Alertmanager episodes pruned");
                }
            }
            Err(e) => {
                // Retried after the next write; nothing depends on it meanwhile.
                self.report.count_error("journal");
                tracing::warn!(error = %e, "cannot prune old Alertmanager episodes");
            }
        }
    }

    /// Handles one notification and answers it: `Err` only when the journal could not be
    /// written, so Alertmanager retries (what was decided before stays decided).
    async fn delivery(&mut self, d: Delivery) {
        let now = self.clock.now();
        let mut results = Vec::with_capacity(d.alerts.len());
        let mut failed = None;
        for alert in &d.alerts {
            match self.alert(alert, now).await {
                Ok((result, reason)) => {
                    self.report.count_alertmanager(result);
                    results.push(AlertResult {
                        fingerprint: alert.fingerprint.clone(),
                        result,
                        reason,
                    });
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() && !self.flush() {
            failed = Some("the journal could not be written".into());
        }
        let _ = d.reply.send(match failed {
            Some(e) => Err(e),
            None => Ok(results),
        });
    }

    /// Logs once per episode why an alert does not act, and says so.
    fn ignored(
        &mut self,
        alert: &Alert,
        result: &'static str,
        reason: String,
    ) -> (&'static str, String) {
        if self.logged_episodes.len() >= 10_000 {
            self.logged_episodes.clear();
        }
        if self.logged_episodes.insert(alert.episode()) {
            tracing::info!(
                alertname = alert.alertname(),
                fingerprint = %alert.fingerprint,
                result,
                why = %reason,
                "Alertmanager alert not acted on"
            );
        }
        (result, reason)
    }

    /// One alert: `(result, reason)`, or `Err` when the journal could not be written.
    async fn alert(
        &mut self,
        alert: &Alert,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, String), String> {
        let episode = alert.episode();
        if alert.status == AmStatus::Resolved {
            return Ok(self.resolve(alert, episode, now));
        }
        if let Some(e) = self.episodes.get(&episode) {
            if let Some(id) = e.action {
                return Ok((
                    "duplicate",
                    format!("this firing episode already acted (journal #{id})"),
                ));
            }
            if e.resolved_at.is_some() {
                return Ok((
                    "duplicate",
                    "this firing episode is already resolved".into(),
                ));
            }
        }
        let Some(mapping) = self.mappings.iter().find(|m| m.matches(&alert.labels)) else {
            let why = format!(
                "no [[alertmanager.actions]] entry maps alert {:?} with these labels",
                alert.alertname()
            );
            return Ok(self.ignored(alert, "no_mapping", why));
        };
        let rule_name = mapping.rule.name.clone();
        let (provider_kind, account, vm_id) = match alert.vm() {
            Ok(v) => v,
            Err(why) => {
                let why = format!("the alert's labels name no VM: {why}");
                return Ok(self.ignored(alert, "unknown_vm", why));
            }
        };
        let Some(snap) = self
            .store
            .all()
            .into_iter()
            .find(|s| s.provider == provider_kind && s.account == account)
        else {
            // With replicas, Alertmanager notifies every replica and the owner acts.
            if let Some(c) = &self.cluster {
                if c.index_of(provider_kind.as_str(), account).is_some() {
                    let why = format!(
                        "{provider_kind} account {account:?} is owned by another replica (or, without etcd, by none): it acts on the alert"
                    );
                    return Ok(self.ignored(alert, "not_owner", why));
                }
            }
            let why = format!("no configured {provider_kind} account {account:?}");
            return Ok(self.ignored(alert, "unknown_vm", why));
        };
        let data = snap.data.clone();
        let vm = data
            .as_deref()
            .and_then(|d| d.vms.iter().find(|v| v.id == vm_id));
        if vm.is_none() && snap.is_up() && data.is_some() {
            let why = format!("account {account:?} lists no VM {vm_id:?}");
            return Ok(self.ignored(alert, "unknown_vm", why));
        }
        let target = Target {
            provider: provider_kind,
            account,
            vm: Some(vm_id),
            vm_name: vm.map(|v| v.name.as_str()),
        };
        if !mapping.rule.selector.matches(target) {
            let why = format!("mapping {rule_name:?} does not cover this VM (its `match`)");
            return Ok(self.ignored(alert, "no_mapping", why));
        }
        let Some(rule) = self.rules.iter().find(|r| r.name == rule_name).cloned() else {
            return Ok(("no_mapping", format!("mapping {rule_name:?} has no rule")));
        };
        let key = TargetKey {
            rule: rule_name,
            provider: provider_kind,
            account: account.to_string(),
            vm: vm_id.to_string(),
        };
        let first = rule.ladder.first().copied().map_or("none", Remedy::as_str);
        // Never on stale data for the VM's account: the same freshness a rule needs.
        let fresh = evaluate::evaluate_vm(
            &Condition::Alertmanager,
            &snap,
            vm,
            None,
            now,
            self.freshness,
        );
        let (Verdict::Good, Some(vm)) = (&fresh.verdict, vm) else {
            let why = match &fresh.verdict {
                Verdict::Unknown(w) => w.clone(),
                _ => "VM not in the provider's list".into(),
            };
            let s = Skip::Error(format!("data unknown: {why}"));
            self.skipped(&key, first, &s, "skipped_unknown");
            return Ok(("skipped", s.describe()));
        };
        let summary = format!(
            "Alertmanager alert {} firing since {} ({})",
            alert.alertname(),
            alert.starts_at.to_rfc3339(),
            alert
                .annotations
                .get("summary")
                .map(String::as_str)
                .unwrap_or("no summary")
        );
        let state = self.targets.entry(key.clone()).or_default();
        state.vm_name = vm.name.clone();
        state.last_summary = summary.clone();
        if !state.firing {
            state.firing = true;
            state.firing_since = Some(now);
        }
        let expired = if self.in_flight.contains(&key) {
            None
        } else {
            state.patience_expired(now)
        };
        let state = state.clone();
        self.dirty.insert(key.clone());
        self.report.set_target(&key, true, false);
        if let Some(a) = expired {
            self.outcome(
                &rule,
                &key,
                &state,
                a.journal_id,
                a.remedy,
                Outcome::NotRecovered,
                now,
            );
        }
        if self.in_flight.contains(&key) {
            return Ok(("skipped", "an action on this VM is still under way".into()));
        }
        if let Some(a) = &state.awaiting {
            let s = Skip::Guard(format!(
                "waiting until {} for the effect of journal #{}",
                a.deadline.to_rfc3339(),
                a.journal_id
            ));
            self.skipped(&key, first, &s, s.result());
            return Ok(("skipped", s.describe()));
        }
        if state.gave_up {
            return Ok((
                "skipped",
                "vpswatch gave up on this VM until the alert resolves".into(),
            ));
        }
        let Some(remedy) = rule.ladder.get(state.rung).copied() else {
            let why = "every rung of the ladder was tried without recovery";
            self.give_up(&rule, &key, why, now);
            return Ok(("skipped", why.into()));
        };
        // After a failover the old owner's rung for this mapping is in etcd.
        let Some(remedy) = self.shared_ladder(&rule, &key, remedy, now).await else {
            return Ok((
                "skipped",
                "the ladder goes on from another replica's action (see the journal)".into(),
            ));
        };
        let Some(provider) = self
            .providers
            .get(&(key.provider, key.account.clone()))
            .cloned()
        else {
            return Ok(self.ignored(alert, "unknown_vm", "no provider client".into()));
        };
        if let Err(s) = self.guards(&rule, &key, remedy, vm, &provider, now).await {
            return Ok(("skipped", s.describe()));
        }
        let obs = Observation {
            verdict: Verdict::Bad,
            sample_at: now,
            summary,
        };
        let ep = Episode {
            key: episode,
            alertname: alert.alertname().to_string(),
            rule: key.rule.clone(),
            account: key.account.clone(),
            vm: key.vm.clone(),
            action: None,
            resolved_at: None,
            updated_at: now,
        };
        let dry_run = self.dry_run || rule.dry_run;
        match self.act(
            &rule,
            &key,
            remedy,
            &snap,
            vm,
            &obs,
            provider,
            now,
            Some(ep),
        ) {
            Some(id) if dry_run => Ok((
                "dry_run",
                format!(
                    "dry run: would have sent {} (journal #{id})",
                    remedy.as_str()
                ),
            )),
            Some(id) => Ok(("acted", format!("{} sent (journal #{id})", remedy.as_str()))),
            None => Err("the journal could not be written; nothing was sent".into()),
        }
    }

    /// A resolved alert closes its episode; if the episode acted, that action is
    /// recovered and the mapping's ladder starts again.
    fn resolve(
        &mut self,
        alert: &Alert,
        episode: String,
        now: DateTime<Utc>,
    ) -> (&'static str, String) {
        let (account, vm) = match alert.vm() {
            Ok((_, a, v)) => (a.to_string(), v.to_string()),
            Err(_) => Default::default(),
        };
        let ep = self
            .episodes
            .entry(episode.clone())
            .or_insert_with(|| Episode {
                key: episode,
                alertname: alert.alertname().to_string(),
                rule: String::new(),
                account,
                vm,
                action: None,
                resolved_at: None,
                updated_at: now,
            });
        if ep.resolved_at.is_some() {
            return ("duplicate", "this episode is already closed".into());
        }
        ep.resolved_at = Some(now);
        ep.updated_at = now;
        let ep = ep.clone();
        self.pending_episodes.push(ep.clone());
        // The target of this alert: the mapping that would act on it, on its VM.
        let key = self
            .mappings
            .iter()
            .find(|m| m.matches(&alert.labels))
            .and_then(|m| {
                let (p, a, v) = alert.vm().ok()?;
                Some(TargetKey {
                    rule: m.rule.name.clone(),
                    provider: p,
                    account: a.to_string(),
                    vm: v.to_string(),
                })
            });
        let Some(key) = key else {
            return ("resolved", "episode closed".into());
        };
        let Some(state) = self.targets.get_mut(&key) else {
            return ("resolved", "episode closed".into());
        };
        // Only the episode that acted proves its action worked.
        let recovered = match (&state.awaiting, ep.action) {
            (Some(a), Some(id)) if a.journal_id == id => state.awaiting.take(),
            _ => None,
        };
        if state.awaiting.is_none() {
            state.firing = false;
            state.firing_since = None;
            state.rung = 0;
            state.gave_up = false;
        }
        let state = state.clone();
        self.dirty.insert(key.clone());
        self.report.set_target(&key, state.firing, false);
        if let Some(a) = recovered {
            if let Some(rule) = self.rules.iter().find(|r| r.name == key.rule).cloned() {
                self.outcome(
                    &rule,
                    &key,
                    &state,
                    a.journal_id,
                    a.remedy,
                    Outcome::Recovered,
                    now,
                );
            }
            return (
                "resolved",
                format!("episode closed; journal #{} recovered", a.journal_id),
            );
        }
        ("resolved", "episode closed".into())
    }
}

fn alert_key(key: &TargetKey) -> AlertKey {
    AlertKey {
        rule: key.rule.clone(),
        provider: key.provider,
        account: key.account.clone(),
        vm: key.vm.clone(),
    }
}

fn next_step_when_firing(rule: &Rule, state: &TargetState) -> String {
    match rule.ladder.get(state.rung) {
        None if rule.ladder.is_empty() => "alert only: this rule takes no action".into(),
        None => "no rung left: a human must look".into(),
        Some(r) => format!(
            "{} next (rung {} of {}), subject to cooldown {}, at most {} per {}{}",
            r.as_str(),
            state.rung + 1,
            rule.ladder.len(),
            humantime::format_duration(rule.cooldown),
            rule.max_actions,
            humantime::format_duration(rule.window),
            if rule.dry_run { " (dry run)" } else { "" }
        ),
    }
}

fn facts(
    rule: &Rule,
    state: &TargetState,
    obs: &Observation,
    snap: &AccountSnapshot,
    vm: Option<&Vm>,
    next_step: String,
) -> Facts {
    let mut details = vec![("Condition".to_string(), rule.condition.name().to_string())];
    if let Some(vm) = vm {
        details.push(("State".into(), vm.state.label().to_string()));
        if let Some(ip) = vm.ipv4 {
            details.push(("IPv4".into(), ip.to_string()));
        }
        if let Some(e) = vm.expires {
            details.push(("Expires".into(), e.to_rfc3339()));
        }
        if let Some(u) = &vm.usage {
            details.push(("CPU".into(), format!("{:.0} %", u.cpu_ratio * 100.0)));
        }
    }
    if let Some(t) = snap.last_success {
        details.push(("Last successful poll".into(), t.to_rfc3339()));
    }
    details.push(("Observed at".into(), obs.sample_at.to_rfc3339()));
    Facts {
        vm_name: vm
            .map(|v| v.name.clone())
            .unwrap_or_else(|| state.vm_name.clone()),
        summary: obs.summary.clone(),
        details,
        next_step,
        journal_id: state.awaiting.as_ref().map(|a| a.journal_id),
    }
}
