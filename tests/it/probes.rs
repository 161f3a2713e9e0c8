//! TCP liveness probes end to end: real connects to loopback addresses standing in for
//! the VMs' public IPv4s; only running VMs are probed; a VM whose port stops answering
//! (a hung VM) shows as failing; a VM that stops disappears from the probe series.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::Harness;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{Scenario, VmSpec, VmState};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn probes_follow_the_vms_ports() {
    // VM 1's "SSH port": a real listener on 127.0.0.1.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accept = tokio::spawn(async move {
        loop {
            if listener.accept().await.is_err() {
                break;
            }
        }
    });
    let vm = |owner: &str, state, ip: [u8; 4]| VmSpec {
        owner: owner.to_string(),
        state,
        ipv4: Some(Ipv4Addr::from(ip)),
        ..VmSpec::default()
    };
    let globals = format!(
        "[probes]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n[probes.ports]\nlnvps = {port}\n"
    );
    let h = Harness::start_with(
        |owner| Scenario {
            vms: vec![
                vm(owner, VmState::Running, [127, 0, 0, 1]), // answers
                vm(owner, VmState::Running, [127, 0, 0, 2]), // running, port closed: "hung"
                vm(owner, VmState::Stopped, [127, 0, 0, 1]), // stopped: never probed
            ],
            ..Scenario::default()
        },
        &globals,
        Arc::new(SystemClock),
    )
    .await;
    let p = port.to_string();
    let exp = h
        .wait_metrics("probe results", T, |e| {
            e.has("vps_probe_success", &[("vm", "1")]) && e.has("vps_probe_success", &[("vm", "2")])
        })
        .await;
    assert_eq!(
        exp.get("vps_probe_success", &[("vm", "1"), ("port", &p)]),
        Some(1.0)
    );
    assert_eq!(
        exp.get("vps_probe_success", &[("vm", "2"), ("port", &p)]),
        Some(0.0)
    );
    assert!(
        !exp.has("vps_probe_success", &[("vm", "3")]),
        "stopped VMs are not probed"
    );
    let d = exp
        .get("vps_probe_duration_seconds", &[("vm", "1")])
        .expect("duration");
    assert!((0.0..0.5).contains(&d), "{d}");

    // The VM hangs: the provider still says running, but nothing answers any more.
    accept.abort();
    let _ = accept.await;
    h.wait_metrics("vm 1 probe fails once its port closes", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(0.0)
    })
    .await;

    // Stopped on purpose: no probe series at all (never "failing").
    h.sim.update_vm(1, |v| v.state = VmState::Stopped);
    h.wait_metrics("vm 1 is no longer probed", T, |e| {
        e.get("vps_up", &[("vm", "1")]) == Some(0.0) && !e.has("vps_probe_success", &[("vm", "1")])
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn simulated_vms_listen_and_a_hung_vm_stops_answering() {
    // A port that is free on this host; the simulator opens it on each VM's own address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let globals = format!(
        "[probes]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n[probes.ports]\nlnvps = {port}\n"
    );
    let h = Harness::start_with(
        |owner| {
            let vm = |ip: [u8; 4]| VmSpec {
                owner: owner.to_string(),
                ipv4: Some(Ipv4Addr::from(ip)),
                ..VmSpec::default()
            };
            let mut s = Scenario {
                vms: vec![vm([127, 3, 0, 1]), vm([127, 3, 0, 2])],
                ..Scenario::default()
            };
            s.settings.vm_listen_port = Some(port);
            s
        },
        &globals,
        Arc::new(SystemClock),
    )
    .await;
    h.wait_metrics("both VMs answer", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
            && e.get("vps_probe_success", &[("vm", "2")]) == Some(1.0)
    })
    .await;
    h.sim.update_vm(2, |v| v.hung = true);
    let exp = h
        .wait_metrics("hung VM stops answering", T, |e| {
            e.get("vps_probe_success", &[("vm", "2")]) == Some(0.0)
        })
        .await;
    assert_eq!(
        exp.get("vps_up", &[("vm", "2")]),
        Some(1.0),
        "still running per provider"
    );
    assert_eq!(exp.get("vps_probe_success", &[("vm", "1")]), Some(1.0));
    h.shutdown().await;
}

/// Per-VM probe targets: VM 1 on the account's port, VM 2 on its own port, VM 3 excluded.
/// Only those targets are probed and exported (no `port` series a VM does not serve, no
/// series at all for VM 3), and a probe rule reboots the VM whose own port dies.
#[tokio::test]
async fn per_vm_probe_targets_probe_only_what_is_configured() {
    let (port_a, port_b) = (crate::common::free_port(), crate::common::free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let globals = format!(
        r#"state_dir = {state:?}
[probes]
interval = "100ms"
timeout = "300ms"
[probes.ports]
lnvps = {port_a}
[[probes.targets]]
port = {port_b}
[probes.targets.match]
vms = ["2"]
[[probes.targets]]
exclude = true
[probes.targets.match]
vms = ["3"]

[[rules]]
name = "port-dead"
condition = "probe_failing"
failures = 2
recoveries = 2
action = "reboot"
cooldown = "1h"
patience = "1m"
"#,
        state = dir.path().display().to_string()
    );
    let h = Harness::start_with(
        move |owner| {
            let vm = |ip: u8, port: Option<u16>| VmSpec {
                owner: owner.to_string(),
                state: VmState::Running,
                ipv4: Some(Ipv4Addr::new(127, 7, 1, ip)),
                listen_port: port,
                ..VmSpec::default()
            };
            Scenario {
                vms: vec![vm(1, Some(port_a)), vm(2, Some(port_b)), vm(3, None)],
                ..Scenario::default()
            }
        },
        &globals,
        Arc::new(SystemClock),
    )
    .await;
    let (a, b) = (port_a.to_string(), port_b.to_string());
    let e = h
        .wait_metrics("both probed VMs answer on their own ports", T, |e| {
            e.get("vps_probe_success", &[("vm", "1"), ("port", &a)]) == Some(1.0)
                && e.get("vps_probe_success", &[("vm", "2"), ("port", &b)]) == Some(1.0)
                && e.get("vpswatch_rule_firing", &[("vm", "2")]) == Some(0.0)
        })
        .await;
    let probe_series: Vec<String> = e
        .text
        .lines()
        .filter(|l| l.starts_with("vps_probe_success{"))
        .map(String::from)
        .collect();
    assert_eq!(probe_series.len(), 2, "{probe_series:#?}");
    assert!(!e.has("vps_probe_success", &[("vm", "2"), ("port", &a)]));
    assert!(!e.has("vps_probe_success", &[("vm", "3")]));
    // VM 3 is no target of the probe rule at all (not even "unknown").
    assert!(!e.has("vpswatch_rule_firing", &[("vm", "3")]), "{}", e.text);
    assert!(
        !e.has("vpswatch_rule_unknown", &[("vm", "3")]),
        "{}",
        e.text
    );

    // VM 2's own port dies: the rule reboots VM 2, and only VM 2.
    h.sim.set_hung(2, true);
    h.wait_metrics("VM 2 rebooted", T, |e| {
        e.get(
            "vpswatch_actions_total",
            &[("vm", "2"), ("result", "ok"), ("source", "rule")],
        ) == Some(1.0)
    })
    .await;
    let restarted: Vec<u64> = h.sim.actions().iter().map(|a| a.vm_id).collect();
    assert_eq!(restarted, vec![2]);
    h.shutdown().await;
}
