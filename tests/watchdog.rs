//! The watchdog end to end: a simulated LNVPS account whose VMs listen on loopback
//! addresses, real TCP probes, real provider calls, and the journal on disk. Each test
//! checks one invariant of DESIGN.md §5. Time is scaled (probes every 100 ms, `for` under
//! a second) instead of slept through.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::{Exposition, Harness};
use vpswatch::clock::SystemClock;
use vpswatch::sim::lnvps::{Scenario, VmSpec, VmState};

const T: Duration = Duration::from_secs(20);

/// A daemon with rules, its state directory and the simulator's VM port.
struct Wd {
    h: Harness,
    _dir: tempfile::TempDir,
}

/// Rule text for a probe rule that reboots after two failed probes held 300 ms.
fn probe_rule(extra: &str) -> String {
    format!(
        r#"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
recoveries = 2
action = "reboot"
cooldown = "1h"
patience = "10s"
{extra}
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Wd {
    /// `vms` VMs in the given states on 127.5.<subnet>.<n>, listening when running.
    async fn start(subnet: u8, states: &[VmState], rules: &str) -> Wd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let globals = format!(
            "state_dir = {:?}\n[probes]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n[probes.ports]\nlnvps = {port}\n{rules}\n",
            dir.path().display().to_string()
        );
        let states = states.to_vec();
        let h = Harness::start_with(
            move |owner| {
                let vms = states
                    .iter()
                    .enumerate()
                    .map(|(i, state)| VmSpec {
                        owner: owner.to_string(),
                        state: *state,
                        ipv4: Some(Ipv4Addr::new(127, 5, subnet, i as u8 + 1)),
                        ..VmSpec::default()
                    })
                    .collect();
                let mut s = Scenario {
                    vms,
                    ..Scenario::default()
                };
                s.settings.vm_listen_port = Some(port);
                s
            },
            &globals,
            Arc::new(SystemClock),
        )
        .await;
        Wd { h, _dir: dir }
    }

    /// Power actions the simulator received for a VM (`restart`, `start`, `stop`).
    fn calls(&self, vm: u64, verb: &str) -> usize {
        self.h
            .sim
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.vm_id == Some(vm) && r.path.ends_with(verb))
            .count()
    }

    /// Waits until the watchdog has evaluated again well after `since` (proof that it
    /// looked and decided, for "nothing happened" assertions).
    async fn evaluated_after(&self, since: f64) -> Exposition {
        self.h
            .wait_metrics("a later watchdog evaluation", T, |e| {
                e.get("vpswatch_watchdog_last_evaluation_timestamp_seconds", &[])
                    .is_some_and(|t| t > since)
            })
            .await
    }

    fn now() -> f64 {
        vpswatch::clock::unix_seconds(chrono::Utc::now())
    }
}

fn actions(e: &Exposition, vm: &str, result: &str) -> f64 {
    e.samples
        .iter()
        .filter(|(n, l, _)| {
            n == "vpswatch_actions_total"
                && l.iter().any(|(k, v)| k == "vm" && v == vm)
                && l.iter().any(|(k, v)| k == "result" && v == result)
        })
        .map(|s| s.2)
        .sum()
}

#[tokio::test]
async fn hung_vm_is_rebooted_exactly_once_and_recovery_is_observed() {
    let wd = Wd::start(1, &[VmState::Running, VmState::Running], &probe_rule("")).await;
    wd.h.wait_metrics("both VMs answer", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
            && e.get("vps_probe_success", &[("vm", "2")]) == Some(1.0)
    })
    .await;
    assert_eq!(wd.calls(1, "/restart"), 0);

    wd.h.sim.update_vm(1, |v| v.hung = true);
    let exp =
        wd.h.wait_metrics("reboot sent and recovery observed", T, |e| {
            e.get(
                "vpswatch_action_outcomes_total",
                &[("vm", "1"), ("outcome", "recovered")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(actions(&exp, "1", "ok"), 1.0);
    assert_eq!(
        exp.get("vpswatch_rule_firing", &[("rule", "ssh-dead"), ("vm", "1")]),
        Some(0.0),
        "resolved after recovery"
    );
    assert!(exp.has(
        "vpswatch_last_action_timestamp_seconds",
        &[("vm", "1"), ("action", "reboot")]
    ));

    // Well after the recovery: still exactly one restart, none for the healthy VM.
    let later = wd.evaluated_after(Wd::now() + 1.0).await;
    assert_eq!(wd.calls(1, "/restart"), 1, "exactly one reboot");
    assert_eq!(wd.calls(2, "/restart"), 0);
    assert_eq!(actions(&later, "2", "ok"), 0.0);
    assert_eq!(later.get("vpswatch_rule_firing", &[("vm", "1")]), Some(0.0));

    // The journal says the same, with the outcome.
    let text =
        wd.h.http
            .get(wd.h.url("/api/v1/actions"))
            .send()
            .await
            .expect("api")
            .text()
            .await
            .expect("body");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    let list = body["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["vm"], "1");
    assert_eq!(list[0]["action"], "reboot");
    assert_eq!(list[0]["status"], "ok");
    assert_eq!(list[0]["outcome"], "recovered");
    assert_eq!(list[0]["dry_run"], false);
    wd.h.shutdown().await;
}

#[tokio::test]
async fn counters_reset_after_recovery_so_a_second_hang_is_handled_afresh() {
    // Short cooldown: a second, separate hang later gets its own single reboot.
    let wd = Wd::start(
        2,
        &[VmState::Running],
        &probe_rule("").replace("cooldown = \"1h\"", "cooldown = \"1s\""),
    )
    .await;
    wd.h.wait_metrics("VM answers", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    for round in 1..=2u32 {
        wd.h.sim.update_vm(1, |v| v.hung = true);
        wd.h.wait_metrics("recovered", T, |e| {
            e.get(
                "vpswatch_action_outcomes_total",
                &[("vm", "1"), ("outcome", "recovered")],
            ) == Some(f64::from(round))
        })
        .await;
        assert_eq!(wd.calls(1, "/restart"), round as usize);
        // Let the cooldown pass before the next hang.
        let t = Wd::now() + 1.2;
        wd.evaluated_after(t).await;
    }
    wd.h.shutdown().await;
}

#[tokio::test]
async fn provisioning_expired_and_owner_stopped_vms_are_never_rebooted() {
    let rules = r#"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
failures = 1
action = "reboot"
cooldown = "1s"
patience = "1s"
[[rules]]
name = "down"
condition = "vm_not_running"
failures = 1
"#;
    let wd = Wd::start(
        3,
        &[VmState::Creating, VmState::Running, VmState::Stopped],
        rules,
    )
    .await;
    // VM 2 is running but expired (a renewal problem; the provider's worker has not
    // stopped it yet) and its port is dead too.
    wd.h.sim.update_vm(2, |v| {
        let expired = chrono::Utc::now() - chrono::Duration::hours(1);
        v.hung = true;
        v.expires = Some(expired);
        v.expired_handled = Some(expired);
    });
    let exp =
        wd.h.wait_metrics("the expired VM's reboot is refused by the guard", T, |e| {
            actions(e, "2", "skipped_guard") >= 2.0
        })
        .await;
    // The owner-stopped VM fires the alert-only rule, and nothing acts on it.
    let exp2 =
        wd.h.wait_metrics("stopped VM alert fires", T, |e| {
            e.get("vpswatch_rule_firing", &[("rule", "down"), ("vm", "3")]) == Some(1.0)
        })
        .await;
    for vm in [1, 2, 3] {
        for verb in ["/restart", "/start", "/stop"] {
            assert_eq!(wd.calls(vm, verb), 0, "vm {vm} {verb}");
        }
    }
    assert_eq!(actions(&exp, "2", "ok"), 0.0);
    // The VM being provisioned is not even probed, so the probe rule cannot judge it.
    assert_eq!(
        exp2.get(
            "vpswatch_rule_unknown",
            &[("rule", "ssh-dead"), ("vm", "1")]
        ),
        Some(1.0)
    );
    wd.h.shutdown().await;
}
