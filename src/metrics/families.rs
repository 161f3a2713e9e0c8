//! Snapshots → text exposition. Rebuilt from scratch on every encode, so a VM (or label
//! value) that is gone upstream is gone from /metrics too: nothing to reset or expire.
//!
//! Samples are written straight into one text buffer per family (text format 0.0.4)
//! instead of building protobuf-shaped objects first: with 1,000 VMs that is ~30k
//! samples, and the intermediate objects would cost tens of MiB of short-lived
//! allocations per poll for nothing.

use std::fmt::Write as _;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

use super::chunked::{ChunkedText, Exposition};
use super::defs::{self, Kind, MetricDef};
use std::collections::HashMap;
use std::sync::OnceLock;
use vpswatch_model::clock::unix_seconds;
use vpswatch_model::snapshot::AccountSnapshot;

/// Families under construction, one chunked text buffer each, in declaration order.
pub struct FamilySet {
    bodies: Vec<ChunkedText>,
    /// One sample line at a time, reused so formatting allocates nothing per sample.
    line: String,
}

impl Default for FamilySet {
    fn default() -> Self {
        Self {
            bodies: (0..defs::ALL.len())
                .map(|_| ChunkedText::default())
                .collect(),
            line: String::with_capacity(256),
        }
    }
}

/// Position of a family in [`defs::ALL`]: looked up once per sample, so a map instead
/// of a scan over ~70 names.
fn index_of(name: &str) -> Option<usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            defs::ALL
                .iter()
                .enumerate()
                .map(|(i, d)| (d.name, i))
                .collect()
        })
        .get(name)
        .copied()
}

/// Escapes a label value (text format: backslash, double quote, newline).
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

impl FamilySet {
    /// Adds one gauge sample. `labels` are the values for `def.labels`, in order.
    pub fn gauge(&mut self, def: &'static MetricDef, labels: &[&str], value: f64) {
        debug_assert_eq!(def.kind, Kind::Gauge);
        self.sample(def, labels, value);
    }

    /// Adds one counter sample.
    pub fn counter(&mut self, def: &'static MetricDef, labels: &[&str], value: f64) {
        debug_assert_eq!(def.kind, Kind::Counter);
        self.sample(def, labels, value);
    }

    fn sample(&mut self, def: &'static MetricDef, labels: &[&str], value: f64) {
        debug_assert_eq!(def.labels.len(), labels.len(), "{}", def.name);
        let Some(i) = index_of(def.name) else { return };
        let out = &mut self.line;
        out.clear();
        out.push_str(def.name);
        if !labels.is_empty() {
            out.push('{');
            for (n, (name, v)) in def.labels.iter().zip(labels).enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                push_label_value(out, v);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        push_value(out, value);
        out.push('\n');
        self.bodies[i].push_str(&self.line);
    }

    /// Adds families gathered from a registry (self-metrics counters and histograms),
    /// encoded by the prometheus crate's text encoder.
    pub fn extend(&mut self, gathered: Vec<MetricFamily>) {
        for f in gathered {
            let Some(i) = index_of(f.name()) else {
                continue;
            };
            let mut buf = Vec::new();
            if TextEncoder::new()
                .encode(std::slice::from_ref(&f), &mut buf)
                .is_ok()
            {
                // The encoder writes HELP/TYPE itself: keep only the samples.
                let text = String::from_utf8_lossy(&buf);
                for line in text.lines().filter(|l| !l.starts_with('#')) {
                    self.bodies[i].push_str(line);
                    self.bodies[i].push_str("\n");
                }
            }
        }
    }

    /// The whole exposition; families without samples are left out. Each family's
    /// chunks are freed as soon as they are copied, so the peak stays near one copy.
    pub fn render(self) -> Exposition {
        let headers = |def: &MetricDef| 2 * def.name.len() + def.help.len() + 32;
        let expected: usize = defs::ALL
            .iter()
            .zip(&self.bodies)
            .filter(|(_, body)| !body.is_empty())
            .map(|(def, body)| headers(def) + body.len())
            .sum();
        let mut out = ChunkedText::expecting(expected);
        for (def, body) in defs::ALL.iter().zip(self.bodies) {
            if body.is_empty() {
                continue;
            }
            out.push_str("# HELP ");
            out.push_str(def.name);
            out.push_str(" ");
            out.push_str(&def.help.replace('\\', "\\\\").replace('\n', "\\n"));
            out.push_str("\n# TYPE ");
            out.push_str(def.name);
            out.push_str(" ");
            out.push_str(def.kind.as_str());
            out.push_str("\n");
            out.append(body);
        }
        out.finish()
    }
}

pub fn bool_value(b: bool) -> f64 {
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
    if let Some(enabled) = snap.actions_enabled {
        set.gauge(&defs::VPS_ACTIONS_ENABLED, &acc, bool_value(enabled));
    }

    let Some(data) = &snap.data else { return };
    if let Some(v) = data.facts.email_verified {
        set.gauge(&defs::VPS_ACCOUNT_EMAIL_VERIFIED, &acc, bool_value(v));
    }
    if let Some(n) = data.facts.enabled_payment_methods {
        set.gauge(&defs::VPS_ACCOUNT_PAYMENT_METHODS, &acc, f64::from(n));
    }
    if let Some(w) = &data.wallet {
        set.gauge(
            &defs::VPS_WALLET_BALANCE,
            &[provider, account, &w.currency],
            w.amount,
        );
    }
    if let Some(s) = data.facts.wallet_runway_seconds {
        set.gauge(&defs::VPS_WALLET_RUNWAY, &acc, s);
    }
    if let Some(t) = data.facts.api_key_expiry {
        set.gauge(&defs::VPS_API_KEY_EXPIRY, &acc, unix_seconds(t));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vpswatch_model::account::{AccountData, AccountFacts, ProviderKind};
    use vpswatch_model::money::Money;

    #[test]
    fn account_level_wallet_runway_key_expiry_and_actions() {
        let mut snap = AccountSnapshot::empty(ProviderKind::Stablevps, "acc");
        let text = |snap: &AccountSnapshot| {
            let mut set = FamilySet::default();
            add_account(&mut set, snap);
            String::from_utf8(set.render().to_vec()).expect("utf8")
        };
        // Nothing known yet: none of them is made up.
        let empty = text(&snap);
        for name in [
            "vps_actions_enabled",
            "vps_wallet_balance",
            "vps_wallet_runway_seconds",
            "vps_api_key_expiry_timestamp_seconds",
        ] {
            assert!(!empty.contains(name), "{name} in:\n{empty}");
        }
        let expiry = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        snap.polls = 1;
        snap.actions_enabled = Some(false);
        snap.data = Some(Arc::new(AccountData {
            fetched_at: expiry,
            vms: Vec::new(),
            wallet: Some(Money {
                amount: 17.51,
                currency: "EUR".into(),
            }),
            facts: AccountFacts {
                api_key_expiry: Some(expiry),
                wallet_runway_seconds: Some(1_728_000.0),
                ..AccountFacts::default()
            },
            warnings: Vec::new(),
        }));
        let t = text(&snap);
        let acc = "provider=\"stablevps\",account=\"acc\"";
        for line in [
            format!("vps_actions_enabled{{{acc}}} 0\n"),
            format!("vps_wallet_balance{{{acc},currency=\"EUR\"}} 17.51\n"),
            format!("vps_wallet_runway_seconds{{{acc}}} 1728000\n"),
            format!("vps_api_key_expiry_timestamp_seconds{{{acc}}} 1800000000\n"),
        ] {
            assert!(t.contains(&line), "missing {line:?} in:\n{t}");
        }
    }

    #[test]
    fn label_values_and_special_floats_are_escaped() {
        let mut set = FamilySet::default();
        set.gauge(
            &defs::VPS_INFO,
            &["lnvps", "a", "1", "we\"ird\\name\nx", "p", "l", "i", ""],
            1.0,
        );
        set.gauge(&defs::VPS_UP, &["lnvps", "a", "1"], f64::NAN);
        set.gauge(&defs::VPS_UP, &["lnvps", "a", "2"], f64::INFINITY);
        let text = String::from_utf8(set.render().to_vec()).expect("utf8");
        assert!(text.contains(r#"name="we\"ird\\name\nx""#), "{text}");
        assert!(text.contains("vps_up{provider=\"lnvps\",account=\"a\",vm=\"1\"} NaN\n"));
        assert!(text.contains("vm=\"2\"} +Inf\n"));
        assert!(text.starts_with("# HELP vps_info "));
        assert!(
            !text.contains("vps_renewal_price"),
            "empty families are left out"
        );
    }
}
