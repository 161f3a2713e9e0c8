//! The fake LNVPS API server.
//!
//! It serves the customer API with in-memory users and VMs and behaves like the real
//! server (docs/providers.md): envelopes, error bodies and content types, NIP-98 enforcement, the
//! per-IP rate limiter (which runs before auth), and the worker's lifecycle. Tests drive
//! it through [`LnvpsSimHandle`]; other processes through the `/_sim/` control API.
//!
//! A request goes: control API? → rate limiter → route (404/405) → injected fault →
//! body (NIP-98 requests only, 2 MiB) → auth → handler, with the world advanced to
//! "now" (the injected clock plus any skew) first.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::SimError;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod control;
use super::handlers::{self, Call};
use super::http::{read_body, serve, spawn_ticker, Body, Reply, JSON};
use super::nip98::{sha256_hex, AuthRequest, Verifier};
use super::ratelimit::{client_ip, RateLimiter};
use super::routes::{self, Endpoint, Routed};
use vpswatch_model::clock::SharedClock;

use super::faults::{self, FaultEffect};
pub use super::faults::{EndpointMatch, Fault, FaultKind};
pub use super::lightning::{AutoRenewAttempt, AutoRenewOutcome, SettleError};
use super::power;
pub use super::power::{ActionFailure, Blackout, BlackoutLength};
pub use super::scenario::{
    CostPlanSpec, ImageSpec, IntervalType, PaymentMethodSpec, RateLimitSettings, RelTime, Scenario,
    SimSettings, TemplateSpec, TimelineEvent, UsageProfile, UserSpec, VmSpec, VmState,
};
use super::vm_ports::VmPorts;
use super::world::World;
pub use super::world::{
    CostPlan, HistoryEntry, Image, ObservedStatus, PowerAction, SavedPaymentMethod, SimAction,
    SimPayment, SimVm, Template,
};

/// Largest body read for a NIP-98 request (the real server's payload middleware).
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Requests remembered by [`LnvpsSimHandle::requests`].
const MAX_LOGGED: usize = 100_000;
/// Longest a `Hang` fault holds a request.
/// One request the emulated API saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Route template, e.g. "/api/v1/vm/{id}/time-series"; "" when no route matched.
    pub endpoint: String,
    /// The path's `{id}`, if it parsed.
    pub vm_id: Option<u64>,
    /// Status sent; 0 = never answered (a `Hang` fault).
    pub status: u16,
    /// Simulator time.
    pub at: DateTime<Utc>,
    pub client_ip: IpAddr,
}

/// Starts simulators.
pub struct LnvpsSim;

impl LnvpsSim {
    /// Binds `listen`, builds the world from `scenario` at `clock.now()` and serves
    /// until [`LnvpsSimHandle::shutdown`].
    pub async fn start(
        listen: SocketAddr,
        scenario: Scenario,
        clock: SharedClock,
    ) -> Result<LnvpsSimHandle, SimError> {
        scenario.validate()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(SimError::io(format!(
                "binding the LNVPS simulator to {listen}"
            )))?;
        let addr = listener
            .local_addr()
            .map_err(SimError::io("reading the listening address"))?;
        let default_owner = scenario.vms.first().map(|v| v.owner.clone());
        let limiter = RateLimiter::new(scenario.rate_limit.clone());
        let world = World::new(scenario, clock.now())?;
        let handle = LnvpsSimHandle {
            inner: Arc::new(Shared {
                addr,
                clock,
                skew_secs: AtomicI64::new(0),
                world: Mutex::new(world),
                limiter,
                verifier: Verifier::default(),
                log: Mutex::new(VecDeque::new()),
                shutdown: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
                default_owner,
                vm_ports: VmPorts::default(),
            }),
        };
        let server = {
            let h = handle.clone();
            let token = handle.inner.shutdown.clone();
            tokio::spawn(serve(listener, token, move |req, peer| {
                let h = h.clone();
                async move { h.handle_request(req, peer).await }
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
    skew_secs: AtomicI64,
    world: Mutex<World>,
    limiter: RateLimiter,
    verifier: Verifier,
    log: Mutex<VecDeque<LoggedRequest>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Owner of the scenario's first VM: what "default" means in the control API.
    default_owner: Option<String>,
    vm_ports: VmPorts,
}

/// A running simulator. Cheap to clone.
#[derive(Clone)]
pub struct LnvpsSimHandle {
    inner: Arc<Shared>,
}

impl LnvpsSimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// "http://127.0.0.1:PORT".
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The simulator's "now": the clock plus skew.
    pub fn now(&self) -> DateTime<Utc> {
        super::scenario::shift(
            self.inner.clock.now(),
            self.inner.skew_secs.load(Ordering::Relaxed),
        )
    }

    fn lock_world(&self) -> std::sync::MutexGuard<'_, World> {
        self.inner.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the world after advancing it to now; `f` may change anything, so
    /// the next request runs a full worker pass.
    fn with_world<R>(&self, f: impl FnOnce(&mut World, DateTime<Utc>) -> R) -> R {
        self.on_world(|w, now| {
            let result = f(w, now);
            w.mark_changed();
            result
        })
    }

    /// Runs `f`, which only reads, on the world after advancing it to now. The poller's
    /// requests come this way: no worker pass is owed for them.
    fn read_world<R>(&self, f: impl FnOnce(&World, DateTime<Utc>) -> R) -> R {
        self.on_world(|w, now| f(w, now))
    }

    /// Runs `f` on the world after advancing it to now, for `f` that changes neither
    /// VMs nor users nor settings (the blackout's and the faults' own bookkeeping).
    fn with_world_vms_untouched<R>(&self, f: impl FnOnce(&mut World, DateTime<Utc>) -> R) -> R {
        self.on_world(f)
    }

    fn on_world<R>(&self, f: impl FnOnce(&mut World, DateTime<Utc>) -> R) -> R {
        let now = self.now();
        let mut w = self.lock_world();
        w.tick(now);
        let result = f(&mut w, now);
        let listen = w.listen_addrs();
        drop(w);
        if !self.inner.shutdown.is_cancelled() {
            self.inner.vm_ports.reconcile(&listen);
        }
        result
    }

    /// Runs one worker pass now (timeline events, expiry, status refresh).
    pub fn tick(&self) {
        self.with_world_vms_untouched(|_, _| ());
    }

    /// Adds a VM; relative times in `spec` count from now. Returns its id.
    pub fn add_vm(&self, owner_pubkey_hex: &str, spec: VmSpec) -> u64 {
        self.with_world(|w, now| w.add_vm(owner_pubkey_hex, spec, now))
    }

    /// Mutates a VM (state, expiry, usage, flags…); the next worker pass sees it.
    pub fn update_vm(&self, id: u64, f: impl FnOnce(&mut SimVm)) {
        self.with_world(|w, _| {
            if let Some(vm) = w.vm_mut(id) {
                f(vm);
            }
        });
    }

    /// Soft-deletes a VM: gone from lists, GET answers 404 "VM not found".
    pub fn remove_vm(&self, id: u64) {
        self.with_world(|w, now| w.remove_vm(id, now));
    }

    /// A snapshot of one VM (None once purged or never created).
    pub fn vm(&self, id: u64) -> Option<SimVm> {
        self.with_world(|w, _| w.vm(id).cloned())
    }

    /// Snapshots of every VM, deleted ones included.
    pub fn vms(&self) -> Vec<SimVm> {
        self.with_world(|w, _| w.all_vms().cloned().collect())
    }

    /// Replaces a user's saved payment methods (GET /api/v1/payment-methods).
    pub fn set_payment_methods(&self, owner_pubkey_hex: &str, methods: Vec<PaymentMethodSpec>) {
        self.with_world(|w, now| w.set_payment_methods(owner_pubkey_hex, &methods, now));
    }

    // ---- renewals (see `sim::renewal`) ------------------------------------------------

    /// A Lightning payment of the invoice with this payment hash (hex) arrives: the
    /// invoice is marked paid and its VM extended. Returns the preimage (hex).
    pub fn settle_invoice(&self, payment_hash: &str) -> Result<String, SettleError> {
        self.with_world(|w, now| w.settle(payment_hash, now))
    }

    /// `GET /vm/{id}/renew?method=…&intervals=…` as the owner would call it (reuse
    /// included); `None` when the server would answer an error.
    pub fn renew(&self, vm_id: u64, method: Option<&str>, intervals: u32) -> Option<SimPayment> {
        self.with_world(|w, now| w.renew(vm_id, method, intervals, now).ok())
    }

    /// The users' saved wallet (server-side auto-renewal, `?method=nwc`) fails (true)
    /// or pays (false).
    pub fn set_saved_wallet_fails(&self, fails: bool) {
        self.with_world(|w, _| w.saved_wallet_fails = fails);
    }

    /// Invoice minting fails for the next `hits` mints (`None` = until cleared).
    pub fn fail_minting(&self, hits: Option<u32>) {
        self.with_world(|w, _| {
            w.mint_failure = Some(crate::world::MintFailure { remaining: hits })
        });
    }

    /// Minting works again.
    pub fn clear_mint_failure(&self) {
        self.with_world(|w, _| w.mint_failure = None);
    }

    /// The minting failure in force, if any.
    pub fn mint_failure(&self) -> Option<crate::world::MintFailure> {
        self.with_world(|w, _| w.mint_failure.filter(|f| f.remaining != Some(0)))
    }

    /// Every firing of the server-side auto-renewal so far, oldest first.
    pub fn auto_renew_log(&self) -> Vec<AutoRenewAttempt> {
        self.with_world(|w, _| w.auto_renew_log.clone())
    }

    /// A VM's payments (invoices), oldest first; empty for an unknown VM.
    pub fn payments(&self, vm_id: u64) -> Vec<SimPayment> {
        self.with_world(|w, _| w.vm(vm_id).map(|v| v.payments.clone()).unwrap_or_default())
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

    // ---- the watchdog's trouble (see `sim::power`) -----------------------------------

    /// The running VM stops by itself: state `stopped`, port closed, no owner history.
    pub fn crash_vm(&self, id: u64) {
        self.with_world(|w, now| {
            if let Some(vm) = w.vm_mut(id) {
                vm.crash(now);
            }
        });
    }

    /// Hangs (true) or un-hangs the guest: the state stays, the port closes.
    pub fn set_hung(&self, id: u64, hung: bool) {
        self.update_vm(id, |vm| vm.set_hung(hung));
    }

    /// Dead through reboots: every action is accepted, the guest stays hung (true also
    /// hangs it now).
    pub fn set_stays_dead(&self, id: u64, v: bool) {
        self.update_vm(id, |vm| vm.set_stays_dead(v));
    }

    /// A restart does not help, a stop followed by a start does (true also hangs the
    /// guest now).
    pub fn set_needs_power_cycle(&self, id: u64, v: bool) {
        self.update_vm(id, |vm| vm.set_needs_power_cycle(v));
    }

    /// The VM's power actions fail as `failure` says (after auth and ownership checks).
    pub fn fail_actions(&self, id: u64, failure: ActionFailure) {
        self.update_vm(id, |vm| {
            power::add_failure(&mut vm.action_failures, failure)
        });
    }

    pub fn clear_action_failures(&self, id: u64) {
        self.update_vm(id, |vm| vm.action_failures.clear());
    }

    /// Every API endpoint answers 503 (the proxy's page) for `length`; the VMs, their
    /// ports and the control API carry on.
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

    /// Boot time of starts and restarts from now on (0 = the port opens at once).
    pub fn set_reboot_duration(&self, d: Duration) {
        self.with_world(|w, _| w.settings.reboot_duration = d);
    }

    /// Every power-action request received (any VM, any answer), oldest first.
    pub fn actions(&self) -> Vec<SimAction> {
        self.lock_world().action_log()
    }

    pub fn clear_actions(&self) {
        self.lock_world().clear_action_log();
    }

    /// Shifts the simulator's clock (NIP-98 window, expiry, status timestamps).
    pub fn set_clock_skew(&self, secs: i64) {
        self.inner.skew_secs.store(secs, Ordering::Relaxed);
    }

    /// Replaces the rate limit settings and forgets every window.
    pub fn set_rate_limit(&self, settings: RateLimitSettings) {
        self.inner.limiter.set_settings(settings);
    }

    /// Requests seen by the emulated API (not the control API), oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock_log().iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.lock_log().clear();
    }

    /// Stops accepting, cancels hung requests and lets the rest finish (up to 5 s).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.vm_ports.close_all();
    }

    /// [`shutdown`](Self::shutdown), then waits until the server has stopped.
    pub async fn shutdown_and_wait(&self) {
        self.shutdown();
        let tasks: Vec<JoinHandle<()>> = self.lock_tasks().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    pub(crate) fn default_owner(&self) -> Option<String> {
        self.inner.default_owner.clone()
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, VecDeque<LoggedRequest>> {
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
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
            vm_id: meta.vm_id,
            status,
            at: meta.at,
            client_ip: meta.ip,
        });
    }

    async fn handle_request(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if crate::control::is_control_path(req.uri().path()) {
            return control::handle(self, req).await;
        }
        let routed = routes::route(req.uri().path(), req.method());
        let meta = RequestMeta {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            template: routed.template(),
            vm_id: match &routed {
                Routed::Found { id: Some(raw), .. } => routes::parse_id(raw).ok(),
                _ => None,
            },
            at: self.now(),
            ip: client_ip(req.headers(), peer),
        };
        // The API is down behind its proxy: answered before anything else, rate limit
        // included; the VMs run on.
        if self.with_world_vms_untouched(|w, now| w.blackout.check(now)) {
            return self.finish(&meta, handlers::status_error(503), false);
        }
        if let Err(retry_after) = self.inner.limiter.check(meta.ip, &meta.path) {
            return self.finish(&meta, rate_limited(retry_after), false);
        }
        let fault = self.with_world_vms_untouched(|w, _| w.faults.take(meta.template, meta.vm_id));
        let truncate = match faults::play(fault, &self.inner.shutdown, || self.log(&meta, 0)).await
        {
            FaultEffect::Proceed { truncate } => truncate,
            FaultEffect::Hung => {
                return Reply::empty(StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
            FaultEffect::Reply(kind) => return self.finish(&meta, fault_reply(&kind), false),
        };
        let reply = match routed {
            Routed::NotFound => Reply::empty(StatusCode::NOT_FOUND),
            Routed::MethodNotAllowed { allow, .. } => {
                Reply::empty(StatusCode::METHOD_NOT_ALLOWED).with_header(ALLOW, allow)
            }
            Routed::Found { endpoint, id, .. } => {
                let reply = self.serve_endpoint(req, endpoint, id).await;
                if matches!(endpoint, Endpoint::Start | Endpoint::Restart) {
                    self.wake_at_boot_end();
                }
                reply
            }
        };
        self.finish(&meta, reply, truncate)
    }

    /// Runs a worker pass the moment the next booting VM comes up, so its port opens
    /// on time rather than at the next one-second tick.
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

    fn finish(&self, meta: &RequestMeta, reply: Reply, truncate: bool) -> Response<Body> {
        self.log(meta, reply.status.as_u16());
        if truncate {
            reply.into_truncated_response()
        } else {
            reply.into_response()
        }
    }

    async fn serve_endpoint(
        &self,
        req: Request<Incoming>,
        endpoint: Endpoint,
        id: Option<String>,
    ) -> Reply {
        let (parts, body) = req.into_parts();
        let auth = parts.headers.get(AUTHORIZATION);
        let is_nostr = auth
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Nostr "));
        let body = if is_nostr {
            match read_body(body, MAX_BODY).await {
                Some(b) => b,
                None => {
                    return Reply::text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
                }
            }
        } else {
            Bytes::new()
        };
        let now = self.now();
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mut call = Call {
            endpoint,
            id: id.as_deref(),
            query: parts.uri.query(),
            content_type,
            body: &body,
            user: "",
            now,
        };
        if endpoint.is_public() {
            return self.read_world(|w, _| handlers::public(w, &call));
        }
        let body_sha256 = is_nostr.then(|| sha256_hex(&body));
        let auth_req = AuthRequest {
            header: auth,
            path: parts.uri.path(),
            method: parts.method.as_str(),
            body_sha256: body_sha256.as_deref(),
            now_unix: now.timestamp(),
        };
        let user = match self.inner.verifier.authenticate(&auth_req) {
            Ok(u) => u,
            Err(r) => return Reply::text(r.status, r.message),
        };
        call.user = &user;
        // A known user's reads (all the poller sends) take the read-only path; a first
        // call creates the account, and writes change the world.
        let read = self.read_world(|w, _| {
            w.user(&user)
                .is_some()
                .then(|| handlers::read_only(w, &call))
                .flatten()
        });
        if let Some(reply) = read {
            return reply;
        }
        self.with_world(|w, now| {
            w.upsert_user(&user, now);
            handlers::authenticated(w, &call)
        })
    }
}

struct RequestMeta {
    method: String,
    path: String,
    template: Option<&'static str>,
    vm_id: Option<u64>,
    at: DateTime<Utc>,
    ip: IpAddr,
}

fn rate_limited(retry_after: u64) -> Reply {
    Reply::text(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded")
        .with_header(RETRY_AFTER, retry_after.max(1).to_string())
}

/// The answer a fault gives instead of the normal one.
fn fault_reply(kind: &FaultKind) -> Reply {
    match kind {
        FaultKind::Status(code) => handlers::status_error(*code),
        FaultKind::MalformedJson => Reply::new(
            StatusCode::OK,
            Some(JSON),
            r#"{"data":[{"id":1,"status":{"state":running,"cpu_usage":0.1}"#,
        ),
        FaultKind::Unauthorized => Reply::text(
            StatusCode::UNAUTHORIZED,
            "Auth check failed: Event signature invalid",
        ),
        FaultKind::RateLimited { retry_after_secs } => rate_limited(*retry_after_secs),
        FaultKind::WrongContentType => Reply::html(
            StatusCode::OK,
            "<!DOCTYPE html>\n<html><head><title>LNVPS</title></head>\
             <body><h1>LNVPS</h1><p>You need to enable JavaScript to run this app.</p></body></html>\n",
        ),
        // Handled before a reply is built; answer normally if one gets here.
        FaultKind::Latency(_) | FaultKind::Hang | FaultKind::TruncatedBody => super::http::internal_error(),
    }
}
