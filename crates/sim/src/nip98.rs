//! NIP-98 verification exactly as the real server enforces it (docs/providers.md;
//! the accepted and rejected variants are in tests/fixtures/lnvps/nip98_edge_cases.json).
//!
//! Same order of checks, same status codes, same message texts: header present →
//! scheme (`Bearer ` / `Nostr `, case-sensitive) → base64 + event JSON → kind → time
//! window (±60 s) → first `u` tag's path (exact; host and query ignored) → first
//! `method` tag → id and signature → single use (event id burned for 120 s) → optional
//! `payload` tag against the body's SHA-256. The event is burned before the payload
//! check, and even if the handler then fails.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use http::{HeaderValue, StatusCode, Uri};
use nostr::{Event, EventId, JsonUtil, Kind};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// How far `created_at` may be from now, either way.
const AUTH_WINDOW_SECS: u64 = 60;
/// How long a used event id is remembered (twice the window: skew either way).
const REPLAY_WINDOW: Duration = Duration::from_secs(2 * AUTH_WINDOW_SECS);
/// Bound on remembered ids; the set is cleared when full, as the real server does.
const MAX_TRACKED_EVENTS: usize = 100_000;

/// An auth rejection: status and the plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn check_failed(reason: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            format!("Auth check failed: {reason}"),
        )
    }
}

/// What the verifier needs to know about the request.
pub struct AuthRequest<'a> {
    pub header: Option<&'a HeaderValue>,
    /// Raw request path (not percent-decoded, no query).
    pub path: &'a str,
    pub method: &'a str,
    /// Hex SHA-256 of the body; present for every `Nostr` request.
    pub body_sha256: Option<&'a str>,
    /// The simulator's wall clock, unix seconds.
    pub now_unix: i64,
}

/// Verifies NIP-98 headers and remembers used event ids.
#[derive(Default)]
pub struct Verifier {
    seen: Mutex<HashMap<EventId, Instant>>,
}

impl Verifier {
    /// The authenticated pubkey (lowercase hex), or the exact rejection.
    pub fn authenticate(&self, req: &AuthRequest<'_>) -> Result<String, Rejection> {
        let header = req
            .header
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Rejection::new(StatusCode::FORBIDDEN, "Auth header not found"))?;
        if header.starts_with("Bearer ") {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "Invalid session: Session auth not configured",
            ));
        }
        let encoded = header.strip_prefix("Nostr ").ok_or_else(|| {
            Rejection::new(StatusCode::FORBIDDEN, "Auth scheme must be Nostr or Bearer")
        })?;
        let event = decode_event(encoded)
            .map_err(|e| Rejection::new(StatusCode::UNAUTHORIZED, format!("Invalid auth: {e}")))?;
        self.check(&event, req).map_err(Rejection::check_failed)?;
        check_payload(&event, req.body_sha256).map_err(Rejection::check_failed)?;
        Ok(event.pubkey.to_hex())
    }

    fn check(&self, event: &Event, req: &AuthRequest<'_>) -> Result<(), &'static str> {
        if event.kind != Kind::HttpAuth {
            return Err("Wrong event kind");
        }
        let created = i128::from(event.created_at.as_secs());
        if created.abs_diff(i128::from(req.now_unix)) > u128::from(AUTH_WINDOW_SECS) {
            return Err("Created timestamp is out of range");
        }
        let url = tag_value(event, "u").ok_or("Missing url tag")?;
        let uri = url.parse::<Uri>().map_err(|_| "Invalid U tag")?;
        if uri.path() != req.path {
            return Err("U tag does not match");
        }
        match tag_value(event, "method") {
            Some(m) if m == req.method => {}
            Some(_) => return Err("Method tag incorrect"),
            None => return Err("Missing method tag"),
        }
        if event.verify().is_err() {
            return Err("Event signature invalid");
        }
        self.consume(event.id)
    }

    /// Burns `id`; fails if it was used within the replay window.
    fn consume(&self, id: EventId) -> Result<(), &'static str> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, used| now.duration_since(*used) < REPLAY_WINDOW);
        if seen.len() >= MAX_TRACKED_EVENTS {
            seen.clear();
        }
        if seen.insert(id, now).is_some() {
            return Err("Credential has already been used");
        }
        Ok(())
    }
}

fn decode_event(encoded: &str) -> Result<Event, &'static str> {
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "Invalid auth string")?;
    Event::from_json(json).map_err(|_| "Invalid nostr event")
}

/// First tag named `name` that has a value (a bare `["u"]` counts as missing).
fn tag_value<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.tags.iter().find_map(|t| match t.as_slice() {
        [k, v, ..] if k == name => Some(v.as_str()),
        _ => None,
    })
}

fn check_payload(event: &Event, body_sha256: Option<&str>) -> Result<(), &'static str> {
    let Some(expected) = tag_value(event, "payload") else {
        return Ok(());
    };
    match body_sha256 {
        Some(actual) if expected.eq_ignore_ascii_case(actual) => Ok(()),
        Some(_) => Err("Payload tag does not match request body"),
        None => Err("Payload tag present but request has no body"),
    }
}

/// Lowercase hex SHA-256, the value a `payload` tag carries.
pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Tag, Timestamp};

    fn header(tags: Vec<Tag>, created: u64) -> HeaderValue {
        let keys = Keys::generate();
        let ev = EventBuilder::new(Kind::HttpAuth, "")
            .tags(tags)
            .custom_created_at(Timestamp::from(created))
            .sign_with_keys(&keys)
            .expect("sign");
        let b64 = base64::engine::general_purpose::STANDARD.encode(ev.as_json());
        HeaderValue::from_str(&format!("Nostr {b64}")).expect("header")
    }

    fn req<'a>(h: &'a HeaderValue, now: i64) -> AuthRequest<'a> {
        AuthRequest {
            header: Some(h),
            path: "/api/v1/account",
            method: "GET",
            body_sha256: None,
            now_unix: now,
        }
    }

    #[test]
    fn bare_tags_do_not_panic() {
        let v = Verifier::default();
        let h = header(
            vec![
                Tag::parse(["u"]).expect("tag"),
                Tag::parse(["method", "GET"]).expect("tag"),
            ],
            1000,
        );
        let err = v.authenticate(&req(&h, 1000)).expect_err("rejected");
        assert_eq!(err.message, "Auth check failed: Missing url tag");
    }

    #[test]
    fn ok_then_replay() {
        let v = Verifier::default();
        let h = header(
            vec![
                Tag::parse(["u", "http://x/api/v1/account?q=1"]).expect("tag"),
                Tag::parse(["method", "GET"]).expect("tag"),
            ],
            1000,
        );
        assert!(v.authenticate(&req(&h, 1060)).is_ok());
        let err = v.authenticate(&req(&h, 1060)).expect_err("replay");
        assert_eq!(
            err.message,
            "Auth check failed: Credential has already been used"
        );
    }
}
