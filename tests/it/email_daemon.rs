//! Email through the real binary (`vpswatch run`) and a real SMTP server (aiosmtpd,
//! `tests/smtp/server.py`) that refuses chosen mails or recipients: a mail the server
//! refuses for good is set aside, counted and logged once while the others are delivered
//! at once; a recipient refused for good does not keep the mail from the others; a mail
//! refused for now waits its own backoff. And Message-IDs: unique per installation,
//! unchanged across an SMTP outage and a restart.

use crate::common::free_port;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon_process::KillOnDrop;
use crate::common::smtp::{read_mails, read_refusals, Mail, ServerOpts, SmtpServer};
use crate::common::Exposition;
use vpswatch_sim::lnvps::{LnvpsSimHandle, Scenario, VmSpec};
use vpswatch_sim::scenario::VmState;

/// Generous for a loaded 2-core box; the behaviour under test takes about a second.
const T: Duration = Duration::from_secs(30);
const NSEC_VAR: &str = "EMAIL_DAEMON_TEST_NSEC";
/// Display names of VMs 1..=4: each appears only in its own mails.
const NAMES: [&str; 4] = ["vm-alpha", "vm-bravo", "vm-charlie", "vm-delta"];

struct Setup {
    _dir: tempfile::TempDir,
    sim: LnvpsSimHandle,
    keys: nostr::Keys,
    maildir: PathBuf,
    state: PathBuf,
    log: PathBuf,
    web: u16,
}

/// A simulator with four VMs of one owner: stopped (`stopped = true`) or running and
/// answering on loopback.
async fn setup(stopped: bool, subnet: u8) -> (Setup, u16) {
    vpswatch::tls::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let vm_port = free_port();
    let scenario = Scenario {
        vms: (1..=4u8)
            .map(|i| VmSpec {
                owner: owner.clone(),
                state: if stopped {
                    VmState::Stopped
                } else {
                    VmState::Running
                },
                ipv4: Some(std::net::Ipv4Addr::new(127, 8, subnet, i)),
                ..VmSpec::default()
            })
            .collect(),
        ..Scenario::default()
    };
    let sim = crate::common::lnvps_sim_with_vm_ports(scenario, vm_port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let s = Setup {
        state: dir.path().join("state"),
        log: dir.path().join("vpswatch.log"),
        maildir,
        sim,
        keys,
        web: free_port(),
        _dir: dir,
    };
    (s, vm_port)
}

impl Setup {
    /// Writes the config: `rules` and `[email]` to `smtp` (plus `email_extra`).
    fn config(&self, vm_port: u16, smtp: u16, rules: &str, email_extra: &str) -> PathBuf {
        let names = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| format!("\"{}\" = \"{n}\"", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"poll_interval = "200ms"
request_timeout = "1s"
state_dir = {state:?}
[web]
listen_address = "127.0.0.1:{web}"
[probes]
interval = "100ms"
timeout = "300ms"
[probes.ports]
lnvps = {vm_port}
[[accounts]]
name = "main"
provider = "lnvps"
base_url = "{url}"
nsec_env = "{NSEC_VAR}"
vm_names = {{ {names} }}
{rules}
[email]
smtp_host = "127.0.0.1"
smtp_port = {smtp}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@localhost>"
to = ["ops@localhost"]
timeout = "5s"
{email_extra}
"#,
            state = self.state.display().to_string(),
            web = self.web,
            url = self.sim.base_url(),
        );
        let path = self.state.with_file_name("vpswatch.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// `vpswatch run` with its log appended to `self.log`.
    fn spawn(&self, config: &Path) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
            .args(["--log.level", "info", "run", "--config"])
            .arg(config)
            .env(NSEC_VAR, self.keys.secret_key().to_secret_hex())
            .env_remove(vpswatch::notify::email::CRASH_ENV)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vpswatch");
        KillOnDrop(child)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn scrape(&self) -> Option<Exposition> {
        let url = format!("http://127.0.0.1:{}/metrics", self.web);
        let r = reqwest::get(&url).await.ok()?;
        Some(Exposition::parse(&r.text().await.ok()?))
    }

    async fn wait_metrics(&self, what: &str, pred: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + T;
        loop {
            let mut last = String::new();
            if let Some(e) = self.scrape().await {
                if pred(&e) {
                    return e;
                }
                last = e.text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n{last}\nlog:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `pred` holds for the delivered mails.
    async fn wait_mails(&self, what: &str, pred: impl Fn(&[Mail]) -> bool) -> Vec<Mail> {
        let deadline = Instant::now() + T;
        loop {
            let mails = read_mails(&self.maildir);
            if pred(&mails) {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}; delivered: {:?}\nrefusals: {:?}\nlog:\n{}",
                mails
                    .iter()
                    .map(|m| (m.subject(), m.rcpt_tos.clone()))
                    .collect::<Vec<_>>(),
                read_refusals(&self.maildir),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const STOPPED_RULE: &str = r#"[[rules]]
name = "vm-stopped"
condition = "vm_not_running"
failures = 1
"#;

fn alerts(e: &Exposition, result: &str) -> f64 {
    e.get(
        "vpswatch_alerts_total",
        &[("channel", "email"), ("result", result)],
    )
    .unwrap_or(0.0)
}

fn firing_for(mails: &[Mail], name: &str) -> usize {
    mails
        .iter()
        .filter(|m| {
            m.subject()
                .starts_with(&format!("[FIRING] vm-stopped · lnvps/main · {name}"))
        })
        .count()
}

fn log_lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// Four alerts at once, the server answers 554 to the one about vm-alpha: the three others
/// arrive in the same round, the refused one is set aside (not retried), counted as
/// `rejected` and logged once with the server's answer.
#[tokio::test]
async fn a_mail_refused_for_good_is_set_aside_and_the_others_go() {
    let (s, vm_port) = setup(true, 1).await;
    let smtp = SmtpServer::start(
        &s.maildir,
        0,
        &ServerOpts {
            args: vec!["--reject-data".into(), NAMES[0].into()],
            ..ServerOpts::default()
        },
    );
    let config = s.config(vm_port, smtp.port, STOPPED_RULE, "");
    let _daemon = s.spawn(&config);

    let mails = s
        .wait_mails("the three mails the server accepts", |m| {
            NAMES[1..].iter().all(|n| firing_for(m, n) == 1)
        })
        .await;
    assert_eq!(
        firing_for(&mails, NAMES[0]),
        0,
        "the refused mail is not delivered"
    );
    let e = s
        .wait_metrics("the refused mail set aside", |e| {
            alerts(e, "rejected") == 1.0
                && e.get("vpswatch_alert_outbox_rejected_messages", &[]) == Some(1.0)
                && e.get("vpswatch_alert_outbox_messages", &[]) == Some(0.0)
        })
        .await;
    assert_eq!(alerts(&e, "queued"), 4.0, "{}", e.text);
    assert_eq!(alerts(&e, "sent"), 3.0, "{}", e.text);
    assert_eq!(alerts(&e, "failed_attempt"), 0.0, "{}", e.text);

    // The server saw the refused mail once: it left the outbox, nothing retries it.
    let refusals = read_refusals(&s.maildir);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].stage, "DATA");
    // Logged once, with the server's code and text and the mail's Message-ID.
    let log = s.log_text();
    let lines = log_lines(&log, "set aside");
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("554 5.7.1 Message rejected"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(&refusals[0].message_id), "{}", lines[0]);
    assert!(lines[0].contains(NAMES[0]), "{}", lines[0]);
}

/// `rule_recipients` names ops@ and bad@, the server answers 550 to bad@: every mail still
/// reaches ops@ at once, and bad@ is set aside per mail, counted and logged.
#[tokio::test]
async fn a_recipient_refused_for_good_does_not_keep_the_mail_from_the_others() {
    let (s, vm_port) = setup(true, 2).await;
    let smtp = SmtpServer::start(
        &s.maildir,
        0,
        &ServerOpts {
            args: vec!["--reject-rcpt".into(), "bad@localhost".into()],
            ..ServerOpts::default()
        },
    );
    let config = s.config(
        vm_port,
        smtp.port,
        STOPPED_RULE,
        "[email.rule_recipients]\n\"vm-stopped\" = [\"bad@localhost\", \"ops@localhost\"]",
    );
    let _daemon = s.spawn(&config);

    let mails = s
        .wait_mails("all four mails at ops@", |m| {
            NAMES.iter().all(|n| firing_for(m, n) == 1)
        })
        .await;
    for m in &mails {
        assert_eq!(
            m.rcpt_tos,
            vec!["ops@localhost".to_string()],
            "{}",
            m.subject()
        );
        // The headers still name both: the mail is the same, only its envelope differs.
        assert!(
            m.header("To").unwrap_or_default().contains("bad@localhost"),
            "{}",
            m.data
        );
    }
    let e = s
        .wait_metrics("bad@ set aside for every mail", |e| {
            alerts(e, "rejected") == 4.0
                && e.get("vpswatch_alert_outbox_rejected_messages", &[]) == Some(4.0)
                && e.get("vpswatch_alert_outbox_messages", &[]) == Some(0.0)
        })
        .await;
    assert_eq!(alerts(&e, "sent"), 4.0, "{}", e.text);
    assert_eq!(alerts(&e, "failed_attempt"), 0.0, "{}", e.text);
    let refusals = read_refusals(&s.maildir);
    assert_eq!(
        refusals.len(),
        4,
        "one refusal per mail, none retried: {refusals:?}"
    );
    assert!(refusals.iter().all(|r| r.rcpt == "bad@localhost"));
    let log = s.log_text();
    let lines = log_lines(&log, "set aside");
    assert_eq!(lines.len(), 4, "{log}");
    for l in lines {
        assert!(l.contains("bad@localhost"), "{l}");
        assert!(l.contains("550 5.1.1"), "{l}");
        assert!(!l.contains("ops@localhost"), "{l}");
    }
}

/// The server answers 451 to the mail about vm-alpha every time: the three others arrive
/// at once, the deferred one stays in the outbox and is tried again on its own backoff.
#[tokio::test]
async fn a_mail_refused_for_now_waits_its_own_backoff() {
    let (s, vm_port) = setup(true, 3).await;
    let smtp = SmtpServer::start(
        &s.maildir,
        0,
        &ServerOpts {
            args: vec!["--defer-data".into(), NAMES[0].into()],
            ..ServerOpts::default()
        },
    );
    let config = s.config(vm_port, smtp.port, STOPPED_RULE, "");
    let _daemon = s.spawn(&config);

    let mails = s
        .wait_mails("the three mails the server accepts", |m| {
            NAMES[1..].iter().all(|n| firing_for(m, n) == 1)
        })
        .await;
    assert_eq!(firing_for(&mails, NAMES[0]), 0);
    // Tried again after its backoff (10 s), still in the outbox, never set aside.
    let deadline = Instant::now() + T + Duration::from_secs(10);
    while read_refusals(&s.maildir).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the deferred mail was not tried again: {:?}\n{}",
            read_refusals(&s.maildir),
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusals = read_refusals(&s.maildir);
    assert!(refusals.iter().all(|r| r.stage == "DATA"));
    let ids: BTreeSet<&str> = refusals.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        1,
        "only the deferred mail is retried: {refusals:?}"
    );
    let e = s
        .wait_metrics("the deferred mail waits", |e| {
            alerts(e, "failed_attempt") >= 2.0
                && e.get("vpswatch_alert_outbox_messages", &[]) == Some(1.0)
        })
        .await;
    assert_eq!(alerts(&e, "sent"), 3.0, "{}", e.text);
    assert_eq!(alerts(&e, "rejected"), 0.0, "{}", e.text);
    assert_eq!(
        e.get("vpswatch_alert_outbox_rejected_messages", &[]),
        Some(0.0)
    );
}

const HUNG_RULE: &str = r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
cooldown = "1h"
patience = "10s"
"#;

fn action_taken(mails: &[Mail]) -> Option<&Mail> {
    mails.iter().find(|m| {
        m.subject()
            .starts_with("[ACTION TAKEN] ssh-dead · lnvps/main · ")
    })
}

/// Two installations (two state directories) reboot their VM 1 and mail the same event
/// (`action-1-…`): the Message-IDs differ, so a client that de-duplicates by Message-ID
/// shows both. The second installation's mails wait through an SMTP outage and a
/// `kill -9`: after the restart they arrive with the Message-IDs they were queued with,
/// and the action still threads to its firing mail.
#[tokio::test]
async fn message_ids_differ_between_installations_and_survive_retries() {
    // Installation A, mail server up.
    let (a, a_vm_port) = setup(false, 4).await;
    let smtp_a = SmtpServer::start(&a.maildir, 0, &ServerOpts::default());
    let config_a = a.config(a_vm_port, smtp_a.port, HUNG_RULE, "");
    let daemon_a = a.spawn(&config_a);
    a.wait_metrics("A's VM answers", |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    a.sim.set_hung(1, true);
    let mails_a = a
        .wait_mails("A's action mail", |m| action_taken(m).is_some())
        .await;
    let action_a = action_taken(&mails_a).expect("action").clone();
    drop(daemon_a);

    // Installation B, mail server down: the mails wait in the outbox.
    let (b, b_vm_port) = setup(false, 5).await;
    let smtp_port = free_port();
    let config_b = b.config(b_vm_port, smtp_port, HUNG_RULE, "");
    let daemon_b = b.spawn(&config_b);
    b.wait_metrics("B's VM answers", |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    b.sim.set_hung(1, true);
    b.wait_metrics(
        "B's firing and action mails queued, delivery failing",
        |e| alerts(e, "queued") >= 2.0 && alerts(e, "failed_attempt") >= 1.0,
    )
    .await;
    // kill -9: the outbox is in the state store, committed before `queued` was counted.
    drop(daemon_b);
    let queued: Vec<(String, String)> = {
        let store = vpswatch::store::StateStore::open(&b.state).expect("B's state store");
        vpswatch::notify::email::outbox::due(&store, chrono::Utc::now(), true, 100)
            .expect("B's outbox")
            .into_iter()
            .map(|(_, e)| (e.subject, e.message_id))
            .collect()
    };
    let queued_action = queued
        .iter()
        .find(|(s, _)| s.starts_with("[ACTION TAKEN] ssh-dead"))
        .map(|(_, id)| id.clone())
        .unwrap_or_else(|| panic!("B's action mail queued: {queued:?}"));

    let _smtp_b = SmtpServer::start(&b.maildir, smtp_port, &ServerOpts::default());
    let _daemon_b = b.spawn(&config_b);
    let mails_b = b
        .wait_mails("B's queued mails delivered after the restart", |m| {
            queued.len() <= m.len() && action_taken(m).is_some()
        })
        .await;
    let action_b = action_taken(&mails_b).expect("action");
    let ids_b: BTreeSet<String> = mails_b.iter().map(Mail::message_id).collect();
    for (subject, id) in &queued {
        assert!(
            ids_b.contains(id),
            "{subject:?} was queued as {id} but arrived as one of {ids_b:?}"
        );
    }
    assert_eq!(action_b.message_id(), queued_action);

    // The same event in two installations: two Message-IDs.
    assert_ne!(
        action_a.message_id(),
        action_b.message_id(),
        "two installations gave the same event the same Message-ID"
    );
    let ids_a: BTreeSet<String> = mails_a.iter().map(Mail::message_id).collect();
    assert!(ids_a.is_disjoint(&ids_b), "{ids_a:?} / {ids_b:?}");
    // Threads still hold within each installation.
    for (action, mails) in [(&action_a, &mails_a), (action_b, &mails_b)] {
        let firing = mails
            .iter()
            .find(|m| m.subject().starts_with("[FIRING] ssh-dead"))
            .expect("firing mail");
        assert_eq!(action.header("In-Reply-To"), Some(firing.message_id()));
        assert!(action
            .header("References")
            .unwrap_or_default()
            .contains(&firing.message_id()));
    }
}
