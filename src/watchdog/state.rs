//! The life of one rule on one target: hysteresis, firing, the escalation ladder and the
//! wait for observed recovery. Pure logic on persisted state, so every watchdog rule (docs/watchdog.md) can be
//! tested without a network, and so the whole state survives a restart as it is.
//!
//! Lessons built in: the failure count restarts after every action (Monit kept counting
//! and rebooted in a loop); an action succeeds only when the VM is *seen* healthy again
//! afterwards, not when the API said 200; unknown data breaks a failure streak instead
//! of extending it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::evaluate::{Observation, Verdict};
use super::rules::{Remedy, Rule};

/// An action sent (or dry-run) whose effect is still being watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Awaiting {
    pub journal_id: u64,
    pub remedy: Remedy,
    pub sent_at: DateTime<Utc>,
    /// Past this without recovery, the next rung is due.
    pub deadline: DateTime<Utc>,
}

/// Everything remembered about one (rule, target).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetState {
    /// Time of the newest observation counted (each is counted once).
    pub last_sample: Option<DateTime<Utc>>,
    pub bad_count: u32,
    /// Data time of the first observation of the current failure streak.
    pub bad_since: Option<DateTime<Utc>>,
    pub good_count: u32,
    /// The latest verdict was unknown (and why).
    pub unknown: Option<String>,
    pub firing: bool,
    pub firing_since: Option<DateTime<Utc>>,
    /// Index of the next ladder rung.
    pub rung: usize,
    pub awaiting: Option<Awaiting>,
    /// When this rule acted on this target (inside the cap window).
    pub action_times: Vec<DateTime<Utc>>,
    /// Ladder exhausted or cap reached: no more actions until the target recovers.
    pub gave_up: bool,
    pub last_summary: String,
    /// Name of the VM as last seen (for messages about a VM that has since vanished).
    pub vm_name: String,
}

/// What one observation changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    /// A new good/bad observation was counted (decisions are made only then).
    pub counted: bool,
    pub fired: bool,
    pub resolved: bool,
    /// Recovery observed after this action.
    pub recovered: Option<Awaiting>,
    /// The verdict turned unknown (with why) on this observation.
    pub became_unknown: Option<String>,
}

/// What the ladder wants now.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    Nothing,
    Act(Remedy),
    /// No rung left: stop acting and tell a human.
    GiveUp,
}

fn secs(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl TargetState {
    /// Applies one observation.
    pub fn observe(&mut self, rule: &Rule, obs: &Observation, now: DateTime<Utc>) -> Changes {
        let mut c = Changes::default();
        match &obs.verdict {
            Verdict::Unknown(why) => {
                if self.unknown.is_none() {
                    c.became_unknown = Some(why.clone());
                }
                self.unknown = Some(why.clone());
                // Neither streak survives a gap in what we know.
                self.bad_count = 0;
                self.bad_since = None;
                self.good_count = 0;
                self.last_summary = obs.summary.clone();
                return c;
            }
            _ if self.last_sample.is_some_and(|t| obs.sample_at <= t) => return c,
            // Data taken before our last action says nothing about its effect.
            Verdict::Good
                if self
                    .awaiting
                    .as_ref()
                    .is_some_and(|a| obs.sample_at < a.sent_at) =>
            {
                return c
            }
            Verdict::Bad => {
                self.bad_count = self.bad_count.saturating_add(1);
                self.bad_since.get_or_insert(obs.sample_at);
                self.good_count = 0;
            }
            Verdict::Good => {
                self.good_count = self.good_count.saturating_add(1);
                self.bad_count = 0;
                self.bad_since = None;
            }
        }
        c.counted = true;
        self.unknown = None;
        self.last_sample = Some(obs.sample_at);
        self.last_summary = obs.summary.clone();
        if !self.firing && self.evidence_enough(rule, obs.sample_at) {
            self.firing = true;
            self.firing_since = Some(now);
            c.fired = true;
        }
        if self.firing && self.good_count >= rule.recoveries {
            self.firing = false;
            self.firing_since = None;
            self.rung = 0;
            self.gave_up = false;
            c.recovered = self.awaiting.take();
            c.resolved = true;
        }
        c
    }

    /// N failures and `for` both met by the current streak.
    fn evidence_enough(&self, rule: &Rule, sample_at: DateTime<Utc>) -> bool {
        self.bad_count >= rule.failures
            && self
                .bad_since
                .is_some_and(|since| sample_at - since >= secs(rule.hold_for))
    }

    /// Whether the two states differ in anything a restart must remember. A healthy
    /// target's growing success count and newest sample time are left out, so a fleet
    /// that is fine writes nothing to disk round after round.
    pub fn durably_differs(&self, other: &TargetState, rule: &Rule) -> bool {
        let key = |s: &TargetState| {
            (
                s.bad_count,
                s.bad_since,
                s.good_count.min(rule.recoveries),
                s.unknown.is_some(),
                s.firing,
                s.firing_since,
                s.rung,
                s.gave_up,
            )
        };
        key(self) != key(other)
            || self.awaiting != other.awaiting
            || self.action_times != other.action_times
            || self.vm_name != other.vm_name
    }

    /// Ends a wait whose patience ran out; returns the action that did not help.
    pub fn patience_expired(&mut self, now: DateTime<Utc>) -> Option<Awaiting> {
        if self.awaiting.as_ref().is_some_and(|a| now >= a.deadline) {
            self.rung += 1;
            return self.awaiting.take();
        }
        None
    }

    /// What the ladder asks for right now (before guards).
    pub fn want(&self, rule: &Rule, now: DateTime<Utc>) -> Want {
        if !self.firing || rule.ladder.is_empty() || self.gave_up || self.awaiting.is_some() {
            return Want::Nothing;
        }
        // Fresh evidence is needed for every rung: the streak restarts after each action.
        let Some(last) = self.last_sample else {
            return Want::Nothing;
        };
        if self.unknown.is_some() || !self.evidence_enough(rule, last.min(now)) {
            return Want::Nothing;
        }
        match rule.ladder.get(self.rung) {
            Some(r) => Want::Act(*r),
            None => Want::GiveUp,
        }
    }

    /// Actions inside the cap window ending now.
    pub fn actions_in_window(&mut self, rule: &Rule, now: DateTime<Utc>) -> usize {
        let start = now - secs(rule.window);
        self.action_times.retain(|t| *t > start);
        self.action_times.len()
    }

    /// Records an action about to be sent (or dry-run): the streak restarts and the wait
    /// for recovery begins.
    pub fn acted(&mut self, rule: &Rule, remedy: Remedy, journal_id: u64, now: DateTime<Utc>) {
        self.action_times.push(now);
        self.bad_count = 0;
        self.bad_since = None;
        self.good_count = 0;
        self.awaiting = Some(Awaiting {
            journal_id,
            remedy,
            sent_at: now,
            deadline: now + secs(rule.patience),
        });
    }

    /// The provider accepted the action at `now`: recovery is awaited for `patience`
    /// from then, however long the call took.
    pub fn action_accepted(
        &mut self,
        journal_id: u64,
        now: DateTime<Utc>,
        patience: std::time::Duration,
    ) {
        if let Some(a) = self
            .awaiting
            .as_mut()
            .filter(|a| a.journal_id == journal_id)
        {
            a.deadline = a.deadline.max(now + secs(patience));
        }
    }

    /// The action was never sent (etcd could not confirm this replica's ownership): it
    /// neither waits for recovery nor counts against the cap.
    pub fn action_not_sent(&mut self, journal_id: u64, at: DateTime<Utc>) {
        self.action_failed(journal_id);
        if let Some(i) = self.action_times.iter().rposition(|t| *t == at) {
            self.action_times.remove(i);
        }
    }

    /// The provider refused the action: nothing to wait for; the same rung is tried
    /// again once cooldown allows (the cap still bounds the attempts).
    pub fn action_failed(&mut self, journal_id: u64) {
        if self
            .awaiting
            .as_ref()
            .is_some_and(|a| a.journal_id == journal_id)
        {
            self.awaiting = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::rules::Condition;
    use crate::watchdog::selector::Selector;
    use std::time::Duration;

    fn rule() -> Rule {
        Rule {
            name: "r".into(),
            condition: Condition::ProbeFailing,
            hold_for: Duration::from_secs(60),
            failures: 3,
            recoveries: 2,
            ladder: vec![Remedy::Reboot, Remedy::StopStart],
            cooldown: Duration::from_secs(300),
            max_actions: 3,
            window: Duration::from_secs(3600),
            patience: Duration::from_secs(300),
            keep_running: false,
            dry_run: false,
            selector: Selector::default(),
            port: None,
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn obs(v: Verdict, at: i64) -> Observation {
        Observation {
            verdict: v,
            sample_at: t(at),
            summary: String::new(),
        }
    }

    #[test]
    fn fires_only_after_n_failures_and_for() {
        let r = rule();
        let mut s = TargetState::default();
        assert!(!s.observe(&r, &obs(Verdict::Bad, 0), t(0)).fired);
        assert!(!s.observe(&r, &obs(Verdict::Bad, 30), t(30)).fired);
        // Three failures but only 50 s of them.
        assert!(!s.observe(&r, &obs(Verdict::Bad, 50), t(50)).fired);
        assert!(s.observe(&r, &obs(Verdict::Bad, 60), t(60)).fired);
        assert_eq!(s.want(&r, t(60)), Want::Act(Remedy::Reboot));
    }

    #[test]
    fn the_same_observation_counts_once() {
        let r = rule();
        let mut s = TargetState::default();
        for _ in 0..5 {
            s.observe(&r, &obs(Verdict::Bad, 0), t(100));
        }
        assert_eq!(s.bad_count, 1);
    }

    #[test]
    fn unknown_breaks_the_streak_and_never_fires() {
        let r = rule();
        let mut s = TargetState::default();
        s.observe(&r, &obs(Verdict::Bad, 0), t(0));
        s.observe(&r, &obs(Verdict::Bad, 30), t(30));
        s.observe(&r, &obs(Verdict::Unknown("stale".into()), 30), t(40));
        let c = s.observe(&r, &obs(Verdict::Bad, 70), t(70));
        assert!(!c.fired);
        assert_eq!(s.bad_count, 1);
    }

    #[test]
    fn streak_restarts_after_an_action_and_recovery_resets_the_ladder() {
        let r = rule();
        let mut s = TargetState::default();
        for at in [0, 30, 60] {
            s.observe(&r, &obs(Verdict::Bad, at), t(at));
        }
        s.acted(&r, Remedy::Reboot, 1, t(61));
        assert_eq!(s.want(&r, t(62)), Want::Nothing, "waiting for recovery");
        // A good sample from before the action proves nothing.
        assert!(!s.observe(&r, &obs(Verdict::Good, 60), t(63)).counted);
        s.observe(&r, &obs(Verdict::Good, 90), t(90));
        let c = s.observe(&r, &obs(Verdict::Good, 120), t(120));
        assert!(c.resolved);
        assert_eq!(c.recovered.map(|a| a.journal_id), Some(1));
        assert_eq!(s.rung, 0);
        assert!(!s.firing);
    }

    #[test]
    fn ladder_climbs_when_patience_runs_out_then_gives_up() {
        let r = rule();
        let mut s = TargetState::default();
        for at in [0, 30, 60] {
            s.observe(&r, &obs(Verdict::Bad, at), t(at));
        }
        s.acted(&r, Remedy::Reboot, 1, t(60));
        for at in [90, 120, 150, 180] {
            s.observe(&r, &obs(Verdict::Bad, at), t(at));
        }
        assert!(s.patience_expired(t(200)).is_none());
        assert!(s.patience_expired(t(360)).is_some());
        assert_eq!(s.want(&r, t(360)), Want::Act(Remedy::StopStart));
        s.acted(&r, Remedy::StopStart, 2, t(360));
        for at in [390, 420, 450] {
            s.observe(&r, &obs(Verdict::Bad, at), t(at));
        }
        assert!(s.patience_expired(t(700)).is_some());
        assert_eq!(s.want(&r, t(700)), Want::GiveUp);
    }

    #[test]
    fn a_healthy_target_has_nothing_new_to_persist() {
        let r = rule();
        let mut s = TargetState::default();
        for at in [0, 30, 60] {
            s.observe(&r, &obs(Verdict::Good, at), t(at));
        }
        let before = s.clone();
        s.observe(&r, &obs(Verdict::Good, 90), t(90));
        assert!(
            !s.durably_differs(&before, &r),
            "only the sample time moved"
        );
        let before = s.clone();
        s.observe(&r, &obs(Verdict::Bad, 120), t(120));
        assert!(
            s.durably_differs(&before, &r),
            "a failure must survive a restart"
        );
    }

    #[test]
    fn flapping_inside_hysteresis_never_fires() {
        let r = rule();
        let mut s = TargetState::default();
        for i in 0..20 {
            let v = if i % 3 == 2 {
                Verdict::Good
            } else {
                Verdict::Bad
            };
            assert!(!s.observe(&r, &obs(v, i * 30), t(i * 30)).fired);
        }
    }
}
