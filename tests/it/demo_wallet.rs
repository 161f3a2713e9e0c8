//! The demo's StableVPS story on a manual clock: the runway counts down to the renewal
//! the wallet cannot pay, the renewal before it is paid, the provisioning VPS becomes
//! active and the unpaid one is suspended — all within the first four minutes.
//!
//! The demo's simulated machines listen on fixed ports: `DemoRun` holds the demo slot.

use std::sync::Arc;
use std::time::Duration;

use crate::common::wait_metrics_at;
use chrono::{DateTime, Months, TimeZone, Utc};
use vpswatch_model::clock::ManualClock;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn demo_wallet_runs_short_within_the_scenario() {
    let t0: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 5, 11, 9, 0, 0)
        .single()
        .expect("valid time");
    let clock = Arc::new(ManualClock::new(t0));
    let demo = crate::common::DemoRun::start(clock.clone()).await;
    let http = reqwest::Client::new();
    let acc = [("provider", "stablevps"), ("account", "demo-stablevps")];
    let ids: Vec<String> = demo
        .world
        .stablevps
        .vpses()
        .into_iter()
        .map(|v| v.id)
        .collect();
    let (prime, pro) = (ids[0].clone(), ids[2].clone());

    // 20 EUR: the basic renewal at +1 min is paid (7.51 left), the prime one at +3 min
    // is not.
    let exp = wait_metrics_at(&http, demo.daemon.addr, "first poll", T, |e| {
        e.has("vps_wallet_runway_seconds", &acc)
    })
    .await;
    assert_eq!(exp.get("vps_wallet_runway_seconds", &acc), Some(180.0));
    assert_eq!(exp.get("vps_wallet_balance", &acc), Some(20.0));
    assert_eq!(
        exp.get("vps_state", &[("vm", &pro), ("state", "creating")]),
        Some(1.0)
    );

    clock.advance(chrono::Duration::minutes(4));
    let exp = wait_metrics_at(&http, demo.daemon.addr, "the story played", T, |e| {
        e.get("vps_state", &[("vm", &prime), ("state", "suspended")]) == Some(1.0)
    })
    .await;
    assert_eq!(exp.get("vps_wallet_balance", &acc), Some(7.51));
    assert_eq!(
        exp.get("vps_state", &[("vm", &pro), ("state", "running")]),
        Some(1.0)
    );
    // Left to renew: the basic one, next at t0 + 1 min + 1 month, which 7.51 cannot pay.
    let next = (t0 + chrono::Duration::minutes(1))
        .checked_add_months(Months::new(1))
        .expect("date");
    let now = t0 + chrono::Duration::minutes(4);
    assert_eq!(
        exp.get("vps_wallet_runway_seconds", &acc),
        Some((next - now).num_seconds() as f64)
    );
    drop(http);
    demo.shutdown().await;
}
