//! Soak benchmark (not a test): a simulated day on an accelerated clock.
//!
//! The LNVPS simulator and the daemon (in this process, `Daemon::start`) share an
//! `OffsetClock` whose offset grows so that BENCH_SOAK_SECS of real time (180) cover
//! BENCH_SOAK_HOURS of scenario time (24). Meanwhile: VMs hang and the watchdog reboots
//! them (BENCH_SOAK_HANGS_PER_HOUR, 2), VMs come and go (one removed and one added per
//! scenario hour), some are renewed and some expire (the bench fleet expires 1..60 days
//! out), the API blacks out for 15 minutes every 6 hours, and alerts and events go through
//! the email outbox to a real SMTP server (aiosmtpd, when `/usr/bin/python3` has it).
//!
//! Renewals go through vpswatch's own Lightning renewal: a `renew` rule pays invoices
//! from a NIP-47 wallet service on a local relay (`sim::nwc_wallet`), and every other
//! scenario hour one VM's expiry is pulled to 36 h out so that it falls due.
//!
//! Every BENCH_SOAK_SAMPLE_SECS (5) it samples this process' RSS (daemon + simulator: the
//! simulator's request and action logs are cleared at each sample so only its world
//! remains) and its live heap (bytes allocated and not yet freed, counted by a wrapper
//! around the system allocator: unlike RSS it does not move with what glibc keeps
//! cached, so a real leak shows in it and allocator noise does not), the series in
//! /metrics, the VMs in /metrics against the simulator's, the journal's entries and the
//! state database's size, the outbox, and renewals paid. At the end it prints the RSS and
//! heap slopes after warm-up (the first quarter), by least squares, overall and per
//! scenario day.
//!
//! Wall time is accelerated; sleeps and timeouts (poll interval, probe interval, HTTP)
//! run on tokio's real timer, so "poll every 2 s" is every 16 scenario minutes at 480×
//! (hence `staleness_limit = "2h"`: the watchdog must not take that data for stale).
//!
//! `cargo bench --bench soak`; knobs: BENCH_SOAK_SECS, BENCH_SOAK_HOURS, BENCH_SOAK_VMS
//! (100), BENCH_SOAK_HANGS_PER_HOUR, BENCH_SOAK_SAMPLE_SECS, BENCH_SOAK_JOURNAL_ENTRIES (40:
//! `[watchdog] journal_entries`, small so that the cap is reached within the day).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run"
)]

#[path = "common/heap.rs"]
mod heap;

#[path = "common/mod.rs"]
mod common;

use common::{env_num, free_port, status_kib};
use heap::live_heap_bytes;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpswatch::daemon::Daemon;
use vpswatch_model::clock::{OffsetClock, SharedClock};
use vpswatch_sim::lnvps::{BlackoutLength, LnvpsSim, Scenario, TimelineEvent, VmSpec};
use vpswatch_sim::nwc_wallet::NwcWalletService;
use vpswatch_sim::power::PowerAction;
use vpswatch_sim::scenario::RelTime;

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Series per metric family in a text exposition (histogram buckets count as series of
/// their family's `_bucket` name).
fn series_per_family(body: &str) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        *out.entry(name.to_string()).or_insert(0) += 1;
    }
    out
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn vm_spec(owner: &str, ip: Ipv4Addr, days: i64) -> VmSpec {
    VmSpec {
        owner: owner.into(),
        ipv4: Some(ip),
        expires: Some(RelTime::Offset(days * 86_400)),
        ..VmSpec::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vpswatch::tls::install_crypto_provider();
    let real = Duration::from_secs(env_num("BENCH_SOAK_SECS", 180));
    let hours = env_num("BENCH_SOAK_HOURS", 24);
    let n = env_num("BENCH_SOAK_VMS", 100) as usize;
    let hangs_per_hour = env_num("BENCH_SOAK_HANGS_PER_HOUR", 2);
    let sample_every = Duration::from_secs(env_num("BENCH_SOAK_SAMPLE_SECS", 5));
    // Journal entries kept: small by default so a one-day run shows the cap holding.
    let journal_keep = env_num("BENCH_SOAK_JOURNAL_ENTRIES", 40);
    let speed = (hours * 3600) as f64 / real.as_secs_f64();

    let offset = Arc::new(OffsetClock::new(chrono::Duration::zero()));
    let clock: SharedClock = offset.clone();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let vm_port = free_port();

    // The fleet on 127.88.0.x, expiring 1..n days out (a few expire during the day).
    let mut scenario = Scenario {
        vms: (0..n)
            .map(|i| {
                vm_spec(
                    &owner,
                    Ipv4Addr::new(127, 88, (i / 250) as u8, (i % 250 + 1) as u8),
                    (i % 60) as i64 + 1,
                )
            })
            .collect(),
        ..Scenario::default()
    };
    scenario.settings.vm_listen_port = Some(vm_port);
    // The script, in scenario time: hangs (the watchdog reboots), renewals, blackouts.
    for h in 0..hours {
        for k in 0..hangs_per_hour {
            scenario.timeline.push(TimelineEvent {
                at: Duration::from_secs(h * 3600 + k * 3600 / hangs_per_hour.max(1) + 600),
                vm: Some(((h * 7 + k * 13) % n as u64) + 1),
                hang: Some(true),
                ..TimelineEvent::default()
            });
        }
        // A renewal falls due: the VM's expiry comes within the renew rule's 2 days.
        if h % 2 == 1 {
            scenario.timeline.push(TimelineEvent {
                at: Duration::from_secs(h * 3600 + 1800),
                vm: Some((h * 11 % n as u64) + 1),
                set_expires: Some(RelTime::Offset(36 * 3600)),
                ..TimelineEvent::default()
            });
        }
        if h % 6 == 3 {
            scenario.timeline.push(TimelineEvent {
                at: Duration::from_secs(h * 3600),
                blackout: Some(BlackoutLength::For(Duration::from_secs(900))),
                ..TimelineEvent::default()
            });
        }
    }
    // When each hang happens, in scenario hours (for the table).
    let hang_times: Vec<f64> = scenario
        .timeline
        .iter()
        .filter(|e| e.hang == Some(true))
        .map(|e| e.at.as_secs_f64() / 3600.0)
        .collect();
    let sim = LnvpsSim::start("127.0.0.1:0".parse()?, scenario, clock.clone()).await?;
    // The wallet the renew rule pays from (a NIP-47 service on its own loopback relay).
    let wallet =
        NwcWalletService::start(sim.clone(), "127.0.0.1:0".parse()?, 1_000_000_000_000).await?;
    let nwc_uri = wallet.uri();

    // A real SMTP server for the outbox, when available.
    let smtp_port = free_port();
    let smtp = std::process::Command::new("/usr/bin/python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{smtp_port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok();
    // Wait for it to listen (a missing module exits at once): without a server the
    // outbox would only grow, and the soak would measure that instead.
    let listening = match &smtp {
        Some(_) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", smtp_port))
                    .await
                    .is_ok()
                {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        None => false,
    };
    let email = if listening {
        format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp_port}\nsecurity = \"none\"\nallow_insecure = true\nfrom = \"vpswatch@example.com\"\nto = [\"ops@example.com\"]\nrepeat_interval = \"4h\"\n"
        )
    } else {
        String::new()
    };
    let state = tempfile::tempdir()?;
    let text = format!(
        r#"poll_interval = "2s"
poll_timeout = "30s"
# Polls come every 2 s of real time = 16 scenario minutes at 480×: data that old is fresh.
staleness_limit = "2h"
state_dir = "{state}"
[web]
listen_address = "127.0.0.1:0"
[watchdog]
journal_entries = {journal_keep}
[probes]
interval = "1s"
timeout = "300ms"
ports = {{ lnvps = {vm_port} }}
[[accounts]]
name = "soak"
provider = "lnvps"
base_url = "{url}"
nsec_env = "SOAK_NSEC"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "2s"
failures = 2
recoveries = 2
action = "reboot"
cooldown = "10m"
max_actions = 100000
patience = "30m"
[[rules]]
name = "renew"
condition = "expires_within"
within = "2d"
action = "renew"
[rules.renew]
mode = "nwc"
nwc_uri_env = "SOAK_NWC"
max_per_renewal_sats = 100000
max_per_month_sats = 100000000
{email}"#,
        state = state.path().display(),
        url = sim.base_url(),
    );
    let secret = keys.secret_key().to_secret_hex();
    let config = vpswatch::config::parse(&text, "soak", &|k| match k {
        "SOAK_NSEC" => Some(secret.clone()),
        "SOAK_NWC" => Some(nwc_uri.clone()),
        _ => None,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let daemon = Daemon::start(config, clock.clone()).await?;

    // Accelerate: the offset grows (speed − 1) seconds per real second.
    let started = Instant::now();
    let ticker = {
        let offset = offset.clone();
        tokio::spawn(async move {
            loop {
                let e = started.elapsed().as_secs_f64() * (speed - 1.0);
                offset.set_offset(chrono::Duration::milliseconds((e * 1000.0) as i64));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    println!(
        "vpswatch soak: {hours} h of scenario time in {} s ({speed:.0}×), {n} VMs, {hangs_per_hour} hangs/h, churn 1 VM/h, blackout 15 min every 6 h, email: {}",
        real.as_secs(),
        if listening {
            "aiosmtpd"
        } else {
            "none (no aiosmtpd for /usr/bin/python3: apt-get install python3-aiosmtpd)"
        }
    );
    println!();
    println!("| scenario h | RSS MiB | live heap MiB | series | VMs in /metrics | VMs at sim | hangs | reboots done (requests) | renewals paid | journal entries | state db KiB | outbox | mails sent |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let t0 = clock.now();
    let mut next_churn = 1i64;
    let mut added = 0u32;
    let mut removed_next = 1u64;
    // Sized up front: the samples must not allocate as the run goes on.
    let expected = (real.as_secs() / sample_every.as_secs().max(1) + 8) as usize;
    let mut samples: Vec<(f64, f64)> = Vec::with_capacity(expected);
    let mut heap_samples: Vec<(f64, f64)> = Vec::with_capacity(expected);
    let mut series_seen: Vec<usize> = Vec::with_capacity(expected);
    // Warm-up: the first quarter of the scenario.
    let warm_h = hours as f64 / 4.0;
    let mut families_at_warm: Option<std::collections::BTreeMap<String, usize>> = None;
    let mut families_last = std::collections::BTreeMap::new();
    let mut reboots = 0usize;
    let mut restart_requests = 0usize;
    let mut next_sample = Instant::now();
    while started.elapsed() < real {
        let now_h = (clock.now() - t0).num_seconds() as f64 / 3600.0;
        // Churn: one VM goes, one comes, every scenario hour.
        while (next_churn as f64) <= now_h {
            sim.remove_vm(removed_next);
            removed_next += 1;
            added += 1;
            sim.add_vm(
                &owner,
                vm_spec(
                    &owner,
                    Ipv4Addr::new(127, 88, 200 + (added / 250) as u8, (added % 250 + 1) as u8),
                    30,
                ),
            );
            next_churn += 1;
        }
        if Instant::now() >= next_sample {
            next_sample += sample_every;
            // Restart requests sent, and those the simulator carried out (a request
            // during a blackout gets a 503 and is retried after the cooldown).
            restart_requests += sim
                .requests()
                .iter()
                .filter(|r| r.method == "PATCH" && r.path.ends_with("/restart"))
                .count();
            reboots += sim
                .actions()
                .iter()
                .filter(|a| a.action == PowerAction::Restart && a.status == 200)
                .count();
            let hangs = hang_times.iter().filter(|&&t| t <= now_h).count();
            sim.clear_requests();
            sim.clear_actions();
            let enc = daemon.cache.load();
            let joined = enc.plain.to_vec();
            let body = std::str::from_utf8(&joined).unwrap_or("");
            let series = body.lines().filter(|l| !l.starts_with('#')).count();
            let vms_exported = body.lines().filter(|l| l.starts_with("vps_up{")).count();
            let vms_sim = sim.vms().iter().filter(|v| !v.deleted).count();
            let journal = match daemon.journal.clone() {
                Some(j) => tokio::task::spawn_blocking(move || j.recent(1000).map(|r| r.len()))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0),
                None => 0,
            };
            let (outbox, sent) = match &daemon.email {
                Some(e) => (
                    e.outbox_stats().map(|s| s.messages).unwrap_or(0),
                    e.delivered_ids().map(|d| d.len()).unwrap_or(0),
                ),
                None => (0, 0),
            };
            let renewals =
                common::sum_metric(body, "vpswatch_renewals_total", "result=\"paid\"").max(0.0);
            // Only two family tallies are kept (at warm-up and the latest), so the
            // bench's own bookkeeping does not grow with the run.
            let families = series_per_family(body);
            if now_h >= warm_h && families_at_warm.is_none() {
                families_at_warm = Some(families.clone());
            }
            families_last = families;
            drop(joined);
            let rss = status_kib("self", "VmRSS:") as f64 / 1024.0;
            let heap = live_heap_bytes() as f64 / (1024.0 * 1024.0);
            samples.push((now_h, rss));
            heap_samples.push((now_h, heap));
            series_seen.push(series);
            println!(
                "| {now_h:.1} | {rss:.1} | {heap:.2} | {series} | {vms_exported} | {vms_sim} | {hangs} | {reboots} ({restart_requests}) | {renewals:.0} | {journal}{} | {} | {outbox} | {sent} |",
                if journal as u64 >= journal_keep { " (cap)" } else { "" },
                dir_size(state.path()) / 1024
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ticker.abort();
    println!();
    for (what, points) in [("RSS", &samples), ("live heap", &heap_samples)] {
        let after: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= warm_h).collect();
        let s = slope(&after);
        let first = after.first().map(|p| p.1).unwrap_or(0.0);
        let last = after.last().map(|p| p.1).unwrap_or(0.0);
        println!(
            "{what} after warm-up ({warm_h:.1} h on): {first:.2} → {last:.2} MiB, least-squares slope {:.4} MiB per scenario hour ({:.3} MiB per day)",
            s,
            s * 24.0
        );
        // Per scenario day: a leak keeps its slope day after day; warm-up and
        // allocator noise do not.
        for day in 0..hours.div_ceil(24) {
            let (lo, hi) = ((day * 24) as f64, ((day + 1) * 24) as f64);
            let in_day: Vec<(f64, f64)> = after
                .iter()
                .copied()
                .filter(|p| p.0 >= lo && p.0 < hi)
                .collect();
            if in_day.len() >= 3 {
                let mean = in_day.iter().map(|p| p.1).sum::<f64>() / in_day.len() as f64;
                println!(
                    "  day {}: mean {mean:.2} MiB, slope {:.3} MiB per day ({} samples)",
                    day + 1,
                    slope(&in_day) * 24.0,
                    in_day.len()
                );
            }
        }
    }
    println!(
        "renewals: {} paid by the wallet ({} pay requests), wallet balance left {} sat",
        wallet.payments().len(),
        wallet.pay_requests(),
        wallet.balance_msat() / 1000
    );
    println!(
        "series in /metrics: min {} max {} (VMs removed during the run: {}, added: {added})",
        series_seen.iter().min().unwrap_or(&0),
        series_seen.iter().max().unwrap_or(&0),
        removed_next - 1
    );
    // Which families grew or shrank after warm-up, and by how much: growth with a
    // constant fleet would be a label set that outlives what it describes.
    if let (Some(a), b) = (&families_at_warm, &families_last) {
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let changed: Vec<String> = names
            .into_iter()
            .filter_map(|n| {
                let (x, y) = (
                    a.get(n).copied().unwrap_or(0),
                    b.get(n).copied().unwrap_or(0),
                );
                (x != y).then(|| format!("{n} {x} → {y}"))
            })
            .collect();
        println!(
            "families whose series count changed after warm-up: {}",
            if changed.is_empty() {
                "none".to_string()
            } else {
                changed.join(", ")
            }
        );
    }
    // Who holds the live heap at the end: the daemon's share is what its shutdown frees,
    // the simulator's (with its relay and wallet) what theirs frees. Comparing runs of
    // different lengths tells whose share grows.
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    let before = live_heap_bytes();
    daemon.shutdown().await;
    settle().await;
    let after_daemon = live_heap_bytes();
    wallet.shutdown().await;
    sim.shutdown_and_wait().await;
    drop(wallet);
    drop(sim);
    settle().await;
    let after_sim = live_heap_bytes();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "live heap at the end: {:.2} MiB; freed by the daemon's shutdown {:.2} MiB, by the simulator's (relay and wallet included) {:.2} MiB; left (runtime, bench) {:.2} MiB",
        mib(before),
        mib(before.saturating_sub(after_daemon)),
        mib(after_daemon.saturating_sub(after_sim)),
        mib(after_sim)
    );
    if let Some(mut c) = smtp {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}
