//! The LNVPS simulator over real HTTP on loopback: NIP-98 edge cases as captured from
//! the real server (lnvps-samples/nip98_edge_cases.json), response shapes of the
//! captured samples, ownership and routing errors, the rate limiter, every fault kind,
//! the timeline and lifecycle, the `/_sim/` control API, and the watchdog's steps
//! (crash, hang, dead guests, power-cycle-only guests, failing actions, blackout, boot
//! time) observed over HTTP and on the VMs' real TCP ports.
//!
//! Time-sensitive tests run the simulator on a `ManualClock`, so the ±60 s window and
//! expiry are exact; waiting is always polling with a deadline.

use crate::common::free_port;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};
use serde_json::Value;
use sha2::{Digest, Sha256};

use vpswatch_model::clock::{ManualClock, SharedClock, SystemClock};
use vpswatch_sim::lnvps::{
    ActionFailure, BlackoutLength, EndpointMatch, Fault, FaultKind, LnvpsSim, LnvpsSimHandle,
    PowerAction, RateLimitSettings, RelTime, Scenario, TimelineEvent, VmSpec, VmState,
};

/// The real server's GET /api/v1/account body for a new Nostr user (nip98_edge_cases.json).
const ACCOUNT_BODY: &str = r#"{"data":{"account_type":"nostr","contact_nip17":true,"contact_email":false,"contact_telegram":false,"telegram_linked":false,"contact_whatsapp":false,"whatsapp_verified":false,"country_code":null,"name":null,"address_1":null,"address_2":null,"state":null,"city":null,"postcode":null,"tax_id":null,"tax":[{"company_id":1,"company_name":"Default Company","rate":0.0,"treatment":"out_of_scope"}]}}"#;
/// The `fresh` row's captured (truncated) body.
const FRESH_PREFIX: &str =
    r#"{"data":{"account_type":"nostr","contact_nip17":true,"contact_email":false,"cont"#;

const ACCOUNT: &str = "/api/v1/account";

// ---- harness ------------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 6, 44, 53)
        .single()
        .expect("valid time")
}

struct TestSim {
    sim: LnvpsSimHandle,
    clock: Arc<ManualClock>,
    keys: Keys,
    http: reqwest::Client,
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

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn owner_hex(keys: &Keys) -> String {
    keys.public_key().to_hex()
}

/// A scenario with `vms` owned by `keys`.
fn scenario_for(keys: &Keys, vms: Vec<VmSpec>) -> Scenario {
    let mut s = Scenario {
        vms,
        ..Scenario::default()
    };
    s.resolve_owners(Some(&owner_hex(keys))).expect("owners");
    s
}

async fn start(scenario_vms: Vec<VmSpec>) -> TestSim {
    start_with(|keys| scenario_for(keys, scenario_vms)).await
}

async fn start_with(build: impl FnOnce(&Keys) -> Scenario) -> TestSim {
    let keys = Keys::generate();
    let clock = Arc::new(ManualClock::new(t0()));
    let shared: SharedClock = clock.clone();
    let sim = LnvpsSim::start(loopback(), build(&keys), shared)
        .await
        .expect("simulator starts");
    TestSim {
        sim,
        clock,
        keys,
        http: client(),
    }
}

fn tag(parts: &[&str]) -> Tag {
    Tag::parse(parts.iter().copied()).expect("tag")
}

fn nonce_tag() -> Tag {
    let n: [u8; 16] = rand::random();
    tag(&["nonce", &hex::encode(n)])
}

fn sign(keys: &Keys, kind: Kind, tags: Vec<Tag>, created_at: i64) -> String {
    let event = EventBuilder::new(kind, "")
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at as u64))
        .sign_with_keys(keys)
        .expect("sign");
    format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(event.as_json())
    )
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl TestSim {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.sim.base_url(), path)
    }

    fn now(&self) -> i64 {
        self.sim.now().timestamp()
    }

    /// A fresh, valid header for `method path` signed by `keys`.
    fn auth_as(&self, keys: &Keys, method: &str, path: &str, body: &[u8]) -> String {
        let mut tags = vec![
            tag(&["u", &self.url(path)]),
            tag(&["method", method]),
            nonce_tag(),
        ];
        if !body.is_empty() {
            tags.push(tag(&["payload", &sha256_hex(body)]));
        }
        sign(keys, Kind::HttpAuth, tags, self.now())
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Option<String>,
        body: Option<&str>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, self.url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("body");
        Resp {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// An authenticated request as the scenario owner.
    async fn call(&self, method: &str, path: &str) -> Resp {
        let auth = self.auth_as(
            &self.keys,
            method,
            path.split('?').next().unwrap_or(path),
            b"",
        );
        self.send(method, path, Some(auth), None).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path).await
    }

    async fn get_as(&self, keys: &Keys, path: &str) -> Resp {
        let auth = self.auth_as(keys, "GET", path, b"");
        self.send("GET", path, Some(auth), None).await
    }

    async fn with_header(&self, header: &str) -> Resp {
        self.send("GET", ACCOUNT, Some(header.to_string()), None)
            .await
    }
}

fn running(expires: &str) -> VmSpec {
    VmSpec {
        state: VmState::Running,
        expires: Some(expires.parse().expect("rel time")),
        ..VmSpec::default()
    }
}

fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn assert_keys(v: &Value, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(keys_of(v), want, "keys of {v}");
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- NIP-98 (nip98_edge_cases.json, row by row) -------------------------------------

fn expect(r: &Resp, status: u16, body: &str, row: &str) {
    assert_eq!(r.status, status, "row {row}: body {}", r.body);
    assert_eq!(r.body, body, "row {row}");
    if status != 200 {
        assert!(
            r.content_type.starts_with("text/plain"),
            "row {row}: {}",
            r.content_type
        );
    }
}

#[tokio::test]
async fn nip98_header_and_scheme_rows() {
    let t = start(vec![]).await;
    let r = t.send("GET", ACCOUNT, None, None).await;
    expect(&r, 403, "Auth header not found", "no_header");

    let good = t.auth_as(&t.keys, "GET", ACCOUNT, b"");
    let r = t.with_header(&good).await;
    assert_eq!(r.status, 200, "fresh");
    assert!(r.body.starts_with(FRESH_PREFIX), "fresh: {}", r.body);
    assert_eq!(r.body, ACCOUNT_BODY, "fresh: full body");
    let r = t.with_header(&good).await;
    expect(
        &r,
        401,
        "Auth check failed: Credential has already been used",
        "replay_same_header",
    );

    let fresh = t.auth_as(&t.keys, "GET", ACCOUNT, b"");
    let lower = fresh.replacen("Nostr ", "nostr ", 1);
    expect(
        &t.with_header(&lower).await,
        403,
        "Auth scheme must be Nostr or Bearer",
        "scheme_lowercase",
    );
    expect(
        &t.with_header("Basic dXNlcjpwYXNz").await,
        403,
        "Auth scheme must be Nostr or Bearer",
        "scheme_basic",
    );
    expect(
        &t.with_header("Nostr !!!not-base64!!!").await,
        401,
        "Invalid auth: Invalid auth string",
        "garbage_base64",
    );
    let not_event = format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode("{}")
    );
    expect(
        &t.with_header(&not_event).await,
        401,
        "Invalid auth: Invalid nostr event",
        "not an event",
    );
    expect(
        &t.with_header("Bearer abc.def.ghi").await,
        401,
        "Invalid session: Session auth not configured",
        "bearer",
    );
    // The lowercase-scheme header was never accepted, so it was not burned.
    expect(
        &t.with_header(&fresh).await,
        200,
        ACCOUNT_BODY,
        "unburned after scheme rejection",
    );
}

#[tokio::test]
async fn nip98_time_window_rows() {
    let t = start(vec![]).await;
    for (row, offset, ok) in [
        ("created_at_-75s", -75, false),
        ("created_at_-61s", -61, false),
        ("created_at_-60s", -60, true),
        ("created_at_-55s", -55, true),
        ("created_at_+55s", 55, true),
        ("created_at_+60s", 60, true),
        ("created_at_+61s", 61, false),
        ("created_at_+75s", 75, false),
    ] {
        let tags = vec![
            tag(&["u", &t.url(ACCOUNT)]),
            tag(&["method", "GET"]),
            nonce_tag(),
        ];
        let h = sign(&t.keys, Kind::HttpAuth, tags, t.now() + offset);
        let r = t.with_header(&h).await;
        if ok {
            expect(&r, 200, ACCOUNT_BODY, row);
        } else {
            expect(
                &r,
                401,
                "Auth check failed: Created timestamp is out of range",
                row,
            );
        }
    }
}

#[tokio::test]
async fn nip98_clock_skew_moves_the_window() {
    let t = start(vec![]).await;
    let tags = vec![tag(&["u", ACCOUNT]), tag(&["method", "GET"]), nonce_tag()];
    let h = sign(&t.keys, Kind::HttpAuth, tags, t.now());
    t.sim.set_clock_skew(120);
    expect(
        &t.with_header(&h).await,
        401,
        "Auth check failed: Created timestamp is out of range",
        "skewed",
    );
    t.sim.set_clock_skew(0);
    expect(&t.with_header(&h).await, 200, ACCOUNT_BODY, "unskewed");
}

#[tokio::test]
async fn nip98_url_rows() {
    let t = start(vec![]).await;
    let base = t.sim.base_url();
    for (row, u, ok) in [
        ("u_path_only", ACCOUNT.to_string(), true),
        (
            "u_other_host",
            "https://api.example.net/api/v1/account".to_string(),
            true,
        ),
        (
            "u_with_query",
            format!("{base}/api/v1/account?x=1&y=2"),
            true,
        ),
        ("u_wrong_path", format!("{base}/api/v1/vm"), false),
        ("u_trailing_slash", format!("{base}/api/v1/account/"), false),
        (
            "u_percent_encoded",
            format!("{base}/api/v1/%61ccount"),
            false,
        ),
    ] {
        let tags = vec![tag(&["u", &u]), tag(&["method", "GET"]), nonce_tag()];
        let r = t
            .with_header(&sign(&t.keys, Kind::HttpAuth, tags, t.now()))
            .await;
        if ok {
            expect(&r, 200, ACCOUNT_BODY, row);
        } else {
            expect(&r, 401, "Auth check failed: U tag does not match", row);
        }
    }
    // The request's own query string is ignored too.
    let tags = vec![tag(&["u", ACCOUNT]), tag(&["method", "GET"]), nonce_tag()];
    let h = sign(&t.keys, Kind::HttpAuth, tags, t.now());
    let r = t.send("GET", "/api/v1/account?page=2", Some(h), None).await;
    expect(&r, 200, ACCOUNT_BODY, "request query ignored");

    let tags = vec![tag(&["method", "GET"]), nonce_tag()];
    let r = t
        .with_header(&sign(&t.keys, Kind::HttpAuth, tags, t.now()))
        .await;
    expect(&r, 401, "Auth check failed: Missing url tag", "u_missing");
}

#[tokio::test]
async fn nip98_method_kind_signature_rows() {
    let t = start(vec![]).await;
    let u = t.url(ACCOUNT);
    for (row, method, msg) in [
        (
            "method_lowercase",
            Some("get"),
            "Auth check failed: Method tag incorrect",
        ),
        (
            "method_wrong",
            Some("POST"),
            "Auth check failed: Method tag incorrect",
        ),
        (
            "method_missing",
            None,
            "Auth check failed: Missing method tag",
        ),
    ] {
        let mut tags = vec![tag(&["u", &u]), nonce_tag()];
        if let Some(m) = method {
            tags.push(tag(&["method", m]));
        }
        let r = t
            .with_header(&sign(&t.keys, Kind::HttpAuth, tags, t.now()))
            .await;
        expect(&r, 401, msg, row);
    }

    let tags = vec![tag(&["u", &u]), tag(&["method", "GET"]), nonce_tag()];
    let r = t
        .with_header(&sign(&t.keys, Kind::TextNote, tags, t.now()))
        .await;
    expect(&r, 401, "Auth check failed: Wrong event kind", "kind_1");

    // bad_signature: a valid event with its signature altered.
    let tags = vec![tag(&["u", &u]), tag(&["method", "GET"]), nonce_tag()];
    let event = EventBuilder::new(Kind::HttpAuth, "")
        .tags(tags)
        .custom_created_at(Timestamp::from(t.now() as u64))
        .sign_with_keys(&t.keys)
        .expect("sign");
    let mut v: Value = serde_json::from_str(&event.as_json()).expect("json");
    let sig = v["sig"].as_str().expect("sig").to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    v["sig"] = Value::String(format!("{flipped}{}", &sig[1..]));
    let h = format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(v.to_string())
    );
    expect(
        &t.with_header(&h).await,
        401,
        "Auth check failed: Event signature invalid",
        "bad_signature",
    );
    // A forged event did not burn the real one's id.
    let real = format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(event.as_json())
    );
    expect(
        &t.with_header(&real).await,
        200,
        ACCOUNT_BODY,
        "original after forgery",
    );
}

#[tokio::test]
async fn nip98_payload_and_nonce_rows() {
    let t = start(vec![running("30d")]).await;
    let u = t.url(ACCOUNT);
    let empty = sha256_hex(b"");
    for (row, payload, ok) in [
        ("get_payload_sha256_empty", empty.clone(), true),
        (
            "get_payload_sha256_empty_uppercase",
            empty.to_uppercase(),
            true,
        ),
        ("get_payload_wrong", sha256_hex(b"x"), false),
    ] {
        let tags = vec![
            tag(&["u", &u]),
            tag(&["method", "GET"]),
            tag(&["payload", &payload]),
            nonce_tag(),
        ];
        let r = t
            .with_header(&sign(&t.keys, Kind::HttpAuth, tags, t.now()))
            .await;
        if ok {
            expect(&r, 200, ACCOUNT_BODY, row);
        } else {
            expect(
                &r,
                401,
                "Auth check failed: Payload tag does not match request body",
                row,
            );
        }
    }

    // post_payload_mismatch: a body-carrying request whose payload tag hashes another body.
    let path = "/api/v1/vm/1";
    let tags = vec![
        tag(&["u", &t.url(path)]),
        tag(&["method", "PATCH"]),
        tag(&["payload", &sha256_hex(br#"{"auto_renewal_enabled":true}"#)]),
        nonce_tag(),
    ];
    let h = sign(&t.keys, Kind::HttpAuth, tags, t.now());
    let r = t
        .send(
            "PATCH",
            path,
            Some(h),
            Some(r#"{"auto_renewal_enabled":false}"#),
        )
        .await;
    expect(
        &r,
        401,
        "Auth check failed: Payload tag does not match request body",
        "post_payload_mismatch",
    );
    // With the right hash the PATCH goes through.
    let body = r#"{"auto_renewal_enabled":false}"#;
    let h = t.auth_as(&t.keys, "PATCH", path, body.as_bytes());
    let r = t.send("PATCH", path, Some(h), Some(body)).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"data":null}"#));
    assert_eq!(t.sim.vm(1).map(|v| v.auto_renewal_enabled), Some(false));

    // no_nonce_first / no_nonce_replay: identical events in the same second share an id.
    let plain = || vec![tag(&["u", &u]), tag(&["method", "GET"])];
    let first = sign(&t.keys, Kind::HttpAuth, plain(), t.now());
    expect(
        &t.with_header(&first).await,
        200,
        ACCOUNT_BODY,
        "no_nonce_first",
    );
    let second = sign(&t.keys, Kind::HttpAuth, plain(), t.now());
    expect(
        &t.with_header(&second).await,
        401,
        "Auth check failed: Credential has already been used",
        "no_nonce_replay",
    );
}

#[tokio::test]
async fn event_is_burned_even_when_the_handler_fails() {
    let t = start(vec![]).await;
    let path = "/api/v1/vm/999999";
    let h = t.auth_as(&t.keys, "GET", path, b"");
    let r = t.send("GET", path, Some(h.clone()), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, r#"{"error":"Resource not found"}"#)
    );
    let r = t.send("GET", path, Some(h), None).await;
    expect(
        &r,
        401,
        "Auth check failed: Credential has already been used",
        "burned",
    );
}

#[tokio::test]
async fn oversized_nostr_body_is_413() {
    let t = start(vec![running("30d")]).await;
    let path = "/api/v1/vm/1";
    let big = format!("{{\"reverse_dns\":\"{}\"}}", "a".repeat(3 * 1024 * 1024));
    let h = t.auth_as(&t.keys, "PATCH", path, b"");
    let r = t.send("PATCH", path, Some(h), Some(&big)).await;
    assert_eq!(r.status, 413);
}

// ---- shapes -------------------------------------------------------------------------

const VM_KEYS: &[&str] = &[
    "id",
    "created",
    "expires",
    "mac_address",
    "image",
    "template",
    "ssh_key",
    "ip_assignments",
    "status",
    "auto_renewal_enabled",
    "deleting_on",
    "subscription_id",
    "max_prepay_days",
    "host_ssh_keys",
];
const STATUS_KEYS: &[&str] = &[
    "timestamp",
    "state",
    "cpu_usage",
    "mem_usage",
    "uptime",
    "net_in",
    "net_out",
    "disk_write",
    "disk_read",
];
const TEMPLATE_KEYS: &[&str] = &[
    "id",
    "name",
    "created",
    "cpu",
    "memory",
    "disk_size",
    "disk_type",
    "disk_interface",
    "cost_plan",
    "region",
    "ip4_count",
    "ip6_count",
];
const COST_PLAN_KEYS: &[&str] = &[
    "id",
    "name",
    "currency",
    "amount",
    "other_price",
    "interval_amount",
    "interval_type",
];
const IMAGE_KEYS: &[&str] = &[
    "id",
    "distribution",
    "flavour",
    "version",
    "release_date",
    "cpu_arch",
    "default_username",
    "popularity",
];
const IP_KEYS: &[&str] = &["id", "ip", "gateway", "forward_dns", "reverse_dns"];
const POINT_KEYS: &[&str] = &[
    "timestamp",
    "cpu",
    "memory",
    "memory_size",
    "net_in",
    "net_out",
    "disk_write",
    "disk_read",
];
const SUBSCRIPTION_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "created",
    "expires",
    "is_active",
    "auto_renewal_enabled",
    "company_id",
    "line_items",
];
const LINE_ITEM_KEYS: &[&str] = &[
    "id",
    "subscription_id",
    "name",
    "description",
    "price",
    "setup_fee",
    "configuration",
    "resource",
];

fn assert_vm_shape(vm: &Value) {
    assert_keys(vm, VM_KEYS);
    assert_keys(&vm["status"], STATUS_KEYS);
    assert_keys(&vm["template"], TEMPLATE_KEYS);
    assert_keys(&vm["template"]["cost_plan"], COST_PLAN_KEYS);
    assert_keys(&vm["template"]["region"], &["id", "name", "company_id"]);
    assert_keys(&vm["image"], IMAGE_KEYS);
    assert_keys(&vm["ssh_key"], &["id", "name", "created", "vms"]);
    for ip in vm["ip_assignments"].as_array().expect("ips") {
        assert_keys(ip, IP_KEYS);
    }
}

#[tokio::test]
async fn vm_list_and_get_match_the_samples() {
    let unpaid = VmSpec {
        expires: None,
        state: VmState::Unknown,
        age: Duration::from_secs(60),
        ..VmSpec::default()
    };
    let paid = VmSpec {
        expires: Some(RelTime::At(t0() + chrono::Duration::days(30))),
        age: Duration::ZERO,
        ..VmSpec::default()
    };
    let t = start(vec![paid, unpaid]).await;
    let r = t.get("/api/v1/vm").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    let list = r.json();
    let vms = list["data"].as_array().expect("plain list");
    assert_eq!(vms.len(), 2);
    for vm in vms {
        assert_vm_shape(vm);
    }

    let paid = &vms[0];
    assert_eq!(paid["id"], 1);
    assert_eq!(paid["created"], "2026-11-23T06:44:53Z");
    assert_eq!(paid["expires"], "2026-12-23T06:44:53Z");
    // Subscription ≤ 1 day old → 1 day of grace, as in get_vm_list.json.
    assert_eq!(paid["deleting_on"], "2026-12-24T06:44:53Z");
    assert_eq!(paid["status"]["state"], "running");
    assert_eq!(paid["status"]["timestamp"], t0().timestamp());
    assert_ne!(paid["mac_address"], "ff:ff:ff:ff:ff:ff");
    assert_eq!(paid["template"]["cost_plan"]["currency"], "BTC");
    assert_eq!(paid["template"]["cost_plan"]["amount"], 10_000_000);
    assert_eq!(paid["subscription_id"], 1);
    assert_eq!(paid["max_prepay_days"], 365);
    assert_eq!(paid["ip_assignments"][0]["ip"], "127.1.0.1/8");

    let unpaid = &vms[1];
    assert_eq!(unpaid["expires"], Value::Null);
    assert_eq!(unpaid["deleting_on"], Value::Null);
    assert_eq!(unpaid["mac_address"], "ff:ff:ff:ff:ff:ff");
    assert_eq!(unpaid["ip_assignments"], serde_json::json!([]));
    assert_eq!(
        unpaid["status"],
        serde_json::json!({"timestamp":0,"state":"unknown","cpu_usage":0.0,"mem_usage":0.0,
            "uptime":0,"net_in":0,"net_out":0,"disk_write":0,"disk_read":0})
    );

    let one = t.get("/api/v1/vm/1").await.json();
    assert_vm_shape(&one["data"]);
    assert_eq!(one["data"]["id"], 1);
}

#[tokio::test]
async fn time_series_account_subscriptions_match_the_samples() {
    let mut fraction = running("30d");
    fraction.memory_as_fraction = true;
    let t = start(vec![running("30d"), fraction]).await;

    let ts = t.get("/api/v1/vm/1/time-series").await.json();
    let points = ts["data"].as_array().expect("points");
    assert_eq!(points.len(), 60);
    for p in points {
        assert_keys(p, POINT_KEYS);
    }
    let last = points.last().expect("last")["timestamp"]
        .as_i64()
        .expect("ts");
    assert_eq!(last, t.now() / 60 * 60, "ends at the current minute");
    assert_eq!(points[0]["timestamp"].as_i64(), Some(last - 59 * 60));
    let mem = points[59]["memory"].as_f64().expect("memory");
    let size = points[59]["memory_size"].as_f64().expect("size");
    assert!(mem > 1.0 && mem < size, "memory in bytes: {mem} of {size}");
    let cpu = points[59]["cpu"].as_f64().expect("cpu");
    assert!(cpu > 0.0 && cpu <= 1.0);
    let ts2 = t.get("/api/v1/vm/2/time-series").await.json();
    let m2 = ts2["data"][59]["memory"].as_f64().expect("memory");
    assert!(m2 > 0.0 && m2 <= 1.0, "fraction: {m2}");

    let acct = t.get(ACCOUNT).await;
    assert_eq!(acct.body, ACCOUNT_BODY);
    let pm = t.get("/api/v1/payment-methods").await;
    assert_eq!(pm.body, r#"{"data":[]}"#);

    let subs = t.get("/api/v1/subscriptions").await.json();
    assert_keys(&subs, &["data", "total", "limit", "offset"]);
    assert_eq!(
        (
            subs["total"].as_u64(),
            subs["limit"].as_u64(),
            subs["offset"].as_u64()
        ),
        (Some(2), Some(50), Some(0))
    );
    let first = &subs["data"][0];
    assert_keys(first, SUBSCRIPTION_KEYS);
    assert_eq!(first["id"], 2, "ordered by id descending");
    assert_keys(&first["line_items"][0], LINE_ITEM_KEYS);
    assert_eq!(
        first["line_items"][0]["resource"],
        serde_json::json!({"type":"vps","vm_id":2})
    );
    assert_eq!(
        first["line_items"][0]["price"],
        serde_json::json!({"currency":"BTC","amount":10000000})
    );

    let page = t.get("/api/v1/subscriptions?limit=1&offset=1").await.json();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["data"][0]["id"], 1);
    let capped = t.get("/api/v1/subscriptions?limit=1000").await.json();
    assert_eq!(capped["limit"], 100);
    let bad = t.get("/api/v1/subscriptions?limit=x").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body,
        "Failed to deserialize query string: limit: invalid digit found in string"
    );

    let pay = t.get("/api/v1/subscriptions/1/payments").await;
    assert_eq!(pay.body, r#"{"data":[],"total":0,"limit":50,"offset":0}"#);
}

#[tokio::test]
async fn renew_quote_counts_calendar_months_from_expiry() {
    let mut eur = running("30d");
    eur.expires = Some(RelTime::At(t0() + chrono::Duration::days(30)));
    eur.template = "Small EUR".parse().expect("template");
    let paid = VmSpec {
        expires: Some(RelTime::At(t0() + chrono::Duration::days(30))),
        ..VmSpec::default()
    };
    let unpaid = VmSpec {
        expires: None,
        age: Duration::ZERO,
        ..VmSpec::default()
    };
    let t = start(vec![paid, unpaid, eur]).await;
    let q = t.get("/api/v1/vm/1/renew/quote").await;
    assert_eq!(
        q.body,
        r#"{"data":{"amount":10000000,"tax":0,"processing_fee":0,"currency":"BTC","time":2678400}}"#
    );
    let q3 = t.get("/api/v1/vm/1/renew/quote?intervals=3").await.json();
    assert_eq!(
        (q3["data"]["amount"].as_u64(), q3["data"]["time"].as_u64()),
        (Some(30_000_000), Some(8_035_200))
    );
    let qu = t.get("/api/v1/vm/2/renew/quote").await.json();
    assert_eq!(qu["data"]["time"], 2_592_000, "unpaid: one month from now");
    let bad = t.get("/api/v1/vm/1/renew/quote?intervals=0").await;
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (400, r#"{"error":"intervals must be between 1 and 120"}"#)
    );
    let fiat = t
        .get("/api/v1/vm/3/renew/quote?method=revolut")
        .await
        .json();
    assert_eq!(
        (
            fiat["data"]["currency"].as_str(),
            fiat["data"]["amount"].as_u64()
        ),
        (Some("EUR"), Some(400))
    );
    let ln = t.get("/api/v1/vm/3/renew/quote").await.json();
    assert_eq!(
        ln["data"]["currency"], "BTC",
        "fiat plan quoted for Lightning in millisats"
    );
}

// ---- errors, ownership, routing -------------------------------------------------------

#[tokio::test]
async fn ownership_and_not_found_errors() {
    let t = start(vec![running("30d"), running("30d")]).await;
    let stranger = Keys::generate();
    let r = t.get_as(&stranger, "/api/v1/vm/1").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, r#"{"error":"VM does not belong to you"}"#)
    );
    assert_eq!(r.content_type, "application/json");
    let r = t.get_as(&stranger, "/api/v1/vm").await;
    assert_eq!(
        r.body, r#"{"data":[]}"#,
        "first call upserts an empty account"
    );
    let r = t
        .get_as(&stranger, "/api/v1/subscriptions/1/payments")
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"{"error":"Access denied: not your subscription"}"#)
    );
    let r = t.get_as(&stranger, "/api/v1/subscriptions/1").await;
    assert_eq!(r.status, 403);

    let r = t.get("/api/v1/vm/999999").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, r#"{"error":"Resource not found"}"#)
    );
    t.sim.remove_vm(2);
    let r = t.get("/api/v1/vm/2").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, r#"{"error":"VM not found"}"#)
    );
    let list = t.get("/api/v1/vm").await.json();
    assert_eq!(
        list["data"].as_array().map(Vec::len),
        Some(1),
        "removed VM not listed"
    );
    // Ownership is checked before deletion.
    let r = t.get_as(&stranger, "/api/v1/vm/2").await;
    assert_eq!(r.status, 403);

    let r = t.get("/api/v1/vm/abc").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Invalid URL: Cannot parse `abc` to a `u64`")
    );
    assert_eq!(r.content_type, "text/plain; charset=utf-8");

    let r = t.get("/api/v1/nope").await;
    assert_eq!((r.status, r.body.as_str()), (404, ""));
    let r = t.call("POST", "/api/v1/vm/1/restart").await;
    assert_eq!((r.status, r.body.as_str()), (405, ""));
    let r = t.get("/api/v1/vm/").await;
    assert_eq!(r.status, 404, "no trailing-slash normalisation");
}

#[tokio::test]
async fn power_actions_change_state_and_are_recorded() {
    let mut stopped = running("30d");
    stopped.state = VmState::Stopped;
    let t = start(vec![running("30d"), stopped]).await;
    for (path, state) in [
        ("/api/v1/vm/1/stop", "stopped"),
        ("/api/v1/vm/1/start", "running"),
        ("/api/v1/vm/1/restart", "running"),
        ("/api/v1/vm/2/start", "running"),
    ] {
        let r = t.call("PATCH", path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, r#"{"data":null}"#),
            "{path}"
        );
        let id = &path[11..12];
        let vm = t.get(&format!("/api/v1/vm/{id}")).await.json();
        assert_eq!(vm["data"]["status"]["state"], state, "{path}");
    }
    let vm1 = t.sim.vm(1).expect("vm 1");
    let actions: Vec<String> = vm1
        .actions
        .iter()
        .map(|a| format!("{:?}", a.action))
        .collect();
    assert_eq!(actions, ["Stop", "Start", "Restart"]);
    t.clock.advance(chrono::Duration::seconds(90));
    let vm = t.get("/api/v1/vm/1").await.json();
    assert_eq!(vm["data"]["status"]["uptime"], 90, "restart reset uptime");
    let hist = t.get("/api/v1/vm/1/history").await.json();
    assert_eq!(hist["data"][0]["action_type"], "restarted");
}

// ---- rate limit -----------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_runs_before_auth_and_sends_retry_after() {
    let t = start_with(|keys| {
        let mut s = scenario_for(keys, vec![]);
        s.rate_limit = RateLimitSettings {
            per_minute: 3,
            ..RateLimitSettings::default()
        };
        s
    })
    .await;
    for _ in 0..3 {
        assert_eq!(t.get(ACCOUNT).await.status, 200);
    }
    let r = t.send("GET", ACCOUNT, None, None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (429, "Rate limit exceeded"),
        "429 before auth's 403"
    );
    assert!(r.content_type.starts_with("text/plain"));
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert!(r.headers.get("x-ratelimit-remaining").is_none());

    // Another client IP (right-most X-Forwarded-For) has its own window.
    let auth = t.auth_as(&t.keys, "GET", ACCOUNT, b"");
    let r = t
        .http
        .get(t.url(ACCOUNT))
        .header("authorization", auth)
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let logged = t.sim.requests();
    assert_eq!(logged.iter().filter(|l| l.status == 429).count(), 1);
    assert_eq!(
        logged.last().map(|l| l.client_ip.to_string()),
        Some("203.0.113.7".into())
    );
}

#[tokio::test]
async fn rate_limit_window_reopens() {
    let t = start_with(|keys| {
        let mut s = scenario_for(keys, vec![]);
        s.rate_limit = RateLimitSettings {
            per_minute: 1,
            window: Duration::from_millis(300),
            ..RateLimitSettings::default()
        };
        s
    })
    .await;
    assert_eq!(t.get(ACCOUNT).await.status, 200);
    assert_eq!(t.get(ACCOUNT).await.status, 429);
    wait_until("window reopens", Duration::from_secs(5), || async {
        t.get(ACCOUNT).await.status == 200
    })
    .await;
}

// ---- faults ---------------------------------------------------------------------------

#[tokio::test]
async fn every_fault_kind_is_observable() {
    let t = start(vec![running("30d")]).await;
    let ts = "/api/v1/vm/{id}/time-series";
    let inject = |kind| {
        t.sim
            .inject_fault(Fault::new(EndpointMatch::template(ts), kind).times(1))
    };
    let path = "/api/v1/vm/1/time-series";

    inject(FaultKind::Status(500));
    let r = t.get(path).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (500, r#"{"error":"An internal error occurred"}"#)
    );
    assert_eq!(t.get(path).await.status, 200, "fault used up");

    inject(FaultKind::Status(502));
    let r = t.get(path).await;
    assert_eq!(r.status, 502);
    assert!(
        r.content_type.starts_with("text/html"),
        "{}",
        r.content_type
    );
    assert!(r.body.contains("502 Bad Gateway"));

    inject(FaultKind::Status(503));
    let r = t.get(path).await;
    assert!(r.status == 503 && r.content_type.starts_with("text/html"));

    inject(FaultKind::Status(404));
    let r = t.get(path).await;
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (404, "application/json")
    );

    inject(FaultKind::MalformedJson);
    let r = t.get(path).await;
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/json")
    );
    assert!(serde_json::from_str::<Value>(&r.body).is_err());

    inject(FaultKind::Unauthorized);
    let r = t.get(path).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Auth check failed: Event signature invalid")
    );

    inject(FaultKind::RateLimited {
        retry_after_secs: 7,
    });
    let r = t.get(path).await;
    assert_eq!((r.status, r.body.as_str()), (429, "Rate limit exceeded"));
    assert_eq!(r.headers["retry-after"], "7");

    inject(FaultKind::WrongContentType);
    let r = t.get(path).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/html"));

    inject(FaultKind::Latency(Duration::from_millis(300)));
    let started = Instant::now();
    let r = t.get(path).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);

    inject(FaultKind::TruncatedBody);
    let auth = t.auth_as(&t.keys, "GET", path, b"");
    let resp = t
        .http
        .get(t.url(path))
        .header("authorization", auth)
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let declared = resp.content_length().expect("content-length");
    match resp.bytes().await {
        Err(_) => {}
        Ok(b) => panic!("expected a cut body, got {} of {declared} bytes", b.len()),
    }

    inject(FaultKind::Hang);
    let auth = t.auth_as(&t.keys, "GET", path, b"");
    let err = t
        .http
        .get(t.url(path))
        .header("authorization", auth)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout(), "{err}");
    assert!(t
        .sim
        .requests()
        .iter()
        .any(|l| l.status == 0 && l.endpoint == ts));
}

#[tokio::test]
async fn faults_target_one_vm_and_last_until_cleared() {
    let t = start(vec![running("30d"), running("30d")]).await;
    t.sim.inject_fault(Fault::new(
        EndpointMatch::vm("/api/v1/vm/{id}", 2),
        FaultKind::Status(500),
    ));
    assert_eq!(t.get("/api/v1/vm/1").await.status, 200);
    for _ in 0..3 {
        assert_eq!(t.get("/api/v1/vm/2").await.status, 500);
    }
    t.sim.clear_faults();
    assert_eq!(t.get("/api/v1/vm/2").await.status, 200);
    t.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::Status(503)).times(2));
    assert_eq!(t.get(ACCOUNT).await.status, 503);
    assert_eq!(t.send("GET", "/nope", None, None).await.status, 503);
    assert_eq!(t.get(ACCOUNT).await.status, 200);
}

#[tokio::test]
async fn timeseries_error_and_stopped_vm_zeros() {
    let mut broken = running("30d");
    broken.timeseries_error = true;
    let mut stopped = running("30d");
    stopped.state = VmState::Stopped;
    let t = start(vec![broken, stopped]).await;
    let r = t.get("/api/v1/vm/1/time-series").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (500, r#"{"error":"An internal error occurred"}"#)
    );
    let ts = t.get("/api/v1/vm/2/time-series").await.json();
    for p in ts["data"].as_array().expect("points") {
        assert_eq!(p["cpu"], 0.0);
        assert_eq!(p["net_in"], 0.0);
    }
}

// ---- timeline, lifecycle, staleness -----------------------------------------------------

#[tokio::test]
async fn timeline_event_changes_state() {
    let t = start_with(|keys| {
        let mut s = scenario_for(keys, vec![running("30d")]);
        s.timeline = vec![TimelineEvent {
            at: Duration::from_secs(30),
            vm: Some(1),
            set_state: Some(VmState::Stopped),
            ..TimelineEvent::default()
        }];
        s
    })
    .await;
    let state = |v: Value| {
        v["data"]["status"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(state(t.get("/api/v1/vm/1").await.json()), "running");
    t.clock.advance(chrono::Duration::seconds(31));
    assert_eq!(state(t.get("/api/v1/vm/1").await.json()), "stopped");
}

#[tokio::test]
async fn timeline_applies_in_the_background() {
    let clock = Arc::new(SystemClock);
    let keys = Keys::generate();
    let mut s = scenario_for(&keys, vec![running("30d")]);
    s.timeline = vec![TimelineEvent {
        at: Duration::from_millis(500),
        vm: Some(1),
        set_state: Some(VmState::Stopped),
        ..TimelineEvent::default()
    }];
    let sim = LnvpsSim::start(loopback(), s, clock).await.expect("start");
    wait_until(
        "background tick stops the VM",
        Duration::from_secs(10),
        || async { sim.vm(1).map(|v| v.state) == Some(VmState::Stopped) },
    )
    .await;
    sim.shutdown_and_wait().await;
}

#[tokio::test]
async fn expiry_stops_then_grace_deletes() {
    let mut vm = running("1h");
    vm.age = Duration::from_secs(10 * 86_400); // 8..28 days old → 7 days of grace
    let t = start(vec![vm]).await;
    let v = t.get("/api/v1/vm/1").await.json();
    let expires = v["data"]["expires"].as_str().expect("expires").to_string();
    let deleting: DateTime<Utc> = v["data"]["deleting_on"]
        .as_str()
        .expect("deleting_on")
        .parse()
        .expect("time");
    let exp: DateTime<Utc> = expires.parse().expect("time");
    assert_eq!(deleting - exp, chrono::Duration::days(7));

    t.clock.advance(chrono::Duration::hours(2));
    let v = t.get("/api/v1/vm/1").await.json();
    assert_eq!(v["data"]["status"]["state"], "stopped");
    let hist = t.get("/api/v1/vm/1/history").await.json();
    assert_eq!(hist["data"][0]["action_type"], "expired");
    assert_eq!(hist["data"][0]["initiated_by"], "system");

    t.clock.advance(chrono::Duration::days(8));
    let r = t.get("/api/v1/vm/1").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, r#"{"error":"VM not found"}"#)
    );
    let subs = t.get("/api/v1/subscriptions").await.json();
    assert_eq!(subs["data"][0]["is_active"], false);
    assert_eq!(subs["data"][0]["auto_renewal_enabled"], false);
}

#[tokio::test]
async fn unpaid_vm_is_purged_after_an_hour() {
    let t = start(vec![VmSpec {
        expires: None,
        age: Duration::ZERO,
        ..VmSpec::default()
    }])
    .await;
    assert_eq!(t.get("/api/v1/vm/1").await.status, 200);
    t.clock.advance(chrono::Duration::minutes(61));
    let r = t.get("/api/v1/vm/1").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, r#"{"error":"Resource not found"}"#)
    );
}

#[tokio::test]
async fn stale_status_keeps_its_timestamp_and_usage_moves() {
    let mut lively = running("30d");
    lively.usage.variation = 0.8;
    lively.usage.period = Duration::from_secs(600);
    let t = start(vec![lively]).await;
    let status = |v: Value| v["data"]["status"].clone();
    let s1 = status(t.get("/api/v1/vm/1").await.json());
    t.clock.advance(chrono::Duration::seconds(150));
    let s2 = status(t.get("/api/v1/vm/1").await.json());
    assert_eq!(
        s2["timestamp"].as_i64(),
        s1["timestamp"].as_i64().map(|x| x + 150)
    );
    assert_ne!(s1["cpu_usage"], s2["cpu_usage"], "usage varies over time");
    t.sim.update_vm(1, |vm| vm.status_stale = true);
    t.clock.advance(chrono::Duration::seconds(600));
    let s3 = status(t.get("/api/v1/vm/1").await.json());
    assert_eq!(s3["timestamp"], s2["timestamp"], "frozen");
    t.sim.update_vm(1, |vm| vm.status_unavailable = true);
    let s4 = status(t.get("/api/v1/vm/1").await.json());
    assert_eq!(
        (s4["timestamp"].as_i64(), s4["state"].as_str()),
        (Some(0), Some("unknown"))
    );
}

// ---- control API, scenarios, shutdown ---------------------------------------------------

#[tokio::test]
async fn control_api_drives_the_simulator() {
    let t = start(vec![running("30d")]).await;
    let post = |path: &str, body: &str| {
        t.http
            .post(t.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let r = post(
        "/_sim/faults",
        r#"{"endpoint":"/api/v1/vm","kind":{"status":503},"remaining":1}"#,
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(t.get("/api/v1/vm").await.status, 503);
    assert_eq!(t.get("/api/v1/vm").await.status, 200);

    post("/_sim/faults", r#"{"kind":"hang"}"#)
        .await
        .expect("sent");
    let r = t
        .http
        .delete(t.url("/_sim/faults"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(t.get(ACCOUNT).await.status, 200);

    let r = post("/_sim/vm/1", r#"{"state":"stopped","expires":"2d"}"#)
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let vm = t.sim.vm(1).expect("vm");
    assert_eq!(vm.state, VmState::Stopped);
    assert_eq!(vm.expires, Some(t0() + chrono::Duration::days(2)));
    post("/_sim/vm/1", r#"{"remove":true}"#)
        .await
        .expect("sent");
    assert_eq!(t.get("/api/v1/vm/1").await.status, 404);

    let r = post("/_sim/vms", r#"{"state":"running","expires":"5d"}"#)
        .await
        .expect("sent");
    let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    assert_eq!(v["id"], 2);

    let logged = t
        .http
        .get(t.url("/_sim/requests"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    let logged: Value = serde_json::from_str(&logged).expect("json");
    let endpoints: Vec<&str> = logged
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|l| l["endpoint"].as_str())
        .collect();
    assert!(endpoints.contains(&"/api/v1/vm/{id}"), "{endpoints:?}");
    assert!(!endpoints.iter().any(|e| e.starts_with("/_sim")));
    let bad = post("/_sim/vm/1", r#"{"bogus":1}"#).await.expect("sent");
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn requests_are_logged_with_templates() {
    let t = start(vec![running("30d")]).await;
    t.get("/api/v1/vm/1/time-series").await;
    t.get("/api/v1/vm/abc").await;
    let log = t.sim.requests();
    let last = log.last().expect("logged");
    assert_eq!(
        (last.endpoint.as_str(), last.vm_id, last.status),
        ("/api/v1/vm/{id}", None, 400)
    );
    let first = &log[0];
    assert_eq!(first.endpoint, "/api/v1/vm/{id}/time-series");
    assert_eq!(
        (first.path.as_str(), first.vm_id, first.method.as_str()),
        ("/api/v1/vm/1/time-series", Some(1), "GET")
    );
    assert_eq!(first.at, t0());
}

#[tokio::test]
async fn scenarios_load_from_toml_json_and_builtins() {
    let owner = owner_hex(&Keys::generate());
    let dir = tempfile::tempdir().expect("tempdir");
    let toml_path = dir.path().join("s.toml");
    std::fs::write(
        &toml_path,
        r#"
[rate_limit]
per_minute = 100
window = "30s"

[[users]]
pubkey = "default"
payment_methods = [{ provider = "nwc", name = "Alby" }]

[[vms]]
owner = "default"
state = "running"
expires = "3d"
template = "Small EUR"
image = "ubuntu 24.04"
usage = { cpu = 0.5, memory = 0.25, net_in = 1000, variation = 0.2, period = "5m" }

[[vms]]
state = "stopped"
template = { name = "Custom big", cpu = 16, memory = 68719476736, cost = { amount = 2500, currency = "EUR", interval_type = "month" } }

[[timeline]]
at = "1m"
vm = 2
set_state = "running"

[[timeline]]
at = "2m"
add_fault = { endpoint = { template = "/api/v1/vm/{id}", vm_id = 1 }, kind = { status = 502 }, remaining = 2 }
"#,
    )
    .expect("write");
    let s = Scenario::load(toml_path.to_str().expect("utf8"), Some(&owner)).expect("toml loads");
    assert_eq!(s.vms.len(), 2);
    assert_eq!(s.vms[1].owner, owner);
    assert_eq!(s.rate_limit.window, Duration::from_secs(30));
    assert_eq!(s.users[0].payment_methods[0].name.as_deref(), Some("Alby"));

    let json_path = dir.path().join("s.json");
    std::fs::write(
        &json_path,
        r#"{"vms":[{"owner":"default","state":"creating","expires":"-1h"}],
            "timeline":[{"at":"10s","clear_faults":true}]}"#,
    )
    .expect("write");
    let j = Scenario::load(json_path.to_str().expect("utf8"), Some(&owner)).expect("json loads");
    assert_eq!(j.vms[0].state, VmState::Creating);

    let demo = Scenario::load("demo", Some(&owner)).expect("demo");
    assert_eq!(demo.vms.len(), 5);
    assert_eq!(
        Scenario::load("bench:250", Some(&owner))
            .expect("bench")
            .vms
            .len(),
        250
    );
    assert!(
        Scenario::load("demo", None).is_err(),
        "default owner needs a pubkey"
    );
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[[vms]]\nstat = \"running\"\n").expect("write");
    let err =
        Scenario::load(typo.to_str().expect("utf8"), Some(&owner)).expect_err("typo rejected");
    assert!(format!("{err:#}").contains("stat"), "{err:#}");

    // The TOML scenario runs: payment methods and the custom template show up.
    let keys = Keys::generate();
    let s =
        Scenario::load(toml_path.to_str().expect("utf8"), Some(&owner_hex(&keys))).expect("loads");
    let clock = Arc::new(ManualClock::new(t0()));
    let sim = LnvpsSim::start(loopback(), s, clock.clone())
        .await
        .expect("start");
    let t = TestSim {
        sim,
        clock,
        keys,
        http: client(),
    };
    let pm = t.get("/api/v1/payment-methods").await.json();
    assert_eq!(pm["data"][0]["provider"], "nwc");
    let vm2 = t.get("/api/v1/vm/2").await.json();
    assert_eq!(vm2["data"]["template"]["cpu"], 16);
    assert_eq!(vm2["data"]["template"]["cost_plan"]["currency"], "EUR");
    t.clock.advance(chrono::Duration::minutes(3));
    assert_eq!(t.get("/api/v1/vm/1").await.status, 502);
    let vm2 = t.get("/api/v1/vm/2").await.json();
    assert_eq!(vm2["data"]["status"]["state"], "running");
}

#[tokio::test]
async fn demo_scenario_is_lively() {
    let keys = Keys::generate();
    let s = Scenario::load("demo", Some(&owner_hex(&keys))).expect("demo");
    let clock = Arc::new(ManualClock::new(t0()));
    let sim = LnvpsSim::start(loopback(), s, clock.clone())
        .await
        .expect("start");
    let t = TestSim {
        sim,
        clock,
        keys,
        http: client(),
    };
    let list = t.get("/api/v1/vm").await.json();
    let vms = list["data"].as_array().expect("list");
    let states: Vec<&str> = vms
        .iter()
        .filter_map(|v| v["status"]["state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["running", "running", "stopped", "running", "creating"]
    );
    assert!(vms
        .iter()
        .any(|v| v["template"]["cost_plan"]["currency"] == "EUR"));
    let soon = t0() + chrono::Duration::days(2);
    assert!(vms.iter().any(|v| v["expires"]
        .as_str()
        .and_then(|e| e.parse::<DateTime<Utc>>().ok())
        .is_some_and(|e| e < soon)));
    t.clock.advance(chrono::Duration::minutes(3));
    let v5 = t.get("/api/v1/vm/5").await.json();
    assert_eq!(v5["data"]["status"]["state"], "running");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let t = start(vec![]).await;
    let url = t.url(ACCOUNT);
    t.sim.shutdown();
    wait_until("connections refused", Duration::from_secs(10), || async {
        client().get(&url).send().await.is_err()
    })
    .await;
}

// ---- watchdog steps: crash, hang, dead guests, failing actions, blackout, boot time ---

/// A port number free on loopback; the simulator opens it on each VM's own address.
async fn port_open(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Running VMs on `ips` (each test its own 127.x range, so parallel tests never share
/// an address), listening on a free port, with the given boot time.
async fn start_listening(ips: &[[u8; 4]], reboot: Duration) -> (TestSim, Vec<SocketAddr>) {
    let port = free_port();
    let vms: Vec<VmSpec> = ips
        .iter()
        .map(|ip| VmSpec {
            ipv4: Some(std::net::Ipv4Addr::from(*ip)),
            ..running("30d")
        })
        .collect();
    let t = start_with(|keys| {
        let mut s = scenario_for(keys, vms);
        s.settings.vm_listen_port = Some(port);
        s.settings.reboot_duration = reboot;
        s
    })
    .await;
    let addrs = ips.iter().map(|ip| SocketAddr::from((*ip, port))).collect();
    (t, addrs)
}

impl TestSim {
    /// Polls (running a worker pass each time) until `addr` is open/closed, or fails.
    async fn wait_port(&self, addr: SocketAddr, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.sim.tick();
            if port_open(addr).await == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "port {addr} never became {}",
                if want { "open" } else { "closed" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn state(&self, id: u64) -> String {
        let v = self.get(&format!("/api/v1/vm/{id}")).await.json();
        v["data"]["status"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// PATCH /vm/{id}/{action}: (status, body).
    async fn act(&self, id: u64, action: &str) -> (u16, String) {
        let r = self
            .call("PATCH", &format!("/api/v1/vm/{id}/{action}"))
            .await;
        (r.status, r.body)
    }
}

const DATA_NULL: &str = r#"{"data":null}"#;

#[tokio::test]
async fn crash_stops_the_vm_and_closes_its_port() {
    let (t, addrs) = start_listening(&[[127, 61, 0, 1]], Duration::ZERO).await;
    let addr = addrs[0];
    t.wait_port(addr, true).await;
    t.sim.crash_vm(1);
    assert_eq!(t.state(1).await, "stopped", "a crashed VM reads stopped");
    t.wait_port(addr, false).await;
    let hist = t.get("/api/v1/vm/1/history").await.json();
    let kinds: Vec<&str> = hist["data"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["action_type"].as_str())
        .collect();
    assert!(!kinds.contains(&"stopped"), "no owner stop: {kinds:?}");
    assert_eq!(t.act(1, "start").await, (200, DATA_NULL.into()));
    assert_eq!(t.state(1).await, "running");
    t.wait_port(addr, true).await;
}

#[tokio::test]
async fn hung_vm_runs_with_a_closed_port_until_restart_or_stop_start() {
    let (t, addrs) = start_listening(&[[127, 61, 1, 1]], Duration::ZERO).await;
    let addr = addrs[0];
    t.wait_port(addr, true).await;
    t.sim.set_hung(1, true);
    t.wait_port(addr, false).await;
    assert_eq!(t.state(1).await, "running", "hung, still reported running");
    assert_eq!(t.act(1, "restart").await.0, 200);
    t.wait_port(addr, true).await;

    t.sim.set_hung(1, true);
    t.wait_port(addr, false).await;
    assert_eq!(t.act(1, "stop").await.0, 200);
    assert_eq!(t.state(1).await, "stopped");
    assert_eq!(t.act(1, "start").await.0, 200);
    t.wait_port(addr, true).await;
}

#[tokio::test]
async fn stays_dead_accepts_every_action_but_never_answers() {
    let (t, addrs) = start_listening(&[[127, 61, 2, 1]], Duration::ZERO).await;
    let addr = addrs[0];
    t.wait_port(addr, true).await;
    t.sim.set_stays_dead(1, true);
    t.wait_port(addr, false).await;
    for action in ["restart", "stop", "start", "restart"] {
        assert_eq!(t.act(1, action).await, (200, DATA_NULL.into()), "{action}");
        assert!(!port_open(addr).await, "still dead after {action}");
    }
    assert_eq!(t.state(1).await, "running");
    // The operator repairs it: the next reboot brings it back.
    t.sim.set_stays_dead(1, false);
    assert!(
        !port_open(addr).await,
        "repairing does not reboot by itself"
    );
    assert_eq!(t.act(1, "restart").await.0, 200);
    t.wait_port(addr, true).await;
}

#[tokio::test]
async fn needs_power_cycle_ignores_restart_but_not_stop_then_start() {
    let (t, addrs) = start_listening(&[[127, 61, 3, 1]], Duration::ZERO).await;
    let addr = addrs[0];
    t.wait_port(addr, true).await;
    t.sim.set_needs_power_cycle(1, true);
    t.wait_port(addr, false).await;
    assert_eq!(t.act(1, "restart").await, (200, DATA_NULL.into()));
    assert_eq!(t.act(1, "restart").await.0, 200);
    assert!(!port_open(addr).await, "a restart does not help");
    assert!(t.sim.vm(1).expect("vm").needs_power_cycle);
    assert_eq!(t.act(1, "stop").await.0, 200);
    assert_eq!(t.act(1, "start").await.0, 200);
    t.wait_port(addr, true).await;
    assert!(
        !t.sim.vm(1).expect("vm").needs_power_cycle,
        "fixed for good"
    );
    // Afterwards an ordinary hang is fixed by a restart again.
    t.sim.set_hung(1, true);
    t.wait_port(addr, false).await;
    assert_eq!(t.act(1, "restart").await.0, 200);
    t.wait_port(addr, true).await;
}

#[tokio::test]
async fn action_failures_answer_the_real_error_and_are_recorded() {
    let t = start(vec![running("30d")]).await;
    t.sim.fail_actions(
        1,
        ActionFailure::status(500)
            .only(&[PowerAction::Restart])
            .times(2),
    );
    for _ in 0..2 {
        let r = t.call("PATCH", "/api/v1/vm/1/restart").await;
        assert_eq!(r.status, 500);
        assert_eq!(r.body, r#"{"error":"An internal error occurred"}"#);
        assert!(r.content_type.starts_with("application/json"));
        t.clock.advance(chrono::Duration::milliseconds(1500));
    }
    assert_eq!(t.act(1, "restart").await.0, 200, "only twice");

    // Every action, until cleared; the VM is left as it was.
    t.sim.fail_actions(1, ActionFailure::status(503));
    let r = t.call("PATCH", "/api/v1/vm/1/stop").await;
    assert_eq!(r.status, 503);
    assert!(r.content_type.starts_with("text/html"), "the proxy's page");
    assert_eq!(t.state(1).await, "running", "a failed stop changes nothing");
    t.sim.clear_action_failures(1);
    assert_eq!(t.act(1, "stop").await.0, 200);

    let log: Vec<(u64, PowerAction, u16)> = t
        .sim
        .actions()
        .iter()
        .map(|a| (a.vm_id, a.action, a.status))
        .collect();
    use PowerAction::{Restart, Stop};
    assert_eq!(
        log,
        [
            (1, Restart, 500),
            (1, Restart, 500),
            (1, Restart, 200),
            (1, Stop, 503),
            (1, Stop, 200)
        ]
    );
    let at: Vec<DateTime<Utc>> = t.sim.actions().iter().map(|a| a.at).collect();
    assert_eq!(at[0], t0());
    assert_eq!(
        at[1],
        t0() + chrono::Duration::milliseconds(1500),
        "times keep their milliseconds"
    );
    assert_eq!(t.sim.vm(1).expect("vm").actions.len(), 5);
}

#[tokio::test]
async fn blackout_fails_every_endpoint_while_vms_run_on() {
    let (t, addrs) = start_listening(&[[127, 61, 4, 1]], Duration::ZERO).await;
    let addr = addrs[0];
    t.wait_port(addr, true).await;
    t.sim
        .start_blackout(BlackoutLength::For(Duration::from_secs(30)));
    for (method, path) in [
        ("GET", "/api/v1/vm"),
        ("GET", "/api/v1/vm/templates"),
        ("PATCH", "/api/v1/vm/1/restart"),
        ("GET", "/api/v1/nope"),
    ] {
        let r = t.call(method, path).await;
        assert_eq!(r.status, 503, "{method} {path}");
        assert!(r.content_type.starts_with("text/html"), "{method} {path}");
    }
    assert!(t.sim.actions().is_empty(), "nothing reached the API");
    assert!(port_open(addr).await, "the VM still answers");
    assert_eq!(
        t.sim.vm(1).expect("vm").state,
        VmState::Running,
        "and keeps its state"
    );
    // The control API is not blacked out.
    let b = t
        .http
        .get(t.url("/_sim/blackout"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    let b: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(b["active"], true);
    t.clock.advance(chrono::Duration::seconds(30));
    assert_eq!(t.get("/api/v1/vm").await.status, 200, "over after 30 s");
    assert!(!t.sim.blackout().active);

    t.sim.start_blackout(BlackoutLength::UntilCleared);
    t.clock.advance(chrono::Duration::days(2));
    assert_eq!(t.get("/api/v1/vm").await.status, 503);
    t.sim.end_blackout();
    assert_eq!(t.get("/api/v1/vm").await.status, 200);
}

#[tokio::test]
async fn restart_keeps_the_port_closed_for_the_reboot_duration() {
    let (t, addrs) = start_listening(&[[127, 61, 5, 1]], Duration::from_secs(5)).await;
    let addr = addrs[0];
    t.wait_port(addr, true).await;
    assert_eq!(t.act(1, "restart").await.0, 200);
    t.wait_port(addr, false).await;
    assert_eq!(
        t.state(1).await,
        "running",
        "LNVPS shows running while it boots"
    );
    t.clock.advance(chrono::Duration::seconds(4));
    t.sim.tick();
    assert!(!port_open(addr).await, "still booting after 4 s");
    t.clock.advance(chrono::Duration::seconds(1));
    t.wait_port(addr, true).await;
    // A stop during the boot ends it; a start boots again.
    assert_eq!(t.act(1, "stop").await.0, 200);
    assert!(t.sim.vm(1).expect("vm").booting_until.is_none());
    assert_eq!(t.act(1, "start").await.0, 200);
    t.wait_port(addr, false).await;
    t.clock.advance(chrono::Duration::seconds(5));
    t.wait_port(addr, true).await;
    // Zero: the port never closes.
    t.sim.set_reboot_duration(Duration::ZERO);
    assert_eq!(t.act(1, "restart").await.0, 200);
    assert!(port_open(addr).await);
}

#[tokio::test]
async fn reboot_ends_on_time_on_the_system_clock() {
    let keys = Keys::generate();
    let port = free_port();
    let ip = [127, 61, 6, 1];
    let mut s = scenario_for(
        &keys,
        vec![VmSpec {
            ipv4: Some(std::net::Ipv4Addr::from(ip)),
            ..running("30d")
        }],
    );
    s.settings.vm_listen_port = Some(port);
    s.settings.reboot_duration = Duration::from_millis(400);
    let sim = LnvpsSim::start(loopback(), s, Arc::new(SystemClock))
        .await
        .expect("start");
    let t = TestSim {
        sim,
        clock: Arc::new(ManualClock::new(t0())),
        keys,
        http: client(),
    };
    let addr = SocketAddr::from((ip, port));
    wait_until("port open", Duration::from_secs(5), || port_open(addr)).await;
    let sent = Instant::now();
    assert_eq!(t.act(1, "restart").await.0, 200);
    wait_until("port closes", Duration::from_secs(5), || async {
        !port_open(addr).await
    })
    .await;
    // No manual ticks: the simulator wakes itself at the end of the boot.
    let deadline = sent + Duration::from_secs(5);
    while !port_open(addr).await {
        assert!(Instant::now() < deadline, "port never reopened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "reopened after {took:?}"
    );
    t.sim.shutdown_and_wait().await;
}

#[tokio::test]
async fn timeline_scripts_the_watchdog_steps() {
    let port = free_port();
    let toml = format!(
        r#"
        [settings]
        vm_listen_port = {port}
        reboot_duration = "0s"
        [[vms]]
        ipv4 = "127.61.7.1"
        expires = "30d"
        [[vms]]
        ipv4 = "127.61.7.2"
        expires = "30d"
        [[vms]]
        ipv4 = "127.61.7.3"
        expires = "30d"
        [[vms]]
        ipv4 = "127.61.7.4"
        expires = "30d"
        [[timeline]]
        at = "10s"
        vm = 1
        crash = true
        fail_actions = {{ actions = ["start"], status = 500, times = 1 }}
        [[timeline]]
        at = "10s"
        vm = 2
        hang = true
        [[timeline]]
        at = "10s"
        vm = 3
        stays_dead = true
        [[timeline]]
        at = "10s"
        vm = 4
        needs_power_cycle = true
        [[timeline]]
        at = "20s"
        blackout = "15s"
        [[timeline]]
        at = "40s"
        reboot_duration = "3s"
        "#
    );
    let t = start_with(|keys| {
        let mut s = Scenario::from_toml(&toml).expect("scenario parses");
        s.resolve_owners(Some(&owner_hex(keys))).expect("owners");
        s
    })
    .await;
    let addr = |n: u8| SocketAddr::from(([127, 61, 7, n], port));
    for n in 1..=4 {
        t.wait_port(addr(n), true).await;
    }
    t.clock.advance(chrono::Duration::seconds(10));
    for n in 1..=4 {
        t.wait_port(addr(n), false).await;
    }
    assert_eq!(t.state(1).await, "stopped", "crashed");
    for id in 2..=4 {
        assert_eq!(t.state(id).await, "running", "hung vm {id}");
    }
    assert_eq!(t.act(1, "start").await.0, 500, "fails once");
    assert_eq!(t.act(1, "start").await.0, 200);
    t.wait_port(addr(1), true).await;
    assert_eq!(t.act(2, "restart").await.0, 200);
    t.wait_port(addr(2), true).await;
    assert_eq!(t.act(3, "restart").await.0, 200);
    assert_eq!(t.act(4, "restart").await.0, 200);
    assert!(!port_open(addr(3)).await && !port_open(addr(4)).await);
    assert_eq!(t.act(4, "stop").await.0, 200);
    assert_eq!(t.act(4, "start").await.0, 200);
    t.wait_port(addr(4), true).await;

    t.clock.advance(chrono::Duration::seconds(10));
    assert_eq!(t.get("/api/v1/vm").await.status, 503, "blackout at 20 s");
    assert!(port_open(addr(1)).await, "VMs run on");
    t.clock.advance(chrono::Duration::seconds(15));
    assert_eq!(t.get("/api/v1/vm").await.status, 200, "over at 35 s");

    t.clock.advance(chrono::Duration::seconds(5));
    assert_eq!(t.act(2, "restart").await.0, 200);
    t.wait_port(addr(2), false).await;
    t.clock.advance(chrono::Duration::seconds(3));
    t.wait_port(addr(2), true).await;
}

#[tokio::test]
async fn control_api_drives_the_watchdog_steps() {
    let (t, addrs) = start_listening(&[[127, 61, 8, 1], [127, 61, 8, 2]], Duration::ZERO).await;
    let post = |path: &str, body: &str| {
        t.http
            .post(t.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let json_of = |r: reqwest::Response| async move {
        let text = r.text().await.expect("body");
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    t.wait_port(addrs[0], true).await;
    let r = post("/_sim/vm/1", r#"{"crash":true}"#).await.expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["state"], "stopped");
    t.wait_port(addrs[0], false).await;

    let r = post("/_sim/vm/2", r#"{"needs_power_cycle":true,"fail_actions":{"actions":["restart"],"status":500,"times":1}}"#)
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    t.wait_port(addrs[1], false).await;
    assert_eq!(t.act(2, "restart").await.0, 500);
    assert_eq!(t.act(2, "restart").await.0, 200);
    assert!(!port_open(addrs[1]).await, "restart does not help");
    let r = post("/_sim/vm/2", r#"{"stays_dead":true}"#)
        .await
        .expect("sent");
    assert_eq!(json_of(r).await["stays_dead"], true);
    let bad = post("/_sim/vm/2", r#"{"fail_actions":{"status":200}}"#)
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400, "a success status is no failure");

    let r = post("/_sim/blackout", r#"{"duration":"10s"}"#)
        .await
        .expect("sent");
    let b = json_of(r).await;
    assert_eq!(b["active"], true);
    assert_eq!(
        b["until"].as_str().map(|s| s.parse::<DateTime<Utc>>().ok()),
        Some(Some(t0() + chrono::Duration::seconds(10)))
    );
    assert_eq!(t.get("/api/v1/vm").await.status, 503);
    let r = t
        .http
        .delete(t.url("/_sim/blackout"))
        .send()
        .await
        .expect("sent");
    assert_eq!(json_of(r).await["active"], false);
    assert_eq!(t.get("/api/v1/vm").await.status, 200);
    let r = post("/_sim/blackout", "").await.expect("sent");
    assert_eq!(json_of(r).await["until"], Value::Null, "until cleared");
    assert_eq!(t.get("/api/v1/vm").await.status, 503);
    t.http
        .delete(t.url("/_sim/blackout"))
        .send()
        .await
        .expect("sent");

    let r = post("/_sim/reboot-duration", r#"{"duration":"2s"}"#)
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(t.act(1, "start").await.0, 200);
    t.wait_port(addrs[0], false).await;
    t.clock.advance(chrono::Duration::seconds(2));
    t.wait_port(addrs[0], true).await;

    let r = t
        .http
        .get(t.url("/_sim/actions"))
        .send()
        .await
        .expect("sent");
    let actions = json_of(r).await;
    let rows: Vec<(u64, &str, u64)> = actions
        .as_array()
        .expect("list")
        .iter()
        .map(|a| {
            (
                a["vm_id"].as_u64().unwrap_or(0),
                a["action"].as_str().unwrap_or(""),
                a["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(2, "restart", 500), (2, "restart", 200), (1, "start", 200)]
    );
    assert!(actions[0]["at"]
        .as_str()
        .is_some_and(|s| s.parse::<DateTime<Utc>>().is_ok()));
    let r = t
        .http
        .delete(t.url("/_sim/actions"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert!(t.sim.actions().is_empty());
}
