//! TCP liveness probes end to end: real connects to loopback addresses standing in for
//! the VMs' public IPv4s; only running VMs are probed; a VM whose port stops answering
//! (a hung VM) shows as failing; a VM that stops disappears from the probe series.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use vpswatch::clock::SystemClock;
use vpswatch::sim::lnvps::{Scenario, VmSpec, VmState};

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
