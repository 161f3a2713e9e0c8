//! Exporter benchmark (not a test): runs `vpswatch simulate` with N VMs and `vpswatch run`
//! against it as separate processes, then reports
//! - the first poll cycle's duration as a ratio to the rate-limit floor ((1+N) / 10 s),
//!   and how many 429s the simulator sent;
//! - /metrics requests/s and p50/p99 latency under concurrent scrapes, plain and gzip;
//! - the daemon's RSS (current and peak).
//!
//! `cargo bench --bench exporter`; knobs: BENCH_VMS (1000), BENCH_SECONDS per round (5),
//! BENCH_CONNECTIONS (8), BENCH_ROUNDS (2, A/B interleaved plain/gzip).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run"
)]

#[path = "common/mod.rs"]
mod common;

use common::{env_num, status_kib, sum_metric, Proc};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn load(url: &str, gzip: bool, conns: usize, secs: u64) -> (f64, Duration, Duration, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bytes = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut req = client.get(&url);
                if gzip {
                    req = req.header("Accept-Encoding", "gzip");
                }
                match req.send().await {
                    Ok(r) => {
                        if let Ok(b) = r.bytes().await {
                            bytes = b.len();
                        }
                        lat.push(t.elapsed());
                    }
                    Err(e) => eprintln!("scrape failed: {e}"),
                }
            }
            (lat, bytes)
        }));
    }
    let mut all = Vec::new();
    let mut size = 0;
    for t in tasks {
        if let Ok((lat, bytes)) = t.await {
            all.extend(lat);
            size = bytes;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        size,
    )
}

#[tokio::main]
async fn main() {
    vpswatch::tls::install_crypto_provider();
    let vms = env_num("BENCH_VMS", 1000);
    let secs = env_num("BENCH_SECONDS", 5);
    let conns = env_num("BENCH_CONNECTIONS", 8) as usize;
    let rounds = env_num("BENCH_ROUNDS", 2);
    let exe = env!("CARGO_BIN_EXE_vpswatch");
    let dir = tempfile::tempdir().expect("tempdir");

    let keys = nostr::Keys::generate();
    let key_file = dir.path().join("bench.nsec");
    std::fs::write(&key_file, keys.secret_key().to_secret_hex()).expect("write key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600));
    }

    // Simulator.
    let mut sim = Command::new(exe)
        .args(["--log.level", "warn", "simulate", "--listen", "127.0.0.1:0"])
        .args(["--scenario", &format!("bench:{vms}")])
        .args(["--owner", &keys.public_key().to_hex()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start simulator");
    let stdout = sim.stdout.take().expect("stdout");
    let sim = Proc(sim);
    // Drain stdout to the end on a thread: the simulator must never write into a closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("http://") {
                let url = line[i..].split_whitespace().next().unwrap_or("");
                let _ = tx.send(url.to_string());
            }
        }
    });
    let sim_url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("simulator printed its URL");

    // Daemon: one poll per 10 minutes, so the run measures exactly one cycle.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "poll_interval = \"10m\"\npoll_timeout = \"30m\"\n[web]\nlisten_address = \"127.0.0.1:{port}\"\n\
             [[accounts]]\nname = \"bench\"\nprovider = \"lnvps\"\nbase_url = \"{sim_url}\"\nnsec_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .expect("write config");
    let daemon = Command::new(exe)
        .args(["--log.level", "warn", "run", "--config"])
        .arg(&config)
        .spawn()
        .expect("start daemon");
    let daemon = Proc(daemon);
    let pid = daemon.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    println!("vpswatch exporter benchmark: {vms} VMs, {conns} connections, {secs} s per round");
    let poll_started = Instant::now();
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
        if poll_started.elapsed() > Duration::from_secs(1800) {
            panic!("first poll did not finish within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let cycle = sum_metric(&text, "vpswatch_poll_duration_seconds", "account=\"bench\"");
    let requests = sum_metric(
        &text,
        "vpswatch_provider_requests_total",
        "account=\"bench\"",
    );
    let throttled = sum_metric(&text, "vpswatch_provider_requests_total", "code=\"429\"");
    let running = text
        .lines()
        .filter(|l| l.starts_with("vps_up{") && l.ends_with(" 1"))
        .count() as f64;
    let floor = (1.0 + running) / 10.0;
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!();
    println!("| poll cycle | value |");
    println!("|---|---|");
    println!("| running VMs polled | {running} |");
    println!("| requests in the cycle | {requests} |");
    println!("| cycle time | {cycle:.1} s |");
    println!("| rate-limit floor (1+VMs)/10 | {floor:.1} s |");
    println!("| ratio (target ≤ 1.1) | {:.3} |", cycle / floor);
    println!("| 429 responses (target 0) | {throttled} |");
    println!("| series exported | {series} |");
    println!(
        "| RSS after the poll | {:.1} MiB |",
        status_kib(&pid.to_string(), "VmRSS:") as f64 / 1024.0
    );

    println!();
    println!("| /metrics | round | req/s | p50 | p99 | body bytes |");
    println!("|---|---|---|---|---|---|");
    let url = format!("{base}/metrics");
    let mut peak_rss = 0;
    for round in 1..=rounds {
        for gzip in [false, true] {
            let (rps, p50, p99, size) = load(&url, gzip, conns, secs).await;
            peak_rss = peak_rss.max(status_kib(&pid.to_string(), "VmRSS:"));
            println!(
                "| {} | {round} | {rps:.0} | {:.2} ms | {:.2} ms | {size} |",
                if gzip { "gzip" } else { "plain" },
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0
            );
        }
    }
    println!();
    println!(
        "daemon RSS under load: {:.1} MiB (peak over the run {:.1} MiB; target ≤ 30 MiB)",
        peak_rss as f64 / 1024.0,
        status_kib(&pid.to_string(), "VmHWM:") as f64 / 1024.0
    );
    drop(daemon);
    drop(sim);
}
