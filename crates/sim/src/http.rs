//! hyper plumbing shared by the fake servers: a response value ([`Reply`]) that handlers
//! build synchronously, its conversion to a hyper response (including a deliberately
//! truncated one), bounded body reading, and a loopback server with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;

use super::wire::ErrorBody;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Response body type of the fake servers.
pub type Body = BoxBody<Bytes, std::io::Error>;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const HTML: &str = "text/html; charset=utf-8";

/// A complete response, built without touching the network.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(
        status: StatusCode,
        content_type: Option<&'static str>,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// JSON of `value` (a serialization failure becomes the sanitized 500).
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status, Some(JSON), body),
            Err(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(JSON),
                r#"{"error":"An internal error occurred"}"#,
            ),
        }
    }

    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self::new(status, Some(TEXT), text.into())
    }

    pub fn html(status: StatusCode, html: impl Into<String>) -> Self {
        Self::new(status, Some(HTML), html.into())
    }

    pub fn empty(status: StatusCode) -> Self {
        Self::new(status, None, Bytes::new())
    }

    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn builder(&self) -> http::response::Builder {
        let mut b = Response::builder().status(self.status);
        if let Some(ct) = self.content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                b = b.header(name, v);
            }
        }
        b
    }

    pub fn into_response(self) -> Response<Body> {
        let body = if self.body.is_empty() {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed()
        };
        self.builder().body(body).unwrap_or_else(|_| plain_500())
    }

    /// Announces the full Content-Length, sends the first half, then cuts the
    /// connection.
    pub fn into_truncated_response(self) -> Response<Body> {
        let full_len = self.body.len();
        let half = self.body.slice(..full_len / 2);
        // Pausing before the error lets hyper flush the head and the half first.
        let frames = futures_util::stream::unfold(Some(Some(half)), |step| async move {
            match step? {
                Some(half) => Some((Ok(Frame::data(half)), Some(None))),
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let cut = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "simulated truncation",
                    );
                    Some((Err(cut), None))
                }
            }
        });
        self.builder()
            .header(CONTENT_LENGTH, full_len.to_string())
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap_or_else(|_| plain_500())
    }
}

fn plain_500() -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// Reads at most `limit` bytes of body; `None` if it is larger (or broken).
pub async fn read_body(body: Incoming, limit: usize) -> Option<Bytes> {
    Limited::new(body, limit)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` is cancelled, then
/// lets in-flight requests finish for up to five seconds.
pub async fn serve<H, F>(listener: TcpListener, shutdown: CancellationToken, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let h = handler.clone();
        let service = service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, Infallible>(h(req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "simulator connection ended");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// Calls `tick` once a second until `shutdown`, so a fake server's world moves on
/// (expiry, renewals, timeline events) even when no request arrives.
pub fn spawn_ticker(
    shutdown: tokio_util::sync::CancellationToken,
    tick: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => tick(),
            }
        }
    })
}

/// The API's JSON error body (`{"error": ...}`) with `status`.
pub fn api_error(status: StatusCode, msg: &str) -> Reply {
    Reply::json(status, &ErrorBody { error: msg })
}

pub fn internal_error() -> Reply {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "An internal error occurred",
    )
}
