//! Alertmanager silences against a real Alertmanager (Debian's
//! `prometheus-alertmanager`, started here on a free loopback port with clustering off):
//! equality, negation and anchored-regex matchers, labels the VM lacks, several
//! matchers at once, expired and not-yet-started silences. The cache and the errors are
//! checked against small loopback servers that count requests and misbehave on purpose.
//!
//! Without the binary the tests fail and say how to install it: the suite must never
//! pass by skipping them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use vpswatch::watchdog::silences::{SilenceChecker, SilenceError};

use crate::common::alertmanager::{free_port, Alertmanager};

fn eq(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value, "isRegex": false, "isEqual": true })
}

fn ne(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value, "isRegex": false, "isEqual": false })
}

fn re(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value, "isRegex": true, "isEqual": true })
}

fn not_re(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value, "isRegex": true, "isEqual": false })
}

fn vm<'a>(
    provider: &'a str,
    account: &'a str,
    id: &'a str,
    name: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("provider", provider),
        ("account", account),
        ("vm", id),
        ("name", name),
    ]
}

#[tokio::test]
async fn silences_match_like_alertmanager_does() {
    let am = Alertmanager::start().await;
    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    let checker =
        SilenceChecker::new(&am.url, Duration::from_secs(5), Duration::ZERO).expect("checker");
    let check = |labels: [(&'static str, &'static str); 4], at: DateTime<Utc>| {
        let c = &checker;
        async move {
            c.silenced_by(&labels, at)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|m| m.comment)
        }
    };
    assert_eq!(
        check(vm("lnvps", "main", "1", "web-1"), now).await,
        None,
        "no silences yet"
    );

    let web = am
        .silence(
            json!([eq("provider", "lnvps"), re("name", "web-.*")]),
            now,
            now + hour,
            "kernel update",
        )
        .await;
    am.silence(
        json!([eq("account", "anchors"), re("vm", "1")]),
        now,
        now + hour,
        "vm 1 only",
    )
    .await;
    am.silence(
        json!([eq("account", "lacks"), eq("team", "")]),
        now,
        now + hour,
        "no team label",
    )
    .await;
    am.silence(
        json!([eq("account", "other-team"), eq("team", "ops")]),
        now,
        now + hour,
        "team ops",
    )
    .await;
    am.silence(
        json!([eq("account", "neg"), not_re("name", "db-.*"), ne("vm", "9")]),
        now,
        now + hour,
        "not db, not 9",
    )
    .await;
    let gone = am
        .silence(
            json!([eq("account", "expired")]),
            now,
            now + hour,
            "expired",
        )
        .await;
    am.expire(&gone).await;
    am.silence(
        json!([eq("account", "later")]),
        now + hour,
        now + hour * 2,
        "later",
    )
    .await;

    // Alertmanager moves a start in the past to its own "now": check from after that.
    let now = Utc::now();
    // Equality plus an anchored regex, and every matcher must hold.
    let m = checker
        .silenced_by(&vm("lnvps", "main", "1", "web-1"), now)
        .await
        .expect("checked")
        .expect("silenced");
    assert_eq!(
        (m.id.as_str(), m.comment.as_str(), m.created_by.as_str()),
        (web.as_str(), "kernel update", "ops@example.com")
    );
    assert_eq!(check(vm("lnvps", "main", "2", "db-1"), now).await, None);
    assert_eq!(
        check(vm("stablevps", "main", "1", "web-1"), now).await,
        None,
        "provider differs"
    );
    assert_eq!(
        check(vm("lnvps", "main", "1", "myweb-1"), now).await,
        None,
        "anchored at the start"
    );
    // `vm=~"1"` is `^(?:1)$`: not 12.
    assert_eq!(
        check(vm("stablevps", "anchors", "1", "x"), now)
            .await
            .as_deref(),
        Some("vm 1 only")
    );
    assert_eq!(
        check(vm("stablevps", "anchors", "12", "x"), now).await,
        None
    );
    // A label the VM does not have matches "" only.
    assert_eq!(
        check(vm("stablevps", "lacks", "3", "x"), now)
            .await
            .as_deref(),
        Some("no team label")
    );
    assert_eq!(
        check(vm("stablevps", "other-team", "3", "x"), now).await,
        None
    );
    // Negative matchers.
    assert_eq!(
        check(vm("stablevps", "neg", "3", "web-3"), now)
            .await
            .as_deref(),
        Some("not db, not 9")
    );
    assert_eq!(check(vm("stablevps", "neg", "3", "db-3"), now).await, None);
    assert_eq!(check(vm("stablevps", "neg", "9", "web-9"), now).await, None);
    // Expired by the API; not started yet; over by the clock.
    assert_eq!(check(vm("stablevps", "expired", "1", "x"), now).await, None);
    assert_eq!(
        check(vm("stablevps", "later", "1", "x"), now).await,
        None,
        "pending"
    );
    let in_90m = now + chrono::Duration::minutes(90);
    assert_eq!(
        check(vm("stablevps", "later", "1", "x"), in_90m)
            .await
            .as_deref(),
        Some("later")
    );
    assert_eq!(
        check(vm("lnvps", "main", "1", "web-1"), in_90m).await,
        None,
        "ended after an hour"
    );
}

#[tokio::test]
async fn the_cache_holds_for_the_refresh_interval() {
    let am = Alertmanager::start().await;
    let now = Utc::now();
    let checker = SilenceChecker::new(&am.url, Duration::from_secs(5), Duration::from_secs(60))
        .expect("checker");
    let labels = vm("lnvps", "main", "1", "web-1");
    assert_eq!(
        checker.silenced_by(&labels, now).await.expect("checked"),
        None
    );
    am.silence(
        json!([eq("vm", "1")]),
        now,
        now + chrono::Duration::hours(1),
        "new",
    )
    .await;
    let later = now + chrono::Duration::seconds(59);
    assert_eq!(
        checker.silenced_by(&labels, later).await.expect("checked"),
        None,
        "still the cached list"
    );
    let refreshed = now + chrono::Duration::seconds(60);
    let m = checker
        .silenced_by(&labels, refreshed)
        .await
        .expect("checked");
    assert_eq!(m.map(|m| m.comment).as_deref(), Some("new"));
}

/// A loopback server answering every request with `status` and `body` after `delay`,
/// counting requests.
async fn fake(status: u16, body: &'static str, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [("content-type", "application/json")],
                body,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn one_round_makes_one_request_even_when_it_fails() {
    let (url, hits) = fake(200, "[]", Duration::from_millis(50)).await;
    let checker = Arc::new(
        SilenceChecker::new(&url, Duration::from_secs(5), Duration::from_secs(30))
            .expect("checker"),
    );
    let now = Utc::now();
    let round: Vec<_> = (0..50)
        .map(|_| {
            let c = checker.clone();
            tokio::spawn(async move { c.silenced_by(&vm("lnvps", "a", "1", "x"), now).await })
        })
        .collect();
    for r in round {
        assert_eq!(r.await.expect("task").expect("checked"), None);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "50 VMs, one request");

    let (url, hits) = fake(500, "{\"error\":\"boom\"}", Duration::ZERO).await;
    let checker = SilenceChecker::new(&url, Duration::from_secs(5), Duration::from_secs(30))
        .expect("checker");
    for _ in 0..5 {
        let e = checker
            .silenced_by(&vm("lnvps", "a", "1", "x"), now)
            .await
            .expect_err("a 500 is an error");
        assert!(
            matches!(e, SilenceError::Status { status: 500, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("{url}/api/v2/silences"))
                && text.contains("500")
                && text.contains("boom"),
            "{text}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a failure is cached too");
}

#[tokio::test]
async fn errors_name_the_url_and_never_panic() {
    let now = Utc::now();
    let labels = vm("lnvps", "a", "1", "x");
    // Nothing listens there.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c = SilenceChecker::new(&url, Duration::from_secs(2), Duration::ZERO).expect("checker");
    let e = c.silenced_by(&labels, now).await.expect_err("refused");
    assert!(matches!(e, SilenceError::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&format!("{url}/api/v2/silences")),
        "{e}"
    );

    // Too slow: the request timeout.
    let (url, _) = fake(200, "[]", Duration::from_secs(10)).await;
    let c = SilenceChecker::new(&url, Duration::from_millis(300), Duration::ZERO).expect("checker");
    let started = Instant::now();
    let e = c.silenced_by(&labels, now).await.expect_err("times out");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, SilenceError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&url), "{e}");

    // Not Alertmanager's answer.
    let (url, _) = fake(200, "{\"not\":\"a list\"}", Duration::ZERO).await;
    let c = SilenceChecker::new(&url, Duration::from_secs(2), Duration::ZERO).expect("checker");
    let e = c.silenced_by(&labels, now).await.expect_err("invalid");
    assert!(matches!(e, SilenceError::Invalid { .. }), "{e:?}");

    // A real Alertmanager under a wrong path prefix answers 404.
    let am = Alertmanager::start().await;
    let wrong = format!("{}/nope", am.url);
    let c = SilenceChecker::new(&wrong, Duration::from_secs(2), Duration::ZERO).expect("checker");
    let e = c.silenced_by(&labels, now).await.expect_err("404");
    assert!(
        matches!(e, SilenceError::Status { status: 404, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!("{wrong}/api/v2/silences")),
        "{e}"
    );
}
