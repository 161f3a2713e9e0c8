//! The status page (`GET /`) and its JSON twin (`GET /api/v1/status`): what a person
//! wants to know at a glance — is anything down, what expires soon, how long the wallet
//! lasts, what the watchdog did — built from state the daemon already holds.
//!
//! Everything comes from memory the other tasks keep current (snapshots, probe results,
//! rule states, renewal counters) plus one bounded read of the newest journal entries;
//! nothing here calls a provider. [`StatusSources::build`] turns that into a [`Status`]
//! (plain data, serialised as the JSON twin); `html` renders the page from the same
//! value, so both always say the same thing. What the page shows and why:
//! docs/status.md.

pub mod format;
pub mod html;
mod timeline;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::renew::config::RenewRule;
use crate::renew::report::RenewReport;
use crate::watchdog::journal::{ActionRecord, ActionStatus, Journal, Outcome};
use crate::watchdog::probe::ProbeStore;
use crate::watchdog::report::WatchdogReport;
use crate::watchdog::selector::Target;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::SharedClock;
use vpswatch_model::money::Money;
use vpswatch_model::snapshot::{AccountSnapshot, SnapshotStore};
use vpswatch_model::vm::{Vm, VmState};

/// Journal entries read per page view to find each VM's last action: the newest ones
/// only, so a page costs one bounded read however long the journal is.
pub const RECENT_ACTIONS: usize = 500;

/// Expiry within this is worth a look when no renewal rule names a window of its own
/// (the same threshold as the shipped `VpsExpiringSoon` alert).
pub const DEFAULT_RENEWAL_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// Expiry or wallet runway shorter than this, with nothing to renew in time, is
/// critical (as the shipped `VpsExpiringVerySoon` alert).
pub const CRITICAL_WITHIN: Duration = Duration::from_secs(2 * 86_400);

/// Wallet runway below this is a warning (as the shipped `VpsWalletRunwayLow` alert).
pub const RUNWAY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// An API key expiring within this is a warning.
pub const API_KEY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// How bad a finding is; the page sorts by it, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    /// Worth knowing, nothing to do (a VM being created, a renewal that is covered).
    Notice,
    /// Act today.
    Warning,
    /// Act now: down, failing, expired, about to expire with nothing to renew it.
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// Whether it belongs in the problem list.
    pub fn is_problem(self) -> bool {
        self >= Severity::Warning
    }
}

/// One thing the page says about an account or a VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
}

fn worst(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

/// One rule's state on one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleState {
    pub rule: String,
    pub firing: bool,
    /// The rule could not tell (no data, stale data).
    pub unknown: bool,
}

/// One account.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    pub provider: ProviderKind,
    pub account: String,
    /// The latest poll succeeded.
    pub up: bool,
    /// At least one poll finished (successfully or not).
    pub polled: bool,
    pub last_success: Option<DateTime<Utc>>,
    /// Seconds since the newest good data was fetched.
    pub data_age_seconds: Option<f64>,
    /// Why the latest poll failed.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub vms: usize,
    pub wallet: Option<Money>,
    /// How long the wallet pays the renewals, from now (see docs/providers.md).
    pub runway_seconds: Option<f64>,
    /// When the wallet can first no longer pay a renewal.
    pub runway_until: Option<DateTime<Utc>>,
    pub api_key_expiry: Option<DateTime<Utc>>,
    pub api_key_expires_in_seconds: Option<f64>,
    /// Whether vpswatch holds a key that may act on this account's VMs.
    pub actions_enabled: Option<bool>,
    /// Account-level rules (provider unreachable, API key expiring).
    pub rules: Vec<RuleState>,
    pub findings: Vec<Finding>,
    pub severity: Severity,
}

/// The result of one probe port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbePort {
    pub port: u16,
    pub success: bool,
    pub at: DateTime<Utc>,
}

/// How a VM gets renewed, and what renewing it has done so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenewalStatus {
    /// Expiry within this is flagged (the renewal rule's window, or the default).
    pub window_seconds: f64,
    /// The renewal rule that handles the VM, and its mode.
    pub rule: Option<String>,
    pub mode: Option<String>,
    /// What pays the next renewal without anyone acting: `auto_renewal` (the provider's,
    /// with a saved payment method), `wallet` (the prepaid balance reaches past the
    /// expiry) or `rule` (a vpswatch renewal rule that pays, mode nwc). `None`: nothing.
    pub covered_by: Option<String>,
    /// The renewal task's results for this VM since start, as (mode, result, count).
    pub results: Vec<RenewalCount>,
    /// Failed tries in the current renewal window, and whether the task gave up.
    pub tries: u32,
    pub gave_up: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenewalCount {
    pub mode: String,
    pub result: String,
    pub count: u64,
}

/// The newest journal entry for a VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastAction {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub rule: String,
    pub action: String,
    /// sending, ok, failed, dry_run, interrupted.
    pub status: String,
    /// recovered, not_recovered; `None` while still being watched.
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// One VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub provider: ProviderKind,
    pub account: String,
    pub id: String,
    pub name: String,
    pub plan: String,
    pub location: String,
    pub state: String,
    /// The latest probe round's results; empty when the VM is not probed.
    pub probes: Vec<ProbePort>,
    pub expires: Option<DateTime<Utc>>,
    /// Negative once expired.
    pub expires_in_seconds: Option<f64>,
    pub deleting_on: Option<DateTime<Utc>>,
    pub auto_renewal: Option<bool>,
    pub renewal: RenewalStatus,
    pub rules: Vec<RuleState>,
    pub last_action: Option<LastAction>,
    pub findings: Vec<Finding>,
    pub severity: Severity,
}

/// An NWC wallet the renewal task pays from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NwcWallet {
    /// The renewal rule that uses it.
    pub rule: String,
    pub balance_sats: f64,
}

/// Counts for the banner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub severity: Severity,
    pub accounts: usize,
    pub accounts_up: usize,
    pub vms: usize,
    /// VMs and accounts with a warning or worse.
    pub problems: usize,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generated_at: DateTime<Utc>,
    pub version: &'static str,
    /// Whether the watchdog runs (rules configured).
    pub watchdog: bool,
    pub dry_run: bool,
    pub summary: Summary,
    /// Worst first.
    pub accounts: Vec<AccountStatus>,
    /// Worst first, then soonest expiry.
    pub vms: Vec<VmStatus>,
    pub nwc_wallets: Vec<NwcWallet>,
}

/// The parts of the configuration the page judges by.
#[derive(Debug, Clone, Default)]
pub struct StatusPolicy {
    /// Older data is stale: the provider counts as down.
    pub staleness_limit: Duration,
    /// The renewal rules, in order (the first that matches a VM handles it).
    pub renew_rules: Vec<RenewRule>,
}

impl StatusPolicy {
    pub fn from_config(config: &Config) -> StatusPolicy {
        StatusPolicy {
            staleness_limit: config.staleness_limit,
            renew_rules: config.renew_rules.clone(),
        }
    }
}

/// The shared state the page reads (all read-only here).
pub struct StatusSources {
    pub store: Arc<SnapshotStore>,
    pub probes: Arc<ProbeStore>,
    pub watchdog: Arc<WatchdogReport>,
    pub renewals: Arc<RenewReport>,
    /// The watchdog journal, when the watchdog runs.
    pub journal: Option<Journal>,
    pub clock: SharedClock,
    pub policy: StatusPolicy,
}

/// Why a status could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read the watchdog journal: {0}")]
    Journal(String),
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

fn finding(severity: Severity, text: impl Into<String>) -> Finding {
    Finding {
        severity,
        text: text.into(),
    }
}

/// At most this many characters of a provider's error message are shown.
const MAX_ERROR_CHARS: usize = 300;

fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(MAX_ERROR_CHARS).collect();
        s.push('…');
        s
    }
}

impl StatusSources {
    /// Sources with only the snapshots (no probes, rules or renewals): a web server
    /// without the rest of the daemon.
    pub fn snapshots_only(store: Arc<SnapshotStore>, clock: SharedClock) -> StatusSources {
        StatusSources {
            store,
            probes: Arc::default(),
            watchdog: Arc::default(),
            renewals: Arc::default(),
            journal: None,
            clock,
            policy: StatusPolicy::default(),
        }
    }

    /// Builds the status now, reading the newest journal entries off the async threads.
    pub async fn current(self: &Arc<Self>) -> Result<Status, StatusError> {
        let recent = match self.journal.clone() {
            None => Vec::new(),
            Some(j) => tokio::task::spawn_blocking(move || j.recent(RECENT_ACTIONS))
                .await
                .map_err(|e| StatusError::Journal(e.to_string()))?
                .map_err(|e| StatusError::Journal(e.to_string()))?,
        };
        Ok(self.build(self.clock.now(), &recent))
    }

    /// Builds the status as of `now` from the shared state and `recent` journal entries
    /// (newest first).
    pub fn build(&self, now: DateTime<Utc>, recent: &[ActionRecord]) -> Status {
        let snapshots = self.store.all();
        let probes = self.probes.latest();
        let renewals = self.renewals.summary();

        // Rule states by (provider, account, vm); account-level rules have vm "".
        let mut rules: HashMap<(ProviderKind, &str, &str), Vec<RuleState>> = HashMap::new();
        let states = self.watchdog.rule_states();
        for (key, firing, unknown) in &states {
            rules
                .entry((key.provider, key.account.as_str(), key.vm.as_str()))
                .or_default()
                .push(RuleState {
                    rule: key.rule.clone(),
                    firing: *firing,
                    unknown: *unknown,
                });
        }
        // The newest entry per VM (`recent` is newest first).
        let mut last: HashMap<(ProviderKind, &str, &str), &ActionRecord> = HashMap::new();
        for rec in recent {
            last.entry((rec.provider, rec.account.as_str(), rec.vm.as_str()))
                .or_insert(rec);
        }

        let mut accounts = Vec::with_capacity(snapshots.len());
        let mut vms = Vec::new();
        for snap in &snapshots {
            let account_rules = rules
                .get(&(snap.provider, snap.account.as_str(), ""))
                .cloned()
                .unwrap_or_default();
            let account = self.account(snap, now, account_rules);
            if let Some(data) = &snap.data {
                let payment_methods = data.facts.enabled_payment_methods.unwrap_or(0);
                for vm in &data.vms {
                    let key = (snap.provider, snap.account.as_str(), vm.id.as_str());
                    let vm_probes = probes
                        .get(&(snap.provider, snap.account.clone(), vm.id.clone()))
                        .map(|list| {
                            list.iter()
                                .map(|p| ProbePort {
                                    port: p.port,
                                    success: p.success,
                                    at: p.at,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let results = renewals
                        .results
                        .get(&(snap.account.clone(), vm.id.clone()))
                        .map(|list| {
                            list.iter()
                                .map(|(mode, result, count)| RenewalCount {
                                    mode: mode.clone(),
                                    result: result.clone(),
                                    count: *count,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    vms.push(
                        self.vm(
                            snap,
                            vm,
                            now,
                            VmParts {
                                probes: vm_probes,
                                rules: rules.get(&key).cloned().unwrap_or_default(),
                                last: last.get(&key).map(|r| last_action(r)),
                                renewal_results: results,
                                renewal_state: renewals
                                    .states
                                    .get(&(snap.account.clone(), vm.id.clone()))
                                    .cloned()
                                    .unwrap_or_default(),
                                payment_methods,
                                runway_until: account.runway_until,
                            },
                        ),
                    );
                }
            }
            accounts.push(account);
        }
        accounts.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| (a.provider, &a.account).cmp(&(b.provider, &b.account)))
        });
        vms.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| {
                    let key = |v: &VmStatus| v.expires_in_seconds.unwrap_or(f64::INFINITY);
                    key(a).total_cmp(&key(b))
                })
                .then_with(|| {
                    (a.provider, &a.account, &a.name, &a.id)
                        .cmp(&(b.provider, &b.account, &b.name, &b.id))
                })
        });
        let summary = Summary {
            severity: accounts
                .iter()
                .map(|a| a.severity)
                .chain(vms.iter().map(|v| v.severity))
                .max()
                .unwrap_or(Severity::Ok),
            accounts: accounts.len(),
            accounts_up: accounts.iter().filter(|a| a.up).count(),
            vms: vms.len(),
            problems: accounts
                .iter()
                .map(|a| a.severity)
                .chain(vms.iter().map(|v| v.severity))
                .filter(|s| s.is_problem())
                .count(),
        };
        Status {
            generated_at: now,
            version: env!("CARGO_PKG_VERSION"),
            watchdog: self.journal.is_some(),
            dry_run: self.watchdog.dry_run(),
            summary,
            accounts,
            vms,
            nwc_wallets: renewals
                .wallets
                .iter()
                .map(|(rule, sats)| NwcWallet {
                    rule: rule.clone(),
                    balance_sats: *sats,
                })
                .collect(),
        }
    }

    fn account(
        &self,
        snap: &AccountSnapshot,
        now: DateTime<Utc>,
        rules: Vec<RuleState>,
    ) -> AccountStatus {
        let data = snap.data.as_deref();
        let data_age = snap.last_success.map(|t| seconds_between(t, now).max(0.0));
        // The runway was computed at the poll; count it down from there.
        let runway_until = data.and_then(|d| {
            let s = d.facts.wallet_runway_seconds?;
            let s = chrono::Duration::try_milliseconds((s * 1000.0) as i64)?;
            d.fetched_at.checked_add_signed(s)
        });
        let runway = runway_until.map(|t| seconds_between(now, t).max(0.0));
        let api_key_expiry = data.and_then(|d| d.facts.api_key_expiry);
        let api_key_in = api_key_expiry.map(|t| seconds_between(now, t));

        let mut findings = Vec::new();
        let stale = data_age.is_some_and(|a| a > secs(self.policy.staleness_limit));
        if snap.polls == 0 {
            findings.push(finding(Severity::Notice, "waiting for the first poll"));
        } else if let Some(err) = &snap.last_error {
            let age = match data_age {
                Some(a) => format!("data {} old", format::duration(a)),
                None => "no data yet".to_string(),
            };
            let severity = if stale || data.is_none() {
                Severity::Critical
            } else {
                Severity::Warning
            };
            findings.push(finding(
                severity,
                format!(
                    "provider unreachable ({} failed polls, {age}): {}",
                    snap.consecutive_failures,
                    bounded(err)
                ),
            ));
        } else if stale {
            findings.push(finding(
                Severity::Critical,
                format!(
                    "data is {} old",
                    format::duration(data_age.unwrap_or_default())
                ),
            ));
        }
        if let Some(r) = runway {
            if r < secs(RUNWAY_WARNING) {
                let severity = if r < secs(CRITICAL_WITHIN) {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                findings.push(finding(
                    severity,
                    format!("wallet pays renewals for only {} more", format::duration(r)),
                ));
            }
        }
        if let Some(s) = api_key_in {
            if s <= 0.0 {
                findings.push(finding(Severity::Critical, "API key has expired"));
            } else if s < secs(API_KEY_WARNING) {
                findings.push(finding(
                    Severity::Warning,
                    format!("API key expires in {}", format::duration(s)),
                ));
            }
        }
        for r in rules.iter().filter(|r| r.firing) {
            findings.push(finding(
                Severity::Critical,
                format!("rule {} firing", r.rule),
            ));
        }
        AccountStatus {
            provider: snap.provider,
            account: snap.account.clone(),
            up: snap.is_up() && !stale,
            polled: snap.polls > 0,
            last_success: snap.last_success,
            data_age_seconds: data_age,
            last_error: snap.last_error.as_deref().map(bounded),
            consecutive_failures: snap.consecutive_failures,
            vms: data.map_or(0, |d| d.vms.len()),
            wallet: data.and_then(|d| d.wallet.clone()),
            runway_seconds: runway,
            runway_until,
            api_key_expiry,
            api_key_expires_in_seconds: api_key_in,
            actions_enabled: snap.actions_enabled,
            severity: worst(&findings),
            rules,
            findings,
        }
    }

    /// The renewal rule that handles a VM: the first that matches (as the renewal
    /// task picks it); only LNVPS VMs are renewed by vpswatch.
    fn renew_rule(&self, snap: &AccountSnapshot, vm: &Vm) -> Option<&RenewRule> {
        if snap.provider != ProviderKind::Lnvps {
            return None;
        }
        let target = Target {
            provider: snap.provider,
            account: &snap.account,
            vm: Some(&vm.id),
            vm_name: Some(&vm.name),
        };
        self.policy
            .renew_rules
            .iter()
            .find(|r| r.selector.matches(target))
    }

    fn vm(&self, snap: &AccountSnapshot, vm: &Vm, now: DateTime<Utc>, parts: VmParts) -> VmStatus {
        let rule = self.renew_rule(snap, vm);
        let window = rule.map_or(DEFAULT_RENEWAL_WINDOW, |r| r.within);
        let expires_in = vm.expires.map(|t| seconds_between(now, t));
        let covered_by = if vm.auto_renewal_enabled == Some(true) && parts.payment_methods > 0 {
            Some("auto_renewal")
        } else if rule
            .is_some_and(|r| r.mode == crate::renew::config::RenewMode::Nwc && !(r.dry_run))
        {
            Some("rule")
        } else if let (Some(until), Some(exp)) = (parts.runway_until, vm.expires) {
            (until > exp).then_some("wallet")
        } else {
            None
        };

        let mut findings = Vec::new();
        match &vm.state {
            VmState::Running => {}
            VmState::Creating => findings.push(finding(Severity::Notice, "being created")),
            other => findings.push(finding(Severity::Critical, other.label().to_string())),
        }
        for p in parts.probes.iter().filter(|p| !p.success) {
            findings.push(finding(
                Severity::Critical,
                format!("port {} does not answer", p.port),
            ));
        }
        for r in &parts.rules {
            if r.firing {
                findings.push(finding(
                    Severity::Critical,
                    format!("rule {} firing", r.rule),
                ));
            }
        }
        match expires_in {
            None => findings.push(finding(Severity::Notice, "never paid")),
            Some(s) if s <= 0.0 => {
                let deletion = vm
                    .deleting_on
                    .map(|d| {
                        format!(
                            "; deleted in {}",
                            format::duration(seconds_between(now, d).max(0.0))
                        )
                    })
                    .unwrap_or_default();
                findings.push(finding(
                    Severity::Critical,
                    format!("expired {} ago{deletion}", format::duration(-s)),
                ));
            }
            Some(s) if s < secs(window) => {
                let severity = if covered_by.is_some() {
                    Severity::Notice
                } else if s < secs(CRITICAL_WITHIN) {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let how = match covered_by {
                    Some("auto_renewal") => " (auto-renewal pays)",
                    Some("rule") => " (a renewal rule pays)",
                    Some(_) => " (the wallet pays)",
                    None if vm.auto_renewal_enabled == Some(true) => {
                        ", nothing renews it (auto-renewal is on but no payment method is saved)"
                    }
                    None => ", nothing renews it",
                };
                findings.push(finding(
                    severity,
                    format!("expires in {}{how}", format::duration(s)),
                ));
            }
            Some(_) => {}
        }
        if let Some(a) = &parts.last {
            if a.status == "failed" {
                findings.push(finding(
                    Severity::Warning,
                    format!("last action {} failed", a.action),
                ));
            } else if a.outcome.as_deref() == Some("not_recovered") {
                findings.push(finding(
                    Severity::Warning,
                    format!("not recovered after {}", a.action),
                ));
            }
        }
        let tries = parts.renewal_state.attempts;
        if parts.renewal_state.gave_up {
            findings.push(finding(
                Severity::Critical,
                format!("renewal gave up after {tries} tries"),
            ));
        } else if parts.renewal_state.failing {
            findings.push(finding(
                Severity::Warning,
                format!("renewal failing ({tries} tries so far)"),
            ));
        }
        VmStatus {
            provider: snap.provider,
            account: snap.account.clone(),
            id: vm.id.clone(),
            name: vm.name.clone(),
            plan: vm.plan.clone(),
            location: vm.location.clone(),
            state: vm.state.label().to_string(),
            probes: parts.probes,
            expires: vm.expires,
            expires_in_seconds: expires_in,
            deleting_on: vm.deleting_on,
            auto_renewal: vm.auto_renewal_enabled,
            renewal: RenewalStatus {
                window_seconds: secs(window),
                rule: rule.map(|r| r.name.clone()),
                mode: rule.map(|r| r.mode.as_str().to_string()),
                covered_by: covered_by.map(str::to_string),
                results: parts.renewal_results,
                tries: parts.renewal_state.attempts,
                gave_up: parts.renewal_state.gave_up,
            },
            rules: parts.rules,
            last_action: parts.last,
            severity: worst(&findings),
            findings,
        }
    }
}

/// What `vm` needs beside the snapshot.
struct VmParts {
    probes: Vec<ProbePort>,
    rules: Vec<RuleState>,
    last: Option<LastAction>,
    renewal_results: Vec<RenewalCount>,
    renewal_state: crate::renew::report::VmState,
    payment_methods: u32,
    runway_until: Option<DateTime<Utc>>,
}

fn last_action(r: &ActionRecord) -> LastAction {
    let status = match r.status {
        ActionStatus::Sending => "sending",
        ActionStatus::Ok => "ok",
        ActionStatus::Failed => "failed",
        ActionStatus::DryRun => "dry_run",
        ActionStatus::Interrupted => "interrupted",
    };
    LastAction {
        id: r.id,
        at: r.at,
        rule: r.rule.clone(),
        action: r.action.as_str().to_string(),
        status: status.to_string(),
        outcome: r.outcome.map(|o| {
            match o {
                Outcome::Recovered => "recovered",
                Outcome::NotRecovered => "not_recovered",
            }
            .to_string()
        }),
        error: r.error.as_deref().map(bounded),
    }
}

/// `?page=N` (1-based); anything else is page 1.
fn page_of(query: Option<&str>) -> usize {
    query
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("page="))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(1)
        .max(1)
}

/// Answers `GET /` (the HTML page) and `GET /api/v1/status` (the same content as JSON).
pub async fn respond<B>(
    sources: &Arc<StatusSources>,
    req: &http::Request<B>,
) -> http::Response<bytes::Bytes> {
    use http::header::{self, HeaderValue};
    let status = match sources.current().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the status page");
            let mut r = http::Response::new(bytes::Bytes::from_static(
                b"cannot read the watchdog journal\n",
            ));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        }
    };
    let json = req.uri().path() == "/api/v1/status";
    let (body, content_type) = if json {
        // Plain data: serialising it cannot fail.
        (
            serde_json::to_vec(&status).unwrap_or_default(),
            "application/json",
        )
    } else {
        (
            html::render(&status, page_of(req.uri().query())).into_bytes(),
            "text/html; charset=utf-8",
        )
    };
    let mut r = http::Response::new(bytes::Bytes::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !json {
        if let Ok(v) = HeaderValue::from_str(html::content_security_policy()) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpswatch_model::account::{AccountData, AccountFacts};
    use vpswatch_model::clock::ManualClock;

    fn vm(id: &str, state: VmState, expires_in: chrono::Duration, now: DateTime<Utc>) -> Vm {
        Vm {
            id: id.into(),
            name: format!("vm-{id}"),
            plan: "Tiny BTC".into(),
            location: "Dublin".into(),
            image: String::new(),
            ipv4: None,
            state,
            status_time: Some(now),
            created: None,
            expires: Some(now + expires_in),
            deleting_on: None,
            auto_renewal_enabled: Some(false),
            renewal: None,
            cpus: None,
            memory_bytes: None,
            disk_bytes: None,
            uptime_seconds: None,
            usage: None,
            usage_error: None,
            subscription_id: None,
            max_prepay_days: None,
        }
    }

    fn sources(now: DateTime<Utc>, vms: Vec<Vm>, runway: Option<f64>) -> StatusSources {
        let store = SnapshotStore::new([(ProviderKind::Stablevps, "acct".to_string())]);
        let mut snap = AccountSnapshot::empty(ProviderKind::Stablevps, "acct");
        snap.polls = 1;
        snap.last_success = Some(now);
        snap.data = Some(Arc::new(AccountData {
            fetched_at: now,
            vms,
            wallet: None,
            facts: AccountFacts {
                wallet_runway_seconds: runway,
                ..AccountFacts::default()
            },
            warnings: Vec::new(),
        }));
        store.publish(0, snap);
        StatusSources::snapshots_only(store, Arc::new(ManualClock::new(now)))
    }

    #[test]
    fn problems_come_first_worst_then_soonest() {
        let now = Utc::now();
        let days = chrono::Duration::days;
        let s = sources(
            now,
            vec![
                vm("1", VmState::Running, days(20), now),
                vm("2", VmState::Stopped, days(25), now),
                vm("3", VmState::Running, days(1), now),
                vm("4", VmState::Running, days(5), now),
                vm("5", VmState::Creating, days(20), now),
            ],
            None,
        )
        .build(now, &[]);
        let order: Vec<(&str, Severity)> =
            s.vms.iter().map(|v| (v.id.as_str(), v.severity)).collect();
        assert_eq!(
            order,
            [
                ("3", Severity::Critical),
                ("2", Severity::Critical),
                ("4", Severity::Warning),
                ("5", Severity::Notice),
                ("1", Severity::Ok),
            ]
        );
        assert_eq!(s.summary.problems, 3);
        assert_eq!(s.vms[1].findings[0].text, "stopped");
        assert!(s.vms[0].findings[0].text.contains("nothing renews it"));
    }

    #[test]
    fn a_wallet_that_reaches_past_the_expiry_covers_it() {
        let now = Utc::now();
        let days = chrono::Duration::days;
        let s = sources(
            now,
            vec![
                vm("1", VmState::Running, days(1), now),
                vm("2", VmState::Running, days(3), now),
            ],
            Some(2.0 * 86_400.0),
        )
        .build(now, &[]);
        let by_id = |id: &str| s.vms.iter().find(|v| v.id == id).expect("vm");
        assert_eq!(by_id("1").renewal.covered_by.as_deref(), Some("wallet"));
        assert_eq!(by_id("1").severity, Severity::Notice);
        assert_eq!(by_id("2").renewal.covered_by, None);
        assert_eq!(by_id("2").severity, Severity::Warning);
        // Two days of runway is short: the account says so.
        assert_eq!(s.accounts[0].severity, Severity::Warning);
        assert!(s.accounts[0].findings[0].text.contains("wallet pays"));
    }
}
