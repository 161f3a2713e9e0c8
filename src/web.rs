//! The HTTP side (hyper): `/metrics` from the cached rendering, `/-/healthy`, `/-/ready`
//! and a landing page. Handlers only read shared state; nothing here calls a provider.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsCache;
use crate::snapshot::SnapshotStore;
use crate::watchdog::journal::Journal;

/// Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
pub struct WebState {
    pub cache: MetricsCache,
    pub store: Arc<SnapshotStore>,
    /// The watchdog journal, when the watchdog runs.
    pub journal: Option<Journal>,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the client accepts gzip (a `gzip` coding not refused with q=0).
fn accepts_gzip(req: &Request<Incoming>) -> bool {
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

fn metrics(state: &WebState, req: &Request<Incoming>) -> Response<Body> {
    let encoded = state.cache.load();
    let gzip = accepts_gzip(req) && !encoded.gzip.is_empty();
    let body = if gzip {
        encoded.gzip.clone()
    } else {
        encoded.plain.clone()
    };
    let mut r = Response::new(Full::new(body));
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

const LANDING: &str = concat!(
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>vpswatch</title></head>",
    "<body><h1>vpswatch ",
    env!("CARGO_PKG_VERSION"),
    "</h1><p>Prometheus exporter and watchdog for LNVPS and StableVPS.</p><ul>",
    "<li><a href=\"metrics\">/metrics</a></li>",
    "<li><a href=\"-/healthy\">/-/healthy</a></li>",
    "<li><a href=\"-/ready\">/-/ready</a></li>",
    "<li><a href=\"api/v1/actions\">/api/v1/actions</a> (watchdog journal)</li></ul></body></html>\n"
);

/// Entries `/api/v1/actions` returns unless `?limit=` says otherwise (at most 1000).
const DEFAULT_ACTIONS_LIMIT: usize = 100;

/// `GET /api/v1/actions[?limit=N]`: the newest journal entries, newest first, as JSON.
async fn actions(state: &WebState, req: &Request<Incoming>) -> Response<Body> {
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
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
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

/// Routes one request.
pub fn route(state: &WebState, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => metrics(state, req),
        "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
        "/-/ready" => ready(state),
        "/" => {
            let mut r = text(StatusCode::OK, LANDING);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "Not found\n"),
    }
}

/// Serves until `cancel` fires, then lets open requests finish (at most 5 s).
pub async fn serve(listener: TcpListener, state: Arc<WebState>, cancel: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let st = st.clone();
            async move {
                let is_get = req.method() == Method::GET || req.method() == Method::HEAD;
                if is_get && req.uri().path() == "/api/v1/actions" {
                    return Ok::<_, Infallible>(actions(&st, &req).await);
                }
                Ok::<_, Infallible>(route(&st, &req))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("open connections did not finish within 5 s; closing");
        }
    }
}
