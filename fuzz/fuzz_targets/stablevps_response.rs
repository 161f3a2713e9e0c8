//! StableVPS response parsers and what follows them: the VPS list and the detail
//! answer, mapped to the neutral model with the built-in plan table, renewal streams and
//! the wallet runway. Never a panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use vpswatch_providers::runway::wallet_runway_seconds;
use vpswatch_providers::stablevps::{
    builtin_plans, map_vps, parse_vps, parse_vps_list, renewal_streams,
};

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_795_413_000, 0).unwrap_or_default();
    let plans = builtin_plans();
    let names = HashMap::new();
    let mut all = Vec::new();
    if let Ok((list, _warnings)) = parse_vps_list(Some("application/json"), data) {
        all.extend(list);
    }
    if let Ok(one) = parse_vps(Some("application/json"), data) {
        all.push(one);
    }
    for v in &all {
        let _ = map_vps(v, &plans, &names, now);
    }
    let (streams, _) = renewal_streams(&all, &plans);
    for balance in [0.0, 19.49, 1e9] {
        let _ = wallet_runway_seconds(balance, &streams, now, 5 * 365 * 86_400);
    }
});
