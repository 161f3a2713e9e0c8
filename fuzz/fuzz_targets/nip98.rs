//! The NIP-98 builder's inputs: any method, URL and body either sign or are refused,
//! never panic; and every header it signs is accepted by the simulator's verifier (which
//! makes the real server's checks, in its order) for the same path, method and body.
//!
//! Input: method, NUL, URL, NUL, body.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vpswatch_model::clock::SystemClock;
use vpswatch_providers::lnvps::Nip98Signer;
use vpswatch_sim::nip98::{sha256_hex, AuthRequest, Verifier};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let (Some(method), Some(url), body) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let body = body.unwrap_or_default();
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(url) = std::str::from_utf8(url)
        .map_err(|_| ())
        .and_then(|u| url::Url::parse(u).map_err(|_| ()))
    else {
        return;
    };
    let keys =
        nostr::Keys::parse("0000000000000000000000000000000000000000000000000000000000000001")
            .expect("a valid fixed key");
    let pubkey = keys.public_key().to_hex();
    let signer = Nip98Signer::new(keys, Arc::new(SystemClock));
    let Ok(header) = signer.authorization(&method, &url, body) else {
        return;
    };
    // The server compares the path of the `u` tag as an http::Uri; only URLs it can
    // parse that way are comparable.
    let Ok(uri) = url.as_str().parse::<http::Uri>() else {
        return;
    };
    let Ok(value) = http::HeaderValue::from_str(&header) else {
        panic!("the signed header is not a valid header value");
    };
    let digest = sha256_hex(body);
    let verdict = Verifier::default().authenticate(&AuthRequest {
        header: Some(&value),
        path: uri.path(),
        method: method.as_str(),
        body_sha256: Some(&digest),
        now_unix: chrono::Utc::now().timestamp(),
    });
    match verdict {
        Ok(who) => assert_eq!(who, pubkey),
        Err(r) => panic!("a header vpswatch signed was rejected: {}", r.message),
    }
});
