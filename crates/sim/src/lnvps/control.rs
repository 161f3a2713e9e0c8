//! The unauthenticated `/_sim/` control API, for driving a simulator from another
//! process (`vpswatch simulate`, benchmarks, manual testing). It is not part of the
//! emulated LNVPS API: no rate limit, no auth, not logged.
//!
//! - `GET /_sim/` this index
//! - `GET|POST|DELETE /_sim/faults` list, add (a JSON [`Fault`]), clear
//! - `GET /_sim/vms`, `POST /_sim/vms` (a JSON `VmSpec`; owner "default" = the
//!   scenario's first owner) → `{"id":n}`
//! - `GET /_sim/vm/{id}`, `POST /_sim/vm/{id}` (patch: `state`, `expires` (relative
//!   to now, RFC 3339, or null = unpaid), `remove`, `status_stale`,
//!   `status_unavailable`, `timeseries_error`, `memory_as_fraction`,
//!   `auto_renewal_enabled`, `hung`, and the watchdog steps `crash`, `stays_dead`,
//!   `needs_power_cycle`, `fail_actions` (an [`ActionFailure`]),
//!   `clear_action_failures`), `DELETE /_sim/vm/{id}` (soft-delete)
//! - `GET|DELETE /_sim/requests` the request log
//! - `GET|DELETE /_sim/actions` every power-action request with its time and answer
//! - `GET|POST|DELETE /_sim/blackout` the API outage: `{"duration":"30s"}` or `{}`
//!   (until cleared)
//! - `POST /_sim/reboot-duration` `{"duration":"2s"}` boot time of starts/restarts
//! - `POST /_sim/skew` `{"secs":n}`; `POST /_sim/rate-limit` rate limit settings
//! - renewals: `GET /_sim/auto-renewals` the server-side auto-renewal's attempts;
//!   `POST /_sim/saved-wallet` `{"fails":bool}`; `POST /_sim/settle`
//!   `{"payment_hash":"…"}` pays an invoice as an outside wallet would;
//!   `GET|POST|DELETE /_sim/mint-failure` invoice minting answers the real server's 500
//!   `{"error":"An internal error occurred"}`: `{"hits":n}` for n mints or `{}` until
//!   cleared (DELETE)

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::LnvpsSimHandle;
use crate::control::{error, ok_json, parse, parse_or_empty, MAX_CONTROL_BODY, PREFIX};
use crate::faults::Fault;
use crate::http::{read_body, Body, Reply};
use crate::power::{add_failure, ActionFailure, BlackoutRequest, RebootDurationRequest};
use crate::scenario::{RateLimitSettings, RelTime, VmSpec, VmState, DEFAULT_OWNER};
use crate::world::SimVm;

/// Serves one control request.
pub async fn handle(sim: &LnvpsSimHandle, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let Some(body) = read_body(req.into_body(), MAX_CONTROL_BODY).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let reply = match (&method, segments.as_slice()) {
        (&Method::GET, []) => index(),
        (_, ["faults"]) => faults(sim, &method, &body),
        (_, ["vms"]) => vms(sim, &method, &body),
        (_, ["vm", id]) => match id.parse::<u64>() {
            Ok(id) => vm(sim, &method, id, &body),
            Err(_) => error(StatusCode::BAD_REQUEST, "bad VM id"),
        },
        (_, ["requests"]) => requests(sim, &method),
        (_, ["actions"]) => actions(sim, &method),
        (_, ["blackout"]) => blackout(sim, &method, &body),
        (&Method::POST, ["reboot-duration"]) => reboot_duration(sim, &body),
        (&Method::POST, ["skew"]) => skew(sim, &body),
        (&Method::POST, ["rate-limit"]) => rate_limit(sim, &body),
        (&Method::GET, ["auto-renewals"]) => ok_json(&sim.auto_renew_log()),
        (&Method::POST, ["saved-wallet"]) => saved_wallet(sim, &body),
        (&Method::POST, ["settle"]) => settle(sim, &body),
        (_, ["mint-failure"]) => mint_failure(sim, &method, &body),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such control endpoint; see GET /_sim/",
        ),
    };
    reply.into_response()
}

fn index() -> Reply {
    ok_json(&json!({
        "endpoints": [
            "GET|POST|DELETE /_sim/faults",
            "GET|POST /_sim/vms",
            "GET|POST|DELETE /_sim/vm/{id}",
            "GET|DELETE /_sim/requests",
            "GET|DELETE /_sim/actions",
            "GET|POST|DELETE /_sim/blackout {\"duration\":\"30s\"} (or {} until cleared)",
            "POST /_sim/reboot-duration {\"duration\":\"1s\"}",
            "POST /_sim/skew {\"secs\":n}",
            "POST /_sim/rate-limit {\"per_minute\":n,\"window\":\"60s\"}",
            "GET /_sim/auto-renewals",
            "POST /_sim/saved-wallet {\"fails\":true}",
            "POST /_sim/settle {\"payment_hash\":\"hex\"}",
            "GET|POST|DELETE /_sim/mint-failure {\"hits\":n} (or {} until cleared)"
        ]
    }))
}

#[derive(Deserialize)]
struct SavedWalletRequest {
    fails: bool,
}

fn saved_wallet(sim: &LnvpsSimHandle, body: &[u8]) -> Reply {
    match parse::<SavedWalletRequest>(body) {
        Ok(r) => {
            sim.set_saved_wallet_fails(r.fails);
            ok_json(&json!({ "ok": true }))
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintFailureRequest {
    #[serde(default)]
    hits: Option<u32>,
}

fn mint_failure(sim: &LnvpsSimHandle, method: &Method, body: &[u8]) -> Reply {
    match *method {
        Method::GET => ok_json(&json!({ "mint_failure": sim.mint_failure() })),
        Method::POST => match parse_or_empty::<MintFailureRequest>(body) {
            Ok(r) => {
                sim.fail_minting(r.hits);
                ok_json(&json!({ "mint_failure": sim.mint_failure() }))
            }
            Err(r) => r,
        },
        Method::DELETE => {
            sim.clear_mint_failure();
            ok_json(&json!({ "mint_failure": null }))
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET, POST or DELETE"),
    }
}

#[derive(Deserialize)]
struct SettleRequest {
    payment_hash: String,
}

fn settle(sim: &LnvpsSimHandle, body: &[u8]) -> Reply {
    match parse::<SettleRequest>(body) {
        Ok(r) => match sim.settle_invoice(&r.payment_hash) {
            Ok(preimage) => ok_json(&json!({ "preimage": preimage })),
            Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
        },
        Err(r) => r,
    }
}

fn faults(sim: &LnvpsSimHandle, method: &Method, body: &[u8]) -> Reply {
    match *method {
        Method::GET => ok_json(&sim.faults()),
        Method::POST => match parse::<Fault>(body) {
            Ok(f) => {
                sim.inject_fault(f);
                ok_json(&json!({ "ok": true }))
            }
            Err(r) => r,
        },
        Method::DELETE => {
            sim.clear_faults();
            ok_json(&json!({ "ok": true }))
        }
        _ => Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn vms(sim: &LnvpsSimHandle, method: &Method, body: &[u8]) -> Reply {
    match *method {
        Method::GET => ok_json(&sim.vms()),
        Method::POST => match parse::<VmSpec>(body) {
            Ok(spec) => {
                let owner = if spec.owner == DEFAULT_OWNER {
                    match sim.default_owner() {
                        Some(o) => o,
                        None => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "give `owner`: the scenario has no default owner",
                            )
                        }
                    }
                } else {
                    spec.owner.clone()
                };
                let id = sim.add_vm(&owner, spec);
                ok_json(&json!({ "id": id }))
            }
            Err(r) => r,
        },
        _ => Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

/// `POST /_sim/vm/{id}` body.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct VmPatch {
    state: Option<VmState>,
    #[serde(deserialize_with = "present")]
    expires: Option<Option<RelTime>>,
    remove: bool,
    status_stale: Option<bool>,
    status_unavailable: Option<bool>,
    timeseries_error: Option<bool>,
    memory_as_fraction: Option<bool>,
    auto_renewal_enabled: Option<bool>,
    hung: Option<bool>,
    crash: bool,
    stays_dead: Option<bool>,
    needs_power_cycle: Option<bool>,
    clear_action_failures: bool,
    fail_actions: Option<ActionFailure>,
}

/// Distinguishes a missing field (None) from an explicit null (Some(None)).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn vm(sim: &LnvpsSimHandle, method: &Method, id: u64, body: &[u8]) -> Reply {
    if sim.vm(id).is_none() {
        return error(StatusCode::NOT_FOUND, "no such VM");
    }
    match *method {
        Method::GET => {}
        Method::POST => match parse::<VmPatch>(body) {
            Ok(p) => {
                if let Some(problem) = p.fail_actions.as_ref().and_then(ActionFailure::problem) {
                    return error(StatusCode::BAD_REQUEST, &problem);
                }
                apply_patch(sim, id, p)
            }
            Err(r) => return r,
        },
        Method::DELETE => sim.remove_vm(id),
        _ => return Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
    match sim.vm(id) {
        Some(vm) => ok_json(&vm),
        None => error(StatusCode::NOT_FOUND, "no such VM"),
    }
}

fn apply_patch(sim: &LnvpsSimHandle, id: u64, p: VmPatch) {
    let now = sim.now();
    sim.update_vm(id, |vm: &mut SimVm| {
        if let Some(s) = p.state {
            vm.state = s;
        }
        if let Some(e) = p.expires {
            vm.expires = e.map(|r| crate::world::whole_seconds(r.resolve(now)));
            vm.subscription_active = vm.expires.is_some();
        }
        let flags = [
            (p.status_stale, &mut vm.status_stale),
            (p.status_unavailable, &mut vm.status_unavailable),
            (p.timeseries_error, &mut vm.timeseries_error),
            (p.memory_as_fraction, &mut vm.memory_as_fraction),
            (p.auto_renewal_enabled, &mut vm.auto_renewal_enabled),
            (p.hung, &mut vm.hung),
        ];
        for (value, field) in flags {
            if let Some(v) = value {
                *field = v;
            }
        }
        if p.crash {
            vm.crash(now);
        }
        if let Some(v) = p.stays_dead {
            vm.set_stays_dead(v);
        }
        if let Some(v) = p.needs_power_cycle {
            vm.set_needs_power_cycle(v);
        }
        if p.clear_action_failures {
            vm.action_failures.clear();
        }
        if let Some(f) = p.fail_actions {
            add_failure(&mut vm.action_failures, f);
        }
    });
    if p.remove {
        sim.remove_vm(id);
    }
}

fn requests(sim: &LnvpsSimHandle, method: &Method) -> Reply {
    match *method {
        Method::GET => ok_json(&sim.requests()),
        Method::DELETE => {
            sim.clear_requests();
            ok_json(&json!({ "ok": true }))
        }
        _ => Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn actions(sim: &LnvpsSimHandle, method: &Method) -> Reply {
    match *method {
        Method::GET => ok_json(&sim.actions()),
        Method::DELETE => {
            sim.clear_actions();
            ok_json(&json!({ "ok": true }))
        }
        _ => Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn blackout(sim: &LnvpsSimHandle, method: &Method, body: &[u8]) -> Reply {
    match *method {
        Method::GET => {}
        Method::POST => match parse_or_empty::<BlackoutRequest>(body) {
            Ok(b) => sim.start_blackout(b.length()),
            Err(r) => return r,
        },
        Method::DELETE => sim.end_blackout(),
        _ => return Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
    ok_json(&sim.blackout())
}

fn reboot_duration(sim: &LnvpsSimHandle, body: &[u8]) -> Reply {
    match parse::<RebootDurationRequest>(body) {
        Ok(r) => {
            sim.set_reboot_duration(r.duration);
            ok_json(&json!({ "ok": true }))
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Skew {
    secs: i64,
}

fn skew(sim: &LnvpsSimHandle, body: &[u8]) -> Reply {
    match parse::<Skew>(body) {
        Ok(s) => {
            sim.set_clock_skew(s.secs);
            ok_json(&json!({ "ok": true }))
        }
        Err(r) => r,
    }
}

fn rate_limit(sim: &LnvpsSimHandle, body: &[u8]) -> Reply {
    match parse::<RateLimitSettings>(body) {
        Ok(s) if s.window.is_zero() => error(StatusCode::BAD_REQUEST, "window must be positive"),
        Ok(s) => {
            sim.set_rate_limit(s);
            ok_json(&json!({ "ok": true }))
        }
        Err(r) => r,
    }
}
