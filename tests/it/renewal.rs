//! Lightning renewal end to end: the LNVPS simulator, a real local Nostr relay with the
//! NIP-47 wallet service, and the daemon with a `renew` rule. Time is a manual clock
//! shared by the simulator and the daemon; polls run every 100 ms of real time.
//!
//! The crash test stops the daemon in-process (its tasks are cancelled while the wallet
//! call is in flight, after the wallet paid and before `is_paid` was recorded) and starts
//! a new daemon on the same state directory.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::common::{wait_for, RecordingNotifier};
use vpswatch::daemon::Daemon;
use vpswatch::notify::{AlertStatus, EventKind, Notify};
use vpswatch_model::clock::{ManualClock, SharedClock};
use vpswatch_sim::lnvps::{
    AutoRenewOutcome, LnvpsSim, LnvpsSimHandle, PaymentMethodSpec, RelTime, Scenario, VmSpec,
};
use vpswatch_sim::nwc_wallet::{NwcWalletService, WalletFailure};
use vpswatch_sim::scenario::TemplateSpec;

/// Daily BTC plan: 500 000 msat = 500 sats a day; the server's lead is 12 h.
const PRICE_SATS: u64 = 500;
const WAIT: Duration = Duration::from_secs(20);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 6, 0, 0)
        .single()
        .expect("valid time")
}

struct Setup {
    expires_in: i64,
    auto_renew: bool,
    rule: String,
    globals: String,
    /// Applied to the wallet's first request, before the daemon starts.
    wallet_failure: Option<WalletFailure>,
    /// Invoice minting fails until cleared, from before the daemon starts (set through
    /// the simulator's control API).
    mint_fails: bool,
    /// The VM has no subscription id (only the deprecated VM endpoints renew it).
    no_subscription: bool,
    /// Poll interval and request timeout lines.
    timing: &'static str,
    /// Alerts go to the configured channel (`[email]` in `globals`), not a recorder.
    real_notifier: bool,
    /// Simulator faults in force before the daemon starts.
    faults: Vec<vpswatch_sim::lnvps::Fault>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            expires_in: 20 * 3600,
            auto_renew: false,
            rule: rule("mode = \"nwc\"\nmax_per_renewal_sats = 1000\nmax_per_month_sats = 5000"),
            globals: String::new(),
            wallet_failure: None,
            mint_fails: false,
            no_subscription: false,
            timing: "poll_interval = \"100ms\"\nrequest_timeout = \"2s\"",
            real_notifier: false,
            faults: Vec::new(),
        }
    }
}

fn rule(renew: &str) -> String {
    format!(
        r#"
[[rules]]
name = "renew"
condition = "expires_within"
within = "1d"
action = "renew"
[rules.renew]
nwc_uri_env = "TEST_NWC"
retry_interval = "1s"
backoff = "1s"
wallet_timeout = "1s"
{renew}
"#
    )
}

struct T {
    sim: LnvpsSimHandle,
    wallet: NwcWalletService,
    clock: Arc<ManualClock>,
    notes: Arc<RecordingNotifier>,
    daemon: Option<Daemon>,
    vm: u64,
    config: String,
    env: Vec<(String, String)>,
    real_notifier: bool,
    _dir: tempfile::TempDir,
}

async fn start(s: Setup) -> T {
    vpswatch::tls::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let clock = Arc::new(ManualClock::new(t0()));
    let shared: SharedClock = clock.clone();
    let sim = LnvpsSim::start(
        "127.0.0.1:0".parse().expect("addr"),
        Scenario::default(),
        shared,
    )
    .await
    .expect("sim starts");
    let vm = sim.add_vm(
        &owner,
        VmSpec {
            owner: owner.clone(),
            expires: Some(RelTime::Offset(s.expires_in)),
            age: Duration::from_secs(40 * 86_400),
            template: TemplateSpec {
                name: "Daily BTC".into(),
                ..TemplateSpec::default()
            },
            auto_renewal_enabled: s.auto_renew,
            no_subscription: s.no_subscription,
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
    for f in s.faults {
        sim.inject_fault(f);
    }
    if s.mint_fails {
        sim_control(&sim, reqwest::Method::POST, "mint-failure", "{}").await;
    }
    let wallet = NwcWalletService::start(
        sim.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        10_000_000,
    )
    .await
    .expect("wallet starts");
    if let Some(f) = s.wallet_failure {
        wallet.fail(f, Some(1));
    }
    let dir = tempfile::tempdir().expect("state dir");
    let config = format!(
        r#"{timing}
staleness_limit = "1h"
state_dir = "{state}"
{globals}
[web]
listen_address = "127.0.0.1:0"

[[accounts]]
name = "main"
provider = "lnvps"
base_url = "{url}"
nsec_env = "TEST_NSEC"
{rule}"#,
        state = dir.path().display(),
        timing = s.timing,
        globals = s.globals,
        url = sim.base_url(),
        rule = s.rule,
    );
    let env = vec![
        ("TEST_NSEC".to_string(), keys.secret_key().to_secret_hex()),
        ("TEST_NWC".to_string(), wallet.uri()),
    ];
    let mut t = T {
        sim,
        wallet,
        clock,
        notes: Arc::new(RecordingNotifier::default()),
        daemon: None,
        vm,
        config,
        env,
        real_notifier: s.real_notifier,
        _dir: dir,
    };
    t.start_daemon().await;
    t
}

impl T {
    async fn start_daemon(&mut self) {
        let env = self.env.clone();
        let config = vpswatch::config::parse(&self.config, "test", &|n| {
            env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        })
        .expect("config valid");
        assert_eq!(config.renew_rules.len(), 1);
        let notes: Arc<dyn Notify> = self.notes.clone();
        let notes = (!self.real_notifier).then_some(notes);
        let shared: SharedClock = self.clock.clone();
        self.daemon = Some(
            Daemon::start_with(config, shared, notes)
                .await
                .expect("daemon starts"),
        );
    }

    async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    fn expires(&self) -> DateTime<Utc> {
        self.sim
            .vm(self.vm)
            .and_then(|v| v.expires)
            .expect("paid vm")
    }

    fn paid_invoices(&self) -> usize {
        self.sim
            .payments(self.vm)
            .iter()
            .filter(|p| p.is_paid)
            .count()
    }

    fn events(&self, kind: EventKind) -> usize {
        self.notes
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    fn renewals(&self, result: &str) -> u64 {
        self.renewals_in("nwc", result)
    }

    fn renewals_in(&self, mode: &str, result: &str) -> u64 {
        self.daemon.as_ref().map_or(0, |d| {
            d.renewals
                .renewals("main", &self.vm.to_string(), mode, result)
        })
    }

    /// Waits until the daemon has polled `n` more times.
    async fn polls(&self, n: u64) {
        let store = self.daemon.as_ref().expect("daemon").store.clone();
        let start = store.get(0).map_or(0, |s| s.polls);
        wait_for("polls", WAIT, || {
            let s = store.clone();
            async move { s.get(0).map_or(0, |s| s.polls) >= start + n }
        })
        .await;
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
        self.sim.tick();
    }

    /// Requests the daemon sent to one endpoint template of the simulator.
    fn requests_to(&self, endpoint: &str) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    fn renew_calls(&self) -> usize {
        self.requests_to(SUB_RENEW) + self.requests_to(VM_RENEW)
    }

    /// Advances the clock and waits for a renewal pass over data polled after that.
    async fn step(&self, secs: i64) {
        self.advance(secs);
        self.polls(1).await;
        let report = self.daemon.as_ref().expect("daemon").renewals.clone();
        let seen = report.passes();
        wait_for("a renewal pass", WAIT, || {
            let r = report.clone();
            async move { r.passes() > seen }
        })
        .await;
    }

    async fn metrics(&self) -> crate::common::Exposition {
        let d = self.daemon.as_ref().expect("daemon");
        crate::common::Exposition::parse(
            &crate::common::scrape(&reqwest::Client::new(), d.addr).await,
        )
    }

    fn web(&self, path: &str) -> String {
        let d = self.daemon.as_ref().expect("daemon");
        format!("http://{}{path}", d.addr)
    }

    async fn finish(mut self) {
        self.stop_daemon().await;
        self.wallet.shutdown().await;
        self.sim.shutdown();
    }
}

const SUB_RENEW: &str = "/api/v1/subscriptions/{id}/renew";
const VM_RENEW: &str = "/api/v1/vm/{id}/renew";

/// Calls the simulator's control API (`/_sim/…`) over HTTP.
async fn sim_control(sim: &LnvpsSimHandle, method: reqwest::Method, path: &str, body: &str) {
    let r = reqwest::Client::new()
        .request(method, format!("{}/_sim/{path}", sim.base_url()))
        .body(body.to_string())
        .send()
        .await
        .expect("control API answers");
    assert!(r.status().is_success(), "control API: {}", r.status());
}

async fn until(what: &str, f: impl Fn() -> bool) {
    wait_for(what, WAIT, || {
        let ok = f();
        async move { ok }
    })
    .await;
}

#[tokio::test]
async fn vm_inside_the_window_is_paid_exactly_once() {
    let t = start(Setup::default()).await;
    let before = t.expires();
    until("one wallet payment", || t.wallet.payments().len() == 1).await;
    until("RenewalPaid event", || {
        t.events(EventKind::RenewalPaid) == 1
    })
    .await;
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    assert_eq!(t.wallet.payments()[0].amount_msat, PRICE_SATS * 1000);
    // Later polls: the VM is outside the window again; nothing more is paid.
    t.polls(5).await;
    assert_eq!(t.wallet.pay_requests(), 1);
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.renewals("paid"), 1);
    let d = t.daemon.as_ref().expect("daemon");
    let text = crate::common::scrape(&reqwest::Client::new(), d.addr).await;
    assert!(
        text.contains(&format!(
            "vpswatch_renewal_paid_sats_total{{provider=\"lnvps\",account=\"main\",vm=\"{}\"}} 500",
            t.vm
        )),
        "{text}"
    );
    assert!(
        text.contains("vps_wallet_balance{provider=\"nwc\",account=\"renew\",currency=\"sat\"}"),
        "wallet balance exported"
    );
    assert!(
        !text.contains("walletconnect"),
        "the NWC URI never reaches /metrics"
    );
    promtool_check(&text);
    t.finish().await;
}

#[tokio::test]
async fn server_auto_renewal_comes_first_and_vpswatch_pays_nothing_when_it_succeeds() {
    let t = start(Setup {
        expires_in: 13 * 3600,
        auto_renew: true,
        ..Setup::default()
    })
    .await;
    let before = t.expires();
    // Inside the rule's window but before the server's firing point (expires − 12 h).
    t.polls(5).await;
    assert!(
        t.sim.payments(t.vm).is_empty(),
        "no invoice before the server's attempt"
    );
    t.advance(3600 + 60);
    until("server attempt", || t.sim.auto_renew_log().len() == 1).await;
    assert_eq!(t.sim.auto_renew_log()[0].outcome, AutoRenewOutcome::Paid);
    t.advance(300);
    t.polls(5).await;
    assert_eq!(t.wallet.pay_requests(), 0);
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    t.finish().await;
}

#[tokio::test]
async fn when_the_server_attempt_fails_vpswatch_pays_exactly_once() {
    let t = start(Setup {
        expires_in: 13 * 3600,
        auto_renew: true,
        ..Setup::default()
    })
    .await;
    t.sim.set_saved_wallet_fails(true);
    let before = t.expires();
    t.advance(3600 + 60);
    until("server attempt", || t.sim.auto_renew_log().len() == 1).await;
    assert_eq!(t.sim.auto_renew_log()[0].outcome, AutoRenewOutcome::Failed);
    t.polls(3).await;
    assert_eq!(t.wallet.pay_requests(), 0, "still inside the settle time");
    t.advance(180);
    until("one wallet payment", || t.wallet.payments().len() == 1).await;
    t.polls(5).await;
    assert_eq!(t.wallet.pay_requests(), 1);
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    t.finish().await;
}

#[tokio::test]
async fn reuse_trap_ends_with_exactly_one_paid_renewal() {
    let t = start(Setup {
        expires_in: 12 * 3600 + 240,
        auto_renew: true,
        ..Setup::default()
    })
    .await;
    let before = t.expires();
    // Someone minted an invoice minutes before the server's job fires.
    let pending = t.sim.renew(t.vm, None, 1).expect("invoice");
    t.advance(300);
    until("server attempt", || t.sim.auto_renew_log().len() == 1).await;
    assert_eq!(
        t.sim.auto_renew_log()[0].outcome,
        AutoRenewOutcome::ReusedUnpaid
    );
    assert_eq!(t.expires(), before, "the server paid nothing");
    t.advance(180);
    until("one wallet payment", || t.wallet.payments().len() == 1).await;
    t.polls(5).await;
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(
        t.wallet.payments()[0].payment_hash,
        pending.id,
        "the pending invoice itself was paid"
    );
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    t.finish().await;
}

#[tokio::test]
async fn over_budget_pays_nothing_and_alerts() {
    let t = start(Setup {
        rule: rule("mode = \"nwc\"\nmax_per_renewal_sats = 100\nmax_per_month_sats = 5000"),
        ..Setup::default()
    })
    .await;
    until("blocked event", || t.events(EventKind::RenewalBlocked) == 1).await;
    t.polls(5).await;
    assert!(t.sim.payments(t.vm).is_empty(), "no invoice minted");
    assert_eq!(t.wallet.pay_requests(), 0);
    assert_eq!(t.renewals("blocked_budget"), 1);
    assert!(t
        .notes
        .alert_log()
        .iter()
        .any(|(r, _, s)| r == "renew" && *s == AlertStatus::Firing));
    assert_eq!(
        t.events(EventKind::RenewalBlocked),
        1,
        "one notice per expiry"
    );
    t.finish().await;
}

#[tokio::test]
async fn monthly_budget_counts_earlier_payments() {
    // 500 sats a day, 700 a month: the first renewal fits, the second does not.
    let t = start(Setup {
        rule: rule("mode = \"nwc\"\nmax_per_renewal_sats = 1000\nmax_per_month_sats = 700"),
        ..Setup::default()
    })
    .await;
    until("first payment", || t.wallet.payments().len() == 1).await;
    t.advance(86_400);
    until("blocked", || t.events(EventKind::RenewalBlocked) == 1).await;
    assert_eq!(t.wallet.payments().len(), 1);
    t.finish().await;
}

#[tokio::test]
async fn wallet_refusal_is_retried_within_limits_without_an_alert() {
    let t = start(Setup {
        wallet_failure: Some(WalletFailure::PaymentFailed),
        ..Setup::default()
    })
    .await;
    until("refused", || t.wallet.pay_requests() == 1).await;
    until("refusal counted", || t.renewals("wallet_refused") == 1).await;
    t.polls(3).await;
    assert_eq!(t.wallet.pay_requests(), 1, "no retry before retry_interval");
    t.advance(2);
    until("paid on retry", || t.wallet.payments().len() == 1).await;
    until("paid seen", || t.renewals("paid") == 1).await;
    assert!(
        t.notes.alert_log().is_empty(),
        "a refusal that a retry fixes mails nothing: {:?}",
        t.notes.alert_log()
    );
    assert_eq!(t.wallet.pay_requests(), 2);
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.renewals("wallet_refused"), 1);
    t.finish().await;
}

#[tokio::test]
async fn wallet_timeout_waits_for_the_invoice_then_retries_with_a_new_one() {
    let t = start(Setup {
        wallet_failure: Some(WalletFailure::NoAnswer),
        ..Setup::default()
    })
    .await;
    until("asked once", || t.wallet.pay_requests() == 1).await;
    until("no answer counted", || t.renewals("wallet_no_answer") == 1).await;
    t.polls(5).await;
    assert_eq!(
        t.wallet.pay_requests(),
        1,
        "an unanswered invoice is never sent again"
    );
    // The invoice expires unpaid: one failed try; after the backoff a new invoice is paid.
    t.advance(601);
    until("failed try counted", || t.renewals("failed") == 1).await;
    t.advance(2);
    until("paid", || t.wallet.payments().len() == 1).await;
    assert_eq!(t.wallet.pay_requests(), 2);
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.sim.payments(t.vm).len(), 2);
    t.finish().await;
}

#[tokio::test]
async fn restart_after_paying_before_recording_does_not_pay_again() {
    let mut t = start(Setup {
        rule: rule(
            "mode = \"nwc\"\nmax_per_renewal_sats = 1000\nmax_per_month_sats = 5000\nwallet_timeout = \"30s\"",
        )
        .replace("wallet_timeout = \"1s\"\n", "")
        // Still inside the window after one renewal: only the journal stops a second.
        .replace("within = \"1d\"", "within = \"3d\""),
        wallet_failure: Some(WalletFailure::PayWithoutAnswer),
        ..Setup::default()
    })
    .await;
    let before = t.expires();
    until("wallet paid", || t.wallet.payments().len() == 1).await;
    // The daemon is still waiting for the wallet's answer: stop it right there.
    assert_eq!(t.renewals("paid"), 0, "is_paid not yet recorded");
    t.stop_daemon().await;
    t.start_daemon().await;
    until("RenewalPaid after restart", || {
        t.events(EventKind::RenewalPaid) == 1
    })
    .await;
    t.polls(5).await;
    assert_eq!(t.wallet.pay_requests(), 1, "never sent to the wallet again");
    assert_eq!(t.wallet.payments().len(), 1);
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.expires() - before, chrono::Duration::days(1));
    t.finish().await;
}

#[tokio::test]
async fn dry_run_quotes_only() {
    let t = start(Setup {
        globals: "[watchdog]\ndry_run = true\n".into(),
        ..Setup::default()
    })
    .await;
    until("dry run counted", || t.renewals("dry_run") == 1).await;
    t.polls(5).await;
    assert!(t.sim.payments(t.vm).is_empty(), "no invoice minted");
    assert_eq!(t.wallet.pay_requests(), 0);
    let quotes = t
        .sim
        .requests()
        .iter()
        .filter(|r| r.endpoint == "/api/v1/subscriptions/{id}/renew/quote")
        .count();
    assert!(quotes >= 1);
    assert_eq!(
        t.sim
            .requests()
            .iter()
            .filter(|r| r.endpoint.ends_with("/renew"))
            .count(),
        0
    );
    t.finish().await;
}

#[tokio::test]
async fn email_mode_mails_the_invoice_and_sees_it_paid() {
    let t = start(Setup {
        rule: rule("mode = \"email\"").replace("nwc_uri_env = \"TEST_NWC\"\n", ""),
        ..Setup::default()
    })
    .await;
    until("invoice sent", || t.events(EventKind::InvoiceSent) == 1).await;
    let ev = t
        .notes
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|e| e.kind == EventKind::InvoiceSent)
        .cloned()
        .expect("event");
    let bolt11 = ev
        .facts
        .details
        .iter()
        .find(|(k, _)| k == "invoice")
        .map(|(_, v)| v.clone())
        .expect("invoice in the mail");
    assert!(bolt11.starts_with("lnbc"));
    assert!(ev
        .facts
        .details
        .iter()
        .any(|(k, v)| k == "amount" && v == "500 sats"));
    assert!(ev.facts.details.iter().any(|(k, _)| k == "invoice expires"));
    assert_eq!(t.wallet.pay_requests(), 0);
    // A human pays it.
    let inv: lightning_invoice::Bolt11Invoice = bolt11.parse().expect("bolt11");
    t.sim
        .settle_invoice(&hex::encode(AsRef::<[u8]>::as_ref(inv.payment_hash())))
        .expect("settled");
    until("paid seen", || t.events(EventKind::RenewalPaid) == 1).await;
    t.polls(3).await;
    assert_eq!(t.events(EventKind::InvoiceSent), 1);
    t.finish().await;
}

#[tokio::test]
async fn demo_vm_renews_itself_through_nwc() {
    let clock = Arc::new(ManualClock::new(t0()));
    let shared: SharedClock = clock.clone();
    let demo = crate::common::DemoRun::start(shared).await;
    let vm = vpswatch_sim::demo::DEMO_RENEWING_VM;
    let before = demo.world.sim.vm(vm).and_then(|v| v.expires).expect("paid");
    // The window opens a minute after start.
    clock.advance(chrono::Duration::seconds(90));
    demo.world.sim.tick();
    wait_for("the demo VM renewed", Duration::from_secs(30), || {
        let n = demo.world.wallet.payments().len();
        async move { n == 1 }
    })
    .await;
    let after = demo.world.sim.vm(vm).and_then(|v| v.expires).expect("paid");
    assert_eq!(after - before, chrono::Duration::days(1));
    assert_eq!(
        demo.world.wallet.balance_msat(),
        vpswatch_sim::demo::DEMO_WALLET_MSAT - 500_000
    );
    demo.shutdown().await;
}

/// docs/renewal.md's example is accepted as written (with its wallet file present).
#[test]
fn docs_renewal_example_parses() {
    let doc = crate::common::docs::read("docs/renewal.md");
    let block = crate::common::docs::code_blocks(&doc, "toml")
        .into_iter()
        .find(|b| b.contains("condition = \"expires_within\""))
        .expect("a renewal example");
    let dir = tempfile::tempdir().expect("dir");
    let uri_file = dir.path().join("nwc.uri");
    let wallet = nostr::Keys::generate().public_key().to_hex();
    let secret = nostr::Keys::generate().secret_key().to_secret_hex();
    std::fs::write(
        &uri_file,
        format!("nostr+walletconnect://{wallet}?relay=ws%3A%2F%2F127.0.0.1%3A1&secret={secret}"),
    )
    .expect("write");
    let text = format!(
        "state_dir = \"{}\"\n[[accounts]]\nname = \"main\"\nprovider = \"lnvps\"\nbase_url = \"http://127.0.0.1:1\"\nnsec_env = \"N\"\n{}",
        dir.path().display(),
        block.replace("/etc/vpswatch/nwc.uri", &uri_file.display().to_string())
    );
    let nsec = nostr::Keys::generate().secret_key().to_secret_hex();
    let config = vpswatch::config::parse(&text, "docs/renewal.md", &|n| {
        (n == "N").then(|| nsec.clone())
    })
    .unwrap_or_else(|e| panic!("docs/renewal.md example: {e}"));
    assert_eq!(config.renew_rules.len(), 1);
    assert!(
        config.watchdog.rules.is_empty(),
        "the engine never sees renew rules"
    );
    let rule = &config.renew_rules[0];
    assert_eq!(rule.max_per_month_sats, 60_000);
    assert!(
        !format!("{rule:?}").contains(&secret),
        "the URI stays redacted"
    );
}

#[test]
fn renewal_config_problems_name_their_keys() {
    let text = r#"
[[accounts]]
name = "main"
provider = "lnvps"
base_url = "http://127.0.0.1:1"
nsec_env = "N"

[[rules]]
name = "r"
condition = "expires_within"
within = "1d"
action = "renew"
[rules.renew]
mode = "nwc"
intervals = 0
nwc_uri_env = "NWC"
backoff = "2h"
backoff_max = "1h"
"#;
    let nsec = nostr::Keys::generate().secret_key().to_secret_hex();
    let bad_uri = "nostr+walletconnect://nothex?secret=TOPSECRET".to_string();
    let err = vpswatch::config::parse(text, "t", &|n| match n {
        "N" => Some(nsec.clone()),
        "NWC" => Some(bad_uri.clone()),
        _ => None,
    })
    .expect_err("invalid");
    let msg = err.to_string();
    for key in [
        "rules[0].renew.intervals",
        "rules[0].renew.nwc_uri_env",
        "rules[0].renew.max_per_renewal_sats",
        "rules[0].renew.max_per_month_sats",
        "rules[0].renew.backoff_max",
    ] {
        assert!(msg.contains(key), "{key} missing from: {msg}");
    }
    assert!(!msg.contains("TOPSECRET"), "the URI is never echoed: {msg}");
}

#[tokio::test]
async fn server_mode_alerts_when_the_server_did_not_renew_and_pays_nothing() {
    let t = start(Setup {
        expires_in: 13 * 3600,
        auto_renew: true,
        rule: rule("mode = \"server\"").replace("nwc_uri_env = \"TEST_NWC\"\n", ""),
        ..Setup::default()
    })
    .await;
    t.sim.set_saved_wallet_fails(true);
    t.polls(3).await;
    assert_eq!(
        t.renewals_in("server", "server_missed"),
        0,
        "before the server's attempt"
    );
    t.advance(3600 + 60);
    until("server attempt", || t.sim.auto_renew_log().len() == 1).await;
    t.advance(180);
    until("server_missed", || {
        t.renewals_in("server", "server_missed") == 1
    })
    .await;
    assert_eq!(t.events(EventKind::RenewalFailed), 1);
    assert_eq!(t.wallet.pay_requests(), 0);
    assert_eq!(t.paid_invoices(), 0);
    assert_eq!(
        t.sim.payments(t.vm).len(),
        1,
        "only the server's own invoice"
    );
    t.finish().await;
}

/// `promtool check metrics` accepts the exposition.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package prometheus; scripts/test installs it)");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = p.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rule of the failing-mint tests: `max_attempts` tries per expiry, `backoff`
/// doubling up to an hour; the window opens 20 h before expiry.
fn bounded_rule(max_attempts: u32, backoff: &str) -> String {
    rule(&format!(
        "mode = \"nwc\"\nmax_per_renewal_sats = 1000\nmax_per_month_sats = 5000\n\
         max_attempts = {max_attempts}\nbackoff_max = \"1h\""
    ))
    .replace("backoff = \"1s\"", &format!("backoff = \"{backoff}\""))
    .replace("within = \"1d\"", "within = \"20h\"")
}

/// The real server without a Lightning node answers every renew with 500
/// `{"error":"An internal error occurred"}`. Over a simulated day of that, vpswatch
/// makes at most `max_attempts` renew requests, mails one alert (real SMTP), and shows
/// the failures on /metrics; once minting works and the VM was renewed by hand, the
/// next window pays exactly once.
#[tokio::test]
async fn a_day_of_failing_invoice_minting_makes_at_most_max_attempts_requests_and_one_mail() {
    use crate::common::smtp::{read_mails, ServerOpts, SmtpServer};
    let maildir = tempfile::tempdir().expect("maildir");
    let smtp = SmtpServer::start(maildir.path(), 0, &ServerOpts::default());
    let t = start(Setup {
        rule: bounded_rule(3, "30m"),
        globals: format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsecurity = \"none\"\n\
             allow_insecure = true\nfrom = \"vpswatch <vpswatch@example.test>\"\n\
             to = [\"ops@example.test\"]\nrepeat_interval = \"30d\"\n",
            smtp.port
        ),
        mint_fails: true,
        real_notifier: true,
        ..Setup::default()
    })
    .await;
    let vm = t.vm.to_string();
    let mails = |prefix: &str| {
        read_mails(maildir.path())
            .iter()
            .filter(|m| m.subject().starts_with(prefix))
            .count()
    };
    // One simulated day in 30-minute steps; the VM expires (unrenewed) at hour 20.
    for _ in 0..48 {
        t.step(30 * 60).await;
    }
    assert_eq!(
        t.requests_to(SUB_RENEW),
        3,
        "at most max_attempts renew requests"
    );
    assert_eq!(
        t.requests_to(VM_RENEW),
        0,
        "the subscription endpoint is used"
    );
    assert!(
        t.sim
            .requests()
            .iter()
            .filter(|r| r.endpoint == SUB_RENEW)
            .all(|r| r.status == 500),
        "every renew met the 500"
    );
    wait_for("the alert mail", WAIT, || {
        let n = mails("[FIRING]");
        async move { n >= 1 }
    })
    .await;
    assert_eq!(mails("[FIRING]"), 1, "one alert mail");
    let m = t.metrics().await;
    let labels = |result: &'static str| {
        [
            ("account", "main"),
            ("vm", vm.as_str()),
            ("rule", "renew"),
            ("result", result),
        ]
    };
    assert_eq!(
        m.get("vpswatch_renewals_total", &labels("failed")),
        Some(3.0)
    );
    assert_eq!(
        m.get("vpswatch_renewals_total", &labels("gave_up")),
        Some(1.0)
    );
    assert_eq!(m.get("vpswatch_renewals_total", &labels("paid")), Some(0.0));
    let vm_labels = [("account", "main"), ("vm", vm.as_str()), ("rule", "renew")];
    assert_eq!(m.get("vps_renewal_failing", &vm_labels), Some(1.0));
    assert_eq!(m.get("vps_renewal_gave_up", &vm_labels), Some(1.0));
    assert_eq!(m.get("vpswatch_renewal_attempts", &vm_labels), Some(3.0));
    assert_eq!(
        m.get(
            "vpswatch_provider_requests_total",
            &[
                ("endpoint", "GET /api/v1/subscriptions/{id}/renew"),
                ("code", "500")
            ]
        ),
        Some(3.0)
    );

    // Minting works again (control API); a human renews by hand: the alert resolves,
    // and the next window is paid by vpswatch exactly once.
    sim_control(&t.sim, reqwest::Method::DELETE, "mint-failure", "").await;
    let invoice = t.sim.renew(t.vm, None, 1).expect("an invoice");
    t.sim.settle_invoice(&invoice.id).expect("paid by hand");
    let renewed_by_hand = t.expires();
    t.step(60).await;
    wait_for("the resolved mail", WAIT, || {
        let n = mails("[RESOLVED]");
        async move { n == 1 }
    })
    .await;
    // The new window opens 20 h before the new expiry (4 h from now); walk 26 h, up
    // to 2 h before the window after it.
    for _ in 0..(26 * 2) {
        t.step(30 * 60).await;
    }
    assert_eq!(t.wallet.payments().len(), 1, "the next window pays once");
    assert_eq!(t.expires() - renewed_by_hand, chrono::Duration::days(1));
    assert_eq!(t.requests_to(SUB_RENEW), 4);
    assert_eq!(t.renewals("paid"), 1);
    assert_eq!(mails("[FIRING]"), 1, "still one alert mail");
    let m = t.metrics().await;
    assert_eq!(m.get("vps_renewal_failing", &vm_labels), Some(0.0));
    assert_eq!(m.get("vps_renewal_gave_up", &vm_labels), Some(0.0));
    t.finish().await;
    drop(smtp);
}

/// After the tries are used up, an operator's clear through the web API re-arms the
/// VM: the next pass tries again at once, and pays.
#[tokio::test]
async fn an_operator_clear_re_arms_a_renewal_that_gave_up() {
    let t = start(Setup {
        rule: bounded_rule(2, "1s"),
        mint_fails: true,
        ..Setup::default()
    })
    .await;
    until("first try failed", || t.renewals("failed") == 1).await;
    t.step(2).await;
    until("gave up", || t.renewals("gave_up") == 1).await;
    t.step(3600).await;
    t.step(3600).await;
    assert_eq!(t.renew_calls(), 2, "no try after giving up");
    let firing = |n: &T| {
        n.notes
            .alert_log()
            .iter()
            .filter(|(_, _, s)| *s == AlertStatus::Firing)
            .count()
    };
    assert_eq!(firing(&t), 1);
    let http = reqwest::Client::new();
    let listed: serde_json::Value = serde_json::from_str(
        &http
            .get(t.web("/api/v1/renewals"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    let rec = &listed["vms"][0];
    assert_eq!(rec["vm"], t.vm.to_string());
    assert_eq!(rec["gave_up"], true);
    assert_eq!(rec["attempts"], 2);
    assert!(
        rec["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 500"),
        "{rec}"
    );
    // Bad requests name what is wrong.
    let r = http
        .post(t.web("/api/v1/renewals/clear"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 400);
    let r = http
        .post(t.web("/api/v1/renewals/clear?account=main&vm=999"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    let r = http
        .get(t.web("/api/v1/renewals/clear?account=main&vm=1"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 405);

    t.sim.clear_mint_failure();
    let r = http
        .post(t.web(&format!("/api/v1/renewals/clear?account=main&vm={}", t.vm)))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    until("paid after the clear", || t.wallet.payments().len() == 1).await;
    until("paid counted", || t.renewals("paid") == 1).await;
    t.polls(5).await;
    assert_eq!(t.renew_calls(), 3, "one more try, which paid");
    assert_eq!(t.paid_invoices(), 1);
    until("resolved", || {
        t.notes
            .alert_log()
            .iter()
            .any(|(_, _, s)| *s == AlertStatus::Resolved)
    })
    .await;
    assert_eq!(firing(&t), 1);
    t.finish().await;
}

/// Tries and their backoff survive a restart: a daemon restarted after two failed
/// tries makes only the third, after the backoff.
#[tokio::test]
async fn tries_and_backoff_are_kept_across_a_restart() {
    let mut t = start(Setup {
        rule: bounded_rule(3, "10m"),
        mint_fails: true,
        ..Setup::default()
    })
    .await;
    until("first try failed", || t.renewals("failed") == 1).await;
    t.step(600).await;
    assert_eq!(t.renew_calls(), 2, "the second try after 10 min");
    t.stop_daemon().await;
    t.start_daemon().await;
    t.step(60).await;
    t.step(60).await;
    assert_eq!(
        t.renew_calls(),
        2,
        "the restart does not skip the backoff (20 min)"
    );
    t.step(20 * 60).await;
    assert_eq!(t.renew_calls(), 3);
    for _ in 0..8 {
        t.step(3600).await;
    }
    assert_eq!(t.renew_calls(), 3, "max_attempts across the restart");
    assert_eq!(t.renewals("gave_up"), 1);
    t.finish().await;
}

/// A VM without a subscription id is renewed through the deprecated VM endpoints (the
/// only ones that know it); every other VM through its subscription.
#[tokio::test]
async fn a_vm_without_a_subscription_id_falls_back_to_the_vm_endpoints() {
    let logs = crate::common::log_capture::capture();
    let t = start(Setup {
        no_subscription: true,
        mint_fails: true,
        ..Setup::default()
    })
    .await;
    // Two tries (the first meets the minting fault), one log line.
    until("first try failed", || t.renewals("failed") == 1).await;
    t.sim.clear_mint_failure();
    t.step(2).await;
    until("paid", || t.renewals("paid") == 1).await;
    t.polls(3).await;
    assert_eq!(t.paid_invoices(), 1);
    assert_eq!(t.requests_to(VM_RENEW), 2);
    assert_eq!(t.requests_to(SUB_RENEW), 0);
    assert!(
        t.requests_to("/api/v1/payment/{id}") >= 1,
        "followed by GET /payment/{{id}}"
    );
    let said = logs
        .text()
        .matches("renewal: the VM has no subscription id")
        .count();
    assert_eq!(said, 1, "the fallback is logged once");
    t.finish().await;
}

/// A request the renewal task makes between two polls shows on /metrics when it is
/// made, not at the next poll (here an hour away): the quote is counted while the
/// renew call after it still hangs.
#[tokio::test]
async fn requests_made_between_polls_show_on_metrics_at_once() {
    use vpswatch_sim::lnvps::{EndpointMatch, Fault, FaultKind};
    let t = start(Setup {
        rule: rule("mode = \"email\"").replace("nwc_uri_env = \"TEST_NWC\"\n", ""),
        timing: "poll_interval = \"1h\"\nrequest_timeout = \"60s\"",
        // The quote answers after the first poll's rendering has settled; the renew
        // call after it never answers.
        faults: vec![
            Fault::new(
                EndpointMatch::template("/api/v1/subscriptions/{id}/renew/quote"),
                FaultKind::Latency(Duration::from_millis(300)),
            ),
            Fault::new(EndpointMatch::template(SUB_RENEW), FaultKind::Hang),
        ],
        ..Setup::default()
    })
    .await;
    let quote = "GET /api/v1/subscriptions/{id}/renew/quote";
    let d = t.daemon.as_ref().expect("daemon");
    let http = reqwest::Client::new();
    wait_for("the quote counted on /metrics", WAIT, || {
        let (http, addr) = (http.clone(), d.addr);
        async move {
            crate::common::Exposition::parse(&crate::common::scrape(&http, addr).await).get(
                "vpswatch_provider_requests_total",
                &[("endpoint", quote), ("code", "200")],
            ) == Some(1.0)
        }
    })
    .await;
    assert_eq!(d.store.get(0).map_or(0, |s| s.polls), 1, "no second poll");
    assert_eq!(
        t.renewals_in("email", "failed"),
        0,
        "the renew call still hangs"
    );
    assert_eq!(t.events(EventKind::InvoiceSent), 0);
    t.finish().await;
}
