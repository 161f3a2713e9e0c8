//! The HTTP server's resource limits against hostile clients, over raw TCP: a slowloris
//! client (one header byte at a time) is cut off at the head deadline, a silent
//! connection at the same deadline counted from accept (also with the default limits),
//! oversized heads get 431 and oversized bodies 413, and a new client at
//! `max_connections` is served at once, the connection cheapest to lose making room —
//! even with the cap full of silent sockets and a thousand more arriving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Harness;
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

/// A daemon with the default `[web]` limits (10 s head deadline, 2 min idle timeout,
/// 256 connections).
async fn start_default() -> Harness {
    Harness::start_tweaked(
        |owner| Scenario::load("demo", Some(owner)).expect("scenario"),
        "",
        Arc::new(SystemClock),
        Arc::new(LogNotifier),
        |c| assert_eq!(c.web.limits, ServerLimits::default()),
    )
    .await
}

/// One request on a connection kept open: the status line of the answer.
async fn request_on(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The answers used here are short and carry Content-Length; the head and body
    // arrive together.
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether the server has closed `s` (a read sees EOF or an error within 50 ms).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn at_the_cap_a_connection_without_a_request_makes_room() {
    // Default head deadline (10 s): only eviction can serve the new client sooner.
    let h = Harness::start_tweaked(
        |owner| Scenario::load("demo", Some(owner)).expect("scenario"),
        "",
        Arc::new(SystemClock),
        Arc::new(LogNotifier),
        |c| c.web.limits.max_connections = 2,
    )
    .await;
    let addr = h.daemon.addr;
    // An older keep-alive connection that has been served, and a newer silent one.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(request_on(&mut kept, "/-/healthy").await, "HTTP/1.1 200 OK");
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (resp, _) = read_until_closed(&mut c, Duration::from_secs(30)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served only after {:?}: it waited for a slot to free by itself",
        started.elapsed()
    );
    // The silent one made room, though newer; the served one is still open.
    let (_, silent_closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        silent_closed,
        "the silent connection was not the one closed"
    );
    assert!(
        !closed(&mut kept).await,
        "the served keep-alive connection was closed"
    );
    assert_eq!(request_on(&mut kept, "/metrics").await, "HTTP/1.1 200 OK");
    h.shutdown().await;
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_default_head_deadline() {
    let h = start_default().await;
    let addr = h.daemon.addr;
    let head_deadline = ServerLimits::default().header_read_timeout;
    let started = Instant::now();
    // Nothing at all; an HTTP/2 preface and then nothing; one byte of a head.
    let mut sockets = Vec::new();
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"G"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(first).await.expect("write");
        sockets.push(s);
    }
    let waits = sockets.iter_mut().map(|s| async move {
        let (_, closed) = read_until_closed(s, Duration::from_secs(60)).await;
        (closed, started.elapsed())
    });
    for (i, (closed, after)) in futures_util::future::join_all(waits)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(closed, "connection {i} still open after 60 s");
        // Closed by the head deadline (not earlier), long before the 2 min idle timeout.
        assert!(
            after >= head_deadline - Duration::from_millis(500),
            "connection {i} closed early: {after:?}"
        );
        assert!(
            after < head_deadline + Duration::from_secs(15),
            "connection {i} closed late: {after:?}"
        );
    }
    h.shutdown().await;
}

/// Raises this process's open-file limit to what the test needs (client and, in
/// process, server sockets).
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "open-file limit {} below {want}",
        lim.rlim_cur
    );
}

#[tokio::test]
async fn a_fresh_client_is_served_within_a_second_with_the_cap_full_of_silent_sockets() {
    let limits = ServerLimits::default();
    raise_fd_limit(4 * (limits.max_connections as u64 + 1000) + 256);
    let h = start_default().await;
    let addr = h.daemon.addr;
    let started = Instant::now();
    // The cap's worth of sockets that never send a byte…
    let mut silent = Vec::new();
    for _ in 0..limits.max_connections {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // …and 1,000 more arriving while a fresh client asks.
    let mut more = Some(tokio::spawn(async move {
        let connects = (0..1000).map(|_| TcpStream::connect(addr));
        futures_util::future::join_all(connects).await
    }));
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut took = Vec::new();
    for round in 0..6 {
        if let (3, Some(more)) = (round, more.take()) {
            let more = more.await.expect("connects");
            let ok = more.iter().filter(|c| c.is_ok()).count();
            assert!(ok >= 900, "only {ok} of 1,000 extra connections were made");
            silent.extend(more.into_iter().flatten());
        }
        for path in ["/-/healthy", "/metrics"] {
            let t = Instant::now();
            let r = fresh.get(h.url(path)).send().await.expect("answered");
            assert_eq!(r.status(), 200, "{path}");
            r.bytes().await.expect("body");
            took.push((path, t.elapsed()));
        }
    }
    // All of it within the silent sockets' head deadline: served because they made room,
    // not because they timed out.
    assert!(
        started.elapsed() < limits.header_read_timeout,
        "the test took {:?}; the head deadline may have freed the slots",
        started.elapsed()
    );
    eprintln!("fresh requests with the cap full: {took:?}");
    for (path, t) in &took {
        assert!(
            *t < Duration::from_secs(1),
            "{path} took {t:?} with the cap full"
        );
    }
    drop(silent);
    h.shutdown().await;
}
