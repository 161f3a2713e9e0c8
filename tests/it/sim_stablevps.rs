//! The StableVPS simulator over real HTTP on loopback: response shapes of every
//! endpoint (as on the provider's API page), both auth header styles, 401/403/404,
//! actions and the real RDP listeners, wallet renewals and suspension, unknown status
//! values, every fault kind, and the watchdog's steps (crash, hang, dead machines,
//! power-cycle-only machines, failing actions, blackout, boot time) over HTTP, on the
//! real RDP ports, from the timeline and through the `/_sim/` control API.
//!
//! The simulator runs on a `ManualClock`, so renewals are exact; waiting for a
//! condition is always polling with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use vpswatch_model::clock::{ManualClock, SharedClock};
use vpswatch_sim::stablevps::{
    fault_key, AccountSpec, ActionFailure, BlackoutLength, EndpointMatch, Fault, FaultKind,
    KeyScope, KeySpec, PowerAction, RelTime, StableScenario, StableTimelineEvent, StableVpsSim,
    StableVpsSimHandle, VpsSpec, VPS_ACTIONS, VPS_LIST, VPS_ONE, WALLET,
};

const KEY_A: &str = "svps_live_aaaa0000000000000000000000000001";
const KEY_A_READ: &str = "svps_live_aaaa0000000000000000000000000002";
const KEY_A_EXPIRED: &str = "svps_live_aaaa0000000000000000000000000003";
const KEY_B: &str = "svps_live_bbbb0000000000000000000000000001";
const DAY: i64 = 86_400;

// ---- harness ------------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 11, 9, 0, 0)
        .single()
        .expect("valid time")
}

/// Account 0 (50 EUR; full, read and expired keys) with one active prime VPS renewing
/// in 5 days and one provisioning basic VPS; account 1 with one VPS.
fn scenario() -> StableScenario {
    let key = |key: &str, scope, expires_at| KeySpec {
        key: key.into(),
        name: None,
        scope,
        expires_at,
    };
    StableScenario {
        accounts: vec![
            AccountSpec {
                balance: 50.0,
                keys: vec![
                    key(KEY_A, KeyScope::Full, None),
                    key(KEY_A_READ, KeyScope::Read, Some(RelTime::Offset(10 * DAY))),
                    key(KEY_A_EXPIRED, KeyScope::Full, Some(RelTime::Offset(-3600))),
                ],
                ..AccountSpec::default()
            },
            AccountSpec {
                balance: 10.0,
                first_name: "Eve".into(),
                keys: vec![key(KEY_B, KeyScope::Full, None)],
                ..AccountSpec::default()
            },
        ],
        vps: vec![
            VpsSpec {
                current_period_end: RelTime::Offset(5 * DAY),
                ..VpsSpec::default()
            },
            VpsSpec {
                plan_id: "basic".into(),
                vps_status: "provisioning".into(),
                location: "london".into(),
                ..VpsSpec::default()
            },
            VpsSpec {
                account: "1".into(),
                listen_rdp: false,
                ..VpsSpec::default()
            },
        ],
        provisioning_delay: Duration::from_secs(600),
        ..StableScenario::default()
    }
}

struct TestSim {
    sim: StableVpsSimHandle,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    /// Service ids: [account 0 active, account 0 provisioning, account 1].
    ids: Vec<String>,
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Bearer(&'a str),
    Header(&'a str),
    Nothing,
}

struct Resp {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn start(scenario: StableScenario) -> TestSim {
    vpswatch::tls::install_crypto_provider();
    let clock = Arc::new(ManualClock::new(t0()));
    let shared: SharedClock = clock.clone();
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sim = StableVpsSim::start(listen, scenario, shared)
        .await
        .expect("simulator starts");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let ids = sim.vpses().into_iter().map(|v| v.id).collect();
    TestSim {
        sim,
        clock,
        http,
        ids,
    }
}

impl TestSim {
    async fn call(&self, method: &str, path: &str, auth: Auth<'_>, body: Option<Value>) -> Resp {
        let url = format!("{}{}", self.sim.base_url(), path);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, url);
        req = match auth {
            Auth::Bearer(k) => req.bearer_auth(k),
            Auth::Header(k) => req.header("X-API-Key", k),
            Auth::Nothing => req,
        };
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.expect("body");
        Resp {
            status,
            content_type,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, key: &str) -> Resp {
        self.call("GET", path, Auth::Bearer(key), None).await
    }

    async fn action(&self, id: &str, key: &str, action: &str) -> Resp {
        let path = format!("/api/v1/vps/{id}/actions");
        self.call(
            "POST",
            &path,
            Auth::Bearer(key),
            Some(json!({ "action": action })),
        )
        .await
    }
}

fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn is_ms_utc(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 24 && s.ends_with('Z') && s.as_bytes().get(19) == Some(&b'.')
}

async fn rdp_open(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Polls until the RDP port's reachability is `want`, or fails after 5 s.
async fn wait_rdp(addr: SocketAddr, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while rdp_open(addr).await != want {
        assert!(
            Instant::now() < deadline,
            "RDP at {addr} never became {}",
            if want { "open" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SUMMARY: [&str; 11] = [
    "id",
    "planId",
    "billingCycle",
    "status",
    "vpsStatus",
    "ipAddress",
    "location",
    "rdpUsername",
    "serverId",
    "currentPeriodEnd",
    "createdAt",
];

// ---- shapes -------------------------------------------------------------------------

#[tokio::test]
async fn list_and_get_shapes() {
    let t = start(scenario()).await;
    let r = t.get(VPS_LIST, KEY_A).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"));
    let j = r.json();
    assert_eq!(keys_of(&j), sorted(&["vps", "total"]));
    assert_eq!(j["total"], 2);
    let first = &j["vps"][0];
    assert_eq!(keys_of(first), sorted(&SUMMARY));
    assert_eq!(first["id"], t.ids[0].as_str());
    assert_eq!(first["id"].as_str().map(str::len), Some(24));
    assert_eq!(first["planId"], "prime");
    assert_eq!(first["rdpUsername"], "Administrator");
    assert!(is_ms_utc(&first["currentPeriodEnd"]), "{first}");
    assert_eq!(first["currentPeriodEnd"], "2026-05-16T09:00:00.000Z");
    assert!(first["ipAddress"]
        .as_str()
        .expect("ip")
        .starts_with("127.2."));
    assert_eq!(j["vps"][1]["vpsStatus"], "provisioning");

    let r = t.get(&format!("/api/v1/vps/{}", t.ids[0]), KEY_A).await;
    assert_eq!(r.status, 200);
    let one = r.json();
    let mut detail: Vec<&str> = SUMMARY.to_vec();
    detail.extend(["hostname", "rdpPassword", "currentPeriodStart"]);
    assert_eq!(keys_of(&one), sorted(&detail));
    assert_eq!(one["currentPeriodStart"], "2026-04-16T09:00:00.000Z");
    let password = one["rdpPassword"].as_str().expect("password");
    assert!(password.len() >= 12);
    // rdpPassword only on GET /vps/:id, and different per VPS.
    assert!(!t.get(VPS_LIST, KEY_A).await.body.contains(password));
    let other = t
        .get(&format!("/api/v1/vps/{}", t.ids[1]), KEY_A)
        .await
        .json();
    assert_ne!(other["rdpPassword"], one["rdpPassword"]);
}

#[tokio::test]
async fn account_wallet_and_keys_shapes() {
    let t = start(scenario()).await;
    let a = t.get("/api/v1/account", KEY_A).await.json();
    assert_eq!(
        keys_of(&a),
        sorted(&[
            "id",
            "firstName",
            "lastName",
            "email",
            "role",
            "balance",
            "currency",
            "referralCode",
            "affiliateStats",
            "activeVpsCount",
            "totalVpsCount",
            "createdAt"
        ])
    );
    assert_eq!(a["balance"], 50.0);
    assert_eq!(a["currency"], "EUR");
    assert_eq!(a["activeVpsCount"], 2);
    assert_eq!(a["totalVpsCount"], 2);
    assert!(a["affiliateStats"].is_object());

    let w = t.get(WALLET, KEY_A).await.json();
    assert_eq!(w, json!({ "balance": 50.0, "currency": "EUR" }));

    let k = t.get("/api/v1/auth", KEY_A_READ).await.json();
    let keys = k["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 3);
    assert_eq!(
        keys_of(&keys[0]),
        sorted(&[
            "_id",
            "name",
            "keyPrefix",
            "scope",
            "lastUsedAt",
            "expiresAt",
            "createdAt"
        ])
    );
    assert_eq!(keys[1]["keyPrefix"], &KEY_A_READ[..14]);
    assert_eq!(keys[1]["scope"], "read");
    assert!(is_ms_utc(&keys[1]["expiresAt"]));
    assert!(
        is_ms_utc(&keys[1]["lastUsedAt"]),
        "the key in use is marked used"
    );
    assert_eq!(keys[0]["expiresAt"], Value::Null);
    assert!(!k.to_string().contains(KEY_A), "raw keys never listed");
}

// ---- auth ---------------------------------------------------------------------------

#[tokio::test]
async fn auth_headers_and_rejections() {
    let t = start(scenario()).await;
    assert_eq!(
        t.call("GET", WALLET, Auth::Bearer(KEY_A), None)
            .await
            .status,
        200
    );
    assert_eq!(
        t.call("GET", WALLET, Auth::Header(KEY_A), None)
            .await
            .status,
        200
    );
    for auth in [
        Auth::Nothing,
        Auth::Bearer("svps_live_ffff"),
        Auth::Header("nonsense"),
        Auth::Bearer(KEY_A_EXPIRED),
    ] {
        let r = t.call("GET", WALLET, auth, None).await;
        assert_eq!(r.status, 401);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    // A read key reads but cannot act or delete.
    assert_eq!(t.get(VPS_LIST, KEY_A_READ).await.status, 200);
    let r = t.action(&t.ids[0], KEY_A_READ, "reboot").await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].is_string());
    let path = format!("/api/v1/vps/{}", t.ids[0]);
    let r = t
        .call("DELETE", &path, Auth::Header(KEY_A_READ), None)
        .await;
    assert_eq!(r.status, 403);
    assert!(t.sim.actions().is_empty(), "refused writes are not actions");
    // The read key expires after 10 days.
    t.clock.advance(chrono::Duration::days(11));
    assert_eq!(t.get(WALLET, KEY_A_READ).await.status, 401);
}

#[tokio::test]
async fn another_accounts_vps_is_not_found() {
    let t = start(scenario()).await;
    let theirs = &t.ids[2];
    let r = t.get(&format!("/api/v1/vps/{theirs}"), KEY_A).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "VPS not found");
    assert_eq!(t.action(theirs, KEY_A, "stop").await.status, 404);
    assert_eq!(t.get("/api/v1/vps/nope", KEY_A).await.status, 404);
    assert_eq!(
        t.get(&format!("/api/v1/vps/{theirs}"), KEY_B).await.status,
        200
    );
    let list = t.get(VPS_LIST, KEY_B).await.json();
    assert_eq!(list["total"], 1);
    assert_eq!(t.sim.vps(theirs).expect("vps").vps_status, "active");
}

// ---- actions and RDP ----------------------------------------------------------------

#[tokio::test]
async fn actions_change_state_and_rdp_listener() {
    let t = start(scenario()).await;
    let id = &t.ids[0];
    let rdp = t.sim.vps(id).expect("vps").rdp_addr();
    assert_ne!(rdp.port(), 0);
    wait_rdp(rdp, true).await;

    let r = t.action(id, KEY_A, "stop").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["action"], "stop");
    assert_eq!(j["vpsId"], t.sim.vps(id).expect("vps").server_id.as_str());
    assert!(j["message"].is_string());
    let one = t.get(&format!("/api/v1/vps/{id}"), KEY_A).await.json();
    assert_eq!(one["vpsStatus"], "stopped");
    wait_rdp(rdp, false).await;

    assert_eq!(t.action(id, KEY_A, "start").await.status, 200);
    assert_eq!(t.sim.vps(id).expect("vps").vps_status, "active");
    // It boots for the default second before RDP answers.
    t.clock.advance(chrono::Duration::seconds(1));
    t.sim.tick();
    wait_rdp(rdp, true).await;

    // A hung machine reports active but does not answer; a reboot fixes it.
    t.sim.update_vps(id, |v| v.hang = true);
    wait_rdp(rdp, false).await;
    assert_eq!(t.sim.vps(id).expect("vps").vps_status, "active");
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200);
    t.clock.advance(chrono::Duration::seconds(1));
    t.sim.tick();
    wait_rdp(rdp, true).await;

    let r = t.action(id, KEY_A, "explode").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = t
        .call(
            "POST",
            &format!("/api/v1/vps/{id}/actions"),
            Auth::Bearer(KEY_A),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "no body");

    // Simulator choice: a provisioning VPS refuses reboot.
    let r = t.action(&t.ids[1], KEY_A, "reboot").await;
    assert_eq!(r.status, 409);
    assert_eq!(
        t.sim.vps(&t.ids[1]).expect("vps").vps_status,
        "provisioning"
    );

    let log: Vec<(String, u16)> = t
        .sim
        .actions()
        .into_iter()
        .map(|a| (a.action, a.status))
        .collect();
    assert_eq!(
        log,
        [
            ("stop".to_string(), 200),
            ("start".into(), 200),
            ("reboot".into(), 200),
            ("explode".into(), 400),
            ("".into(), 400),
            ("reboot".into(), 409),
        ]
    );
    assert!(t.sim.actions().iter().all(|a| a.action != "delete"));
}

#[tokio::test]
async fn delete_is_recorded_and_removes() {
    let t = start(scenario()).await;
    let id = &t.ids[0];
    let rdp = t.sim.vps(id).expect("vps").rdp_addr();
    let path = format!("/api/v1/vps/{id}");
    let r = t.call("DELETE", &path, Auth::Bearer(KEY_A), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["providerDeleted"], true);
    assert_eq!(t.get(&path, KEY_A).await.status, 404);
    assert_eq!(t.get(VPS_LIST, KEY_A).await.json()["total"], 1);
    wait_rdp(rdp, false).await;
    let deletes: Vec<_> = t
        .sim
        .actions()
        .into_iter()
        .filter(|a| a.action == "delete")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].vps_id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn provisioning_becomes_active_after_delay() {
    let t = start(scenario()).await;
    let id = &t.ids[1];
    let rdp_before = t.sim.vps(id).expect("vps");
    assert_eq!(rdp_before.vps_status, "provisioning");
    t.clock.advance(chrono::Duration::seconds(601));
    let one = t.get(&format!("/api/v1/vps/{id}"), KEY_A).await.json();
    assert_eq!(one["vpsStatus"], "active");
    wait_rdp(t.sim.vps(id).expect("vps").rdp_addr(), true).await;
}

#[tokio::test]
async fn create_charges_wallet_or_answers_402() {
    let t = start(scenario()).await;
    let body = json!({ "planId": "pro", "billingCycle": "monthly", "location": "tokyo" });
    let r = t
        .call("POST", VPS_LIST, Auth::Bearer(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    assert_eq!(j["cost"], 34.49);
    assert_eq!(j["newBalance"], 15.51);
    assert_eq!(j["vpsStatus"], "provisioning");
    let body = json!({ "planId": "prime", "billingCycle": "monthly", "location": "tokyo" });
    let r = t
        .call("POST", VPS_LIST, Auth::Bearer(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(
        r.json(),
        json!({ "error": "Insufficient wallet balance", "required": 19.49, "available": 15.51, "currency": "EUR" })
    );
    let body = json!({ "planId": "mega", "billingCycle": "monthly", "location": "tokyo" });
    let r = t
        .call("POST", VPS_LIST, Auth::Bearer(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 400);
}

// ---- billing ------------------------------------------------------------------------

#[tokio::test]
async fn renewal_charges_wallet_and_moves_period_end() {
    let t = start(scenario()).await;
    let id = &t.ids[0];
    t.clock.advance(chrono::Duration::days(6));
    let one = t.get(&format!("/api/v1/vps/{id}"), KEY_A).await.json();
    assert_eq!(one["currentPeriodStart"], "2026-05-16T09:00:00.000Z");
    assert_eq!(one["currentPeriodEnd"], "2026-06-16T09:00:00.000Z");
    assert_eq!(one["status"], "active");
    // Only the prime VPS was due (the provisioning one renews in 30 days).
    assert_eq!(t.get(WALLET, KEY_A).await.json()["balance"], 30.51);
}

#[tokio::test]
async fn insufficient_balance_suspends() {
    let t = start(scenario()).await;
    let id = &t.ids[0];
    let rdp = t.sim.vps(id).expect("vps").rdp_addr();
    wait_rdp(rdp, true).await;
    t.sim.set_balance(KEY_A, 5.0);
    t.clock.advance(chrono::Duration::days(6));
    // The background tick notices without a request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.sim.vps(id).expect("vps").status == "active" {
        assert!(Instant::now() < deadline, "never suspended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let one = t.get(&format!("/api/v1/vps/{id}"), KEY_A).await.json();
    assert_eq!(one["status"], "suspended");
    assert_eq!(one["vpsStatus"], "stopped");
    assert_eq!(one["currentPeriodEnd"], "2026-05-16T09:00:00.000Z");
    assert_eq!(t.sim.balance("0"), Some(5.0));
    wait_rdp(rdp, false).await;
}

#[tokio::test]
async fn a_clock_jump_charges_renewals_in_due_order() {
    // The listed-first VPS renews last: a jump over both must charge the earlier one
    // first, as a wallet charged in real time would have.
    let mut s = scenario();
    s.accounts[0].balance = 20.0;
    s.vps[0].current_period_end = RelTime::Offset(3 * DAY); // prime, 19.49
    s.vps[1].vps_status = "active".into();
    s.vps[1].current_period_end = RelTime::Offset(DAY); // basic, 12.49
    let t = start(s).await;
    t.clock.advance(chrono::Duration::days(4));
    let list = t.get(VPS_LIST, KEY_A).await.json();
    assert_eq!(list["vps"][1]["status"], "active", "{list}");
    assert_eq!(
        list["vps"][1]["currentPeriodEnd"],
        "2026-06-12T09:00:00.000Z"
    );
    assert_eq!(list["vps"][0]["status"], "suspended", "{list}");
    assert_eq!(t.get(WALLET, KEY_A).await.json()["balance"], 7.51);
    // A scripted failure state that stays "active" is charged once per pass, not spun on.
    t.sim
        .set_renewal_failure(vpswatch_sim::stablevps::RenewalFailure {
            status: "active".into(),
            vps_status: "active".into(),
        });
    t.sim.update_vps(&t.ids[0], |v| v.status = "active".into());
    t.clock.advance(chrono::Duration::days(1));
    let list = t.get(VPS_LIST, KEY_A).await.json();
    assert_eq!(
        list["vps"][0]["currentPeriodEnd"],
        "2026-05-14T09:00:00.000Z"
    );
    assert_eq!(t.get(WALLET, KEY_A).await.json()["balance"], 7.51);
    t.sim.shutdown_and_wait().await;
}

#[tokio::test]
async fn unknown_status_values_pass_through() {
    let mut s = scenario();
    s.vps[0].status = "frozen-by-compliance".into();
    let t = start(s).await;
    t.sim
        .update_vps(&t.ids[1], |v| v.vps_status = "rescue_mode".into());
    let list = t.get(VPS_LIST, KEY_A).await.json();
    assert_eq!(list["vps"][0]["status"], "frozen-by-compliance");
    assert_eq!(list["vps"][1]["vpsStatus"], "rescue_mode");
    // A non-active service does not renew (the other one is due only in 30 days).
    t.clock.advance(chrono::Duration::days(10));
    assert_eq!(t.get(WALLET, KEY_A).await.json()["balance"], 50.0);
}

// ---- faults -------------------------------------------------------------------------

#[tokio::test]
async fn status_faults_are_json() {
    let t = start(scenario()).await;
    t.sim.inject_fault(
        Fault::new(EndpointMatch::template(VPS_LIST), FaultKind::Status(502)).times(1),
    );
    let r = t.get(VPS_LIST, KEY_A).await;
    assert_eq!(r.status, 502);
    assert!(r.content_type.starts_with("application/json"));
    assert!(r.json()["error"].is_string());
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 200, "counted down");

    t.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::Status(500)).times(1));
    let r = t.get(WALLET, KEY_A).await;
    assert_eq!((r.status, r.json()["error"].is_string()), (500, true));

    t.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::Unauthorized).times(1));
    let r = t.get(WALLET, KEY_A).await;
    assert_eq!((r.status, r.json()["error"].is_string()), (401, true));

    t.sim.inject_fault(
        Fault::new(
            EndpointMatch::Any,
            FaultKind::RateLimited {
                retry_after_secs: 7,
            },
        )
        .times(1),
    );
    let r = t.get(WALLET, KEY_A).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn body_faults() {
    let t = start(scenario()).await;
    t.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::MalformedJson).times(1));
    let r = t.get(VPS_LIST, KEY_A).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"));
    assert!(serde_json::from_str::<Value>(&r.body).is_err());

    t.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::WrongContentType).times(1));
    let r = t.get(VPS_LIST, KEY_A).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/html"));

    t.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::TruncatedBody).times(1));
    let resp = t
        .http
        .get(format!("{}{}", t.sim.base_url(), VPS_LIST))
        .bearer_auth(KEY_A)
        .send()
        .await
        .expect("head arrives");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.is_err(), "body cut short");
}

#[tokio::test]
async fn latency_and_hang_faults() {
    let t = start(scenario()).await;
    t.sim.inject_fault(
        Fault::new(
            EndpointMatch::template(WALLET),
            FaultKind::Latency(Duration::from_millis(300)),
        )
        .times(1),
    );
    let started = Instant::now();
    assert_eq!(t.get(WALLET, KEY_A).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Per-VPS matching: only the first VPS's GET hangs.
    let hung = &t.ids[0];
    let key = fault_key(hung).expect("hex id");
    t.sim
        .inject_fault(Fault::new(EndpointMatch::vm(VPS_ONE, key), FaultKind::Hang));
    assert_eq!(
        t.get(&format!("/api/v1/vps/{}", t.ids[1]), KEY_A)
            .await
            .status,
        200
    );
    let r = t
        .http
        .get(format!("{}/api/v1/vps/{hung}", t.sim.base_url()))
        .bearer_auth(KEY_A)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.expect_err("hangs").is_timeout());
    let logged = t.sim.requests();
    let last = logged.last().expect("logged");
    assert_eq!((last.status, last.endpoint.as_str()), (0, VPS_ONE));
    t.sim.clear_faults();
    assert_eq!(
        t.get(&format!("/api/v1/vps/{hung}"), KEY_A).await.status,
        200
    );
    // Actions are matched by their own template.
    t.sim.inject_fault(
        Fault::new(EndpointMatch::template(VPS_ACTIONS), FaultKind::Status(502)).times(1),
    );
    assert_eq!(t.action(hung, KEY_A, "reboot").await.status, 502);
    assert!(
        t.sim.actions().is_empty(),
        "a faulted write never reached the API"
    );
}

#[tokio::test]
async fn routing_errors_and_request_log() {
    let t = start(scenario()).await;
    let r = t.get("/api/v1/nothing", KEY_A).await;
    assert_eq!((r.status, r.json()["error"].is_string()), (404, true));
    let r = t.call("PUT", WALLET, Auth::Bearer(KEY_A), None).await;
    assert_eq!(r.status, 405);
    let log = t.sim.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].endpoint, "");
    assert_eq!((log[1].method.as_str(), log[1].status), ("PUT", 405));
    assert_eq!(log[1].at, t0());
    // A huge body is refused, not read.
    let big = "x".repeat(200 * 1024);
    let r = t
        .http
        .post(format!(
            "{}/api/v1/vps/{}/actions",
            t.sim.base_url(),
            t.ids[0]
        ))
        .bearer_auth(KEY_A)
        .body(big)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 413);
    t.sim.shutdown_and_wait().await;
}

#[tokio::test]
async fn demo_scenario_and_toml_load() {
    let t = start(StableScenario::demo()).await;
    let list = t
        .get(VPS_LIST, vpswatch_sim::stablevps::DEMO_READ_KEY)
        .await
        .json();
    assert_eq!(list["total"], 3);
    let s = StableScenario::from_toml(
        "[[accounts]]\nbalance = 1.5\nkeys = [{ key = \"svps_live_00ff\" }]\n[[vps]]\naccount = \"svps_live_00ff\"\nstatus = \"odd\"\nlisten_rdp = false\n",
    )
    .expect("toml");
    let t = start(s).await;
    let list = t.get(VPS_LIST, "svps_live_00ff").await.json();
    assert_eq!(list["vps"][0]["status"], "odd");
    assert_eq!(t.get(WALLET, "svps_live_00ff").await.json()["balance"], 1.5);
}

// ---- watchdog steps: crash, hang, dead machines, failing actions, blackout, boot time -

impl TestSim {
    fn rdp(&self, i: usize) -> SocketAddr {
        self.sim.vps(&self.ids[i]).expect("vps").rdp_addr()
    }

    async fn vps_status(&self, i: usize) -> String {
        let one = self
            .get(&format!("/api/v1/vps/{}", self.ids[i]), KEY_A)
            .await;
        one.json()["vpsStatus"].as_str().unwrap_or("").to_string()
    }

    /// Like `wait_rdp`, but runs a simulator pass on every round (manual clock).
    async fn wait_rdp_ticking(&self, addr: SocketAddr, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.sim.tick();
            if rdp_open(addr).await == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RDP at {addr} never became {}",
                if want { "open" } else { "closed" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The harness scenario with a given boot time.
fn scenario_booting(reboot: Duration) -> StableScenario {
    StableScenario {
        reboot_duration: reboot,
        ..scenario()
    }
}

#[tokio::test]
async fn crash_reports_stopped_or_the_given_status_and_closes_rdp() {
    let t = start(scenario_booting(Duration::ZERO)).await;
    let id = &t.ids[0];
    let rdp = t.rdp(0);
    wait_rdp(rdp, true).await;
    t.sim.crash_vps(id, None);
    assert_eq!(t.vps_status(0).await, "stopped");
    wait_rdp(rdp, false).await;
    assert_eq!(t.action(id, KEY_A, "start").await.status, 200);
    assert_eq!(t.vps_status(0).await, "active");
    wait_rdp(rdp, true).await;
    t.sim.crash_vps(id, Some("error"));
    assert_eq!(t.vps_status(0).await, "error", "any status can be produced");
    wait_rdp(rdp, false).await;
    assert!(
        t.sim.actions().iter().all(|a| a.action == "start"),
        "crashes are no requests"
    );
}

#[tokio::test]
async fn hang_dead_and_power_cycle_machines() {
    let t = start(scenario_booting(Duration::ZERO)).await;
    let id = &t.ids[0];
    let rdp = t.rdp(0);
    wait_rdp(rdp, true).await;

    t.sim.set_hang(id, true);
    wait_rdp(rdp, false).await;
    assert_eq!(
        t.vps_status(0).await,
        "active",
        "hung, still reported active"
    );
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200);
    wait_rdp(rdp, true).await;
    t.sim.set_hang(id, true);
    wait_rdp(rdp, false).await;
    assert_eq!(t.action(id, KEY_A, "stop").await.status, 200);
    assert_eq!(t.action(id, KEY_A, "start").await.status, 200);
    wait_rdp(rdp, true).await;

    t.sim.set_stays_dead(id, true);
    wait_rdp(rdp, false).await;
    for action in ["reboot", "stop", "start", "reboot"] {
        let r = t.action(id, KEY_A, action).await;
        assert_eq!((r.status, r.json()["success"].as_bool()), (200, Some(true)));
        assert!(!rdp_open(rdp).await, "still dead after {action}");
    }
    t.sim.set_stays_dead(id, false);
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200);
    wait_rdp(rdp, true).await;

    t.sim.set_needs_power_cycle(id, true);
    wait_rdp(rdp, false).await;
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200);
    assert!(!rdp_open(rdp).await, "a reboot does not help");
    assert_eq!(t.action(id, KEY_A, "stop").await.status, 200);
    assert_eq!(t.action(id, KEY_A, "start").await.status, 200);
    wait_rdp(rdp, true).await;
    assert!(!t.sim.vps(id).expect("vps").needs_power_cycle);
}

#[tokio::test]
async fn action_failures_answer_json_errors_and_are_recorded() {
    let t = start(scenario_booting(Duration::ZERO)).await;
    let id = &t.ids[0];
    t.sim.fail_actions(
        id,
        ActionFailure::status(502)
            .only(&[PowerAction::Restart])
            .times(1),
    );
    let r = t.action(id, KEY_A, "reboot").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, r#"{"error":"VPS provider request failed"}"#);
    t.clock.advance(chrono::Duration::milliseconds(250));
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200, "only once");
    t.sim.fail_actions(id, ActionFailure::status(500));
    let r = t.action(id, KEY_A, "stop").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, r#"{"error":"Internal server error"}"#);
    assert_eq!(
        t.vps_status(0).await,
        "active",
        "a failed stop changes nothing"
    );
    // A read key is still refused first: the failure is the provider call's.
    assert_eq!(t.action(id, KEY_A_READ, "stop").await.status, 403);
    t.sim.clear_action_failures(id);
    assert_eq!(t.action(id, KEY_A, "stop").await.status, 200);
    let log: Vec<(String, u16)> = t
        .sim
        .actions()
        .into_iter()
        .map(|a| (a.action, a.status))
        .collect();
    assert_eq!(
        log,
        [
            ("reboot".to_string(), 502),
            ("reboot".into(), 200),
            ("stop".into(), 500),
            ("stop".into(), 200)
        ]
    );
    let at: Vec<DateTime<Utc>> = t.sim.actions().iter().map(|a| a.at).collect();
    assert_eq!(at[0], t0());
    assert_eq!(at[1], t0() + chrono::Duration::milliseconds(250));
}

#[tokio::test]
async fn blackout_answers_503_everywhere_while_machines_run_on() {
    let t = start(scenario()).await;
    let rdp = t.rdp(0);
    wait_rdp(rdp, true).await;
    t.sim
        .start_blackout(BlackoutLength::For(Duration::from_secs(30)));
    for (method, path, auth) in [
        ("GET", VPS_LIST.to_string(), Auth::Bearer(KEY_A)),
        ("GET", WALLET.to_string(), Auth::Nothing),
        (
            "POST",
            format!("/api/v1/vps/{}/actions", t.ids[0]),
            Auth::Bearer(KEY_A),
        ),
        ("GET", "/api/v1/nothing".to_string(), Auth::Bearer(KEY_A)),
    ] {
        let r = t
            .call(method, &path, auth, Some(json!({ "action": "reboot" })))
            .await;
        assert_eq!(r.status, 503, "{method} {path}");
        assert!(r.json()["error"].is_string(), "{method} {path}: {}", r.body);
    }
    assert!(t.sim.actions().is_empty(), "nothing reached the API");
    assert!(rdp_open(rdp).await, "the machine still answers");
    t.clock.advance(chrono::Duration::seconds(30));
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 200, "over after 30 s");
    t.sim.start_blackout(BlackoutLength::UntilCleared);
    t.clock.advance(chrono::Duration::days(1));
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 503);
    t.sim.end_blackout();
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 200);
}

#[tokio::test]
async fn reboot_keeps_rdp_closed_for_the_boot_time() {
    let t = start(StableScenario {
        booting_vps_status: Some("rebooting".into()),
        ..scenario_booting(Duration::from_secs(5))
    })
    .await;
    let id = &t.ids[0];
    let rdp = t.rdp(0);
    wait_rdp(rdp, true).await;
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200);
    t.wait_rdp_ticking(rdp, false).await;
    assert_eq!(t.vps_status(0).await, "rebooting");
    t.clock.advance(chrono::Duration::seconds(4));
    t.sim.tick();
    assert!(!rdp_open(rdp).await, "still booting after 4 s");
    t.clock.advance(chrono::Duration::seconds(1));
    t.wait_rdp_ticking(rdp, true).await;
    assert_eq!(t.vps_status(0).await, "active");
    t.sim.set_reboot_duration(Duration::ZERO);
    assert_eq!(t.action(id, KEY_A, "reboot").await.status, 200);
    assert_eq!(t.vps_status(0).await, "active");
    assert!(rdp_open(rdp).await);
}

#[tokio::test]
async fn reboot_ends_on_time_on_the_system_clock() {
    vpswatch::tls::install_crypto_provider();
    let s = StableScenario {
        reboot_duration: Duration::from_millis(400),
        ..scenario()
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sim = StableVpsSim::start(listen, s, Arc::new(vpswatch_model::clock::SystemClock))
        .await
        .expect("start");
    let id = sim.vpses()[0].id.clone();
    let rdp = sim.vps(&id).expect("vps").rdp_addr();
    wait_rdp(rdp, true).await;
    let sent = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/vps/{id}/actions", sim.base_url()))
        .bearer_auth(KEY_A)
        .header("content-type", "application/json")
        .body(r#"{"action":"reboot"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    wait_rdp(rdp, false).await;
    // No manual ticks: the simulator wakes itself at the end of the boot.
    wait_rdp(rdp, true).await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "reopened after {took:?}"
    );
    sim.shutdown_and_wait().await;
}

#[tokio::test]
async fn timeline_scripts_the_watchdog_steps() {
    let toml = r#"
        reboot_duration = "0s"
        [[accounts]]
        keys = [{ key = "svps_live_aaaa0000000000000000000000000001" }]
        [[vps]]
        [[vps]]
        [[vps]]
        [[timeline]]
        at = "10s"
        vps = 0
        crash = "offline"
        fail_actions = { actions = ["start"], status = 502, times = 1 }
        [[timeline]]
        at = "10s"
        vps = 1
        stays_dead = true
        [[timeline]]
        at = "10s"
        vps = 2
        needs_power_cycle = true
        [[timeline]]
        at = "20s"
        blackout = "5s"
        [[timeline]]
        at = "30s"
        reboot_duration = "2s"
    "#;
    let t = start(StableScenario::from_toml(toml).expect("toml")).await;
    for i in 0..3 {
        wait_rdp(t.rdp(i), true).await;
    }
    t.clock.advance(chrono::Duration::seconds(10));
    for i in 0..3 {
        t.wait_rdp_ticking(t.rdp(i), false).await;
    }
    assert_eq!(t.vps_status(0).await, "offline");
    assert_eq!(t.vps_status(1).await, "active");
    assert_eq!(t.action(&t.ids[0], KEY_A, "start").await.status, 502);
    assert_eq!(t.action(&t.ids[0], KEY_A, "start").await.status, 200);
    wait_rdp(t.rdp(0), true).await;
    assert_eq!(t.action(&t.ids[1], KEY_A, "reboot").await.status, 200);
    assert_eq!(t.action(&t.ids[2], KEY_A, "reboot").await.status, 200);
    assert!(!rdp_open(t.rdp(1)).await && !rdp_open(t.rdp(2)).await);
    assert_eq!(t.action(&t.ids[2], KEY_A, "stop").await.status, 200);
    assert_eq!(t.action(&t.ids[2], KEY_A, "start").await.status, 200);
    wait_rdp(t.rdp(2), true).await;

    t.clock.advance(chrono::Duration::seconds(10));
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 503, "blackout at 20 s");
    t.clock.advance(chrono::Duration::seconds(5));
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 200, "over at 25 s");
    t.clock.advance(chrono::Duration::seconds(5));
    assert_eq!(t.action(&t.ids[0], KEY_A, "reboot").await.status, 200);
    t.wait_rdp_ticking(t.rdp(0), false).await;
    t.clock.advance(chrono::Duration::seconds(2));
    t.wait_rdp_ticking(t.rdp(0), true).await;

    let bad =
        StableScenario::from_toml("[[vps]]\n[[timeline]]\nat = \"1s\"\nvps = 0\nhang = true\n");
    assert!(bad.is_ok(), "parses");
    let err = bad.and_then(|s| s.validate()).expect_err("no account");
    assert!(err.to_string().contains("names no account"), "{err}");
    let mut s = scenario();
    s.timeline = vec![StableTimelineEvent {
        vps: Some(9),
        hang: Some(true),
        ..StableTimelineEvent::default()
    }];
    let err = s.validate().expect_err("vps 9");
    assert!(
        err.to_string().contains("vps 9 is not in the scenario"),
        "{err}"
    );
}

#[tokio::test]
async fn control_api_drives_the_watchdog_steps() {
    let t = start(scenario_booting(Duration::ZERO)).await;
    let id = t.ids[0].clone();
    let rdp = t.rdp(0);
    wait_rdp(rdp, true).await;
    let url = |p: &str| format!("{}{p}", t.sim.base_url());
    let send = |method: reqwest::Method, path: String, body: Option<&str>| {
        let mut req = t.http.request(method, url(&path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        async move {
            let r = req.send().await.expect("sent");
            let status = r.status().as_u16();
            let text = r.text().await.expect("body");
            let v = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
            (status, v)
        }
    };
    let post = |path: String, body: &'static str| send(reqwest::Method::POST, path, Some(body));

    let (status, index) = send(reqwest::Method::GET, "/_sim/".into(), None).await;
    assert_eq!(status, 200);
    assert!(index["endpoints"].as_array().is_some_and(|e| e.len() >= 7));
    let (status, v) = post(format!("/_sim/vps/{id}"), r#"{"crash":"offline"}"#).await;
    assert_eq!((status, v["vps_status"].as_str()), (200, Some("offline")));
    wait_rdp(rdp, false).await;
    let (_, v) = post(
        format!("/_sim/vps/{id}"),
        r#"{"vps_status":"active","needs_power_cycle":true,"fail_actions":{"actions":["reboot"],"status":500,"times":1}}"#,
    )
    .await;
    assert_eq!(v["needs_power_cycle"], true);
    assert!(!rdp_open(rdp).await, "hung until a power cycle");
    assert_eq!(t.action(&id, KEY_A, "reboot").await.status, 500);
    assert_eq!(t.action(&id, KEY_A, "reboot").await.status, 200);
    assert!(!rdp_open(rdp).await);
    let (status, _) = post(
        format!("/_sim/vps/{id}"),
        r#"{"fail_actions":{"status":302}}"#,
    )
    .await;
    assert_eq!(status, 400, "a redirect is no failure");
    let (status, _) = post("/_sim/vps/nope".into(), r#"{"hang":true}"#).await;
    assert_eq!(status, 404);

    let (_, b) = post("/_sim/blackout".into(), r#"{"duration":"10s"}"#).await;
    assert_eq!(b["active"], true);
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 503);
    let (_, b) = send(reqwest::Method::DELETE, "/_sim/blackout".into(), None).await;
    assert_eq!(b["active"], false);
    assert_eq!(t.get(VPS_LIST, KEY_A).await.status, 200);
    let (_, b) = post("/_sim/blackout".into(), "{}").await;
    assert_eq!(
        (b["active"].as_bool(), &b["until"]),
        (Some(true), &Value::Null)
    );
    send(reqwest::Method::DELETE, "/_sim/blackout".into(), None).await;

    let (status, _) = post("/_sim/reboot-duration".into(), r#"{"duration":"3s"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(t.action(&id, KEY_A, "stop").await.status, 200);
    assert_eq!(t.action(&id, KEY_A, "start").await.status, 200);
    t.clock.advance(chrono::Duration::seconds(3));
    t.wait_rdp_ticking(rdp, true).await;

    let (_, actions) = send(reqwest::Method::GET, "/_sim/actions".into(), None).await;
    let rows: Vec<(&str, u64)> = actions
        .as_array()
        .expect("list")
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap_or(""),
                a["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("reboot", 500),
            ("reboot", 200),
            ("stop", 200),
            ("start", 200)
        ]
    );
    assert_eq!(actions[0]["vps_id"], id.as_str());
    assert!(actions[0]["at"]
        .as_str()
        .is_some_and(|s| s.parse::<DateTime<Utc>>().is_ok()));
    let (status, _) = send(reqwest::Method::DELETE, "/_sim/actions".into(), None).await;
    assert_eq!(status, 200);
    assert!(t.sim.actions().is_empty());
    let (_, list) = send(reqwest::Method::GET, "/_sim/vps".into(), None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3));
    let (status, _) = send(reqwest::Method::DELETE, format!("/_sim/vps/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(t.get(&format!("/api/v1/vps/{id}"), KEY_A).await.status, 404);
}

#[tokio::test]
async fn list_omissions_key_expiry_and_logged_auth() {
    let t = start(scenario()).await;
    t.sim
        .update_vps(&t.ids[0], |v| v.list_omits = vec!["ipAddress".into()]);
    // The list leaves the field out; the per-VPS answer still has it.
    let list = t.get(VPS_LIST, KEY_A).await.json();
    assert!(list["vps"][0].get("ipAddress").is_none(), "{list}");
    assert!(list["vps"][1].get("ipAddress").is_some(), "{list}");
    let one = t
        .get(&format!("/api/v1/vps/{}", t.ids[0]), KEY_A)
        .await
        .json();
    assert!(one["ipAddress"].is_string(), "{one}");

    // Key expiry can be moved at run time: past → 401, cleared → accepted again.
    assert!(t
        .sim
        .set_key_expiry(KEY_A, Some(t0() - chrono::Duration::seconds(1))));
    let r = t.get(WALLET, KEY_A).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("API key has expired"))
    );
    assert!(t.sim.set_key_expiry(KEY_A, None));
    assert_eq!(t.get(WALLET, KEY_A).await.status, 200);
    assert!(!t.sim.set_key_expiry("svps_live_nobody", None));

    // The log says which key (by its public prefix) and which header style was used.
    t.sim.clear_requests();
    t.call("GET", WALLET, Auth::Header(KEY_A_READ), None).await;
    t.get(WALLET, KEY_A).await;
    t.call("GET", WALLET, Auth::Nothing, None).await;
    let log = t.sim.requests();
    let seen: Vec<_> = log
        .iter()
        .map(|r| (r.key_prefix.clone(), r.auth_style))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some(KEY_A_READ[..14].to_string()), Some("x-api-key")),
            (Some(KEY_A[..14].to_string()), Some("bearer")),
            (None, None),
        ]
    );
    t.sim.shutdown_and_wait().await;
}
