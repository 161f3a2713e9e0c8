//! What the renewal task shows on /metrics: renewals by mode and result, satoshis paid,
//! and each NWC wallet's balance. A family source of its own: the encoder re-renders on
//! every [`RenewReport::touch`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::metrics::defs;
use tokio::sync::watch;

use crate::metrics::families::FamilySet;
use crate::metrics::FamilySource;

#[derive(Debug, Default, Clone)]
struct Data {
    /// (account, vm, mode, result) → count.
    renewals: BTreeMap<(String, String, String, String), u64>,
    /// (account, vm) → sats.
    paid_sats: BTreeMap<(String, String), u64>,
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
}

/// Renewal counters; the provider label is always `lnvps`.
#[derive(Debug)]
pub struct RenewReport {
    data: Mutex<Data>,
    generation: watch::Sender<u64>,
}

impl Default for RenewReport {
    fn default() -> Self {
        Self {
            data: Mutex::default(),
            generation: watch::channel(0).0,
        }
    }
}

impl RenewReport {
    fn with<R>(&self, f: impl FnOnce(&mut Data) -> R) -> R {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut d)
    }

    pub fn count(&self, account: &str, vm: &str, mode: &str, result: &str) {
        self.with(|d| {
            *d.renewals
                .entry((account.into(), vm.into(), mode.into(), result.into()))
                .or_default() += 1
        });
    }

    pub fn paid(&self, account: &str, vm: &str, sats: u64) {
        self.with(|d| *d.paid_sats.entry((account.into(), vm.into())).or_default() += sats);
    }

    pub fn set_wallet_balance(&self, wallet: &str, sats: f64) {
        self.with(|d| d.wallets.insert(wallet.into(), sats));
    }

    /// A counter's value (tests).
    pub fn renewals(&self, account: &str, vm: &str, mode: &str, result: &str) -> u64 {
        self.with(|d| {
            d.renewals
                .get(&(account.into(), vm.into(), mode.into(), result.into()))
                .copied()
                .unwrap_or(0)
        })
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
            for ((account, vm, mode, result), n) in &d.renewals {
                results
                    .entry((account.clone(), vm.clone()))
                    .or_default()
                    .push((mode.clone(), result.clone(), *n));
            }
            RenewSummary {
                results,
                wallets: d.wallets.clone(),
            }
        })
    }

    pub fn render(&self, set: &mut FamilySet) {
        let d = self.with(|d| d.clone());
        for ((account, vm, mode, result), n) in &d.renewals {
            set.counter(
                &defs::RENEWALS,
                &["lnvps", account, vm, mode, result],
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
