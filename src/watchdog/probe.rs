//! TCP liveness probes: connect to each running VM's public IPv4 on its service port
//! (22 for LNVPS Linux VMs, 3389 for StableVPS Windows VMs, configurable) with a timeout.
//!
//! The provider saying "running" does not mean the machine answers; a hung VM is running
//! with a dead port. Probes run on their own interval, independent of polls, and only for
//! VMs the provider reports running, so `vps_probe_success == 0` always means "running but
//! unreachable", never "stopped on purpose".

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::defs;
use crate::metrics::families::{bool_value, FamilySet};
use crate::metrics::FamilySource;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::SharedClock;
use vpswatch_model::snapshot::SnapshotStore;

/// Probes in flight at once.
const CONCURRENCY: usize = 64;

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub port: u16,
    /// The account's (or provider's) probe port, as opposed to one a rule added.
    pub default: bool,
    pub success: bool,
    /// Time to connect, or to give up.
    pub duration: Duration,
    pub at: DateTime<Utc>,
}

/// (provider, account, vm id).
pub type VmKey = (ProviderKind, String, String);

/// The latest round of probe results, replaced as a whole after each round.
pub struct ProbeStore {
    /// One result per probed port of each VM.
    results: ArcSwap<HashMap<VmKey, Vec<ProbeResult>>>,
    generation: watch::Sender<u64>,
}

impl Default for ProbeStore {
    fn default() -> Self {
        Self {
            results: ArcSwap::from_pointee(HashMap::new()),
            generation: watch::channel(0).0,
        }
    }
}

impl ProbeStore {
    pub fn latest(&self) -> Arc<HashMap<VmKey, Vec<ProbeResult>>> {
        self.results.load_full()
    }

    pub fn publish(&self, results: HashMap<VmKey, Vec<ProbeResult>>) {
        self.results.store(Arc::new(results));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever a round is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Port per (provider, account); accounts not listed use `default_ports`.
    pub account_ports: HashMap<(ProviderKind, String), u16>,
    pub default_ports: HashMap<ProviderKind, u16>,
    /// Further ports rules ask for, on the VMs their selectors match.
    pub rule_ports: Vec<(crate::watchdog::selector::Selector, u16)>,
    /// Per-VM ports, hosts and exclusions (`[[probes.targets]]`).
    pub targets: super::probe_targets::ProbeTargets,
}

impl ProbeSettings {
    fn port_for(&self, provider: ProviderKind, account: &str) -> u16 {
        self.account_ports
            .get(&(provider, account.to_string()))
            .or_else(|| self.default_ports.get(&provider))
            .copied()
            .unwrap_or_else(|| vpswatch_providers::module(provider).default_probe_port())
    }
}

/// Connects once; success means the TCP handshake completed within `timeout`.
pub async fn probe_tcp(ip: Ipv4Addr, port: u16, timeout: Duration) -> (bool, Duration) {
    let started = Instant::now();
    let addr = SocketAddr::from((ip, port));
    let ok = matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    );
    (ok, started.elapsed())
}

/// One probe of a round: the VM, where to connect, the port, and whether it is the VM's
/// own target (as opposed to a port a rule added).
type ProbeTarget = (VmKey, Addr, u16, bool);

/// Where one probe connects: the VM's IPv4 or a configured host (IP or DNS name).
#[derive(Debug, Clone)]
enum Addr {
    Ip(Ipv4Addr),
    Host(String),
}

async fn probe_addr(addr: &Addr, port: u16, timeout: Duration) -> (bool, Duration) {
    match addr {
        Addr::Ip(ip) => probe_tcp(*ip, port, timeout).await,
        Addr::Host(h) => {
            let started = Instant::now();
            // The name is resolved inside the timeout: a slow resolver is a failed probe.
            let ok = matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect((h.as_str(), port)))
                    .await,
                Ok(Ok(_))
            );
            (ok, started.elapsed())
        }
    }
}

/// The targets of one round: every running VM in the current snapshots, on its own
/// target (`[[probes.targets]]`, else its account's port on its IPv4) and on every port a
/// matching rule asks for; plus the VMs excluded from probing.
fn targets(store: &SnapshotStore, settings: &ProbeSettings) -> (Vec<ProbeTarget>, Vec<VmKey>) {
    let mut out = Vec::new();
    let mut excluded = Vec::new();
    for snap in store.all() {
        let Some(data) = &snap.data else { continue };
        let account_port = settings.port_for(snap.provider, &snap.account);
        for vm in data.vms.iter().filter(|v| v.state.is_running()) {
            let key = (snap.provider, snap.account.clone(), vm.id.clone());
            let target = crate::watchdog::selector::Target {
                provider: snap.provider,
                account: &snap.account,
                vm: Some(&vm.id),
                vm_name: Some(&vm.name),
            };
            let (port, host) = match settings.targets.decide(target) {
                Some(super::probe_targets::Decision::Excluded) => {
                    excluded.push(key);
                    continue;
                }
                Some(super::probe_targets::Decision::Probe { port, host }) => {
                    (port.unwrap_or(account_port), host.clone())
                }
                None => (account_port, None),
            };
            let ip = match (host, vm.ipv4) {
                (Some(h), _) => Addr::Host(h),
                (None, Some(ip)) => Addr::Ip(ip),
                (None, None) => continue,
            };
            out.push((key.clone(), ip.clone(), port, true));
            let mut extra: Vec<u16> = settings
                .rule_ports
                .iter()
                .filter(|(sel, p)| *p != port && sel.matches(target))
                .map(|(_, p)| *p)
                .collect();
            extra.sort_unstable();
            extra.dedup();
            out.extend(
                extra
                    .into_iter()
                    .map(|p| (key.clone(), ip.clone(), p, false)),
            );
        }
    }
    (out, excluded)
}

/// Probes every target once and returns the results.
pub async fn run_round(
    store: &SnapshotStore,
    settings: &ProbeSettings,
    clock: &SharedClock,
) -> HashMap<VmKey, Vec<ProbeResult>> {
    let timeout = settings.timeout;
    let (targets, excluded) = targets(store, settings);
    let results: Vec<(VmKey, ProbeResult)> = stream::iter(targets)
        .map(|(key, addr, port, default)| async move {
            let (success, duration) = probe_addr(&addr, port, timeout).await;
            (key, port, default, success, duration)
        })
        .buffer_unordered(CONCURRENCY)
        .map(|(key, port, default, success, duration)| {
            let result = ProbeResult {
                port,
                default,
                success,
                duration,
                at: clock.now(),
            };
            (key, result)
        })
        .collect()
        .await;
    // An excluded VM is present with no results: "not probed by configuration".
    let mut by_vm: HashMap<VmKey, Vec<ProbeResult>> =
        excluded.into_iter().map(|k| (k, Vec::new())).collect();
    for (key, r) in results {
        by_vm.entry(key).or_default().push(r);
    }
    for v in by_vm.values_mut() {
        v.sort_by_key(|r| r.port);
    }
    by_vm
}

/// Probes on `settings.interval` until cancelled. The first round waits for data.
pub async fn run(
    store: Arc<SnapshotStore>,
    probes: Arc<ProbeStore>,
    settings: ProbeSettings,
    clock: SharedClock,
    cancel: CancellationToken,
) {
    let mut changes = store.subscribe();
    loop {
        let started = Instant::now();
        let results = run_round(&store, &settings, &clock).await;
        probes.publish(results);
        let wait = settings.interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // Before the first data arrives there is nothing to probe: start as soon as
            // a snapshot appears instead of waiting a whole interval.
            r = changes.changed(), if probes.latest().is_empty() => if r.is_err() { return },
        }
    }
}

impl FamilySource for ProbeStore {
    fn render(&self, set: &mut FamilySet) {
        add_probes(set, &self.latest());
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        ProbeStore::subscribe(self)
    }
}

/// Adds the latest probe results (only for VMs still in a snapshot).
fn add_probes(set: &mut FamilySet, probes: &HashMap<VmKey, Vec<ProbeResult>>) {
    let mut rows: Vec<_> = probes
        .iter()
        .flat_map(|(k, rs)| rs.iter().map(move |r| (k, r)))
        .collect();
    rows.sort_by(|a, b| (a.0, a.1.port).cmp(&(b.0, b.1.port)));
    for ((provider, account, vm), r) in rows {
        let port = r.port.to_string();
        let labels = [
            provider.as_str(),
            account.as_str(),
            vm.as_str(),
            port.as_str(),
        ];
        set.gauge(&defs::VPS_PROBE_SUCCESS, &labels, bool_value(r.success));
        set.gauge(&defs::VPS_PROBE_DURATION, &labels, r.duration.as_secs_f64());
    }
}
