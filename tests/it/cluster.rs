//! Replicas sharing accounts through a real etcd: two real `vpswatch` processes, each
//! sending its provider requests from its own loopback address, against the LNVPS
//! simulator (whose request log records each request's client IP).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::daemon_process::{spawn_logged, KillOnDrop};
use crate::common::etcd::Etcd;
use crate::common::{free_port, wait_for, Exposition};
use vpswatch_sim::lnvps::{LnvpsSimHandle, Scenario, VmSpec};

const T: Duration = Duration::from_secs(60);
const MEMBERS: [&str; 2] = ["a", "b"];
const LEASE_TTL_SECS: u64 = 2;
const POLL: Duration = Duration::from_millis(300);

fn source(member: &str) -> IpAddr {
    match member {
        "a" => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        _ => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
    }
}

/// Account names whose rendezvous assignment gives every member at least one.
fn account_names(n: usize) -> Vec<String> {
    let members: Vec<String> = MEMBERS.map(String::from).to_vec();
    let mut names: Vec<String> = Vec::new();
    for i in 0.. {
        names.push(format!("acc{i}"));
        let owners: BTreeSet<_> = names
            .iter()
            .map(|n| owner_of(n, &members).to_string())
            .collect();
        if names.len() >= n && owners.len() == MEMBERS.len() {
            break;
        }
    }
    names
}

fn owner_of<'a>(account: &str, members: &'a [String]) -> &'a str {
    vpswatch::cluster::assign(&format!("lnvps/{account}"), members).expect("a member")
}

struct Replica {
    member: &'static str,
    process: Option<KillOnDrop>,
    metrics: String,
    web: u16,
    log: PathBuf,
}

impl Replica {
    async fn scrape(&self) -> Option<Exposition> {
        let r = reqwest::get(&self.metrics).await.ok()?;
        Some(Exposition::parse(&r.text().await.ok()?))
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + T;
        loop {
            if let Some(e) = self.scrape().await {
                if pred(&e) {
                    return e;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{}: timed out waiting for: {what}\n{}\n--- log ---\n{}",
                        self.member,
                        e.text,
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "{}: timed out waiting for: {what} (no /metrics)",
                    self.member
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill_9(&mut self) {
        let mut p = self.process.take().expect("running");
        p.0.kill().expect("SIGKILL");
        let _ = p.0.wait();
    }
}

struct World {
    sim: LnvpsSimHandle,
    etcd: Etcd,
    accounts: Vec<String>,
    /// VM id → account name.
    vm_account: BTreeMap<u64, String>,
    replicas: Vec<Replica>,
    _dir: tempfile::TempDir,
}

/// The simulator with one VM per account (VM `i + 1` belongs to account `i`, answering
/// probes on 127.7.0.`i + 1`), etcd, and one replica per member.
async fn world(n_accounts: usize, extra: &str, lease_ttl: u64) -> World {
    vpswatch::tls::install_crypto_provider();
    let accounts = account_names(n_accounts);
    let keys: Vec<nostr::Keys> = accounts.iter().map(|_| nostr::Keys::generate()).collect();
    let vm_port = free_port();
    let scenario = Scenario {
        vms: keys
            .iter()
            .enumerate()
            .map(|(i, k)| VmSpec {
                owner: k.public_key().to_hex(),
                ipv4: Some(Ipv4Addr::new(127, 7, 0, i as u8 + 1)),
                ..VmSpec::default()
            })
            .collect(),
        ..Scenario::default()
    };
    let sim = crate::common::lnvps_sim_with_vm_ports(scenario, vm_port).await;
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut account_text = String::new();
    for (name, k) in accounts.iter().zip(&keys) {
        let file = dir.path().join(format!("{name}.nsec"));
        std::fs::write(&file, k.secret_key().to_secret_hex()).expect("nsec");
        account_text.push_str(&format!(
            "[[accounts]]\nname = \"{name}\"\nprovider = \"lnvps\"\nbase_url = \"{}\"\nnsec_file = \"{}\"\n",
            sim.base_url(),
            file.display()
        ));
    }
    let mut replicas = Vec::new();
    for member in MEMBERS {
        let web = free_port();
        let state = dir.path().join(format!("state-{member}"));
        let config = dir.path().join(format!("{member}.toml"));
        let text = format!(
            r#"poll_interval = "{poll}ms"
request_timeout = "1s"
state_dir = "{state}"
[web]
listen_address = "127.0.0.1:{web}"
[probes]
interval = "100ms"
timeout = "300ms"
[probes.ports]
lnvps = {vm_port}
[cluster]
endpoints = ["{etcd}"]
member = "{member}"
lease_ttl = "{lease_ttl}s"
source_address = "{source}"
{extra}
{account_text}"#,
            poll = POLL.as_millis(),
            state = state.display(),
            etcd = etcd.client_url,
            source = source(member),
        );
        std::fs::write(&config, text).expect("config");
        let log = dir.path().join(format!("{member}.log"));
        replicas.push(Replica {
            member,
            process: Some(spawn_logged(&config, &log)),
            metrics: format!("http://127.0.0.1:{web}/metrics"),
            web,
            log,
        });
    }
    let vm_account = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()))
        .collect();
    World {
        sim,
        etcd,
        accounts,
        vm_account,
        replicas,
        _dir: dir,
    }
}

fn owned(e: &Exposition) -> f64 {
    e.get("vpswatch_cluster_accounts_owned", &[])
        .unwrap_or(-1.0)
}

impl World {
    /// Client IPs that asked about each account's VM, per account.
    fn pollers(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for r in self.sim.requests() {
            if let Some(a) = r.vm_id.and_then(|id| self.vm_account.get(&id)) {
                out.entry(a.clone()).or_default().insert(r.client_ip);
            }
        }
        out
    }

    /// Clears the request log and waits until every account's VM was asked about again
    /// (by anyone), twice.
    async fn fresh_requests(&self) {
        self.sim.clear_requests();
        wait_for("every account polled twice since", T, || async {
            let mut n: BTreeMap<u64, usize> = BTreeMap::new();
            for r in self.sim.requests() {
                if let Some(id) = r.vm_id {
                    *n.entry(id).or_default() += 1;
                }
            }
            self.vm_account
                .keys()
                .all(|id| n.get(id).copied().unwrap_or(0) >= 2)
        })
        .await;
    }

    async fn settled(&self, live: &[&str]) {
        let n = self.accounts.len() as f64;
        let members: Vec<String> = live.iter().map(|m| m.to_string()).collect();
        for r in self.replicas.iter().filter(|r| live.contains(&r.member)) {
            let want = self
                .accounts
                .iter()
                .filter(|a| owner_of(a, &members) == r.member)
                .count() as f64;
            r.wait("its share of the accounts", |e| {
                e.get("vpswatch_cluster_members", &[]) == Some(live.len() as f64)
                    && owned(e) == want
                    && e.get("vpswatch_cluster_accounts", &[]) == Some(n)
            })
            .await;
        }
    }
}

/// `[cluster]` replicas: each account is polled by exactly one replica, from that
/// replica's source address, and exported only there; `kill -9` of a replica moves its
/// accounts to the survivor within the lease TTL plus a poll interval (plus slack for
/// a loaded machine).
#[tokio::test]
async fn each_account_is_polled_by_one_replica_and_a_killed_ones_move() {
    let mut w = world(4, "", LEASE_TTL_SECS).await;
    w.settled(&MEMBERS).await;
    w.fresh_requests().await;
    let both: Vec<String> = MEMBERS.map(String::from).to_vec();
    let pollers = w.pollers();
    for a in &w.accounts {
        let want: BTreeSet<IpAddr> = [source(owner_of(a, &both))].into();
        assert_eq!(pollers.get(a), Some(&want), "account {a}: {pollers:?}");
    }
    for r in &w.replicas {
        let e = r.scrape().await.expect("metrics");
        for a in &w.accounts {
            let mine = owner_of(a, &both) == r.member;
            assert_eq!(
                e.has("vpswatch_provider_up", &[("account", a)]),
                mine,
                "{} exports {a} iff it owns it",
                r.member
            );
        }
    }

    // kill -9 of "a": its lease expires, "b" takes every account over.
    w.replicas[0].kill_9();
    let killed = Instant::now();
    w.replicas[1]
        .wait("b owns every account", |e| {
            owned(e) == w.accounts.len() as f64
                && e.get("vpswatch_cluster_members", &[]) == Some(1.0)
        })
        .await;
    let took = killed.elapsed();
    let bound = Duration::from_secs(LEASE_TTL_SECS) + POLL + Duration::from_secs(10);
    assert!(took < bound, "takeover took {took:?} (bound {bound:?})");
    w.fresh_requests().await;
    let pollers = w.pollers();
    let b: BTreeSet<IpAddr> = [source("b")].into();
    for a in &w.accounts {
        assert_eq!(
            pollers.get(a),
            Some(&b),
            "account {a} after failover: {pollers:?}"
        );
    }
    w.sim.shutdown();
}

fn power_calls(sim: &LnvpsSimHandle) -> Vec<(u64, IpAddr)> {
    sim.requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .filter_map(|r| r.vm_id.map(|id| (id, r.client_ip)))
        .collect()
}

fn evaluations(e: &Exposition, result: &str) -> f64 {
    e.samples
        .iter()
        .filter(|(n, labels, _)| {
            n == "vpswatch_actions_total"
                && labels.iter().any(|(k, v)| k == "result" && v == result)
        })
        .map(|(_, _, v)| *v)
        .sum()
}

const REBOOT_RULE: &str = r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
cooldown = "1h"
patience = "500ms"
"#;

/// `kill -9` of the owner right after its reboot of a VM that stays dead: the replica
/// that takes the account over finds the reboot in etcd and sends no second one inside
/// the cooldown (its own state directory knows nothing of it).
#[tokio::test]
async fn the_new_owner_keeps_the_old_owners_cooldown() {
    let mut w = world(2, REBOOT_RULE, LEASE_TTL_SECS).await;
    w.settled(&MEMBERS).await;
    let both: Vec<String> = MEMBERS.map(String::from).to_vec();
    let first = w
        .replicas
        .iter()
        .position(|r| r.member == owner_of(&w.vm_account[&1], &both))
        .expect("owner");
    let second = 1 - first;
    w.replicas[first]
        .wait("the VM answers probes", |e| {
            e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
        })
        .await;
    w.sim.set_stays_dead(1, true);
    wait_for("the owner's reboot reaches the provider", T, || async {
        !power_calls(&w.sim).is_empty()
    })
    .await;
    w.replicas[first].kill_9();
    let survivor = &w.replicas[second];
    survivor
        .wait("the new owner evaluates the dead VM and is refused", |e| {
            e.has(
                "vpswatch_actions_total",
                &[("vm", "1"), ("result", "failed")],
            )
        })
        .await;
    let journal = reqwest::get(format!("http://127.0.0.1:{}/api/v1/actions", survivor.web))
        .await
        .expect("actions api")
        .text()
        .await
        .expect("body");
    assert!(
        journal.contains("cooldown") && journal.contains(&format!("replica {}", MEMBERS[first])),
        "the journal names the other replica's reboot: {journal}"
    );
    assert_eq!(
        power_calls(&w.sim),
        vec![(1, source(MEMBERS[first]))],
        "one reboot across the failover"
    );
    w.sim.shutdown();
}

/// A hung VM is rebooted exactly once across the replicas (by its owner, from the
/// owner's address); with etcd gone, the next hung VM gets no action at all (the fence
/// cannot be committed) while /metrics keeps being served.
#[tokio::test]
async fn a_hung_vm_is_rebooted_once_and_nothing_acts_without_etcd() {
    let rules = REBOOT_RULE;
    // A long TTL keeps ownership through the etcd outage below, so the watchdog goes on
    // evaluating and tries to act: what stops it is the fence.
    let ttl = 30;
    let mut w = world(2, rules, ttl).await;
    w.settled(&MEMBERS).await;
    let both: Vec<String> = MEMBERS.map(String::from).to_vec();
    let replica_of = |vm: u64| {
        let owner = owner_of(&w.vm_account[&vm], &both);
        w.replicas
            .iter()
            .position(|r| r.member == owner)
            .expect("replica")
    };
    for vm in [1u64, 2] {
        w.replicas[replica_of(vm)]
            .wait("the VM answers probes", |e| {
                e.get("vps_probe_success", &[("vm", &vm.to_string())]) == Some(1.0)
            })
            .await;
    }

    // Dead through reboots: the rule keeps firing, so every later round is evaluated.
    w.sim.set_stays_dead(1, true);
    let owner = &w.replicas[replica_of(1)];
    owner
        .wait("the owner evaluates the VM after its reboot", |e| {
            // No escalation configured: after the reboot failed to help, it gives up.
            evaluations(e, "gave_up") >= 1.0
        })
        .await;
    let calls = power_calls(&w.sim);
    assert_eq!(
        calls,
        vec![(1, source(owner.member))],
        "one reboot, by the owner"
    );

    // etcd gone: the fence cannot be committed.
    w.etcd.kill();
    w.sim.set_stays_dead(2, true);
    let owner2 = &w.replicas[replica_of(2)];
    let e = owner2
        .wait("the watchdog tried to act and was refused", |e| {
            evaluations(e, "failed") >= 1.0
        })
        .await;
    assert!(
        e.get("vpswatch_cluster_etcd_errors_total", &[])
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        e.text
    );
    let journal = reqwest::get(format!("http://127.0.0.1:{}/api/v1/actions", owner2.web))
        .await
        .expect("actions api")
        .text()
        .await
        .expect("body");
    assert!(
        journal.contains("not sent") && journal.contains("etcd"),
        "the journal says why: {journal}"
    );
    assert_eq!(power_calls(&w.sim), calls, "no provider write without etcd");
    for r in &w.replicas {
        r.scrape().await.expect("metrics still served without etcd");
    }
    w.sim.shutdown();
}
