//! Secrets never leak: with every log line captured at TRACE level (tracing and the
//! `log` records of the HTTP stack), the RDP passwords the simulator serves on
//! `GET /api/v1/vps/:id` and the API keys appear in no log line, no metric, no poll
//! error or warning and no action error. Also: the "actions disabled" line is logged
//! once per account, however often it is hit.
//!
//! The log capture is process-wide (`common::log_capture`).

use std::sync::Arc;
use std::time::Duration;

use crate::common::{stable_account, Exposition, Stack, StackSpec, SVPS_FULL, SVPS_READ};
use vpswatch_model::clock::SystemClock;
use vpswatch_model::vm::VmAction;
use vpswatch_sim::stablevps::{
    AccountSpec, EndpointMatch, Fault, FaultKind, KeyScope, KeySpec, StableScenario, VpsSpec,
    VPS_ONE,
};

const T: Duration = Duration::from_secs(20);

/// Successful `GET /api/v1/vps/:id` answers served so far (each carries a password).
fn detail_answers(sim: &vpswatch_sim::stablevps::StableVpsSimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.endpoint == VPS_ONE && r.status == 200)
        .count()
}

#[tokio::test]
async fn rdp_passwords_and_keys_never_leak() {
    let capture = crate::common::log_capture::capture();

    let key = |k: &str, scope| KeySpec {
        key: k.into(),
        name: None,
        scope,
        expires_at: None,
    };
    // Every entry lacks its address in the list, so every poll fetches every VPS with
    // its rdpPassword.
    let vps = |vps_status: &str| VpsSpec {
        vps_status: vps_status.into(),
        listen_rdp: false,
        list_omits: vec!["ipAddress".into()],
        ..VpsSpec::default()
    };
    let scenario = StableScenario {
        accounts: vec![AccountSpec {
            keys: vec![
                key(SVPS_FULL, KeyScope::Full),
                key(SVPS_READ, KeyScope::Read),
            ],
            ..AccountSpec::default()
        }],
        vps: vec![vps("active"), vps("stopped"), vps("active")],
        ..StableScenario::default()
    };
    let accounts = format!(
        "{}\n{}",
        stable_account("api_key_env = \"SVPS_FULL\""),
        stable_account("api_key_env = \"SVPS_READ\"\nauth_header = \"x-api-key\"")
            .replace("name = \"svps\"", "name = \"ro\"")
    );
    let s = Stack::start(StackSpec {
        lnvps: None,
        stablevps: Some(scenario),
        accounts,
        globals: String::new(),
        clock: Arc::new(SystemClock),
    })
    .await;
    let sim = s.svps().clone();
    let ids: Vec<String> = sim.vpses().into_iter().map(|v| v.id).collect();

    crate::common::wait_for("per-VPS answers with passwords were read", T, || {
        let sim = sim.clone();
        async move { detail_answers(&sim) >= 12 }
    })
    .await;

    // Broken per-VPS answers: cut off half-way (possibly inside the password),
    // malformed, and a 500. Each must reach the poll's warnings without the body.
    let mut errors = Vec::new();
    for (kind, needle) in [
        (FaultKind::TruncatedBody, "invalid response"),
        (FaultKind::MalformedJson, "malformed JSON"),
        (FaultKind::Status(500), "HTTP 500"),
    ] {
        sim.inject_fault(Fault::new(EndpointMatch::template(VPS_ONE), kind));
        let deadline = std::time::Instant::now() + T;
        let warnings = loop {
            let found: Vec<String> = s
                .daemon
                .store
                .all()
                .iter()
                .filter_map(|snap| snap.data.clone())
                .flat_map(|d| d.warnings.clone())
                .filter(|w| w.contains("GET /api/v1/vps/{id}") && w.contains(needle))
                .collect();
            if !found.is_empty() {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no poll warned about {needle}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        errors.extend(warnings);
        sim.clear_faults();
    }

    // Writes: the read-only account refuses locally, many times; the full one acts.
    let ro = s
        .daemon
        .providers
        .iter()
        .find(|p| p.account() == "ro")
        .expect("ro account")
        .clone();
    let full = s
        .daemon
        .providers
        .iter()
        .find(|p| p.account() == "svps")
        .expect("svps account")
        .clone();
    s.wait_metrics("read-only account known", T, |e| {
        e.get("vps_actions_enabled", &[("account", "ro")]) == Some(0.0)
    })
    .await;
    for _ in 0..5 {
        match ro.act(&ids[0], VmAction::Reboot).await {
            Ok(()) => panic!("a read-only key acted"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    full.act(&ids[0], VmAction::Reboot)
        .await
        .expect("full key reboots");
    // A refused write (404) and a faulted one have error texts too.
    errors.push(
        full.act("ffffffffffffffffffffffff", VmAction::Start)
            .await
            .expect_err("unknown VPS")
            .to_string(),
    );

    // A few more polls after all that.
    let so_far = detail_answers(&sim);
    crate::common::wait_for("more polls", T, || {
        let sim = sim.clone();
        async move { detail_answers(&sim) >= so_far + 6 }
    })
    .await;

    let metrics = s.metrics().await;
    let exp = Exposition::parse(&metrics);
    assert_eq!(
        exp.get("vpswatch_provider_up", &[("account", "svps")]),
        Some(1.0)
    );
    for snap in s.daemon.store.all() {
        errors.extend(snap.last_error.clone());
        if let Some(d) = &snap.data {
            errors.extend(d.warnings.iter().cloned());
            errors.push(format!("{:?}", d.vms));
        }
    }
    s.shutdown().await;

    let logs = capture.text();
    // The capture works and saw the interesting parts: the HTTP stack at trace level,
    // the per-VPS failures, and the refusal.
    assert!(logs.contains("TRACE"), "no trace output captured");
    assert!(
        logs.contains("GET /api/v1/vps/{id}"),
        "per-VPS failures not logged"
    );
    assert!(
        errors.iter().any(|e| e.contains("GET /api/v1/vps/{id}")),
        "per-VPS failures not in the warnings: {errors:?}"
    );
    let disabled = logs
        .lines()
        .filter(|l| l.contains("actions disabled") && l.contains("account=ro"))
        .count();
    assert_eq!(disabled, 1, "logged once:\n{logs}");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("actions disabled") && l.contains("account=svps")),
        "the full key's account keeps its actions"
    );

    let passwords: Vec<String> = sim.vpses().into_iter().map(|v| v.rdp_password).collect();
    assert_eq!(passwords.len(), 3);
    let secrets = passwords
        .iter()
        .map(String::as_str)
        .chain([SVPS_FULL, SVPS_READ]);
    for secret in secrets {
        assert!(secret.len() >= 16);
        assert!(!logs.contains(secret), "a secret is in the logs");
        assert!(!metrics.contains(secret), "a secret is in /metrics");
        for e in &errors {
            assert!(!e.contains(secret), "a secret is in an error: {e}");
        }
    }
    // Not even the field name makes it into what vpswatch keeps.
    assert!(!errors.iter().any(|e| e.contains("rdpPassword")));
}
