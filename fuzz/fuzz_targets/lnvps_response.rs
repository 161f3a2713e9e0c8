//! LNVPS response parsers and what follows them: the VM list (each entry mapped to the
//! neutral model under every BTC unit) and the time-series (newest complete point →
//! usage). Hostile bodies give an error or data, never a panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use vpswatch_providers::lnvps::{
    map_vm, newest_complete_point, parse_time_series, parse_vm_list, usage_from_point, BtcUnit,
};

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_795_413_000, 0).unwrap_or_default();
    let names = HashMap::from([("1".to_string(), "web".to_string())]);
    for ct in [Some("application/json"), Some("text/html"), None] {
        if let Ok((vms, _warnings)) = parse_vm_list(ct, data) {
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
});
