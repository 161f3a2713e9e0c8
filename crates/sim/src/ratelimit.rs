//! The real server's per-client-IP fixed-window rate limiter (docs/providers.md).
//!
//! A window opens at a key's first request and lasts `window`; every request (throttled
//! ones too) counts; past `max` the answer is 429 with `retry-after` = whole seconds left
//! in the window, at least 1. A strict bucket covers the brute-force-sensitive paths.
//! Windows run on the monotonic clock, like the real server, so a test's manual wall
//! clock never freezes or skips them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use http::HeaderMap;
use tokio::time::Instant;

use super::scenario::RateLimitSettings;

/// Bound on tracked (ip, bucket) keys; the oldest tenth is dropped when full.
const MAX_TRACKED_KEYS: usize = 100_000;

const STRICT_PREFIXES: &[&str] = &[
    "/api/v1/oauth/",
    "/api/v1/webauthn/login",
    "/api/v1/webauthn/register",
    "/api/v1/account/verify-email",
    "/api/v1/account/whatsapp/verify",
    "/api/v1/account/whatsapp/confirm",
    "/api/v1/contact",
    "/.well-known/lnurlp/",
];
const STRICT_SUFFIXES: &[&str] = &["/renew-lnurlp"];

struct Bucket {
    count: u32,
    window_start: Instant,
    last_seen: Instant,
}

pub struct RateLimiter {
    settings: Mutex<RateLimitSettings>,
    buckets: Mutex<HashMap<(IpAddr, bool), Bucket>>,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings) -> Self {
        Self {
            settings: Mutex::new(settings),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_settings(&self, settings: RateLimitSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn is_strict(path: &str) -> bool {
        STRICT_PREFIXES.iter().any(|p| path.starts_with(p))
            || STRICT_SUFFIXES.iter().any(|s| path.ends_with(s))
    }

    /// Counts one request; `Err(retry_after_secs)` when over the limit.
    pub fn check(&self, ip: IpAddr, path: &str) -> Result<(), u64> {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !settings.enabled {
            return Ok(());
        }
        let strict = Self::is_strict(path);
        let max = if strict {
            settings.strict_per_minute
        } else {
            settings.per_minute
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        evict_if_full(&mut buckets);
        let now = Instant::now();
        let bucket = buckets.entry((ip, strict)).or_insert(Bucket {
            count: 0,
            window_start: now,
            last_seen: now,
        });
        bucket.last_seen = now;
        if now.duration_since(bucket.window_start) >= settings.window {
            bucket.count = 0;
            bucket.window_start = now;
        }
        bucket.count = bucket.count.saturating_add(1);
        if bucket.count > max {
            let left = settings
                .window
                .saturating_sub(now.duration_since(bucket.window_start));
            return Err(left.as_secs().max(1));
        }
        Ok(())
    }
}

fn evict_if_full(map: &mut HashMap<(IpAddr, bool), Bucket>) {
    if map.len() < MAX_TRACKED_KEYS {
        return;
    }
    let mut by_age: Vec<((IpAddr, bool), Instant)> =
        map.iter().map(|(k, b)| (*k, b.last_seen)).collect();
    by_age.sort_by_key(|(_, t)| *t);
    for (key, _) in by_age.into_iter().take(MAX_TRACKED_KEYS / 10) {
        map.remove(&key);
    }
}

/// The limiter's key: right-most parseable X-Forwarded-For entry, then X-Real-IP, then
/// the peer address.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    if let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        if let Some(ip) = xff.split(',').rev().find_map(parse_ip) {
            return ip;
        }
    }
    if let Some(ip) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_ip)
    {
        return ip;
    }
    peer.ip()
}

/// `1.2.3.4`, `1.2.3.4:443`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest.get(..end)?.parse().ok();
    }
    if s.matches(':').count() == 1 {
        let (host, _port) = s.rsplit_once(':')?;
        return host.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Window length helper for callers that only know "per minute".
    fn per_minute(n: u32) -> RateLimitSettings {
        RateLimitSettings {
            per_minute: n,
            window: Duration::from_secs(60),
            ..RateLimitSettings::default()
        }
    }

    #[test]
    fn ip_sources() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, peer), peer.ip());
        h.insert("x-real-ip", "192.0.2.7".parse().expect("hv"));
        assert_eq!(client_ip(&h, peer).to_string(), "192.0.2.7");
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.5:80, junk".parse().expect("hv"),
        );
        assert_eq!(client_ip(&h, peer).to_string(), "203.0.113.5");
    }

    #[tokio::test]
    async fn limits_and_reports_retry_after() {
        let l = RateLimiter::new(per_minute(2));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(l.check(ip, "/api/v1/vm").is_ok());
        assert!(l.check(ip, "/api/v1/vm").is_ok());
        let retry = l.check(ip, "/api/v1/vm").expect_err("limited");
        assert!((1..=60).contains(&retry));
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(l.check(other, "/api/v1/vm").is_ok());
    }
}
