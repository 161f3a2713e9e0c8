//! The simulator's renewal payments: quote, renew (BOLT11 invoices that decode to the
//! quoted amount), invoice reuse, payment lookup, settlement through the NIP-47 wallet
//! service on a real local relay, wallet failures, max-prepay, and the server-side
//! auto-renewal with its single attempt and its double-pay trap (docs/providers.md).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use lightning_invoice::Bolt11Invoice;
use nostr::Keys;
use nwc::prelude::{NostrWalletConnectOptions, NostrWalletConnectURI, PayInvoiceRequest, NWC};
use serde_json::Value;

use vpswatch_model::clock::{ManualClock, SharedClock};
use vpswatch_providers::lnvps::Nip98Signer;
use vpswatch_sim::lnvps::{
    AutoRenewOutcome, LnvpsSim, LnvpsSimHandle, PaymentMethodSpec, RelTime, Scenario, VmSpec,
};
use vpswatch_sim::nwc_wallet::{NwcWalletService, WalletFailure};
use vpswatch_sim::scenario::TemplateSpec;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 6, 0, 0)
        .single()
        .expect("valid time")
}

struct T {
    sim: LnvpsSimHandle,
    clock: Arc<ManualClock>,
    keys: Keys,
    signer: Nip98Signer,
    http: reqwest::Client,
    vm: u64,
}

/// A sim with one running "Daily BTC" VM (0.005 mBTC/day as 500 000 msat) expiring in
/// `expires_in` seconds, owned by a fresh key with a saved NWC method.
async fn start(expires_in: i64, auto_renew: bool) -> T {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = Keys::generate();
    let clock = Arc::new(ManualClock::new(t0()));
    let shared: SharedClock = clock.clone();
    let sim = LnvpsSim::start(
        "127.0.0.1:0".parse().expect("addr"),
        Scenario::default(),
        shared.clone(),
    )
    .await
    .expect("sim starts");
    let owner = keys.public_key().to_hex();
    let vm = sim.add_vm(
        &owner,
        VmSpec {
            owner: owner.clone(),
            expires: Some(RelTime::Offset(expires_in)),
            age: Duration::from_secs(40 * 86_400),
            template: TemplateSpec {
                name: "Daily BTC".into(),
                ..TemplateSpec::default()
            },
            auto_renewal_enabled: auto_renew,
            ..VmSpec::default()
        },
    );
    sim.set_payment_methods(
        &owner,
        vec![PaymentMethodSpec {
            is_default: true,
            ..PaymentMethodSpec::default()
        }],
    );
    T {
        sim,
        clock,
        signer: Nip98Signer::new(keys.clone(), shared),
        keys,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        vm,
    }
}

impl T {
    async fn get(&self, path: &str) -> (u16, Value) {
        let url = url::Url::parse(&format!("{}{}", self.sim.base_url(), path)).expect("url");
        let auth = self
            .signer
            .authorization(&http::Method::GET, &url, b"")
            .expect("sign");
        let r = self
            .http
            .get(url)
            .header("authorization", auth)
            .send()
            .await
            .expect("sent");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn expires(&self) -> DateTime<Utc> {
        self.sim
            .vm(self.vm)
            .and_then(|v| v.expires)
            .expect("paid vm")
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
        self.sim.tick();
    }
}

async fn wallet(t: &T, balance_msat: u64) -> (NwcWalletService, NWC) {
    let w = NwcWalletService::start(
        t.sim.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        balance_msat,
    )
    .await
    .expect("wallet starts");
    let uri = NostrWalletConnectURI::parse(w.uri()).expect("uri");
    let nwc = NWC::with_opts(
        uri,
        NostrWalletConnectOptions::new().timeout(Duration::from_secs(3)),
    );
    (w, nwc)
}

#[tokio::test]
async fn renew_invoice_decodes_to_the_quote_and_is_reused_until_paid() {
    let t = start(3 * 86_400, false).await;
    let id = t.vm;
    let (s, quote) = t
        .get(&format!("/api/v1/vm/{id}/renew/quote?intervals=2"))
        .await;
    assert_eq!(s, 200, "{quote}");
    assert_eq!(quote["data"]["amount"], 1_000_000);
    assert_eq!(quote["data"]["time"], 2 * 86_400);

    let (s, p) = t
        .get(&format!(
            "/api/v1/vm/{id}/renew?method=lightning&intervals=2"
        ))
        .await;
    assert_eq!(s, 200, "{p}");
    let p = &p["data"];
    assert_eq!(p["is_paid"], false);
    assert_eq!(p["amount"], 1_000_000);
    assert_eq!(p["time"], 2 * 86_400);
    let bolt11 = p["data"]["lightning"].as_str().expect("bolt11");
    let inv = Bolt11Invoice::from_str(bolt11).expect("a valid BOLT11 invoice");
    assert_eq!(inv.amount_milli_satoshis(), Some(1_000_000));
    assert_eq!(inv.expiry_time(), Duration::from_secs(600));
    assert_eq!(
        inv.duration_since_epoch().as_secs() as i64,
        t0().timestamp()
    );
    let hash = hex::encode(AsRef::<[u8]>::as_ref(inv.payment_hash()));
    assert_eq!(
        p["id"].as_str(),
        Some(hash.as_str()),
        "id is the payment hash"
    );

    // Same method and time: the same invoice comes back; the quote reports it.
    let (_, again) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=2")).await;
    assert_eq!(again["data"]["id"], p["id"]);
    assert_eq!(t.sim.payments(id).len(), 1);
    // Another interval count is another invoice.
    let (_, one) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=1")).await;
    assert_ne!(one["data"]["id"], p["id"]);

    let (s, look) = t.get(&format!("/api/v1/payment/{hash}")).await;
    assert_eq!(s, 200);
    assert_eq!(look["data"]["is_paid"], false);
    assert_eq!(look["data"]["vm_id"], id);
    let (s, _) = t.get("/api/v1/payment/nothex").await;
    assert_eq!(s, 400);
    let (s, _) = t.get(&format!("/api/v1/payment/{}", "ab".repeat(32))).await;
    assert_eq!(s, 404);

    // Paid through the NWC wallet service on a real relay.
    let before = t.expires();
    let (w, nwc) = wallet(&t, 5_000_000).await;
    assert_eq!(nwc.get_balance().await.expect("balance"), 5_000_000);
    let paid = nwc
        .pay_invoice(PayInvoiceRequest::new(bolt11))
        .await
        .expect("paid");
    let preimage = hex::decode(&paid.preimage).expect("hex preimage");
    use bitcoin_hashes::Hash;
    assert_eq!(
        bitcoin_hashes::sha256::Hash::hash(&preimage)
            .to_byte_array()
            .to_vec(),
        hex::decode(&hash).expect("hex")
    );
    assert_eq!(w.balance_msat(), 4_000_000);
    let (_, look) = t.get(&format!("/api/v1/payment/{hash}")).await;
    assert_eq!(look["data"]["is_paid"], true);
    assert_eq!(t.expires() - before, chrono::Duration::days(2));
    // A paid invoice cannot be paid twice.
    let err = nwc
        .pay_invoice(PayInvoiceRequest::new(bolt11))
        .await
        .expect_err("already paid");
    assert!(err.to_string().contains("already paid"), "{err}");
    assert_eq!(w.balance_msat(), 4_000_000);
    // The subscription lists the paid Renewal.
    let (_, pays) = t.get(&format!("/api/v1/subscriptions/{id}/payments")).await;
    let paid_renewals = pays["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|p| p["is_paid"] == true && p["payment_type"] == "Renewal")
        .count();
    assert_eq!(paid_renewals, 1);
    w.shutdown().await;
    let _ = t.keys;
}

#[tokio::test]
async fn wallet_fails_on_command_and_invoices_expire() {
    let t = start(3 * 86_400, false).await;
    let id = t.vm;
    let (w, nwc) = wallet(&t, 100_000).await;
    let (_, p) = t.get(&format!("/api/v1/vm/{id}/renew")).await;
    let bolt11 = p["data"]["lightning"]
        .as_str()
        .or(p["data"]["data"]["lightning"].as_str())
        .expect("bolt11")
        .to_string();
    let err = nwc
        .pay_invoice(PayInvoiceRequest::new(bolt11.clone()))
        .await
        .expect_err("insufficient");
    assert!(
        err.to_string().contains("INSUFFICIENT_BALANCE")
            || err.to_string().contains("insufficient"),
        "{err}"
    );
    w.set_balance_msat(10_000_000);
    w.fail(WalletFailure::NoAnswer, Some(1));
    nwc.pay_invoice(PayInvoiceRequest::new(bolt11.clone()))
        .await
        .expect_err("times out");
    assert!(w.payments().is_empty());
    w.fail(WalletFailure::PaymentFailed, Some(1));
    nwc.pay_invoice(PayInvoiceRequest::new(bolt11.clone()))
        .await
        .expect_err("fails");
    // After 10 minutes the invoice is expired: not payable, and renew mints a new one.
    t.advance(601);
    let err = nwc
        .pay_invoice(PayInvoiceRequest::new(bolt11.clone()))
        .await
        .expect_err("expired");
    assert!(err.to_string().contains("expired"), "{err}");
    let (_, p2) = t.get(&format!("/api/v1/vm/{id}/renew")).await;
    assert_ne!(p2["data"]["id"], p["data"]["id"]);
    w.shutdown().await;
}

#[tokio::test]
async fn max_prepay_rejects_with_500() {
    let t = start(3 * 86_400, false).await;
    let id = t.vm;
    let (s, body) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=120")).await;
    assert_eq!(s, 200, "120 days fit in 365: {body}");
    t.sim.update_vm(id, |vm| {
        vm.expires = vm.expires.map(|e| e + chrono::Duration::days(300));
    });
    let (s, body) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=100")).await;
    assert_eq!(s, 500);
    assert_eq!(body["error"], "An internal error occurred");
    let (s, _) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=0")).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn server_auto_renewal_fires_once_in_its_lead_window() {
    // Daily plan: lead = min(24 h, 12 h) = 12 h.
    let t = start(13 * 3600, true).await;
    let before = t.expires();
    t.advance(1800); // 12.5 h left: outside the lead
    assert!(t.sim.auto_renew_log().is_empty());
    t.advance(3600); // 11.5 h left
    let log = t.sim.auto_renew_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, AutoRenewOutcome::Paid);
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    t.advance(60);
    assert_eq!(t.sim.auto_renew_log().len(), 1, "one attempt per expiry");
}

#[tokio::test]
async fn server_auto_renewal_failure_is_not_retried() {
    let t = start(13 * 3600, true).await;
    t.sim.set_saved_wallet_fails(true);
    let before = t.expires();
    t.advance(2 * 3600);
    t.advance(3600);
    let log = t.sim.auto_renew_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, AutoRenewOutcome::Failed);
    assert_eq!(t.expires(), before);
}

#[tokio::test]
async fn server_auto_renewal_reuses_a_pending_invoice_without_paying() {
    let t = start(12 * 3600 + 120, true).await;
    let before = t.expires();
    let id = t.vm;
    let (_, p) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=1")).await;
    assert_eq!(p["data"]["is_paid"], false);
    t.advance(300); // inside the lead, the invoice still unexpired
    let log = t.sim.auto_renew_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, AutoRenewOutcome::ReusedUnpaid);
    assert_eq!(t.expires(), before, "the trap: nothing was paid");
    assert_eq!(t.sim.payments(id).len(), 1);
    // `?method=nwc` falls into the same trap.
    let (s, p2) = t.get(&format!("/api/v1/vm/{id}/renew?method=nwc")).await;
    assert_eq!(s, 200);
    assert_eq!(p2["data"]["is_paid"], false);
    assert_eq!(t.expires(), before);
}

#[tokio::test]
async fn method_nwc_pays_from_the_saved_wallet() {
    let t = start(3 * 86_400, false).await;
    let before = t.expires();
    let id = t.vm;
    let (s, p) = t.get(&format!("/api/v1/vm/{id}/renew?method=nwc")).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["data"]["is_paid"], true);
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
}

#[tokio::test]
async fn control_api_settles_invoices_and_shows_auto_renewals() {
    let t = start(13 * 3600, true).await;
    let id = t.vm;
    let ctl = |p: &str| format!("{}/_sim/{p}", t.sim.base_url());
    let r = t
        .http
        .post(ctl("saved-wallet"))
        .body(r#"{"fails":true}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    t.advance(3600 + 60);
    let log: Value = t
        .http
        .get(ctl("auto-renewals"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap_or(Value::Null))
        .expect("body");
    assert_eq!(log[0]["outcome"], "failed");
    // The server's unpaid invoice, paid from outside.
    let hash = t.sim.payments(id)[0].id.clone();
    let before = t.expires();
    let body = format!(r#"{{"payment_hash":"{hash}"}}"#);
    let r = t
        .http
        .post(ctl("settle"))
        .body(body.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    let again = t
        .http
        .post(ctl("settle"))
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(again.status().as_u16(), 409, "an invoice is paid once");
}

/// The simulator's minting fault, driven through the control API as another process
/// would: each renew that needs a new invoice answers the real server's 500 body
/// (tests/fixtures/lnvps/get_subscription_renew_lightning.json, captured from the real
/// server without a Lightning node), for N mints or until cleared; the quote still works.
#[tokio::test]
async fn minting_fails_with_the_real_500_for_n_mints_or_until_cleared() {
    let t = start(3 * 86_400, false).await;
    let id = t.vm;
    let control = |method: reqwest::Method, body: &'static str| {
        let url = format!("{}/_sim/mint-failure", t.sim.base_url());
        let http = t.http.clone();
        async move {
            let r = http
                .request(method, url)
                .body(body)
                .send()
                .await
                .expect("control API answers");
            assert!(r.status().is_success(), "{}", r.status());
            serde_json::from_str::<Value>(&r.text().await.expect("body")).expect("json")
        }
    };
    let real: Value = serde_json::from_str(include_str!(
        "../fixtures/lnvps/get_subscription_renew_lightning.json"
    ))
    .expect("fixture");
    let renew = format!("/api/v1/subscriptions/{id}/renew?method=lightning&intervals=1");

    let state = control(reqwest::Method::POST, r#"{"hits":2}"#).await;
    assert_eq!(state["mint_failure"]["remaining"], 2);
    for _ in 0..2 {
        let (s, body) = t.get(&renew).await;
        assert_eq!((s, &body), (500, &real));
    }
    let (s, quote) = t
        .get(&format!(
            "/api/v1/subscriptions/{id}/renew/quote?intervals=1"
        ))
        .await;
    assert_eq!(s, 200, "quotes need no invoice: {quote}");
    let (s, p) = t.get(&renew).await;
    assert_eq!(s, 200, "the third mint works: {p}");
    assert!(p["data"]["data"]["lightning"].as_str().is_some());
    assert_eq!(p["data"]["payment_type"], "Renewal");

    // Until cleared: a new invoice (another interval count) fails, the pending one is
    // still handed back, as the real server reuses it without minting.
    control(reqwest::Method::POST, "{}").await;
    let (s, body) = t
        .get(&format!("/api/v1/subscriptions/{id}/renew?intervals=2"))
        .await;
    assert_eq!((s, &body), (500, &real));
    let (s, again) = t.get(&renew).await;
    assert_eq!(s, 200);
    assert_eq!(again["data"]["id"], p["data"]["id"]);
    let (s, body) = t.get(&format!("/api/v1/vm/{id}/renew?intervals=3")).await;
    assert_eq!(
        (s, &body),
        (500, &real),
        "the deprecated endpoint mints the same way"
    );
    let state = control(reqwest::Method::GET, "").await;
    assert_eq!(state["mint_failure"]["remaining"], Value::Null);
    assert!(state["mint_failure"].is_object(), "in force until cleared");
    control(reqwest::Method::DELETE, "").await;
    let (s, _) = t
        .get(&format!("/api/v1/subscriptions/{id}/renew?intervals=2"))
        .await;
    assert_eq!(s, 200);
}

/// A VM without a subscription id: null in the VM, unknown to the subscription
/// endpoints, renewable through the deprecated VM endpoint.
#[tokio::test]
async fn a_vm_without_a_subscription_is_only_renewed_through_the_vm_endpoint() {
    let t = start(3 * 86_400, false).await;
    let owner = t.keys.public_key().to_hex();
    let id = t.sim.add_vm(
        &owner,
        VmSpec {
            owner: owner.clone(),
            expires: Some(RelTime::Offset(86_400)),
            no_subscription: true,
            ..VmSpec::default()
        },
    );
    let (s, vm) = t.get(&format!("/api/v1/vm/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(vm["data"]["subscription_id"], Value::Null);
    let (_, subs) = t.get("/api/v1/subscriptions").await;
    assert!(subs["data"]
        .as_array()
        .expect("list")
        .iter()
        .all(|s| s["id"] != id));
    let (s, _) = t.get(&format!("/api/v1/subscriptions/{id}/renew")).await;
    assert_eq!(s, 404);
    let (s, p) = t.get(&format!("/api/v1/vm/{id}/renew")).await;
    assert_eq!(s, 200, "{p}");
}
