//! Poll scheduling: one task per account, on its interval, with a poll-wide timeout and
//! a gentle backoff while the account keeps failing. Each attempt publishes a new
//! snapshot; a failure keeps the previous data.
//!
//! Per-request pacing is not done here but in the provider's shared
//! [`RateBudget`](vpswatch_providers::budget::RateBudget), because the upstream limit is per
//! client IP, across accounts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use vpswatch_model::clock::SharedClock;
use vpswatch_model::snapshot::{AccountSnapshot, SnapshotStore};
use vpswatch_providers::SharedProvider;

/// Polls one account until cancelled.
#[derive(Clone)]
pub struct Poller {
    pub idx: usize,
    pub provider: SharedProvider,
    pub store: Arc<SnapshotStore>,
    pub clock: SharedClock,
    pub interval: Duration,
    pub timeout: Duration,
    /// Delay before the first poll, to spread accounts out.
    pub initial_delay: Duration,
}

/// While failing, wait up to this many intervals between attempts.
const MAX_BACKOFF_FACTOR: u32 = 4;

impl Poller {
    pub async fn run(self, cancel: CancellationToken) {
        if !self.initial_delay.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.initial_delay) => {}
            }
        }
        loop {
            let started = Instant::now();
            let snapshot = tokio::select! {
                _ = cancel.cancelled() => return,
                s = self.poll_once() => s,
            };
            let failures = snapshot.consecutive_failures;
            self.store.publish(self.idx, snapshot);
            let factor = if failures == 0 {
                1
            } else {
                2u32.saturating_pow(failures - 1).min(MAX_BACKOFF_FACTOR)
            };
            let wait = (self.interval * factor).saturating_sub(started.elapsed());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One poll attempt, turned into the account's next snapshot.
    pub async fn poll_once(&self) -> AccountSnapshot {
        let prev = self
            .store
            .get(self.idx)
            .map(|s| (*s).clone())
            .unwrap_or_else(|| {
                AccountSnapshot::empty(self.provider.kind(), self.provider.account())
            });
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.provider.poll()).await;
        let mut next = prev;
        next.polls += 1;
        next.last_attempt = Some(self.clock.now());
        next.last_poll_duration = Some(started.elapsed());
        // Read after the poll: it may have just learned that the key is read-only.
        next.actions_enabled = Some(self.provider.actions_enabled());
        let account = self.provider.account().to_string();
        let provider = self.provider.kind();
        match result {
            Ok(Ok(data)) => {
                for w in &data.warnings {
                    tracing::warn!(%provider, %account, warning = %w, "partial poll failure");
                }
                tracing::debug!(%provider, %account, vms = data.vms.len(), elapsed = ?started.elapsed(), "poll ok");
                next.last_success = next.last_attempt;
                next.last_error = None;
                next.consecutive_failures = 0;
                next.data = Some(Arc::new(data));
            }
            Ok(Err(e)) => {
                tracing::warn!(%provider, %account, error = %e, "poll failed; keeping last good data");
                next.last_error = Some(e.to_string());
                next.consecutive_failures += 1;
            }
            Err(_) => {
                let msg = format!("poll did not finish within {:?}", self.timeout);
                tracing::warn!(%provider, %account, error = %msg, "poll failed; keeping last good data");
                next.last_error = Some(msg);
                next.consecutive_failures += 1;
            }
        }
        next
    }
}
