//! Cluster benchmark (not a test): one poll cycle of many LNVPS VMs in many accounts
//! against the simulator's 600 requests/min per client IP, with 1, 2 and 3 replicas on
//! distinct source addresses (127.0.0.2-4) sharing the accounts through a real etcd;
//! then the failover time at the default lease TTL.
//!
//! For each replica count the replicas (real `vpswatch run` processes, polling once: the
//! poll interval is an hour) start together under a fresh etcd prefix and settle — every
//! account owned, every replica seeing the others; an account may move once in the first
//! second. The cycle runs from the first request any replica sends to the request that
//! completes each replica's share (every running VM of the accounts it owns asked about
//! from its address). It is compared with the floor, the replica's running VMs / 10 s
//! (one request per running VM at 600/min), and the 429s the simulator sent are counted.
//! Failover: `kill -9` of one of 3 replicas → the first request by another replica about
//! a VM of an account the killed one owned.
//!
//! `cargo bench --bench cluster --features cluster`; knobs: VPSWATCH_BENCH_VMS (3000,
//! all accounts together), VPSWATCH_BENCH_ACCOUNTS (30), VPSWATCH_BENCH_REPLICAS
//! (largest replica count, 3), VPSWATCH_BENCH_TTL (lease TTL in seconds for the
//! failover, 10 = the default), VPSWATCH_BENCH_POLL_INTERVAL (`1h`: one poll; shorter
//! than the cycle, accounts that finish poll again while others still wait for their
//! first, which is what the rate budget's first-come-first-served queue is for). Needs
//! `etcd` (Debian etcd-server) or VPSWATCH_TEST_ETCD.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run"
)]

#[path = "common/mod.rs"]
mod common;

use common::{env_num, free_port, sum_metric, Proc};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{LnvpsSim, LnvpsSimHandle, RateLimitSettings, Scenario, VmState};

const DEADLINE: Duration = Duration::from_secs(3600);

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
}

fn member(i: usize) -> String {
    format!("r{i}")
}

struct Etcd {
    url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

async fn etcd() -> Etcd {
    let dir = tempfile::tempdir().expect("etcd dir");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(std::env::var("VPSWATCH_TEST_ETCD").unwrap_or("etcd".into()))
        .arg("--name=bench")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=bench={peer_url}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd (Debian package etcd-server)");
    let etcd = Etcd {
        url,
        _proc: Proc(child),
        _dir: dir,
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/health", etcd.url)).await {
            if r.text().await.unwrap_or_default().contains("true") {
                return etcd;
            }
        }
        assert!(Instant::now() < until, "etcd did not become healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Replica {
    proc: Option<Proc>,
    metrics: String,
}

async fn scrape(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

struct World {
    sim: LnvpsSimHandle,
    etcd: Etcd,
    accounts: Vec<String>,
    /// Running VM id → account index.
    running: BTreeMap<u64, usize>,
    dir: tempfile::TempDir,
}

impl World {
    /// `n` replicas under their own etcd prefix, started together; returns once every
    /// replica sees all `n` and every account is owned.
    async fn replicas(&self, n: usize, ttl: u64, round: &str) -> Vec<Replica> {
        let poll_interval =
            std::env::var("VPSWATCH_BENCH_POLL_INTERVAL").unwrap_or_else(|_| "1h".into());
        let mut accounts_text = String::new();
        for (i, name) in self.accounts.iter().enumerate() {
            let key = self.dir.path().join(format!("{name}.nsec"));
            accounts_text.push_str(&format!(
                "[[accounts]]\nname = \"{name}\"\nprovider = \"lnvps\"\nbase_url = \"{}\"\nnsec_file = {:?}\n",
                self.sim.base_url(),
                key.display().to_string()
            ));
            if !key.exists() {
                std::fs::write(&key, vpswatch_sim::scenario::bench_account_secret(i)).expect("key");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
        }
        let mut out = Vec::new();
        for i in 0..n {
            let port = free_port();
            let config = self.dir.path().join(format!("{round}-{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "poll_interval = \"{poll_interval}\"\npoll_timeout = \"30m\"\nstate_dir = {:?}\n\
                     [web]\nlisten_address = \"127.0.0.1:{port}\"\n[probes]\nenabled = false\n\
                     [cluster]\nendpoints = [\"{}\"]\nmember = \"{}\"\nprefix = \"/{round}\"\n\
                     lease_ttl = \"{ttl}s\"\nsource_address = \"{}\"\n{accounts_text}",
                    self.dir
                        .path()
                        .join(format!("state-{round}-{i}"))
                        .display()
                        .to_string(),
                    self.etcd.url,
                    member(i),
                    source(i)
                ),
            )
            .expect("config");
            let log = std::fs::File::create(self.dir.path().join(format!("{round}-{i}.log")))
                .expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
                .args(["--log.level", "warn", "run", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start vpswatch");
            out.push(Replica {
                proc: Some(Proc(child)),
                metrics: format!("http://127.0.0.1:{port}/metrics"),
            });
        }
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let mut owned = 0.0;
            let mut all_see_all = true;
            for r in &out {
                let text = scrape(&r.metrics).await.unwrap_or_default();
                all_see_all &= sum_metric(&text, "vpswatch_cluster_members", "") == n as f64;
                owned += sum_metric(&text, "vpswatch_cluster_accounts_owned", "");
            }
            if all_see_all && owned == self.accounts.len() as f64 {
                return out;
            }
            assert!(
                Instant::now() < until,
                "{n} replicas did not settle (logs in {})",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Running VMs each of `n` members owns, by the same assignment the replicas use.
    fn shares(&self, n: usize) -> Vec<BTreeSet<u64>> {
        let members: Vec<String> = (0..n).map(member).collect();
        let mut out = vec![BTreeSet::new(); n];
        for (&vm, &acc) in &self.running {
            let owner =
                vpswatch::cluster::assign(&format!("lnvps/{}", self.accounts[acc]), &members)
                    .expect("a member");
            let i = members.iter().position(|m| m == owner).expect("member");
            out[i].insert(vm);
        }
        out
    }
}

#[tokio::main]
async fn main() {
    vpswatch::tls::install_crypto_provider();
    let vms = env_num("VPSWATCH_BENCH_VMS", 3000) as usize;
    let n_accounts = env_num("VPSWATCH_BENCH_ACCOUNTS", 30).max(1) as usize;
    let max_replicas = env_num("VPSWATCH_BENCH_REPLICAS", 3).clamp(1, 3) as usize;
    let ttl = env_num("VPSWATCH_BENCH_TTL", 10);
    let per_account = (vms / n_accounts).max(1);

    let scenario = Scenario::bench_accounts(n_accounts, per_account).expect("scenario");
    let sim = LnvpsSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        scenario,
        Arc::new(SystemClock),
    )
    .await
    .expect("simulator");
    let mut owners: Vec<String> = Vec::new();
    let mut running = BTreeMap::new();
    for vm in sim.vms() {
        if !owners.contains(&vm.owner) {
            owners.push(vm.owner.clone());
        }
        if vm.state == VmState::Running {
            running.insert(
                vm.id,
                owners.iter().position(|o| *o == vm.owner).expect("owner"),
            );
        }
    }
    let world = World {
        sim,
        etcd: etcd().await,
        accounts: (0..n_accounts).map(|i| format!("acc{i}")).collect(),
        running,
        dir: tempfile::tempdir().expect("tempdir"),
    };
    println!(
        "vpswatch cluster benchmark: {} VMs ({} running) in {n_accounts} accounts, \
         600 requests/min per client IP, the first poll cycle of replicas started together",
        n_accounts * per_account,
        world.running.len()
    );
    println!();
    println!("| replicas | running VMs per replica | cycle | floor (VMs / 10 s) | ratio (≤ 1.1) | 429s (0) |");
    println!("|---|---|---|---|---|---|");

    let mut last = Vec::new();
    let mut notes = Vec::new();
    for n in 1..=max_replicas {
        drop(std::mem::take(&mut last));
        // A fresh limiter window for every round.
        world.sim.set_rate_limit(RateLimitSettings::default());
        world.sim.clear_requests();
        let replicas = world.replicas(n, ttl, &format!("bench{n}")).await;
        let shares = world.shares(n);
        // The cycle starts with the first request any replica sends (the replicas start
        // together and, at the default hour's poll interval, poll once) and ends with the request
        // that completes each replica's share.
        let started = Instant::now();
        let mut done: Vec<Option<chrono::DateTime<chrono::Utc>>> = vec![None; n];
        let mut seen: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); n];
        let mut throttled = 0;
        let mut read = 0;
        while done.iter().any(Option::is_none) {
            assert!(
                started.elapsed() < DEADLINE,
                "no full cycle within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            let log = world.sim.requests();
            for r in &log[read.min(log.len())..] {
                if r.status == 429 {
                    throttled += 1;
                }
                let Some(i) = (0..n).find(|&i| source(i) == r.client_ip) else {
                    continue;
                };
                if let Some(vm) = r.vm_id.filter(|vm| shares[i].contains(vm)) {
                    seen[i].insert(vm);
                    if done[i].is_none() && seen[i].len() == shares[i].len() {
                        done[i] = Some(r.at);
                    }
                }
            }
            read = log.len();
        }
        let log = world.sim.requests();
        let t0 = log.first().expect("a request").at;
        let mut by_endpoint: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &log {
            *by_endpoint.entry(r.endpoint.as_str()).or_default() += 1;
        }
        notes.push(format!("{n} replica(s), requests by endpoint until the last share was complete: {by_endpoint:?}"));
        let done: Vec<Duration> = done
            .iter()
            .map(|d| (d.expect("done") - t0).to_std().unwrap_or_default())
            .collect();
        let (worst, cycle) = done
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|(_, d)| *d)
            .expect("a replica");
        let floor = shares[worst].len() as f64 / 10.0;
        let sizes: Vec<String> = shares.iter().map(|s| s.len().to_string()).collect();
        println!(
            "| {n} | {} | {:.1} s | {floor:.1} s | {:.3} | {throttled} |",
            sizes.join(" / "),
            cycle.as_secs_f64(),
            cycle.as_secs_f64() / floor
        );
        last = replicas;
    }

    println!();
    for note in notes {
        println!("{note}");
    }

    // Failover: kill -9 of replica 0 of the last round; its accounts' VMs are next asked
    // about by another replica.
    let n = last.len();
    if n >= 2 {
        let shares = world.shares(n);
        world.sim.clear_requests();
        let mut r0 = last[0].proc.take().expect("running");
        r0.0.kill().expect("SIGKILL");
        let killed = Instant::now();
        let _ = r0.0.wait();
        let taken = loop {
            assert!(killed.elapsed() < Duration::from_secs(300), "no takeover");
            if world.sim.requests().iter().any(|r| {
                r.client_ip != source(0) && r.vm_id.is_some_and(|v| shares[0].contains(&v))
            }) {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!();
        println!(
            "failover ({n} replicas, lease_ttl {ttl} s): owner killed → first poll by the new owner {:.1} s",
            taken.as_secs_f64()
        );
    }
    drop(last);
    world.sim.shutdown();
}
