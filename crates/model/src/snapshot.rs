//! Per-account snapshots: immutable, replaced atomically after each poll.
//!
//! Readers (metrics encoder, watchdog, web) take an `Arc` and never block a poller; a
//! poller never blocks a reader. A failed poll keeps the last good data and records the
//! failure beside it, so consumers can always tell how old what they see is.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::account::{AccountData, ProviderKind};

/// What vpswatch knows about one account right now.
#[derive(Debug, Clone)]
pub struct AccountSnapshot {
    pub provider: ProviderKind,
    pub account: String,
    /// Completed poll attempts (success or failure).
    pub polls: u64,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// Why the latest attempt failed; `None` after a success.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub last_poll_duration: Option<Duration>,
    /// The newest data from a successful poll (kept while later polls fail).
    pub data: Option<Arc<AccountData>>,
    /// `Provider::actions_enabled` (the providers crate) as of
    /// the latest attempt; `None` before the first one.
    pub actions_enabled: Option<bool>,
}

impl AccountSnapshot {
    pub fn empty(provider: ProviderKind, account: &str) -> Self {
        Self {
            provider,
            account: account.to_string(),
            polls: 0,
            last_attempt: None,
            last_success: None,
            last_error: None,
            consecutive_failures: 0,
            last_poll_duration: None,
            data: None,
            actions_enabled: None,
        }
    }

    /// Whether the latest attempt succeeded.
    pub fn is_up(&self) -> bool {
        self.polls > 0 && self.last_error.is_none()
    }
}

/// All accounts' current snapshots plus a change counter to wait on.
pub struct SnapshotStore {
    slots: Vec<ArcSwap<AccountSnapshot>>,
    /// Whether this process owns each account (always, unless replicas share them):
    /// only owned accounts are listed by [`SnapshotStore::all`].
    owned: Vec<std::sync::atomic::AtomicBool>,
    generation: watch::Sender<u64>,
}

impl SnapshotStore {
    pub fn new(accounts: impl IntoIterator<Item = (ProviderKind, String)>) -> Arc<Self> {
        let slots: Vec<_> = accounts
            .into_iter()
            .map(|(p, a)| ArcSwap::from_pointee(AccountSnapshot::empty(p, &a)))
            .collect();
        Arc::new(Self {
            owned: slots
                .iter()
                .map(|_| std::sync::atomic::AtomicBool::new(true))
                .collect(),
            slots,
            generation: watch::channel(0).0,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, idx: usize) -> Option<Arc<AccountSnapshot>> {
        self.slots.get(idx).map(|s| s.load_full())
    }

    /// Replaces one account's snapshot and wakes everyone waiting for changes.
    pub fn publish(&self, idx: usize, snapshot: AccountSnapshot) {
        if let Some(slot) = self.slots.get(idx) {
            slot.store(Arc::new(snapshot));
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// The snapshots of the accounts this process owns.
    pub fn all(&self) -> Vec<Arc<AccountSnapshot>> {
        self.slots
            .iter()
            .zip(&self.owned)
            .filter(|(_, o)| o.load(std::sync::atomic::Ordering::Acquire))
            .map(|(s, _)| s.load_full())
            .collect()
    }

    /// Marks an account owned or not. An account given up forgets its data, so nothing
    /// (metrics, status, watchdog) reads it from here, and a later owner starts afresh.
    pub fn set_owned(&self, idx: usize, owned: bool) {
        let (Some(flag), Some(slot)) = (self.owned.get(idx), self.slots.get(idx)) else {
            return;
        };
        if flag.swap(owned, std::sync::atomic::Ordering::AcqRel) != owned {
            if !owned {
                let old = slot.load_full();
                slot.store(Arc::new(AccountSnapshot::empty(old.provider, &old.account)));
            }
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// A receiver that changes whenever any snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Accounts whose first poll has not completed yet.
    pub fn not_yet_polled(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|s| s.polls == 0)
            .map(|s| format!("{}/{}", s.provider, s.account))
            .collect()
    }
}
