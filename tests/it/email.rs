//! Email alerts end to end against a real SMTP server (aiosmtpd, `tests/smtp/server.py`)
//! on loopback: lifecycle and threading, outage and recovery with the outbox metrics,
//! restart from the same state directory, crash points in a separate process, STARTTLS
//! with a private certificate and AUTH, and the precise errors of `test-email`.

use crate::common::free_port;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use tokio_util::sync::CancellationToken;
use vpswatch::metrics::SelfMetrics;
use vpswatch::notify::email::settings::{self, EmailSettings};
use vpswatch::notify::email::smtp::SmtpFailure;
use vpswatch::notify::email::{EmailNotifier, Tuning};
use vpswatch::notify::{AlertKey, AlertStatus, AlertUpdate, Event, EventKind, Facts, Notify};
use vpswatch::store::StateStore;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::{Clock, ManualClock, SharedClock, SystemClock};

use crate::common::smtp::{
    read_mails, read_refusals, wait_mails, Mail, ServerOpts, SmtpServer, WAIT,
};

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The notifier under test
// ---------------------------------------------------------------------------------------

fn email_toml(port: u16, extra: &str) -> String {
    format!(
        r#"
smtp_host = "127.0.0.1"
smtp_port = {port}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
repeat_interval = "4h"
timeout = "5s"
{extra}
"#
    )
}

fn parse_settings(text: &str, env: &dyn Fn(&str) -> Option<String>) -> EmailSettings {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let value: toml::Value = toml::Value::Table(text.parse().expect("toml"));
    let s = settings::from_toml(value, env, &mut problems, &mut warnings);
    assert!(problems.is_empty(), "{problems:?}");
    s.expect("valid email settings")
}

fn fast() -> Tuning {
    Tuning {
        tick: Duration::from_millis(20),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..Tuning::default()
    }
}

struct Running {
    notifier: Arc<EmailNotifier>,
    metrics: Arc<SelfMetrics>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn open(settings: EmailSettings, dir: &Path, clock: SharedClock) -> Running {
        let store = StateStore::open(dir).expect("store");
        let metrics = SelfMetrics::new();
        let notifier = EmailNotifier::open_with(settings, store, clock, metrics.clone(), fast())
            .expect("notifier");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(notifier.clone().run(cancel.clone()));
        Running {
            notifier,
            metrics,
            cancel,
            task,
        }
    }

    /// Stops the sender and drops everything that holds the database.
    async fn close(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        drop(self.notifier);
    }

    fn count(&self, result: &str) -> u64 {
        self.metrics.alert_metrics().get("email", result)
    }

    fn outbox(&self) -> u64 {
        self.notifier.outbox_stats().expect("stats").messages
    }

    /// The rendered /metrics text, as the encoder produces it.
    fn exposition(&self) -> String {
        let snaps = vpswatch_model::snapshot::SnapshotStore::new(std::iter::empty());
        let enc = vpswatch::metrics::encoder::render(&snaps, &[], &self.metrics);
        String::from_utf8(enc.plain.to_vec()).expect("utf8")
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .expect("time")
}

fn key(rule: &str, account: &str, vm: &str) -> AlertKey {
    AlertKey {
        rule: rule.into(),
        provider: ProviderKind::Lnvps,
        account: account.into(),
        vm: vm.into(),
    }
}

fn facts(vm_name: &str, summary: &str) -> Facts {
    Facts {
        vm_name: vm_name.into(),
        summary: summary.into(),
        details: vec![("state".into(), "running".into())],
        next_step: "reboot at the next failed probe".into(),
        journal_id: Some(7),
    }
}

fn update(k: &AlertKey, status: AlertStatus, at: DateTime<Utc>) -> AlertUpdate {
    AlertUpdate {
        key: k.clone(),
        status,
        facts: facts("web-1", "TCP probe of 10.1.0.3:22 failing for 3m"),
        at,
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn firing_reminder_resolved_thread_together() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let clock = Arc::new(ManualClock::new(t0()));
    let s = parse_settings(&email_toml(server.port, ""), &|_| None);
    let run = Running::open(s, &tmp.path().join("state"), clock.clone());
    let k = key("probe-ssh", "main", "42");

    run.notifier.alert(update(&k, AlertStatus::Firing, t0()));
    let mails = wait_mails(&maildir, 1).await;
    // The same status again (e.g. the watchdog after a restart) queues nothing.
    assert_eq!(
        run.notifier
            .record_alert(&update(&k, AlertStatus::Firing, t0()))
            .expect("record"),
        0
    );
    run.notifier.alert(update(&k, AlertStatus::Firing, t0()));
    assert_eq!(run.count("queued"), 1);

    // Not due yet: one hour in, no reminder.
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(run.notifier.run_schedules().expect("schedules"), 0);
    // Four hours after the firing mail: the first reminder.
    clock.advance(chrono::Duration::hours(3));
    let mails2 = wait_mails(&maildir, 2).await;
    assert_eq!(run.notifier.run_schedules().expect("schedules"), 0);

    run.notifier
        .alert(update(&k, AlertStatus::Resolved, clock.now()));
    // Resolved twice: the second is a repeat of the same status.
    run.notifier
        .alert(update(&k, AlertStatus::Resolved, clock.now()));
    let all = wait_mails(&maildir, 3).await;
    wait_until("outbox drained", || run.outbox() == 0).await;
    assert_eq!(run.count("queued"), 3);
    wait_until("three sent", || run.count("sent") == 3).await;
    let all_again = read_mails(&maildir);
    assert_eq!(all_again.len(), 3, "exactly three mails");

    let subjects: Vec<String> = all.iter().map(Mail::subject).collect();
    assert_eq!(
        subjects,
        vec![
            "[FIRING] probe-ssh · lnvps/main · web-1".to_string(),
            "[FIRING] probe-ssh · lnvps/main · web-1 (reminder 1)".to_string(),
            "[RESOLVED] probe-ssh · lnvps/main · web-1".to_string(),
        ]
    );
    assert_eq!(mails[0].subject(), subjects[0]);
    assert_eq!(mails2.len(), 2);
    let root = all[0].message_id();
    assert!(
        root.starts_with('<') && root.ends_with("@example.test>"),
        "{root}"
    );
    assert!(all[0].header("In-Reply-To").is_none());
    for m in &all[1..] {
        assert_eq!(m.header("In-Reply-To").as_deref(), Some(root.as_str()));
        assert!(m.header("References").unwrap_or_default().contains(&root));
        assert_ne!(m.message_id(), root);
    }
    for m in &all {
        assert_eq!(m.rcpt_tos, vec!["ops@example.test".to_string()]);
        let ct = m.header("Content-Type").unwrap_or_default();
        assert!(ct.starts_with("multipart/alternative"), "{ct}");
        assert!(m.data.contains("text/plain") && m.data.contains("text/html"));
        assert!(m.data.contains("reboot at the next failed probe"));
        assert!(m.data.contains("#7"), "journal id shown");
    }
    run.close().await;
}

#[tokio::test]
async fn smtp_outage_queues_then_everything_arrives_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let port = free_port();
    let s = parse_settings(&email_toml(port, ""), &|_| None);
    let run = Running::open(s, &tmp.path().join("state"), Arc::new(SystemClock));

    // The server is down: five alerts and an event wait in the outbox.
    for vm in 1..=5 {
        run.notifier.alert(update(
            &key("vm-down", "main", &vm.to_string()),
            AlertStatus::Firing,
            Utc::now(),
        ));
    }
    run.notifier.event(Event {
        id: "action-1-taken".into(),
        kind: EventKind::ActionTaken,
        key: key("vm-down", "main", "1"),
        facts: facts("vm-1", "rebooted"),
        at: Utc::now(),
    });
    assert_eq!(run.outbox(), 6);
    wait_until("failed attempts counted", || {
        run.count("failed_attempt") >= 12
    })
    .await;
    let text = run.exposition();
    assert!(
        text.contains("vpswatch_alert_outbox_messages 6\n"),
        "{text}"
    );
    assert!(text.contains("vpswatch_alerts_total{channel=\"email\",result=\"queued\"} 6"));
    assert!(text.contains("result=\"failed_attempt\""));
    let oldest = text
        .lines()
        .find_map(|l| l.strip_prefix("vpswatch_alert_outbox_oldest_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("oldest timestamp exported");
    assert!(oldest > 1.0e9, "{oldest}");
    assert!(read_mails(&maildir).is_empty());

    // The server comes up on that port: everything arrives, once.
    let mut server = SmtpServer::start(&maildir, port, &ServerOpts::default());
    let mails = wait_mails(&maildir, 6).await;
    wait_until("outbox drained", || run.outbox() == 0).await;
    // The gauge follows right after the commit that emptied the outbox.
    wait_until("outbox gauge at 0", || {
        run.metrics.alert_metrics().outbox_messages() == 0
    })
    .await;
    let text = run.exposition();
    assert!(
        text.contains("vpswatch_alert_outbox_messages 0\n"),
        "{text}"
    );
    assert!(text.contains("vpswatch_alert_outbox_oldest_timestamp_seconds 0\n"));
    assert_eq!(run.count("sent"), 6);

    // Down again mid-life: two more wait, then arrive after the restart.
    server.stop();
    run.notifier.alert(update(
        &key("vm-down", "main", "6"),
        AlertStatus::Firing,
        Utc::now(),
    ));
    run.notifier.alert(update(
        &key("vm-down", "main", "1"),
        AlertStatus::Resolved,
        Utc::now(),
    ));
    let failed_before = run.count("failed_attempt");
    wait_until("failures while down", || {
        run.count("failed_attempt") > failed_before
    })
    .await;
    assert_eq!(run.outbox(), 2);
    let _server = SmtpServer::start(&maildir, port, &ServerOpts::default());
    wait_until("outbox drained again", || run.outbox() == 0).await;
    let all = read_mails(&maildir);
    assert_eq!(all.len(), 8, "none lost, none duplicated");
    let ids: BTreeSet<String> = all.iter().map(Mail::message_id).collect();
    assert_eq!(ids.len(), 8);
    assert!(mails
        .iter()
        .any(|m| m.subject().starts_with("[ACTION TAKEN] vm-down")));
    wait_until("eight sent", || run.count("sent") == 8).await;
    run.close().await;
}

#[tokio::test]
async fn restart_continues_the_outbox_and_the_reminder_schedule() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let port = free_port();
    let clock = Arc::new(ManualClock::new(t0()));
    let s = parse_settings(&email_toml(port, ""), &|_| None);
    let keys: Vec<AlertKey> = (1..=3)
        .map(|i| key("vm-down", "main", &i.to_string()))
        .collect();

    // First life: the server is down, three alerts are queued; then the process "dies".
    let first = Running::open(s.clone(), &state, clock.clone());
    for k in &keys {
        first.notifier.alert(update(k, AlertStatus::Firing, t0()));
    }
    assert_eq!(first.outbox(), 3);
    first.close().await;

    // Second life on the same state directory, server up.
    let _server = SmtpServer::start(&maildir, port, &ServerOpts::default());
    let second = Running::open(s, &state, clock.clone());
    // The watchdog re-announces its open alerts after a restart: nothing new.
    for k in &keys {
        assert_eq!(
            second
                .notifier
                .record_alert(&update(k, AlertStatus::Firing, t0()))
                .expect("record"),
            0
        );
    }
    wait_mails(&maildir, 3).await;
    wait_until("outbox drained", || second.outbox() == 0).await;
    assert_eq!(second.notifier.delivered_ids().expect("ids").len(), 3);

    // The reminders keep the first life's schedule: due 4 h after the firing mails.
    clock.advance(chrono::Duration::hours(4));
    let all = wait_mails(&maildir, 6).await;
    wait_until("outbox drained", || second.outbox() == 0).await;
    assert_eq!(read_mails(&maildir).len(), 6);
    let ids: BTreeSet<String> = all.iter().map(Mail::message_id).collect();
    assert_eq!(ids.len(), 6, "each mail exactly once");
    assert_eq!(
        all.iter()
            .filter(|m| m.subject().ends_with("(reminder 1)"))
            .count(),
        3
    );
    second.close().await;
}

#[tokio::test]
async fn events_are_mailed_once_and_thread_with_their_alert() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let s = parse_settings(
        &email_toml(
            server.port,
            "[rule_recipients]\nrenewal = [\"billing@example.test\", \"Boss <boss@example.test>\"]",
        ),
        &|_| None,
    );
    let clock = Arc::new(ManualClock::new(t0()));
    let run = Running::open(s, &tmp.path().join("state"), clock);
    let k = key("renewal", "main", "");
    run.notifier.alert(AlertUpdate {
        key: k.clone(),
        status: AlertStatus::Firing,
        facts: Facts {
            summary: "expires in 2 days <b>&</b>".into(),
            ..Facts::default()
        },
        at: t0(),
    });
    let ev = Event {
        id: "renewal-9-failed".into(),
        kind: EventKind::RenewalFailed,
        key: k.clone(),
        facts: facts("", "wallet empty"),
        at: t0(),
    };
    run.notifier.event(ev.clone());
    run.notifier.event(ev.clone());
    assert_eq!(run.notifier.record_event(&ev).expect("record"), 0);
    let all = wait_mails(&maildir, 2).await;
    wait_until("outbox drained", || run.outbox() == 0).await;
    assert_eq!(read_mails(&maildir).len(), 2);
    assert_eq!(all[0].subject(), "[FIRING] renewal · lnvps/main");
    assert_eq!(all[1].subject(), "[RENEWAL FAILED] renewal · lnvps/main");
    assert_eq!(
        all[1].header("In-Reply-To"),
        Some(all[0].message_id()),
        "the event threads with its alert"
    );
    let mut rcpt = all[0].rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(rcpt, vec!["billing@example.test", "boss@example.test"]);
    // Everything in the HTML part is escaped.
    assert!(all[0]
        .data
        .contains("expires in 2 days &lt;b&gt;&amp;&lt;/b&gt;"));
    assert!(!all[0].data.contains("<b>&</b></"));
    run.close().await;
}

#[tokio::test]
async fn digest_window_sends_one_mail_per_account() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let s = parse_settings(&email_toml(server.port, "digest_window = \"10m\""), &|_| {
        None
    });
    let clock = Arc::new(ManualClock::new(t0()));
    let run = Running::open(s, &tmp.path().join("state"), clock.clone());
    let main: Vec<AlertKey> = (1..=3)
        .map(|i| key("vm-down", "main", &i.to_string()))
        .collect();
    for k in &main {
        run.notifier
            .alert(update(k, AlertStatus::Firing, clock.now()));
        clock.advance(chrono::Duration::minutes(1));
    }
    let other = key("provider-unreachable", "other", "");
    run.notifier
        .alert(update(&other, AlertStatus::Firing, clock.now()));
    // Nothing goes out before the window closes.
    assert_eq!(run.count("queued"), 0);
    clock.advance(chrono::Duration::minutes(10));
    let all = wait_mails(&maildir, 2).await;
    wait_until("outbox drained", || run.outbox() == 0).await;
    let subjects: BTreeSet<String> = all.iter().map(Mail::subject).collect();
    assert!(
        subjects.contains("[FIRING] 3 alerts · lnvps/main · vm-down"),
        "{subjects:?}"
    );
    assert!(subjects.contains("[FIRING] provider-unreachable · lnvps/other"));
    let digest = all
        .iter()
        .find(|m| m.subject().contains("3 alerts"))
        .expect("digest");
    // A resolution replies to the digest it was announced in.
    run.notifier
        .alert(update(&main[1], AlertStatus::Resolved, clock.now()));
    let all = wait_mails(&maildir, 3).await;
    let resolved = all
        .iter()
        .find(|m| m.subject().starts_with("[RESOLVED]"))
        .expect("resolved");
    assert_eq!(resolved.header("In-Reply-To"), Some(digest.message_id()));
    run.close().await;
}

// --- What the server refuses -----------------------------------------------------------

/// A recipient the server refuses for now (450, the first time only): the other recipient
/// has the mail at once, the refused one gets the same mail (same Message-ID) on the
/// mail's own retry, and nobody gets it twice.
#[tokio::test]
async fn a_recipient_refused_for_now_gets_the_mail_on_a_later_attempt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(
        &maildir,
        0,
        &ServerOpts {
            args: vec![
                "--defer-rcpt".into(),
                "later@example.test".into(),
                "--defer-times".into(),
                "1".into(),
            ],
            ..ServerOpts::default()
        },
    );
    let s = parse_settings(
        &email_toml(
            server.port,
            "[rule_recipients]\nprobe-ssh = [\"later@example.test\", \"ops@example.test\"]",
        ),
        &|_| None,
    );
    let run = Running::open(s, &tmp.path().join("state"), Arc::new(SystemClock));
    run.notifier.alert(update(
        &key("probe-ssh", "main", "42"),
        AlertStatus::Firing,
        Utc::now(),
    ));
    let mails = wait_mails(&maildir, 2).await;
    wait_until("outbox drained", || run.outbox() == 0).await;
    assert_eq!(mails[0].rcpt_tos, vec!["ops@example.test".to_string()]);
    assert_eq!(mails[1].rcpt_tos, vec!["later@example.test".to_string()]);
    assert_eq!(mails[0].message_id(), mails[1].message_id());
    assert_eq!(read_mails(&maildir).len(), 2);
    let refusals = read_refusals(&maildir);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].reply.starts_with("450"), "{refusals:?}");
    wait_until("counted", || run.count("sent") == 2).await;
    assert_eq!(run.count("failed_attempt"), 1);
    assert_eq!(run.count("rejected"), 0);
    assert!(run.notifier.rejected().expect("rejected").is_empty());
    run.close().await;
}

/// Mails the server refuses for good are kept aside with its answer, at most
/// `keep_rejected` of them (the oldest go first), and forgotten after `remember`.
#[tokio::test]
async fn set_aside_mails_are_kept_with_the_answer_and_bounded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(
        &maildir,
        0,
        &ServerOpts {
            args: vec!["--reject-data".into(), "vm-down".into()],
            ..ServerOpts::default()
        },
    );
    let s = parse_settings(&email_toml(server.port, ""), &|_| None);
    let clock = Arc::new(ManualClock::new(t0()));
    let store = StateStore::open(&tmp.path().join("state")).expect("store");
    let metrics = SelfMetrics::new();
    let tuning = Tuning {
        keep_rejected: 2,
        ..fast()
    };
    let notifier = EmailNotifier::open_with(s, store, clock.clone(), metrics.clone(), tuning)
        .expect("notifier");
    let cancel = CancellationToken::new();
    let run = Running {
        task: tokio::spawn(notifier.clone().run(cancel.clone())),
        notifier,
        metrics,
        cancel,
    };
    for vm in 1..=3 {
        run.notifier.alert(update(
            &key("vm-down", "main", &vm.to_string()),
            AlertStatus::Firing,
            t0(),
        ));
        wait_until("refused and set aside", || run.count("rejected") == vm).await;
    }
    wait_until("outbox drained", || run.outbox() == 0).await;
    let kept = run.notifier.rejected().expect("rejected");
    let subjects: Vec<String> = kept.iter().map(|r| r.entry.subject.clone()).collect();
    assert_eq!(
        subjects,
        vec![
            "[FIRING] vm-down · lnvps/main · web-1".to_string(),
            "[FIRING] vm-down · lnvps/main · web-1".to_string(),
        ]
    );
    let refusals = read_refusals(&maildir);
    assert_eq!(refusals.len(), 3, "each refused once: {refusals:?}");
    // The two newest are kept: the first refused mail went.
    let kept_ids: Vec<&str> = kept.iter().map(|r| r.entry.message_id.as_str()).collect();
    assert_eq!(
        kept_ids,
        vec![
            refusals[1].message_id.as_str(),
            refusals[2].message_id.as_str()
        ]
    );
    for r in &kept {
        assert!(
            r.reply.contains("554 5.7.1 Message rejected"),
            "{}",
            r.reply
        );
        assert_eq!(r.entry.env_to, vec!["ops@example.test".to_string()]);
        assert!(!r.entry.raw.is_empty(), "the whole mail is kept");
    }
    assert!(read_mails(&maildir).is_empty());
    let text = run.exposition();
    assert!(
        text.contains("vpswatch_alert_outbox_rejected_messages 2\n"),
        "{text}"
    );
    assert!(text.contains("vpswatch_alerts_total{channel=\"email\",result=\"rejected\"} 3"));

    // Resolved (those mails are refused too), then a month later: forgotten.
    for vm in 1..=3 {
        run.notifier.alert(update(
            &key("vm-down", "main", &vm.to_string()),
            AlertStatus::Resolved,
            t0(),
        ));
    }
    wait_until("resolutions refused", || run.count("rejected") == 6).await;
    assert_eq!(run.notifier.rejected().expect("rejected").len(), 2);
    clock.advance(chrono::Duration::days(31));
    wait_until("set-aside mails pruned", || {
        run.notifier.rejected().expect("rejected").is_empty()
            && run.metrics.alert_metrics().rejected_messages() == 0
    })
    .await;
    run.close().await;
}

/// The installation id behind every Message-ID is created once per state directory and
/// kept there.
#[tokio::test]
async fn the_installation_id_is_kept_in_the_state_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = parse_settings(&email_toml(free_port(), ""), &|_| None);
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let first = Running::open(s.clone(), &tmp.path().join("a"), clock.clone());
    let id = first.notifier.installation_id().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    first.close().await;
    let again = Running::open(s.clone(), &tmp.path().join("a"), clock.clone());
    assert_eq!(
        again.notifier.installation_id(),
        id,
        "kept across a restart"
    );
    again.close().await;
    let other = Running::open(s, &tmp.path().join("b"), clock);
    assert_ne!(other.notifier.installation_id(), id);
    other.close().await;
}

// --- TLS, AUTH and errors --------------------------------------------------------------

struct Tls {
    cert: PathBuf,
    key: PathBuf,
}

fn self_signed(dir: &Path) -> Tls {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("certificate");
    let cert = dir.join("smtp-cert.pem");
    let key = dir.join("smtp-key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    Tls { cert, key }
}

const USER: &str = "alerts@example.test";
const PASSWORD: &str = "correct-horse-7431";
const WRONG: &str = "wrong-battery-9926";

fn tls_settings(
    port: u16,
    tls: &Tls,
    ca: bool,
    mode: &str,
    password: &'static str,
) -> EmailSettings {
    let ca_line = if ca {
        format!("ca_file = {:?}", tls.cert.display().to_string())
    } else {
        String::new()
    };
    let text = format!(
        r#"
smtp_host = "127.0.0.1"
smtp_port = {port}
security = "{mode}"
username = "{USER}"
password_env = "SMTP_PASSWORD"
{ca_line}
from = "vpswatch@example.test"
to = ["ops@example.test"]
timeout = "5s"
"#
    );
    parse_settings(&text, &move |n| {
        (n == "SMTP_PASSWORD").then(|| password.to_string())
    })
}

#[tokio::test]
async fn starttls_with_private_ca_and_auth_delivers() {
    vpswatch::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let tls = self_signed(tmp.path());
    let opts = ServerOpts {
        mode: "starttls",
        cert: Some((tls.cert.clone(), tls.key.clone())),
        auth: Some((USER.into(), PASSWORD.into())),
        ..ServerOpts::default()
    };
    let server = SmtpServer::start(&maildir, 0, &opts);

    let good = tls_settings(server.port, &tls, true, "starttls", PASSWORD);
    let reply = vpswatch::notify::email::send_test(&good, Utc::now())
        .await
        .expect("test mail accepted");
    assert!(reply.starts_with("250"), "{reply}");

    // The same settings through the notifier and its outbox.
    let run = Running::open(good, &tmp.path().join("state"), Arc::new(SystemClock));
    run.notifier.alert(update(
        &key("probe-ssh", "main", "42"),
        AlertStatus::Firing,
        Utc::now(),
    ));
    let mails = wait_mails(&maildir, 2).await;
    assert_eq!(mails[0].subject(), "[TEST] vpswatch email settings work");
    assert_eq!(
        mails[1].subject(),
        "[FIRING] probe-ssh · lnvps/main · web-1"
    );
    run.close().await;

    // Wrong password: a clear error without the password.
    let bad = tls_settings(server.port, &tls, true, "starttls", WRONG);
    let err = vpswatch::notify::email::send_test(&bad, Utc::now())
        .await
        .expect_err("wrong password");
    assert!(matches!(err, SmtpFailure::AuthFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(text.contains("535"), "{text}");
    assert!(!text.contains(WRONG) && !format!("{err:?}").contains(WRONG));
    assert!(
        !format!("{bad:?}").contains(WRONG),
        "settings Debug redacts"
    );

    // Without ca_file the private certificate is not trusted.
    let untrusted = tls_settings(server.port, &tls, false, "starttls", PASSWORD);
    let err = vpswatch::notify::email::send_test(&untrusted, Utc::now())
        .await
        .expect_err("untrusted");
    assert!(matches!(err, SmtpFailure::Certificate { .. }), "{err:?}");
    assert!(err.to_string().contains("email.ca_file"), "{err}");
}

#[tokio::test]
async fn implicit_tls_delivers() {
    vpswatch::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let tls = self_signed(tmp.path());
    let opts = ServerOpts {
        mode: "tls",
        cert: Some((tls.cert.clone(), tls.key.clone())),
        auth: Some((USER.into(), PASSWORD.into())),
        ..ServerOpts::default()
    };
    let server = SmtpServer::start(&maildir, 0, &opts);
    let s = tls_settings(server.port, &tls, true, "tls", PASSWORD);
    vpswatch::notify::email::send_test(&s, Utc::now())
        .await
        .expect("accepted over TLS");
    assert_eq!(wait_mails(&maildir, 1).await.len(), 1);
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept and hold connections without a greeting.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let mut s = parse_settings(&email_toml(port, ""), &|_| None);
    s.timeout = Duration::from_millis(300);
    let err = vpswatch::notify::email::send_test(&s, Utc::now())
        .await
        .expect_err("no greeting");
    assert!(matches!(err, SmtpFailure::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("timeout while connecting"),
        "{err}"
    );
    holder.abort();
}

// --- The binary ------------------------------------------------------------------------

const HEX_KEY: &str = "6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e";

fn write_config(dir: &Path, email: &str) -> PathBuf {
    let path = dir.join("vpswatch.toml");
    let text = format!(
        r#"state_dir = {:?}
[web]
listen_address = "127.0.0.1:0"
[[accounts]]
name = "main"
provider = "lnvps"
base_url = "http://127.0.0.1:1"
nsec_env = "TEST_NSEC"
[email]
{email}
"#,
        dir.join("state").display().to_string()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn vpswatch(args: &[&str], config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vpswatch"));
    cmd.args(["--log.level", "trace"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env("TEST_NSEC", HEX_KEY)
        .env_remove(vpswatch::notify::email::CRASH_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vpswatch")
}

fn all_output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn test_email_reports_connection_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = write_config(tmp.path(), &email_toml(free_port(), ""));
    let out = vpswatch(&["test-email"], &config, &[]);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("connection refused by 127.0.0.1:"), "{text}");
}

#[test]
fn test_email_wrong_password_is_clear_and_secret_free() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let tls = self_signed(tmp.path());
    let server = SmtpServer::start(
        &maildir,
        0,
        &ServerOpts {
            mode: "starttls",
            cert: Some((tls.cert.clone(), tls.key.clone())),
            auth: Some((USER.into(), PASSWORD.into())),
            ..ServerOpts::default()
        },
    );
    let pass_file = tmp.path().join("smtp.pass");
    std::fs::write(&pass_file, format!("{WRONG}\n")).expect("pass");
    let email = format!(
        "smtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsecurity = \"starttls\"\nusername = \"{USER}\"\n\
         password_file = {:?}\nca_file = {:?}\nfrom = \"vpswatch@example.test\"\nto = [\"ops@example.test\"]\n",
        server.port,
        pass_file.display().to_string(),
        tls.cert.display().to_string()
    );
    let config = write_config(tmp.path(), &email);
    let out = vpswatch(&["test-email"], &config, &[]);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("authentication failed at 127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains(WRONG), "the password leaked:\n{text}");

    // With the right password the same command succeeds and prints the server's answer.
    std::fs::write(&pass_file, PASSWORD).expect("pass");
    let out = vpswatch(&["test-email"], &config, &[]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("test message accepted by 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains(": 250 2.0.0 OK stored as"), "{text}");
    assert!(!text.contains(PASSWORD), "the password leaked:\n{text}");
}

/// Kills the process at the two points that matter and checks what a restart does: after
/// `queued` the mail is delivered exactly once; after `accepted` (the server has it, the
/// commit has not happened) it is delivered again with the same Message-ID — the one
/// at-least-once window SMTP leaves, documented in docs/email.md.
#[test]
fn crash_points_queued_and_accepted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let config = write_config(tmp.path(), &email_toml(server.port, ""));
    let crash = vpswatch::notify::email::CRASH_ENV;

    let out = vpswatch(
        &["test-email", "--via-outbox"],
        &config,
        &[(crash, "queued")],
    );
    assert!(!out.status.success(), "aborted: {}", all_output(&out));
    assert!(
        read_mails(&maildir).is_empty(),
        "nothing sent before the crash"
    );

    let out = vpswatch(&["outbox-send"], &config, &[]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(all_output(&out).contains("delivered 1, failed 0, 0 left"));
    assert_eq!(read_mails(&maildir).len(), 1);

    let out = vpswatch(
        &["test-email", "--via-outbox"],
        &config,
        &[(crash, "accepted")],
    );
    assert!(!out.status.success(), "aborted: {}", all_output(&out));
    assert_eq!(
        read_mails(&maildir).len(),
        2,
        "the server took it before the crash"
    );

    let out = vpswatch(&["outbox-send"], &config, &[]);
    assert!(out.status.success(), "{}", all_output(&out));
    let mails = read_mails(&maildir);
    assert_eq!(mails.len(), 3);
    assert_eq!(
        mails[1].message_id(),
        mails[2].message_id(),
        "the re-sent copy carries the same Message-ID"
    );
    assert_ne!(mails[0].message_id(), mails[1].message_id());

    let out = vpswatch(&["outbox-send"], &config, &[]);
    assert!(all_output(&out).contains("delivered 0, failed 0, 0 left"));
    assert_eq!(read_mails(&maildir).len(), 3);
}

#[test]
fn check_config_names_email_problems_by_key_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = write_config(
        tmp.path(),
        r#"smtp_host = "mail.example.test"
security = "none"
username = "u"
from = "not an address"
to = ["ok@example.test", "broken@"]
repeat_interval = "0s"
colour = "blue"
[email.rule_recipients]
renewal = ["also broken"]
"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .arg("check-config")
        .arg(&config)
        .env("TEST_NSEC", HEX_KEY)
        .output()
        .expect("run");
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for needle in [
        "email.security: \"none\" sends mail unencrypted",
        "email.password_file: missing",
        "email.username: the SMTP password would travel unencrypted",
        "email.from: \"not an address\" is not an email address",
        "email.to[1]: \"broken@\" is not an email address",
        "email.rule_recipients.renewal[0]:",
        "email.repeat_interval: must be greater than zero",
        "email.colour: unknown key",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// `vpswatch demo --smtp` mails the demo's alerts to a local server.
#[tokio::test]
async fn demo_mails_its_alerts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args([
            "--log.level",
            "warn",
            "demo",
            "--web.listen-address",
            "127.0.0.1:0",
            "--smtp",
        ])
        .arg(format!("127.0.0.1:{}", server.port))
        .stdout(Stdio::null())
        .spawn()
        .expect("start demo");
    let mut child = KillOnDrop(child);
    // The demo's stopped VM fires the alert-only `vm-stopped` rule after ~10 s; the VM
    // that hangs after 10 s is rebooted, which mails the action too.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mails = read_mails(&maildir);
        let firing = mails.iter().any(|m| {
            m.subject()
                .starts_with("[FIRING] vm-stopped · lnvps/demo · ")
                && m.rcpt_tos == vec!["operator@localhost".to_string()]
        });
        let action = mails
            .iter()
            .any(|m| m.subject().contains("ssh-unreachable"));
        if firing && action {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo's firing and action mails did not arrive: {:?}",
            mails.iter().map(Mail::subject).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "demo exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills a child if the test fails half-way, so no process outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// docs/email.md's `[email]` example is valid as written (only its files are missing here).
#[test]
fn docs_email_example_parses() {
    let doc = crate::common::docs::read("docs/email.md");
    let block = crate::common::docs::code_blocks(&doc, "toml")
        .into_iter()
        .find(|b| b.starts_with("[email]"))
        .expect("an [email] example");
    let table: toml::Table = block.parse().expect("toml");
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let email = table.get("email").cloned().expect("[email]");
    let parsed = settings::from_toml(email, &|_| None, &mut problems, &mut warnings);
    assert!(parsed.is_none());
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["email.password_file", "email.ca_file"],
        "{problems:?}"
    );
}

// --- The invoice mail of renewal mode "email" ----------------------------------------
#[tokio::test]
async fn invoice_sent_mail_carries_the_bolt11_amount_and_expiry() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maildir = tmp.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let server = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let s = parse_settings(&email_toml(server.port, ""), &|_| None);
    let clock = Arc::new(ManualClock::new(t0()));
    let run = Running::open(s, &tmp.path().join("state"), clock);
    let (_, _, bolt11) = vpswatch_sim::lightning::LightningNode::generate()
        .mint(500_000, t0(), "VM renewal 4")
        .expect("invoice");
    let mut f = facts(
        "vm-4",
        "pay this Lightning invoice to renew vm-4 (500 sats)",
    );
    f.details = vec![
        ("amount".into(), "500 sats".into()),
        ("invoice expires".into(), "2026-11-23T06:54:53Z".into()),
        ("invoice".into(), bolt11.clone()),
    ];
    run.notifier.event(Event {
        id: "renew-main-4-0-invoice".into(),
        kind: EventKind::InvoiceSent,
        key: key("renew", "main", "4"),
        facts: f,
        at: t0(),
    });
    let all = wait_mails(&maildir, 1).await;
    assert_eq!(
        all[0].subject(),
        "[INVOICE TO PAY] renew · lnvps/main · vm-4"
    );
    // Undo quoted-printable soft line breaks: the invoice must arrive whole.
    let body = all[0].data.replace("=\r\n", "");
    assert!(body.contains(&bolt11), "bolt11 in the mail");
    assert!(body.contains("500 sats"));
    assert!(body.contains("2026-11-23T06:54:53Z"));
    run.close().await;
}
