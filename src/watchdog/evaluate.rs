//! Turns what vpswatch knows into a three-valued verdict per rule and target.
//!
//! A condition is *unknown* whenever the data behind it is stale, missing or came with an
//! error — and unknown never counts toward firing (kured read an error as "reboot
//! needed"; we read it as "don't know"). Each verdict carries the time of the data it was
//! drawn from, so the hysteresis counts each new observation once, however often the
//! engine evaluates.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::probe::ProbeResult;
use super::rules::Condition;
use vpswatch_model::snapshot::AccountSnapshot;
use vpswatch_model::vm::{Vm, VmState};

/// True / false / unknown, with why.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The condition holds (something is wrong).
    Bad,
    /// The condition does not hold.
    Good,
    /// Not enough trustworthy data to say.
    Unknown(String),
}

/// One verdict and the time of the data it rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub verdict: Verdict,
    /// When the underlying data was taken (a poll, a probe, a usage point). A later
    /// observation with the same time is the same observation.
    pub sample_at: DateTime<Utc>,
    /// One line for logs and mails, e.g. "TCP 10.0.0.3:22 refused".
    pub summary: String,
}

/// How old data may be before it is not trusted.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub staleness_limit: Duration,
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or(Duration::ZERO)
}

fn pretty(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn unknown(sample_at: DateTime<Utc>, why: String) -> Observation {
    Observation {
        summary: why.clone(),
        verdict: Verdict::Unknown(why),
        sample_at,
    }
}

/// Checks the account's data is fresh enough to judge a VM by; returns the poll time.
fn fresh_account(
    snap: &AccountSnapshot,
    now: DateTime<Utc>,
    f: Freshness,
) -> Result<DateTime<Utc>, Observation> {
    let fallback = snap.last_attempt.unwrap_or(now);
    let Some(last) = snap.last_success else {
        return Err(unknown(fallback, "no successful poll yet".into()));
    };
    if now < last {
        // The clock went backwards past our own data: nothing measured against it holds.
        return Err(unknown(
            last,
            "clock jumped backwards past the last poll".into(),
        ));
    }
    if let Some(err) = &snap.last_error {
        // The provider is failing right now: what we hold may already be outdated, and
        // any action would go to an API in trouble. Wait for a good poll.
        return Err(unknown(
            snap.last_attempt.unwrap_or(last),
            format!("latest poll failed: {err}"),
        ));
    }
    let a = age(now, last);
    if a > f.staleness_limit {
        return Err(unknown(
            last,
            format!(
                "account data stale: last successful poll {} ago (limit {})",
                pretty(a),
                pretty(f.staleness_limit)
            ),
        ));
    }
    Ok(last)
}

/// Checks the VM's own provider status is fresh (LNVPS reports when it cached it).
fn fresh_vm_status(
    vm: &Vm,
    polled: DateTime<Utc>,
    now: DateTime<Utc>,
    f: Freshness,
) -> Result<(), Observation> {
    if let Some(t) = vm.status_time {
        let a = age(now, t);
        if a > f.staleness_limit {
            return Err(unknown(
                polled,
                format!(
                    "the provider's status of the VM is {} old (limit {})",
                    pretty(a),
                    pretty(f.staleness_limit)
                ),
            ));
        }
    }
    Ok(())
}

/// Evaluates a VM-level condition. `vm` is `None` when the VM is not in the snapshot.
pub fn evaluate_vm(
    condition: &Condition,
    snap: &AccountSnapshot,
    vm: Option<&Vm>,
    probe: Option<&ProbeResult>,
    now: DateTime<Utc>,
    f: Freshness,
) -> Observation {
    let polled = match fresh_account(snap, now, f) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let Some(vm) = vm else {
        return unknown(polled, "VM not in the provider's list".into());
    };
    if let Err(o) = fresh_vm_status(vm, polled, now, f) {
        return o;
    }
    let state = &vm.state;
    match condition {
        Condition::VmNotRunning => match state {
            VmState::Running => good(polled, "running"),
            VmState::Stopped => bad(polled, "stopped".into()),
            other => unknown(
                polled,
                format!("state {:?} says nothing about a crash", other.label()),
            ),
        },
        Condition::ProbeFailing => {
            if !state.is_running() {
                return unknown(polled, format!("not probed: the VM is {}", state.label()));
            }
            let Some(p) = probe else {
                return unknown(polled, "no probe result yet".into());
            };
            if age(now, p.at) > f.staleness_limit {
                return unknown(
                    polled,
                    format!("probe result {} old", pretty(age(now, p.at))),
                );
            }
            let target = match vm.ipv4 {
                Some(ip) => format!("{ip}:{}", p.port),
                None => format!("port {}", p.port),
            };
            if p.success {
                good(p.at, &format!("TCP {target} answers"))
            } else {
                bad(
                    p.at,
                    format!("TCP {target} does not answer (running per provider)"),
                )
            }
        }
        Condition::CpuAbove(limit) | Condition::MemoryAbove(limit) => {
            if !state.is_running() {
                return unknown(polled, format!("no usage: the VM is {}", state.label()));
            }
            let Some(u) = &vm.usage else {
                return unknown(
                    polled,
                    vm.usage_error
                        .clone()
                        .unwrap_or_else(|| "no usage data".into()),
                );
            };
            if age(now, u.at) > f.staleness_limit {
                return unknown(polled, format!("usage data {} old", pretty(age(now, u.at))));
            }
            let (what, ratio) = match condition {
                Condition::CpuAbove(_) => ("CPU", Some(u.cpu_ratio)),
                _ => (
                    "memory",
                    vm.memory_bytes
                        .filter(|m| *m > 0.0)
                        .map(|m| u.memory_bytes / m),
                ),
            };
            let Some(ratio) = ratio.filter(|r| r.is_finite()) else {
                return unknown(polled, format!("{what} size unknown"));
            };
            let text = format!(
                "{what} at {:.0} % (limit {:.0} %)",
                ratio * 100.0,
                limit * 100.0
            );
            if ratio > *limit {
                bad(u.at, text)
            } else {
                good(u.at, &text)
            }
        }
        Condition::ProviderUnreachable | Condition::ApiKeyExpiring(_) => {
            unknown(polled, "account-level condition evaluated per VM".into())
        }
        // The alert is the evidence; this only says the VM's data is fresh enough to act.
        Condition::Alertmanager => good(polled, "the provider's data of the VM is fresh"),
    }
}

/// Evaluates an account-level condition; `None` when it does not apply to the account
/// (e.g. an LNVPS account has no API key to expire).
pub fn evaluate_account(
    condition: &Condition,
    snap: &AccountSnapshot,
    now: DateTime<Utc>,
    f: Freshness,
) -> Option<Observation> {
    match condition {
        Condition::ProviderUnreachable => {
            let Some(attempt) = snap.last_attempt else {
                return Some(unknown(now, "not polled yet".into()));
            };
            if snap.is_up() {
                return Some(good(attempt, "API answering"));
            }
            let since = snap.last_success;
            let down_for = since.map(|t| age(now, t));
            let err = snap.last_error.clone().unwrap_or_default();
            match down_for {
                Some(d) if d <= f.staleness_limit => Some(good(
                    attempt,
                    &format!("last poll failed ({err}) but data is {} old", pretty(d)),
                )),
                Some(d) => Some(bad(
                    attempt,
                    format!("no successful poll for {}: {err}", pretty(d)),
                )),
                None => Some(bad(attempt, format!("never polled successfully: {err}"))),
            }
        }
        Condition::ApiKeyExpiring(within) => {
            let data = snap.data.as_ref()?;
            let expiry = data.facts.api_key_expiry?;
            let polled = match fresh_account(snap, now, f) {
                Ok(t) => t,
                Err(o) => return Some(o),
            };
            let left = expiry - now;
            let left_std = left.to_std().unwrap_or(Duration::ZERO);
            let text = if left_std.is_zero() {
                format!("API key expired at {}", expiry.to_rfc3339())
            } else {
                format!(
                    "API key expires in {} ({})",
                    pretty(left_std),
                    expiry.to_rfc3339()
                )
            };
            if left_std < *within {
                Some(bad(polled, text))
            } else {
                Some(good(polled, &text))
            }
        }
        _ => None,
    }
}

fn good(at: DateTime<Utc>, text: &str) -> Observation {
    Observation {
        verdict: Verdict::Good,
        sample_at: at,
        summary: text.to_string(),
    }
}

fn bad(at: DateTime<Utc>, text: String) -> Observation {
    Observation {
        verdict: Verdict::Bad,
        sample_at: at,
        summary: text,
    }
}
