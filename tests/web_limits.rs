//! The HTTP server's resource limits against hostile clients, over raw TCP: a slowloris
//! client (one header byte at a time) is cut off at the head deadline, a silent
//! connection at the same deadline, oversized heads get 431 and oversized bodies 413,
//! and connections beyond `max_connections` wait until a slot frees. Meanwhile a normal
//! scrape is answered.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vpswatch::notify::LogNotifier;
use vpswatch::web_config::limits::ServerLimits;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::Scenario;

const HEAD_DEADLINE: Duration = Duration::from_millis(600);

/// A daemon with a short head deadline and `max_connections`.
async fn start(max_connections: usize) -> Harness {
    Harness::start_tweaked(
        |owner| Scenario::load("demo", Some(owner)).expect("scenario"),
        "",
        Arc::new(SystemClock),
        Arc::new(LogNotifier),
        move |c| {
            c.web.limits = ServerLimits {
                max_connections,
                header_read_timeout: HEAD_DEADLINE,
                idle_timeout: Duration::from_secs(5),
                max_header_bytes: 8192,
                max_request_body_bytes: 1024,
            }
        },
    )
    .await
}

/// Reads until the server closes the connection (or `limit` passes); returns what was
/// read and whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_is_cut_off_at_the_head_deadline() {
    let h = start(64).await;
    let addr = h.daemon.addr;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    // One header byte every 100 ms, for up to 20 s: the server must hang up long before.
    let mut cut_off = None;
    for b in b"X-Slow: ".iter().chain([b'a'; 200].iter()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(&[*b]).await.is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = Some(started.elapsed());
                break;
            }
            _ => {}
        }
    }
    let cut_off = cut_off.expect("the slow client was never cut off");
    assert!(
        cut_off >= HEAD_DEADLINE - Duration::from_millis(50),
        "cut off before the deadline: {cut_off:?}"
    );
    assert!(cut_off < HEAD_DEADLINE * 5, "cut off too late: {cut_off:?}");
    // The server still answers a normal client.
    let r = h
        .http
        .get(h.url("/-/healthy"))
        .send()
        .await
        .expect("healthy");
    assert_eq!(r.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let h = start(64).await;
    let mut s = TcpStream::connect(h.daemon.addr).await.expect("connect");
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "an idle connection stayed open");
    assert!(started.elapsed() >= HEAD_DEADLINE - Duration::from_millis(50));
    h.shutdown().await;
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let h = start(64).await;
    let addr = h.daemon.addr;

    // A head larger than max_header_bytes: 431, connection closed.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let big = "a".repeat(16 * 1024);
    let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The server may hang up before it has read everything.
    let _ = s.write_all(req.as_bytes()).await;
    let (resp, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert!(closed);

    // A declared body over the limit: 413 without reading it.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .expect("write");
    let (resp, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
    assert!(
        closed,
        "the connection must not be reused after an unread body"
    );

    // A chunked body that keeps coming: 413 once past the limit.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..4 {
        let chunk = format!("{:x}\r\n{}\r\n", 512, "b".repeat(512));
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (resp, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");

    // A small request on the same server is still fine.
    let r = h.http.get(h.url("/metrics")).send().await.expect("scrape");
    assert_eq!(r.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let h = start(2).await;
    let addr = h.daemon.addr;
    // Two idle connections take both slots (until the head deadline frees them).
    let a = TcpStream::connect(addr).await.expect("connect");
    let b = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut c = TcpStream::connect(addr)
        .await
        .expect("the kernel queues it");
    c.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (resp, _) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    // It was served only once a slot freed: when the idle ones hit the deadline.
    assert!(
        started.elapsed() >= HEAD_DEADLINE - Duration::from_millis(50),
        "served while both slots were taken ({:?})",
        started.elapsed()
    );
    drop((a, b));
    h.shutdown().await;
}
