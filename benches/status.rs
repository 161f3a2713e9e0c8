//! Status page benchmark (not a test): what one view of `/` and `/api/v1/status` costs at
//! scale, from the cached state alone.
//!
//! Synthetic state for BENCH_VMS VMs (1,000) over BENCH_ACCOUNTS accounts (4): every
//! field set, a probe result per running VM, three rule states per VM, a journal of
//! `status::RECENT_ACTIONS` entries; every tenth VM stopped, expiries spread over 60 days.
//! Reported: the median over BENCH_REPS (20) of building the status (`build`), rendering
//! the HTML page (page 1) and serialising the JSON twin, and their sizes.
//!
//! `cargo bench --bench status`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use vpswatch::status::{html, StatusSources, RECENT_ACTIONS};
use vpswatch::watchdog::journal::{ActionRecord, ActionStatus, Outcome, TargetKey};
use vpswatch::watchdog::probe::ProbeResult;
use vpswatch::watchdog::rules::Remedy;
use vpswatch_model::account::{AccountData, AccountFacts, ProviderKind};
use vpswatch_model::clock::SystemClock;
use vpswatch_model::money::Money;
use vpswatch_model::snapshot::{AccountSnapshot, SnapshotStore};
use vpswatch_model::vm::{Renewal, Vm, VmState};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let total = env_num("BENCH_VMS", 1000);
    let accounts = env_num("BENCH_ACCOUNTS", 4).max(1);
    let reps = env_num("BENCH_REPS", 20).max(1);
    let per = total.div_ceil(accounts);
    let now = Utc::now();
    let kind = |a: usize| {
        if a % 2 == 0 {
            ProviderKind::Lnvps
        } else {
            ProviderKind::Stablevps
        }
    };
    let names: Vec<String> = (0..accounts).map(|a| format!("acct{a:02}")).collect();
    let store = SnapshotStore::new(names.iter().enumerate().map(|(a, n)| (kind(a), n.clone())));
    let sources = StatusSources::snapshots_only(store.clone(), Arc::new(SystemClock));
    let mut probes = HashMap::new();
    let mut journal = Vec::new();
    for (a, name) in names.iter().enumerate() {
        let vms: Vec<Vm> = (0..per)
            .map(|i| {
                let id = format!("{}", a * per + i + 1);
                let stopped = i % 10 == 9;
                if !stopped {
                    probes.insert(
                        (kind(a), name.clone(), id.clone()),
                        vec![ProbeResult {
                            port: 22,
                            default: true,
                            success: i % 37 != 0,
                            duration: Duration::from_millis(3),
                            at: now,
                        }],
                    );
                }
                for rule in ["ssh-unreachable", "vm-stopped", "cpu-high"] {
                    let key = TargetKey {
                        rule: rule.into(),
                        provider: kind(a),
                        account: name.clone(),
                        vm: id.clone(),
                    };
                    sources
                        .watchdog
                        .set_target(&key, stopped && rule == "vm-stopped", false);
                }
                Vm {
                    id: id.clone(),
                    name: format!("web-{a}-{i}.example.org"),
                    plan: ["Tiny BTC", "Small EUR", "Daily BTC", "Medium EUR"][i % 4].into(),
                    location: "Dublin".into(),
                    image: "ubuntu 24.04".into(),
                    ipv4: Some(std::net::Ipv4Addr::from(0x0a00_0000 + (a * per + i) as u32)),
                    state: if stopped {
                        VmState::Stopped
                    } else {
                        VmState::Running
                    },
                    status_time: Some(now),
                    created: Some(now - chrono::Duration::days(30)),
                    expires: Some(now + chrono::Duration::hours((i % 60) as i64 * 24 + 5)),
                    deleting_on: None,
                    auto_renewal_enabled: Some(i % 2 == 0),
                    renewal: Some(Renewal {
                        price: Money {
                            amount: 2.5,
                            currency: "EUR".into(),
                        },
                        period_seconds: 2_592_000.0,
                    }),
                    cpus: Some(2.0),
                    memory_bytes: Some(2e9),
                    disk_bytes: Some(4e10),
                    uptime_seconds: Some(86_400.0),
                    usage: None,
                    usage_error: None,
                    subscription_id: Some(id),
                    max_prepay_days: Some(365),
                }
            })
            .collect();
        for vm in vms.iter().take(RECENT_ACTIONS / accounts) {
            journal.push(ActionRecord {
                id: journal.len() as u64 + 1,
                at: now,
                rule: "ssh-unreachable".into(),
                provider: kind(a),
                account: name.clone(),
                vm: vm.id.clone(),
                vm_name: vm.name.clone(),
                action: Remedy::Reboot,
                rung: 0,
                reason: "TCP port 22 does not answer".into(),
                status: ActionStatus::Ok,
                dry_run: false,
                finished_at: Some(now),
                error: None,
                outcome: Some(Outcome::Recovered),
                outcome_at: Some(now),
                source: Default::default(),
                alert: None,
            });
        }
        let mut snap = AccountSnapshot::empty(kind(a), name);
        snap.polls = 1;
        snap.last_attempt = Some(now);
        snap.last_success = Some(now);
        snap.data = Some(Arc::new(AccountData {
            fetched_at: now,
            vms,
            wallet: Some(Money {
                amount: 100.0,
                currency: "EUR".into(),
            }),
            facts: AccountFacts {
                wallet_runway_seconds: Some(12.0 * 86_400.0),
                api_key_expiry: Some(now + chrono::Duration::days(90)),
                ..AccountFacts::default()
            },
            warnings: Vec::new(),
        }));
        store.publish(a, snap);
    }
    sources.probes.publish(probes);
    journal.reverse();

    let (mut build, mut page, mut json) = (Vec::new(), Vec::new(), Vec::new());
    let (mut html_bytes, mut json_bytes, mut problems) = (0, 0, 0);
    for _ in 0..reps {
        let t = Instant::now();
        let status = sources.build(Utc::now(), &journal);
        build.push(t.elapsed());
        let t = Instant::now();
        let text = html::render(&status, 1);
        page.push(t.elapsed());
        let t = Instant::now();
        let body = serde_json::to_vec(&status).unwrap();
        json.push(t.elapsed());
        (html_bytes, json_bytes, problems) = (text.len(), body.len(), status.summary.problems);
    }
    println!(
        "status page, {} VMs over {accounts} accounts ({problems} with problems), median of {reps}:",
        per * accounts
    );
    println!(
        "  build (snapshots, probes, rules, journal → Status): {:8.2} ms",
        median_ms(build)
    );
    println!(
        "  render HTML (page 1):                               {:8.2} ms  {:>7} KiB",
        median_ms(page),
        html_bytes / 1024
    );
    println!(
        "  serialise JSON (every VM):                          {:8.2} ms  {:>7} KiB",
        median_ms(json),
        json_bytes / 1024
    );
}
