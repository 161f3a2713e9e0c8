//! The watchdog on StableVPS, through the same provider trait: a hung Windows VPS (RDP
//! port closed while the API says active) is rebooted with `POST /vps/:id/actions` by the
//! account holding a full-scope key; an account polling with a read-only key reports the
//! action as disabled and never sends a write, and its firing mail says so.

use std::sync::Arc;
use std::time::Duration;

use crate::common::smtp::{wait_mails, Mail, ServerOpts, SmtpServer};
use crate::common::{Exposition, Stack, StackSpec};
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::stablevps::{AccountSpec, KeyScope, KeySpec, StableScenario, VpsSpec};

const T: Duration = Duration::from_secs(20);

fn actions(e: &Exposition, account: &str, result: &str) -> f64 {
    e.get(
        "vpswatch_actions_total",
        &[("account", account), ("result", result)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn hung_vps_is_rebooted_with_the_write_key_and_never_by_a_read_only_account() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let key = |k: &str, scope| KeySpec {
        key: k.into(),
        name: None,
        scope,
        expires_at: None,
    };
    let scenario = StableScenario {
        accounts: vec![AccountSpec {
            keys: vec![
                key(crate::common::SVPS_FULL, KeyScope::Full),
                key(crate::common::SVPS_READ, KeyScope::Read),
            ],
            ..AccountSpec::default()
        }],
        vps: vec![VpsSpec {
            ip_address: Some("127.3.10.1".parse().expect("ip")),
            rdp_port: Some(port),
            listen_rdp: true,
            ..VpsSpec::default()
        }],
        ..StableScenario::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let globals = format!(
        r#"state_dir = {:?}
[probes]
interval = "100ms"
timeout = "300ms"
ports = {{ stablevps = {port} }}
[[rules]]
name = "rdp-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
cooldown = "1h"
patience = "10s"
"#,
        dir.path().display().to_string()
    );
    // Two views of the same StableVPS account: one may act, one may only read.
    let accounts = r#"[[accounts]]
name = "full"
provider = "stablevps"
base_url = "{stablevps_url}"
api_key_env = "SVPS_READ"
write_api_key_env = "SVPS_FULL"

[[accounts]]
name = "readonly"
provider = "stablevps"
base_url = "{stablevps_url}"
api_key_env = "SVPS_READ"
"#;
    let s = Stack::start(StackSpec {
        lnvps: None,
        stablevps: Some(scenario),
        accounts: accounts.into(),
        globals,
        clock: Arc::new(SystemClock),
    })
    .await;
    let id = s.svps().vpses()[0].id.clone();
    s.wait_metrics("RDP answers for both accounts", T, |e| {
        ["full", "readonly"].iter().all(|a| {
            e.get("vps_probe_success", &[("account", a), ("vm", id.as_str())]) == Some(1.0)
        })
    })
    .await;

    s.svps().set_hang(&id, true);
    let exp = s
        .wait_metrics("rebooted by the full account, recovered", T, |e| {
            e.get(
                "vpswatch_action_outcomes_total",
                &[
                    ("account", "full"),
                    ("outcome", "recovered"),
                    ("source", "rule"),
                ],
            ) == Some(1.0)
                && actions(e, "readonly", "skipped_disabled") >= 1.0
        })
        .await;
    assert_eq!(actions(&exp, "full", "ok"), 1.0);
    assert_eq!(actions(&exp, "readonly", "ok"), 0.0);
    assert_eq!(
        exp.get("vps_actions_enabled", &[("account", "readonly")]),
        Some(0.0)
    );
    let reboots: Vec<_> = s
        .svps()
        .actions()
        .into_iter()
        .filter(|a| a.vps_id.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(reboots.len(), 1, "{reboots:?}");
    assert_eq!(reboots[0].action, "reboot");
    assert_eq!(reboots[0].status, 200);
    // Every write went out with the full key, none with the read key.
    let writes: Vec<_> = s
        .svps()
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(
        writes
            .iter()
            .all(|r| r.key_prefix.as_deref().is_some_and(|p| {
                crate::common::SVPS_FULL.starts_with(p) && !crate::common::SVPS_READ.starts_with(p)
            })),
        "{writes:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_read_only_accounts_firing_mail_says_actions_are_disabled() {
    let port = crate::common::free_port();
    let scenario = StableScenario {
        accounts: vec![AccountSpec {
            keys: vec![KeySpec {
                key: crate::common::SVPS_READ.into(),
                name: None,
                scope: KeyScope::Read,
                expires_at: None,
            }],
            ..AccountSpec::default()
        }],
        vps: vec![VpsSpec {
            ip_address: Some("127.3.11.1".parse().expect("ip")),
            rdp_port: Some(port),
            listen_rdp: true,
            ..VpsSpec::default()
        }],
        ..StableScenario::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let smtp = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let globals = format!(
        r#"state_dir = {state:?}
[probes]
interval = "100ms"
timeout = "300ms"
ports = {{ stablevps = {port} }}
[email]
smtp_host = "127.0.0.1"
smtp_port = {smtp}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
[[rules]]
name = "rdp-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
cooldown = "1h"
"#,
        state = dir.path().join("state").display().to_string(),
        smtp = smtp.port,
    );
    let s = Stack::start(StackSpec {
        lnvps: None,
        stablevps: Some(scenario),
        accounts: crate::common::stable_account(r#"api_key_env = "SVPS_READ""#),
        globals,
        clock: Arc::new(SystemClock),
    })
    .await;
    let id = s.svps().vpses()[0].id.clone();
    s.wait_metrics("RDP answers", T, |e| {
        e.get("vps_probe_success", &[("vm", id.as_str())]) == Some(1.0)
    })
    .await;

    s.svps().set_hang(&id, true);
    let mails = wait_mails(&maildir, 1).await;
    let firing = mails
        .iter()
        .find(|m| m.subject().starts_with("[FIRING] rdp-dead"))
        .unwrap_or_else(|| {
            panic!(
                "a firing mail: {:?}",
                mails.iter().map(Mail::subject).collect::<Vec<_>>()
            )
        });
    let text = firing.text_body();
    assert!(
        text.contains("actions are disabled for this account"),
        "{text}"
    );
    assert!(!text.contains("reboot next"), "{text}");
    // The rule did want to act, and the read-only key held it back.
    s.wait_metrics("the reboot was skipped as disabled", T, |e| {
        actions(e, "svps", "skipped_disabled") >= 1.0
    })
    .await;
    assert!(
        s.svps().requests().iter().all(|r| r.method == "GET"),
        "no write with a read-only key"
    );
    s.shutdown().await;
}
