//! /metrics sends the cached exposition's chunks as they are: over real HTTP the body is
//! the exact text, with an exact Content-Length, however many chunks it spans, and
//! concurrent scrapes all get the same bytes: the cached gzip body, marked
//! `Content-Encoding: gzip`, to those that accept gzip, and the identity text to the rest.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use vpswatch::metrics::chunked::CHUNK_BYTES;
use vpswatch::metrics::defs;
use vpswatch::metrics::families::FamilySet;
use vpswatch::metrics::Encoded;
use vpswatch::web::{self, WebState};
use vpswatch_model::snapshot::SnapshotStore;

/// An exposition a few chunks long: one `vps_up` sample per made-up VM.
fn big_exposition() -> vpswatch::metrics::Exposition {
    let mut set = FamilySet::default();
    let mut vm = 0u64;
    let mut approx = 0;
    while approx < 2 * CHUNK_BYTES + CHUNK_BYTES / 2 {
        let id = vm.to_string();
        set.gauge(&defs::VPS_UP, &["lnvps", "acc", &id], (vm % 2) as f64);
        approx += 50 + id.len();
        vm += 1;
    }
    set.render()
}

#[tokio::test]
async fn a_multi_chunk_exposition_arrives_whole_with_its_length() {
    let plain = big_exposition();
    assert!(plain.chunks().len() >= 3, "{} chunks", plain.chunks().len());
    let text = plain.to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&text).expect("gzip");
    let gzip = Bytes::from(gz.finish().expect("gzip"));
    let cache = Arc::new(ArcSwap::from_pointee(Encoded {
        plain,
        gzip: gzip.clone(),
        rendered: true,
        ..Encoded::default()
    }));
    let store = SnapshotStore::new(std::iter::empty());
    let state = Arc::new(WebState {
        cache,
        store: store.clone(),
        journal: None,
        state_db: None,
        alertmanager: None,
        status: Arc::new(vpswatch::status::StatusSources::snapshots_only(
            store,
            Arc::new(vpswatch_model::clock::SystemClock),
        )),
        renewals: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let cancel = CancellationToken::new();
    let server = tokio::spawn(web::serve(listener, state, cancel.clone()));
    vpswatch::tls::install_crypto_provider();
    // No automatic decompression: the Content-Encoding header and the raw bytes stay
    // visible, and nothing asks for gzip unless the request says so.
    let http = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    // Several scrapes at once on their own connections: without Accept-Encoding, asking
    // for gzip, and refusing it with q=0.
    const ASKS: [Option<&str>; 3] = [None, Some("gzip"), Some("gzip;q=0, identity")];
    let scrapes = (0..6).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        let ask = ASKS[i % ASKS.len()];
        async move {
            let mut req = http.get(&url);
            if let Some(ask) = ask {
                req = req.header("Accept-Encoding", ask);
            }
            let r = req.send().await.expect("scrape");
            assert_eq!(r.status(), 200);
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
            let encoding = header("content-encoding");
            let vary = header("vary");
            let body = r.bytes().await.expect("body");
            assert_eq!(length, Some(body.len()), "Content-Length matches the body");
            (ask, encoding, vary, body)
        }
    });
    for (ask, encoding, vary, body) in futures_util::future::join_all(scrapes).await {
        assert_eq!(vary.as_deref(), Some("Accept-Encoding"), "{ask:?}");
        if ask == Some("gzip") {
            assert_eq!(encoding.as_deref(), Some("gzip"), "gzip was asked for");
            assert_eq!(body, gzip, "the cached gzip bytes");
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .expect("valid gzip");
            assert!(out == text, "gzip body decompresses to the plain text");
        } else {
            assert_eq!(encoding, None, "identity for {ask:?}");
            assert!(
                body.as_ref() == text.as_slice(),
                "plain body is the exact text for {ask:?}"
            );
        }
    }
    cancel.cancel();
    let _ = server.await;
}

/// From the very first scrape /metrics is a well-formed exposition (an empty 200 reads
/// to Prometheus as "every series gone"): the accounts not yet polled with
/// `vpswatch_provider_up 0`, and the process series. Checked before any task of the
/// daemon has run (this runtime is single-threaded and has not yielded since the start).
#[tokio::test]
async fn metrics_are_well_formed_before_the_first_poll() {
    let unreachable = format!("http://127.0.0.1:{}", crate::common::free_port());
    let text = crate::common::config_text(&unreachable, "");
    let key = nostr::Keys::generate().secret_key().to_secret_hex();
    let config =
        vpswatch::config::parse(&text, "test", &|n| (n == "TEST_NSEC").then(|| key.clone()))
            .expect("config valid");
    let daemon =
        vpswatch::daemon::Daemon::start(config, Arc::new(vpswatch_model::clock::SystemClock))
            .await
            .expect("daemon starts");
    let first = daemon.cache.load();
    let body = String::from_utf8(first.plain.chunks().concat()).expect("utf-8");
    for needle in [
        "vpswatch_provider_up{provider=\"lnvps\",account=\"main\"} 0\n",
        "vpswatch_build_info{",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    daemon.shutdown().await;
}
