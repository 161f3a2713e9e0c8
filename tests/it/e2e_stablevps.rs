//! End to end: the StableVPS simulator and the daemon on ephemeral loopback ports,
//! talking real HTTP. /metrics must equal the simulator's state (either header style),
//! the wallet runway must be exact, read-only keys must never write, every fault must
//! leave the last good values with the failure visible, and an LNVPS and a StableVPS
//! account must poll independently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    stable_account, Exposition, Stack, StackSpec, SVPS_FULL, SVPS_FULL2, SVPS_READ,
};
use chrono::{DateTime, Months, TimeZone, Utc};
use vpswatch_model::clock::{Clock, ManualClock, SharedClock, SystemClock};
use vpswatch_model::vm::VmAction;
use vpswatch_providers::stablevps::builtin_plans;
use vpswatch_providers::ProviderError;
use vpswatch_sim::stablevps::{
    plan_price, AccountSpec, EndpointMatch, Fault, FaultKind, KeyScope, KeySpec, RelTime,
    StableScenario, VpsSpec, AUTH, VPS_ACTIONS, VPS_LIST, VPS_ONE, WALLET,
};

const T: Duration = Duration::from_secs(20);
const DAY: i64 = 86_400;

fn vm(id: &str) -> [(&'static str, &str); 1] {
    [("vm", id)]
}

fn svps() -> [(&'static str, &'static str); 2] {
    [("provider", "stablevps"), ("account", "svps")]
}

/// The request counter for one StableVPS endpoint and code.
fn requests(exp: &Exposition, endpoint: &str, code: &str) -> f64 {
    exp.get(
        "vpswatch_provider_requests_total",
        &[
            ("provider", "stablevps"),
            ("endpoint", endpoint),
            ("code", code),
        ],
    )
    .unwrap_or(0.0)
}

fn gauge(exp: &Exposition, name: &str) -> Option<f64> {
    exp.get(name, &svps())
}

fn unix(t: DateTime<Utc>) -> f64 {
    vpswatch_model::clock::unix_seconds(t)
}

fn labels_of(exp: &Exposition, name: &str, id: &str) -> HashMap<String, String> {
    exp.samples
        .iter()
        .find(|(n, l, _)| n == name && l.iter().any(|(k, v)| k == "vm" && v == id))
        .map(|(_, l, _)| l.iter().cloned().collect())
        .unwrap_or_default()
}

fn keys() -> Vec<KeySpec> {
    let key = |k: &str, scope, expires_at| KeySpec {
        key: k.into(),
        name: None,
        scope,
        expires_at,
    };
    vec![
        key(SVPS_FULL, KeyScope::Full, None),
        key(SVPS_READ, KeyScope::Read, Some(RelTime::Offset(10 * DAY))),
        key(SVPS_FULL2, KeyScope::Full, None),
    ]
}

fn vps(plan: &str, cycle: &str, status: &str, vps_status: &str, end_days: i64) -> VpsSpec {
    VpsSpec {
        plan_id: plan.into(),
        billing_cycle: cycle.into(),
        status: status.into(),
        vps_status: vps_status.into(),
        current_period_end: RelTime::Offset(end_days * DAY),
        listen_rdp: false,
        provisioning_for: Some(Duration::from_secs(3600)),
        ..VpsSpec::default()
    }
}

/// One account (100 EUR) with every kind of state, known and unknown.
fn world() -> StableScenario {
    StableScenario {
        accounts: vec![AccountSpec {
            balance: 100.0,
            keys: keys(),
            ..AccountSpec::default()
        }],
        vps: vec![
            vps("prime", "monthly", "active", "active", 5),
            vps("basic", "monthly", "active", "provisioning", 30),
            VpsSpec {
                location: "tokyo".into(),
                ..vps("pro", "yearly", "active", "stopped", 200)
            },
            vps("prime", "monthly", "suspended", "stopped", -2),
            vps("basic", "yearly", "active", "rebooting", 90),
            vps("prime", "monthly", "frozen", "active", 12),
        ],
        ..StableScenario::default()
    }
}

/// The `vps_state` label vpswatch must give a simulated VPS.
fn want_state(status: &str, vps_status: &str) -> String {
    match (status, vps_status) {
        ("suspended", _) => "suspended".into(),
        ("active" | "provisioning", "active") => "running".into(),
        ("active" | "provisioning", "provisioning") => "creating".into(),
        ("active" | "provisioning", "stopped") => "stopped".into(),
        ("active" | "provisioning", other) => other.into(),
        (other, _) => other.into(),
    }
}

async fn stack(scenario: StableScenario, account_extra: &str, clock: SharedClock) -> Stack {
    Stack::start(StackSpec {
        lnvps: None,
        stablevps: Some(scenario),
        accounts: stable_account(account_extra),
        globals: String::new(),
        clock,
    })
    .await
}

async fn first_poll(s: &Stack) -> Exposition {
    s.wait_metrics("first StableVPS poll", T, |e| {
        gauge(e, "vpswatch_provider_up") == Some(1.0) && gauge(e, "vps_wallet_balance").is_some()
    })
    .await
}

/// Every simulated VPS appears in /metrics exactly as the simulator holds it.
fn assert_equal_to_sim(exp: &Exposition, s: &Stack) {
    let plans = builtin_plans();
    let live: Vec<_> = s
        .svps()
        .vpses()
        .into_iter()
        .filter(|v| !v.deleted)
        .collect();
    assert_eq!(exp.count("vps_info"), live.len(), "{}", exp.text);
    for v in &live {
        let id = v.id.as_str();
        let l = vm(id);
        let info = labels_of(exp, "vps_info", id);
        assert_eq!(info.get("plan"), Some(&v.plan_id), "plan of {id}");
        assert_eq!(info.get("location"), Some(&v.location), "location of {id}");
        assert_eq!(info.get("ipv4"), Some(&v.ip_address.to_string()));
        assert_eq!(info.get("name"), Some(&v.server_id), "name of {id}");
        assert_eq!(
            info.get("image").map(String::as_str),
            Some("Windows Server 2022")
        );
        let state = want_state(&v.status, &v.vps_status);
        assert_eq!(
            exp.get("vps_state", &[("vm", id), ("state", &state)]),
            Some(1.0),
            "state of {id} ({}/{})",
            v.status,
            v.vps_status
        );
        let ones = exp
            .samples
            .iter()
            .filter(|(n, l, val)| {
                n == "vps_state" && *val == 1.0 && l.iter().any(|(k, x)| k == "vm" && x == id)
            })
            .count();
        assert_eq!(ones, 1, "exactly one current state for {id}");
        let up = if state == "running" { 1.0 } else { 0.0 };
        assert_eq!(exp.get("vps_up", &l), Some(up), "vps_up of {id}");
        assert_eq!(
            exp.get("vps_expiry_timestamp_seconds", &l),
            Some(unix(v.current_period_end)),
            "expiry of {id}"
        );
        let price = plan_price(&v.plan_id, &v.billing_cycle).expect("known plan");
        assert_eq!(
            exp.get("vps_renewal_price", &[("vm", id), ("currency", "EUR")]),
            Some(price),
            "price of {id}"
        );
        let months = if v.billing_cycle == "yearly" { 12 } else { 1 };
        let next = v
            .current_period_end
            .checked_add_months(Months::new(months))
            .expect("next period");
        assert_eq!(
            exp.get("vps_renewal_period_seconds", &l),
            Some((next - v.current_period_end).num_milliseconds() as f64 / 1000.0),
            "period of {id}"
        );
        let plan = &plans[&v.plan_id];
        assert_eq!(exp.get("vps_cpus", &l), plan.cpus);
        assert_eq!(exp.get("vps_memory_bytes", &l), plan.memory_bytes);
        assert_eq!(exp.get("vps_disk_bytes", &l), plan.disk_bytes);
        // StableVPS reports state live: observed at the poll, never "0 = never".
        assert!(exp.get("vps_status_timestamp_seconds", &l).unwrap_or(0.0) > 0.0);
    }
    let balance = s.svps().balance("0").expect("account 0");
    assert_eq!(
        exp.get(
            "vps_wallet_balance",
            &[("provider", "stablevps"), ("currency", "EUR")]
        ),
        Some(balance)
    );
}

#[tokio::test]
async fn metrics_equal_and_follow_the_simulator_with_both_header_styles() {
    for style in ["bearer", "x-api-key"] {
        let s = stack(
            world(),
            &format!("api_key_env = \"SVPS_FULL\"\nauth_header = \"{style}\""),
            Arc::new(SystemClock),
        )
        .await;
        let exp = first_poll(&s).await;
        assert_equal_to_sim(&exp, &s);
        assert_eq!(gauge(&exp, "vps_actions_enabled"), Some(1.0), "full key");
        assert!(gauge(&exp, "vps_wallet_runway_seconds").is_some());
        // The full key never expires: no expiry series.
        assert_eq!(gauge(&exp, "vps_api_key_expiry_timestamp_seconds"), None);

        // Every request carried the configured key in the configured header, and the
        // list had everything: no per-VPS call, no /account.
        let log = s.svps().requests();
        assert!(!log.is_empty());
        for r in &log {
            assert_eq!(r.auth_style, Some(style), "{r:?}");
            assert_eq!(r.key_prefix.as_deref(), Some(&SVPS_FULL[..14]), "{r:?}");
            assert_eq!(r.status, 200, "{r:?}");
            assert!(
                [VPS_LIST, WALLET, AUTH].contains(&r.endpoint.as_str()),
                "unexpected request {r:?}"
            );
        }

        // The world changes: provisioning finishes, a machine stops, one gets an
        // unknown status, one is deleted, the wallet is topped up.
        let ids: Vec<String> = s.svps().vpses().into_iter().map(|v| v.id).collect();
        let past = s.svps().now() - chrono::Duration::seconds(1);
        s.svps()
            .update_vps(&ids[1], |v| v.provisioning_until = Some(past));
        s.svps()
            .update_vps(&ids[0], |v| v.vps_status = "stopped".into());
        s.svps()
            .update_vps(&ids[2], |v| v.vps_status = "error".into());
        s.svps().remove_vps(&ids[5]);
        s.svps().set_balance("0", 250.5);
        let exp = s
            .wait_metrics("metrics follow the simulator", T, |e| {
                e.get("vps_state", &[("vm", &ids[1]), ("state", "running")]) == Some(1.0)
                    && e.get("vps_state", &[("vm", &ids[0]), ("state", "stopped")]) == Some(1.0)
                    && e.get("vps_state", &[("vm", &ids[2]), ("state", "error")]) == Some(1.0)
                    && !e.has("vps_info", &vm(&ids[5]))
                    && gauge(e, "vps_wallet_balance") == Some(250.5)
            })
            .await;
        assert_equal_to_sim(&exp, &s);
        s.shutdown().await;
    }
}

#[tokio::test]
async fn per_vps_call_only_for_entries_lacking_fields() {
    let s = stack(
        world(),
        "api_key_env = \"SVPS_READ\"",
        Arc::new(SystemClock),
    )
    .await;
    let ids: Vec<String> = s.svps().vpses().into_iter().map(|v| v.id).collect();
    s.svps()
        .update_vps(&ids[0], |v| v.list_omits = vec!["ipAddress".into()]);
    s.svps().clear_requests();
    let exp = s
        .wait_metrics("a poll with the completed entry", T, |e| {
            // Request counters show when the request is made, before its poll publishes:
            // the poll is done once it has published the account up.
            requests(e, "GET /api/v1/vps/{id}", "200") >= 1.0
                && e.get("vpswatch_provider_consecutive_failures", &[]) == Some(0.0)
                && gauge(e, "vpswatch_provider_up") == Some(1.0)
        })
        .await;
    assert_equal_to_sim(&exp, &s);
    let details: Vec<_> = s
        .svps()
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == VPS_ONE)
        .collect();
    assert!(!details.is_empty());
    assert!(
        details.iter().all(|r| r.vps_id.as_deref() == Some(&ids[0])),
        "only the incomplete entry is fetched: {details:?}"
    );
    s.shutdown().await;
}

/// 2026-05-11 09:00 UTC, the simulator's and the daemon's "now".
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 11, 9, 0, 0)
        .single()
        .expect("valid time")
}

#[tokio::test]
async fn wallet_runway_is_exact_through_metrics() {
    let clock = Arc::new(ManualClock::new(t0()));
    let scenario = StableScenario {
        accounts: vec![AccountSpec {
            balance: 50.0,
            keys: keys(),
            ..AccountSpec::default()
        }],
        vps: vec![
            vps("prime", "monthly", "active", "active", 5), // May 16, Jun 16, …
            vps("basic", "monthly", "active", "active", 20), // May 31, Jun 30, …
            vps("pro", "yearly", "suspended", "stopped", 3), // ended: not renewing
            vps("basic", "monthly", "active", "provisioning", 30), // Jun 10, Jul 10, …
        ],
        ..StableScenario::default()
    };
    // Read key polls, the full key is only for writes: expiry is the read key's.
    let s = stack(
        scenario,
        "api_key_env = \"SVPS_READ\"\nwrite_api_key_env = \"SVPS_FULL\"",
        clock.clone(),
    )
    .await;
    // 50 EUR: May 16 prime (30.51 left), May 31 basic (18.02), Jun 10 basic (5.53),
    // Jun 16 prime (19.49) cannot be paid: 36 days.
    let exp = s
        .wait_metrics("runway at t0", T, |e| {
            gauge(e, "vps_wallet_runway_seconds").is_some()
        })
        .await;
    assert_eq!(
        gauge(&exp, "vps_wallet_runway_seconds"),
        Some((36 * DAY) as f64)
    );
    assert_eq!(
        gauge(&exp, "vps_api_key_expiry_timestamp_seconds"),
        Some(unix(t0() + chrono::Duration::days(10)))
    );
    assert_eq!(gauge(&exp, "vps_actions_enabled"), Some(1.0));

    // Five days and an hour later the simulator has charged the prime renewal.
    clock.set(t0() + chrono::Duration::days(5) + chrono::Duration::hours(1));
    let exp = s
        .wait_metrics("runway after the first renewal", T, |e| {
            gauge(e, "vps_wallet_balance") == Some(30.51)
        })
        .await;
    assert_eq!(
        gauge(&exp, "vps_wallet_runway_seconds"),
        Some((31 * DAY - 3600) as f64)
    );

    // An empty wallet: the next renewal (basic, May 31 09:00) is the first unpaid one.
    s.svps().set_balance("0", 0.0);
    s.wait_metrics("runway of an empty wallet", T, |e| {
        gauge(e, "vps_wallet_runway_seconds") == Some((15 * DAY - 3600) as f64)
    })
    .await;

    // Nothing renews any more: the runway is absent, the balance is still there.
    for v in s.svps().vpses() {
        s.svps()
            .update_vps(&v.id, |v| v.status = "cancelled".into());
    }
    let exp = s
        .wait_metrics("no runway without renewals", T, |e| {
            gauge(e, "vps_wallet_runway_seconds").is_none()
                && e.get("vps_state", &[("state", "cancelled")]) == Some(1.0)
        })
        .await;
    assert_eq!(gauge(&exp, "vps_wallet_balance"), Some(0.0));
    s.shutdown().await;
}

#[tokio::test]
async fn read_only_key_polls_but_never_writes() {
    let s = stack(
        world(),
        "api_key_env = \"SVPS_READ\"",
        Arc::new(SystemClock),
    )
    .await;
    let exp = s
        .wait_metrics("scope learned", T, |e| {
            gauge(e, "vps_actions_enabled") == Some(0.0)
                && gauge(e, "vpswatch_provider_up") == Some(1.0)
        })
        .await;
    assert_equal_to_sim(&exp, &s);
    // The read key expires in ten days.
    assert!(gauge(&exp, "vps_api_key_expiry_timestamp_seconds").is_some());
    let provider = s.daemon.providers[0].clone();
    assert!(!provider.actions_enabled());
    let id = s.svps().vpses()[0].id.clone();
    for action in [VmAction::Reboot, VmAction::Start, VmAction::Stop] {
        match provider.act(&id, action).await {
            Err(ProviderError::NotSent { reason, .. }) => {
                assert!(reason.contains("read"), "{reason}")
            }
            other => panic!("{action:?} must be refused locally, got {other:?}"),
        }
    }
    assert!(s.svps().actions().is_empty(), "{:?}", s.svps().actions());
    assert!(
        s.svps().requests().iter().all(|r| r.method == "GET"),
        "a write reached the provider"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_403_on_a_write_disables_actions_and_is_not_retried() {
    // Without key metadata (GET /api/v1/auth failing from the start) the scope is
    // unknown, so actions stay enabled until a write says otherwise.
    let mut scenario = world();
    scenario.faults.push(Fault::new(
        EndpointMatch::template(AUTH),
        FaultKind::Status(500),
    ));
    let s = stack(
        scenario,
        "api_key_env = \"SVPS_READ\"",
        Arc::new(SystemClock),
    )
    .await;
    s.wait_metrics("polled without key metadata", T, |e| {
        gauge(e, "vps_actions_enabled") == Some(1.0)
            && requests(e, "GET /api/v1/auth", "500") >= 1.0
            && gauge(e, "vpswatch_provider_up") == Some(1.0)
    })
    .await;
    let provider = s.daemon.providers[0].clone();
    let id = s.svps().vpses()[0].id.clone();
    match provider.act(&id, VmAction::Reboot).await {
        Err(ProviderError::Http { status: 403, .. }) => {}
        other => panic!("expected the simulator's 403, got {other:?}"),
    }
    assert!(!provider.actions_enabled(), "disabled at once");
    let posts = |s: &Stack| {
        s.svps()
            .requests()
            .into_iter()
            .filter(|r| r.endpoint == VPS_ACTIONS)
            .count()
    };
    assert_eq!(posts(&s), 1, "sent once, not retried");
    // The next write is refused without being sent.
    assert!(matches!(
        provider.act(&id, VmAction::Start).await,
        Err(ProviderError::NotSent { .. })
    ));
    assert_eq!(posts(&s), 1);
    let exp = s
        .wait_metrics("the metric follows", T, |e| {
            gauge(e, "vps_actions_enabled") == Some(0.0)
        })
        .await;
    assert_eq!(requests(&exp, "POST /api/v1/vps/{id}/actions", "403"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn separate_write_key_acts_and_the_read_key_polls() {
    let s = stack(
        world(),
        "api_key_env = \"SVPS_READ\"\nwrite_api_key_env = \"SVPS_FULL2\"\nauth_header = \"x-api-key\"",
        Arc::new(SystemClock),
    )
    .await;
    s.wait_metrics("write key known to be full", T, |e| {
        gauge(e, "vps_actions_enabled") == Some(1.0) && gauge(e, "vps_wallet_balance").is_some()
    })
    .await;
    let provider = s.daemon.providers[0].clone();
    let id = s.svps().vpses()[0].id.clone();
    provider
        .act(&id, VmAction::Stop)
        .await
        .expect("the full key may stop the VPS");
    let actions = s.svps().actions();
    assert_eq!(actions.len(), 1);
    assert_eq!(
        (actions[0].action.as_str(), actions[0].status),
        ("stop", 200)
    );
    for r in s.svps().requests() {
        let want = if r.method == "GET" {
            &SVPS_READ[..14]
        } else {
            &SVPS_FULL2[..14]
        };
        assert_eq!(r.key_prefix.as_deref(), Some(want), "{r:?}");
        assert_eq!(r.auth_style, Some("x-api-key"));
    }
    s.wait_metrics("the stop shows", T, |e| {
        e.get("vps_state", &[("vm", &id), ("state", "stopped")]) == Some(1.0)
    })
    .await;
    // A refused write (a provisioning VPS: 409 in the simulator) is an error, not
    // retried, and does not disable actions.
    let provisioning = s.svps().vpses()[1].id.clone();
    match provider.act(&provisioning, VmAction::Reboot).await {
        Err(ProviderError::Http { status: 409, .. }) => {}
        other => panic!("expected 409, got {other:?}"),
    }
    assert!(provider.actions_enabled());
    assert_eq!(s.svps().actions().len(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn faults_keep_last_good_values_then_recover() {
    // A manual clock: the runway of a poll is exact, and time passes only when told.
    let clock = Arc::new(ManualClock::new(t0()));
    let s = stack(world(), "api_key_env = \"SVPS_FULL\"", clock.clone()).await;
    let first = first_poll(&s).await;
    let running = s.svps().vpses()[0].id.clone();
    let balance = gauge(&first, "vps_wallet_balance");
    // 100 EUR: +5d prime (80.51), +12d prime of the unknown-status VPS, which counts
    // (61.02), +30d basic (48.53), +36d prime (29.04), +43d prime (9.55); the basic
    // renewal at +60d (Jul 10) is the first the wallet cannot pay.
    let runway_at =
        |now: DateTime<Utc>| ((t0() + chrono::Duration::days(60)) - now).num_seconds() as f64;
    assert_eq!(
        gauge(&first, "vps_wallet_runway_seconds"),
        Some(runway_at(t0()))
    );
    let cases: Vec<(FaultKind, &str)> = vec![
        (FaultKind::Status(500), "500"),
        (FaultKind::Status(502), "502"),
        (FaultKind::Status(503), "503"),
        (
            FaultKind::RateLimited {
                retry_after_secs: 1,
            },
            "429",
        ),
        (FaultKind::MalformedJson, "invalid_response"),
        (FaultKind::TruncatedBody, "invalid_response"),
        (FaultKind::WrongContentType, "invalid_response"),
        (FaultKind::Unauthorized, "401"),
        (FaultKind::Hang, "timeout"),
        (FaultKind::Latency(Duration::from_secs(3)), "timeout"),
    ];
    for (kind, code) in cases {
        let good_at = clock.now();
        let before = Exposition::parse(&s.metrics().await);
        let count_before = requests(&before, "GET /api/v1/vps", code);
        s.svps()
            .inject_fault(Fault::new(EndpointMatch::template(VPS_LIST), kind.clone()));
        s.wait_metrics(&format!("{kind:?} makes the provider down"), T, |e| {
            gauge(e, "vpswatch_provider_up") == Some(0.0)
                && requests(e, "GET /api/v1/vps", code) > count_before
        })
        .await;
        // Time passes during the outage; the fault stays, so no poll can succeed.
        clock.advance(chrono::Duration::seconds(10));
        let exp = Exposition::parse(&s.metrics().await);
        // The last good values are still served, unchanged, with the age visible.
        assert_eq!(gauge(&exp, "vpswatch_provider_up"), Some(0.0), "{kind:?}");
        assert!(
            gauge(&exp, "vpswatch_provider_consecutive_failures").unwrap_or(0.0) >= 1.0,
            "{kind:?}"
        );
        assert_eq!(exp.get("vps_up", &vm(&running)), Some(1.0), "{kind:?}");
        assert_eq!(gauge(&exp, "vps_wallet_balance"), balance, "{kind:?}");
        assert_eq!(
            gauge(&exp, "vps_wallet_runway_seconds"),
            Some(runway_at(good_at)),
            "{kind:?}"
        );
        let last_ok =
            gauge(&exp, "vpswatch_provider_last_success_timestamp_seconds").expect("last success");
        assert_eq!(last_ok, unix(good_at), "{kind:?}");
        assert!(unix(clock.now()) - last_ok >= 10.0, "staleness visible");
        s.svps().clear_faults();
        let exp = s
            .wait_metrics(&format!("recovery after {kind:?}"), T, |e| {
                gauge(e, "vpswatch_provider_up") == Some(1.0)
                    && gauge(e, "vpswatch_provider_last_success_timestamp_seconds")
                        == Some(unix(clock.now()))
            })
            .await;
        assert_eq!(
            gauge(&exp, "vps_wallet_runway_seconds"),
            Some(runway_at(clock.now())),
            "{kind:?}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn expired_key_is_a_visible_401_and_its_expiry_is_exported() {
    let s = stack(
        world(),
        "api_key_env = \"SVPS_FULL\"",
        Arc::new(SystemClock),
    )
    .await;
    first_poll(&s).await;
    let soon = DateTime::from_timestamp(s.svps().now().timestamp() + 3600, 0).expect("time");
    s.svps().set_key_expiry(SVPS_FULL, Some(soon));
    s.wait_metrics("the expiry is exported", T, |e| {
        gauge(e, "vps_api_key_expiry_timestamp_seconds") == Some(unix(soon))
    })
    .await;
    let before = requests(
        &Exposition::parse(&s.metrics().await),
        "GET /api/v1/vps",
        "401",
    );
    let past = s.svps().now() - chrono::Duration::seconds(1);
    s.svps().set_key_expiry(SVPS_FULL, Some(past));
    let exp = s
        .wait_metrics("the expired key is refused", T, |e| {
            gauge(e, "vpswatch_provider_up") == Some(0.0)
                && requests(e, "GET /api/v1/vps", "401") > before
        })
        .await;
    // The last known expiry (now in the past for the real key) stays visible.
    assert_eq!(
        gauge(&exp, "vps_api_key_expiry_timestamp_seconds"),
        Some(unix(soon))
    );
    assert!(exp.count("vps_info") > 0);
    s.svps().set_key_expiry(SVPS_FULL, None);
    s.wait_metrics("a renewed key recovers", T, |e| {
        gauge(e, "vpswatch_provider_up") == Some(1.0)
            && gauge(e, "vps_api_key_expiry_timestamp_seconds").is_none()
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn partial_failures_keep_the_account_up() {
    let s = stack(
        world(),
        "api_key_env = \"SVPS_FULL\"",
        Arc::new(SystemClock),
    )
    .await;
    let first = first_poll(&s).await;
    let balance = gauge(&first, "vps_wallet_balance");
    // The wallet endpoint fails: the balance comes from /account instead.
    s.svps().inject_fault(Fault::new(
        EndpointMatch::template(WALLET),
        FaultKind::Status(500),
    ));
    let exp = s
        .wait_metrics("wallet from /account", T, |e| {
            requests(e, "GET /api/v1/account", "200") >= 1.0
                && requests(e, "GET /api/v1/wallet", "500") >= 1.0
        })
        .await;
    assert_eq!(gauge(&exp, "vpswatch_provider_up"), Some(1.0));
    assert_eq!(gauge(&exp, "vps_wallet_balance"), balance);
    assert!(gauge(&exp, "vps_wallet_runway_seconds").is_some());
    // A failing per-VPS call leaves that VPS as the list had it.
    s.svps().clear_faults();
    let id = s.svps().vpses()[0].id.clone();
    s.svps()
        .update_vps(&id, |v| v.list_omits = vec!["ipAddress".into()]);
    s.svps().inject_fault(Fault::new(
        EndpointMatch::template(VPS_ONE),
        FaultKind::Status(502),
    ));
    let exp = s
        .wait_metrics("detail failure tolerated", T, |e| {
            requests(e, "GET /api/v1/vps/{id}", "502") >= 1.0
                && labels_of(e, "vps_info", &id)
                    .get("ipv4")
                    .map(String::as_str)
                    == Some("")
        })
        .await;
    // The VPS is still exported as the list had it, and the account is up.
    assert_eq!(gauge(&exp, "vpswatch_provider_up"), Some(1.0));
    assert_eq!(
        gauge(&exp, "vpswatch_provider_consecutive_failures"),
        Some(0.0)
    );
    assert_eq!(exp.get("vps_up", &vm(&id)), Some(1.0));
    s.shutdown().await;
}

#[tokio::test]
async fn rdp_probes_follow_the_machine() {
    // Its own loopback address on the real RDP port: the default probe port of
    // StableVPS accounts, and no other test listens there.
    let scenario = StableScenario {
        accounts: vec![AccountSpec {
            keys: keys(),
            ..AccountSpec::default()
        }],
        vps: vec![VpsSpec {
            ip_address: Some("127.3.8.1".parse().expect("ip")),
            rdp_port: Some(3389),
            listen_rdp: true,
            ..VpsSpec::default()
        }],
        ..StableScenario::default()
    };
    let s = Stack::start(StackSpec {
        lnvps: None,
        stablevps: Some(scenario),
        accounts: stable_account("api_key_env = \"SVPS_FULL\""),
        globals: "[probes]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n".into(),
        clock: Arc::new(SystemClock),
    })
    .await;
    let id = s.svps().vpses()[0].id.clone();
    let want = [("vm", id.as_str()), ("port", "3389")];
    s.wait_metrics("probe succeeds", T, |e| {
        e.get("vps_probe_success", &want) == Some(1.0)
    })
    .await;
    // Hung: still "active" at the provider, but RDP no longer answers.
    s.svps().update_vps(&id, |v| v.hang = true);
    let exp = s
        .wait_metrics("probe fails", T, |e| {
            e.get("vps_probe_success", &want) == Some(0.0)
        })
        .await;
    assert_eq!(exp.get("vps_up", &vm(&id)), Some(1.0));
    // Deliberately stopped: not probed at all.
    s.svps()
        .update_vps(&id, |v| v.vps_status = "stopped".into());
    s.wait_metrics("stopped VPS not probed", T, |e| {
        !e.has("vps_probe_success", &vm(&id)) && e.get("vps_up", &vm(&id)) == Some(0.0)
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn lnvps_and_stablevps_accounts_poll_independently() {
    let accounts = format!(
        "[[accounts]]\nname = \"ln\"\nprovider = \"lnvps\"\nbase_url = \"{{lnvps_url}}\"\nnsec_env = \"TEST_NSEC\"\n\n{}",
        stable_account("api_key_env = \"SVPS_FULL\"")
    );
    let s = Stack::start(StackSpec {
        lnvps: Some(Box::new(vpswatch_sim::lnvps::Scenario::demo)),
        stablevps: Some(world()),
        accounts,
        globals: String::new(),
        clock: Arc::new(SystemClock),
    })
    .await;
    let ln = [("provider", "lnvps"), ("account", "ln")];
    let ln_list = |e: &Exposition| {
        e.get(
            "vpswatch_provider_requests_total",
            &[
                ("provider", "lnvps"),
                ("endpoint", "GET /api/v1/vm"),
                ("code", "200"),
            ],
        )
        .unwrap_or(0.0)
    };
    let sv_list = |e: &Exposition| requests(e, "GET /api/v1/vps", "200");
    let exp = s
        .wait_metrics("both accounts up", T, |e| {
            e.get("vpswatch_provider_up", &ln) == Some(1.0)
                && gauge(e, "vpswatch_provider_up") == Some(1.0)
        })
        .await;
    assert!(exp.has("vps_info", &[("provider", "lnvps")]));
    assert!(exp.has("vps_info", &[("provider", "stablevps")]));
    // Account-level series belong to their own account only.
    assert!(exp.has("vps_wallet_balance", &svps()));
    assert!(!exp.has("vps_wallet_balance", &ln));
    assert_eq!(exp.get("vps_actions_enabled", &ln), Some(1.0));

    // StableVPS hangs: LNVPS keeps polling on schedule.
    s.svps().inject_fault(Fault::new(
        EndpointMatch::template(VPS_LIST),
        FaultKind::Hang,
    ));
    let exp = s
        .wait_metrics("stablevps down", T, |e| {
            gauge(e, "vpswatch_provider_up") == Some(0.0)
        })
        .await;
    let ln_before = ln_list(&exp);
    let exp = s
        .wait_metrics("lnvps keeps polling meanwhile", T, |e| {
            ln_list(e) >= ln_before + 3.0
        })
        .await;
    assert_eq!(exp.get("vpswatch_provider_up", &ln), Some(1.0));
    assert_eq!(gauge(&exp, "vpswatch_provider_up"), Some(0.0));
    s.svps().clear_faults();

    // And the other way round.
    let lnvps = s.lnvps.as_ref().expect("lnvps sim");
    lnvps.inject_fault(vpswatch_sim::lnvps::Fault::new(
        vpswatch_sim::lnvps::EndpointMatch::template("/api/v1/vm"),
        vpswatch_sim::lnvps::FaultKind::Hang,
    ));
    let exp = s
        .wait_metrics("lnvps down", T, |e| {
            e.get("vpswatch_provider_up", &ln) == Some(0.0)
                && gauge(e, "vpswatch_provider_up") == Some(1.0)
        })
        .await;
    let sv_before = sv_list(&exp);
    let exp = s
        .wait_metrics("stablevps keeps polling meanwhile", T, |e| {
            sv_list(e) >= sv_before + 3.0
        })
        .await;
    assert_eq!(exp.get("vpswatch_provider_up", &ln), Some(0.0));
    lnvps.clear_faults();
    s.wait_metrics("both up again", T, |e| {
        e.get("vpswatch_provider_up", &ln) == Some(1.0)
            && gauge(e, "vpswatch_provider_up") == Some(1.0)
    })
    .await;
    s.shutdown().await;
}
