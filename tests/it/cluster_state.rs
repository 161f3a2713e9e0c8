//! The guard state replicas share through a real etcd: two real `vpswatch` processes, one
//! LNVPS account (owned by one of them), `kill -9` of the owner, and what the survivor
//! does with the dead owner's renewal in flight, its alert mail and its ladder.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::daemon_process::{spawn_logged, KillOnDrop};
use crate::common::etcd::Etcd;
use crate::common::smtp::{read_mails, ServerOpts, SmtpServer};
use crate::common::{free_port, Exposition};
use vpswatch_sim::lnvps::{LnvpsSimHandle, PaymentMethodSpec, RelTime, Scenario, VmSpec};
use vpswatch_sim::nwc_wallet::{NwcWalletService, WalletFailure};
use vpswatch_sim::power::PowerAction;
use vpswatch_sim::scenario::TemplateSpec;

const T: Duration = Duration::from_secs(60);
const MEMBERS: [&str; 2] = ["a", "b"];
const ACCOUNT: &str = "acc";

struct Replica {
    member: &'static str,
    process: Option<KillOnDrop>,
    web: u16,
    log: PathBuf,
}

impl Replica {
    async fn scrape(&self) -> Option<Exposition> {
        let r = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.web))
            .await
            .ok()?;
        Some(Exposition::parse(&r.text().await.ok()?))
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + T;
        loop {
            let e = self.scrape().await;
            if let Some(e) = e.filter(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                let e = self.scrape().await;
                panic!(
                    "{}: timed out waiting for: {what}\n{}\n--- log ---\n{}",
                    self.member,
                    e.map(|e| e.text).unwrap_or_default(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str) -> String {
        reqwest::get(format!("http://127.0.0.1:{}{path}", self.web))
            .await
            .expect("web answers")
            .text()
            .await
            .expect("body")
    }

    fn kill_9(&mut self) {
        let mut p = self.process.take().expect("running");
        p.0.kill().expect("SIGKILL");
        let _ = p.0.wait();
    }
}

struct World {
    sim: LnvpsSimHandle,
    _etcd: Etcd,
    replicas: Vec<Replica>,
    /// Index of the replica that owns the account first.
    owner: usize,
    _dir: tempfile::TempDir,
}

impl World {
    fn first(&self) -> &Replica {
        &self.replicas[self.owner]
    }

    fn survivor(&self) -> &Replica {
        &self.replicas[1 - self.owner]
    }

    /// Waits until each replica sees both members and the owner holds the account.
    async fn settled(&self) {
        for (i, r) in self.replicas.iter().enumerate() {
            let want = if i == self.owner { 1.0 } else { 0.0 };
            r.wait("both members, the account with its owner", |e| {
                e.get("vpswatch_cluster_members", &[]) == Some(2.0)
                    && e.get("vpswatch_cluster_accounts_owned", &[]) == Some(want)
            })
            .await;
        }
    }

    /// Polls `f` until it holds; on timeout panics with both replicas' logs.
    async fn until(&self, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + T;
        while !f() {
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .replicas
                    .iter()
                    .map(|r| {
                        format!(
                            "--- {} ---\n{}",
                            r.member,
                            std::fs::read_to_string(&r.log).unwrap_or_default()
                        )
                    })
                    .collect();
                panic!("timed out waiting for: {what}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of the first owner; waits until the survivor holds the account.
    async fn fail_over(&mut self) {
        self.replicas[self.owner].kill_9();
        self.survivor()
            .wait("the survivor took the account over", |e| {
                e.get("vpswatch_cluster_accounts_owned", &[]) == Some(1.0)
            })
            .await;
    }
}

/// The simulator with one VM (id 1) whose probes answer on a fresh port.
async fn start_sim(vm: VmSpec) -> (LnvpsSimHandle, u16) {
    vpswatch::tls::install_crypto_provider();
    let vm_port = free_port();
    let scenario = Scenario {
        vms: vec![vm],
        ..Scenario::default()
    };
    (
        crate::common::lnvps_sim_with_vm_ports(scenario, vm_port).await,
        vm_port,
    )
}

/// etcd and two replicas sharing the one account of `sim`; `extra` is appended to both
/// configs (rules, `[email]`).
async fn world(sim: LnvpsSimHandle, vm_port: u16, keys: &nostr::Keys, extra: &str) -> World {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nsec = dir.path().join("acc.nsec");
    std::fs::write(&nsec, keys.secret_key().to_secret_hex()).expect("nsec");
    let members: Vec<String> = MEMBERS.map(String::from).to_vec();
    let first = vpswatch::cluster::assign(&format!("lnvps/{ACCOUNT}"), &members).expect("owner");
    let owner = MEMBERS.iter().position(|m| *m == first).expect("member");
    let mut replicas = Vec::new();
    for member in MEMBERS {
        let web = free_port();
        let config = dir.path().join(format!("{member}.toml"));
        let text = format!(
            r#"poll_interval = "300ms"
request_timeout = "2s"
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
lease_ttl = "2s"
[[accounts]]
name = "{ACCOUNT}"
provider = "lnvps"
base_url = "{url}"
nsec_file = "{nsec}"
{extra}"#,
            state = dir.path().join(format!("state-{member}")).display(),
            etcd = etcd.client_url,
            url = sim.base_url(),
            nsec = nsec.display(),
        );
        std::fs::write(&config, text).expect("config");
        let log = dir.path().join(format!("{member}.log"));
        replicas.push(Replica {
            member,
            process: Some(spawn_logged(&config, &log)),
            web,
            log,
        });
    }
    World {
        sim,
        _etcd: etcd,
        replicas,
        owner,
        _dir: dir,
    }
}

fn probed_vm(keys: &nostr::Keys, ip: Ipv4Addr) -> VmSpec {
    VmSpec {
        owner: keys.public_key().to_hex(),
        ipv4: Some(ip),
        ..VmSpec::default()
    }
}

fn count(e: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    e.samples
        .iter()
        .filter(|(n, l, _)| {
            n == family
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// `kill -9` of the owner after it minted a renewal invoice that the wallet refused to
/// pay: the new owner finds the invoice in etcd and pays that one, once. One invoice is
/// requested across both replicas, the wallet pays its hash once, the expiry moves once.
/// On the way, an operator's clear sent to the replica that does not own the account is
/// applied by the one that does.
#[tokio::test]
async fn a_renewal_in_flight_is_resumed_by_the_new_owner_and_paid_once() {
    let keys = nostr::Keys::generate();
    let vm = VmSpec {
        expires: Some(RelTime::Offset(20 * 3600)),
        age: Duration::from_secs(40 * 86_400),
        template: TemplateSpec {
            name: "Daily BTC".into(),
            ..TemplateSpec::default()
        },
        // vpswatch, not the provider's auto-renewal, renews it.
        auto_renewal_enabled: false,
        ..probed_vm(&keys, Ipv4Addr::new(127, 8, 1, 1))
    };
    let (sim, vm_port) = start_sim(vm).await;
    sim.set_payment_methods(
        &keys.public_key().to_hex(),
        vec![PaymentMethodSpec {
            is_default: true,
            ..PaymentMethodSpec::default()
        }],
    );
    let wallet = NwcWalletService::start(
        sim.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        10_000_000,
    )
    .await
    .expect("wallet starts");
    // Every payment is refused until the owner is dead.
    wallet.fail(WalletFailure::PaymentFailed, None);
    let uri_dir = tempfile::tempdir().expect("tempdir");
    let uri_file = uri_dir.path().join("nwc.uri");
    std::fs::write(&uri_file, wallet.uri()).expect("uri file");
    let rule = format!(
        r#"[[rules]]
name = "renew"
condition = "expires_within"
within = "1d"
action = "renew"
[rules.renew]
mode = "nwc"
nwc_uri_file = "{uri}"
retry_interval = "5s"
backoff = "1s"
wallet_timeout = "2s"
max_attempts = 5
max_per_renewal_sats = 1000
max_per_month_sats = 5000
"#,
        uri = uri_file.display()
    );
    let mut w = world(sim, vm_port, &keys, &rule).await;
    let before = w.sim.vm(1).and_then(|v| v.expires).expect("expires");
    w.settled().await;
    // The refusal is journaled (phase back to `invoiced`, one wallet call): seen in etcd
    // through the other replica, which lists the shared journal.
    let other = w.survivor();
    let deadline = Instant::now() + T;
    loop {
        let listed = other.get("/api/v1/renewals").await;
        if listed.contains("\"phase\":\"invoiced\"") && listed.contains("\"pay_calls\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the owner's refused payment never showed in the shared journal: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(wallet.pay_requests(), 1);
    // An operator's clear may reach any replica: sent to the non-owner, applied by the
    // owner (which re-arms the tries and records when).
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/v1/renewals/clear?account={ACCOUNT}&vm=1",
            other.web
        ))
        .send()
        .await
        .expect("clear");
    assert!(r.status().is_success(), "clear: {}", r.status());
    let deadline = Instant::now() + T;
    loop {
        let listed = w.first().get("/api/v1/renewals").await;
        if listed.contains("\"rearmed_at\":\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the owner never applied the clear sent to the other replica: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let minted = w.sim.payments(1);
    assert_eq!(minted.len(), 1, "the owner minted one invoice: {minted:?}");
    let hash = minted[0].id.to_ascii_lowercase();
    w.fail_over().await;
    // Only now can a payment succeed: the dead owner cannot have made it.
    wallet.clear_failure();
    w.until("the wallet paid", || !wallet.payments().is_empty())
        .await;
    let survivor = w.survivor();
    survivor
        .wait("the survivor saw the renewal paid", |e| {
            count(e, "vpswatch_renewals_total", &[("result", "paid")]) >= 1.0
        })
        .await;
    w.until("the expiry moved", || {
        w.sim.vm(1).and_then(|v| v.expires).expect("expires") > before
    })
    .await;
    let minted = w.sim.payments(1);
    assert_eq!(
        minted.len(),
        1,
        "no second invoice was minted after the failover: {minted:?}\n{}",
        std::fs::read_to_string(&survivor.log).unwrap_or_default()
    );
    assert!(minted[0].is_paid);
    let paid: Vec<String> = wallet
        .payments()
        .iter()
        .map(|p| p.payment_hash.to_ascii_lowercase())
        .collect();
    assert_eq!(
        paid,
        vec![hash.clone()],
        "the old owner's invoice, paid once"
    );
    let after = w.sim.vm(1).and_then(|v| v.expires).expect("expires");
    assert_eq!(
        after - before,
        chrono::Duration::days(1),
        "the expiry moved once"
    );
    // The simulator hands out the open invoice again on a second renew call, so the
    // resumption shows in the calls: the survivor asked for no invoice of its own.
    let renew_calls = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.endpoint.ends_with("/renew"))
        .count();
    assert_eq!(renew_calls, 1, "one invoice request across the failover");
    // The journal is shared: the survivor lists the paid renewal.
    let listed = survivor.get("/api/v1/renewals").await;
    assert!(
        listed.contains("\"last_paid_at\":\"") && !listed.contains("\"rearm_requested\":\""),
        "{listed}"
    );
    wallet.shutdown().await;
    w.sim.shutdown();
}

const ALERT_ONLY: &str = r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
"#;

/// A dead VM's FIRING mail goes out once across a failover: the owner sends it over real
/// SMTP and is killed; the survivor's rule fires for the same VM, finds the sent-mark in
/// etcd and settles its own FIRING as a duplicate instead of mailing it.
#[tokio::test]
async fn a_firing_mail_is_not_sent_again_by_the_new_owner() {
    let keys = nostr::Keys::generate();
    let (sim, vm_port) = start_sim(probed_vm(&keys, Ipv4Addr::new(127, 8, 2, 1))).await;
    let mail_dir = tempfile::tempdir().expect("tempdir");
    let maildir = mail_dir.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let smtp = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let extra = format!(
        r#"[email]
smtp_host = "127.0.0.1"
smtp_port = {port}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
{ALERT_ONLY}"#,
        port = smtp.port
    );
    let mut w = world(sim, vm_port, &keys, &extra).await;
    w.settled().await;
    w.first()
        .wait("the VM answers probes", |e| {
            e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
        })
        .await;
    w.sim.set_stays_dead(1, true);
    let firing = |dir: &std::path::Path| {
        read_mails(dir)
            .iter()
            .filter(|m| m.subject().contains("FIRING"))
            .count()
    };
    w.until("the owner's FIRING mail", || firing(&maildir) >= 1)
        .await;
    // Counted as sent once its mark is written: past the at-least-once window.
    w.first()
        .wait("the owner recorded its mail as sent", |e| {
            count(e, "vpswatch_alerts_total", &[("result", "sent")]) >= 1.0
        })
        .await;
    w.fail_over().await;
    // Positive evidence that the survivor's rule fired and its mail was settled (sent
    // or found sent): queued once, the outbox empty again.
    w.survivor()
        .wait("the survivor queued and settled its FIRING mail", |e| {
            count(e, "vpswatch_alerts_total", &[("result", "queued")]) >= 1.0
                && e.get("vpswatch_alert_outbox_messages", &[]) == Some(0.0)
        })
        .await;
    let e = w.survivor().scrape().await.expect("metrics");
    assert_eq!(
        firing(&maildir),
        1,
        "one FIRING mail across the failover; survivor:\n{}",
        std::fs::read_to_string(&w.survivor().log).unwrap_or_default()
    );
    assert_eq!(
        count(
            &e,
            "vpswatch_alerts_total",
            &[("channel", "email"), ("result", "duplicate")]
        ),
        1.0,
        "{}",
        e.text
    );
    // The VM comes back: the survivor's RESOLVED replies to the FIRING the old owner
    // sent, not to its own unsent one.
    let sent = read_mails(&maildir)
        .into_iter()
        .find(|m| m.subject().contains("FIRING"))
        .expect("the FIRING mail");
    w.sim.set_stays_dead(1, false);
    w.sim.set_hung(1, false);
    let resolved = |dir: &std::path::Path| {
        read_mails(dir)
            .into_iter()
            .find(|m| m.subject().contains("RESOLVED"))
    };
    w.until("the survivor's RESOLVED mail", || {
        resolved(&maildir).is_some()
    })
    .await;
    let resolved = resolved(&maildir).expect("RESOLVED");
    assert_eq!(
        resolved.header("In-Reply-To"),
        Some(sent.message_id()),
        "RESOLVED threads under the FIRING that was sent"
    );
    w.sim.shutdown();
}

const LADDER_RULE: &str = r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
escalate = ["stop_start"]
cooldown = "1s"
patience = "2s"
max_actions = 5
window = "1h"
"#;

/// `kill -9` of the owner right after it rebooted a VM that stays dead (rung 0 of
/// [reboot, stop_start]): the survivor continues the ladder from etcd with rung 1, a
/// stop/start, and never sends a second reboot.
#[tokio::test]
async fn the_new_owner_continues_the_ladder() {
    let keys = nostr::Keys::generate();
    let (sim, vm_port) = start_sim(probed_vm(&keys, Ipv4Addr::new(127, 8, 3, 1))).await;
    let mut w = world(sim, vm_port, &keys, LADDER_RULE).await;
    w.settled().await;
    w.first()
        .wait("the VM answers probes", |e| {
            e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
        })
        .await;
    w.sim.set_stays_dead(1, true);
    w.until("the owner's reboot reaches the provider", || {
        !w.sim.actions().is_empty()
    })
    .await;
    w.fail_over().await;
    w.until("the survivor acts on the VM", || {
        w.sim
            .actions()
            .iter()
            .any(|a| a.action == PowerAction::Stop)
    })
    .await;
    let actions: Vec<PowerAction> = w.sim.actions().iter().map(|a| a.action).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == PowerAction::Restart)
            .count(),
        1,
        "one reboot (rung 0) across the failover, then rung 1: {actions:?}\n{}",
        std::fs::read_to_string(&w.survivor().log).unwrap_or_default()
    );
    assert_eq!(actions[0], PowerAction::Restart, "{actions:?}");
    let journal = w.survivor().get("/api/v1/actions").await;
    assert!(journal.contains("stop_start"), "{journal}");
    w.sim.shutdown();
}

/// Alertmanager notifies every replica (one webhook per replica): the owner of the
/// alert's account acts on it, once; the other answers `not_owner` and sends nothing.
#[tokio::test]
async fn an_alert_sent_to_every_replica_is_acted_on_by_the_owner_only() {
    let keys = nostr::Keys::generate();
    let (sim, vm_port) = start_sim(probed_vm(&keys, Ipv4Addr::new(127, 8, 4, 1))).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let token = secrets.path().join("am.token");
    std::fs::write(&token, "am-token-for-the-cluster-test").expect("token");
    let extra = format!(
        r#"[alertmanager]
bearer_token_file = {token:?}
[[alertmanager.actions]]
name = "am-unhealthy"
alertname = "VpsUnhealthy"
action = "reboot"
cooldown = "1h"
"#,
        token = token.display().to_string()
    );
    let w = world(sim, vm_port, &keys, &extra).await;
    w.settled().await;
    let body = serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"VpsUnhealthy\"}",
        "status": "firing",
        "receiver": "vpswatch",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "VpsUnhealthy", "provider": "lnvps", "account": ACCOUNT, "vm": "1"},
            "annotations": {},
            "startsAt": "2030-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "fp-cluster-1",
        }],
    })
    .to_string();
    let http = reqwest::Client::new();
    let post = |r: &Replica| {
        http.post(format!("http://127.0.0.1:{}/api/v1/alertmanager", r.web))
            .bearer_auth("am-token-for-the-cluster-test")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    // The non-owner first: it must not act, though nobody has yet.
    let other = post(w.survivor())
        .await
        .expect("posted")
        .text()
        .await
        .expect("body");
    assert!(
        other.contains("\"not_owner\""),
        "the other replica: {other}"
    );
    let owner = post(w.first())
        .await
        .expect("posted")
        .text()
        .await
        .expect("body");
    assert!(owner.contains("\"acted\""), "the owner: {owner}");
    w.until("the owner's reboot reaches the provider", || {
        !w.sim.actions().is_empty()
    })
    .await;
    let e = w.survivor().scrape().await.expect("metrics");
    assert_eq!(
        count(
            &e,
            "vpswatch_alertmanager_alerts_total",
            &[("result", "not_owner")]
        ),
        1.0,
        "{}",
        e.text
    );
    let actions: Vec<PowerAction> = w.sim.actions().iter().map(|a| a.action).collect();
    assert_eq!(
        actions,
        vec![PowerAction::Restart],
        "one reboot, by the owner"
    );
    w.sim.shutdown();
}
