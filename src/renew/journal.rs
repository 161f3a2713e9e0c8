//! The renewal journal: per VM, the renewal in flight (invoice id = payment hash,
//! amount, phase) and the last one paid, plus the sats spent per account and month, in
//! the shared redb store (tables `renewals` and `renewal_spend`).
//!
//! A payment is journaled in phase `paying` — with its amount reserved against the
//! month's budget — in one committed transaction *before* the wallet is asked to pay.
//! After a crash the renewal is resumed from the journal by looking the invoice up
//! (`GET /payment/{id}`); an invoice in `paying` is never sent to the wallet again.

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::{StateStore, StoreError};

const RENEWALS: TableDefinition<&str, &[u8]> = TableDefinition::new("renewals");
const SPEND: TableDefinition<&str, u64> = TableDefinition::new("renewal_spend");

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
pub struct VmRenewal {
    pub attempt: Option<Attempt>,
    /// `expires` as it was when the last renewal was paid.
    pub last_paid_from: Option<DateTime<Utc>>,
    pub last_paid_at: Option<DateTime<Utc>>,
    /// Failed attempts for the `expires` value in `failures_for`.
    pub failures: u32,
    pub failures_for: Option<DateTime<Utc>>,
    /// The `expires` value a one-off notice (blocked, dry run, gave up) was sent for.
    pub noticed_for: Option<DateTime<Utc>>,
    /// Which notice (its result label) was sent for `noticed_for`.
    pub noticed_result: Option<String>,
    /// Whether this VM's renewal alert is firing.
    pub alert_firing: bool,
    pub next_seq: u64,
}

impl VmRenewal {
    /// Failed attempts that count against `expires`.
    pub fn failures_for(&self, expires: DateTime<Utc>) -> u32 {
        if self.failures_for == Some(expires) {
            self.failures
        } else {
            0
        }
    }

    pub fn add_failure(&mut self, expires: DateTime<Utc>) {
        if self.failures_for != Some(expires) {
            self.failures_for = Some(expires);
            self.failures = 0;
        }
        self.failures += 1;
    }
}

/// Journal handle.
#[derive(Clone, Debug)]
pub struct RenewalJournal {
    store: StateStore,
}

fn key(account: &str, vm: &str) -> String {
    format!("{account}{SEP}{vm}")
}

fn spend_key(account: &str, month: &str) -> String {
    format!("{account}{SEP}{month}")
}

impl RenewalJournal {
    pub fn new(store: StateStore) -> RenewalJournal {
        RenewalJournal { store }
    }

    pub fn get(&self, account: &str, vm: &str) -> Result<VmRenewal, StoreError> {
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

    /// Sats paid or reserved on `account` in `month`.
    pub fn spent(&self, account: &str, month: &str) -> Result<u64, StoreError> {
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
    pub fn put(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_spend() {
        let dir = tempfile::tempdir().expect("dir");
        let store = StateStore::open(dir.path()).expect("store");
        let j = RenewalJournal::new(store);
        assert_eq!(j.get("a", "1").expect("get"), VmRenewal::default());
        assert_eq!(j.spent("a", "2026-11").expect("spent"), 0);
        let mut rec = VmRenewal::default();
        rec.add_failure(Utc::now());
        j.put("a", "1", &rec, Some(("2026-11", 500))).expect("put");
        j.put("a", "1", &rec, Some(("2026-11", -200))).expect("put");
        assert_eq!(j.get("a", "1").expect("get"), rec);
        assert_eq!(j.spent("a", "2026-11").expect("spent"), 300);
        assert_eq!(j.spent("b", "2026-11").expect("spent"), 0);
    }
}
