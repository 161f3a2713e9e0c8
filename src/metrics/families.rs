//! Snapshots → metric families. Rebuilt from scratch on every encode, so a VM (or label
//! value) that is gone upstream is gone from /metrics too: nothing to reset or expire.

use std::collections::HashMap;

use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::defs::{self, Kind, MetricDef};
use crate::clock::unix_seconds;
use crate::snapshot::AccountSnapshot;

/// Families under construction, keyed by name.
#[derive(Default)]
pub struct FamilySet {
    families: HashMap<&'static str, MetricFamily>,
}

impl FamilySet {
    /// Adds one gauge sample. `labels` are the values for `def.labels`, in order.
    pub fn gauge(&mut self, def: &'static MetricDef, labels: &[&str], value: f64) {
        debug_assert_eq!(def.kind, Kind::Gauge);
        debug_assert_eq!(def.labels.len(), labels.len(), "{}", def.name);
        let fam = self
            .families
            .entry(def.name)
            .or_insert_with(|| new_family(def));
        let mut m = Metric::default();
        m.set_label(
            def.labels
                .iter()
                .zip(labels)
                .map(|(n, v)| {
                    let mut lp = LabelPair::default();
                    lp.set_name((*n).to_string());
                    lp.set_value((*v).to_string());
                    lp
                })
                .collect(),
        );
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        fam.mut_metric().push(m);
    }

    /// Adds families gathered from a registry (self-metrics counters and histograms).
    pub fn extend(&mut self, gathered: Vec<MetricFamily>) {
        for f in gathered {
            let Some(def) = defs::ALL.iter().find(|d| d.name == f.name()) else {
                continue;
            };
            self.families.insert(def.name, f);
        }
    }

    /// Families in the declared order; empty families are left out.
    pub fn into_sorted(mut self) -> Vec<MetricFamily> {
        defs::ALL
            .iter()
            .filter_map(|d| self.families.remove(d.name))
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

fn new_family(def: &MetricDef) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(def.name.to_string());
    f.set_help(def.help.to_string());
    f.set_field_type(match def.kind {
        Kind::Gauge => MetricType::GAUGE,
        Kind::Counter => MetricType::COUNTER,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    f
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Adds the per-VM and per-account families of one account, plus its poll health.
pub fn add_account(set: &mut FamilySet, snap: &AccountSnapshot) {
    let provider = snap.provider.as_str();
    let account = snap.account.as_str();
    let acc = [provider, account];

    set.gauge(&defs::PROVIDER_UP, &acc, bool_value(snap.is_up()));
    set.gauge(
        &defs::PROVIDER_LAST_SUCCESS,
        &acc,
        snap.last_success.map_or(0.0, unix_seconds),
    );
    set.gauge(
        &defs::PROVIDER_CONSECUTIVE_FAILURES,
        &acc,
        f64::from(snap.consecutive_failures),
    );
    if let Some(d) = snap.last_poll_duration {
        set.gauge(&defs::POLL_DURATION, &acc, d.as_secs_f64());
    }

    let Some(data) = &snap.data else { return };
    if let Some(v) = data.facts.email_verified {
        set.gauge(&defs::VPS_ACCOUNT_EMAIL_VERIFIED, &acc, bool_value(v));
    }
    if let Some(n) = data.facts.enabled_payment_methods {
        set.gauge(&defs::VPS_ACCOUNT_PAYMENT_METHODS, &acc, f64::from(n));
    }

    for vm in &data.vms {
        let id = vm.id.as_str();
        let l = [provider, account, id];
        let ipv4 = vm.ipv4.map(|a| a.to_string()).unwrap_or_default();
        set.gauge(
            &defs::VPS_INFO,
            &[
                provider,
                account,
                id,
                &vm.name,
                &vm.plan,
                &vm.location,
                &vm.image,
                &ipv4,
            ],
            1.0,
        );
        let current = vm.state.label();
        let mut current_known = false;
        for s in snap.provider.known_states() {
            let is = s.label() == current;
            current_known |= is;
            set.gauge(
                &defs::VPS_STATE,
                &[provider, account, id, s.label()],
                bool_value(is),
            );
        }
        if !current_known {
            set.gauge(&defs::VPS_STATE, &[provider, account, id, current], 1.0);
        }
        set.gauge(&defs::VPS_UP, &l, bool_value(vm.state.is_running()));
        if let Some(t) = vm.expires {
            set.gauge(&defs::VPS_EXPIRY, &l, unix_seconds(t));
        }
        if let Some(t) = vm.deleting_on {
            set.gauge(&defs::VPS_DELETION, &l, unix_seconds(t));
        }
        if let Some(b) = vm.auto_renewal_enabled {
            set.gauge(&defs::VPS_AUTO_RENEWAL, &l, bool_value(b));
        }
        if let Some(r) = &vm.renewal {
            set.gauge(
                &defs::VPS_RENEWAL_PRICE,
                &[provider, account, id, &r.price.currency],
                r.price.amount,
            );
            set.gauge(&defs::VPS_RENEWAL_PERIOD, &l, r.period_seconds);
        }
        for (def, v) in [
            (&defs::VPS_CPUS, vm.cpus),
            (&defs::VPS_MEMORY, vm.memory_bytes),
            (&defs::VPS_DISK, vm.disk_bytes),
            (&defs::VPS_UPTIME, vm.uptime_seconds),
        ] {
            if let Some(v) = v {
                set.gauge(def, &l, v);
            }
        }
        if let Some(u) = &vm.usage {
            for (def, v) in [
                (&defs::VPS_CPU_USAGE, u.cpu_ratio),
                (&defs::VPS_MEMORY_USAGE, u.memory_bytes),
                (&defs::VPS_NET_RX, u.network_receive_bytes_per_second),
                (&defs::VPS_NET_TX, u.network_transmit_bytes_per_second),
                (&defs::VPS_DISK_READ, u.disk_read_bytes_per_second),
                (&defs::VPS_DISK_WRITE, u.disk_write_bytes_per_second),
                (&defs::VPS_USAGE_TIMESTAMP, unix_seconds(u.at)),
            ] {
                set.gauge(def, &l, v);
            }
        }
        set.gauge(
            &defs::VPS_STATUS_TIMESTAMP,
            &l,
            vm.status_time.map_or(0.0, unix_seconds),
        );
    }
}
