//! Pure renewal decisions: when to renew, when to wait for the server's own
//! auto-renewal, and whether the budget allows a payment. No I/O, no clock: every input
//! is passed in, so each guard is unit-tested on its own.
//!
//! The server-side auto-renewal (docs/providers.md) fires once, at the first 30-s check after
//! `expires − lead` (`lead = min(24 h, interval/2)`), and hands back — without paying —
//! any unpaid 1-interval Lightning invoice that is still valid (10 minutes). So while it
//! may still fire, vpswatch mints nothing; after it, vpswatch renews only once a poll
//! taken after the server's attempt shows `expires` unchanged.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The server checks subscriptions every 30 s and pays within ~10 s; after its
/// firing point vpswatch waits this long before it trusts that nothing happened.
pub const SERVER_SETTLE: Duration = Duration::from_secs(120);
/// Longest lead of the server-side auto-renewal.
pub const MAX_LEAD: Duration = Duration::from_secs(24 * 3600);

/// What the planner sees for one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub now: DateTime<Utc>,
    /// End of the paid period; `None` = never paid (not vpswatch's business).
    pub expires: Option<DateTime<Utc>>,
    /// The rule's `within`.
    pub within: Duration,
    /// The server's auto-renewal flag as last polled; `None` = unknown (assume on).
    pub auto_renewal: Option<bool>,
    /// Enabled saved payment methods (the server's auto-renewal needs one); `None` =
    /// unknown (assume there is one).
    pub saved_methods: Option<u32>,
    /// Renewal period in seconds (one interval); `None` = unknown (assume a long one).
    pub period_seconds: Option<f64>,
    /// When the data was polled (the account's last successful poll).
    pub observed_at: DateTime<Utc>,
    /// `expires` as it was when vpswatch last paid a renewal for this VM: a poll still
    /// showing it is stale, not a reason to pay again.
    pub last_paid_from: Option<DateTime<Utc>>,
    /// When vpswatch last paid a renewal for this VM: at most one per period.
    pub last_paid_at: Option<DateTime<Utc>>,
    /// Tries made for the current `expires` (each one invoice request at most).
    pub attempts: u32,
    pub max_attempts: u32,
    /// Not before this may the next try start (backoff after a failure, or the
    /// re-check of a blocked renewal).
    pub next_try_at: Option<DateTime<Utc>>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Outside the rule's window (or nothing to renew).
    Idle,
    /// Inside the window, but not now; the reason says why.
    Wait(String),
    /// Renew now (quote, budget, then invoice).
    Renew,
    /// Tries for this expiry are used up: a human must act (or clear the journal).
    GiveUp,
}

/// `min(24 h, interval/2)`; 24 h when the interval is unknown.
pub fn server_lead(period_seconds: Option<f64>) -> Duration {
    match period_seconds {
        Some(p) if p.is_finite() && p > 0.0 => Duration::from_secs_f64(p / 2.0).min(MAX_LEAD),
        _ => MAX_LEAD,
    }
}

fn dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether the server's auto-renewal may act for this VM.
pub fn server_may_renew(auto_renewal: Option<bool>, saved_methods: Option<u32>) -> bool {
    auto_renewal != Some(false) && saved_methods != Some(0)
}

pub fn plan(i: &PlanInput) -> Plan {
    let Some(expires) = i.expires else {
        return Plan::Idle;
    };
    if expires - i.now > dur(i.within) {
        return Plan::Idle;
    }
    if i.last_paid_from == Some(expires) {
        return Plan::Wait("paid; waiting for a poll that shows the new expiry".into());
    }
    if let Some(paid) = i.last_paid_at {
        let period = i
            .period_seconds
            .filter(|p| p.is_finite() && *p > 0.0)
            .map_or(MAX_LEAD, Duration::from_secs_f64);
        if i.now < paid + dur(period) {
            return Plan::Wait(format!(
                "renewed at {}; at most one renewal per period",
                paid.to_rfc3339()
            ));
        }
    }
    if i.attempts >= i.max_attempts {
        return Plan::GiveUp;
    }
    if server_may_renew(i.auto_renewal, i.saved_methods) {
        let fires_at = expires - dur(server_lead(i.period_seconds));
        let settled = fires_at + dur(SERVER_SETTLE);
        if i.now < settled {
            return Plan::Wait(format!(
                "server-side auto-renewal fires at {}; vpswatch mints no invoice before {}",
                fires_at.to_rfc3339(),
                settled.to_rfc3339()
            ));
        }
        if i.observed_at < settled {
            return Plan::Wait("waiting for a poll taken after the server's auto-renewal".into());
        }
    }
    if let Some(t) = i.next_try_at.filter(|t| i.now < *t) {
        return Plan::Wait(format!("next try at {}", t.to_rfc3339()));
    }
    Plan::Renew
}

/// The wait after the `failed`-th failed try: `base`, doubled per further failure,
/// at most `max`.
pub fn backoff(failed: u32, base: Duration, max: Duration) -> Duration {
    let doublings = failed.saturating_sub(1).min(32);
    base.checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max)
}

/// Millisatoshis to whole satoshis, rounded up (budgets never under-count).
pub fn msat_to_sats(msat: u64) -> u64 {
    msat.div_ceil(1000)
}

/// Budget check for a payment of `amount_sats`, with `spent_month_sats` already paid
/// (or reserved) this calendar month on the account.
pub fn check_budget(
    amount_sats: u64,
    spent_month_sats: u64,
    max_per_renewal_sats: u64,
    max_per_month_sats: u64,
) -> Result<(), String> {
    if amount_sats > max_per_renewal_sats {
        return Err(format!(
            "renewal costs {amount_sats} sats, more than max_per_renewal_sats = {max_per_renewal_sats}"
        ));
    }
    let total = spent_month_sats.saturating_add(amount_sats);
    if total > max_per_month_sats {
        return Err(format!(
            "renewal costs {amount_sats} sats; with {spent_month_sats} sats already paid this month \
             that exceeds max_per_month_sats = {max_per_month_sats}"
        ));
    }
    Ok(())
}

/// Whether adding `time_seconds` keeps the VM within the server's prepay limit
/// (`max(expires, now) + time ≤ now + max_prepay_days`).
pub fn fits_prepay(
    expires: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    time_seconds: u64,
    max_prepay_days: Option<u32>,
) -> bool {
    let Some(days) = max_prepay_days.filter(|d| *d > 0) else {
        return true;
    };
    let base = expires.map_or(now, |e| e.max(now));
    let until = base + chrono::Duration::seconds(time_seconds.min(i64::MAX as u64) as i64);
    until <= now + chrono::Duration::days(i64::from(days))
}

/// The budget month of `t` ("2026-11", UTC).
pub fn month_key(t: DateTime<Utc>) -> String {
    t.format("%Y-%m").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
            .single()
            .expect("t")
            + chrono::Duration::hours(h)
    }

    /// Daily plan (lead 12 h), expiring at hour 48, rule window 30 h, now = hour 20.
    fn input() -> PlanInput {
        PlanInput {
            now: t(20),
            expires: Some(t(48)),
            within: Duration::from_secs(30 * 3600),
            auto_renewal: Some(false),
            saved_methods: Some(1),
            period_seconds: Some(86_400.0),
            observed_at: t(20),
            last_paid_from: None,
            last_paid_at: None,
            attempts: 0,
            max_attempts: 3,
            next_try_at: None,
        }
    }

    #[test]
    fn outside_the_window_is_idle() {
        let mut i = input();
        i.now = t(17);
        assert_eq!(plan(&i), Plan::Idle);
        i.expires = None;
        assert_eq!(plan(&i), Plan::Idle);
    }

    #[test]
    fn inside_the_window_without_server_renewal_renews() {
        assert_eq!(plan(&input()), Plan::Renew);
        let mut i = input();
        i.auto_renewal = Some(true);
        i.saved_methods = Some(0);
        assert_eq!(
            plan(&i),
            Plan::Renew,
            "no saved method: the server cannot pay"
        );
    }

    #[test]
    fn waits_for_the_server_until_its_window_has_passed_and_been_observed() {
        let mut i = input();
        i.auto_renewal = Some(true);
        // The server fires at hour 36 (48 − 12).
        assert!(matches!(plan(&i), Plan::Wait(_)));
        i.now = t(36);
        i.observed_at = t(36);
        assert!(
            matches!(plan(&i), Plan::Wait(_)),
            "no invoice around the firing point"
        );
        i.now = t(37);
        assert!(
            matches!(plan(&i), Plan::Wait(_)),
            "the data predates the server's attempt"
        );
        i.observed_at = t(37);
        assert_eq!(plan(&i), Plan::Renew);
        // Unknown flag counts as on.
        i.auto_renewal = None;
        i.observed_at = t(36);
        assert!(matches!(plan(&i), Plan::Wait(_)));
    }

    #[test]
    fn monthly_plan_lead_is_24h_and_daily_is_12h() {
        assert_eq!(server_lead(Some(30.0 * 86_400.0)), MAX_LEAD);
        assert_eq!(server_lead(Some(86_400.0)), Duration::from_secs(12 * 3600));
        assert_eq!(server_lead(None), MAX_LEAD);
        assert_eq!(server_lead(Some(f64::NAN)), MAX_LEAD);
    }

    #[test]
    fn a_stale_expiry_after_paying_waits() {
        let mut i = input();
        i.last_paid_from = i.expires;
        assert!(matches!(plan(&i), Plan::Wait(_)));
    }

    #[test]
    fn at_most_one_renewal_per_period() {
        let mut i = input();
        i.last_paid_at = Some(t(0));
        assert!(
            matches!(plan(&i), Plan::Wait(_)),
            "paid 20 h ago, daily plan"
        );
        i.last_paid_at = Some(t(-5));
        assert_eq!(plan(&i), Plan::Renew);
    }

    #[test]
    fn attempts_are_capped() {
        let mut i = input();
        i.attempts = 3;
        assert_eq!(plan(&i), Plan::GiveUp);
    }

    #[test]
    fn tries_wait_for_their_backoff() {
        let mut i = input();
        i.attempts = 1;
        i.next_try_at = Some(t(21));
        assert!(matches!(plan(&i), Plan::Wait(_)));
        i.now = t(21);
        i.observed_at = t(21);
        assert_eq!(plan(&i), Plan::Renew);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let m = Duration::from_secs(60);
        let cap = Duration::from_secs(3600);
        assert_eq!(backoff(1, m, cap), m);
        assert_eq!(backoff(2, m, cap), 2 * m);
        assert_eq!(backoff(3, m, cap), 4 * m);
        assert_eq!(backoff(7, m, cap), cap);
        assert_eq!(backoff(u32::MAX, m, cap), cap);
        assert_eq!(backoff(0, m, cap), m);
    }

    #[test]
    fn budget() {
        assert!(check_budget(500, 0, 1000, 5000).is_ok());
        assert!(check_budget(1001, 0, 1000, 5000).is_err());
        assert!(check_budget(500, 4600, 1000, 5000).is_err());
        assert!(check_budget(500, 4500, 1000, 5000).is_ok());
        assert_eq!(msat_to_sats(1), 1);
        assert_eq!(msat_to_sats(1000), 1);
        assert_eq!(msat_to_sats(1001), 2);
    }

    #[test]
    fn prepay() {
        let now = t(0);
        let exp = Some(t(24 * 300));
        assert!(fits_prepay(exp, now, 60 * 86_400, Some(365)));
        assert!(!fits_prepay(exp, now, 70 * 86_400, Some(365)));
        assert!(fits_prepay(exp, now, 70 * 86_400, None));
        assert!(fits_prepay(None, now, 365 * 86_400, Some(365)));
    }

    #[test]
    fn month_keys() {
        assert_eq!(month_key(t(0)), "2026-11");
    }
}
