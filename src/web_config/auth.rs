//! `basic_auth_users`: HTTP basic auth against bcrypt hashes (`htpasswd -nBC 10 USER`).
//!
//! bcrypt at cost 10 costs tens of milliseconds of CPU per check, which Prometheus would
//! pay on every scrape. Successful checks are therefore remembered for [`CACHE_TTL`],
//! keyed by a keyed SHA-256 of (user, configured hash, password): only a request that
//! presents exactly a credential that verified moments ago skips bcrypt, failures are
//! never cached, a reload (new hashes) starts with an empty cache, and the key is random
//! per process so the cache holds nothing that could be checked offline faster than
//! bcrypt without also reading the process memory that holds the key.
//!
//! Each bcrypt check runs on the blocking pool, at most [`bcrypt_slots`] at once (one
//! core fewer than the host has, so the daemon and a good client's check always find
//! CPU), and never stalls the async runtime; the scrapes of good clients keep hitting the
//! cache, which is consulted before anything else. Every check the cache cannot answer
//! costs the client's address one token of a small budget ([`CHECK_BURST`], one more
//! every [`CHECK_PERIOD`]); an address without a token gets `429` with `Retry-After` and
//! no bcrypt at all, so one client sending wrong passwords can keep at most
//! [`CHECK_BURST`] checks queued ahead of anyone else's. Unknown users are checked
//! against a configured hash too, so response time does not tell which user names exist.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use vpswatch_model::problem::Problem;

/// How long a verified credential is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many remembered credentials (the cache is emptied when full).
const CACHE_CAPACITY: usize = 256;
/// Password checks (bcrypt) one client address may start in a burst…
pub const CHECK_BURST: u32 = 5;
/// …and one more per this period.
pub const CHECK_PERIOD: Duration = Duration::from_secs(2);
/// Client addresses remembered by the throttle before the ones back at a full budget
/// are forgotten.
const THROTTLE_KEYS: usize = 4096;

/// bcrypt checks running at once: one core fewer than the host has (at least one).
pub fn bcrypt_slots() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

/// The `WWW-Authenticate` challenge of a 401.
pub const CHALLENGE: &str = "Basic realm=\"vpswatch\", charset=\"UTF-8\"";

/// Users and their bcrypt hashes, with the verification cache.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// A configured hash, checked for unknown users (same cost, same time).
    decoy: String,
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    cache_key: [u8; 32],
    slots: Semaphore,
    /// Per-address budget of checks the cache could not answer.
    throttle: DefaultKeyedRateLimiter<IpAddr>,
    /// bcrypt verifications started (for tests and benchmarks).
    verifications: AtomicU64,
}

/// Why a request was not authenticated (for debug logs; never the credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Malformed,
    WrongCredentials,
    /// The client's address used up its budget of password checks; retry after this.
    Throttled(Duration),
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "no credentials",
            Denied::Malformed => "malformed Authorization header",
            Denied::WrongCredentials => "wrong user or password",
            Denied::Throttled(_) => "too many password checks from this address",
        }
    }
}

impl BasicAuth {
    /// Checks the configured users; problems name `basic_auth_users.<user>` and never
    /// echo a hash.
    pub fn new(raw: &BTreeMap<String, String>, problems: &mut Vec<Problem>) -> Option<BasicAuth> {
        let before = problems.len();
        let mut users = HashMap::new();
        for (user, hash) in raw {
            let path = format!("basic_auth_users.{user}");
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                problems.push(Problem {
                    path,
                    message: "a user name must be non-empty, without ':' or control characters"
                        .into(),
                });
                continue;
            }
            let hash = hash.trim();
            if hash.parse::<bcrypt::HashParts>().is_err() {
                problems.push(Problem {
                    path,
                    message: "is not a bcrypt hash ($2y$10$… as `htpasswd -nBC 10 USER` prints \
                              after the colon)"
                        .into(),
                });
                continue;
            }
            users.insert(user.clone(), hash.to_string());
        }
        if problems.len() > before {
            return None;
        }
        let decoy = users.values().next()?.clone();
        let mut cache_key = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut cache_key[..]);
        Some(BasicAuth {
            users,
            decoy,
            cache: Mutex::new(HashMap::new()),
            cache_key,
            slots: Semaphore::new(bcrypt_slots()),
            throttle: RateLimiter::keyed(
                Quota::with_period(CHECK_PERIOD)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(CHECK_BURST).unwrap_or(NonZeroU32::MIN)),
            ),
            verifications: AtomicU64::new(0),
        })
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// bcrypt verifications started so far.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Takes one token of `client`'s budget, or says how long until one is free.
    fn spend_token(&self, client: IpAddr) -> Result<(), Denied> {
        if self.throttle.len() >= THROTTLE_KEYS {
            // Addresses whose budget is full again carry no information.
            self.throttle.retain_recent();
            self.throttle.shrink_to_fit();
        }
        self.throttle
            .check_key(&throttle_key(client))
            .map_err(|not_until| {
                Denied::Throttled(not_until.wait_time_from(DefaultClock::default().now()))
            })
    }

    fn cache_slot(&self, user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        // Lengths first, so ("ab","c") and ("a","bc") cannot collide.
        for part in [user.as_bytes(), hash.as_bytes(), password] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// Checks an `Authorization` header sent from `client`.
    pub async fn check(&self, header: Option<&HeaderValue>, client: IpAddr) -> Result<(), Denied> {
        let header = header.ok_or(Denied::Missing)?;
        let (user, password) = parse_basic(header.as_bytes()).ok_or(Denied::Malformed)?;
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (self.decoy.clone(), false),
        };
        let slot = self.cache_slot(&user, &hash, &password);
        if known {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&slot).is_some_and(|t| t.elapsed() < CACHE_TTL) {
                return Ok(());
            }
        }
        self.spend_token(client)?;
        let ok = {
            // The semaphore is never closed; a failure to acquire means "deny".
            let _permit = self
                .slots
                .acquire()
                .await
                .map_err(|_| Denied::WrongCredentials)?;
            self.verifications.fetch_add(1, Ordering::Relaxed);
            tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false)
        };
        if !(ok && known) {
            return Err(Denied::WrongCredentials);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, t| t.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(slot, Instant::now());
        Ok(())
    }
}

/// The throttle's key for a client address: IPv4 as is (also when mapped into IPv6),
/// IPv6 by its /64, the block one host usually holds in full.
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// `Basic base64(user:password)` → (user, password bytes). The scheme is
/// case-insensitive (RFC 7617); the user name must be UTF-8, the password may be any
/// bytes.
fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn header(user: &str, pass: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {enc}")).expect("header")
    }

    fn auth(user: &str, pass: &str) -> BasicAuth {
        // Cost 4 keeps the unit test fast; the format is what htpasswd writes.
        let hash = bcrypt::hash(pass, 4)
            .expect("hash")
            .replacen("$2b$", "$2y$", 1);
        let mut p = Vec::new();
        let a = BasicAuth::new(&BTreeMap::from([(user.to_string(), hash)]), &mut p);
        assert!(p.is_empty(), "{p:?}");
        a.expect("valid")
    }

    #[tokio::test]
    async fn right_wrong_missing_and_cache() {
        let a = auth("prom", "s3cret:with colon");
        assert_eq!(a.check(None, HOME).await, Err(Denied::Missing));
        assert_eq!(
            a.check(Some(&HeaderValue::from_static("Bearer x")), HOME)
                .await,
            Err(Denied::Malformed)
        );
        assert_eq!(
            a.check(Some(&header("prom", "wrong")), HOME).await,
            Err(Denied::WrongCredentials)
        );
        assert_eq!(
            a.check(Some(&header("nobody", "s3cret:with colon")), HOME)
                .await,
            Err(Denied::WrongCredentials),
            "an unknown user with a known password is refused"
        );
        assert_eq!(
            a.check(Some(&header("prom", "s3cret:with colon")), HOME)
                .await,
            Ok(())
        );
        assert_eq!(a.cache.lock().map(|c| c.len()).unwrap_or(0), 1);
        // Cached, and the cache does not make a wrong password right.
        assert_eq!(
            a.check(Some(&header("prom", "s3cret:with colon")), HOME)
                .await,
            Ok(())
        );
        assert_eq!(
            a.check(Some(&header("prom", "s3cret:with colo")), HOME)
                .await,
            Err(Denied::WrongCredentials)
        );
        assert_eq!(a.cache.lock().map(|c| c.len()).unwrap_or(0), 1);
        // Lower-case scheme works.
        let enc = base64::engine::general_purpose::STANDARD.encode("prom:s3cret:with colon");
        let v = HeaderValue::from_str(&format!("basic {enc}")).expect("header");
        assert_eq!(a.check(Some(&v), HOME).await, Ok(()));
    }

    #[test]
    fn bad_entries_name_the_user_not_the_hash() {
        let mut p = Vec::new();
        let raw = BTreeMap::from([
            ("alice".to_string(), "plaintext-password".to_string()),
            ("bo:b".to_string(), "$2y$10$abc".to_string()),
        ]);
        assert!(BasicAuth::new(&raw, &mut p).is_none());
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].path, "basic_auth_users.alice");
        assert!(!p[0].message.contains("plaintext-password"));
        assert_eq!(p[1].path, "basic_auth_users.bo:b");
    }

    #[tokio::test]
    async fn an_address_out_of_checks_is_throttled_without_bcrypt() {
        let a = auth("prom", "right");
        let attacker: IpAddr = "192.0.2.7".parse().expect("ip");
        // The good client's credential is cached first.
        assert_eq!(a.check(Some(&header("prom", "right")), HOME).await, Ok(()));
        for _ in 0..CHECK_BURST {
            assert_eq!(
                a.check(Some(&header("prom", "wrong")), attacker).await,
                Err(Denied::WrongCredentials)
            );
        }
        let before = a.verifications();
        let denied = a.check(Some(&header("prom", "wrong")), attacker).await;
        let Err(Denied::Throttled(wait)) = denied else {
            panic!("not throttled: {denied:?}");
        };
        assert!(wait > Duration::ZERO && wait <= CHECK_PERIOD, "{wait:?}");
        // Even the right password costs a check once the budget is spent…
        assert!(matches!(
            a.check(Some(&header("prom", "right2")), attacker).await,
            Err(Denied::Throttled(_))
        ));
        assert_eq!(a.verifications(), before, "a throttled request ran bcrypt");
        // …but a cached credential does not, from any address, and other addresses keep
        // their own budget.
        assert_eq!(
            a.check(Some(&header("prom", "right")), attacker).await,
            Ok(())
        );
        assert_eq!(
            a.check(Some(&header("prom", "wrong")), HOME).await,
            Err(Denied::WrongCredentials)
        );
        // An IPv6 client is one /64, mapped IPv4 is IPv4.
        assert_eq!(
            throttle_key("2001:db8:1:2:3:4:5:6".parse().expect("ip")),
            "2001:db8:1:2::".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            throttle_key("::ffff:192.0.2.7".parse().expect("ip")),
            attacker
        );
    }

    #[tokio::test]
    async fn a_cached_credential_does_not_wait_for_bcrypt() {
        let a = auth("prom", "right");
        assert_eq!(a.check(Some(&header("prom", "right")), HOME).await, Ok(()));
        // Every bcrypt slot taken (as by a flood of wrong passwords): an uncached check
        // waits, the cached one is answered.
        let all = u32::try_from(bcrypt_slots()).expect("slots");
        let held = a.slots.acquire_many(all).await.expect("slots");
        let cached = tokio::time::timeout(
            Duration::from_secs(10),
            a.check(Some(&header("prom", "right")), HOME),
        )
        .await;
        assert_eq!(
            cached,
            Ok(Ok(())),
            "the cached check waited for a bcrypt slot"
        );
        let uncached = tokio::time::timeout(
            Duration::from_millis(200),
            a.check(Some(&header("prom", "other")), HOME),
        )
        .await;
        assert!(uncached.is_err(), "an uncached check ran without a slot");
        drop(held);
    }
}
