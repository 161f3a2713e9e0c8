//! Injectable API faults.
//!
//! A fault matches requests by endpoint template (optionally one VM) and replaces or
//! delays the normal answer: latency, a 5xx (JSON from the API, HTML from a reverse
//! proxy), a broken or truncated body, an auth rejection, a 429, a hang, or an HTML page
//! where JSON was expected. Faults count down and disappear after `remaining` hits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Which requests it hits; default any.
    #[serde(default)]
    pub endpoint: EndpointMatch,
    pub kind: FaultKind,
    /// Hits left; `None` = until cleared.
    #[serde(default)]
    pub remaining: Option<u32>,
}

impl Fault {
    /// A fault that stays until cleared.
    pub fn new(endpoint: EndpointMatch, kind: FaultKind) -> Self {
        Self {
            endpoint,
            kind,
            remaining: None,
        }
    }

    /// The same fault, limited to `n` hits.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }
}

/// What a fault does to a matching request.
///
/// Serialized externally tagged: `"hang"`, `{"status": 503}`, `{"latency": "2s"}`,
/// `{"rate_limited": {"retry_after_secs": 5}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay, then answer normally.
    Latency(#[serde(with = "humantime_serde")] Duration),
    /// 500 → the API's sanitized JSON error; 502/503/504 → a reverse proxy's HTML page;
    /// anything else → a JSON error with the status' reason.
    Status(u16),
    /// 200, JSON content type, unparseable body.
    MalformedJson,
    /// 200 with the normal body's Content-Length, but only half the bytes arrive before
    /// the connection is cut.
    TruncatedBody,
    /// 401 text/plain `Auth check failed: Event signature invalid`.
    Unauthorized,
    /// 429 text/plain `Rate limit exceeded` with `retry-after`.
    RateLimited { retry_after_secs: u64 },
    /// Never answers (until the client gives up or the simulator shuts down).
    Hang,
    /// 200 with a text/html page.
    WrongContentType,
}

/// Which requests a fault hits.
///
/// Serialized as `"any"`, a template string (`"/api/v1/vm/{id}/time-series"`), or
/// `{"template": "...", "vm_id": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "EndpointRepr", into = "EndpointRepr")]
pub enum EndpointMatch {
    #[default]
    Any,
    /// Every request routed to this endpoint template.
    Template(String),
    /// Requests to this template whose `{id}` is `id`.
    Vm { template: String, id: u64 },
}

impl EndpointMatch {
    pub fn template(t: &str) -> Self {
        EndpointMatch::Template(t.to_string())
    }

    pub fn vm(t: &str, id: u64) -> Self {
        EndpointMatch::Vm {
            template: t.to_string(),
            id,
        }
    }

    /// Whether a request routed to `template` (None = unrouted) with path id `id` matches.
    pub fn matches(&self, template: Option<&str>, id: Option<u64>) -> bool {
        match self {
            EndpointMatch::Any => true,
            EndpointMatch::Template(t) => template == Some(t.as_str()),
            EndpointMatch::Vm {
                template: t,
                id: want,
            } => template == Some(t.as_str()) && id == Some(*want),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EndpointRepr {
    Text(String),
    Table {
        template: String,
        #[serde(default)]
        vm_id: Option<u64>,
    },
}

impl From<EndpointRepr> for EndpointMatch {
    fn from(r: EndpointRepr) -> Self {
        match r {
            EndpointRepr::Text(t) if t.eq_ignore_ascii_case("any") || t == "*" => {
                EndpointMatch::Any
            }
            EndpointRepr::Text(t) => EndpointMatch::Template(t),
            EndpointRepr::Table {
                template,
                vm_id: None,
            } => EndpointMatch::Template(template),
            EndpointRepr::Table {
                template,
                vm_id: Some(id),
            } => EndpointMatch::Vm { template, id },
        }
    }
}

impl From<EndpointMatch> for EndpointRepr {
    fn from(m: EndpointMatch) -> Self {
        match m {
            EndpointMatch::Any => EndpointRepr::Text("any".into()),
            EndpointMatch::Template(t) => EndpointRepr::Text(t),
            EndpointMatch::Vm { template, id } => EndpointRepr::Table {
                template,
                vm_id: Some(id),
            },
        }
    }
}

/// The active faults, first match wins.
#[derive(Debug, Default, Clone)]
pub struct FaultSet {
    faults: Vec<Fault>,
}

impl FaultSet {
    pub fn add(&mut self, fault: Fault) {
        if fault.remaining != Some(0) {
            self.faults.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.faults.clear();
    }

    pub fn list(&self) -> Vec<Fault> {
        self.faults.clone()
    }

    /// The first matching fault's kind, counting one hit against it.
    pub fn take(&mut self, template: Option<&str>, id: Option<u64>) -> Option<FaultKind> {
        let idx = self
            .faults
            .iter()
            .position(|f| f.endpoint.matches(template, id))?;
        let fault = self.faults.get_mut(idx)?;
        let kind = fault.kind.clone();
        if let Some(n) = fault.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(idx);
            }
        }
        Some(kind)
    }
}

/// A `Hang` fault holds its request at most this long (or until shutdown).
const MAX_HANG: Duration = Duration::from_secs(15 * 60);

/// What a request does once its fault, if any, has been played.
pub enum FaultEffect {
    /// Answer normally, cutting the body in half when `truncate`.
    Proceed { truncate: bool },
    /// The request was held until shutdown or the hang limit: answer nothing useful.
    Hung,
    /// Answer with the fault's own reply instead of the handler's.
    Reply(FaultKind),
}

/// Plays the time-based part of a fault (latency, hang) and says how the request goes
/// on. Shared by every fake provider so faults behave the same everywhere. `on_hang`
/// runs when a hang starts (the request log records it as never answered).
pub async fn play(
    fault: Option<FaultKind>,
    shutdown: &CancellationToken,
    on_hang: impl FnOnce(),
) -> FaultEffect {
    match fault {
        None => FaultEffect::Proceed { truncate: false },
        Some(FaultKind::Latency(d)) => {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(d) => {}
            }
            FaultEffect::Proceed { truncate: false }
        }
        Some(FaultKind::Hang) => {
            on_hang();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(MAX_HANG) => {}
            }
            FaultEffect::Hung
        }
        Some(FaultKind::TruncatedBody) => FaultEffect::Proceed { truncate: true },
        Some(kind) => FaultEffect::Reply(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down_and_matches_vm() {
        let mut set = FaultSet::default();
        set.add(Fault::new(EndpointMatch::vm("/api/v1/vm/{id}", 2), FaultKind::Hang).times(2));
        assert_eq!(set.take(Some("/api/v1/vm/{id}"), Some(1)), None);
        assert_eq!(
            set.take(Some("/api/v1/vm/{id}"), Some(2)),
            Some(FaultKind::Hang)
        );
        assert_eq!(
            set.take(Some("/api/v1/vm/{id}"), Some(2)),
            Some(FaultKind::Hang)
        );
        assert_eq!(set.take(Some("/api/v1/vm/{id}"), Some(2)), None);
    }

    #[test]
    fn serde_forms() {
        let f: Fault = serde_json::from_str(
            r#"{"endpoint":{"template":"/api/v1/vm/{id}","vm_id":3},"kind":{"latency":"2s"},"remaining":1}"#,
        )
        .expect("json");
        assert_eq!(f.kind, FaultKind::Latency(Duration::from_secs(2)));
        assert_eq!(f.endpoint, EndpointMatch::vm("/api/v1/vm/{id}", 3));
        let f: Fault = toml::from_str("endpoint = \"any\"\nkind = \"hang\"").expect("toml");
        assert_eq!(f.endpoint, EndpointMatch::Any);
        let f: Fault =
            toml::from_str("kind = { rate_limited = { retry_after_secs = 7 } }").expect("toml");
        assert_eq!(
            f.kind,
            FaultKind::RateLimited {
                retry_after_secs: 7
            }
        );
    }
}
