//! Request budget shared by every account that talks to the same upstream host.
//!
//! LNVPS limits each client IP to 600 requests per fixed 60 s window, across all paths
//! and all keys, so the budget must be per (provider, host), not per account. We run a
//! GCRA limiter a little under the limit (its burst plus steady rate can never exceed the
//! provider's window count) and, when a 429 arrives anyway, pause every user of the budget
//! until the server's `retry-after` has passed instead of letting each account find out
//! on its own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// A shared, pausable rate limiter.
pub struct RateBudget {
    limiter: DefaultDirectRateLimiter,
    paused_until: Mutex<Option<Instant>>,
    per_minute: u32,
}

impl RateBudget {
    /// A budget that never issues more than `per_minute` requests in any 60 s window.
    pub fn per_minute(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        // Burst of up to 1/60th of the limit (at least 1); the steady rate is reduced by
        // the burst so burst + rate stays within one window's allowance.
        let burst = (per_minute / 60).clamp(1, 10);
        let steady = per_minute.saturating_sub(burst).max(1);
        let period = Duration::from_secs_f64(60.0 / f64::from(steady));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::direct(quota),
            paused_until: Mutex::new(None),
            per_minute,
        }
    }

    pub fn per_minute_limit(&self) -> u32 {
        self.per_minute
    }

    /// Waits until one more request may be sent.
    pub async fn acquire(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
    }

    /// Holds back every user of this budget for `d` (the server said 429).
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut g = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }
}

/// Hands out one budget per upstream key (e.g. `lnvps@api.lnvps.net:443`).
#[derive(Default)]
pub struct BudgetRegistry {
    budgets: Mutex<HashMap<String, Arc<RateBudget>>>,
}

impl BudgetRegistry {
    pub fn get(&self, key: &str, per_minute: u32) -> Arc<RateBudget> {
        let mut g = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(key.to_string())
            .or_insert_with(|| Arc::new(RateBudget::per_minute(per_minute)))
            .clone()
    }
}
