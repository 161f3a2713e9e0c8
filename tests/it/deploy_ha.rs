//! `deploy/ha/run --check`: the local cluster script (3 etcd members, the simulator, 3
//! replicas from 127.0.0.2-4) kills the owner of an account right after its watchdog
//! started a VM, stops two etcd members while another VM needs an action, and reports
//! what the simulator saw. Every guarantee in its JSON line is asserted here.

use std::path::Path;
use std::process::{Command, Stdio};

/// The script's child, sent SIGTERM when dropped (a panicking test), so its trap stops
/// everything it started.
struct Terminate(std::process::Child);

impl Drop for Terminate {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling a child this test spawned and has not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let _ = self.0.wait();
    }
}

#[test]
fn the_local_cluster_keeps_every_guarantee_through_failover_and_quorum_loss() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let child = Command::new("bash")
        .arg(repo.join("deploy/ha/run"))
        .arg("--check")
        .env("VPSWATCH", env!("CARGO_BIN_EXE_vpswatch"))
        .env(
            "VPSWATCH_HA_ETCD",
            std::env::var("VPSWATCH_TEST_ETCD").unwrap_or("etcd".into()),
        )
        // A TTL long enough that the owner still holds its accounts when its fenced
        // action times out against the etcd member left alone (the client's 5 s).
        .env("VPSWATCH_HA_LEASE_TTL", "12")
        .env("VPSWATCH_HA_POLL", "1s")
        .env("VPSWATCH_HA_TIMEOUT", "120")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run deploy/ha/run");
    let mut child = Terminate(child);
    let stdout = std::io::read_to_string(child.0.stdout.take().expect("stdout")).expect("stdout");
    let stderr = std::io::read_to_string(child.0.stderr.take().expect("stderr")).expect("stderr");
    let status = child.0.wait().expect("wait");
    let line = stdout.lines().last().unwrap_or_default();
    let figures: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("no JSON line ({e}): stdout {stdout:?}\nstderr {stderr}");
    });
    let int = |k: &str| {
        figures[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {figures}"))
    };
    assert_eq!(int("accounts"), 6, "{figures}");
    assert_eq!(int("max_owners_per_account"), 1, "{figures}");
    assert_eq!(int("duplicate_actions"), 0, "{figures}");
    assert_eq!(int("duplicate_payments"), 0, "{figures}");
    assert_eq!(int("actions_during_quorum_loss"), 0, "{figures}");
    // Positive evidence: the watchdog acted (before the kill, the start refused during
    // the quorum loss once quorum came back, and a later one), every account's expiring
    // VM was renewed once, and the owner during the quorum loss was blocked rather than
    // idle.
    assert_eq!(int("actions"), 3, "{figures}");
    assert_eq!(int("payments"), 6, "{figures}");
    let evidence = figures["quorum_loss_evidence"].as_str().unwrap_or_default();
    assert!(
        ["fence refused", "lease lost"].contains(&evidence),
        "{figures}"
    );
    let failover = figures["failover_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("failover_seconds missing in {figures}"));
    assert!(
        failover > 0.0 && failover < 12.0 + 30.0,
        "takeover after the lease TTL (plus slack for a loaded machine): {figures}"
    );
    assert!(status.success(), "exit {status}: {stderr}");
}
