//! The unauthenticated `/_sim/` control API of the StableVPS simulator, in the style of
//! the LNVPS one: for driving a simulator that runs in another process (`vpswatch
//! simulate --provider stablevps`, benchmarks, manual testing). It is not part of the
//! emulated API: no key, no blackout, no faults, not logged.
//!
//! - `GET /_sim/` this index
//! - `GET|POST|DELETE /_sim/faults` list, add (a JSON [`Fault`]), clear
//! - `GET /_sim/vps` every VPS as the simulator holds it
//! - `GET /_sim/vps/{id}`, `POST /_sim/vps/{id}` (patch: `status`, `vps_status`,
//!   `hang`, `crash` (true or the `vpsStatus` to report), `stays_dead`,
//!   `needs_power_cycle`, `clear_action_failures`, `fail_actions` (an
//!   [`ActionFailure`]), `remove`), `DELETE /_sim/vps/{id}` (delete)
//! - `GET|DELETE /_sim/actions` every authenticated write with its time and answer
//! - `GET|DELETE /_sim/requests` the request log
//! - `GET|POST|DELETE /_sim/blackout` the API outage: `{"duration":"30s"}` or `{}`
//!   (until cleared)
//! - `POST /_sim/reboot-duration` `{"duration":"2s"}` boot time of starts/reboots

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::scenario::Crash;
use super::StableVpsSimHandle;
use crate::control::{error, ok_json, parse, parse_or_empty, MAX_CONTROL_BODY, PREFIX};
use crate::faults::Fault;
use crate::http::{read_body, Body, Reply};
use crate::power::{add_failure, ActionFailure, BlackoutRequest, RebootDurationRequest};

/// Serves one control request.
pub async fn handle(sim: &StableVpsSimHandle, req: Request<Incoming>) -> Response<Body> {
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
        (&Method::GET, ["vps"]) => ok_json(&sim.vpses()),
        (_, ["vps", id]) => vps(sim, &method, id, &body),
        (_, ["actions"]) => actions(sim, &method),
        (_, ["requests"]) => requests(sim, &method),
        (_, ["blackout"]) => blackout(sim, &method, &body),
        (&Method::POST, ["reboot-duration"]) => match parse::<RebootDurationRequest>(&body) {
            Ok(r) => {
                sim.set_reboot_duration(r.duration);
                ok_json(&json!({ "ok": true }))
            }
            Err(r) => r,
        },
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
            "GET /_sim/vps",
            "GET|POST|DELETE /_sim/vps/{id}",
            "GET|DELETE /_sim/actions",
            "GET|DELETE /_sim/requests",
            "GET|POST|DELETE /_sim/blackout {\"duration\":\"30s\"} (or {} until cleared)",
            "POST /_sim/reboot-duration {\"duration\":\"1s\"}"
        ]
    }))
}

fn faults(sim: &StableVpsSimHandle, method: &Method, body: &[u8]) -> Reply {
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

/// `POST /_sim/vps/{id}` body; fields apply in this order.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct VpsPatch {
    status: Option<String>,
    vps_status: Option<String>,
    crash: Option<Crash>,
    hang: Option<bool>,
    stays_dead: Option<bool>,
    needs_power_cycle: Option<bool>,
    clear_action_failures: bool,
    fail_actions: Option<ActionFailure>,
    remove: bool,
}

fn vps(sim: &StableVpsSimHandle, method: &Method, id: &str, body: &[u8]) -> Reply {
    if sim.vps(id).is_none() {
        return error(StatusCode::NOT_FOUND, "no such VPS");
    }
    match *method {
        Method::GET => {}
        Method::POST => match parse::<VpsPatch>(body) {
            Ok(p) => {
                if let Some(problem) = p.fail_actions.as_ref().and_then(ActionFailure::problem) {
                    return error(StatusCode::BAD_REQUEST, &problem);
                }
                sim.update_vps(id, |v| {
                    if let Some(s) = p.status {
                        v.status = s;
                    }
                    if let Some(s) = p.vps_status {
                        v.vps_status = s;
                    }
                    if let Some(s) = p.crash.as_ref().and_then(Crash::vps_status) {
                        v.crash(s);
                    }
                    if let Some(b) = p.hang {
                        v.set_hang(b);
                    }
                    if let Some(b) = p.stays_dead {
                        v.set_stays_dead(b);
                    }
                    if let Some(b) = p.needs_power_cycle {
                        v.set_needs_power_cycle(b);
                    }
                    if p.clear_action_failures {
                        v.action_failures.clear();
                    }
                    if let Some(f) = p.fail_actions {
                        add_failure(&mut v.action_failures, f);
                    }
                    if p.remove {
                        v.deleted = true;
                    }
                });
            }
            Err(r) => return r,
        },
        Method::DELETE => sim.remove_vps(id),
        _ => return Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
    match sim.vps(id) {
        Some(v) => ok_json(&v),
        None => error(StatusCode::NOT_FOUND, "no such VPS"),
    }
}

fn actions(sim: &StableVpsSimHandle, method: &Method) -> Reply {
    match *method {
        Method::GET => ok_json(&sim.actions()),
        Method::DELETE => {
            sim.clear_actions();
            ok_json(&json!({ "ok": true }))
        }
        _ => Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn requests(sim: &StableVpsSimHandle, method: &Method) -> Reply {
    match *method {
        Method::GET => ok_json(&sim.requests()),
        Method::DELETE => {
            sim.clear_requests();
            ok_json(&json!({ "ok": true }))
        }
        _ => Reply::empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn blackout(sim: &StableVpsSimHandle, method: &Method, body: &[u8]) -> Reply {
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
