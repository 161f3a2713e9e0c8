//! Notifications: how the watchdog tells a person what it saw and did.
//!
//! The watchdog decides *what* is worth telling (after its hysteresis, so flapping never
//! reaches here); a [`Notify`] implementation decides *how*: the alert lifecycle
//! (firing → repeat every interval → resolved), threading, the on-disk outbox and the
//! channel (email). Both calls are idempotent so the watchdog may repeat them after a
//! restart without a duplicate message, and both return only after the notification is
//! durably queued (the watchdog commits its own state afterwards, so a crash in between
//! repeats the call rather than losing the message).

pub mod email;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::metrics::SelfMetrics;
use crate::store::StateStore;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::SharedClock;

/// What one alert is about: a rule on one VM, or on a whole account (`vm` empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    pub rule: String,
    pub provider: ProviderKind,
    pub account: String,
    /// The VM id; empty for account-level rules (provider unreachable, API key expiring).
    pub vm: String,
}

/// The facts a message shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The VM's name (its id when it has none); empty for account-level alerts.
    pub vm_name: String,
    /// One line, e.g. "TCP probe of 10.1.0.3:22 failing for 3m 10s".
    pub summary: String,
    /// Label → value, in display order: state, expiry, last values, …
    pub details: Vec<(String, String)>,
    /// What vpswatch did and will do next, e.g. "rebooted at …; next: stop+start at …".
    pub next_step: String,
    /// The journal entry this notification is about, when there is one.
    pub journal_id: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// A rule's alert changed state (or is re-announced after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertUpdate {
    pub key: AlertKey,
    pub status: AlertStatus,
    pub facts: Facts,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A provider accepted an action (reboot, start, stop+start).
    ActionTaken,
    /// A provider call failed.
    ActionFailed,
    /// The action did not bring the VM back within the rule's patience.
    ActionNotRecovered,
    /// Cap reached or ladder exhausted: vpswatch stops acting on this VM; a human must.
    GaveUp,
    RenewalPaid,
    RenewalFailed,
    /// A renewal was not paid because the budget, the prepay limit or a mismatching
    /// invoice forbade it.
    RenewalBlocked,
    /// A renewal invoice was minted for a human to pay (renewal mode `email`).
    InvoiceSent,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ActionTaken => "action_taken",
            EventKind::ActionFailed => "action_failed",
            EventKind::ActionNotRecovered => "action_not_recovered",
            EventKind::GaveUp => "gave_up",
            EventKind::RenewalPaid => "renewal_paid",
            EventKind::RenewalFailed => "renewal_failed",
            EventKind::RenewalBlocked => "renewal_blocked",
            EventKind::InvoiceSent => "invoice_sent",
        }
    }
}

/// A one-off notification about something vpswatch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable and unique (e.g. "action-42-failed"): the same id is delivered at most once.
    pub id: String,
    pub kind: EventKind,
    /// The alert this event belongs to (mails about it thread with the alert's mails).
    pub key: AlertKey,
    pub facts: Facts,
    pub at: DateTime<Utc>,
}

/// A notification channel with its own lifecycle and durable queue.
pub trait Notify: Send + Sync {
    /// The alert is firing or resolved. Repeats of the same status are ignored; repeat
    /// reminders while firing are the implementation's job.
    fn alert(&self, update: AlertUpdate);
    /// A one-off event; a repeated `id` is ignored.
    fn event(&self, event: Event);
}

/// The channel used when no email is configured: every notification goes to the log.
#[derive(Debug, Default)]
pub struct LogNotifier;

impl Notify for LogNotifier {
    fn alert(&self, u: AlertUpdate) {
        tracing::warn!(
            rule = %u.key.rule,
            provider = %u.key.provider,
            account = %u.key.account,
            vm = %u.key.vm,
            status = ?u.status,
            summary = %u.facts.summary,
            next = %u.facts.next_step,
            "alert (no email configured)"
        );
    }

    fn event(&self, e: Event) {
        tracing::warn!(
            event = e.kind.as_str(),
            id = %e.id,
            rule = %e.key.rule,
            provider = %e.key.provider,
            account = %e.key.account,
            vm = %e.key.vm,
            summary = %e.facts.summary,
            "watchdog event (no email configured)"
        );
    }
}

/// The channel the daemon uses: email when `[email]` is configured, else the log.
pub struct Notifier {
    /// What the watchdog calls.
    pub notify: Arc<dyn Notify>,
    /// The email channel, when configured; its [`email::EmailNotifier::run`] task must be
    /// running for mail to leave the outbox.
    pub email: Option<Arc<email::EmailNotifier>>,
}

/// Why the notification channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("email alerts need the state store (state_dir)")]
    NoStateStore,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Builds the channel for the `[email]` section (the log without one) on `store` (needed
/// when email is configured).
pub fn build_notifier(
    email: Option<&email::settings::EmailSettings>,
    store: Option<&StateStore>,
    clock: SharedClock,
    metrics: &Arc<SelfMetrics>,
) -> Result<Notifier, NotifierError> {
    let Some(settings) = email else {
        return Ok(Notifier {
            notify: Arc::new(LogNotifier),
            email: None,
        });
    };
    let Some(store) = store else {
        return Err(NotifierError::NoStateStore);
    };
    let email =
        email::EmailNotifier::open(settings.clone(), store.clone(), clock, metrics.clone())?;
    Ok(Notifier {
        notify: email.clone(),
        email: Some(email),
    })
}
