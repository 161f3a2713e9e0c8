//! The email channel: alert lifecycle, outbox and sender on top of the state store.
//!
//! `alert`/`event` decide what mail a change means (first firing, resolution, an event
//! seen for the first time), render it and append it to the outbox in the same redb
//! commit as the lifecycle change, then return: the caller may commit its own state
//! knowing the mail cannot be lost. A background task ([`EmailNotifier::run`]) sends
//! reminders for alerts that keep firing, closes digest windows, and delivers the outbox
//! over SMTP, retrying with backoff while the server is unreachable. Each mail has its
//! own fate: a mail (or a recipient) the server refuses for good is set aside and
//! counted, one it refuses for now waits its own backoff, and neither holds the others
//! back. A mail leaves the outbox in the commit right after the server's verdict; see the
//! docs/email.md for the one window in which SMTP only allows at-least-once.
//!
//! Time decisions (reminders, digest windows, backoff) use the injected clock so tests
//! can run hours of reminders in seconds; only the task's polling tick uses real time.

pub mod compose;
pub mod outbox;
pub mod settings;
pub mod smtp;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redb::ReadableTable;
use tokio_util::sync::CancellationToken;

use self::compose::{AlertBlock, Composed, MailKind};
use self::outbox::{
    decode, encode, key_string, AlertRecord, DigestGroup, DigestItem, OutboxEntry, OutboxStats,
    RejectedEntry, SentMark, Settlement, ALERTS, DIGESTS, EVENTS,
};
use self::settings::EmailSettings;
use self::smtp::{Delivery, Refusal, Session, SmtpFailure, Verdict};
use crate::metrics::SelfMetrics;
use crate::notify::{AlertKey, AlertStatus, AlertUpdate, Event, Facts, Notify};
use crate::store::{StateStore, StoreError};
use vpswatch_model::clock::{unix_seconds, SharedClock};

/// The `channel` label of this channel's metrics.
pub const CHANNEL: &str = "email";

/// Environment variable naming a point at which the process aborts (tests of crash
/// safety): `queued` (right after a mail is committed to the outbox) or `accepted` (right
/// after the server accepted a mail, before that is committed). Read once at start.
pub const CRASH_ENV: &str = "VPSWATCH_CRASH_AFTER";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    Queued,
    Accepted,
}

fn crash_point_from_env() -> Option<CrashPoint> {
    match std::env::var(CRASH_ENV).ok()?.as_str() {
        "queued" => Some(CrashPoint::Queued),
        "accepted" => Some(CrashPoint::Accepted),
        other => {
            tracing::warn!(
                value = other,
                "{CRASH_ENV} ignored (expected queued or accepted)"
            );
            None
        }
    }
}

/// Timing of the background task.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often the task looks for due reminders, closed digests and due retries.
    pub tick: Duration,
    /// First wait after a failed attempt; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Mails sent per round (one SMTP session).
    pub batch: usize,
    /// How long delivered Message-IDs, seen event ids and set-aside mails are remembered.
    pub remember: Duration,
    /// At most this many set-aside (permanently rejected) mails are kept; the oldest go.
    pub keep_rejected: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            batch: 500,
            remember: Duration::from_secs(30 * 24 * 3600),
            keep_rejected: 1000,
        }
    }
}

/// What one delivery round did.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub failed: usize,
    /// Mails (or some of their recipients) the server refused for good: set aside.
    pub rejected: usize,
    pub remaining: u64,
    /// The server's answer per delivered mail (Message-ID, reply).
    pub accepted: Vec<(String, String)>,
    /// The failure that ended the round early (server problem) or the last per-mail one.
    pub error: Option<SmtpFailure>,
}

/// Why a notification could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Compose(String),
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::Store(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    StoreError
);

/// How many alert changes and events are held in memory while the state store cannot be
/// written; further ones are dropped (counted as `dropped`).
pub const HOLD_LIMIT: usize = 1000;

/// A notification that could not be written yet: replayed, in order, once the store
/// takes writes again (it is recorded as it would have been, so nothing is mailed twice).
enum Held {
    Alert(AlertUpdate),
    Event(Event),
}

impl Held {
    fn what(&self) -> &'static str {
        match self {
            Held::Alert(_) => "alert",
            Held::Event(_) => "event",
        }
    }
}

/// Server-level backoff (connection refused, TLS, auth): in memory, so a restart tries at
/// once.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<DateTime<Utc>>,
}

/// The email [`Notify`] implementation.
pub struct EmailNotifier {
    settings: EmailSettings,
    store: StateStore,
    /// This state directory's random id, mixed into every Message-ID.
    installation: String,
    clock: SharedClock,
    metrics: Arc<SelfMetrics>,
    tuning: Tuning,
    wake: tokio::sync::Notify,
    crash: Option<CrashPoint>,
    backoff: Mutex<Backoff>,
    /// One delivery round at a time.
    round: tokio::sync::Mutex<()>,
    last_prune: Mutex<Option<DateTime<Utc>>>,
    /// Notifications waiting for the state store (see [`HOLD_LIMIT`]).
    held: Mutex<VecDeque<Held>>,
    /// With replicas: FIRING and RESOLVED mails check and write their sent-mark in etcd.
    shared: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// The value of a sent-mark in etcd.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MarkValue {
    kind: String,
    member: String,
    at: DateTime<Utc>,
    /// The Message-ID of the mail sent, so the other replicas' later mails about the
    /// alert reply to it.
    #[serde(default)]
    message_id: Option<String>,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifier")
            .field("server", &self.settings.server())
            .field("store", &self.store)
            .finish()
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn entry_for(c: Composed, now: DateTime<Utc>) -> OutboxEntry {
    OutboxEntry {
        message_id: c.message_id,
        subject: c.subject,
        env_from: c.env_from,
        env_to: c.env_to,
        raw: c.raw,
        queued_at: now,
        next_attempt: now,
        attempts: 0,
        last_error: None,
        mark: None,
    }
}

fn block<'a>(key: &'a AlertKey, facts: &'a Facts, since: DateTime<Utc>) -> AlertBlock<'a> {
    AlertBlock {
        key,
        facts,
        since,
        resolved_at: None,
    }
}

fn group_key(key: &AlertKey) -> String {
    format!("{}/{}", key.provider, key.account)
}

impl EmailNotifier {
    /// Opens the channel on `store` (creating its tables) with default timing.
    pub fn open(
        settings: EmailSettings,
        store: StateStore,
        clock: SharedClock,
        metrics: Arc<SelfMetrics>,
    ) -> Result<Arc<EmailNotifier>, StoreError> {
        Self::open_with(settings, store, clock, metrics, Tuning::default())
    }

    /// Like [`EmailNotifier::open`] with explicit timing (tests use short waits).
    pub fn open_with(
        settings: EmailSettings,
        store: StateStore,
        clock: SharedClock,
        metrics: Arc<SelfMetrics>,
        tuning: Tuning,
    ) -> Result<Arc<EmailNotifier>, StoreError> {
        let installation = outbox::init(&store)?;
        let n = Arc::new(EmailNotifier {
            settings,
            store,
            installation,
            clock,
            metrics,
            tuning,
            wake: tokio::sync::Notify::new(),
            crash: crash_point_from_env(),
            backoff: Mutex::new(Backoff::default()),
            round: tokio::sync::Mutex::new(()),
            last_prune: Mutex::new(None),
            held: Mutex::new(VecDeque::new()),
            shared: std::sync::OnceLock::new(),
        });
        n.refresh_gauges();
        Ok(n)
    }

    /// With replicas: alert mails about an account (FIRING, RESOLVED) are sent once
    /// across the replicas, through sent-marks in etcd (docs/email.md).
    pub fn share_marks(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.shared.set(cluster);
    }

    /// The sent-mark an alert mail of `kind` carries with replicas, else `None`.
    fn mark_for(&self, key: &AlertKey, kind: &str) -> Option<SentMark> {
        use sha2::{Digest, Sha256};
        self.shared.get()?;
        let hash = hex::encode(&Sha256::digest(compose::key_seed(key).as_bytes())[..16]);
        Some(SentMark {
            key: format!("mails/{}/{}/{hash}", key.provider, key.account),
            kind: kind.to_string(),
            alert: Some(key_string(key)),
        })
    }

    /// Whether another replica already sent this alert mail's kind (the mark's last kind).
    /// When etcd cannot answer the mail is sent: a duplicate is better than a lost alert.
    async fn already_sent(&self, mark: &SentMark) -> Option<MarkValue> {
        let cluster = self.shared.get()?;
        match cluster.read(&mark.key).await {
            Ok(v) => v
                .value
                .and_then(|b| serde_json::from_slice::<MarkValue>(&b).ok())
                .filter(|m| m.kind == mark.kind),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the alert mail's sent-mark; sending it");
                None
            }
        }
    }

    async fn write_mark(&self, mark: &SentMark, message_id: &str) {
        let Some(cluster) = self.shared.get() else {
            return;
        };
        let value = MarkValue {
            kind: mark.kind.clone(),
            member: cluster.member().to_string(),
            at: self.clock.now(),
            message_id: Some(message_id.to_string()),
        };
        let put = crate::cluster::SharedPut {
            key: mark.key.clone(),
            value: serde_json::to_vec(&value).unwrap_or_default(),
            expect: None,
        };
        if let Err(e) = cluster.write(None, vec![put]).await {
            tracing::warn!(error = %e,
                "cannot write the alert mail's sent-mark; another replica may send it again");
        }
    }

    pub fn settings(&self) -> &EmailSettings {
        &self.settings
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Outbox size and age, read from the store.
    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        outbox::stats(&self.store)
    }

    /// Message-IDs the server accepted (kept for `Tuning::remember`).
    pub fn delivered_ids(&self) -> Result<Vec<String>, StoreError> {
        outbox::delivered_ids(&self.store)
    }

    /// Mails the server refused for good, oldest first (kept for `Tuning::remember`, at
    /// most `Tuning::keep_rejected`).
    pub fn rejected(&self) -> Result<Vec<RejectedEntry>, StoreError> {
        outbox::rejected(&self.store)
    }

    /// This state directory's installation id (mixed into every Message-ID).
    pub fn installation_id(&self) -> &str {
        &self.installation
    }

    fn message_id(&self, tag: &str, seed: &str) -> String {
        compose::message_id(&self.settings, &self.installation, tag, seed)
    }

    fn crash_if(&self, point: CrashPoint) {
        if self.crash == Some(point) {
            eprintln!("vpswatch: {CRASH_ENV}={point:?}: aborting on purpose");
            std::process::abort();
        }
    }

    fn refresh_gauges(&self) {
        match outbox::stats(&self.store) {
            Ok(s) => {
                let m = self.metrics.alert_metrics();
                m.set_outbox(s.messages, s.oldest.map(unix_seconds));
                m.set_rejected(s.rejected);
                self.metrics.changed();
            }
            Err(e) => tracing::error!(error = %e, "cannot read the alert outbox"),
        }
    }

    /// After a commit that queued `n` mails: count, crash hook, wake the sender.
    fn queued(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.metrics
            .alert_metrics()
            .count(CHANNEL, "queued", n as u64);
        self.crash_if(CrashPoint::Queued);
        self.refresh_gauges();
        self.wake.notify_one();
    }

    fn queue_failed(&self, what: &str, e: &QueueError) {
        self.metrics
            .alert_metrics()
            .count(CHANNEL, "queue_error", 1);
        self.metrics.changed();
        tracing::error!(error = %e, "cannot queue the {what} mail");
    }

    fn compose_alert(
        &self,
        kind: MailKind,
        block: AlertBlock<'_>,
        now: DateTime<Utc>,
        id: &str,
        root: Option<&str>,
    ) -> Result<OutboxEntry, QueueError> {
        compose::alert_mail(&self.settings, kind, &block, now, id, root)
            .map(|c| entry_for(c, now))
            .map_err(QueueError::Compose)
    }

    /// Applies an alert update; returns how many mails were queued.
    pub fn record_alert(&self, u: &AlertUpdate) -> Result<usize, QueueError> {
        let now = self.clock.now();
        let ks = key_string(&u.key);
        let seed = compose::key_seed(&u.key);
        let tx = self.store.begin_write()?;
        let mut queued = 0;
        {
            let mut alerts = tx.open_table(ALERTS)?;
            let existing: Option<AlertRecord> =
                alerts.get(ks.as_str())?.and_then(|g| decode(g.value()));
            match (existing, u.status) {
                // Repeats of the current status (e.g. after a restart) change nothing.
                (Some(_), AlertStatus::Firing) | (None, AlertStatus::Resolved) => {}
                (None, AlertStatus::Firing) => {
                    let record = if let Some(window) = self.settings.digest_window {
                        let gk = group_key(&u.key);
                        let mut digests = tx.open_table(DIGESTS)?;
                        let mut group: DigestGroup = digests
                            .get(gk.as_str())?
                            .and_then(|g| decode(g.value()))
                            .unwrap_or_else(|| DigestGroup {
                                message_id: self.message_id(
                                    "digest",
                                    &format!("{gk}\u{1f}{}", outbox::ms(now)),
                                ),
                                opened: now,
                                closes: now + chrono_dur(window),
                                alerts: Vec::new(),
                            });
                        group.alerts.push(DigestItem {
                            key: u.key.clone(),
                            facts: u.facts.clone(),
                            since: u.at,
                            resolved_at: None,
                        });
                        digests.insert(gk.as_str(), encode(&group).as_slice())?;
                        AlertRecord {
                            key: u.key.clone(),
                            facts: u.facts.clone(),
                            since: u.at,
                            thread_root: group.message_id,
                            next_reminder: None,
                            reminders_sent: 0,
                        }
                    } else {
                        let id =
                            self.message_id("firing", &format!("{seed}\u{1f}{}", outbox::ms(u.at)));
                        let mut entry = self.compose_alert(
                            MailKind::Firing,
                            block(&u.key, &u.facts, u.at),
                            now,
                            &id,
                            None,
                        )?;
                        entry.mark = self.mark_for(&u.key, "firing");
                        outbox::push(&tx, &entry)?;
                        queued += 1;
                        AlertRecord {
                            key: u.key.clone(),
                            facts: u.facts.clone(),
                            since: u.at,
                            thread_root: id,
                            next_reminder: Some(now + chrono_dur(self.settings.repeat_interval)),
                            reminders_sent: 0,
                        }
                    };
                    alerts.insert(ks.as_str(), encode(&record).as_slice())?;
                }
                (Some(rec), AlertStatus::Resolved) => {
                    alerts.remove(ks.as_str())?;
                    let mut in_digest = false;
                    if rec.next_reminder.is_none() {
                        // Still waiting in its digest: the digest will show it resolved.
                        let gk = group_key(&u.key);
                        let mut digests = tx.open_table(DIGESTS)?;
                        let group: Option<DigestGroup> =
                            digests.get(gk.as_str())?.and_then(|g| decode(g.value()));
                        if let Some(mut group) = group {
                            for item in &mut group.alerts {
                                if item.key == u.key && item.resolved_at.is_none() {
                                    item.resolved_at = Some(u.at);
                                    item.facts = u.facts.clone();
                                    in_digest = true;
                                }
                            }
                            if in_digest {
                                digests.insert(gk.as_str(), encode(&group).as_slice())?;
                            }
                        }
                    }
                    if !in_digest {
                        let id = self.message_id(
                            "resolved",
                            &format!("{seed}\u{1f}{}", outbox::ms(rec.since)),
                        );
                        let mut entry = self.compose_alert(
                            MailKind::Resolved,
                            block(&u.key, &u.facts, rec.since),
                            now,
                            &id,
                            Some(&rec.thread_root),
                        )?;
                        entry.mark = self.mark_for(&u.key, "resolved");
                        outbox::push(&tx, &entry)?;
                        queued += 1;
                    }
                }
            }
        }
        self.store.commit(tx)?;
        Ok(queued)
    }

    /// Applies an event; returns how many mails were queued (0 for a repeated id).
    pub fn record_event(&self, e: &Event) -> Result<usize, QueueError> {
        let now = self.clock.now();
        let tx = self.store.begin_write()?;
        {
            let mut events = tx.open_table(EVENTS)?;
            if events.get(e.id.as_str())?.is_some() {
                return Ok(0);
            }
            events.insert(e.id.as_str(), outbox::ms(now))?;
            let alerts = tx.open_table(ALERTS)?;
            let rec: Option<AlertRecord> = alerts
                .get(key_string(&e.key).as_str())?
                .and_then(|g| decode(g.value()));
            let id = self.message_id("event", &e.id);
            let (since, root) = match &rec {
                Some(r) => (r.since, Some(r.thread_root.as_str())),
                None => (e.at, None),
            };
            let entry = self.compose_alert(
                MailKind::Event(e.kind),
                block(&e.key, &e.facts, since),
                now,
                &id,
                root,
            )?;
            outbox::push(&tx, &entry)?;
        }
        self.store.commit(tx)?;
        Ok(1)
    }

    /// Queues the `test-email` message (to check the whole outbox path).
    pub fn queue_test(&self) -> Result<String, QueueError> {
        let now = self.clock.now();
        let c = compose::test_mail(&self.settings, &self.installation, now)
            .map_err(QueueError::Compose)?;
        let id = c.message_id.clone();
        let tx = self.store.begin_write()?;
        outbox::push(&tx, &entry_for(c, now))?;
        self.store.commit(tx)?;
        self.queued(1);
        Ok(id)
    }

    /// Queues reminders that are due and closes digest windows that have ended; returns
    /// how many mails were queued.
    pub fn run_schedules(&self) -> Result<usize, QueueError> {
        let now = self.clock.now();
        // A read first: most ticks have nothing to do and need no write (fsync).
        let (due_alerts, due_groups) = {
            let tx = self.store.begin_read()?;
            let alerts = tx.open_table(ALERTS)?;
            let mut due_alerts = Vec::new();
            for item in alerts.iter()? {
                let (k, v) = item?;
                if let Some(rec) = decode::<AlertRecord>(v.value()) {
                    if rec.next_reminder.is_some_and(|t| t <= now) {
                        due_alerts.push((k.value().to_string(), rec));
                    }
                }
            }
            let digests = tx.open_table(DIGESTS)?;
            let mut due_groups = Vec::new();
            for item in digests.iter()? {
                let (k, v) = item?;
                if let Some(g) = decode::<DigestGroup>(v.value()) {
                    if g.closes <= now {
                        due_groups.push((k.value().to_string(), g));
                    }
                }
            }
            (due_alerts, due_groups)
        };
        if due_alerts.is_empty() && due_groups.is_empty() {
            return Ok(0);
        }
        let interval = chrono_dur(self.settings.repeat_interval);
        let tx = self.store.begin_write()?;
        let mut queued = 0;
        {
            let mut alerts = tx.open_table(ALERTS)?;
            for (ks, _) in &due_alerts {
                // Re-read inside the write: the watchdog may have resolved it meanwhile.
                let current: Option<AlertRecord> =
                    alerts.get(ks.as_str())?.and_then(|g| decode(g.value()));
                let Some(mut rec) = current else { continue };
                let Some(mut next) = rec.next_reminder else {
                    continue;
                };
                if next > now {
                    continue;
                }
                let n = rec.reminders_sent + 1;
                let id = self.message_id(
                    "reminder",
                    &format!(
                        "{}\u{1f}{}\u{1f}{n}",
                        compose::key_seed(&rec.key),
                        outbox::ms(rec.since)
                    ),
                );
                let entry = self.compose_alert(
                    MailKind::Reminder(n),
                    block(&rec.key, &rec.facts, rec.since),
                    now,
                    &id,
                    Some(&rec.thread_root),
                )?;
                outbox::push(&tx, &entry)?;
                queued += 1;
                // Keep the schedule's phase; after a long outage send one reminder, not
                // one per missed interval.
                while next <= now {
                    next += interval;
                }
                rec.next_reminder = Some(next);
                rec.reminders_sent = n;
                alerts.insert(ks.as_str(), encode(&rec).as_slice())?;
            }
            let mut digests = tx.open_table(DIGESTS)?;
            for (gk, _) in &due_groups {
                let current: Option<DigestGroup> =
                    digests.get(gk.as_str())?.and_then(|g| decode(g.value()));
                let Some(group) = current else { continue };
                if group.closes > now {
                    continue;
                }
                digests.remove(gk.as_str())?;
                if group.alerts.is_empty() {
                    continue;
                }
                let entry = self.compose_digest(&group, now)?;
                outbox::push(&tx, &entry)?;
                queued += 1;
                for item in group.alerts.iter().filter(|i| i.resolved_at.is_none()) {
                    let ks = key_string(&item.key);
                    let current: Option<AlertRecord> =
                        alerts.get(ks.as_str())?.and_then(|g| decode(g.value()));
                    if let Some(mut rec) = current {
                        if rec.next_reminder.is_none() {
                            rec.next_reminder = Some(now + interval);
                            alerts.insert(ks.as_str(), encode(&rec).as_slice())?;
                        }
                    }
                }
            }
        }
        self.store.commit(tx)?;
        Ok(queued)
    }

    fn compose_digest(
        &self,
        group: &DigestGroup,
        now: DateTime<Utc>,
    ) -> Result<OutboxEntry, QueueError> {
        let only = &group.alerts[..];
        if let [single] = only {
            if single.resolved_at.is_none() {
                // A digest of one is an ordinary firing mail (with the group's id, which
                // the alert already uses as its thread root).
                return self.compose_alert(
                    MailKind::Firing,
                    block(&single.key, &single.facts, single.since),
                    now,
                    &group.message_id,
                    None,
                );
            }
        }
        let blocks: Vec<AlertBlock<'_>> = group
            .alerts
            .iter()
            .map(|i| AlertBlock {
                key: &i.key,
                facts: &i.facts,
                since: i.since,
                resolved_at: i.resolved_at,
            })
            .collect();
        let mut recipients = Vec::new();
        let mut seen = BTreeSet::new();
        for i in &group.alerts {
            for m in self.settings.recipients(&i.key.rule) {
                if seen.insert(m.email.to_string()) {
                    recipients.push(m.clone());
                }
            }
        }
        compose::digest_mail(&self.settings, &blocks, &recipients, now, &group.message_id)
            .map(|c| entry_for(c, now))
            .map_err(QueueError::Compose)
    }

    fn backoff_after(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.tuning
            .retry_initial
            .saturating_mul(factor)
            .min(self.tuning.retry_max)
    }

    /// True while the server is in backoff after a server-level failure.
    fn in_backoff(&self, now: DateTime<Utc>) -> bool {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.retry_at.is_some_and(|t| t > now)
    }

    /// Sends what is due (everything with `ignore_backoff`, as `outbox-send` does) in one
    /// SMTP session. A server-level failure (refused, TLS, auth, timeout) ends the round
    /// and backs off; a mail the server refuses for now gets its own backoff, one it
    /// refuses for good is set aside, and either way the round goes on.
    pub async fn deliver(&self, ignore_backoff: bool) -> DeliveryReport {
        let _round = self.round.lock().await;
        let mut report = DeliveryReport::default();
        let now = self.clock.now();
        let store = self.store.clone();
        let batch = self.tuning.batch;
        let due = match tokio::task::spawn_blocking(move || {
            outbox::due(&store, now, ignore_backoff, batch)
        })
        .await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the alert outbox");
                return report;
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox reader failed");
                return report;
            }
        };
        if !due.is_empty() {
            self.deliver_entries(due, &mut report).await;
        }
        report.remaining = outbox::stats(&self.store).map(|s| s.messages).unwrap_or(0);
        report
    }

    async fn deliver_entries(&self, due: Vec<(u64, OutboxEntry)>, report: &mut DeliveryReport) {
        let metrics = self.metrics.alert_metrics();
        let mut session = match Session::open(&self.settings).await {
            Ok(s) => s,
            Err(f) => {
                metrics.count(CHANNEL, "failed_attempt", due.len() as u64);
                self.metrics.changed();
                report.failed += due.len();
                self.server_failed(&f, due.len());
                report.error = Some(f);
                return;
            }
        };
        let total = due.len();
        for (i, (seq, entry)) in due.into_iter().enumerate() {
            if let Some(mark) = &entry.mark {
                if let Some(sent) = self.already_sent(mark).await {
                    self.duplicate(seq, &entry, &sent).await;
                    continue;
                }
            }
            match session
                .send(&entry.env_from, &entry.env_to, &entry.raw)
                .await
            {
                Ok(delivery) => self.settle(seq, &entry, delivery, report).await,
                Err(f) => {
                    // The server or the connection failed, not this message: the round
                    // ends. A failure in the middle of this message still gives it its own
                    // backoff, so a mail that makes the server drop the connection cannot
                    // hold the others back; a refused sender is the same for every mail.
                    if !matches!(f, SmtpFailure::SenderRejected { .. }) {
                        let s = Settlement {
                            at: self.clock.now(),
                            accepted: false,
                            retry_to: entry.env_to.clone(),
                            error: Some(f.to_string()),
                            next_attempt: Some(
                                self.clock.now()
                                    + chrono_dur(self.backoff_after(entry.attempts + 1)),
                            ),
                            aside: None,
                        };
                        self.commit_settlement(seq, &entry, s).await;
                    }
                    metrics.count(CHANNEL, "failed_attempt", 1);
                    self.metrics.changed();
                    report.failed += 1;
                    self.server_failed(&f, total - i);
                    report.error = Some(f);
                    return;
                }
            }
            if let Some(f) = session.broken().cloned() {
                // The message is settled, but the connection did not survive the reset.
                self.server_failed(&f, total - i - 1);
                report.error = Some(f);
                return;
            }
        }
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures = 0;
        session.close().await;
    }

    /// Records and reports the server's verdict on one mail. Each mail keeps its own fate:
    /// accepted recipients have it, recipients refused for good (5xx) are set aside with
    /// the server's answer and never retried, and recipients refused for now (4xx) stay in
    /// the outbox with this mail's own backoff. Nothing here stops the round.
    async fn settle(
        &self,
        seq: u64,
        entry: &OutboxEntry,
        d: Delivery,
        report: &mut DeliveryReport,
    ) {
        let metrics = self.metrics.alert_metrics();
        let describe = |list: &[Refusal]| {
            list.iter()
                .map(|r| format!("{}: {}", r.recipient, r.reply))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let refused: Vec<String> = d.refused.iter().map(|r| r.recipient.clone()).collect();
        let deferred: Vec<String> = d.deferred.iter().map(|r| r.recipient.clone()).collect();
        let mut aside = (!refused.is_empty()).then(|| (refused.clone(), describe(&d.refused)));
        let mut accepted = None;
        let (retry_to, retry_error) = match d.verdict {
            Verdict::Accepted(response) => {
                // The server has the mail: record that before anything else.
                self.crash_if(CrashPoint::Accepted);
                accepted = Some(smtp::describe_response(&response));
                (deferred, describe(&d.deferred))
            }
            Verdict::NoRecipient => (deferred, describe(&d.deferred)),
            Verdict::Refused(f) if f.is_permanent() => {
                // The message itself is refused: it is set aside for all its recipients.
                aside = Some((entry.env_to.clone(), f.to_string()));
                (Vec::new(), String::new())
            }
            Verdict::Refused(f) => {
                let again = entry
                    .env_to
                    .iter()
                    .filter(|a| !refused.contains(a))
                    .cloned()
                    .collect();
                (again, f.to_string())
            }
        };
        let now = self.clock.now();
        let attempts = entry.attempts + 1;
        let retry = !retry_to.is_empty();
        let s = Settlement {
            at: now,
            accepted: accepted.is_some(),
            next_attempt: retry.then(|| now + chrono_dur(self.backoff_after(attempts))),
            error: retry.then(|| retry_error.clone()),
            retry_to: retry_to.clone(),
            aside: aside.clone(),
        };
        let committed = self.commit_settlement(seq, entry, s).await;
        if let (Some(mark), true) = (&entry.mark, accepted.is_some()) {
            // Between the server's acceptance and this write another replica may send it
            // again: the at-least-once window (docs/email.md).
            self.write_mark(mark, &entry.message_id).await;
        }
        if let Some(reply) = accepted {
            if !committed {
                tracing::error!(message_id = %entry.message_id,
                    "mail accepted but not recorded: it will be sent again");
            }
            tracing::info!(message_id = %entry.message_id, subject = %entry.subject,
                reply = %reply, "alert mail accepted");
            metrics.count(CHANNEL, "sent", 1);
            report.delivered += 1;
            report.accepted.push((entry.message_id.clone(), reply));
        }
        if let Some((to, reply)) = aside {
            tracing::warn!(message_id = %entry.message_id, subject = %entry.subject,
                recipients = %to.join(", "), reply = %reply,
                "alert mail rejected by the server for good: set aside, not retried");
            metrics.count(CHANNEL, "rejected", 1);
            report.rejected += 1;
            report.error = Some(SmtpFailure::Rejected {
                reply,
                permanent: true,
            });
        }
        if retry {
            tracing::warn!(message_id = %entry.message_id, subject = %entry.subject,
                recipients = %retry_to.join(", "), attempts, error = %retry_error,
                "alert mail not accepted; will retry");
            metrics.count(CHANNEL, "failed_attempt", 1);
            report.failed += 1;
            report.error = Some(SmtpFailure::Rejected {
                reply: retry_error,
                permanent: false,
            });
        }
        self.refresh_gauges();
    }

    /// Another replica already sent this alert mail: it leaves the outbox unsent.
    async fn duplicate(&self, seq: u64, entry: &OutboxEntry, sent: &MarkValue) {
        let s = Settlement {
            at: self.clock.now(),
            accepted: false,
            retry_to: Vec::new(),
            error: None,
            next_attempt: None,
            aside: None,
        };
        if self.commit_settlement(seq, entry, s).await {
            // Later mails about the alert (reminders, RESOLVED) reply to the FIRING that
            // was sent, not to this unsent one.
            if let (Some(mark), Some(root)) = (&entry.mark, &sent.message_id) {
                if let (Some(alert), "firing") = (&mark.alert, mark.kind.as_str()) {
                    let (store, alert, root) = (self.store.clone(), alert.clone(), root.clone());
                    match tokio::task::spawn_blocking(move || {
                        outbox::rethread(&store, &alert, &root)
                    })
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot thread the alert under the sent FIRING mail")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot thread the alert under the sent FIRING mail")
                        }
                    }
                }
            }
            tracing::info!(message_id = %entry.message_id, subject = %entry.subject,
                member = %sent.member, sent_at = %sent.at.to_rfc3339(),
                "alert mail not sent: replica {} already sent this alert's {} mail", sent.member, sent.kind);
            self.metrics.alert_metrics().count(CHANNEL, "duplicate", 1);
            self.metrics.changed();
            self.refresh_gauges();
        }
    }

    /// Commits a settlement; false (logged) when the store refused it.
    async fn commit_settlement(&self, seq: u64, entry: &OutboxEntry, s: Settlement) -> bool {
        let store = self.store.clone();
        let entry = entry.clone();
        let keep = self.tuning.keep_rejected;
        let id = entry.message_id.clone();
        match tokio::task::spawn_blocking(move || outbox::settle(&store, seq, &entry, &s, keep))
            .await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, message_id = %id, "cannot record the delivery attempt");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox writer failed");
                false
            }
        }
    }

    fn server_failed(&self, f: &SmtpFailure, waiting: usize) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.failures += 1;
        let wait = self.backoff_after(b.failures);
        b.retry_at = Some(self.clock.now() + chrono_dur(wait));
        tracing::warn!(error = %f, kind = f.kind(), waiting, retry_in = %humantime::format_duration(wait),
            "cannot deliver alert mail; it stays in the outbox");
    }

    fn prune_if_due(&self, now: DateTime<Utc>) {
        let mut last = self.last_prune.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now - t < chrono::Duration::hours(1)) {
            return;
        }
        *last = Some(now);
        match outbox::prune(&self.store, now - chrono_dur(self.tuning.remember)) {
            // Set-aside mails may have expired: the gauge follows.
            Ok(()) => self.refresh_gauges(),
            Err(e) => tracing::warn!(error = %e, "cannot prune the email tables"),
        }
    }

    /// The background task: reminders, digests and delivery, until cancelled. A round in
    /// progress at cancellation gets a few seconds to finish so an accepted mail is
    /// recorded rather than sent again after the restart.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            // Nothing can be read or written while the state store is being reopened.
            if !self.store.writable() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(self.tuning.tick) => continue,
                }
            }
            let this = self.clone();
            let scheduled = tokio::task::spawn_blocking(move || {
                let now = this.clock.now();
                this.release_held();
                this.prune_if_due(now);
                this.run_schedules()
            })
            .await;
            match scheduled {
                Ok(Ok(n)) => self.queued(n),
                Ok(Err(e)) => self.queue_failed("reminder/digest", &e),
                Err(e) => tracing::error!(error = %e, "email scheduler failed"),
            }
            if !self.in_backoff(self.clock.now()) {
                let round = self.deliver(false);
                tokio::pin!(round);
                tokio::select! {
                    _ = &mut round => {}
                    _ = cancel.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(5), round).await;
                        return;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.tuning.tick) => {}
            }
        }
    }
}

impl Drop for EmailNotifier {
    fn drop(&mut self) {
        let held = self.held.get_mut().map_or(0, |h| h.len());
        if held > 0 {
            tracing::error!(
                held,
                "alert mails held in memory are lost: the state store did not take writes again before shutdown"
            );
        }
    }
}

/// Both calls commit to the state database before returning (one fsync): they block the
/// calling thread for that long, which is what makes "queued" durable. Async callers
/// that cannot afford a few milliseconds may call them from `spawn_blocking`. While the
/// store cannot be written they return at once and the notification is held in memory
/// (at most [`HOLD_LIMIT`]) until the sender's task finds the store writable again.
impl Notify for EmailNotifier {
    fn alert(&self, update: AlertUpdate) {
        self.submit(Held::Alert(update));
    }

    fn event(&self, event: Event) {
        self.submit(Held::Event(event));
    }
}

impl EmailNotifier {
    fn record(&self, item: &Held) -> Result<usize, QueueError> {
        match item {
            Held::Alert(u) => self.record_alert(u),
            Held::Event(e) => self.record_event(e),
        }
    }

    /// Records a notification, or holds it in memory while the store cannot be written.
    /// Held ones go first, so one alert's changes are recorded in the order they happened.
    fn submit(&self, item: Held) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.push_back(item);
        let Some(e) = self.release(&mut held) else {
            return;
        };
        // The new notification is still held (it is last).
        let metrics = self.metrics.alert_metrics();
        if held.len() > HOLD_LIMIT {
            let what = held.pop_back().map_or("alert", |h| h.what());
            metrics.count(CHANNEL, "dropped", 1);
            tracing::error!(error = %e, limit = HOLD_LIMIT,
                "cannot queue the {what} mail and the in-memory hold is full: dropped");
        } else {
            metrics.count(CHANNEL, "held", 1);
            tracing::warn!(error = %e, held = held.len(),
                "cannot queue the alert mail now: held in memory until the state store takes writes");
        }
        self.metrics.changed();
    }

    /// Records held notifications, oldest first, until the store refuses again.
    fn release_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let before = held.len();
        if before == 0 {
            return;
        }
        self.release(&mut held);
        if held.len() < before {
            tracing::info!(
                recorded = before - held.len(),
                still_held = held.len(),
                "alert mails held in memory while the state store was down are queued"
            );
        }
    }

    /// Records from the front; stops at the first one the store cannot take because it
    /// is down (returning why). Any other failure is counted and that one is skipped, so
    /// it cannot block the rest.
    fn release(&self, held: &mut VecDeque<Held>) -> Option<QueueError> {
        let mut queued = 0;
        let mut stopped = None;
        while let Some(item) = held.front() {
            match self.record(item) {
                Ok(n) => queued += n,
                Err(e @ QueueError::Store(_)) if self.store_down() => {
                    stopped = Some(e);
                    break;
                }
                Err(e) => self.queue_failed(item.what(), &e),
            }
            held.pop_front();
        }
        self.queued(queued);
        stopped
    }

    /// True when the state store cannot be written. A failure inside a transaction may
    /// not have been recognised as an I/O error yet; starting one tells (redb then
    /// answers "previous I/O error", which closes the store for reopening).
    fn store_down(&self) -> bool {
        !self.store.writable() || (self.store.begin_write().is_err() && !self.store.writable())
    }
}

/// Sends the `test-email` message directly (not through the outbox) and returns the
/// server's answer.
pub async fn send_test(
    settings: &EmailSettings,
    now: DateTime<Utc>,
) -> Result<String, SmtpFailure> {
    // Sent once and never retried: a fresh random id keeps its Message-ID unique.
    let once = format!("{:032x}", rand::random::<u128>());
    let mail = compose::test_mail(settings, &once, now)
        .map_err(|detail| SmtpFailure::BadMessage { detail })?;
    let mut session = Session::open(settings).await?;
    let delivery = session.send(&mail.env_from, &mail.env_to, &mail.raw).await;
    session.close().await;
    delivery
        .and_then(Delivery::into_result)
        .map(|r| smtp::describe_response(&r))
}
