//! The fake StableVPS API server.
//!
//! StableVPS publishes no server source, only an API page (summarised in
//! docs/providers.md), so this simulator is what the StableVPS client and the watchdog
//! are tested against. It serves the documented endpoints on loopback with in-memory
//! accounts, wallets, API keys and VPS services, and makes every open question
//! producible: any `status` / `vpsStatus` string, expiring and read-only keys, every
//! error code, and injected faults (the shared [`Fault`] types, matched by endpoint
//! template).
//!
//! Behaviour that the API page leaves open is a *simulator choice*, documented here:
//! - renewal happens at `currentPeriodEnd` (checked on every request and by a 1 s
//!   background tick): the plan price is taken from the wallet and the period moves on
//!   by a calendar month/year. Only `status = "active"` services renew. When the wallet
//!   cannot pay, the service gets the scenario's `renewal_on_insufficient_balance`
//!   state, by default `status: "suspended"`, `vpsStatus: "stopped"`;
//! - rebooting a `provisioning` VPS is refused with 409; start/reboot clear `hang`;
//! - `provisioning` becomes `active` after the scenario's `provisioning_delay`;
//! - fault statuses answer JSON `{"error": …}` (502: "VPS provider request failed");
//! - per-VPS fault matching uses [`fault_key`] of the service id as the numeric id.
//!
//! The watchdog's trouble (`sim::power`) is scriptable as for LNVPS — crash (reported
//! `stopped` unless told otherwise: the page documents no value), hang, dead through
//! reboots, fixed only by stop+start, failing actions (JSON errors), API blackout (503
//! JSON on every endpoint), boot time — through handle methods, the scenario `timeline`
//! and the unauthenticated `/_sim/` control API (`control`).
//!
//! Each VPS with `listen_rdp` gets a real TCP listener on `ip_address:rdp_port`
//! (default a distinct 127.2.x.y, Linux routes all of 127/8 to loopback) while its
//! `vpsStatus` is `active` and it is neither `hang`ing nor booting, so liveness probes
//! are real TCP.
//!
//! A request goes: control API? → blackout (503) → route (404/405) → injected fault → API key (401) → scope (403) →
//! body (64 KiB) → handler, with the world advanced to the clock's "now" first.

mod api;
mod control;
mod scenario;
mod world;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::SimError;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{read_body, serve, spawn_ticker, Body, Reply, JSON};
use api::{error, Routed};
use vpswatch_model::clock::SharedClock;
use world::World;

use super::faults::{self, FaultEffect};
pub use super::faults::{EndpointMatch, Fault, FaultKind};
use super::power;
pub use super::power::{ActionFailure, Blackout, BlackoutLength, PowerAction};
pub use super::scenario::RelTime;
pub use api::{ACCOUNT, AUTH, VPS_ACTIONS, VPS_LIST, VPS_ONE, WALLET};
pub use scenario::{
    bench_key, AccountSpec, Crash, KeyScope, KeySpec, RenewalFailure, StableScenario,
    StableTimelineEvent, VpsSpec, DEMO_FULL_KEY, DEMO_READ_KEY,
};
pub use world::{plan_price, SimAccount, SimAction, SimVps};

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Requests remembered by [`StableVpsSimHandle::requests`].
const MAX_LOGGED: usize = 100_000;
/// Longest a `Hang` fault holds a request.
/// The number a service id stands for in [`EndpointMatch::Vm`]: its last 16 hex
/// digits. `None` if the id is not hex.
pub fn fault_key(id: &str) -> Option<u64> {
    let tail = id.get(id.len().saturating_sub(16)..)?;
    u64::from_str_radix(tail, 16).ok()
}

/// One request the emulated API saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Route template, e.g. "/api/v1/vps/{id}/actions"; "" when no route matched.
    pub endpoint: String,
    /// The path's `{id}`.
    pub vps_id: Option<String>,
    /// Status sent; 0 = never answered (a `Hang` fault).
    pub status: u16,
    /// Simulator time.
    pub at: DateTime<Utc>,
    /// The presented key's first characters, as the API's `keyPrefix` shows them.
    pub key_prefix: Option<String>,
    /// Header that carried the key: `bearer` or `x-api-key`.
    pub auth_style: Option<&'static str>,
}

/// Starts StableVPS simulators.
pub struct StableVpsSim;

impl StableVpsSim {
    /// Binds `listen`, builds the world from `scenario` at `clock.now()` (opening the
    /// RDP listeners) and serves until [`StableVpsSimHandle::shutdown`].
    pub async fn start(
        listen: SocketAddr,
        scenario: StableScenario,
        clock: SharedClock,
    ) -> Result<StableVpsSimHandle, SimError> {
        scenario.validate()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(SimError::io(format!(
                "binding the StableVPS simulator to {listen}"
            )))?;
        let addr = listener
            .local_addr()
            .map_err(SimError::io("reading the listening address"))?;
        let shutdown = CancellationToken::new();
        let runtime = tokio::runtime::Handle::current();
        let world = World::new(scenario, clock.now(), runtime, shutdown.clone());
        let handle = StableVpsSimHandle {
            inner: Arc::new(Shared {
                addr,
                clock,
                world: Mutex::new(world),
                log: Mutex::new(VecDeque::new()),
                shutdown,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let server = {
            let h = handle.clone();
            let token = handle.inner.shutdown.clone();
            tokio::spawn(serve(listener, token, move |req, _peer| {
                let h = h.clone();
                async move { h.handle_request(req).await }
            }))
        };
        let ticker = {
            let h = handle.clone();
            spawn_ticker(handle.inner.shutdown.clone(), move || h.tick())
        };
        handle.lock_tasks().extend([server, ticker]);
        Ok(handle)
    }
}

struct Shared {
    addr: SocketAddr,
    clock: SharedClock,
    world: Mutex<World>,
    log: Mutex<VecDeque<LoggedRequest>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running StableVPS simulator. Cheap to clone.
#[derive(Clone)]
pub struct StableVpsSimHandle {
    inner: Arc<Shared>,
}

impl StableVpsSimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// "http://127.0.0.1:PORT" (the API lives under `/api/v1/`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The simulator's "now".
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    fn lock_world(&self) -> std::sync::MutexGuard<'_, World> {
        self.inner.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, VecDeque<LoggedRequest>> {
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the world after advancing it to now, then syncs RDP listeners.
    fn with_world<R>(&self, f: impl FnOnce(&mut World, DateTime<Utc>) -> R) -> R {
        let now = self.now();
        let mut w = self.lock_world();
        w.tick(now);
        let r = f(&mut w, now);
        w.reconcile_listeners();
        r
    }

    /// Runs one background pass now (provisioning, renewals, listeners).
    pub fn tick(&self) {
        self.with_world(|_, _| ());
    }

    /// Adds a VPS to `account` (an account id, one of its keys, or an index);
    /// relative times count from now. Returns its 24-hex service id.
    pub fn add_vps(&self, account: &str, spec: VpsSpec) -> String {
        self.with_world(|w, now| w.add_vps(account, spec, now))
    }

    /// Mutates a VPS (status strings, period end, `hang`, …); listeners follow.
    pub fn update_vps(&self, id: &str, f: impl FnOnce(&mut SimVps)) {
        self.with_world(|w, _| {
            if let Some(v) = w.vps_mut(id) {
                f(v);
            }
        });
    }

    /// Deletes a VPS as the provider would (gone from lists, 404, RDP closed).
    pub fn remove_vps(&self, id: &str) {
        self.update_vps(id, |v| v.deleted = true);
    }

    /// A snapshot of one VPS (deleted ones included, with `deleted = true`).
    pub fn vps(&self, id: &str) -> Option<SimVps> {
        self.with_world(|w, _| w.vps(id).cloned())
    }

    /// Snapshots of every VPS, deleted ones included.
    pub fn vpses(&self) -> Vec<SimVps> {
        self.with_world(|w, _| w.vps.clone())
    }

    /// Sets an account's wallet (id, key, or index; unknown accounts are ignored).
    pub fn set_balance(&self, account: &str, eur: f64) {
        self.with_world(|w, _| {
            let id = w.resolve_account(account);
            if let Some(a) = id.and_then(|id| w.account_mut(&id)) {
                a.balance = world::round_eur(eur);
            }
        });
    }

    /// An account's wallet balance.
    pub fn balance(&self, account: &str) -> Option<f64> {
        self.account(account).map(|a| a.balance)
    }

    /// A snapshot of an account (id, key, or index).
    pub fn account(&self, account: &str) -> Option<SimAccount> {
        self.with_world(|w, _| {
            let id = w.resolve_account(account)?;
            w.account(&id).cloned()
        })
    }

    /// Sets when an API key (given raw) expires; `None` = never. False if no such key.
    pub fn set_key_expiry(&self, raw_key: &str, expires_at: Option<DateTime<Utc>>) -> bool {
        self.with_world(|w, _| match w.keys.iter_mut().find(|k| k.raw == raw_key) {
            Some(k) => {
                k.expires_at = expires_at;
                true
            }
            None => false,
        })
    }

    /// Changes what an unpaid renewal does from now on.
    pub fn set_renewal_failure(&self, failure: RenewalFailure) {
        self.with_world(|w, _| w.renewal_failure = failure);
    }

    pub fn inject_fault(&self, fault: Fault) {
        self.with_world(|w, _| w.faults.add(fault));
    }

    pub fn clear_faults(&self) {
        self.with_world(|w, _| w.faults.clear());
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.with_world(|w, _| w.faults.list())
    }

    /// Requests seen, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock_log().iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.lock_log().clear();
    }

    /// Authenticated writes received (actions, deletes, creates), oldest first, each
    /// with its time and the status answered.
    pub fn actions(&self) -> Vec<SimAction> {
        self.lock_world().actions.clone()
    }

    pub fn clear_actions(&self) {
        self.lock_world().actions.clear();
    }

    // ---- the watchdog's trouble (see `sim::power`) -----------------------------------

    /// The machine goes down by itself; the API reports `vps_status` (default
    /// `stopped`) and the RDP port closes.
    pub fn crash_vps(&self, id: &str, vps_status: Option<&str>) {
        self.update_vps(id, |v| v.crash(vps_status.unwrap_or("stopped")));
    }

    /// Hangs (true) or un-hangs the machine: `vpsStatus` stays, the RDP port closes.
    pub fn set_hang(&self, id: &str, hang: bool) {
        self.update_vps(id, |v| v.set_hang(hang));
    }

    /// Dead through reboots: every action is accepted, the machine stays hung (true
    /// also hangs it now).
    pub fn set_stays_dead(&self, id: &str, v: bool) {
        self.update_vps(id, |vps| vps.set_stays_dead(v));
    }

    /// A reboot does not help, a stop followed by a start does (true also hangs the
    /// machine now).
    pub fn set_needs_power_cycle(&self, id: &str, v: bool) {
        self.update_vps(id, |vps| vps.set_needs_power_cycle(v));
    }

    /// The VPS's actions fail as `failure` says (after auth, scope and ownership).
    pub fn fail_actions(&self, id: &str, failure: ActionFailure) {
        self.update_vps(id, |v| power::add_failure(&mut v.action_failures, failure));
    }

    pub fn clear_action_failures(&self, id: &str) {
        self.update_vps(id, |v| v.action_failures.clear());
    }

    /// Every API endpoint answers 503 for `length`; machines, RDP ports and the
    /// control API carry on.
    pub fn start_blackout(&self, length: BlackoutLength) {
        self.with_world(|w, now| w.blackout.start(now, length));
    }

    pub fn end_blackout(&self) {
        self.with_world(|w, _| w.blackout.end());
    }

    /// The blackout switch as of now.
    pub fn blackout(&self) -> Blackout {
        self.with_world(|w, now| {
            w.blackout.check(now);
            w.blackout
        })
    }

    /// Boot time of starts and reboots from now on (0 = the port opens at once).
    pub fn set_reboot_duration(&self, d: Duration) {
        self.with_world(|w, _| w.reboot_duration = d);
    }

    /// Runs a pass the moment the next booting machine comes up, so its port opens on
    /// time rather than at the next one-second tick.
    fn wake_at_boot_end(&self) {
        let Some(end) = self.lock_world().next_boot_end() else {
            return;
        };
        let wait = (end - self.now()).to_std().unwrap_or_default();
        let h = self.clone();
        let token = self.inner.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(wait + Duration::from_millis(2)) => h.tick(),
            }
        });
    }

    /// Stops accepting, closes RDP listeners, cancels hung requests and lets the rest
    /// finish (up to 5 s).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.lock_world().close_listeners();
    }

    /// [`shutdown`](Self::shutdown), then waits until the server has stopped.
    pub async fn shutdown_and_wait(&self) {
        self.shutdown();
        let tasks: Vec<JoinHandle<()>> = self.lock_tasks().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    fn log(&self, meta: &RequestMeta, status: u16) {
        let mut log = self.lock_log();
        if log.len() >= MAX_LOGGED {
            log.pop_front();
        }
        log.push_back(LoggedRequest {
            method: meta.method.clone(),
            path: meta.path.clone(),
            endpoint: meta.template.unwrap_or("").to_string(),
            vps_id: meta.vps_id.clone(),
            status,
            at: meta.at,
            key_prefix: meta.key_prefix.clone(),
            auth_style: meta.auth_style,
        });
    }

    async fn handle_request(&self, req: Request<Incoming>) -> Response<Body> {
        if crate::control::is_control_path(req.uri().path()) {
            return control::handle(self, req).await;
        }
        let routed = api::route(req.uri().path(), req.method());
        let meta = RequestMeta {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            template: routed.template(),
            vps_id: routed.id().map(str::to_string),
            at: self.now(),
            key_prefix: api::presented_key(req.headers())
                .map(|k| k.chars().take(api::KEY_PREFIX_LEN).collect()),
            auth_style: api::presented_style(req.headers()),
        };
        // The API is down: answered before routing and auth; the machines run on.
        if self.with_world(|w, now| w.blackout.check(now)) {
            return self.finish(&meta, api::status_error(503), false);
        }
        let fault_id = meta.vps_id.as_deref().and_then(fault_key);
        let fault = self.with_world(|w, _| w.faults.take(meta.template, fault_id));
        let truncate = match faults::play(fault, &self.inner.shutdown, || self.log(&meta, 0)).await
        {
            FaultEffect::Proceed { truncate } => truncate,
            FaultEffect::Hung => {
                return Reply::empty(StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
            FaultEffect::Reply(kind) => return self.finish(&meta, fault_reply(&kind), false),
        };
        let reply = match routed {
            Routed::NotFound => error(StatusCode::NOT_FOUND, "Not found"),
            Routed::MethodNotAllowed(_) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
            }
            Routed::Found { endpoint, id, .. } => {
                let reply = self.serve_endpoint(req, endpoint, id).await;
                if endpoint == api::Endpoint::VpsAction {
                    self.wake_at_boot_end();
                }
                reply
            }
        };
        self.finish(&meta, reply, truncate)
    }

    fn finish(&self, meta: &RequestMeta, reply: Reply, truncate: bool) -> Response<Body> {
        self.log(meta, reply.status.as_u16());
        if truncate {
            reply.into_truncated_response()
        } else {
            reply.into_response()
        }
    }

    /// Authenticates, checks the scope, reads the body and runs the endpoint.
    async fn serve_endpoint(
        &self,
        req: Request<Incoming>,
        endpoint: api::Endpoint,
        id: Option<String>,
    ) -> Reply {
        let (parts, body) = req.into_parts();
        let key = api::presented_key(&parts.headers);
        let caller = match self.with_world(|w, now| api::authenticate(w, key.as_deref(), now)) {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        if endpoint.is_write() && caller.scope != KeyScope::Full {
            return error(
                StatusCode::FORBIDDEN,
                "This API key has read-only access and cannot perform write operations",
            );
        }
        let body = if endpoint.has_body() {
            match read_body(body, MAX_BODY).await {
                Some(b) => b,
                None => return error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
            }
        } else {
            Bytes::new()
        };
        self.with_world(|w, now| {
            let call = api::Call {
                endpoint,
                id: id.as_deref(),
                body: &body,
                caller: &caller,
                now,
            };
            api::handle(w, &call)
        })
    }
}

struct RequestMeta {
    method: String,
    path: String,
    template: Option<&'static str>,
    vps_id: Option<String>,
    at: DateTime<Utc>,
    key_prefix: Option<String>,
    auth_style: Option<&'static str>,
}

/// The answer a fault gives instead of the normal one.
fn fault_reply(kind: &FaultKind) -> Reply {
    match kind {
        FaultKind::Status(code) => api::status_error(*code),
        FaultKind::MalformedJson => Reply::new(
            StatusCode::OK,
            Some(JSON),
            r#"{"vps":[{"id":"6641abc","planId":"prime","status":active,"#,
        ),
        FaultKind::Unauthorized => error(StatusCode::UNAUTHORIZED, "Invalid API key"),
        FaultKind::RateLimited { retry_after_secs } => {
            error(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
                .with_header(RETRY_AFTER, retry_after_secs.max(&1).to_string())
        }
        FaultKind::WrongContentType => Reply::html(
            StatusCode::OK,
            "<!DOCTYPE html>\n<html><head><title>StableVPS</title></head>\
             <body><h1>StableVPS</h1><p>Forex VPS hosting</p></body></html>\n",
        ),
        // Handled before a reply is built; answer like the API's 500 if one gets here.
        FaultKind::Latency(_) | FaultKind::Hang | FaultKind::TruncatedBody => {
            api::status_error(500)
        }
    }
}
