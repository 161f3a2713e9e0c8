//! The HTTP side (hyper): `/metrics` from the cached rendering, `/-/healthy`, `/-/ready`,
//! the watchdog journal and the status page (`crate::status`). Handlers only read shared state; nothing here calls a provider.
//!
//! Every connection passes through the limits of `web_config::limits` (a connection cap
//! that makes room by closing the connection cheapest to lose, a head deadline counted
//! from accept, an idle timeout, size limits) and the web config in force (TLS, basic
//! auth, headers; see `web_config`), so a slow or hostile client costs bounded memory,
//! time and connection slots, and cannot keep a fresh client waiting.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsCache;
use crate::renew::journal::RenewalJournal;
use crate::status::StatusSources;
use crate::store::StateStore;
use crate::watchdog::journal::Journal;
use crate::web_body::ChunksBody;
use crate::web_config::auth::Denied;
use crate::web_config::limits::{
    ConnectionSlot, ConnectionTable, IdleTimeout, ServerLimits, MIN_HEADER_BYTES,
};
use crate::web_config::live::LiveWebConfig;
use crate::web_config::WebConfig;
use vpswatch_model::snapshot::SnapshotStore;

/// Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
pub struct WebState {
    pub cache: MetricsCache,
    pub store: Arc<SnapshotStore>,
    /// The watchdog journal, when the watchdog runs.
    pub journal: Option<Journal>,
    /// The state database, when something persists (its health is the daemon's).
    pub state_db: Option<StateStore>,
    /// The Alertmanager webhook (`POST /api/v1/alertmanager`), when configured.
    pub alertmanager: Option<Arc<crate::watchdog::webhook::Receiver>>,
    /// What the status page (`/`, `/api/v1/status`) reads.
    pub status: Arc<StatusSources>,
    /// The renewal journal, when a renewal rule is configured.
    pub renewals: Option<RenewalJournal>,
}

type Body = ChunksBody;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChunksBody::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the client accepts gzip (a `gzip` coding not refused with q=0).
fn accepts_gzip<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

fn metrics<B>(state: &WebState, req: &Request<B>) -> Response<Body> {
    let encoded = state.cache.load();
    let gzip = accepts_gzip(req) && !encoded.gzip.is_empty();
    let body = if gzip {
        ChunksBody::from(encoded.gzip.clone())
    } else {
        ChunksBody::exposition(&encoded.plain)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    h.insert(
        header::VARY,
        header::HeaderValue::from_static("Accept-Encoding"),
    );
    if gzip {
        h.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    r
}

fn ready(state: &WebState) -> Response<Body> {
    let encoded = state.cache.load();
    let pending = if encoded.rendered {
        encoded.pending.clone()
    } else {
        state.store.not_yet_polled()
    };
    if encoded.rendered && pending.is_empty() {
        text(StatusCode::OK, "Ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Not ready: first poll pending for {}\n", pending.join(", ")),
        )
    }
}

/// 200 while the daemon can do its work. 503 while the state database cannot be written:
/// the watchdog and renewals cannot journal an action, so they do not act, and alert mails
/// wait in memory. The body names the reason but not the file or the error (this answer
/// may be served without authentication); those are in the log.
fn healthy(state: &WebState) -> Response<Body> {
    match &state.state_db {
        Some(db) if !db.writable() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unhealthy: the state database cannot be written (I/O error; reopening it): \
             the watchdog and renewals do not act and alert mails wait in memory\n",
        ),
        _ => text(StatusCode::OK, "Healthy\n"),
    }
}

/// Entries `/api/v1/actions` returns unless `?limit=` says otherwise (at most 1000).
const DEFAULT_ACTIONS_LIMIT: usize = 100;

/// `GET /api/v1/actions[?limit=N]`: the newest journal entries, newest first, as JSON.
async fn actions<B>(state: &WebState, req: &Request<B>) -> Response<Body> {
    let limit = req
        .uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("limit="))
                .map(|v| v.parse::<usize>())
        })
        .unwrap_or(Ok(DEFAULT_ACTIONS_LIMIT));
    let Ok(limit) = limit else {
        return text(StatusCode::BAD_REQUEST, "limit must be a number\n");
    };
    let entries = match state.journal.clone() {
        None => Ok::<_, String>(Vec::new()),
        Some(j) => match tokio::task::spawn_blocking(move || j.recent(limit.min(1000))).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    match entries {
        Ok(list) => {
            let body = serde_json::json!({
                "watchdog": state.journal.is_some(),
                "actions": list,
            });
            let mut r = Response::new(ChunksBody::from(Bytes::from(body.to_string())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the journal for /api/v1/actions");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the journal\n",
            )
        }
    }
}

/// Routes one request (after authentication; the body is not needed).
pub fn route<B>(state: &WebState, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => metrics(state, req),
        "/-/healthy" => healthy(state),
        "/-/ready" => ready(state),
        _ => text(StatusCode::NOT_FOUND, "Not found\n"),
    }
}

/// Serves plain HTTP without a web config and with default limits until `cancel` fires.
pub async fn serve(listener: TcpListener, state: Arc<WebState>, cancel: CancellationToken) {
    let web = Arc::new(LiveWebConfig::fixed(WebConfig::default()));
    serve_with(listener, state, web, ServerLimits::default(), cancel).await
}

/// The `401 Unauthorized` answer with its basic-auth challenge.
fn unauthorized() -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(crate::web_config::auth::CHALLENGE),
    );
    r
}

/// How long an address over its budget of password checks waits for its `429`.
const THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// The `429 Too Many Requests` answer to an address over its budget of password checks.
fn throttled(wait: Duration) -> Response<Body> {
    // Whole seconds, rounded up: Retry-After has no fractions.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!("Too many password checks from this address; retry in {secs} s\n"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
    r
}

fn too_large(limit: u64) -> Response<Body> {
    let mut r = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Request body larger than {limit} bytes\n"),
    );
    // The rest of the body is not read; the connection cannot be reused.
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// One request: size limit, authentication, routing; then the configured headers.
async fn handle(
    st: &WebState,
    cfg: &WebConfig,
    limits: &ServerLimits,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let mut r = handle_inner(st, cfg, limits, client, req).await;
    for (name, value) in &cfg.headers {
        r.headers_mut().insert(name.clone(), value.clone());
    }
    r
}

async fn handle_inner(
    st: &WebState,
    cfg: &WebConfig,
    limits: &ServerLimits,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    // The webhook has its own credentials and body limit.
    if let Some(hook) = &st.alertmanager {
        if req.uri().path() == crate::watchdog::webhook::PATH {
            return alertmanager_webhook(hook, cfg, client, req).await;
        }
    }
    let limit = limits.max_request_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(limit);
    }
    if let Some(auth) = &cfg.auth {
        let exempt = cfg.healthy_without_auth && req.uri().path() == "/-/healthy";
        if !exempt {
            if let Err(why) = auth
                .check(req.headers().get(header::AUTHORIZATION), client)
                .await
            {
                tracing::debug!(
                    path = req.uri().path(),
                    %client,
                    reason = why.as_str(),
                    "unauthorized request"
                );
                return match why {
                    Denied::Throttled(wait) => {
                        // A pause before the answer: a client that waits for each answer
                        // (most guessing scripts) is held to one guess a second per
                        // connection instead of flooding the server with cheap 429s.
                        tokio::time::sleep(THROTTLE_PAUSE).await;
                        throttled(wait.saturating_sub(THROTTLE_PAUSE))
                    }
                    _ => unauthorized(),
                };
            }
        }
    }
    let (parts, body) = req.into_parts();
    if declared.is_none() && !hyper::body::Body::is_end_stream(&body) {
        // A body of unknown length (chunked): read at most the limit, then drop it.
        let limited = http_body_util::Limited::new(body, limit as usize);
        if http_body_util::BodyExt::collect(limited).await.is_err() {
            return too_large(limit);
        }
    }
    let req = Request::from_parts(parts, ());
    if let Some(r) = crate::renew::api::route(st.renewals.as_ref(), &req).await {
        return r;
    }
    let is_get = req.method() == Method::GET || req.method() == Method::HEAD;
    if is_get && req.uri().path() == "/api/v1/actions" {
        return actions(st, &req).await;
    }
    if is_get && matches!(req.uri().path(), "/" | "/api/v1/status") {
        return crate::status::respond(&st.status, &req)
            .await
            .map(ChunksBody::from);
    }
    route(st, &req)
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(ChunksBody::from(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `POST /api/v1/alertmanager`, counted by the status answered
/// (`vpswatch_alertmanager_requests_total`).
async fn alertmanager_webhook(
    hook: &crate::watchdog::webhook::Receiver,
    cfg: &WebConfig,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let r = answer_alertmanager(hook, cfg, client, req).await;
    hook.answered(r.status().as_u16());
    r
}

/// Authenticates (bearer token, or the web config's basic auth when allowed), reads at
/// most the webhook's body limit, parses, and hands the alerts to the watchdog. 4xx for
/// what a retry cannot fix, 5xx only when it can.
async fn answer_alertmanager(
    hook: &crate::watchdog::webhook::Receiver,
    cfg: &WebConfig,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    use crate::watchdog::webhook::{self, DeliveryError};
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed: POST\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    let credential = req.headers().get(header::AUTHORIZATION);
    let mut ok = hook.bearer_ok(credential);
    if !ok && hook.basic_auth {
        if let Some(auth) = &cfg.auth {
            match auth.check(credential, client).await {
                Ok(()) => ok = true,
                Err(Denied::Throttled(wait)) => {
                    tokio::time::sleep(THROTTLE_PAUSE).await;
                    return throttled(wait.saturating_sub(THROTTLE_PAUSE));
                }
                Err(_) => {}
            }
        }
    }
    if !ok {
        tracing::debug!(%client, "unauthorized Alertmanager webhook request");
        let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"vpswatch\""),
        );
        return r;
    }
    let limit = hook.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(limit);
    }
    let limited = http_body_util::Limited::new(req.into_body(), limit as usize);
    let body = match http_body_util::BodyExt::collect(limited).await {
        Ok(b) => b.to_bytes(),
        Err(_) => return too_large(limit),
    };
    let payload = match webhook::parse(&body) {
        Ok(p) => p,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    match hook.deliver(payload.alerts).await {
        Ok(results) => json(StatusCode::OK, &serde_json::json!({ "alerts": results })),
        Err(e @ DeliveryError::Unavailable) => {
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
        Err(e @ DeliveryError::Journal(_)) => {
            tracing::error!(error = %e, "Alertmanager notification not handled");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

/// Serves until `cancel` fires, then lets open requests finish (at most 5 s). TLS, auth
/// and headers come from `web` (read per connection for TLS, per request for the rest,
/// so a reload applies without closing the listener); `limits` bound what each client
/// may cost.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<WebState>,
    web: Arc<LiveWebConfig>,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let table = ConnectionTable::new(limits.max_connections);
    let limits = Arc::new(limits);
    let (mut last_warning, mut made_room) = (None::<Instant>, 0u64);
    loop {
        // Always accept: at the cap the table closes the connection that is cheapest to
        // lose, so sockets that never send a request cannot leave a fresh client waiting
        // in the kernel's accept queue behind them.
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (slot, evicted) = table.admit();
        if let Some(stage) = evicted {
            made_room += 1;
            tracing::debug!(closed = stage.as_str(), "closed a connection to make room");
            // Once a minute at most: a flood must not flood the log too.
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    closed = made_room,
                    "connection limit reached; closing the connections cheapest to lose \
                     (without a request first, then idle ones) to make room"
                );
                last_warning = Some(Instant::now());
                made_room = 0;
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            state: state.clone(),
            web: web.clone(),
            limits: limits.clone(),
            watcher: graceful.watcher(),
            slot,
            client: peer.ip(),
        };
        tokio::spawn(conn.run(stream));
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("open connections did not finish within 5 s; closing");
        }
    }
}

/// One accepted connection and what it needs.
struct Connection {
    state: Arc<WebState>,
    web: Arc<LiveWebConfig>,
    limits: Arc<ServerLimits>,
    watcher: hyper_util::server::graceful::Watcher,
    /// Its place in the connection table (freed when the connection ends).
    slot: Arc<ConnectionSlot>,
    client: IpAddr,
}

impl Connection {
    /// Serves the connection until it ends, is closed to make room for a new one, or has
    /// not completed its first request head within the head deadline counted from accept
    /// (a TLS handshake, an HTTP/2 preface or a silent socket all count against it).
    async fn run(self, stream: tokio::net::TcpStream) {
        let head_deadline = Instant::now() + self.limits.header_read_timeout;
        let slot = self.slot.clone();
        let evicted = slot.evicted();
        let no_head = async {
            tokio::time::sleep_until(head_deadline).await;
            if slot.head_seen() {
                // Later heads are hyper's (HTTP/1) or the idle timeout's business.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = self.handshake_and_serve(stream) => {}
            _ = evicted => tracing::debug!("connection closed to make room for a new one"),
            _ = no_head => tracing::debug!("no complete request head within header_read_timeout"),
        }
    }

    async fn handshake_and_serve(self, stream: tokio::net::TcpStream) {
        let cfg = self.web.load();
        let io = IdleTimeout::new(stream, self.limits.idle_timeout);
        match &cfg.tls {
            None => self.serve(io, cfg.http2).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
                // The handshake's time limit is the head deadline of `run`.
                match acceptor.accept(io).await {
                    Ok(tls_stream) => self.serve(tls_stream, cfg.http2).await,
                    Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                }
            }
        }
    }

    async fn serve<I>(self, io: I, http2: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.limits.clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(64);
        if !http2 {
            builder = builder.http1_only();
        }
        let (st, web, slot, client) = (
            self.state.clone(),
            self.web.clone(),
            self.slot.clone(),
            self.client,
        );
        let service = service_fn(move |req: Request<Incoming>| {
            // Counted from the moment the head is complete until the response body has
            // been handed over in full, so the table knows busy from idle.
            let request = slot.request_started();
            let (st, web, limits) = (st.clone(), web.clone(), limits.clone());
            async move {
                let cfg = web.load();
                let response = handle(&st, &cfg, &limits, client, req).await;
                Ok::<_, Infallible>(response.map(|body| body.tracked(request)))
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
