//! The email channel's tables in the state store, and their records.
//!
//! Every change that produces a mail writes the mail into `email_outbox` in the same redb
//! transaction as the lifecycle change that caused it (alert state, event id, digest), so
//! after a crash either both happened or neither did. A mail leaves the outbox only in the
//! commit that records the server's verdict: its acceptance (`email_delivered`), or its
//! permanent rejection (`email_rejected`, where it is kept aside, bounded, rather than
//! retried forever). Records are JSON so a newer vpswatch can add fields without migrating
//! the file.

use chrono::{DateTime, Utc};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::notify::{AlertKey, Facts};
use crate::store::{StateStore, StoreError};

/// Alert key (JSON) → [`AlertRecord`] for every alert that is firing.
pub const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("email_alerts");
/// Sequence number → [`OutboxEntry`]: mails not yet accepted by the server, oldest first.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("email_outbox");
/// Message-ID → acceptance time (Unix ms): what the server took, kept for a while.
pub const DELIVERED: TableDefinition<&str, i64> = TableDefinition::new("email_delivered");
/// Event id → first seen (Unix ms): an event id is mailed once.
pub const EVENTS: TableDefinition<&str, i64> = TableDefinition::new("email_events");
/// "provider/account" → [`DigestGroup`] waiting for its window to close.
pub const DIGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("email_digests");
/// Counters (the next outbox and rejected sequence numbers).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("email_meta");
/// Sequence number → [`RejectedEntry`]: mails (or some of their recipients) the server
/// refused for good, oldest first, kept for the operator and bounded.
pub const REJECTED: TableDefinition<u64, &[u8]> = TableDefinition::new("email_rejected");
/// Text facts about this state directory; `installation_id` is mixed into Message-IDs.
pub const INSTALLATION: TableDefinition<&str, &str> = TableDefinition::new("installation");

const NEXT_SEQ: &str = "next_outbox_seq";
const NEXT_REJECTED_SEQ: &str = "next_rejected_seq";
const INSTALLATION_ID: &str = "installation_id";

/// The state of one firing alert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertRecord {
    pub key: AlertKey,
    pub facts: Facts,
    pub since: DateTime<Utc>,
    /// Message-ID of the first mail about this alert: later mails reply to it.
    pub thread_root: String,
    /// When the next reminder is due (clock time); `None` while waiting in a digest.
    pub next_reminder: Option<DateTime<Utc>>,
    pub reminders_sent: u32,
}

/// One mail waiting for the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub message_id: String,
    pub subject: String,
    pub env_from: String,
    pub env_to: Vec<String>,
    #[serde(with = "raw_b64")]
    pub raw: Vec<u8>,
    pub queued_at: DateTime<Utc>,
    /// Not before this time (clock time): backoff after a failed attempt.
    pub next_attempt: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// With replicas: the sent-mark this alert mail checks and writes in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<SentMark>,
}

/// An alert mail's mark in etcd (`mails/<provider>/<account>/<hash of the alert key>`):
/// the last kind (`firing`, `resolved`) any replica sent for the alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMark {
    /// The key relative to the cluster prefix.
    pub key: String,
    pub kind: String,
    /// The alert's key in this replica's alert table, so a FIRING found sent by another
    /// replica can become the thread this replica's later mails about it reply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
}

/// Makes `thread_root` the Message-ID later mails about alert `alert` reply to (the
/// FIRING another replica sent, when this replica's own was a duplicate).
pub fn rethread(store: &StateStore, alert: &str, thread_root: &str) -> Result<(), StoreError> {
    let tx = store.begin_write()?;
    {
        let mut alerts = tx.open_table(ALERTS).map_err(|e| store.error(e))?;
        let current: Option<AlertRecord> = alerts
            .get(alert)
            .map_err(|e| store.error(e))?
            .and_then(|v| decode(v.value()));
        if let Some(mut rec) = current {
            rec.thread_root = thread_root.to_string();
            alerts
                .insert(alert, encode(&rec).as_slice())
                .map_err(|e| store.error(e))?;
        }
    }
    store.commit(tx)
}

/// A mail the server refused for good, for the recipients in `entry.env_to` (all of the
/// message's recipients when the message itself was refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedEntry {
    pub entry: OutboxEntry,
    pub rejected_at: DateTime<Utc>,
    /// The server's answer (per recipient when it refused recipients).
    pub reply: String,
}

/// Alerts of one account that started firing within the digest window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestGroup {
    pub message_id: String,
    pub opened: DateTime<Utc>,
    pub closes: DateTime<Utc>,
    pub alerts: Vec<DigestItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestItem {
    pub key: AlertKey,
    pub facts: Facts,
    pub since: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

mod raw_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

pub fn key_string(key: &AlertKey) -> String {
    // A JSON array is unambiguous whatever characters names contain.
    serde_json::to_string(&(&key.rule, key.provider.as_str(), &key.account, &key.vm))
        .unwrap_or_default()
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Creates the tables so readers never meet a missing one (again after a reopen), and
/// returns this state directory's installation id (created on first use: 128 random bits
/// in hex).
///
/// The id lives in the same database as the outbox and the alert records whose
/// Message-IDs it went into, so a backup or restore of the state carries both together
/// and the two can never disagree; it needs no file of its own beside the database.
pub fn init(store: &StateStore) -> Result<String, StoreError> {
    store.ensure_tables(create_tables)?;
    let tx = store.begin_write()?;
    let id = {
        let mut t = tx.open_table(INSTALLATION).map_err(|e| store.error(e))?;
        let stored = t
            .get(INSTALLATION_ID)
            .map_err(|e| store.error(e))?
            .map(|g| g.value().to_string())
            .filter(|v| !v.is_empty());
        match stored {
            Some(id) => id,
            None => {
                let id = format!("{:032x}", rand::random::<u128>());
                t.insert(INSTALLATION_ID, id.as_str())
                    .map_err(|e| store.error(e))?;
                id
            }
        }
    };
    store.commit(tx)?;
    Ok(id)
}

fn create_tables(tx: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(ALERTS)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(DELIVERED)?;
    tx.open_table(EVENTS)?;
    tx.open_table(DIGESTS)?;
    tx.open_table(META)?;
    tx.open_table(REJECTED)?;
    tx.open_table(INSTALLATION)?;
    Ok(())
}

/// Appends a mail to the outbox inside the caller's transaction.
pub fn push(tx: &redb::WriteTransaction, entry: &OutboxEntry) -> Result<u64, redb::Error> {
    let mut meta = tx.open_table(META)?;
    let seq = meta.get(NEXT_SEQ)?.map(|g| g.value()).unwrap_or(1);
    meta.insert(NEXT_SEQ, seq + 1)?;
    let mut outbox = tx.open_table(OUTBOX)?;
    outbox.insert(seq, encode(entry).as_slice())?;
    Ok(seq)
}

/// Size of the outbox and the queue time of its oldest mail; mails set aside.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    pub messages: u64,
    pub oldest: Option<DateTime<Utc>>,
    pub rejected: u64,
}

pub fn stats(store: &StateStore) -> Result<OutboxStats, StoreError> {
    let tx = store.begin_read()?;
    let t = tx.open_table(OUTBOX).map_err(|e| store.error(e))?;
    let messages = t.len().map_err(|e| store.error(e))?;
    let oldest = t
        .first()
        .map_err(|e| store.error(e))?
        .and_then(|(_, v)| decode::<OutboxEntry>(v.value()))
        .map(|e| e.queued_at);
    let rejected = tx
        .open_table(REJECTED)
        .map_err(|e| store.error(e))?
        .len()
        .map_err(|e| store.error(e))?;
    Ok(OutboxStats {
        messages,
        oldest,
        rejected,
    })
}

/// Mails due at `now` (all of them with `ignore_backoff`), oldest first, at most `limit`.
pub fn due(
    store: &StateStore,
    now: DateTime<Utc>,
    ignore_backoff: bool,
    limit: usize,
) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
    let tx = store.begin_read()?;
    let t = tx.open_table(OUTBOX).map_err(|e| store.error(e))?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| store.error(e))? {
        let (k, v) = item.map_err(|e| store.error(e))?;
        let seq = k.value();
        match decode::<OutboxEntry>(v.value()) {
            Some(e) if ignore_backoff || e.next_attempt <= now => out.push((seq, e)),
            Some(_) => {}
            None => tracing::error!(seq, "unreadable outbox entry skipped"),
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// What to record after an attempt at one outbox mail, in one commit.
#[derive(Debug)]
pub struct Settlement {
    /// When the server answered (clock time).
    pub at: DateTime<Utc>,
    /// The server accepted it (for some or all recipients).
    pub accepted: bool,
    /// Recipients to try again later, why, and when; empty: the mail leaves the outbox.
    pub retry_to: Vec<String>,
    pub error: Option<String>,
    pub next_attempt: Option<DateTime<Utc>>,
    /// Recipients refused for good, with the server's answer: set aside.
    pub aside: Option<(Vec<String>, String)>,
}

/// Records the server's verdict on outbox mail `seq`: acceptance joins the delivered list,
/// refused recipients are set aside (the oldest set-aside mails beyond `keep_rejected` are
/// dropped), and the mail stays in the outbox only for recipients to retry — all in one
/// commit, so a crash cannot leave a mail both sent and due.
pub fn settle(
    store: &StateStore,
    seq: u64,
    entry: &OutboxEntry,
    s: &Settlement,
    keep_rejected: usize,
) -> Result<(), StoreError> {
    let tx = store.begin_write()?;
    {
        let mut outbox = tx.open_table(OUTBOX).map_err(|e| store.error(e))?;
        if s.accepted {
            let mut delivered = tx.open_table(DELIVERED).map_err(|e| store.error(e))?;
            delivered
                .insert(entry.message_id.as_str(), ms(s.at))
                .map_err(|e| store.error(e))?;
        }
        if s.retry_to.is_empty() {
            outbox.remove(seq).map_err(|e| store.error(e))?;
        } else {
            let current = outbox
                .get(seq)
                .map_err(|e| store.error(e))?
                .and_then(|v| decode::<OutboxEntry>(v.value()));
            if let Some(mut e) = current {
                e.attempts += 1;
                e.env_to = s.retry_to.clone();
                e.last_error = s.error.clone();
                if let Some(t) = s.next_attempt {
                    e.next_attempt = t;
                }
                outbox
                    .insert(seq, encode(&e).as_slice())
                    .map_err(|e| store.error(e))?;
            }
        }
        if let Some((to, reply)) = &s.aside {
            let record = RejectedEntry {
                entry: OutboxEntry {
                    env_to: to.clone(),
                    attempts: entry.attempts + 1,
                    last_error: Some(reply.clone()),
                    ..entry.clone()
                },
                rejected_at: s.at,
                reply: reply.clone(),
            };
            let mut meta = tx.open_table(META).map_err(|e| store.error(e))?;
            let rseq = meta
                .get(NEXT_REJECTED_SEQ)
                .map_err(|e| store.error(e))?
                .map(|g| g.value())
                .unwrap_or(1);
            meta.insert(NEXT_REJECTED_SEQ, rseq + 1)
                .map_err(|e| store.error(e))?;
            let mut rejected = tx.open_table(REJECTED).map_err(|e| store.error(e))?;
            rejected
                .insert(rseq, encode(&record).as_slice())
                .map_err(|e| store.error(e))?;
            let len = rejected.len().map_err(|e| store.error(e))?;
            let excess = len.saturating_sub(u64::try_from(keep_rejected).unwrap_or(u64::MAX));
            for _ in 0..excess {
                rejected.pop_first().map_err(|e| store.error(e))?;
            }
        }
    }
    store.commit(tx)
}

/// The mails set aside, oldest first (tests and operators).
pub fn rejected(store: &StateStore) -> Result<Vec<RejectedEntry>, StoreError> {
    let tx = store.begin_read()?;
    let t = tx.open_table(REJECTED).map_err(|e| store.error(e))?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| store.error(e))? {
        let (_, v) = item.map_err(|e| store.error(e))?;
        if let Some(r) = decode::<RejectedEntry>(v.value()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Message-IDs the server accepted (tests and operators).
pub fn delivered_ids(store: &StateStore) -> Result<Vec<String>, StoreError> {
    let tx = store.begin_read()?;
    let t = tx.open_table(DELIVERED).map_err(|e| store.error(e))?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| store.error(e))? {
        let (k, _) = item.map_err(|e| store.error(e))?;
        out.push(k.value().to_string());
    }
    Ok(out)
}

/// Forgets delivered ids, seen event ids and set-aside mails older than `before`, so the
/// tables stay small.
pub fn prune(store: &StateStore, before: DateTime<Utc>) -> Result<(), StoreError> {
    let cutoff = ms(before);
    let tx = store.begin_write()?;
    {
        let mut d = tx.open_table(DELIVERED).map_err(|e| store.error(e))?;
        d.retain(|_, t| t >= cutoff).map_err(|e| store.error(e))?;
        let mut ev = tx.open_table(EVENTS).map_err(|e| store.error(e))?;
        ev.retain(|_, t| t >= cutoff).map_err(|e| store.error(e))?;
        let mut r = tx.open_table(REJECTED).map_err(|e| store.error(e))?;
        r.retain(|_, v| decode::<RejectedEntry>(v).is_some_and(|r| r.rejected_at >= before))
            .map_err(|e| store.error(e))?;
    }
    store.commit(tx)
}
