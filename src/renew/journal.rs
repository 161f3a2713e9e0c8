//! The renewal journal: per VM, the renewal in flight (invoice id = payment hash,
//! amount, phase) and the last one paid, plus the sats spent per account and month, in
//! the shared redb store (tables `renewals` and `renewal_spend`).
//!
//! It also bounds the tries: per VM and renewal window (one `expires` value) the tries
//! made, the next one's earliest time and whether vpswatch gave up, so a restart
//! neither forgets a failure nor retries early. A new window re-arms the tries; so does
//! an operator's clear (`POST /api/v1/renewals/clear`), written to its own table
//! `renewal_rearm` so it never races the renewal task's read-modify-write of a record.
//!
//! A payment is journaled in phase `paying` — with its amount reserved against the
//! month's budget — in one committed transaction *before* the wallet is asked to pay.
//! After a crash the renewal is resumed from the journal by looking the invoice up
//! (the subscription's payments); an invoice in `paying` is never sent to the wallet again.
//!
//! With replicas (`[cluster]`) the same records live in etcd instead, so a new owner after
//! a failover resumes the old owner's invoice: `renewals/lnvps/<account>/<vm>` (JSON),
//! `spend/lnvps/<account>/<month>` (sats) and `rearms/lnvps/<account>/<vm>` (Unix
//! seconds). A record and its spend change are one transaction, committed only while
//! this replica owns the account (and only if the spend was not changed since it was
//! read), so a replica that lost the account cannot even journal. A pass reads an
//! account's records and clears with one range read each ([`RenewalJournal::account`]).

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::cluster::{Cluster, SharedPut, StateError};
use crate::store::{StateStore, StoreError};

const RENEWALS: TableDefinition<&str, &[u8]> = TableDefinition::new("renewals");
const SPEND: TableDefinition<&str, u64> = TableDefinition::new("renewal_spend");
/// Operator clears: (account, VM) → Unix seconds of the request.
const REARM: TableDefinition<&str, i64> = TableDefinition::new("renewal_rearm");

const SEP: char = '\u{1f}';

/// Where the invoice in flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Minted and journaled; not (or certainly not successfully) sent to a wallet.
    Invoiced,
    /// Sent to the wallet; the outcome is unknown until the server says `is_paid`.
    Paying,
    /// The server says `is_paid`; waiting for a poll that shows the new expiry.
    Paid,
}

/// The renewal in flight for one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unique per attempt (event ids derive from it).
    pub seq: u64,
    pub rule: String,
    pub mode: String,
    pub started_at: DateTime<Utc>,
    /// The VM's `expires` when the attempt started.
    pub expires_before: DateTime<Utc>,
    pub intervals: u32,
    /// Payment id (the Lightning payment hash, hex).
    pub payment_id: String,
    /// The subscription the invoice was bought through; `None` = the deprecated VM
    /// endpoints (and `GET /payment/{id}` to follow it).
    #[serde(default)]
    pub subscription: Option<String>,
    pub amount_msat: u64,
    pub invoice_expires: DateTime<Utc>,
    pub bolt11: String,
    pub phase: Phase,
    /// Wallet calls made for this invoice.
    pub pay_calls: u32,
    /// Not before this time may the wallet be called again (after a refusal).
    pub next_pay_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    /// Sats reserved against the month's budget (0 until first sent to the wallet).
    pub reserved_sats: u64,
    pub reserved_month: String,
}

/// Everything kept per VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmRenewal {
    pub attempt: Option<Attempt>,
    /// `expires` as it was when the last renewal was paid.
    pub last_paid_from: Option<DateTime<Utc>>,
    pub last_paid_at: Option<DateTime<Utc>>,
    /// The renewal window the counters below belong to: the VM's `expires` then.
    #[serde(alias = "failures_for")]
    pub window: Option<DateTime<Utc>>,
    /// Tries started in `window` (counted before the first request of each).
    #[serde(alias = "failures")]
    pub attempts: u32,
    /// Tries in `window` that failed.
    pub failed: u32,
    /// Earliest start of the next try.
    pub next_try_at: Option<DateTime<Utc>>,
    /// Why the last try failed; `None` once a try got its invoice.
    pub last_error: Option<String>,
    /// The tries of `window` are used up.
    pub gave_up: bool,
    /// The operator clear applied last.
    pub rearmed_at: Option<DateTime<Utc>>,
    /// The `expires` value a one-off notice (blocked, dry run, gave up) was sent for.
    pub noticed_for: Option<DateTime<Utc>>,
    /// Which notice (its result label) was sent for `noticed_for`.
    pub noticed_result: Option<String>,
    /// Whether this VM's renewal alert is firing.
    pub alert_firing: bool,
    /// The `expires` value the alert fired for: a later one means the VM was renewed.
    pub alert_for: Option<DateTime<Utc>>,
    pub next_seq: u64,
}

impl VmRenewal {
    /// Moves the counters to the window of `expires` (a new window starts afresh).
    pub fn enter_window(&mut self, expires: DateTime<Utc>) {
        if self.window != Some(expires) {
            self.window = Some(expires);
            self.reset_tries();
        }
    }

    /// Forgets the tries of the current window (new window, or an operator clear).
    pub fn reset_tries(&mut self) {
        self.attempts = 0;
        self.failed = 0;
        self.next_try_at = None;
        self.last_error = None;
        self.gave_up = false;
    }

    /// The last try in the window of `expires` failed (and nothing was paid since).
    pub fn failing(&self, expires: Option<DateTime<Utc>>) -> bool {
        expires.is_some() && self.window == expires && self.last_error.is_some()
    }

    /// The tries of the window of `expires` are used up.
    pub fn gave_up_for(&self, expires: Option<DateTime<Utc>>) -> bool {
        expires.is_some() && self.window == expires && self.gave_up
    }
}

/// One VM's record, as `GET /api/v1/renewals` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub account: String,
    pub vm: String,
    #[serde(flatten)]
    pub record: VmRenewal,
    /// A clear requested and not yet applied by the renewal task.
    pub rearm_requested: Option<DateTime<Utc>>,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Shared(#[from] StateError),
}

/// Journal handle.
#[derive(Clone)]
pub struct RenewalJournal {
    store: StateStore,
    /// With replicas: the records live in etcd (see the module docs).
    shared: Option<Arc<Cluster>>,
}

impl std::fmt::Debug for RenewalJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewalJournal")
            .field("store", &self.store)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

const LNVPS: &str = "lnvps";

/// One account's renewal records and operator clears as a pass found them
/// ([`RenewalJournal::account`]); raw, so a record that does not parse fails only its VM.
pub enum AccountRecords {
    /// Without replicas: read from the local store VM by VM.
    Local,
    /// With replicas: the etcd values by VM id.
    Shared {
        records: std::collections::HashMap<String, Vec<u8>>,
        rearms: std::collections::HashMap<String, Vec<u8>>,
    },
}

fn shared_key(kind: &str, account: &str, rest: &str) -> String {
    format!("{kind}/{LNVPS}/{account}/{rest}")
}

fn invalid(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Tries of a spend read-modify-write that raced another writer.
const SPEND_TRIES: usize = 3;

fn key(account: &str, vm: &str) -> String {
    format!("{account}{SEP}{vm}")
}

fn spend_key(account: &str, month: &str) -> String {
    format!("{account}{SEP}{month}")
}

impl RenewalJournal {
    pub fn new(store: StateStore, shared: Option<Arc<Cluster>>) -> RenewalJournal {
        RenewalJournal { store, shared }
    }

    /// Whether the records live in etcd (replicas) rather than the local store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// What a pass needs of one account's VMs, read before its first VM: with
    /// replicas, every record and operator clear of the account in two etcd range reads
    /// (not two reads per VM); locally nothing yet (the store is read VM by VM).
    pub async fn account(&self, account: &str) -> Result<AccountRecords, JournalError> {
        let Some(c) = &self.shared else {
            return Ok(AccountRecords::Local);
        };
        let records = c
            .read_prefix(&shared_key("renewals", account, ""))
            .await?
            .into_iter()
            .collect();
        let rearms = c
            .read_prefix(&shared_key("rearms", account, ""))
            .await?
            .into_iter()
            .collect();
        Ok(AccountRecords::Shared { records, rearms })
    }

    /// The VM's record (empty when there is none) and when an operator last asked to
    /// re-arm its renewal (`None` = never), from `pre` (this account's, from
    /// [`RenewalJournal::account`]).
    pub fn vm(
        &self,
        pre: &AccountRecords,
        account: &str,
        vm: &str,
    ) -> Result<(VmRenewal, Option<DateTime<Utc>>), JournalError> {
        let (records, rearms) = match pre {
            AccountRecords::Local => {
                return Ok((
                    self.get_local(account, vm)?,
                    self.rearm_requested_local(account, vm)?,
                ))
            }
            AccountRecords::Shared { records, rearms } => (records, rearms),
        };
        let record = match records.get(vm) {
            None => VmRenewal::default(),
            Some(v) => serde_json::from_slice(v)
                .map_err(|e| invalid(&shared_key("renewals", account, vm), e))?,
        };
        let rearm = rearms
            .get(vm)
            .map(|v| parse_i64(&shared_key("rearms", account, vm), v))
            .transpose()?
            .and_then(|t| DateTime::from_timestamp(t, 0));
        Ok((record, rearm))
    }

    /// Records an operator's clear (as the local store's variant below does); with
    /// replicas in etcd, from whichever replica received it, unfenced: the owner applies
    /// it on its next pass.
    pub async fn request_rearm(
        &self,
        account: &str,
        vm: &str,
        at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, JournalError> {
        let Some(c) = &self.shared else {
            return Ok(self.request_rearm_local(account, vm, at)?);
        };
        let key = shared_key("rearms", account, vm);
        let mut tries = 0;
        loop {
            let old = c.read(&key).await?;
            let prev = old
                .value
                .as_deref()
                .map(|v| parse_i64(&key, v))
                .transpose()?;
            let stamp = prev.map_or(at.timestamp(), |o| at.timestamp().max(o.saturating_add(1)));
            let put = SharedPut {
                key: key.clone(),
                value: stamp.to_string().into_bytes(),
                expect: Some(old.revision),
            };
            match c.write(None, vec![put]).await {
                Ok(()) => return Ok(DateTime::from_timestamp(stamp, 0).unwrap_or(at)),
                Err(StateError::Conflict { .. }) if tries + 1 < SPEND_TRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Every VM's record, by account and VM.
    pub async fn list(&self) -> Result<Vec<Listed>, JournalError> {
        let Some(c) = &self.shared else {
            return Ok(self.list_local()?);
        };
        let rearms: std::collections::HashMap<String, i64> = c
            .read_prefix(&format!("rearms/{LNVPS}/"))
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k.clone(), parse_i64(&k, &v).ok()?)))
            .collect();
        let mut out = Vec::new();
        for (k, v) in c.read_prefix(&format!("renewals/{LNVPS}/")).await? {
            let Some((account, vm)) = k.split_once('/') else {
                continue;
            };
            let record: VmRenewal = serde_json::from_slice(&v).map_err(|e| invalid(&k, e))?;
            let rearm_requested = rearms
                .get(&k)
                .and_then(|t| DateTime::from_timestamp(*t, 0))
                .filter(|t| record.rearmed_at.is_none_or(|r| *t > r));
            out.push(Listed {
                account: account.to_string(),
                vm: vm.to_string(),
                record,
                rearm_requested,
            });
        }
        Ok(out)
    }

    /// Sats paid or reserved on `account` in `month`.
    pub async fn spent(&self, account: &str, month: &str) -> Result<u64, JournalError> {
        let Some(c) = &self.shared else {
            return Ok(self.spent_local(account, month)?);
        };
        let key = shared_key("spend", account, month);
        Ok(c.read(&key)
            .await?
            .value
            .map(|v| parse_i64(&key, &v))
            .transpose()?
            .map_or(0, |n| n.max(0) as u64))
    }

    /// Writes the VM's record and adjusts the month's spend (`delta` sats, may be
    /// negative to release a reservation) in one durable transaction; with replicas only
    /// while this replica owns the account.
    pub async fn put(
        &self,
        account: &str,
        vm: &str,
        rec: &VmRenewal,
        spend: Option<(&str, i64)>,
    ) -> Result<(), JournalError> {
        let Some(c) = &self.shared else {
            return Ok(self.put_local(account, vm, rec, spend)?);
        };
        let key = shared_key("renewals", account, vm);
        let Some(idx) = c.index_of(LNVPS, account) else {
            return Err(StateError::Fence(crate::cluster::FenceError::NotOwner {
                account: format!("{LNVPS}/{account}"),
            })
            .into());
        };
        let bytes = serde_json::to_vec(rec).map_err(|e| invalid(&key, e))?;
        let mut tries = 0;
        loop {
            let mut puts = vec![SharedPut {
                key: key.clone(),
                value: bytes.clone(),
                expect: None,
            }];
            if let Some((month, delta)) = spend {
                let skey = shared_key("spend", account, month);
                let old = c.read(&skey).await?;
                let before = old
                    .value
                    .as_deref()
                    .map(|v| parse_i64(&skey, v))
                    .transpose()?
                    .unwrap_or(0)
                    .max(0);
                let after = before.saturating_add(delta).max(0);
                puts.push(SharedPut {
                    key: skey,
                    value: after.to_string().into_bytes(),
                    expect: Some(old.revision),
                });
            }
            match c.write(Some(idx), puts).await {
                Ok(()) => return Ok(()),
                Err(StateError::Conflict { .. }) if tries + 1 < SPEND_TRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn get_local(&self, account: &str, vm: &str) -> Result<VmRenewal, StoreError> {
        let tx = self.store.begin_read()?;
        let table = match tx.open_table(RENEWALS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(VmRenewal::default()),
            Err(x) => return Err(self.store.error(x)),
        };
        match table
            .get(key(account, vm).as_str())
            .map_err(|x| self.store.error(x))?
        {
            None => Ok(VmRenewal::default()),
            Some(v) => serde_json::from_slice(v.value()).map_err(|x| self.store.invalid(x)),
        }
    }

    /// When an operator last asked to re-arm this VM's renewal (`None` = never).
    fn rearm_requested_local(
        &self,
        account: &str,
        vm: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let tx = self.store.begin_read()?;
        let table = match tx.open_table(REARM) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(x) => return Err(self.store.error(x)),
        };
        Ok(table
            .get(key(account, vm).as_str())
            .map_err(|x| self.store.error(x))?
            .and_then(|v| DateTime::from_timestamp(v.value(), 0)))
    }

    /// Records an operator's clear: the renewal task re-arms the VM's tries on its next
    /// pass (and the give-up alert stays until the VM is renewed or leaves the window).
    /// Returns the recorded time: `at`, or one second after the previous clear, so each
    /// clear is newer than the last one applied.
    pub(crate) fn request_rearm_local(
        &self,
        account: &str,
        vm: &str,
        at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let tx = self.store.begin_write()?;
        let stamp;
        {
            let mut t = tx.open_table(REARM).map_err(|x| self.store.error(x))?;
            let k = key(account, vm);
            let old = t
                .get(k.as_str())
                .map_err(|x| self.store.error(x))?
                .map(|v| v.value());
            stamp = old.map_or(at.timestamp(), |o| at.timestamp().max(o.saturating_add(1)));
            t.insert(k.as_str(), stamp)
                .map_err(|x| self.store.error(x))?;
        }
        self.store.commit(tx)?;
        Ok(DateTime::from_timestamp(stamp, 0).unwrap_or(at))
    }

    /// Every VM's record, by account and VM.
    pub(crate) fn list_local(&self) -> Result<Vec<Listed>, StoreError> {
        let tx = self.store.begin_read()?;
        let table = match tx.open_table(RENEWALS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(x) => return Err(self.store.error(x)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|x| self.store.error(x))? {
            let (k, v) = row.map_err(|x| self.store.error(x))?;
            let Some((account, vm)) = k.value().split_once(SEP) else {
                continue;
            };
            let record: VmRenewal =
                serde_json::from_slice(v.value()).map_err(|x| self.store.invalid(x))?;
            out.push(Listed {
                account: account.to_string(),
                vm: vm.to_string(),
                record,
                rearm_requested: None,
            });
        }
        drop(table);
        drop(tx);
        for l in &mut out {
            l.rearm_requested = self
                .rearm_requested_local(&l.account, &l.vm)?
                .filter(|t| l.record.rearmed_at.is_none_or(|r| *t > r));
        }
        Ok(out)
    }

    /// Sats paid or reserved on `account` in `month`.
    fn spent_local(&self, account: &str, month: &str) -> Result<u64, StoreError> {
        let tx = self.store.begin_read()?;
        let table = match tx.open_table(SPEND) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(x) => return Err(self.store.error(x)),
        };
        Ok(table
            .get(spend_key(account, month).as_str())
            .map_err(|x| self.store.error(x))?
            .map_or(0, |v| v.value()))
    }

    /// Writes the VM's record and adjusts the month's spend (`delta` sats, may be
    /// negative to release a reservation) in one durable transaction.
    fn put_local(
        &self,
        account: &str,
        vm: &str,
        rec: &VmRenewal,
        spend: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|x| self.store.invalid(x))?;
        let tx = self.store.begin_write()?;
        {
            let mut t = tx.open_table(RENEWALS).map_err(|x| self.store.error(x))?;
            t.insert(key(account, vm).as_str(), bytes.as_slice())
                .map_err(|x| self.store.error(x))?;
            if let Some((month, delta)) = spend {
                let mut s = tx.open_table(SPEND).map_err(|x| self.store.error(x))?;
                let k = spend_key(account, month);
                let old = s
                    .get(k.as_str())
                    .map_err(|x| self.store.error(x))?
                    .map_or(0, |v| v.value());
                let new = if delta >= 0 {
                    old.saturating_add(delta as u64)
                } else {
                    old.saturating_sub(delta.unsigned_abs())
                };
                s.insert(k.as_str(), new).map_err(|x| self.store.error(x))?;
            }
        }
        self.store.commit(tx)?;
        Ok(())
    }
}

fn parse_i64(key: &str, v: &[u8]) -> Result<i64, StateError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| invalid(key, "not a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_spend() {
        let dir = tempfile::tempdir().expect("dir");
        let store = StateStore::open(dir.path()).expect("store");
        let j = RenewalJournal::new(store, None);
        assert_eq!(j.get_local("a", "1").expect("get"), VmRenewal::default());
        assert_eq!(j.spent_local("a", "2026-11").expect("spent"), 0);
        let mut rec = VmRenewal::default();
        rec.enter_window(Utc::now());
        rec.attempts = 1;
        j.put_local("a", "1", &rec, Some(("2026-11", 500)))
            .expect("put");
        j.put_local("a", "1", &rec, Some(("2026-11", -200)))
            .expect("put");
        assert_eq!(j.get_local("a", "1").expect("get"), rec);
        assert_eq!(j.spent_local("a", "2026-11").expect("spent"), 300);
        assert_eq!(j.spent_local("b", "2026-11").expect("spent"), 0);
        assert_eq!(j.rearm_requested_local("a", "1").expect("rearm"), None);
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("t");
        assert_eq!(j.request_rearm_local("a", "1", at).expect("rearm"), at);
        assert_eq!(j.rearm_requested_local("a", "1").expect("rearm"), Some(at));
        let again = j.request_rearm_local("a", "1", at).expect("rearm");
        assert!(
            again > at,
            "a second clear in the same second is still newer"
        );
        let listed = j.list_local().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].rearm_requested, Some(again));
    }

    #[test]
    fn older_records_still_read() {
        // A record written before tries were bounded per window.
        let old = r#"{"attempt":null,"last_paid_from":null,"last_paid_at":null,
            "failures":2,"failures_for":"2026-11-24T02:00:00Z","noticed_for":null,
            "noticed_result":null,"alert_firing":false,"next_seq":4}"#;
        let rec: VmRenewal = serde_json::from_str(old).expect("reads");
        assert_eq!(rec.attempts, 2);
        assert!(rec.window.is_some());
        assert_eq!(rec.next_seq, 4);
    }
}
