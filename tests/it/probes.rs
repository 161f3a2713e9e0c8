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
