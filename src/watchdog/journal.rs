//! The watchdog's journal: every action written before it is sent and again with its
//! outcome, plus each rule's per-target state, in the shared redb store.
//!
//! An action and the rule state it changes (cooldown, cap window, ladder rung, counters)
//! are committed in one transaction before the provider is called. A crash before the
//! call leaves an entry in `sending`, which the next start marks `interrupted` and counts
//! as sent: after a restart vpswatch may do one action fewer, never one more.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::rules::Remedy;
use super::state::TargetState;
use crate::store::{StateStore, StoreError};
use vpswatch_model::account::ProviderKind;

const ACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("watchdog_actions");
const TARGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("watchdog_targets");
const EPISODES: TableDefinition<&str, &[u8]> = TableDefinition::new("alertmanager_episodes");

/// Episodes untouched for this long are pruned (at start-up and by the running engine):
/// Alertmanager stops re-sending a resolved alert after its `resolve_timeout` and keeps
/// no notification that long.
const EPISODE_RETENTION_DAYS: i64 = 30;

/// The oldest `updated_at` an episode may have at `now` and still be kept.
pub fn episode_horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::days(EPISODE_RETENTION_DAYS)
}

/// What asked for an action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// One of vpswatch's own `[[rules]]`.
    #[default]
    Rule,
    /// An alert delivered to the Alertmanager webhook.
    Alertmanager,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rule => "rule",
            Source::Alertmanager => "alertmanager",
        }
    }
}

/// One firing episode of one Alertmanager alert (fingerprint + `startsAt`): whether it
/// acted (and which journal entry) and whether it is resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// `fingerprint@startsAt`.
    pub key: String,
    pub alertname: String,
    /// The mapping (its rule name) and VM, when known.
    pub rule: String,
    pub account: String,
    pub vm: String,
    /// The journal entry of the one action this episode caused.
    pub action: Option<u64>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Where an action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Written, provider call under way.
    Sending,
    /// The provider accepted it.
    Ok,
    Failed,
    /// Dry run: everything but the provider call.
    DryRun,
    /// vpswatch stopped while the call was under way; the outcome is unknown and the
    /// action counts as sent.
    Interrupted,
}

/// What happened to the VM after the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Recovered,
    NotRecovered,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub rule: String,
    pub provider: ProviderKind,
    pub account: String,
    pub vm: String,
    pub vm_name: String,
    pub action: Remedy,
    /// Ladder rung (0 = first remedy).
    pub rung: usize,
    /// Why: the observation that made the rule act.
    pub reason: String,
    pub status: ActionStatus,
    pub dry_run: bool,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub outcome: Option<Outcome>,
    pub outcome_at: Option<DateTime<Utc>>,
    /// A rule or an Alertmanager alert (entries from before the webhook are rules').
    #[serde(default)]
    pub source: Source,
    /// For `alertmanager`: the alert's name and episode (`fingerprint@startsAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
}

/// The identity of one rule's target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub rule: String,
    pub provider: ProviderKind,
    pub account: String,
    /// Empty for account-level rules.
    pub vm: String,
}

const SEP: char = '\u{1f}';

impl TargetKey {
    fn encode(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.rule, self.provider, self.account, self.vm
        )
    }

    fn decode(s: &str) -> Option<TargetKey> {
        let mut it = s.split(SEP);
        let rule = it.next()?.to_string();
        let provider = match it.next()? {
            "lnvps" => ProviderKind::Lnvps,
            "stablevps" => ProviderKind::Stablevps,
            _ => return None,
        };
        Some(TargetKey {
            rule,
            provider,
            account: it.next()?.to_string(),
            vm: it.next()?.to_string(),
        })
    }
}

/// Journal handle.
#[derive(Clone, Debug)]
pub struct Journal {
    store: StateStore,
    keep_entries: u64,
}

/// What a restart recovers.
#[derive(Debug, Default)]
pub struct Restored {
    pub targets: HashMap<TargetKey, TargetState>,
    /// Newest action time per (provider, account, vm), any rule: the shared cooldown.
    pub last_action: HashMap<(ProviderKind, String, String), DateTime<Utc>>,
    pub next_id: u64,
    /// Entries found in `sending` and now marked interrupted.
    pub interrupted: Vec<u64>,
    /// Alertmanager episodes still remembered, by key.
    pub episodes: HashMap<String, Episode>,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Journal {
    pub fn new(store: StateStore) -> Journal {
        Journal::keeping(store, super::rules::DEFAULT_KEEP_ENTRIES)
    }

    /// A journal that prunes entries beyond the newest `keep_entries` (at least 1).
    pub fn keeping(store: StateStore, keep_entries: u64) -> Journal {
        Journal {
            store,
            keep_entries: keep_entries.max(1),
        }
    }

    /// Loads the state at start-up and closes entries a crash left open.
    pub fn restore(&self, now: DateTime<Utc>) -> Result<Restored, StoreError> {
        let txn = self.store.begin_write()?;
        let mut out = Restored {
            next_id: 1,
            ..Restored::default()
        };
        {
            let mut actions = txn.open_table(ACTIONS).map_err(|x| self.store.error(x))?;
            let mut open = Vec::new();
            for row in actions.iter().map_err(|x| self.store.error(x))? {
                let (k, v) = row.map_err(|x| self.store.error(x))?;
                let id = k.value();
                out.next_id = out.next_id.max(id + 1);
                let Ok(rec) = serde_json::from_slice::<ActionRecord>(v.value()) else {
                    tracing::warn!(id, "unreadable journal entry skipped");
                    continue;
                };
                let key = (rec.provider, rec.account.clone(), rec.vm.clone());
                let newest = out.last_action.entry(key).or_insert(rec.at);
                *newest = (*newest).max(rec.at);
                if rec.status == ActionStatus::Sending {
                    open.push(rec);
                }
            }
            for mut rec in open {
                rec.status = ActionStatus::Interrupted;
                rec.finished_at = Some(now);
                out.interrupted.push(rec.id);
                actions
                    .insert(rec.id, to_json(&rec).as_slice())
                    .map_err(|x| self.store.error(x))?;
            }
            let targets = txn.open_table(TARGETS).map_err(|x| self.store.error(x))?;
            for row in targets.iter().map_err(|x| self.store.error(x))? {
                let (k, v) = row.map_err(|x| self.store.error(x))?;
                let Some(key) = TargetKey::decode(k.value()) else {
                    continue;
                };
                match serde_json::from_slice::<TargetState>(v.value()) {
                    Ok(s) => {
                        out.targets.insert(key, s);
                    }
                    Err(err) => tracing::warn!(error = %err, "unreadable rule state skipped"),
                }
            }
            let mut episodes = txn.open_table(EPISODES).map_err(|x| self.store.error(x))?;
            self.prune_table(&mut episodes, episode_horizon(now))?;
            for row in episodes.iter().map_err(|x| self.store.error(x))? {
                let (_, v) = row.map_err(|x| self.store.error(x))?;
                match serde_json::from_slice::<Episode>(v.value()) {
                    Ok(e) => {
                        out.episodes.insert(e.key.clone(), e);
                    }
                    Err(err) => tracing::warn!(error = %err, "unreadable episode skipped"),
                }
            }
        }
        self.store.commit(txn)?;
        Ok(out)
    }

    /// Removes the episodes last updated before `horizon`; returns how many. The engine
    /// calls this while it runs, so a daemon that is never restarted does not keep
    /// every episode it ever saw.
    pub fn prune_episodes(&self, horizon: DateTime<Utc>) -> Result<usize, StoreError> {
        let txn = self.store.begin_write()?;
        let removed = {
            let mut episodes = txn.open_table(EPISODES).map_err(|x| self.store.error(x))?;
            self.prune_table(&mut episodes, horizon)?
        };
        self.store.commit(txn)?;
        Ok(removed)
    }

    fn prune_table(
        &self,
        episodes: &mut redb::Table<&str, &[u8]>,
        horizon: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for row in episodes.iter().map_err(|x| self.store.error(x))? {
            let (k, v) = row.map_err(|x| self.store.error(x))?;
            if serde_json::from_slice::<Episode>(v.value()).is_ok_and(|e| e.updated_at < horizon) {
                old.push(k.value().to_string());
            }
        }
        for k in &old {
            episodes
                .remove(k.as_str())
                .map_err(|x| self.store.error(x))?;
        }
        Ok(old.len())
    }

    /// Writes target states (and removes the ones given as `None`) plus new or updated
    /// journal entries, all in one durable transaction.
    pub fn commit(
        &self,
        targets: &[(TargetKey, Option<TargetState>)],
        records: &[ActionRecord],
    ) -> Result<(), StoreError> {
        self.commit_with_episodes(targets, records, &[])
    }

    /// Like [`Journal::commit`], with Alertmanager episodes in the same transaction (an
    /// alert-driven action and the episode it consumes are written together).
    pub fn commit_with_episodes(
        &self,
        targets: &[(TargetKey, Option<TargetState>)],
        records: &[ActionRecord],
        episodes: &[Episode],
    ) -> Result<(), StoreError> {
        if targets.is_empty() && records.is_empty() && episodes.is_empty() {
            return Ok(());
        }
        let txn = self.store.begin_write()?;
        {
            if !episodes.is_empty() {
                let mut e = txn.open_table(EPISODES).map_err(|x| self.store.error(x))?;
                for ep in episodes {
                    e.insert(ep.key.as_str(), to_json(ep).as_slice())
                        .map_err(|x| self.store.error(x))?;
                }
            }
            let mut t = txn.open_table(TARGETS).map_err(|x| self.store.error(x))?;
            for (key, state) in targets {
                let k = key.encode();
                match state {
                    Some(s) => {
                        t.insert(k.as_str(), to_json(s).as_slice())
                            .map_err(|x| self.store.error(x))?;
                    }
                    None => {
                        t.remove(k.as_str()).map_err(|x| self.store.error(x))?;
                    }
                }
            }
            let mut a = txn.open_table(ACTIONS).map_err(|x| self.store.error(x))?;
            for rec in records {
                a.insert(rec.id, to_json(rec).as_slice())
                    .map_err(|x| self.store.error(x))?;
                if rec.id > self.keep_entries {
                    a.remove(rec.id - self.keep_entries)
                        .map_err(|x| self.store.error(x))?;
                }
            }
        }
        self.store.commit(txn)
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let txn = self.store.begin_read()?;
        let table = match txn.open_table(ACTIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(x) => return Err(self.store.error(x)),
        };
        let mut out = Vec::new();
        for row in table
            .iter()
            .map_err(|x| self.store.error(x))?
            .rev()
            .take(limit)
        {
            let (_, v) = row.map_err(|x| self.store.error(x))?;
            if let Ok(rec) = serde_json::from_slice::<ActionRecord>(v.value()) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// One entry by id.
    pub fn get(&self, id: u64) -> Result<Option<ActionRecord>, StoreError> {
        let txn = self.store.begin_read()?;
        let table = match txn.open_table(ACTIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(x) => return Err(self.store.error(x)),
        };
        let v = table.get(id).map_err(|x| self.store.error(x))?;
        Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, status: ActionStatus) -> ActionRecord {
        ActionRecord {
            id,
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            rule: "r".into(),
            provider: ProviderKind::Lnvps,
            account: "a".into(),
            vm: "1".into(),
            vm_name: "web".into(),
            action: Remedy::Reboot,
            rung: 0,
            reason: "probe".into(),
            status,
            dry_run: false,
            finished_at: None,
            error: None,
            outcome: None,
            outcome_at: None,
            source: Source::Rule,
            alert: None,
        }
    }

    #[test]
    fn state_and_open_actions_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = TargetKey {
            rule: "r".into(),
            provider: ProviderKind::Lnvps,
            account: "a".into(),
            vm: "1".into(),
        };
        let state = TargetState {
            bad_count: 2,
            rung: 1,
            ..TargetState::default()
        };
        {
            let j = Journal::new(StateStore::open(dir.path()).expect("open"));
            j.commit(
                &[(key.clone(), Some(state.clone()))],
                &[rec(1, ActionStatus::Ok), rec(2, ActionStatus::Sending)],
            )
            .expect("commit");
        }
        let j = Journal::new(StateStore::open(dir.path()).expect("reopen"));
        let r = j.restore(Utc::now()).expect("restore");
        assert_eq!(r.targets.get(&key), Some(&state));
        assert_eq!(r.next_id, 3);
        assert_eq!(r.interrupted, vec![2]);
        assert_eq!(
            j.get(2).expect("get").map(|r| r.status),
            Some(ActionStatus::Interrupted)
        );
        let recent = j.recent(10).expect("recent");
        assert_eq!(recent.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::keeping(StateStore::open(dir.path()).expect("open"), 3);
        for id in 1..=7 {
            j.commit(&[], &[rec(id, ActionStatus::Ok)]).expect("commit");
        }
        let ids: Vec<u64> = j
            .recent(100)
            .expect("recent")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![7, 6, 5]);
        assert!(j.get(4).expect("get").is_none(), "pruned");
    }

    #[test]
    fn old_episodes_are_pruned_while_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(StateStore::open(dir.path()).expect("open"));
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let episode = |key: &str, days_old: i64| Episode {
            key: key.into(),
            alertname: "VpsUnhealthy".into(),
            rule: "am".into(),
            account: "a".into(),
            vm: "1".into(),
            action: None,
            resolved_at: None,
            updated_at: t0 - chrono::Duration::days(days_old),
        };
        j.commit_with_episodes(
            &[],
            &[],
            &[episode("old", 31), episode("edge", 30), episode("new", 1)],
        )
        .expect("commit");
        assert_eq!(j.prune_episodes(episode_horizon(t0)).expect("prune"), 1);
        assert_eq!(j.prune_episodes(episode_horizon(t0)).expect("again"), 0);
        // Restored as of the old episodes' own time (when restore itself prunes
        // nothing): only what the running prune kept is left.
        let r = j.restore(t0 - chrono::Duration::days(31)).expect("restore");
        let mut keys: Vec<&str> = r.episodes.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["edge", "new"]);
    }
}
