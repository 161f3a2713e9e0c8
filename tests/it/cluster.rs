//! Replicas sharing accounts through a real etcd: real `vpswatch` processes, each
//! sending its provider requests from its own loopback address, against the LNVPS
//! simulator (whose request log records each request's client IP). etcd is one member,
//! a three-member cluster (quorum), or a member speaking TLS or requiring a password.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::daemon_process::{spawn_logged, KillOnDrop};
use crate::common::etcd::{EtcdCluster, ServerTls};
use crate::common::{free_port, wait_for, Exposition};
use vpswatch_sim::lnvps::{LnvpsSimHandle, Scenario, VmSpec};

const T: Duration = Duration::from_secs(60);
const MEMBERS: [&str; 2] = ["a", "b"];
const LEASE_TTL_SECS: u64 = 2;
const POLL: Duration = Duration::from_millis(300);

/// Each member's provider requests leave from its own loopback address.
fn source(member: &str) -> IpAddr {
    match member {
        "a" => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        "b" => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
        "c" => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)),
        other => panic!("no source address for member {other}"),
    }
}

fn names(members: &[&str]) -> Vec<String> {
    members.iter().map(|m| m.to_string()).collect()
}

/// At least `n` account names, so many that the rendezvous assignment over `members`
/// gives every member at least one.
fn account_names(n: usize, members: &[&str]) -> Vec<String> {
    let all = names(members);
    let mut out: Vec<String> = Vec::new();
    for i in 0.. {
        out.push(format!("acc{i}"));
        let owners: BTreeSet<_> = out.iter().map(|n| owner_of(n, &all).to_string()).collect();
        if out.len() >= n && owners.len() == members.len() {
            break;
        }
    }
    out
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
                        self.log_text()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "{}: timed out waiting for: {what} (no /metrics)\n--- log ---\n{}",
                    self.member,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + T;
        loop {
            let log = self.log_text();
            if pred(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what} in the log:\n{log}",
                self.member
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn journal(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/api/v1/actions", self.web))
            .await
            .expect("actions api")
            .text()
            .await
            .expect("body")
    }

    /// The lease of the replica's latest etcd session, from its log.
    fn lease(&self) -> Option<i64> {
        let log = self.log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("cluster: registered"))?;
        let (_, rest) = line.split_once("lease=")?;
        rest.split_whitespace().next()?.parse().ok()
    }

    fn pid(&self) -> String {
        self.process.as_ref().expect("running").0.id().to_string()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to the process by its PID.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal} {}", self.member);
    }

    fn kill_9(&mut self) {
        let mut p = self.process.take().expect("running");
        p.0.kill().expect("SIGKILL");
        let _ = p.0.wait();
    }

    /// SIGTERM, then waits for the process to exit by itself.
    async fn terminate(&mut self) {
        self.signal("TERM");
        let mut p = self.process.take().expect("running");
        let deadline = Instant::now() + T;
        while p.0.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.member);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct World {
    sim: LnvpsSimHandle,
    etcd: EtcdCluster,
    accounts: Vec<String>,
    /// VM id → account name.
    vm_account: BTreeMap<u64, String>,
    replicas: Vec<Replica>,
    lease_ttl: u64,
    /// The rules and settings every replica shares.
    extra: String,
    vm_port: u16,
    account_text: String,
    dir: tempfile::TempDir,
}

/// The simulator with one VM per account (VM `i + 1` belongs to account `i`, answering
/// probes on 127.7.0.`i + 1`) and `etcd`; no replica runs yet ([`World::start`]).
/// Account names give each of `members` a share when all of them run.
async fn world_on(
    etcd: EtcdCluster,
    n_accounts: usize,
    members: &[&str],
    extra: &str,
    lease_ttl: u64,
) -> World {
    vpswatch::tls::install_crypto_provider();
    let accounts = account_names(n_accounts, members);
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
        replicas: Vec::new(),
        lease_ttl,
        extra: extra.to_string(),
        vm_port,
        account_text,
        dir,
    }
}

/// One etcd member and replicas "a" and "b" running.
async fn world(n_accounts: usize, extra: &str, lease_ttl: u64) -> World {
    let etcd = EtcdCluster::start(1).await;
    let mut w = world_on(etcd, n_accounts, &MEMBERS, extra, lease_ttl).await;
    for m in MEMBERS {
        w.start(m);
    }
    w
}

fn owned(e: &Exposition) -> f64 {
    e.get("vpswatch_cluster_accounts_owned", &[])
        .unwrap_or(-1.0)
}

impl World {
    /// Starts replica `member` with the shared settings.
    fn start(&mut self, member: &'static str) {
        self.start_with(member, "");
    }

    /// Starts replica `member`; `cluster_keys` are added to its `[cluster]` section.
    fn start_with(&mut self, member: &'static str, cluster_keys: &str) {
        let web = free_port();
        let state = self.dir.path().join(format!("state-{member}"));
        let config = self.dir.path().join(format!("{member}.toml"));
        let endpoints = self
            .etcd
            .client_urls()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
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
endpoints = [{endpoints}]
member = "{member}"
lease_ttl = "{lease_ttl}s"
source_address = "{source}"
{cluster_keys}
{extra}
{account_text}"#,
            poll = POLL.as_millis(),
            state = state.display(),
            vm_port = self.vm_port,
            lease_ttl = self.lease_ttl,
            source = source(member),
            extra = self.extra,
            account_text = self.account_text,
        );
        std::fs::write(&config, text).expect("config");
        let log = self.dir.path().join(format!("{member}.log"));
        self.replicas.retain(|r| r.member != member);
        self.replicas.push(Replica {
            member,
            process: Some(spawn_logged(&config, &log)),
            metrics: format!("http://127.0.0.1:{web}/metrics"),
            web,
            log,
        });
    }

    fn replica(&self, member: &str) -> &Replica {
        self.replicas
            .iter()
            .find(|r| r.member == member)
            .expect("replica")
    }

    fn replica_mut(&mut self, member: &str) -> &mut Replica {
        self.replicas
            .iter_mut()
            .find(|r| r.member == member)
            .expect("replica")
    }

    /// The replica that owns VM `vm`'s account while `live` run.
    fn owner_of_vm(&self, vm: u64, live: &[&str]) -> &Replica {
        self.replica(owner_of(&self.vm_account[&vm], &names(live)))
    }

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

    /// Waits until every replica in `live` sees exactly `live` and owns its share.
    async fn settled(&self, live: &[&str]) {
        let n = self.accounts.len() as f64;
        let members = names(live);
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

    /// With `live` settled: every account is polled by exactly one replica, its
    /// rendezvous owner (by source IP), and exported only by that one.
    async fn one_poller_each(&self, live: &[&str]) {
        self.settled(live).await;
        self.fresh_requests().await;
        let members = names(live);
        let pollers = self.pollers();
        for a in &self.accounts {
            let want: BTreeSet<IpAddr> = [source(owner_of(a, &members))].into();
            assert_eq!(
                pollers.get(a),
                Some(&want),
                "account {a} with {live:?}: {pollers:?}"
            );
        }
        for r in self.replicas.iter().filter(|r| live.contains(&r.member)) {
            let e = r.scrape().await.expect("metrics");
            for a in &self.accounts {
                let mine = owner_of(a, &members) == r.member;
                assert_eq!(
                    e.has("vpswatch_provider_up", &[("account", a)]),
                    mine,
                    "{} exports {a} iff it owns it ({live:?})",
                    r.member
                );
            }
        }
    }
}

/// Three replicas share nine accounts: each account is polled by exactly one replica
/// (from that replica's source address) and exported only there, and ownership follows
/// the members: a replica that joins takes its share, one killed with `kill -9` loses
/// its share after the lease TTL, one stopped with SIGTERM frees its share at once.
#[tokio::test]
async fn three_replicas_share_nine_accounts_as_they_join_and_leave() {
    let all = ["a", "b", "c"];
    let etcd = EtcdCluster::start(1).await;
    let mut w = world_on(etcd, 9, &all, "", LEASE_TTL_SECS).await;
    w.start("a");
    w.start("b");
    w.one_poller_each(&["a", "b"]).await;

    // "c" joins: exactly the accounts it is assigned move to it.
    w.start("c");
    w.one_poller_each(&all).await;
    let moved = w
        .accounts
        .iter()
        .filter(|a| owner_of(a, &names(&["a", "b"])) != owner_of(a, &names(&all)))
        .count();
    let of_c = w
        .accounts
        .iter()
        .filter(|a| owner_of(a, &names(&all)) == "c")
        .count();
    assert!(of_c > 0 && moved == of_c, "only c's share moves");

    // kill -9 of "c": its lease expires, its accounts go back to a and b.
    w.replica_mut("c").kill_9();
    let killed = Instant::now();
    w.settled(&["a", "b"]).await;
    let took = killed.elapsed();
    let bound = Duration::from_secs(LEASE_TTL_SECS) + POLL + Duration::from_secs(10);
    assert!(took < bound, "takeover took {took:?} (bound {bound:?})");
    w.one_poller_each(&["a", "b"]).await;

    // SIGTERM of "b": it revokes its lease on the way out, "a" takes everything.
    w.replica_mut("b").terminate().await;
    w.one_poller_each(&["a"]).await;
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
    w.etcd.kill(0);
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

/// The VM answers probes on its owner; then it goes dead (and a reboot does not help).
async fn vm_answers_then_dies(w: &World, vm: u64, owner: &Replica) {
    let vm_label = vm.to_string();
    owner
        .wait("the VM answers probes", |e| {
            e.get("vps_probe_success", &[("vm", &vm_label)]) == Some(1.0)
        })
        .await;
    w.sim.set_stays_dead(vm, true);
}

fn failed_actions(e: &Exposition, vm: &str) -> f64 {
    e.samples
        .iter()
        .filter(|(n, labels, _)| {
            n == "vpswatch_actions_total"
                && labels.iter().any(|(k, v)| k == "result" && v == "failed")
                && labels.iter().any(|(k, v)| k == "vm" && v == vm)
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// The owner of a dead VM's account is frozen (SIGSTOP) while its watchdog waits out
/// the rule's `for`, past its lease TTL; the other replica takes the account over. When
/// the frozen one resumes, its watchdog wants to reboot at once while its view still
/// says it owns the account (etcd is frozen for that moment, so its cluster task cannot
/// learn otherwise first): the fence transaction, which needs the owner key to carry
/// the replica's lease, refuses the reboot, and nothing is sent.
#[tokio::test]
async fn a_paused_owner_that_resumes_sends_nothing() {
    let hold = Duration::from_secs(3);
    let rule = format!(
        r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "{}s"
failures = 2
action = "reboot"
cooldown = "1h"
patience = "500ms"
"#,
        hold.as_secs()
    );
    // A longer TTL: the resumed replica notices its lost lease only when a keep-alive
    // (a third of the TTL, here over 2.6 s) goes unanswered, well after its watchdog
    // acted even on a loaded machine.
    let ttl = 8;
    let etcd = EtcdCluster::start(1).await;
    let mut w = world_on(etcd, 2, &MEMBERS, &rule, ttl).await;
    for m in MEMBERS {
        w.start(m);
    }
    w.settled(&MEMBERS).await;
    let frozen = w.owner_of_vm(1, &MEMBERS);
    let other = w
        .replicas
        .iter()
        .find(|r| r.member != frozen.member)
        .expect("the other replica");
    vm_answers_then_dies(&w, 1, frozen).await;
    frozen
        .wait("the owner sees the VM dead", |e| {
            e.get("vps_probe_success", &[("vm", "1")]) == Some(0.0)
        })
        .await;
    frozen.signal("STOP");
    let stopped = Instant::now();
    assert!(
        power_calls(&w.sim).is_empty(),
        "the owner acted before it was frozen (the rule's `for` is {hold:?})"
    );
    other
        .wait("the other replica takes every account over", |e| {
            owned(e) == w.accounts.len() as f64
                && e.get("vpswatch_cluster_members", &[]) == Some(1.0)
        })
        .await;
    // Frozen for longer than the rule's `for`: it acts as soon as it runs again.
    while stopped.elapsed() < hold + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.etcd.signal(0, "STOP");
    frozen.signal("CONT");
    frozen
        .wait_log("its watchdog deciding to reboot", |l| {
            l.contains("watchdog action")
        })
        .await;
    w.etcd.signal(0, "CONT");
    // The journal, not /metrics: the replica may give the account up and take it back
    // within a second of resuming, and its per-VM series go and come with it.
    wait_for("the resumed replica's reboot finished", T, || async {
        let journal: serde_json::Value =
            serde_json::from_str(&frozen.journal().await).unwrap_or_default();
        journal["actions"].as_array().is_some_and(|actions| {
            actions
                .iter()
                .any(|a| a["status"] == "failed" || a["status"] == "ok")
        })
    })
    .await;
    let from_frozen: Vec<_> = power_calls(&w.sim)
        .into_iter()
        .filter(|(_, ip)| *ip == source(frozen.member))
        .collect();
    assert_eq!(
        from_frozen,
        vec![],
        "no provider write from the resumed replica"
    );
    let journal = frozen.journal().await;
    assert!(
        journal.contains("not sent") && journal.contains("no longer owns account"),
        "the journal says why: {journal}"
    );
    w.sim.shutdown();
}

fn evaluations_of(e: &Exposition, vm: &str, result: &str) -> f64 {
    e.samples
        .iter()
        .filter(|(n, labels, _)| {
            n == "vpswatch_actions_total"
                && labels.iter().any(|(k, v)| k == "result" && v == result)
                && labels.iter().any(|(k, v)| k == "vm" && v == vm)
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// A three-member etcd. One member down (quorum kept): nothing changes: no ownership
/// moves, no lease is lost, polls go on. Two down (quorum lost): no replica writes to
/// the provider though a VM needs a reboot, every replica keeps serving `/metrics`, and
/// the owner keeps exporting the account's last data, growing stale. Back to quorum:
/// the pending reboot happens, once.
#[tokio::test]
async fn etcd_losing_one_member_changes_nothing_and_losing_quorum_stops_every_action() {
    // An hour's cooldown and the default cap: the attempts refused during the outage
    // reached no provider, so they must hold neither the reboot back afterwards.
    let rule = r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "1s"
failures = 2
action = "reboot"
cooldown = "1h"
window = "1h"
patience = "500ms"
"#;
    let ttl = 3;
    let etcd = EtcdCluster::start(3).await;
    let mut w = world_on(etcd, 2, &MEMBERS, rule, ttl).await;
    for m in MEMBERS {
        w.start(m);
    }
    w.one_poller_each(&MEMBERS).await;
    let changes = |e: &Exposition| {
        e.get("vpswatch_cluster_ownership_changes_total", &[])
            .expect("ownership changes")
    };
    let mut before = Vec::new();
    for r in &w.replicas {
        before.push((owned(&r.scrape().await.expect("metrics")), {
            changes(&r.scrape().await.expect("metrics"))
        }));
    }

    // One member down: watched for two lease TTLs, long enough to lose a lease that is
    // not renewed.
    // The leader, so that a new one is elected meanwhile.
    let leader = w.etcd.leader().await;
    w.etcd.kill(leader);
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(2 * ttl) {
        for (r, (own, ch)) in w.replicas.iter().zip(&before) {
            let e = r.scrape().await.expect("metrics");
            assert_eq!(
                (
                    e.get("vpswatch_cluster_lease_up", &[]),
                    owned(&e),
                    changes(&e)
                ),
                (Some(1.0), *own, *ch),
                "{}: lease, accounts owned and ownership changes with one etcd member down\n{}",
                r.member,
                r.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.one_poller_each(&MEMBERS).await;
    for (r, (_, ch)) in w.replicas.iter().zip(&before) {
        assert_eq!(changes(&r.scrape().await.expect("metrics")), *ch);
    }
    w.etcd.restart(leader);
    w.etcd.wait_healthy().await;

    // Quorum lost while VM 1 needs a reboot: two members down, one left.
    let owner = w.owner_of_vm(1, &MEMBERS).member;
    let account = w.vm_account[&1].clone();
    vm_answers_then_dies(&w, 1, w.replica(owner)).await;
    let (down1, down2) = ((leader + 1) % 3, (leader + 2) % 3);
    let old_leases: Vec<i64> = w.replicas.iter().filter_map(Replica::lease).collect();
    assert_eq!(
        old_leases.len(),
        MEMBERS.len(),
        "every replica's lease in its log"
    );
    w.etcd.kill(down1);
    w.etcd.kill(down2);
    for r in &w.replicas {
        r.wait("its lease lost (metrics still served)", |e| {
            e.get("vpswatch_cluster_lease_up", &[]) == Some(0.0)
        })
        .await;
    }
    let lost = Instant::now();
    w.sim.clear_requests();
    let last_success = |e: &Exposition| {
        e.get(
            "vpswatch_provider_last_success_timestamp_seconds",
            &[("account", &account)],
        )
    };
    let e = w.replica(owner).scrape().await.expect("metrics");
    let last = last_success(&e).expect("the account's last data is still exported");
    w.replica(owner)
        .wait(
            "the owner's watchdog tried to reboot and was refused",
            |e| failed_actions(e, "1") >= 1.0,
        )
        .await;
    // Watched for several poll intervals: no poll, no write, the same last data.
    while lost.elapsed() < POLL * 8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        power_calls(&w.sim),
        vec![],
        "no provider write without quorum"
    );
    let polled: Vec<_> = w.sim.requests().iter().map(|r| r.client_ip).collect();
    assert_eq!(polled, Vec::<IpAddr>::new(), "no polls without a lease");
    let e = w.replica(owner).scrape().await.expect("metrics");
    assert_eq!(
        last_success(&e),
        Some(last),
        "still exported, not polled: its staleness grows\n{}",
        e.text
    );
    assert!(e.has("vpswatch_provider_up", &[("account", &account)]));

    // Quorum back: the reboot is sent, once, by the owner; everything is polled again.
    w.etcd.restart(down1);
    w.etcd.restart(down2);
    w.etcd.wait_healthy().await;
    // The new leader renews every lease, so the ones the replicas gave up live again
    // and hold their owner keys. Kept alive here for good, they prove that ownership
    // returns because each new session revokes its predecessor's lease, not because
    // the old lease lapsed.
    let _old_kept: Vec<_> = old_leases.iter().map(|l| w.etcd.keep_alive(*l)).collect();
    wait_for("the pending reboot reaches the provider", T, || async {
        !power_calls(&w.sim).is_empty()
    })
    .await;
    w.replica(owner)
        .wait(
            "the owner gives up on the VM (a reboot does not help it)",
            |e| evaluations_of(e, "1", "gave_up") >= 1.0,
        )
        .await;
    assert_eq!(
        power_calls(&w.sim),
        vec![(1, source(owner))],
        "one reboot, by the owner, after quorum is back"
    );
    w.one_poller_each(&MEMBERS).await;
    w.sim.shutdown();
}

/// A CA, an etcd server certificate (127.0.0.1, localhost) and a client certificate,
/// all ECDSA P-256, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "etcd test CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("key");
    let ca = p.self_signed(&ca_key).expect("CA");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("pem");
        path
    };
    let leaf = |name: &str, sans: &[&str], usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, sans[0]);
        p.extended_key_usages = usages;
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca, &ca_key).expect("signed");
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let server = leaf(
        "server",
        &["127.0.0.1", "localhost"],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let client = leaf(
        "client",
        &["vpswatch"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    Pki {
        ca: write("ca.pem", ca.pem()),
        server,
        client,
    }
}

/// etcd over TLS with client-certificate authentication: a replica with the CA and a
/// client certificate registers and owns every account; one without a client
/// certificate is refused, says so in its log, and never joins.
#[tokio::test]
async fn replicas_reach_etcd_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = pki(certs.path());
    let etcd = EtcdCluster::start_with(
        1,
        Some(ServerTls {
            cert: pki.server.0.clone(),
            key: pki.server.1.clone(),
            ca: pki.ca.clone(),
            client_cert_auth: true,
        }),
    )
    .await;
    assert!(etcd.client_urls()[0].starts_with("https://"));
    let mut w = world_on(etcd, 2, &["a"], "", LEASE_TTL_SECS).await;
    w.start_with(
        "a",
        &format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            pki.ca, pki.client.0, pki.client.1
        ),
    );
    w.one_poller_each(&["a"]).await;

    w.start_with("b", &format!("ca_file = {:?}\n", pki.ca));
    let b = w.replica("b");
    let log = b
        .wait_log("etcd refusing the connection", |l| {
            l.contains("etcd: session failed")
        })
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("etcd: session failed"))
        .expect("line");
    assert!(
        line.contains("client certificates") && line.contains("cluster.cert_file"),
        "the error says what failed: {line}"
    );
    let e = b.scrape().await.expect("metrics");
    assert_eq!(e.get("vpswatch_cluster_lease_up", &[]), Some(0.0));
    assert_eq!(owned(&e), 0.0);
    w.settled(&["a"]).await;
    w.sim.shutdown();
}

/// etcd with authentication on: a replica with the user's password registers and owns
/// every account; one with a wrong password is refused with a clear error in its log
/// that does not contain the password.
#[tokio::test]
async fn replicas_authenticate_to_etcd_with_a_password() {
    let etcd = EtcdCluster::start(1).await;
    let (root_pw, pw, wrong) = ("root-pw-3141", "vpswatch-pw-2718", "wrong-pw-1618");
    for args in [
        vec!["user", "add", &format!("root:{root_pw}")],
        vec!["role", "add", "vpswatch"],
        vec![
            "role",
            "grant-permission",
            "vpswatch",
            "--prefix=true",
            "readwrite",
            "/vpswatch/",
        ],
        vec!["user", "add", &format!("vpswatch:{pw}")],
        vec!["user", "grant-role", "vpswatch", "vpswatch"],
        vec!["auth", "enable"],
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        etcd.etcdctl(&args, None);
    }
    let mut w = world_on(etcd, 2, &["a"], "", LEASE_TTL_SECS).await;
    let right = w.dir.path().join("etcd.password");
    let bad = w.dir.path().join("etcd-wrong.password");
    std::fs::write(&right, pw).expect("password");
    std::fs::write(&bad, wrong).expect("password");
    #[cfg(unix)]
    for f in [&right, &bad] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    w.start_with(
        "a",
        &format!("user = \"vpswatch\"\npassword_file = {right:?}\n"),
    );
    w.one_poller_each(&["a"]).await;

    w.start_with(
        "b",
        &format!("user = \"vpswatch\"\npassword_file = {bad:?}\n"),
    );
    let b = w.replica("b");
    let log = b
        .wait_log("etcd refusing the password", |l| {
            l.contains("etcd: session failed")
        })
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("etcd: session failed"))
        .expect("line");
    assert!(
        line.contains("authentication failed"),
        "the error says what failed: {line}"
    );
    assert!(
        !log.contains(wrong) && !log.contains(pw),
        "no password in the log:\n{log}"
    );
    assert_eq!(
        b.scrape()
            .await
            .expect("metrics")
            .get("vpswatch_cluster_lease_up", &[]),
        Some(0.0)
    );
    w.settled(&["a"]).await;
    w.sim.shutdown();
}
