//! HTTP plumbing shared by provider clients: per-request timeout, retries with jittered
//! exponential backoff, `retry-after` on 429, the shared rate budget, a response size
//! limit and a per-request observation hook (for self-metrics).
//!
//! Authentication is a callback run for *every attempt*, because LNVPS burns each signed
//! NIP-98 event on first use: a retry must carry a fresh signature.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use url::Url;

use crate::budget::RateBudget;
use crate::ProviderError;

/// Why no auth headers could be made. The messages never carry the credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("NIP-98 signing failed: {0}")]
    Sign(String),
    #[error("the credential contains characters not allowed in a header")]
    NotAHeaderValue,
}

/// Builds the auth headers for one attempt of one request.
pub trait Authorizer: Send + Sync {
    fn headers(
        &self,
        method: &Method,
        url: &Url,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, AuthError>;

    /// Whether a rejection is worth one more attempt with fresh credentials
    /// (e.g. LNVPS "Credential has already been used" after a same-second collision).
    fn retry_rejection(&self, _status: u16, _message: &str) -> bool {
        false
    }
}

/// Told about every attempt: endpoint template, outcome code ("200", "timeout", …), time.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, endpoint: &str, code: &str, elapsed: Duration);
}

/// An observer that records nothing.
pub struct NoObserver;
impl RequestObserver for NoObserver {
    fn observe(&self, _: &str, _: &str, _: Duration) {}
}

/// Limits that apply to every request of one client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub timeout: Duration,
    /// Attempts in total (1 = no retry).
    pub max_attempts: u32,
    pub max_body_bytes: usize,
    /// A 429 asking us to wait longer than this fails the request instead of waiting.
    pub max_retry_after: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Local address requests leave from (several replicas on one host, each under its
    /// own per-IP rate limit).
    pub source_address: Option<std::net::IpAddr>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: 3,
            max_body_bytes: 16 * 1024 * 1024,
            max_retry_after: Duration::from_secs(65),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            source_address: None,
        }
    }
}

/// Whether a request may be repeated when we cannot tell if the server acted on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: retry on 5xx, timeouts, broken bodies and connection errors.
    Idempotent,
    /// Writes: retry only when the request certainly did not reach a handler
    /// (connection refused, 429 from the limiter that runs before the handler).
    OnlyIfNotProcessed,
}

/// One logical request.
pub struct ApiRequest {
    pub method: Method,
    /// Path and query, appended to the base URL.
    pub path_and_query: String,
    /// Bounded label for metrics and errors, e.g. "GET /api/v1/vm/{id}/time-series".
    pub endpoint: &'static str,
    pub body: Option<Vec<u8>>,
    pub retry: Retry,
}

/// A successful (2xx) response.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// An HTTP client bound to one base URL, budget and authorizer.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    budget: Arc<RateBudget>,
    auth: Arc<dyn Authorizer>,
    observer: Arc<dyn RequestObserver>,
    settings: HttpSettings,
}

enum Attempt<T> {
    Done(Result<T, ProviderError>),
    RetryAfter(ProviderError, Duration),
    Backoff(ProviderError),
}

impl ApiClient {
    pub fn new(
        base: Url,
        budget: Arc<RateBudget>,
        auth: Arc<dyn Authorizer>,
        observer: Arc<dyn RequestObserver>,
        settings: HttpSettings,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("vpswatch/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .local_address(settings.source_address)
            .build()?;
        Ok(Self {
            http,
            base,
            budget,
            auth,
            observer,
            settings,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The same client (connection pool, budget, observer, limits) with other
    /// credentials, e.g. a separate write key.
    pub fn with_authorizer(&self, auth: Arc<dyn Authorizer>) -> ApiClient {
        ApiClient {
            http: self.http.clone(),
            base: self.base.clone(),
            budget: self.budget.clone(),
            auth,
            observer: self.observer.clone(),
            settings: self.settings.clone(),
        }
    }

    fn url_for(&self, path_and_query: &str) -> Result<Url, String> {
        self.base
            .join(path_and_query)
            .map_err(|e| format!("bad URL {path_and_query}: {e}"))
    }

    /// Sends the request, retrying as its [`Retry`] policy allows; any 2xx is success.
    pub async fn send(&self, req: &ApiRequest) -> Result<ApiResponse, ProviderError> {
        self.send_decoded(req, Ok).await
    }

    /// Sends the request and decodes a 2xx response with `decode`. A response that does
    /// not decode counts as `invalid_response` (and is retried like a broken body), so the
    /// request counters tell malformed data apart from HTTP success.
    pub async fn send_decoded<T>(
        &self,
        req: &ApiRequest,
        decode: impl Fn(ApiResponse) -> Result<T, DecodeError>,
    ) -> Result<T, ProviderError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.backoff_min)
            .with_max_delay(self.settings.backoff_max)
            .with_jitter()
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .build();
        let mut auth_retried = false;
        loop {
            let err = match self.attempt(req, &mut auth_retried, &decode).await {
                Attempt::Done(result) => return result,
                Attempt::RetryAfter(err, wait) => {
                    // The budget is already paused; waiting on it also waits for `wait`.
                    if backoff.next().is_none() || wait > self.settings.max_retry_after {
                        return Err(err);
                    }
                    continue;
                }
                Attempt::Backoff(err) => err,
            };
            match backoff.next() {
                Some(delay) => {
                    tracing::debug!(endpoint = req.endpoint, error = %err, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(err),
            }
        }
    }

    async fn attempt<T>(
        &self,
        req: &ApiRequest,
        auth_retried: &mut bool,
        decode: &impl Fn(ApiResponse) -> Result<T, DecodeError>,
    ) -> Attempt<T> {
        let endpoint = req.endpoint.to_string();
        let url = match self.url_for(&req.path_and_query) {
            Ok(u) => u,
            Err(detail) => {
                return Attempt::Done(Err(ProviderError::InvalidResponse { endpoint, detail }))
            }
        };
        let body = req.body.clone().unwrap_or_default();
        self.budget.acquire().await;
        let headers = match self.auth.headers(&req.method, &url, &body) {
            Ok(h) => h,
            Err(e) => {
                return Attempt::Done(Err(ProviderError::Auth {
                    endpoint,
                    detail: e.to_string(),
                }))
            }
        };
        let mut builder = self.http.request(req.method.clone(), url);
        for (k, v) in headers {
            builder = builder.header(k, v);
        }
        if req.body.is_some() {
            builder = builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let started = Instant::now();
        let result = match self.exchange(builder, &endpoint).await {
            Ok((status, content_type, body)) if (200..300).contains(&status) => {
                let resp = ApiResponse {
                    status,
                    content_type,
                    body,
                };
                match decode(resp) {
                    Ok(v) => Ok(Ok((status, v))),
                    Err(detail) => Err(ProviderError::InvalidResponse {
                        endpoint: endpoint.clone(),
                        detail: detail.to_string(),
                    }),
                }
            }
            Ok(other) => Ok(Err(other)),
            Err(e) => Err(e),
        };
        let code = match &result {
            Ok(Ok((status, _))) => status.to_string(),
            Ok(Err((status, _, _))) => status.to_string(),
            Err(e) => e.code_label(),
        };
        self.observer
            .observe(req.endpoint, &code, started.elapsed());
        let idempotent = req.retry == Retry::Idempotent;
        match result {
            Ok(Ok((_, v))) => Attempt::Done(Ok(v)),
            Ok(Err((status, content_type, body))) => {
                let message = error_message(content_type.as_deref(), &body);
                let err = ProviderError::Http {
                    endpoint,
                    status,
                    message: message.clone(),
                };
                if (status == 401 || status == 403)
                    && !*auth_retried
                    && self.auth.retry_rejection(status, &message)
                {
                    *auth_retried = true;
                    return Attempt::Backoff(err);
                }
                if idempotent && matches!(status, 500 | 502 | 503 | 504) {
                    Attempt::Backoff(err)
                } else {
                    Attempt::Done(Err(err))
                }
            }
            Err(ProviderError::RateLimited {
                endpoint,
                retry_after_secs,
            }) => {
                let wait = Duration::from_secs(retry_after_secs.max(1));
                self.budget.pause_for(wait);
                tracing::warn!(endpoint = %endpoint, retry_after_secs, "rate limited by provider");
                Attempt::RetryAfter(
                    ProviderError::RateLimited {
                        endpoint,
                        retry_after_secs,
                    },
                    wait,
                )
            }
            Err(e @ ProviderError::Connect { .. }) => Attempt::Backoff(e),
            Err(e @ (ProviderError::Timeout { .. } | ProviderError::InvalidResponse { .. }))
                if idempotent =>
            {
                Attempt::Backoff(e)
            }
            Err(e) => Attempt::Done(Err(e)),
        }
    }

    /// One HTTP exchange: status, content type and a size-limited body. A 429 comes back
    /// as `Err(RateLimited)` with the server's `retry-after`.
    async fn exchange(
        &self,
        builder: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<(u16, Option<String>, Bytes), ProviderError> {
        let timeout_ms = self.settings.timeout.as_millis() as u64;
        let map_err = |e: reqwest::Error| classify_reqwest_error(e, endpoint, timeout_ms);
        let mut resp = builder.send().await.map_err(map_err)?;
        let status = resp.status().as_u16();
        if status == 429 {
            let retry_after_secs = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
                .unwrap_or(1);
            return Err(ProviderError::RateLimited {
                endpoint: endpoint.to_string(),
                retry_after_secs,
            });
        }
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let limit = self.settings.max_body_bytes;
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(ProviderError::InvalidResponse {
                endpoint: endpoint.to_string(),
                detail: format!("response body larger than the {limit}-byte limit"),
            });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
            if body.len() + chunk.len() > limit {
                return Err(ProviderError::InvalidResponse {
                    endpoint: endpoint.to_string(),
                    detail: format!("response body larger than the {limit}-byte limit"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, content_type, body.freeze()))
    }
}

fn classify_reqwest_error(e: reqwest::Error, endpoint: &str, timeout_ms: u64) -> ProviderError {
    let endpoint = endpoint.to_string();
    if e.is_timeout() {
        ProviderError::Timeout {
            endpoint,
            after_ms: timeout_ms,
        }
    } else if e.is_connect() {
        ProviderError::Connect {
            endpoint,
            detail: error_chain(&e),
        }
    } else if e.is_body() || e.is_decode() {
        ProviderError::InvalidResponse {
            endpoint,
            detail: format!("broken or truncated body: {}", error_chain(&e)),
        }
    } else {
        ProviderError::Connect {
            endpoint,
            detail: error_chain(&e),
        }
    }
}

/// The error and its sources, without the URL (URLs may carry query secrets).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = match err.downcast_ref::<reqwest::Error>() {
            Some(r) => r.without_url_string(),
            None => err.to_string(),
        };
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        // reqwest's Display names the URL; rebuild the message without it.
        let kind = if self.is_timeout() {
            "timed out"
        } else if self.is_connect() {
            "error connecting"
        } else if self.is_body() {
            "error reading body"
        } else if self.is_decode() {
            "error decoding body"
        } else if self.is_request() {
            "error sending request"
        } else {
            "request failed"
        };
        kind.to_string()
    }
}

/// Parses a JSON body, insisting on a JSON content type (an HTML page from a proxy with
/// status 200 is an error, not data). Shared by every provider client.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, DecodeError> {
    if let Some(ct) = content_type {
        if !ct.to_ascii_lowercase().contains("json") {
            return Err(DecodeError::NotJson(ct.to_string()));
        }
    }
    Ok(serde_json::from_slice(body)?)
}

/// Why a 2xx response body is not the data it should be.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("expected JSON, got content type {0:?}")]
    NotJson(String),
    #[error("malformed JSON: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// `retry-after` as delta-seconds (all LNVPS sends) or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.timestamp() - chrono::Utc::now().timestamp();
    Some(delta.max(0) as u64)
}

/// A short, single-line, printable message from an error body: the JSON `error` field
/// when there is one, an HTML page's title, or the first line of plain text.
pub fn error_message(content_type: Option<&str>, body: &[u8]) -> String {
    const MAX: usize = 200;
    if body.is_empty() {
        return "(empty body)".to_string();
    }
    let text = String::from_utf8_lossy(body);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(serde_json::Value::String(msg)) = map.get("error") {
            return clip(msg, MAX);
        }
    }
    let is_html =
        content_type.is_some_and(|c| c.contains("html")) || text.trim_start().starts_with('<');
    if is_html {
        let lower = text.to_ascii_lowercase();
        if let (Some(a), Some(b)) = (lower.find("<title>"), lower.find("</title>")) {
            if a + 7 <= b {
                return format!("HTML page: {}", clip(&text[a + 7..b], MAX));
            }
        }
        return "HTML page".to_string();
    }
    clip(text.lines().next().unwrap_or(""), MAX)
}

fn clip(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    cleaned.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_json_error() {
        let m = error_message(Some("application/json"), br#"{"error":"VM not found"}"#);
        assert_eq!(m, "VM not found");
    }

    #[test]
    fn error_message_html_title() {
        let m = error_message(
            Some("text/html"),
            b"<html><head><title>502 Bad Gateway</title></head></html>",
        );
        assert_eq!(m, "HTML page: 502 Bad Gateway");
    }

    #[test]
    fn error_message_plain_text_first_line() {
        let m = error_message(
            Some("text/plain"),
            b"Auth check failed: Wrong event kind\nmore",
        );
        assert_eq!(m, "Auth check failed: Wrong event kind");
    }

    #[test]
    fn retry_after_seconds_and_date() {
        assert_eq!(parse_retry_after("17"), Some(17));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
