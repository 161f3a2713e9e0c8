//! What the renewal task shows on /metrics: renewals by rule, mode and result (every
//! result zero-valued from the first pass that sees a VM the rule matches, so alerts and
//! `increase()` work from the start), satoshis paid, each VM's renewal state (failing,
//! gave up, tries used) and each NWC wallet's balance. A family source of its own: the
//! encoder re-renders on every [`RenewReport::touch`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::metrics::defs;
use tokio::sync::watch;

use crate::metrics::families::FamilySet;
use crate::metrics::FamilySource;

/// Every value of the `result` label (docs/renewal.md explains each).
pub const RESULTS: &[&str] = &[
    "paid",
    "failed",
    "gave_up",
    "blocked_budget",
    "blocked_prepay",
    "blocked_invoice",
    "dry_run",
    "invoice_sent",
    "wallet_refused",
    "wallet_no_answer",
    "server_missed",
];

/// One VM's renewal as of the last pass.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VmState {
    pub rule: String,
    pub failing: bool,
    pub gave_up: bool,
    pub attempts: u32,
}

#[derive(Debug, Default, Clone)]
struct Data {
    /// (account, vm, rule, mode, result) → count.
    renewals: BTreeMap<(String, String, String, String, String), u64>,
    /// (account, vm) → sats.
    paid_sats: BTreeMap<(String, String), u64>,
    /// (account, vm) → state.
    states: BTreeMap<(String, String), VmState>,
    /// Wallet (rule name) → balance in sats.
    wallets: BTreeMap<String, f64>,
}

/// (mode, result, count) of one VM's renewals.
pub type RenewResult = (String, String, u64);

/// A copy of the renewal counters for the status page.
#[derive(Debug, Default, Clone)]
pub struct RenewSummary {
    /// (account, vm) → (mode, result, count).
    pub results: BTreeMap<(String, String), Vec<RenewResult>>,
    /// NWC wallet (rule name) → balance in sats.
    pub wallets: BTreeMap<String, f64>,
    /// (account, vm) → tries, failing, gave up, as of the last pass.
    pub states: BTreeMap<(String, String), VmState>,
}

/// Renewal counters; the provider label is always `lnvps`.
#[derive(Debug)]
pub struct RenewReport {
    data: Mutex<Data>,
    generation: watch::Sender<u64>,
    passes: AtomicU64,
}

impl Default for RenewReport {
    fn default() -> Self {
        Self {
            data: Mutex::default(),
            generation: watch::channel(0).0,
            passes: AtomicU64::new(0),
        }
    }
}

impl RenewReport {
    fn with<R>(&self, f: impl FnOnce(&mut Data) -> R) -> R {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut d)
    }

    /// A VM the rule matches: every result counter exists (at 0 until counted).
    pub fn track(&self, account: &str, vm: &str, rule: &str, mode: &str) {
        self.with(|d| {
            for r in RESULTS {
                d.renewals
                    .entry((
                        account.into(),
                        vm.into(),
                        rule.into(),
                        mode.into(),
                        (*r).into(),
                    ))
                    .or_default();
            }
        });
    }

    pub fn count(&self, account: &str, vm: &str, rule: &str, mode: &str, result: &str) {
        self.with(|d| {
            *d.renewals
                .entry((
                    account.into(),
                    vm.into(),
                    rule.into(),
                    mode.into(),
                    result.into(),
                ))
                .or_default() += 1
        });
    }

    /// Sets the VM's state; true when it changed.
    pub fn set_state(&self, account: &str, vm: &str, state: VmState) -> bool {
        self.with(|d| {
            let slot = d.states.entry((account.into(), vm.into())).or_default();
            let changed = *slot != state;
            *slot = state;
            changed
        })
    }

    pub fn paid(&self, account: &str, vm: &str, sats: u64) {
        self.with(|d| *d.paid_sats.entry((account.into(), vm.into())).or_default() += sats);
    }

    pub fn set_wallet_balance(&self, wallet: &str, sats: f64) {
        self.with(|d| d.wallets.insert(wallet.into(), sats));
    }

    /// A counter's value, summed over rules (tests).
    pub fn renewals(&self, account: &str, vm: &str, mode: &str, result: &str) -> u64 {
        self.with(|d| {
            d.renewals
                .iter()
                .filter(|((a, v, _, m, r), _)| a == account && v == vm && m == mode && r == result)
                .map(|(_, n)| *n)
                .sum()
        })
    }

    /// A VM's state as of the last pass (tests).
    pub fn state(&self, account: &str, vm: &str) -> Option<VmState> {
        self.with(|d| d.states.get(&(account.into(), vm.into())).cloned())
    }

    /// Passes finished so far: a test waits for one after changing something.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }

    pub(super) fn pass_done(&self) {
        self.passes.fetch_add(1, Ordering::SeqCst);
    }

    /// Asks the encoder to re-render.
    pub fn touch(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Renewal results per (account, vm) as (mode, result, count), and each NWC
    /// wallet's balance in sats: what the status page shows.
    pub fn summary(&self) -> RenewSummary {
        self.with(|d| {
            let mut results: BTreeMap<(String, String), Vec<RenewResult>> = BTreeMap::new();
            // Every result is exported from the start at 0; only what happened is shown.
            for ((account, vm, _rule, mode, result), n) in
                d.renewals.iter().filter(|(_, n)| **n > 0)
            {
                results
                    .entry((account.clone(), vm.clone()))
                    .or_default()
                    .push((mode.clone(), result.clone(), *n));
            }
            RenewSummary {
                results,
                wallets: d.wallets.clone(),
                states: d.states.clone(),
            }
        })
    }

    pub fn render(&self, set: &mut FamilySet) {
        let d = self.with(|d| d.clone());
        for ((account, vm, rule, mode, result), n) in &d.renewals {
            set.counter(
                &defs::RENEWALS,
                &["lnvps", account, vm, rule, mode, result],
                *n as f64,
            );
        }
        for ((account, vm), sats) in &d.paid_sats {
            set.counter(
                &defs::RENEWAL_PAID_SATS,
                &["lnvps", account, vm],
                *sats as f64,
            );
        }
        for ((account, vm), s) in &d.states {
            let labels = ["lnvps", account.as_str(), vm.as_str(), s.rule.as_str()];
            set.gauge(
                &defs::VPS_RENEWAL_FAILING,
                &labels,
                f64::from(u8::from(s.failing)),
            );
            set.gauge(
                &defs::VPS_RENEWAL_GAVE_UP,
                &labels,
                f64::from(u8::from(s.gave_up)),
            );
            set.gauge(&defs::RENEWAL_ATTEMPTS, &labels, f64::from(s.attempts));
        }
        for (wallet, sats) in &d.wallets {
            set.gauge(&defs::VPS_WALLET_BALANCE, &["nwc", wallet, "sat"], *sats);
        }
    }
}

impl FamilySource for RenewReport {
    fn render(&self, set: &mut FamilySet) {
        RenewReport::render(self, set);
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
