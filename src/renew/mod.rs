//! Lightning renewal of LNVPS VMs: pay at most once per period, never more
//! than the budget, never into the server-side auto-renewal's double-pay trap, and never
//! more than `max_attempts` tries per renewal window (docs/renewal.md, docs/providers.md).
//!
//! Runs as its own task beside the watchdog engine, on every new snapshot:
//! - [`planner`] decides, from the snapshot and the journal alone, whether a VM is due,
//!   whether the server's own single auto-renewal attempt may still come (then vpswatch
//!   waits and mints nothing until a poll after that attempt shows `expires` unchanged),
//!   and whether the backoff after a failed try has passed;
//! - a try is counted in the journal ([`journal`]) *before* its first request, so a
//!   crash or a hung request still uses it up: per window (one `expires` value) at most
//!   `max_attempts` tries, each at most one invoice request, the next one after a
//!   doubling backoff; then vpswatch stops and raises one alert until the VM is renewed,
//!   leaves the window, or an operator clears it (`POST /api/v1/renewals/clear`);
//! - before minting, the quote is checked against the budget and the prepay limit, and
//!   the subscription's payments against a renewal paid after the snapshot was taken;
//! - the invoice is decoded (amount = quote, payment hash = payment id) and journaled
//!   before the wallet ([`nwc`]) is asked to pay; the task handles one VM at a time, so
//!   one renewal (and one invoice request) is in flight per VM at most; an invoice sent
//!   to the wallet is never sent again — after a timeout or a restart the renewal is
//!   followed through the subscription's payments until it is paid or expires;
//! - `is_paid` is confirmed with the server, then the new expiry on a later poll.
//!
//! Renewals use the subscription endpoints; only a VM without a subscription id falls
//! back to the deprecated VM endpoints (logged once per VM).
//!
//! Modes: `nwc` pays; `email` mails the invoice to a human; `server` only alerts when the
//! provider's auto-renewal did not renew. Dry run: quote only, no invoice minted.

pub mod api;
pub mod config;
pub mod journal;
pub mod nwc;
pub mod planner;
pub mod report;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lightning_invoice::Bolt11Invoice;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use self::config::{RenewMode, RenewRule};
use self::journal::{AccountRecords, Attempt, JournalError, Phase, RenewalJournal, VmRenewal};
use self::nwc::NwcWallet;
use self::planner::{msat_to_sats, Plan, PlanInput};
use self::report::{RenewReport, VmState};
use crate::notify::{AlertKey, AlertStatus, AlertUpdate, Event, EventKind, Facts, Notify};
use crate::watchdog::selector::Target;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::SharedClock;
use vpswatch_model::snapshot::{AccountSnapshot, SnapshotStore};
use vpswatch_model::vm::Vm;
use vpswatch_providers::lnvps::billing::{self, Billing, RenewTarget};
use vpswatch_providers::lnvps::{btc_amount_to_btc, BtcUnit};
use vpswatch_providers::ProviderError;

pub use self::config::is_renew_rule;

/// Least time between two `get_balance` calls per wallet.
const BALANCE_EVERY: Duration = Duration::from_secs(60);
/// After `is_paid`, how long the new expiry may take to show before an alert.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// Why one VM's renewal step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The journal could not be read or written: nothing is tried without it.
    #[error("renewal journal: {0}")]
    Journal(#[from] JournalError),
    /// A provider call failed (5xx, timeout, connection, undecodable answer).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The renew call answered, but not with an invoice vpswatch may pay.
    #[error("invoice rejected: {0}")]
    Invoice(String),
}

/// One LNVPS account the renewal task may act for.
pub struct RenewAccount {
    pub name: String,
    pub btc_unit: BtcUnit,
    pub billing: Billing,
}

/// Everything the renewal task needs.
pub struct RenewParts {
    pub rules: Vec<RenewRule>,
    pub global_dry_run: bool,
    pub staleness_limit: Duration,
    pub store: Arc<SnapshotStore>,
    pub accounts: Vec<Arc<RenewAccount>>,
    pub journal: RenewalJournal,
    pub notifier: Arc<dyn Notify>,
    pub clock: SharedClock,
    pub report: Arc<RenewReport>,
    /// Replicas sharing the accounts: every invoice request and payment first proves
    /// ownership in etcd.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

struct Task {
    parts: RenewParts,
    /// Wallets by rule name, connected on first use.
    wallets: HashMap<String, Arc<NwcWallet>>,
    balance_read: HashMap<String, DateTime<Utc>>,
    /// VMs already logged as renewed through the deprecated VM endpoints.
    deprecated_logged: HashSet<(String, String)>,
}

/// Runs until `cancel`: one pass per new snapshot. Cancelling mid-payment leaves the
/// journal in `paying`, which the next start resumes without paying again.
pub async fn run(parts: RenewParts, cancel: CancellationToken) {
    let mut changes = parts.store.subscribe();
    let mut task = Task {
        parts,
        wallets: HashMap::new(),
        balance_read: HashMap::new(),
        deprecated_logged: HashSet::new(),
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = task.pass() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
        }
    }
    for (_, w) in task.wallets.drain() {
        if let Ok(w) = Arc::try_unwrap(w) {
            w.shutdown().await;
        }
    }
}

/// What one VM's renewal needs from the snapshot.
struct Ctx<'a> {
    rule: &'a RenewRule,
    account: &'a RenewAccount,
    snap: &'a AccountSnapshot,
    vm: &'a Vm,
    /// The account's journal records as this pass read them.
    records: &'a AccountRecords,
    now: DateTime<Utc>,
    key: AlertKey,
}

impl Ctx<'_> {
    fn dry_run(&self, global: bool) -> bool {
        global || self.rule.dry_run
    }
    fn mode(&self) -> &'static str {
        self.rule.mode.as_str()
    }
    fn vm_name(&self) -> String {
        if self.vm.name.is_empty() {
            self.vm.id.clone()
        } else {
            self.vm.name.clone()
        }
    }
    /// New renewals go through the subscription when the VM names one.
    fn target(&self) -> RenewTarget<'_> {
        match &self.vm.subscription_id {
            Some(sub) => RenewTarget::Subscription(sub),
            None => RenewTarget::Vm(&self.vm.id),
        }
    }
}

/// Where the invoice of `a` is followed: where it was bought.
fn attempt_target<'a>(a: &'a Attempt, vm: &'a str) -> RenewTarget<'a> {
    match &a.subscription {
        Some(sub) => RenewTarget::Subscription(sub),
        None => RenewTarget::Vm(vm),
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How a try that started ended without an invoice in flight.
enum Tried {
    /// An invoice is journaled (and was paid, or mailed, or is being paid).
    Invoiced,
    /// Nothing was minted and nothing failed (blocked, dry run, a renewal already paid):
    /// the try is not counted; look again after the given wait (`None` = next poll).
    Skipped(Option<Duration>),
}

impl Task {
    /// With replicas: records the intent in etcd if this replica still owns the LNVPS
    /// account, else refuses (nothing may be sent to the provider or the wallet).
    async fn fence(&self, account: &str, intent: &str) -> Result<(), ProviderError> {
        let Some(cluster) = &self.parts.cluster else {
            return Ok(());
        };
        let result = match cluster.index_of(ProviderKind::Lnvps.as_str(), account) {
            Some(idx) => cluster.fence(idx, intent).await.map_err(|e| e.to_string()),
            None => Err("the account is not in the cluster's list".into()),
        };
        result.map_err(|reason| {
            tracing::warn!(account, intent, %reason, "renewal: not sent");
            ProviderError::NotSent {
                endpoint: "cluster".into(),
                reason,
            }
        })
    }

    async fn pass(&mut self) {
        let now = self.parts.clock.now();
        let snaps = self.parts.store.all();
        let mut handled: HashSet<(String, String)> = HashSet::new();
        for ri in 0..self.parts.rules.len() {
            let rule = self.parts.rules[ri].clone();
            if rule.mode == RenewMode::Nwc {
                self.read_balance(&rule, now).await;
            }
            for snap in &snaps {
                if snap.provider != ProviderKind::Lnvps
                    || !rule
                        .selector
                        .may_match_account(ProviderKind::Lnvps, &snap.account)
                {
                    continue;
                }
                // Invariant 1: no action on stale or missing data.
                let fresh = snap.last_success.is_some_and(|t| {
                    now - t
                        <= chrono::Duration::from_std(self.parts.staleness_limit)
                            .unwrap_or(chrono::Duration::MAX)
                });
                let Some(data) = snap.data.as_ref().filter(|_| fresh) else {
                    continue;
                };
                let Some(ai) = self
                    .parts
                    .accounts
                    .iter()
                    .position(|a| a.name == snap.account)
                else {
                    continue;
                };
                // Each VM goes to the first rule that matches it.
                let mine: Vec<&Vm> = data
                    .vms
                    .iter()
                    .filter(|vm| {
                        rule.selector.matches(Target {
                            provider: ProviderKind::Lnvps,
                            account: &snap.account,
                            vm: Some(&vm.id),
                            vm_name: Some(&vm.name),
                        }) && handled.insert((snap.account.clone(), vm.id.clone()))
                    })
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                for vm in &mine {
                    self.parts
                        .report
                        .track(&snap.account, &vm.id, &rule.name, rule.mode.as_str());
                }
                let records = match self.parts.journal.account(&snap.account).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, account = %snap.account, error = %e,
                            "renewal: the account's journal could not be read; it is looked at again on the next poll");
                        continue;
                    }
                };
                let account = self.parts.accounts[ai].clone();
                for vm in mine {
                    let ctx = Ctx {
                        rule: &rule,
                        account: &account,
                        snap,
                        vm,
                        records: &records,
                        now,
                        key: AlertKey {
                            rule: rule.name.clone(),
                            provider: ProviderKind::Lnvps,
                            account: snap.account.clone(),
                            vm: vm.id.clone(),
                        },
                    };
                    if let Err(e) = self.vm(&ctx).await {
                        tracing::warn!(rule = %rule.name, account = %snap.account, vm = %vm.id,
                            error = %e, "renewal: this step failed; it is looked at again on the next poll");
                    }
                }
            }
        }
        self.parts.report.pass_done();
        self.parts.report.touch();
    }

    async fn wallet(&mut self, rule: &RenewRule) -> Result<Arc<NwcWallet>, String> {
        if let Some(w) = self.wallets.get(&rule.name) {
            return Ok(w.clone());
        }
        let uri = rule
            .nwc_uri
            .as_ref()
            .ok_or_else(|| "no NWC wallet configured".to_string())?;
        let w = Arc::new(NwcWallet::new(uri, rule.wallet_timeout)?);
        self.wallets.insert(rule.name.clone(), w.clone());
        Ok(w)
    }

    async fn read_balance(&mut self, rule: &RenewRule, now: DateTime<Utc>) {
        let due = self.balance_read.get(&rule.name).is_none_or(|t| {
            now - *t >= chrono::Duration::from_std(BALANCE_EVERY).unwrap_or_default()
        });
        if !due {
            return;
        }
        self.balance_read.insert(rule.name.clone(), now);
        let Ok(w) = self.wallet(rule).await else {
            return;
        };
        match w.balance_msat().await {
            Ok(msat) => {
                self.parts
                    .report
                    .set_wallet_balance(&rule.name, msat as f64 / 1000.0);
                self.parts.report.touch();
            }
            Err(e) => tracing::warn!(rule = %rule.name, error = %e, "NWC get_balance failed"),
        }
    }

    fn count(&self, ctx: &Ctx<'_>, result: &str) {
        self.parts.report.count(
            &ctx.snap.account,
            &ctx.vm.id,
            &ctx.rule.name,
            ctx.mode(),
            result,
        );
        self.parts.report.touch();
    }

    /// Publishes the VM's renewal state (the failing / gave-up gauges).
    fn show(&self, ctx: &Ctx<'_>, rec: &VmRenewal) {
        let expires = ctx.vm.expires;
        let state = VmState {
            rule: ctx.rule.name.clone(),
            failing: rec.failing(expires),
            gave_up: rec.gave_up_for(expires),
            attempts: if rec.window == expires {
                rec.attempts
            } else {
                0
            },
        };
        if self
            .parts
            .report
            .set_state(&ctx.snap.account, &ctx.vm.id, state)
        {
            self.parts.report.touch();
        }
    }

    async fn save(
        &self,
        ctx: &Ctx<'_>,
        rec: &VmRenewal,
        spend: Option<(&str, i64)>,
    ) -> Result<(), RenewError> {
        self.show(ctx, rec);
        self.parts
            .journal
            .put(&ctx.snap.account, &ctx.vm.id, rec, spend)
            .await?;
        Ok(())
    }

    fn facts(&self, ctx: &Ctx<'_>, summary: String, details: Vec<(String, String)>) -> Facts {
        let mut d = vec![(
            "expires".to_string(),
            ctx.vm.expires.map(fmt_time).unwrap_or_else(|| "-".into()),
        )];
        d.extend(details);
        Facts {
            vm_name: ctx.vm_name(),
            summary,
            details: d,
            next_step: String::new(),
            journal_id: None,
        }
    }

    fn event(&self, ctx: &Ctx<'_>, id: String, kind: EventKind, facts: Facts) {
        self.parts.notifier.event(Event {
            id,
            kind,
            key: ctx.key.clone(),
            facts,
            at: ctx.now,
        });
    }

    fn alert(&self, ctx: &Ctx<'_>, rec: &mut VmRenewal, firing: bool, facts: Facts) {
        if rec.alert_firing == firing {
            return;
        }
        rec.alert_firing = firing;
        rec.alert_for = if firing { ctx.vm.expires } else { None };
        self.parts.notifier.alert(AlertUpdate {
            key: ctx.key.clone(),
            status: if firing {
                AlertStatus::Firing
            } else {
                AlertStatus::Resolved
            },
            facts,
            at: ctx.now,
        });
    }

    /// A one-off problem for this expiry: alert, event and counter once.
    async fn notice(
        &self,
        ctx: &Ctx<'_>,
        rec: &mut VmRenewal,
        kind: EventKind,
        result: &str,
        summary: String,
    ) -> Result<(), RenewError> {
        let expires = ctx.vm.expires;
        if rec.noticed_for == expires && rec.noticed_result.as_deref() == Some(result) {
            return Ok(());
        }
        rec.noticed_for = expires;
        rec.noticed_result = Some(result.to_string());
        tracing::warn!(rule = %ctx.rule.name, account = %ctx.snap.account, vm = %ctx.vm.id,
            result, "renewal: {summary}");
        self.count(ctx, result);
        let facts = self.facts(ctx, summary, Vec::new());
        let seq = rec.next_seq;
        rec.next_seq += 1;
        self.event(
            ctx,
            format!("renew-{}-{}-{seq}-{result}", ctx.snap.account, ctx.vm.id),
            kind,
            facts.clone(),
        );
        if kind != EventKind::InvoiceSent && result != "dry_run" {
            self.alert(ctx, rec, true, facts);
        }
        self.save(ctx, rec, None).await
    }

    /// A try failed: counted, and either retried after the backoff or, with the tries
    /// used up, given up with one alert.
    async fn fail(
        &self,
        ctx: &Ctx<'_>,
        rec: &mut VmRenewal,
        why: String,
    ) -> Result<(), RenewError> {
        rec.failed += 1;
        rec.last_error = Some(why.clone());
        self.count(ctx, "failed");
        if rec.attempts >= ctx.rule.max_attempts {
            tracing::warn!(rule = %ctx.rule.name, account = %ctx.snap.account, vm = %ctx.vm.id,
                attempts = rec.attempts, error = %why,
                "renewal try failed; tries for this expiry used up");
            return self.give_up(ctx, rec).await;
        }
        let wait = planner::backoff(rec.failed, ctx.rule.backoff, ctx.rule.backoff_max);
        let next = ctx.now + dur(wait);
        rec.next_try_at = Some(rec.next_try_at.map_or(next, |t| t.max(next)));
        tracing::warn!(rule = %ctx.rule.name, account = %ctx.snap.account, vm = %ctx.vm.id,
            attempt = rec.attempts, max_attempts = ctx.rule.max_attempts, error = %why,
            next_try = %rec.next_try_at.map(fmt_time).unwrap_or_default(),
            "renewal try failed; retrying after a backoff");
        self.save(ctx, rec, None).await
    }

    /// Stops trying for this expiry: counted and alerted once.
    async fn give_up(&self, ctx: &Ctx<'_>, rec: &mut VmRenewal) -> Result<(), RenewError> {
        if rec.gave_up {
            return Ok(());
        }
        rec.gave_up = true;
        self.count(ctx, "gave_up");
        let why = rec.last_error.clone().unwrap_or_default();
        let facts = Facts {
            next_step: "renew it by hand, or fix the cause and re-arm vpswatch with \
                        POST /api/v1/renewals/clear (docs/renewal.md)"
                .into(),
            ..self.facts(
                ctx,
                format!(
                    "{} renewal tries failed for this expiry; vpswatch stopped trying",
                    rec.attempts
                ),
                vec![
                    (
                        "tries".into(),
                        format!("{} of {}", rec.attempts, ctx.rule.max_attempts),
                    ),
                    ("last error".into(), why),
                ],
            )
        };
        self.alert(ctx, rec, true, facts);
        self.save(ctx, rec, None).await
    }

    async fn vm(&mut self, ctx: &Ctx<'_>) -> Result<(), RenewError> {
        let (mut rec, rearm) = self
            .parts
            .journal
            .vm(ctx.records, &ctx.snap.account, &ctx.vm.id)?;
        let expires = ctx.vm.expires;
        let mut dirty = false;
        if let Some(at) = rearm {
            if rec.rearmed_at.is_none_or(|r| at > r) {
                tracing::info!(account = %ctx.snap.account, vm = %ctx.vm.id,
                    "renewal re-armed by an operator: the tries start afresh");
                rec.reset_tries();
                rec.noticed_for = None;
                rec.noticed_result = None;
                rec.rearmed_at = Some(at);
                dirty = true;
            }
        }
        // Renewed (by vpswatch, the server or a human) since the alert fired.
        if rec.alert_firing
            && rec
                .alert_for
                .is_some_and(|a| expires.is_some_and(|e| e > a))
        {
            let facts = self.facts(ctx, "renewed".into(), Vec::new());
            self.alert(ctx, &mut rec, false, facts);
            dirty = true;
        }
        if rec.attempt.is_some() {
            if dirty {
                self.save(ctx, &rec, None).await?;
            }
            return self.resume(ctx, rec).await;
        }
        if let Some(e) = expires.filter(|e| *e - ctx.now <= dur(ctx.rule.within)) {
            if rec.window != Some(e) {
                rec.enter_window(e);
                dirty = true;
            }
        }
        let input = PlanInput {
            now: ctx.now,
            expires,
            within: ctx.rule.within,
            auto_renewal: ctx.vm.auto_renewal_enabled,
            saved_methods: ctx
                .snap
                .data
                .as_ref()
                .and_then(|d| d.facts.enabled_payment_methods),
            period_seconds: ctx.vm.renewal.as_ref().map(|r| r.period_seconds),
            observed_at: ctx.snap.last_success.unwrap_or(ctx.now),
            last_paid_from: rec.last_paid_from,
            last_paid_at: rec.last_paid_at,
            attempts: if rec.window == expires {
                rec.attempts
            } else {
                0
            },
            max_attempts: ctx.rule.max_attempts,
            next_try_at: rec.next_try_at.filter(|_| rec.window == expires),
        };
        let plan = planner::plan(&input);
        if plan == Plan::Idle && rec.alert_firing {
            let facts = self.facts(ctx, "outside the renewal window".into(), Vec::new());
            self.alert(ctx, &mut rec, false, facts);
            dirty = true;
        }
        if dirty {
            self.save(ctx, &rec, None).await?;
        } else {
            self.show(ctx, &rec);
        }
        match plan {
            Plan::Idle => Ok(()),
            Plan::Wait(reason) => {
                tracing::debug!(account = %ctx.snap.account, vm = %ctx.vm.id, %reason, "renewal waits");
                Ok(())
            }
            Plan::GiveUp => self.give_up(ctx, &mut rec).await,
            Plan::Renew => self.start(ctx, rec).await,
        }
    }

    /// One try: counted first, then quote, guards, invoice, journal; then pay (nwc)
    /// or mail (email). A failure is retried after the backoff, within `max_attempts`.
    async fn start(&mut self, ctx: &Ctx<'_>, mut rec: VmRenewal) -> Result<(), RenewError> {
        if ctx.rule.mode == RenewMode::Server {
            return self.notice(
                ctx,
                &mut rec,
                EventKind::RenewalFailed,
                "server_missed",
                "the provider's auto-renewal has not renewed and the VM expires soon; renew manually"
                    .into(),
            ).await;
        }
        let target = ctx.target();
        if target.is_deprecated()
            && self
                .deprecated_logged
                .insert((ctx.snap.account.clone(), ctx.vm.id.clone()))
        {
            tracing::warn!(account = %ctx.snap.account, vm = %ctx.vm.id,
                "renewal: the VM has no subscription id; renewing through the deprecated \
                 /api/v1/vm/{{id}}/renew and /api/v1/payment/{{id}} endpoints");
        }
        // Counted before any request: a crash or a hung call still uses the try up.
        let previous_next = rec.next_try_at;
        rec.attempts += 1;
        let wait = planner::backoff(rec.attempts, ctx.rule.backoff, ctx.rule.backoff_max);
        rec.next_try_at = Some(ctx.now + dur(wait));
        self.save(ctx, &rec, None).await?;
        match self.try_renew(ctx, &mut rec, target).await {
            Ok(Tried::Invoiced) => Ok(()),
            Ok(Tried::Skipped(recheck)) => {
                rec.attempts = rec.attempts.saturating_sub(1);
                rec.next_try_at = match recheck {
                    Some(w) => Some(ctx.now + dur(w)),
                    None => previous_next,
                };
                self.save(ctx, &rec, None).await
            }
            Err(RenewError::Journal(e)) => Err(RenewError::Journal(e)),
            Err(e) => self.fail(ctx, &mut rec, e.to_string()).await,
        }
    }

    async fn try_renew(
        &mut self,
        ctx: &Ctx<'_>,
        rec: &mut VmRenewal,
        target: RenewTarget<'_>,
    ) -> Result<Tried, RenewError> {
        let Some(expires) = ctx.vm.expires else {
            return Ok(Tried::Skipped(None));
        };
        let recheck = Some(ctx.rule.backoff_max);
        let billing = &ctx.account.billing;
        let intervals = ctx.rule.intervals;
        let quote = billing.quote(target, intervals).await?;
        if !quote.currency.eq_ignore_ascii_case("BTC") {
            self.notice(
                ctx,
                rec,
                EventKind::RenewalBlocked,
                "blocked_invoice",
                format!("the quote is in {:?}, not BTC", quote.currency),
            )
            .await?;
            return Ok(Tried::Skipped(recheck));
        }
        let days = (quote.time as f64 / 86_400.0 / f64::from(intervals)).max(1.0);
        let quote_msat = (btc_amount_to_btc(quote.amount as f64, days, ctx.account.btc_unit) * 1e11)
            .round() as u64;
        if !planner::fits_prepay(Some(expires), ctx.now, quote.time, ctx.vm.max_prepay_days) {
            self.notice(
                ctx,
                rec,
                EventKind::RenewalBlocked,
                "blocked_prepay",
                format!(
                    "{intervals} interval(s) would pass the provider's max_prepay_days ({:?})",
                    ctx.vm.max_prepay_days
                ),
            )
            .await?;
            return Ok(Tried::Skipped(recheck));
        }
        let month = planner::month_key(ctx.now);
        let spent = self.parts.journal.spent(&ctx.snap.account, &month).await?;
        if let Err(why) = planner::check_budget(
            msat_to_sats(quote_msat),
            spent,
            ctx.rule.max_per_renewal_sats,
            ctx.rule.max_per_month_sats,
        ) {
            self.notice(ctx, rec, EventKind::RenewalBlocked, "blocked_budget", why)
                .await?;
            return Ok(Tried::Skipped(recheck));
        }
        if ctx.dry_run(self.parts.global_dry_run) {
            self.notice(
                ctx,
                rec,
                EventKind::RenewalBlocked,
                "dry_run",
                format!(
                    "dry run: would renew {intervals} interval(s) for {} sats (quote only, no invoice)",
                    msat_to_sats(quote_msat)
                ),
            ).await?;
            return Ok(Tried::Skipped(recheck));
        }
        // A renewal paid after this snapshot was taken (the server's, or a human's):
        // the snapshot is stale; wait for the next poll.
        if let RenewTarget::Subscription(sub) = target {
            let observed = ctx.snap.last_success.unwrap_or(ctx.now);
            let pays = billing.subscription_payments(sub).await?;
            if pays
                .iter()
                .any(|p| p.is_paid_renewal() && p.paid_at.is_none_or(|t| t >= observed))
            {
                tracing::info!(account = %ctx.snap.account, vm = %ctx.vm.id,
                    "renewal: a renewal was paid after the last poll; waiting for the next");
                return Ok(Tried::Skipped(None));
            }
        }
        self.fence(&ctx.snap.account, &format!("renew {} invoice", ctx.vm.id))
            .await?;
        let invoice = billing.renew(target, intervals).await?;
        if invoice.is_paid {
            return Ok(Tried::Skipped(None));
        }
        // A fiat-priced plan is converted at the server's rate of the moment: the
        // invoice may differ from the quote by a little; a BTC plan must match exactly.
        let fiat = ctx
            .vm
            .renewal
            .as_ref()
            .is_some_and(|r| !r.price.currency.eq_ignore_ascii_case("BTC"));
        let tolerance = if fiat { quote_msat / 100 } else { 0 };
        let (bolt11, amount_msat, invoice_expires) =
            check_invoice(&invoice, quote_msat, tolerance).map_err(RenewError::Invoice)?;
        let seq = rec.next_seq;
        rec.next_seq += 1;
        rec.last_error = None;
        rec.attempt = Some(Attempt {
            seq,
            rule: ctx.rule.name.clone(),
            mode: ctx.mode().to_string(),
            started_at: ctx.now,
            expires_before: expires,
            intervals,
            payment_id: invoice.id.to_ascii_lowercase(),
            subscription: match target {
                RenewTarget::Subscription(s) => Some(s.to_string()),
                RenewTarget::Vm(_) => None,
            },
            amount_msat,
            invoice_expires,
            bolt11,
            phase: Phase::Invoiced,
            pay_calls: 0,
            next_pay_at: None,
            last_error: None,
            paid_at: None,
            reserved_sats: 0,
            reserved_month: month,
        });
        // Journaled before anything is paid or sent.
        self.save(ctx, rec, None).await?;
        if ctx.rule.mode == RenewMode::Email {
            if let Some(a) = &rec.attempt {
                let facts = self.facts(
                    ctx,
                    format!(
                        "pay this Lightning invoice to renew {} ({} sats)",
                        ctx.vm_name(),
                        msat_to_sats(a.amount_msat)
                    ),
                    vec![
                        (
                            "amount".into(),
                            format!("{} sats", msat_to_sats(a.amount_msat)),
                        ),
                        ("invoice expires".into(), fmt_time(a.invoice_expires)),
                        ("invoice".into(), a.bolt11.clone()),
                    ],
                );
                self.event(
                    ctx,
                    format!("renew-{}-{}-{seq}-invoice", ctx.snap.account, ctx.vm.id),
                    EventKind::InvoiceSent,
                    facts,
                );
                self.count(ctx, "invoice_sent");
            }
            return Ok(Tried::Invoiced);
        }
        self.pay(ctx, rec).await?;
        Ok(Tried::Invoiced)
    }

    /// Sends the journaled invoice to the wallet (phase `invoiced` only).
    async fn pay(&mut self, ctx: &Ctx<'_>, rec: &mut VmRenewal) -> Result<(), RenewError> {
        let Some(mut a) = rec.attempt.clone() else {
            return Ok(());
        };
        let sats = msat_to_sats(a.amount_msat);
        let month = planner::month_key(ctx.now);
        let mut spend = None;
        if a.reserved_sats == 0 {
            let spent = self.parts.journal.spent(&ctx.snap.account, &month).await?;
            if let Err(why) = planner::check_budget(
                sats,
                spent,
                ctx.rule.max_per_renewal_sats,
                ctx.rule.max_per_month_sats,
            ) {
                return self
                    .notice(ctx, rec, EventKind::RenewalBlocked, "blocked_budget", why)
                    .await;
            }
            a.reserved_sats = sats;
            a.reserved_month = month.clone();
            spend = Some(sats as i64);
        }
        let wallet = match self.wallet(ctx.rule).await {
            Ok(w) => w,
            Err(e) => {
                // Nothing was sent: like a refusal, asked again after retry_interval.
                a.last_error = Some(format!("NWC wallet: {e}"));
                a.next_pay_at = Some(ctx.now + dur(ctx.rule.retry_interval));
                rec.attempt = Some(a);
                return self.save(ctx, rec, None).await;
            }
        };
        if let Err(e) = self
            .fence(
                &ctx.snap.account,
                &format!("pay {} invoice {}", ctx.vm.id, a.payment_id),
            )
            .await
        {
            // Nothing was sent: asked again after retry_interval, by whoever owns it then.
            a.last_error = Some(e.to_string());
            a.next_pay_at = Some(ctx.now + dur(ctx.rule.retry_interval));
            rec.attempt = Some(a);
            return self.save(ctx, rec, None).await;
        }
        a.phase = Phase::Paying;
        a.pay_calls += 1;
        rec.attempt = Some(a.clone());
        // Written (with the budget reservation) before the wallet is asked to pay.
        self.save(ctx, rec, spend.map(|d| (a.reserved_month.as_str(), d)))
            .await?;
        tracing::info!(account = %ctx.snap.account, vm = %ctx.vm.id, sats,
            payment = %a.payment_id, "renewal: paying through NWC");
        match wallet.pay(&a.bolt11).await {
            Ok(preimage) => {
                let ok = hex::decode(&preimage)
                    .map(|p| hex::encode(Sha256::digest(p)) == a.payment_id)
                    .unwrap_or(false);
                if !ok {
                    tracing::warn!(vm = %ctx.vm.id, "renewal: the wallet's preimage does not match the invoice");
                }
                // `is_paid` is what counts; look it up now.
                self.lookup(ctx, rec).await.map(|_| ())
            }
            Err(e) if e.certainly_unpaid() => {
                a.phase = Phase::Invoiced;
                a.last_error = Some(e.to_string());
                a.next_pay_at = Some(ctx.now + dur(ctx.rule.retry_interval));
                rec.attempt = Some(a);
                tracing::warn!(account = %ctx.snap.account, vm = %ctx.vm.id, error = %e,
                    "renewal: the wallet did not pay; asking again within limits");
                self.count(ctx, "wallet_refused");
                self.save(ctx, rec, None).await
            }
            Err(e) => {
                // Unknown outcome: never sent again; resolved by `is_paid` or expiry.
                a.last_error = Some(e.to_string());
                rec.attempt = Some(a);
                tracing::warn!(account = %ctx.snap.account, vm = %ctx.vm.id, error = %e,
                    "renewal: no answer from the wallet; following the invoice until it is paid or expires");
                self.count(ctx, "wallet_no_answer");
                self.save(ctx, rec, None).await
            }
        }
    }

    /// Continues the renewal in flight: `is_paid`? expired? pay (again) after a refusal?
    async fn resume(&mut self, ctx: &Ctx<'_>, mut rec: VmRenewal) -> Result<(), RenewError> {
        if !self.lookup(ctx, &mut rec).await? {
            return Ok(());
        }
        let Some(a) = rec.attempt.as_ref() else {
            return Ok(());
        };
        let may_pay = ctx.rule.mode == RenewMode::Nwc
            && a.phase == Phase::Invoiced
            && a.pay_calls < ctx.rule.max_attempts
            && a.next_pay_at.is_none_or(|t| ctx.now >= t)
            && !ctx.dry_run(self.parts.global_dry_run);
        if may_pay {
            return self.pay(ctx, &mut rec).await;
        }
        Ok(())
    }

    /// Looks the invoice in flight up: records `is_paid` (then confirms the expiry) or
    /// its expiry unpaid (a failed try). True when the invoice is still open.
    async fn lookup(&mut self, ctx: &Ctx<'_>, rec: &mut VmRenewal) -> Result<bool, RenewError> {
        let Some(mut a) = rec.attempt.clone() else {
            return Ok(false);
        };
        if a.phase == Phase::Paid {
            return self.confirm(ctx, rec).await.map(|_| false);
        }
        let p = ctx
            .account
            .billing
            .payment(attempt_target(&a, &ctx.vm.id), &a.payment_id)
            .await?;
        if let Some(p) = p.as_ref().filter(|p| p.is_paid) {
            let sats = msat_to_sats(a.amount_msat);
            // A human paid (email mode): count it against the month too.
            let spend = (a.reserved_sats == 0).then_some(sats as i64);
            if a.reserved_sats == 0 {
                a.reserved_sats = sats;
            }
            a.phase = Phase::Paid;
            a.paid_at = Some(p.paid_at.unwrap_or(ctx.now));
            rec.attempt = Some(a.clone());
            rec.last_paid_from = Some(a.expires_before);
            rec.last_paid_at = a.paid_at;
            rec.last_error = None;
            rec.gave_up = false;
            let facts = self.facts(
                ctx,
                format!("renewal paid: {sats} sats for {} interval(s)", a.intervals),
                vec![("payment".into(), a.payment_id.clone())],
            );
            self.alert(ctx, rec, false, facts.clone());
            self.save(ctx, rec, spend.map(|d| (a.reserved_month.as_str(), d)))
                .await?;
            self.event(
                ctx,
                format!("renew-{}-{}-{}-paid", ctx.snap.account, ctx.vm.id, a.seq),
                EventKind::RenewalPaid,
                facts,
            );
            self.parts.report.paid(&ctx.snap.account, &ctx.vm.id, sats);
            self.count(ctx, "paid");
            tracing::info!(account = %ctx.snap.account, vm = %ctx.vm.id, sats, "renewal paid");
            return self.confirm(ctx, rec).await.map(|_| false);
        }
        let invoice_expires = p.and_then(|p| p.expires).unwrap_or(a.invoice_expires);
        if invoice_expires <= ctx.now {
            // Nobody paid it: release the reservation; the try failed.
            let release = (a.reserved_sats > 0).then(|| -(a.reserved_sats as i64));
            rec.attempt = None;
            rec.enter_window(a.expires_before);
            let why = a
                .last_error
                .clone()
                .unwrap_or_else(|| "the invoice expired unpaid".into());
            self.parts
                .journal
                .put(
                    &ctx.snap.account,
                    &ctx.vm.id,
                    rec,
                    release.map(|d| (a.reserved_month.as_str(), d)),
                )
                .await?;
            self.fail(ctx, rec, format!("renewal invoice {}: {why}", a.payment_id))
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// After `is_paid`: done once a poll shows the new expiry.
    async fn confirm(&self, ctx: &Ctx<'_>, rec: &mut VmRenewal) -> Result<(), RenewError> {
        let Some(a) = rec.attempt.clone() else {
            return Ok(());
        };
        let observed = ctx.snap.last_success.unwrap_or(ctx.now);
        if ctx.vm.expires.is_some_and(|e| e > a.expires_before) {
            tracing::info!(account = %ctx.snap.account, vm = %ctx.vm.id,
                expires = ?ctx.vm.expires, "renewal confirmed: the expiry moved");
            rec.attempt = None;
            return self.save(ctx, rec, None).await;
        }
        let paid_at = a.paid_at.unwrap_or(ctx.now);
        if observed - paid_at > dur(CONFIRM_PATIENCE) {
            let facts = self.facts(
                ctx,
                "the renewal is paid but the provider has not extended the expiry".into(),
                vec![("payment".into(), a.payment_id.clone())],
            );
            self.alert(ctx, rec, true, facts);
            return self.save(ctx, rec, None).await;
        }
        Ok(())
    }
}

fn dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Decodes the invoice: a valid BOLT11 whose payment hash is the payment id and whose
/// amount is the quote (within `tolerance_msat`; the budget is checked again with the
/// invoice's own amount before paying). Returns (bolt11, amount in msat, invoice expiry).
fn check_invoice(
    p: &billing::Payment,
    quote_msat: u64,
    tolerance_msat: u64,
) -> Result<(String, u64, DateTime<Utc>), String> {
    let text = p
        .bolt11()
        .ok_or_else(|| "the renewal has no Lightning invoice".to_string())?;
    let inv = Bolt11Invoice::from_str(text.trim())
        .map_err(|e| format!("the invoice does not decode as BOLT11: {e}"))?;
    let msat = inv
        .amount_milli_satoshis()
        .ok_or_else(|| "the invoice has no amount".to_string())?;
    let hash = hex::encode(AsRef::<[u8]>::as_ref(inv.payment_hash()));
    if !hash.eq_ignore_ascii_case(&p.id) {
        return Err(format!(
            "the invoice's payment hash differs from the payment id {}",
            p.id
        ));
    }
    if msat.abs_diff(quote_msat) > tolerance_msat {
        return Err(format!(
            "the invoice asks {msat} msat but the quote said {quote_msat} msat"
        ));
    }
    let expires_at = inv
        .expires_at()
        .and_then(|d| DateTime::from_timestamp(d.as_secs().min(i64::MAX as u64) as i64, 0))
        .or(p.expires)
        .ok_or_else(|| "the invoice's expiry is out of range".to_string())?;
    Ok((text.trim().to_string(), msat, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn payment(amount_msat: u64, id_override: Option<&str>) -> (billing::Payment, String) {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
            .single()
            .expect("t");
        let (hash, _, bolt11) = vpswatch_sim::lightning::LightningNode::generate()
            .mint(amount_msat, t, "test")
            .expect("mint");
        let p = billing::Payment {
            id: id_override.map_or(hash.clone(), str::to_string),
            amount: amount_msat,
            currency: Some("BTC".into()),
            expires: None,
            is_paid: false,
            paid_at: None,
            time: Some(86_400),
            payment_type: None,
            data: serde_json::json!({ "lightning": bolt11 }),
        };
        (p, hash)
    }

    #[test]
    fn invoice_must_match_id_and_quote() {
        let (p, _) = payment(500_000, None);
        let (_, msat, exp) = check_invoice(&p, 500_000, 0).expect("matches");
        assert_eq!(msat, 500_000);
        assert_eq!(exp.timestamp() % 600, 0, "created + 600 s");
        assert!(check_invoice(&p, 499_999, 0).is_err(), "amount differs");
        assert!(
            check_invoice(&p, 499_000, 5_000).is_ok(),
            "within tolerance"
        );
        let (other, _) = payment(500_000, Some(&"ab".repeat(32)));
        assert!(
            check_invoice(&other, 500_000, 0).is_err(),
            "hash differs from id"
        );
        let mut garbage = p.clone();
        garbage.data = serde_json::json!({ "lightning": "lnbc1notaninvoice" });
        assert!(check_invoice(&garbage, 500_000, 0).is_err());
    }
}
