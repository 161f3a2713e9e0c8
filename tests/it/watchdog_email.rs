//! The watchdog and email together, against a real SMTP server (aiosmtpd): a hung VM
//! produces a firing mail, an action mail and a resolved mail that thread together; a VM
//! flapping inside the rule's hysteresis produces no mail at all.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::smtp::{read_mails, Mail, ServerOpts, SmtpServer};
use crate::common::Harness;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{Scenario, VmSpec};

const T: Duration = Duration::from_secs(20);

struct Setup {
    h: Harness,
    maildir: std::path::PathBuf,
    _smtp: SmtpServer,
    _dir: tempfile::TempDir,
}

/// A daemon with one LNVPS VM on 127.7.<subnet>.1, `rule` and email to a local server.
async fn start(subnet: u8, rule: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let smtp = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let globals = format!(
        r#"state_dir = {state:?}
[probes]
interval = "100ms"
timeout = "300ms"
ports = {{ lnvps = {port} }}
[email]
smtp_host = "127.0.0.1"
smtp_port = {smtp}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
{rule}
"#,
        state = dir.path().join("state").display().to_string(),
        smtp = smtp.port,
    );
    let h = Harness::start_with(
        move |owner| {
            let mut s = Scenario {
                vms: vec![VmSpec {
                    owner: owner.to_string(),
                    ipv4: Some(Ipv4Addr::new(127, 7, subnet, 1)),
                    ..VmSpec::default()
                }],
                ..Scenario::default()
            };
            s.settings.vm_listen_port = Some(port);
            s
        },
        &globals,
        Arc::new(SystemClock),
    )
    .await;
    h.wait_metrics("VM answers", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    Setup {
        h,
        maildir,
        _smtp: smtp,
        _dir: dir,
    }
}

async fn wait_subjects(maildir: &std::path::Path, want: &[&str]) -> Vec<Mail> {
    let deadline = Instant::now() + T;
    loop {
        let mails = read_mails(maildir);
        if want
            .iter()
            .all(|w| mails.iter().any(|m| m.subject().starts_with(w)))
        {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "expected mails {want:?}, got {:?}",
            mails.iter().map(Mail::subject).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_healed_vm_mails_firing_action_and_resolved_in_one_thread() {
    let s = start(
        1,
        r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
cooldown = "1h"
patience = "10s"
"#,
    )
    .await;
    s.h.sim.set_hung(1, true);
    let mails = wait_subjects(
        &s.maildir,
        &[
            "[FIRING] ssh-dead · lnvps/main",
            "[RESOLVED] ssh-dead · lnvps/main",
        ],
    )
    .await;
    let firing = mails
        .iter()
        .find(|m| m.subject().starts_with("[FIRING]"))
        .expect("firing mail");
    let root = firing.message_id();
    // Everything after the firing mail (the action taken, the resolution) threads to it.
    let rest: Vec<&Mail> = mails.iter().filter(|m| m.message_id() != root).collect();
    assert!(
        rest.len() >= 2,
        "{:?}",
        mails.iter().map(Mail::subject).collect::<Vec<_>>()
    );
    let action = rest.iter().find(|m| {
        m.subject()
            .starts_with("[ACTION TAKEN] ssh-dead · lnvps/main")
    });
    assert!(
        action.is_some_and(|m| m.data.to_lowercase().contains("reboot")),
        "an action mail naming the reboot: {:?}",
        mails.iter().map(Mail::subject).collect::<Vec<_>>()
    );
    for m in &rest {
        assert!(
            m.header("References").unwrap_or_default().contains(&root),
            "{} does not thread to the firing mail",
            m.subject()
        );
    }
    // Exactly one firing mail and one resolution.
    let count = |p: &str| mails.iter().filter(|m| m.subject().starts_with(p)).count();
    assert_eq!(count("[FIRING]"), 1);
    assert_eq!(count("[RESOLVED]"), 1);
    s.h.shutdown().await;
}

#[tokio::test]
async fn a_vm_flapping_inside_the_hysteresis_sends_no_mail() {
    // `for = 2s` of continuous failure; the VM never stays down longer than 150 ms, and
    // every up phase (200 ms) is longer than the probe interval (100 ms).
    let s = start(
        2,
        r#"[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "2s"
failures = 3
action = "reboot"
"#,
    )
    .await;
    let until = Instant::now() + Duration::from_secs(5);
    let mut failures_seen = 0;
    while Instant::now() < until {
        s.h.sim.set_hung(1, true);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let e = crate::common::Exposition::parse(&s.h.metrics().await);
        if e.get("vps_probe_success", &[("vm", "1")]) == Some(0.0) {
            failures_seen += 1;
        }
        s.h.sim.set_hung(1, false);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exp =
        s.h.wait_metrics("evaluated after the flapping", T, |e| {
            e.get("vpswatch_rule_firing", &[("vm", "1")]) == Some(0.0)
                && e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
        })
        .await;
    // The probes did see the failures (so the hysteresis was exercised)...
    assert!(
        failures_seen >= 3,
        "only {failures_seen} failed probes seen"
    );
    // ...and nothing was acted on or mailed.
    assert!(
        s.h.sim.requests().iter().all(|r| r.method == "GET"),
        "no action"
    );
    assert_eq!(
        exp.get("vpswatch_alerts_total", &[("result", "queued")])
            .unwrap_or(0.0),
        0.0,
        "nothing queued"
    );
    assert!(read_mails(&s.maildir).is_empty(), "no mail");
    s.h.shutdown().await;
}
