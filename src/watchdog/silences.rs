//! Alertmanager silences as a brake on the watchdog (docs/watchdog.md): when an
//! operator has silenced a VM's alerts in Alertmanager, the watchdog does not act on it
//! either, so there is one place to say "hands off, I'm working on it".
//!
//! [`SilenceChecker`] reads `GET /api/v2/silences` and matches each silence against a
//! VM's labels (`provider`, `account`, `vm`, `name`) with Alertmanager's own rules:
//! every matcher of a silence must match; `=`/`!=` compare the value exactly,
//! `=~`/`!~` use a regular expression anchored at both ends (`^(?:re)$`); a label the
//! VM does not have has the value "". A silence counts while `now` lies in
//! `[startsAt, endsAt)` and Alertmanager does not call it expired — judged on the
//! caller's `now`, so a cached list cannot make a silence start late or outlive its end.
//!
//! The list is cached for `refresh` (judged on the same `now`; a clock that jumps back
//! refetches), and concurrent callers wait for one request, so an evaluation round over
//! many VMs costs at most one request. A failed fetch is cached for as long: a dead
//! Alertmanager delays a round by one timeout, not one per VM. Errors are returned,
//! never panicked on; they name the URL (and status) and the engine treats them as
//! "don't act, tell someone".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::Deserialize;
use url::Url;

/// Largest silence list read (a real one is kilobytes).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Characters of an error body quoted in an error.
const BODY_SNIPPET: usize = 200;

/// Why silences could not be checked. The engine must not act on any VM then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    #[error("alertmanager_url {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach Alertmanager at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Alertmanager at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("Alertmanager at {url} sent silences vpswatch cannot read: {reason}")]
    Invalid { url: String, reason: String },
}

/// The silence that stops an action, for the log line and the email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceMatch {
    pub id: String,
    pub comment: String,
    pub created_by: String,
    pub ends_at: DateTime<Utc>,
}

/// How one matcher compares a label value.
#[derive(Debug, Clone)]
enum MatchOp {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

/// One matcher of a silence, compiled.
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: MatchOp,
}

impl Matcher {
    /// A matcher as the API spells it: `isRegex`, `isEqual` (false = negated).
    pub fn new(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Result<Self, String> {
        let op = if is_regex {
            // Alertmanager anchors every regex at both ends.
            let re = Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| format!("matcher {name}=~{value:?}: {e}"))?;
            if is_equal {
                MatchOp::Regex(re)
            } else {
                MatchOp::NotRegex(re)
            }
        } else if is_equal {
            MatchOp::Equal(value.to_string())
        } else {
            MatchOp::NotEqual(value.to_string())
        };
        Ok(Self {
            name: name.to_string(),
            op,
        })
    }

    /// Whether the labels satisfy this matcher (a missing label is "").
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        let value = labels
            .iter()
            .find(|(n, _)| *n == self.name)
            .map_or("", |(_, v)| *v);
        match &self.op {
            MatchOp::Equal(v) => value == v,
            MatchOp::NotEqual(v) => value != v,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }
}

/// One silence as read from Alertmanager.
#[derive(Debug, Clone)]
pub struct Silence {
    pub id: String,
    pub comment: String,
    pub created_by: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Alertmanager's word: `active`, `pending` or `expired`.
    pub state: String,
    matchers: Vec<Matcher>,
}

impl Silence {
    /// In force at `now`: not expired and `now` in `[startsAt, endsAt)`.
    pub fn in_effect(&self, now: DateTime<Utc>) -> bool {
        self.state != "expired" && self.starts_at <= now && now < self.ends_at
    }

    /// Every matcher matches (a silence without matchers matches nothing: Alertmanager
    /// refuses to create one, and "silence everything" must not happen by accident).
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        !self.matchers.is_empty() && self.matchers.iter().all(|m| m.matches(labels))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSilence {
    id: String,
    status: WireStatus,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    created_by: String,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    matchers: Vec<WireMatcher>,
}

#[derive(Deserialize)]
struct WireStatus {
    state: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMatcher {
    name: String,
    value: String,
    is_regex: bool,
    /// Absent before Alertmanager 0.22, which had no negative matchers.
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

/// Parses a `GET /api/v2/silences` body.
pub fn parse_silences(body: &[u8]) -> Result<Vec<Silence>, String> {
    let wire: Vec<WireSilence> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    wire.into_iter()
        .map(|w| {
            let matchers = w
                .matchers
                .iter()
                .map(|m| Matcher::new(&m.name, &m.value, m.is_regex, m.is_equal))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("silence {}: {e}", w.id))?;
            Ok(Silence {
                id: w.id,
                comment: w.comment,
                created_by: w.created_by,
                starts_at: w.starts_at,
                ends_at: w.ends_at,
                state: w.status.state,
                matchers,
            })
        })
        .collect()
}

struct Cached {
    fetched_at: DateTime<Utc>,
    result: Result<Arc<Vec<Silence>>, SilenceError>,
}

/// Checks VMs against Alertmanager's silences, with a short cache.
pub struct SilenceChecker {
    url: Url,
    http: reqwest::Client,
    refresh: chrono::Duration,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl SilenceChecker {
    /// `url` is Alertmanager's base URL (`http://127.0.0.1:9093`, or with a path prefix
    /// it is served under); `timeout` bounds each request; the list is refetched at most
    /// once per `refresh`.
    pub fn new(url: &str, timeout: Duration, refresh: Duration) -> Result<Self, SilenceError> {
        let bad = |reason: String| SilenceError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let mut parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("only http and https are supported".into()));
        }
        let path = format!("{}/api/v2/silences", parsed.path().trim_end_matches('/'));
        parsed.set_path(&path);
        parsed.set_query(None);
        // Idempotent; the daemon installs the same provider at start.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("vpswatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            url: parsed,
            http,
            refresh: chrono::Duration::from_std(refresh).unwrap_or(chrono::TimeDelta::MAX),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The URL silences are read from.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The silence in force at `now` that matches `labels`, if any (the one that ends
    /// last, when several do).
    pub async fn silenced_by(
        &self,
        labels: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> Result<Option<SilenceMatch>, SilenceError> {
        let silences = self.silences(now).await?;
        Ok(silences
            .iter()
            .filter(|s| s.in_effect(now) && s.matches(labels))
            .max_by_key(|s| s.ends_at)
            .map(|s| SilenceMatch {
                id: s.id.clone(),
                comment: s.comment.clone(),
                created_by: s.created_by.clone(),
                ends_at: s.ends_at,
            }))
    }

    /// The silence list as of at most `refresh` ago (fetched now if older).
    pub async fn silences(&self, now: DateTime<Utc>) -> Result<Arc<Vec<Silence>>, SilenceError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            let age = now - c.fetched_at;
            if age >= chrono::TimeDelta::zero() && age < self.refresh {
                return c.result.clone();
            }
        }
        let result = self.fetch().await.map(Arc::new);
        *cache = Some(Cached {
            fetched_at: now,
            result: result.clone(),
        });
        result
    }

    async fn fetch(&self) -> Result<Vec<Silence>, SilenceError> {
        let url = self.url.to_string();
        let unreachable = |e: reqwest::Error| SilenceError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        };
        let resp = self
            .http
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let mut snippet: String = text.trim().chars().take(BODY_SNIPPET).collect();
            if snippet.is_empty() {
                snippet = "(empty body)".into();
            }
            return Err(SilenceError::Status {
                url,
                status: status.as_u16(),
                body: snippet,
            });
        }
        if body.len() > MAX_BODY {
            return Err(SilenceError::Invalid {
                url,
                reason: format!("the list is larger than {MAX_BODY} bytes"),
            });
        }
        parse_silences(&body).map_err(|reason| SilenceError::Invalid { url, reason })
    }
}

/// An error and its causes on one line ("timed out" hides in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &[(&str, &str)] = &[
        ("provider", "lnvps"),
        ("account", "main"),
        ("vm", "12"),
        ("name", "web-1"),
    ];

    fn m(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Matcher {
        Matcher::new(name, value, is_regex, is_equal).expect("valid matcher")
    }

    #[test]
    fn matcher_semantics_follow_alertmanager() {
        assert!(m("vm", "12", false, true).matches(VM));
        assert!(!m("vm", "1", false, true).matches(VM), "no prefix match");
        assert!(m("vm", "1", false, false).matches(VM));
        assert!(m("name", "web-.*", true, true).matches(VM));
        assert!(
            !m("name", "web", true, true).matches(VM),
            "anchored at the end"
        );
        assert!(
            !m("name", "eb-1", true, true).matches(VM),
            "anchored at the start"
        );
        assert!(
            m("name", "web|db", true, true).matches(&[("name", "db")]),
            "alternation inside the anchors"
        );
        assert!(!m("name", "web|db", true, true).matches(&[("name", "webdb")]));
        assert!(m("name", "db-.*", true, false).matches(VM));
        // A label the VM lacks has the value "".
        assert!(m("team", "", false, true).matches(VM));
        assert!(!m("team", "ops", false, true).matches(VM));
        assert!(m("team", "ops", false, false).matches(VM));
        assert!(m("team", ".*", true, true).matches(VM));
        assert!(!m("team", ".+", true, true).matches(VM));
        assert!(Matcher::new("name", "(", true, true).is_err());
    }

    #[test]
    fn a_silence_needs_every_matcher_and_its_time() {
        let body = br#"[
          {"id":"a","status":{"state":"active"},"comment":"disk swap","createdBy":"ops",
           "startsAt":"2026-06-01T00:00:00Z","endsAt":"2026-06-02T00:00:00Z",
           "matchers":[{"name":"provider","value":"lnvps","isRegex":false,"isEqual":true},
                       {"name":"name","value":"web-.*","isRegex":true}]},
          {"id":"b","status":{"state":"active"},"comment":"","createdBy":"ops",
           "startsAt":"2026-06-01T00:00:00Z","endsAt":"2026-06-02T00:00:00Z",
           "matchers":[{"name":"provider","value":"lnvps","isRegex":false,"isEqual":true},
                       {"name":"account","value":"other","isRegex":false,"isEqual":true}]}
        ]"#;
        let s = parse_silences(body).expect("parses");
        assert!(s[0].matches(VM));
        assert!(!s[1].matches(VM), "one matcher fails: no match");
        let t = |x: &str| x.parse::<DateTime<Utc>>().expect("time");
        assert!(s[0].in_effect(t("2026-06-01T00:00:00Z")));
        assert!(
            !s[0].in_effect(t("2026-06-02T00:00:00Z")),
            "end is exclusive"
        );
        assert!(!s[0].in_effect(t("2026-05-31T23:59:59Z")));
        let bad = br#"[{"id":"x","status":{"state":"active"},"startsAt":"2026-06-01T00:00:00Z","endsAt":"2026-06-02T00:00:00Z","matchers":[{"name":"a","value":"(","isRegex":true}]}]"#;
        assert!(parse_silences(bad)
            .expect_err("bad regex")
            .contains("silence x"));
        assert!(parse_silences(b"{}").is_err());
    }

    #[test]
    fn url_is_checked_and_extended() {
        let c = SilenceChecker::new(
            "http://127.0.0.1:9093/am/",
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("valid");
        assert_eq!(c.url(), "http://127.0.0.1:9093/am/api/v2/silences");
        let e = SilenceChecker::new("ftp://x", Duration::from_secs(1), Duration::from_secs(1))
            .err()
            .expect("rejected");
        assert!(e.to_string().contains("\"ftp://x\""), "{e}");
        assert!(
            SilenceChecker::new("not a url", Duration::from_secs(1), Duration::from_secs(1))
                .is_err()
        );
    }
}
