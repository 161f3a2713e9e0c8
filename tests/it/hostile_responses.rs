//! Hostile provider answers never turn into unbounded allocation: a body claiming 1 GB,
//! an endless chunked body, and a list of 10 million VMs, each served by a raw TCP
//! "provider" to a real daemon. Each poll fails cleanly (`invalid_response`, the reason
//! in the account's error), the daemon keeps serving, and the server sees the client
//! stop reading at about `max_response_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::wait_metrics_at;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vpswatch::daemon::Daemon;
use vpswatch_model::clock::SystemClock;

const T: Duration = Duration::from_secs(60);
const LIMIT: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug)]
enum Body {
    /// `Content-Length: 1073741824`, then bytes for as long as the client reads.
    ClaimsOneGigabyte,
    /// Chunked, never ending.
    Endless,
    /// Exactly 10 million VM entries with a correct length.
    TenMillionVms,
}

/// Serves every request with `body`; counts the body bytes the client accepted.
async fn hostile_server(body: Body, written: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let written = written.clone();
            tokio::spawn(async move {
                // Read the request head.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let lnvps = head.starts_with(b"GET /api/v1/vm ");
                let (open, entry, close) = if lnvps {
                    ("{\"data\":[", "{\"id\":1},", "{\"id\":2}]}")
                } else {
                    ("{\"vps\":[", "{\"id\":\"a1\"},", "{\"id\":\"a2\"}]}")
                };
                let entries: u64 = 10_000_000;
                let length = match body {
                    Body::ClaimsOneGigabyte => Some(1u64 << 30),
                    Body::Endless => None,
                    Body::TenMillionVms => {
                        Some((open.len() + close.len()) as u64 + entry.len() as u64 * (entries - 1))
                    }
                };
                let head = match length {
                    Some(n) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
                    ),
                    None => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                };
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let block = entry.repeat(4096);
                let chunked = length.is_none();
                let send = |data: &str| {
                    if chunked {
                        format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
                    } else {
                        data.as_bytes().to_vec()
                    }
                };
                let mut sent_entries: u64 = 0;
                let mut out = send(open);
                loop {
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    written.fetch_add(out.len() as u64, Ordering::Relaxed);
                    match body {
                        Body::TenMillionVms if sent_entries + 4096 >= entries - 1 => {
                            let rest = (entries - 1 - sent_entries) as usize;
                            let tail = format!("{}{close}", entry.repeat(rest));
                            let _ = s.write_all(&send(&tail)).await;
                            written.fetch_add(tail.len() as u64, Ordering::Relaxed);
                            // Keep the connection until the client is done with it.
                            let _ = s.read(&mut buf).await;
                            return;
                        }
                        _ => {
                            sent_entries += 4096;
                            out = send(&block);
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A daemon with one LNVPS and one StableVPS account on the hostile server.
async fn daemon(addr: std::net::SocketAddr, max_response_bytes: u64) -> Daemon {
    vpswatch::tls::install_crypto_provider();
    let text = format!(
        r#"poll_interval = "1h"
request_timeout = "20s"
max_response_bytes = {max_response_bytes}
[web]
listen_address = "127.0.0.1:0"
[providers.lnvps]
max_attempts = 1
[providers.stablevps]
max_attempts = 1
[probes]
enabled = false
[[accounts]]
name = "ln"
provider = "lnvps"
base_url = "http://{addr}"
nsec_env = "TEST_NSEC"
[[accounts]]
name = "sv"
provider = "stablevps"
base_url = "http://{addr}"
api_key_env = "SVPS"
"#
    );
    let nsec = nostr::Keys::generate().secret_key().to_secret_hex();
    let config = vpswatch::config::parse(&text, "hostile", &|n| match n {
        "TEST_NSEC" => Some(nsec.clone()),
        "SVPS" => Some("svps_live_0000".into()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Daemon::start(config, Arc::new(SystemClock))
        .await
        .expect("daemon")
}

/// Waits for both accounts' first poll to fail with `invalid_response`; returns their
/// errors.
async fn both_refused(d: &Daemon) -> Vec<String> {
    let http = reqwest::Client::new();
    wait_metrics_at(&http, d.addr, "both polls refused", T, |e| {
        ["ln", "sv"].iter().all(|a| {
            e.get("vpswatch_provider_up", &[("account", a)]) == Some(0.0)
                && e.samples.iter().any(|(n, l, v)| {
                    n == "vpswatch_provider_requests_total"
                        && *v >= 1.0
                        && l.iter().any(|(k, x)| k == "account" && x == a)
                        && l.iter()
                            .any(|(k, x)| k == "code" && x == "invalid_response")
                })
        })
    })
    .await;
    // The daemon still serves.
    let r = http
        .get(format!("http://{}/-/healthy", d.addr))
        .send()
        .await
        .expect("healthy");
    assert_eq!(r.status(), 200);
    d.store
        .all()
        .iter()
        .map(|s| s.last_error.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_body_claiming_one_gigabyte_is_refused_unread() {
    let written = Arc::new(AtomicU64::new(0));
    let addr = hostile_server(Body::ClaimsOneGigabyte, written.clone()).await;
    let d = daemon(addr, LIMIT).await;
    for e in both_refused(&d).await {
        assert!(
            e.contains(&format!("larger than the {LIMIT}-byte limit")),
            "{e}"
        );
    }
    d.shutdown().await;
    // Refused on its declared length: hardly anything was read (socket buffers aside).
    assert!(
        written.load(Ordering::Relaxed) < 16 * LIMIT,
        "{} bytes taken",
        written.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_limit() {
    let written = Arc::new(AtomicU64::new(0));
    let addr = hostile_server(Body::Endless, written.clone()).await;
    let d = daemon(addr, LIMIT).await;
    for e in both_refused(&d).await {
        assert!(
            e.contains(&format!("larger than the {LIMIT}-byte limit")),
            "{e}"
        );
    }
    d.shutdown().await;
    // Two accounts read about LIMIT each before hanging up; the server's writes stop
    // there (plus what the kernel buffers hold).
    let n = written.load(Ordering::Relaxed);
    assert!(n >= 2 * LIMIT, "the body was not read up to the limit: {n}");
    assert!(
        n < 2 * LIMIT + 16 * 1024 * 1024,
        "read far past the limit: {n}"
    );
}

#[tokio::test]
async fn ten_million_vms_are_refused_cleanly() {
    // With the default 16 MiB limit the list (≈ 90 MB) is refused by its size.
    let written = Arc::new(AtomicU64::new(0));
    let addr = hostile_server(Body::TenMillionVms, written.clone()).await;
    let d = daemon(addr, 16 * 1024 * 1024).await;
    for e in both_refused(&d).await {
        assert!(e.contains("larger than the 16777216-byte limit"), "{e}");
    }
    d.shutdown().await;

    // With a limit raised past the body, the entry cap refuses it while parsing.
    let written = Arc::new(AtomicU64::new(0));
    let addr = hostile_server(Body::TenMillionVms, written.clone()).await;
    let d = daemon(addr, 256 * 1024 * 1024).await;
    for e in both_refused(&d).await {
        assert!(e.contains("more than 100000 entries"), "{e}");
    }
    d.shutdown().await;
}
