//! `kill -9` of the real binary right after it sent a reboot: the restarted daemon reads
//! the journal, keeps the cooldown, and sends no second action to the still-dead VM.

use crate::common::free_port;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::common::daemon_process::{spawn_run, KillOnDrop};
use crate::common::{wait_for, Exposition};
use vpswatch_sim::lnvps::{LnvpsSimHandle, Scenario, VmSpec};

const T: Duration = Duration::from_secs(30);

fn spawn(config: &std::path::Path, nsec: &str) -> KillOnDrop {
    spawn_run(config, "CRASH_TEST_NSEC", nsec)
}

async fn scrape(url: &str) -> Option<Exposition> {
    let r = reqwest::get(url).await.ok()?;
    Some(Exposition::parse(&r.text().await.ok()?))
}

async fn wait_scrape(url: &str, what: &str, pred: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + T;
    loop {
        if let Some(e) = scrape(url).await {
            if pred(&e) {
                return e;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for: {what}\n{}", e.text);
            }
        } else if Instant::now() > deadline {
            panic!("timed out waiting for: {what} (no /metrics)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn power_calls(sim: &LnvpsSimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.vm_id == Some(1))
        .count()
}

fn skipped_cooldown(e: &Exposition) -> f64 {
    e.get(
        "vpswatch_actions_total",
        &[("vm", "1"), ("result", "skipped_cooldown")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn kill_9_right_after_a_reboot_does_not_repeat_it() {
    vpswatch::tls::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let vm_port = free_port();
    let scenario = Scenario {
        vms: vec![VmSpec {
            owner: owner.clone(),
            ipv4: Some(Ipv4Addr::new(127, 6, 0, 1)),
            ..VmSpec::default()
        }],
        ..Scenario::default()
    };
    let sim = crate::common::lnvps_sim_with_vm_ports(scenario, vm_port).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let web = free_port();
    let config = dir.path().join("vpswatch.toml");
    let text = format!(
        r#"poll_interval = "200ms"
request_timeout = "1s"
state_dir = "{state}"
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
nsec_env = "CRASH_TEST_NSEC"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
escalate = ["stop_start"]
cooldown = "1h"
patience = "500ms"
"#,
        state = dir.path().join("state").display(),
        url = sim.base_url(),
    );
    std::fs::write(&config, text).expect("write config");
    let nsec = keys.secret_key().to_secret_hex();
    let metrics = format!("http://127.0.0.1:{web}/metrics");

    let mut first = spawn(&config, &nsec);
    wait_scrape(&metrics, "VM answers", |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    sim.update_vm(1, |v| v.hung = true);
    wait_for("the reboot reaches the provider", T, || async {
        power_calls(&sim) == 1
    })
    .await;
    // kill -9 at once: the response may not even have been read.
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    // The reboot did not help.
    sim.update_vm(1, |v| v.hung = true);

    let _second = spawn(&config, &nsec);
    let exp = wait_scrape(
        &metrics,
        "restarted daemon evaluates and holds the cooldown",
        |e| skipped_cooldown(e) >= 3.0,
    )
    .await;
    assert_eq!(
        exp.get("vpswatch_rule_firing", &[("vm", "1")]),
        Some(1.0),
        "state restored"
    );
    assert_eq!(power_calls(&sim), 1, "no second action after kill -9");
    let body = reqwest::get(format!("http://127.0.0.1:{web}/api/v1/actions"))
        .await
        .expect("api")
        .text()
        .await
        .expect("body");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let list = v["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{body}");
    let status = list[0]["status"].as_str().unwrap_or_default().to_string();
    assert!(
        status == "ok" || status == "interrupted",
        "journal shows the action as sent: {body}"
    );
    sim.shutdown();
}
