//! Scale benchmark (not a test): many accounts × many VMs per provider.
//!
//! For every size (accounts × VMs per account) and provider, the simulator runs in this
//! process with `bench:AxN` and a `vpswatch run` child process polls it with one
//! `[[accounts]]` entry per simulated account, all sharing one rate budget. Reported:
//! - the first poll cycle (daemon start → `/-/ready`, i.e. every account polled) as a
//!   ratio to the rate-limit floor (requests the cycle sent / allowed rate), and 429s;
//! - the daemon's RSS after the poll (and its peak);
//! - the exposition's series count and size, plain and gzip, as served;
//! - the encode time of that many VMs (the encoder's `render`, timed in this process on
//!   synthetic snapshots of the same size: the child exports no encode-time metric).
//!
//! The real LNVPS limit is 600 requests/min per client IP; at 100,000 VMs that floor is
//! ~2.5 h, so for each size the limit is raised *equally* in the simulator and in
//! `[providers.<p>] requests_per_minute` to aim at a floor of BENCH_FLOOR_SECS, never
//! below 600/min nor above BENCH_MAX_RPM: the figure is the ratio to the floor. The
//! StableVPS simulator enforces no limit (the real one's is undocumented); its floor is
//! the configured budget.
//!
//! BENCH_MAX_RPM defaults to 9,000/min (150 requests/s): on this project's 2-core
//! machine, daemon and simulator sharing the cores sign, verify and answer ~250 LNVPS
//! requests/s at most, so a higher limit measures the CPU, not the poller's pacing.
//! 100 × 1,000 LNVPS VMs is then a ~10 min floor.
//!
//! `cargo bench --bench scale`; knobs: BENCH_SIZES ("1x10,10x10,10x100,100x100,100x1000"),
//! BENCH_PROVIDERS ("lnvps,stablevps"), BENCH_FLOOR_SECS (20), BENCH_MAX_RPM (9000),
//! BENCH_ENCODE_REPS (5).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run"
)]

#[path = "common/mod.rs"]
mod common;

use common::{env_num, free_port, status_kib, sum_metric, Proc};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpswatch::metrics::encoder;
use vpswatch::metrics::{FamilySource, SelfMetrics};
use vpswatch::watchdog::probe::ProbeStore;
use vpswatch::watchdog::report::WatchdogReport;
use vpswatch_model::account::{AccountData, AccountFacts, ProviderKind};
use vpswatch_model::clock::SystemClock;
use vpswatch_model::money::Money;
use vpswatch_model::snapshot::{AccountSnapshot, SnapshotStore};
use vpswatch_model::vm::{Usage, Vm, VmState};
use vpswatch_sim::lnvps::{LnvpsSim, Scenario};
use vpswatch_sim::scenario::bench_account_secret;
use vpswatch_sim::stablevps::{bench_key, StableScenario, StableVpsSim};

#[derive(Default, Clone)]
struct Row {
    vms: usize,
    requests: f64,
    rpm: u32,
    cycle: f64,
    floor: f64,
    throttled: f64,
    rss_mib: f64,
    hwm_mib: f64,
    series: usize,
    plain: usize,
    gzip: usize,
    encode_ms: f64,
}

/// Synthetic snapshots of `accounts × per` VMs with every field set, rendered by the
/// encoder; the median of `reps` renderings (plain + gzip), in ms.
fn encode_time(kind: ProviderKind, accounts: usize, per: usize, reps: u64) -> (f64, usize) {
    let now = chrono::Utc::now();
    let names: Vec<String> = (0..accounts).map(|a| format!("acct{a:03}")).collect();
    let store = SnapshotStore::new(names.iter().map(|n| (kind, n.clone())));
    for (a, name) in names.iter().enumerate() {
        let vms = (0..per)
            .map(|i| Vm {
                id: format!("{}", a * per + i + 1),
                name: format!("vm-{a}-{i}"),
                plan: ["Tiny BTC", "Small EUR", "Daily BTC", "Medium EUR"][i % 4].into(),
                location: "Dublin".into(),
                image: "ubuntu 24.04".into(),
                ipv4: Some(std::net::Ipv4Addr::from(0x0a00_0000 + (a * per + i) as u32)),
                state: if i % 10 == 9 {
                    VmState::Stopped
                } else {
                    VmState::Running
                },
                status_time: Some(now),
                created: Some(now - chrono::Duration::days(30)),
                expires: Some(now + chrono::Duration::days((i % 60) as i64 + 1)),
                deleting_on: Some(now + chrono::Duration::days((i % 60) as i64 + 4)),
                auto_renewal_enabled: Some(i % 2 == 0),
                renewal: Some(vpswatch_model::vm::Renewal {
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
                usage: (i % 10 != 9).then_some(Usage {
                    at: now,
                    cpu_ratio: 0.3,
                    memory_bytes: 1e9,
                    network_receive_bytes_per_second: 1e4,
                    network_transmit_bytes_per_second: 3e3,
                    disk_read_bytes_per_second: 4e4,
                    disk_write_bytes_per_second: 2e4,
                }),
                usage_error: None,
                subscription_id: Some(format!("{}", a * per + i + 1)),
                max_prepay_days: Some(365),
            })
            .collect();
        let mut snap = AccountSnapshot::empty(kind, name);
        snap.polls = 1;
        snap.last_attempt = Some(now);
        snap.last_success = Some(now);
        snap.last_poll_duration = Some(Duration::from_secs(1));
        snap.data = Some(Arc::new(AccountData {
            fetched_at: now,
            vms,
            wallet: Some(Money {
                amount: 100.0,
                currency: "EUR".into(),
            }),
            facts: AccountFacts::default(),
            warnings: Vec::new(),
        }));
        store.publish(a, snap);
    }
    let sources: [std::sync::Arc<dyn FamilySource>; 2] = [
        std::sync::Arc::new(ProbeStore::default()),
        std::sync::Arc::new(WatchdogReport::default()),
    ];
    let selfm = SelfMetrics::new();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..reps.max(1) {
        let e = encoder::render(&store, &sources, &selfm);
        times.push(e.encode_time.as_secs_f64() * 1000.0);
        size = e.plain.len();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times[times.len() / 2], size)
}

async fn run_size(kind: ProviderKind, accounts: usize, per: usize) -> anyhow::Result<Row> {
    let floor_secs = env_num("BENCH_FLOOR_SECS", 20) as f64;
    let max_rpm = env_num("BENCH_MAX_RPM", 9_000) as f64;
    let vms = accounts * per;
    // LNVPS: list + time-series per running VM + a few account calls; StableVPS: a
    // handful per account.
    let estimate = match kind {
        ProviderKind::Lnvps => accounts as f64 * (4.0 + 0.9 * per as f64 + per as f64 / 100.0),
        ProviderKind::Stablevps => accounts as f64 * 3.0,
    };
    let rpm = (estimate * 60.0 / floor_secs).clamp(600.0, max_rpm).ceil() as u32;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut cfg = format!(
        "poll_interval = \"1h\"\npoll_timeout = \"2h\"\nstate_dir = {:?}\n[web]\nlisten_address = \"127.0.0.1:{port}\"\n[probes]\nenabled = false\n",
        dir.path().display().to_string()
    );
    let exe = env!("CARGO_BIN_EXE_vpswatch");
    // The simulator lives in this process (kept alive until the end of the function).
    let mut lnvps = None;
    let mut stable = None;
    match kind {
        ProviderKind::Lnvps => {
            let mut scenario = Scenario::bench_accounts(accounts, per)?;
            scenario.rate_limit.per_minute = rpm;
            let sim =
                LnvpsSim::start("127.0.0.1:0".parse()?, scenario, Arc::new(SystemClock)).await?;
            cfg.push_str(&format!("[providers.lnvps]\nrequests_per_minute = {rpm}\n"));
            for a in 0..accounts {
                let key = dir.path().join(format!("a{a}.nsec"));
                std::fs::write(&key, bench_account_secret(a))?;
                restrict(&key);
                cfg.push_str(&format!(
                    "[[accounts]]\nname = \"acct{a:03}\"\nprovider = \"lnvps\"\nbase_url = \"{}\"\nnsec_file = {:?}\n",
                    sim.base_url(),
                    key.display().to_string()
                ));
            }
            lnvps = Some(sim);
        }
        ProviderKind::Stablevps => {
            let sim = StableVpsSim::start(
                "127.0.0.1:0".parse()?,
                StableScenario::bench(accounts, per),
                Arc::new(SystemClock),
            )
            .await?;
            cfg.push_str(&format!(
                "[providers.stablevps]\nrequests_per_minute = {rpm}\n"
            ));
            for a in 0..accounts {
                let key = dir.path().join(format!("a{a}.key"));
                std::fs::write(&key, bench_key(a))?;
                restrict(&key);
                cfg.push_str(&format!(
                    "[[accounts]]\nname = \"acct{a:03}\"\nprovider = \"stablevps\"\nbase_url = \"{}\"\napi_key_file = {:?}\n",
                    sim.base_url(),
                    key.display().to_string()
                ));
            }
            stable = Some(sim);
        }
    }
    let config = dir.path().join("scale.toml");
    std::fs::write(&config, &cfg)?;
    let started = Instant::now();
    let daemon = Proc(
        Command::new(exe)
            .args(["--log.level", "error", "run", "--config"])
            .arg(&config)
            .spawn()?,
    );
    let pid = daemon.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    loop {
        let ready = client
            .get(format!("{base}/-/ready"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(7200) {
            anyhow::bail!("first poll did not finish within 2 h");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cycle = started.elapsed().as_secs_f64();
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let gzip = client
        .get(format!("{base}/metrics"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let requests = sum_metric(&text, "vpswatch_provider_requests_total", "");
    let throttled = sum_metric(&text, "vpswatch_provider_requests_total", "code=\"429\"") + 0.0;
    let row = Row {
        vms,
        requests,
        rpm,
        cycle,
        floor: requests / (f64::from(rpm) / 60.0),
        throttled,
        rss_mib: status_kib(&pid.to_string(), "VmRSS:") as f64 / 1024.0,
        hwm_mib: status_kib(&pid.to_string(), "VmHWM:") as f64 / 1024.0,
        series: text.lines().filter(|l| !l.starts_with('#')).count(),
        plain: text.len(),
        gzip,
        encode_ms: 0.0,
    };
    drop(daemon);
    if let Some(s) = lnvps {
        s.shutdown();
    }
    if let Some(s) = stable {
        s.shutdown();
    }
    Ok(row)
}

fn restrict(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vpswatch::tls::install_crypto_provider();
    let sizes: Vec<(usize, usize)> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1x10,10x10,10x100,100x100,100x1000".into())
        .split(',')
        .filter_map(|s| {
            let (a, n) = s.trim().split_once('x')?;
            Some((a.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    let providers: Vec<ProviderKind> = std::env::var("BENCH_PROVIDERS")
        .unwrap_or_else(|_| "lnvps,stablevps".into())
        .split(',')
        .filter_map(|p| match p.trim() {
            "lnvps" => Some(ProviderKind::Lnvps),
            "stablevps" => Some(ProviderKind::Stablevps),
            _ => None,
        })
        .collect();
    let reps = env_num("BENCH_ENCODE_REPS", 5);
    println!(
        "vpswatch scale benchmark: sizes {sizes:?}, floor aimed at {} s, max {} req/min",
        env_num("BENCH_FLOOR_SECS", 20),
        env_num("BENCH_MAX_RPM", 9_000)
    );
    let mut all: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
    for kind in &providers {
        println!();
        println!("## {}", kind.as_str());
        println!();
        println!("| accounts × VMs | VMs | req/min (sim = config) | requests | cycle s | floor s | ratio (≤ 1.1) | 429s | RSS MiB (peak) | series | plain bytes | gzip bytes | encode ms |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for &(accounts, per) in &sizes {
            let mut row = run_size(*kind, accounts, per).await?;
            row.encode_ms = encode_time(*kind, accounts, per, reps).0;
            println!(
                "| {accounts} × {per} | {} | {} | {:.0} | {:.1} | {:.1} | {:.3} | {:.0} | {:.1} ({:.1}) | {} | {} | {} | {:.1} |",
                row.vms, row.rpm, row.requests, row.cycle, row.floor, row.cycle / row.floor,
                row.throttled, row.rss_mib, row.hwm_mib, row.series, row.plain, row.gzip, row.encode_ms
            );
            let _ = std::io::stdout().flush();
            all.entry(kind.as_str()).or_default().push(row);
        }
    }
    println!();
    println!("## Growth per VM (each size against the previous one)");
    println!();
    println!("| provider | VMs | RSS KiB/VM (Δ) | bytes/VM plain | series/VM | encode µs/VM | ratio to floor |");
    println!("|---|---|---|---|---|---|---|");
    for (p, rows) in &all {
        for w in rows.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let dv = (b.vms - a.vms).max(1) as f64;
            println!(
                "| {p} | {} → {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.3} → {:.3} |",
                a.vms,
                b.vms,
                (b.rss_mib - a.rss_mib) * 1024.0 / dv,
                (b.plain as f64 - a.plain as f64) / dv,
                (b.series as f64 - a.series as f64) / dv,
                (b.encode_ms - a.encode_ms) * 1000.0 / dv,
                a.cycle / a.floor,
                b.cycle / b.floor
            );
        }
    }
    Ok(())
}
