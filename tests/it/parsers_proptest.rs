//! Property tests over every parser that reads outside input, run by `cargo test` with a
//! bounded number of cases (the `fuzz/` crate runs the same entry points under
//! libFuzzer for longer, see `.ci/fuzz`): the LNVPS and StableVPS response parsers (and
//! the mapping, usage and runway code behind them), the TOML config parser, the web
//! config parser and the NIP-98 signer. Inputs are arbitrary bytes, mutations of the
//! seed corpus in `fuzz/corpus/` (real LNVPS answers among them) and generated JSON.
//! Properties: no panic; errors are errors, not crashes, even for deep nesting; every
//! header the signer produces passes the server's checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use vpswatch_model::clock::SystemClock;
use vpswatch_providers::lnvps::{
    map_vm, newest_complete_point, parse_time_series, parse_vm_list, usage_from_point, BtcUnit,
    Nip98Signer,
};
use vpswatch_providers::runway::wallet_runway_seconds;
use vpswatch_providers::stablevps::{
    builtin_plans, map_vps, parse_vps, parse_vps_list, renewal_streams,
};
use vpswatch_sim::nip98::{sha256_hex, AuthRequest, Verifier};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are reported in the test output; nothing is written to the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", name]
        .iter()
        .collect();
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty seed corpus {}", dir.display());
    out
}

/// A seed with a few byte-level edits: overwrite, insert, delete, truncate.
fn mutated(name: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(name);
    let n = seeds.len();
    (
        0..n,
        proptest::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 0..8),
    )
        .prop_map(move |(i, edits)| {
            let mut s = seeds[i].clone();
            for (pos, op, byte) in edits {
                let p = if s.is_empty() { 0 } else { pos % s.len() };
                match op {
                    0 if !s.is_empty() => s[p] = byte,
                    1 => s.insert(p, byte),
                    2 if !s.is_empty() => {
                        s.remove(p);
                    }
                    _ => s.truncate(p),
                }
            }
            s
        })
}

/// Arbitrary JSON, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-z0-9:./ -]{0,12}".prop_map(serde_json::Value::from),
        // Field names and values the parsers look at.
        prop_oneof![
            Just("running"),
            Just("1970-01-01T00:00:00Z"),
            Just("9999-12-31T23:59:59.999Z"),
            Just("BTC"),
            Just("EUR"),
            Just("monthly"),
            Just("1.2.3.4/32"),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("status".to_string()),
                    Just("state".to_string()),
                    Just("timestamp".to_string()),
                    Just("template".to_string()),
                    Just("cost_plan".to_string()),
                    Just("amount".to_string()),
                    Just("currency".to_string()),
                    Just("interval_amount".to_string()),
                    Just("interval_type".to_string()),
                    Just("ip_assignments".to_string()),
                    Just("ip".to_string()),
                    Just("expires".to_string()),
                    Just("memory".to_string()),
                    Just("memory_size".to_string()),
                    Just("planId".to_string()),
                    Just("billingCycle".to_string()),
                    Just("currentPeriodEnd".to_string()),
                    Just("vpsStatus".to_string()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..8,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn lnvps_glue(data: &[u8]) {
    let now = chrono::DateTime::from_timestamp(1_795_413_000, 0).unwrap_or_default();
    let names = HashMap::from([("1".to_string(), "web".to_string())]);
    for ct in [Some("application/json"), Some("text/html"), None] {
        if let Ok((vms, _)) = parse_vm_list(ct, data) {
            for vm in &vms {
                for unit in [BtcUnit::Auto, BtcUnit::Msat, BtcUnit::Sat] {
                    let _ = map_vm(vm, now, unit, &names);
                }
            }
        }
        if let Ok(points) = parse_time_series(ct, data) {
            if let Some(p) = newest_complete_point(&points, now) {
                let _ = usage_from_point(p);
            }
        }
    }
}

fn stablevps_glue(data: &[u8]) {
    let now = chrono::DateTime::from_timestamp(1_795_413_000, 0).unwrap_or_default();
    let plans = builtin_plans();
    let mut all = Vec::new();
    if let Ok((list, _)) = parse_vps_list(Some("application/json"), data) {
        all.extend(list);
    }
    if let Ok(one) = parse_vps(Some("application/json"), data) {
        all.push(one);
    }
    for v in &all {
        let _ = map_vps(v, &plans, &HashMap::new(), now);
    }
    let (streams, _) = renewal_streams(&all, &plans);
    for balance in [0.0, 19.49, 1e9, f64::MAX] {
        let _ = wallet_runway_seconds(balance, &streams, now, 5 * 365 * 86_400);
    }
}

fn config_glue(text: &str) {
    // Paths into /dev, /proc and /sys are the operator's business, not input.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    if let Err(e) = vpswatch::config::parse(text, "prop.toml", &|_| None) {
        assert!(!e.problems.is_empty());
    }
}

fn web_config_glue(text: &str) {
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let mut deps = Vec::new();
    if let Err(p) = vpswatch::web_config::parse(text, Path::new("/nonexistent"), &mut deps) {
        assert!(!p.is_empty());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lnvps_responses_from_the_corpus(data in mutated("lnvps_response")) {
        lnvps_glue(&data);
    }

    #[test]
    fn lnvps_responses_as_generated_json(
        list in proptest::collection::vec(json(), 0..6),
        wrap in 0u8..3,
    ) {
        let body = match wrap {
            0 => serde_json::json!({ "data": list }),
            1 => serde_json::json!({ "data": list[..].first().cloned() }),
            _ => serde_json::Value::Array(list),
        };
        lnvps_glue(body.to_string().as_bytes());
    }

    #[test]
    fn stablevps_responses_from_the_corpus(data in mutated("stablevps_response")) {
        stablevps_glue(&data);
    }

    #[test]
    fn stablevps_responses_as_generated_json(
        list in proptest::collection::vec(json(), 0..6),
        total in any::<Option<u64>>(),
    ) {
        stablevps_glue(serde_json::json!({ "vps": list, "total": total }).to_string().as_bytes());
        if let Some(first) = list.first() {
            stablevps_glue(first.to_string().as_bytes());
        }
    }

    #[test]
    fn responses_as_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        lnvps_glue(&data);
        stablevps_glue(&data);
    }

    #[test]
    fn config_from_the_corpus(data in mutated("config")) {
        config_glue(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn config_as_arbitrary_text(text in any::<String>()) {
        config_glue(&text);
    }

    #[test]
    fn web_config_from_the_corpus(data in mutated("web_config")) {
        web_config_glue(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn web_config_as_arbitrary_text(text in any::<String>()) {
        web_config_glue(&text);
    }

    #[test]
    fn nip98_signs_what_the_server_accepts(
        method in prop_oneof![
            Just("GET".to_string()),
            Just("PATCH".to_string()),
            Just("DELETE".to_string()),
            "[A-Z]{1,12}",
        ],
        host in prop_oneof![Just("api.lnvps.net"), Just("127.0.0.1:8080"), Just("[::1]:1")],
        segments in proptest::collection::vec("[a-zA-Z0-9._~%{}-]{0,10}", 0..6),
        query in proptest::option::of("[a-z0-9=&%]{0,20}"),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut text = format!("https://{host}/{}", segments.join("/"));
        if let Some(q) = &query {
            text.push('?');
            text.push_str(q);
        }
        let Ok(url) = url::Url::parse(&text) else {
            return Ok(());
        };
        let method = http::Method::from_bytes(method.as_bytes()).expect("token method");
        let keys = nostr::Keys::generate();
        let signer = Nip98Signer::new(keys.clone(), Arc::new(SystemClock));
        let header = signer.authorization(&method, &url, &body).expect("signs");
        let value = http::HeaderValue::from_str(&header).expect("a valid header value");
        let uri = url.as_str().parse::<http::Uri>().expect("an http URI");
        let digest = sha256_hex(&body);
        let who = Verifier::default()
            .authenticate(&AuthRequest {
                header: Some(&value),
                path: uri.path(),
                method: method.as_str(),
                body_sha256: Some(&digest),
                now_unix: chrono::Utc::now().timestamp(),
            })
            .map_err(|r| TestCaseError::fail(r.message))?;
        prop_assert_eq!(who, keys.public_key().to_hex());
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // A deep entry is skipped with a warning (or the whole answer refused): no VM, no
    // crash.
    let nest = |key: &str| {
        format!(
            "{{\"{key}\":[{}{}]}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
    };
    match parse_vm_list(Some("application/json"), nest("data").as_bytes()) {
        Ok((vms, warnings)) => assert!(vms.is_empty() && warnings.len() == 1, "{warnings:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match parse_vps_list(Some("application/json"), nest("vps").as_bytes()) {
        Ok((vms, warnings)) => assert!(vms.is_empty() && warnings.len() == 1, "{warnings:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_time_series(Some("application/json"), deep.as_bytes()).is_err());
    assert!(parse_vps(Some("application/json"), deep.as_bytes()).is_err());
    let deep_yaml = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut deps = Vec::new();
    assert!(vpswatch::web_config::parse(&deep_yaml, Path::new("/nonexistent"), &mut deps).is_err());
    let deep_toml = format!("a = {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(vpswatch::config::parse(&deep_toml, "deep.toml", &|_| None).is_err());
}

#[test]
fn every_real_lnvps_sample_parses_or_is_refused_cleanly() {
    // The captured list answers parse with every VM; the rest are refused with a reason.
    let dir: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "fuzz",
        "corpus",
        "lnvps_response",
    ]
    .iter()
    .collect();
    let list = std::fs::read(dir.join("get_vm_list.json")).expect("sample");
    let (vms, warnings) = parse_vm_list(Some("application/json"), &list).expect("parses");
    assert!(!vms.is_empty() && warnings.is_empty(), "{warnings:?}");
    let series = std::fs::read(dir.join("get_vm_time_series.json")).expect("sample");
    assert!(!parse_time_series(Some("application/json"), &series)
        .expect("parses")
        .is_empty());
    let bad = std::fs::read(dir.join("get_vm_bad_id.txt")).expect("sample");
    assert!(parse_vm_list(Some("text/plain"), &bad).is_err());
}
