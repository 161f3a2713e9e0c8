//! Watchdog benchmark (not a test): failure → action latency.
//!
//! A simulated VM hangs at t0 (its port stops answering while LNVPS says running); t1 is
//! when the simulator receives the reboot. Each trial's t1 − t0 is compared with the bound
//! `for + probe interval + 1 s`: the failure must first be seen (≤ one probe interval),
//! then hold for `for`, then the call must go out (≤ 1 s of slack for decision + HTTP).
//!
//! `cargo bench --bench watchdog`; knobs: BENCH_TRIALS (5), BENCH_FOR_SECS (6),
//! BENCH_PROBE_MS (1000).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run"
)]

#[path = "common/mod.rs"]
mod common;

use common::{env_num, free_port};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpswatch::daemon::Daemon;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{LnvpsSim, Scenario, VmSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vpswatch::tls::install_crypto_provider();
    let trials = env_num("BENCH_TRIALS", 5);
    let hold = Duration::from_secs(env_num("BENCH_FOR_SECS", 6));
    let probe = Duration::from_millis(env_num("BENCH_PROBE_MS", 1000));
    // Enough failures to cover `for` at this probe rate, so `for` is what binds.
    let failures = (hold.as_millis() / probe.as_millis()).max(1);
    let bound = hold + probe + Duration::from_secs(1);

    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let vm_port = free_port();
    let mut scenario = Scenario {
        vms: vec![VmSpec {
            owner: owner.clone(),
            ipv4: Some(Ipv4Addr::new(127, 9, 0, 1)),
            ..VmSpec::default()
        }],
        ..Scenario::default()
    };
    scenario.settings.vm_listen_port = Some(vm_port);
    let sim = LnvpsSim::start("127.0.0.1:0".parse()?, scenario, Arc::new(SystemClock)).await?;
    let state = tempfile::tempdir()?;
    let text = format!(
        r#"poll_interval = "5s"
state_dir = "{state}"
[web]
listen_address = "127.0.0.1:0"
[probes]
interval = "{probe}ms"
timeout = "500ms"
ports = {{ lnvps = {vm_port} }}
[[accounts]]
name = "bench"
provider = "lnvps"
base_url = "{url}"
nsec_env = "BENCH_NSEC"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "{hold}ms"
failures = {failures}
recoveries = 2
action = "reboot"
cooldown = "1s"
max_actions = 1000
patience = "30s"
"#,
        state = state.path().display(),
        probe = probe.as_millis(),
        hold = hold.as_millis(),
        url = sim.base_url(),
    );
    let secret = keys.secret_key().to_secret_hex();
    let config = vpswatch::config::parse(&text, "bench", &|n| {
        (n == "BENCH_NSEC").then(|| secret.clone())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let daemon = Daemon::start(config, Arc::new(SystemClock)).await?;

    let restarts = || {
        sim.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/restart"))
            .map(|r| r.at)
            .collect::<Vec<_>>()
    };
    println!(
        "watchdog failure → action latency: for = {}, probe interval = {}, failures = {failures}, bound = {}",
        humantime::format_duration(hold),
        humantime::format_duration(probe),
        humantime::format_duration(bound)
    );
    let mut latencies = Vec::new();
    for trial in 1..=trials {
        // Let the VM be seen healthy (and any previous alert resolve) first; vary the
        // hang's phase against the probe schedule.
        let settle = Instant::now() + Duration::from_secs(4);
        while Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(
            137 * trial % probe.as_millis() as u64,
        ))
        .await;
        let before = restarts().len();
        let t0 = chrono::Utc::now();
        sim.update_vm(1, |v| v.hung = true);
        let deadline = Instant::now() + bound * 3;
        let t1 = loop {
            if let Some(t) = restarts().get(before) {
                break Some(*t);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        match t1 {
            Some(t1) => {
                let l = (t1 - t0).to_std().unwrap_or_default();
                println!(
                    "  trial {trial}: {:>7.3} s {}",
                    l.as_secs_f64(),
                    if l <= bound {
                        "within bound"
                    } else {
                        "OVER BOUND"
                    }
                );
                latencies.push(l);
            }
            None => println!("  trial {trial}: no reboot within {:?}", bound * 3),
        }
    }
    if let Some(max) = latencies.iter().max() {
        let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
        println!(
            "  mean {:.3} s, max {:.3} s, bound {:.3} s: {}",
            mean.as_secs_f64(),
            max.as_secs_f64(),
            bound.as_secs_f64(),
            if *max <= bound && latencies.len() as u64 == trials {
                "all within bound"
            } else {
                "bound missed"
            }
        );
    }
    daemon.shutdown().await;
    sim.shutdown();
    Ok(())
}
