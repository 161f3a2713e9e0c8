//! Wallet runway: how long a prepaid balance covers an account's upcoming renewals.
//!
//! Provider-neutral arithmetic, kept pure (no clock, no I/O) so the exact values can be
//! unit-tested. The definition (also in docs/providers.md):
//!
//! walk every renewal of the account in due order — each renewing VM at the end of its
//! paid period, then every billing period after that — subtracting each price from the
//! balance; the runway is the time of the first renewal the balance can no longer pay,
//! minus now, clamped at 0. If the balance pays every renewal due before now + horizon,
//! the runway is the horizon (read: "at least that long"). Without any renewal there is
//! no runway (`None`: the metric is absent rather than a misleading number).
//!
//! Money is summed in integer micro-units so 0.1 + 0.2 style rounding can never decide
//! whether a renewal is paid.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use chrono::{DateTime, Months, Utc};

/// The longest runway computed: five years of 365 days. Beyond that the number is not
/// useful for alerting and walking further only costs time.
pub const DEFAULT_HORIZON_SECONDS: i64 = 5 * 365 * 86_400;

/// Length of one billing period: calendar months (a "monthly" plan renews on the same
/// day of the next month, clamped to the month's end) or a fixed number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingPeriod {
    Months(u32),
    Seconds(u64),
}

impl BillingPeriod {
    /// The end of the period that starts at `t`.
    pub fn after(self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            BillingPeriod::Months(n) => t.checked_add_months(Months::new(n)),
            BillingPeriod::Seconds(s) => {
                let s = i64::try_from(s).ok()?;
                t.checked_add_signed(chrono::Duration::try_seconds(s)?)
            }
        }
    }

    /// Length in seconds of the period that starts at `t`.
    pub fn seconds_from(self, t: DateTime<Utc>) -> Option<f64> {
        let end = self.after(t)?;
        Some((end - t).num_milliseconds() as f64 / 1000.0)
    }

    /// Parses `"1 month"`, `"12 months"`, `"1 year"` (calendar) or any humantime
    /// duration (`"30d"`, `"720h"`). Periods shorter than one hour are refused: they are
    /// certainly a typo and would make the runway walk needlessly long.
    pub fn parse(text: &str) -> Result<BillingPeriod, BillingPeriodError> {
        let t = text.trim();
        let calendar = t
            .find(|c: char| !c.is_ascii_digit())
            .map(|i| (t[..i].trim(), t[i..].trim()));
        if let Some((n, unit)) = calendar {
            let months_per = match unit {
                "month" | "months" => Some(1u32),
                "year" | "years" => Some(12u32),
                _ => None,
            };
            if let Some(per) = months_per {
                let n: u32 = n
                    .parse()
                    .map_err(|_| BillingPeriodError::BadCount(text.to_string()))?;
                let months = n
                    .checked_mul(per)
                    .filter(|m| *m > 0)
                    .ok_or_else(|| BillingPeriodError::Zero(text.to_string()))?;
                return Ok(BillingPeriod::Months(months));
            }
        }
        let d = humantime::parse_duration(t).map_err(|e| BillingPeriodError::Unreadable {
            text: text.to_string(),
            reason: e,
        })?;
        if d.as_secs() < 3600 {
            return Err(BillingPeriodError::TooShort(text.to_string()));
        }
        Ok(BillingPeriod::Seconds(d.as_secs()))
    }
}

/// Why a billing period's text was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BillingPeriodError {
    #[error("{0:?}: expected e.g. \"1 month\" or \"30d\"")]
    BadCount(String),
    #[error("{0:?} must be at least one month")]
    Zero(String),
    #[error("{text:?} is neither \"N month(s)\"/\"N year(s)\" nor a duration: {reason}")]
    Unreadable {
        text: String,
        reason: humantime::DurationError,
    },
    #[error("{0:?} is shorter than one hour")]
    TooShort(String),
}

impl fmt::Display for BillingPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BillingPeriod::Months(12) => f.write_str("1 year"),
            BillingPeriod::Months(1) => f.write_str("1 month"),
            BillingPeriod::Months(n) => write!(f, "{n} months"),
            BillingPeriod::Seconds(s) => f.write_str(
                &humantime::format_duration(std::time::Duration::from_secs(*s)).to_string(),
            ),
        }
    }
}

/// One VM's renewals: the first due at `first_due`, then one every `period`.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalStream {
    pub first_due: DateTime<Utc>,
    /// Price of one renewal, major units (EUR).
    pub price: f64,
    pub period: BillingPeriod,
}

/// Amount in integer micro-units (1e-6 of a major unit).
fn micros(x: f64) -> i128 {
    (x * 1e6).round() as i128
}

/// Seconds from `now` until the balance first fails to pay a renewal (see the module
/// doc), capped at `horizon_seconds`; `None` when there are no renewals at all.
pub fn wallet_runway_seconds(
    balance: f64,
    renewals: &[RenewalStream],
    now: DateTime<Utc>,
    horizon_seconds: i64,
) -> Option<f64> {
    if renewals.is_empty() || !balance.is_finite() {
        return None;
    }
    let horizon_end = now.checked_add_signed(chrono::Duration::try_seconds(horizon_seconds)?)?;
    let seconds_until = |t: DateTime<Utc>| ((t - now).num_milliseconds() as f64 / 1000.0).max(0.0);
    let mut left = micros(balance);
    // Free renewals can never exhaust the balance: they are renewals (so the runway is
    // not absent) but are not walked.
    let mut due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = renewals
        .iter()
        .enumerate()
        .filter(|(_, r)| micros(r.price) > 0)
        .map(|(i, r)| Reverse((r.first_due, i)))
        .collect();
    // Renewals at the same instant are taken in index order. The result does not depend
    // on it: the balance fails at time t exactly when everything due up to t costs more
    // than the balance, whichever of the simultaneous renewals is charged first.
    while let Some(Reverse((t, i))) = due.pop() {
        if t > horizon_end {
            break;
        }
        let r = &renewals[i];
        let price = micros(r.price);
        if price > left {
            return Some(seconds_until(t));
        }
        left -= price;
        if let Some(next) = r.period.after(t).filter(|n| *n > t) {
            due.push(Reverse((next, i)));
        }
    }
    Some(horizon_seconds as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const DAY: i64 = 86_400;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 9, 0, 0)
            .single()
            .expect("valid date")
    }

    fn monthly(first_due: DateTime<Utc>, price: f64) -> RenewalStream {
        RenewalStream {
            first_due,
            price,
            period: BillingPeriod::Months(1),
        }
    }

    fn runway(balance: f64, r: &[RenewalStream], now: DateTime<Utc>) -> Option<f64> {
        wallet_runway_seconds(balance, r, now, DEFAULT_HORIZON_SECONDS)
    }

    #[test]
    fn no_renewals_means_no_runway() {
        assert_eq!(runway(100.0, &[], at(2026, 5, 11)), None);
        assert_eq!(runway(-5.0, &[], at(2026, 5, 11)), None);
    }

    #[test]
    fn one_monthly_vps_pays_until_the_balance_is_short() {
        // 100 EUR pays 5 renewals of 19.49 (97.45), the 6th (2026-11-11) fails.
        let now = at(2026, 5, 11);
        let r = [monthly(at(2026, 6, 11), 19.49)];
        let want = (at(2026, 11, 11) - now).num_seconds() as f64;
        assert_eq!(runway(100.0, &r, now), Some(want));
        assert_eq!(want, 184.0 * DAY as f64);
    }

    #[test]
    fn exact_balance_pays_the_renewal() {
        // 38.98 is exactly two renewals: the third one (Aug 11) is the first failure.
        let now = at(2026, 5, 11);
        let r = [monthly(at(2026, 6, 11), 19.49)];
        let want = (at(2026, 8, 11) - now).num_seconds() as f64;
        assert_eq!(runway(38.98, &r, now), Some(want));
        // One cent less: July fails.
        let want = (at(2026, 7, 11) - now).num_seconds() as f64;
        assert_eq!(runway(38.97, &r, now), Some(want));
    }

    #[test]
    fn several_vpses_interleave_in_due_order() {
        // 30 EUR: basic (12.49) on May 13 → 17.51 left; prime (19.49) on May 31 fails.
        let now = at(2026, 5, 11);
        let r = [
            monthly(at(2026, 5, 31), 19.49),
            monthly(at(2026, 5, 13), 12.49),
            RenewalStream {
                first_due: at(2027, 5, 11),
                price: 344.90,
                period: BillingPeriod::Months(12),
            },
        ];
        assert_eq!(runway(30.0, &r, now), Some(20.0 * DAY as f64));
        // 50 EUR: May 13 (37.51), May 31 (18.02), Jun 13 (5.53), Jun 30 fails
        // (May 31 + 1 month is clamped to June 30).
        let want = (at(2026, 6, 30) - now).num_seconds() as f64;
        assert_eq!(runway(50.0, &r, now), Some(want));
    }

    #[test]
    fn an_overdue_or_unpayable_first_renewal_gives_zero() {
        let now = at(2026, 5, 11);
        // Due yesterday and unpayable: clamped at 0, never negative.
        let r = [monthly(at(2026, 5, 10), 19.49)];
        assert_eq!(runway(5.0, &r, now), Some(0.0));
        // Negative balance.
        let r = [monthly(at(2026, 5, 20), 19.49)];
        assert_eq!(runway(-1.0, &r, now), Some(9.0 * DAY as f64));
    }

    #[test]
    fn simultaneous_renewals_fail_at_their_common_time_whatever_the_order() {
        let now = at(2026, 5, 11);
        let t = at(2026, 5, 21);
        let a = monthly(t, 19.49);
        let b = monthly(t, 12.49);
        let want = Some(10.0 * DAY as f64);
        assert_eq!(runway(20.0, &[a.clone(), b.clone()], now), want);
        assert_eq!(runway(20.0, &[b, a], now), want);
    }

    #[test]
    fn horizon_caps_the_walk() {
        let now = at(2026, 5, 11);
        let r = [RenewalStream {
            first_due: at(2026, 6, 11),
            price: 1.0,
            period: BillingPeriod::Months(12),
        }];
        // 1000 EUR at 1 EUR a year: capped at five years.
        assert_eq!(
            runway(1000.0, &r, now),
            Some(DEFAULT_HORIZON_SECONDS as f64)
        );
        // A renewal beyond a short horizon is not looked at.
        assert_eq!(
            wallet_runway_seconds(0.0, &r, now, 10 * DAY),
            Some(10.0 * DAY as f64)
        );
        // Free renewals never run out.
        let free = [monthly(at(2026, 6, 11), 0.0)];
        assert_eq!(
            runway(0.0, &free, now),
            Some(DEFAULT_HORIZON_SECONDS as f64)
        );
    }

    #[test]
    fn fixed_periods_and_subsecond_times() {
        let now = at(2026, 5, 11);
        let first = now + chrono::Duration::milliseconds(1500);
        let r = [RenewalStream {
            first_due: first,
            price: 10.0,
            period: BillingPeriod::Seconds(30 * DAY as u64),
        }];
        // 25 EUR: pays at +1.5 s and +30 d, fails at +60 d +1.5 s.
        assert_eq!(runway(25.0, &r, now), Some(60.0 * DAY as f64 + 1.5));
    }

    #[test]
    fn periods_parse() {
        assert_eq!(
            BillingPeriod::parse("1 month"),
            Ok(BillingPeriod::Months(1))
        );
        assert_eq!(
            BillingPeriod::parse("3months"),
            Ok(BillingPeriod::Months(3))
        );
        assert_eq!(
            BillingPeriod::parse("1 year"),
            Ok(BillingPeriod::Months(12))
        );
        assert_eq!(
            BillingPeriod::parse("30d"),
            Ok(BillingPeriod::Seconds(30 * DAY as u64))
        );
        assert!(BillingPeriod::parse("0 months").is_err());
        assert!(
            BillingPeriod::parse("5m").is_err(),
            "five minutes is a typo"
        );
        assert!(BillingPeriod::parse("fortnightly").is_err());
        assert_eq!(BillingPeriod::Months(12).to_string(), "1 year");
        assert_eq!(
            BillingPeriod::Months(1).seconds_from(at(2026, 2, 1)),
            Some(28.0 * DAY as f64)
        );
    }
}
