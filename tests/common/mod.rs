//! Shared test harness: a simulator and a daemon on loopback, and polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpswatch::clock::{SharedClock, SystemClock};
use vpswatch::daemon::Daemon;
use vpswatch::notify::{AlertStatus, AlertUpdate, Event, LogNotifier, Notify};
use vpswatch::sim::lnvps::{LnvpsSim, LnvpsSimHandle, Scenario};

pub const LOOPBACK_ANY: &str = "127.0.0.1:0";

/// A daemon polling one LNVPS account on a simulator.
pub struct Harness {
    pub sim: LnvpsSimHandle,
    pub daemon: Daemon,
    pub keys: nostr::Keys,
    pub http: reqwest::Client,
}

pub fn owner_hex(keys: &nostr::Keys) -> String {
    keys.public_key().to_hex()
}

/// Config text for one LNVPS account with the key in env var `TEST_NSEC`.
pub fn config_text(sim_url: &str, extra_globals: &str) -> String {
    format!(
        r#"poll_interval = "200ms"
request_timeout = "1s"
{extra_globals}
[web]
listen_address = "{LOOPBACK_ANY}"

[[accounts]]
name = "main"
provider = "lnvps"
base_url = "{sim_url}"
nsec_env = "TEST_NSEC"
"#
    )
}

impl Harness {
    /// Starts a simulator with a built-in scenario (owned by a fresh key) and a daemon.
    pub async fn start(scenario: &str) -> Harness {
        let name = scenario.to_string();
        Self::start_with(
            move |owner| Scenario::load(&name, Some(owner)).expect("scenario loads"),
            "",
            Arc::new(SystemClock),
        )
        .await
    }

    /// Starts with a scenario built for the generated owner key, extra global config
    /// lines and a clock.
    pub async fn start_with(
        scenario: impl FnOnce(&str) -> Scenario,
        extra_globals: &str,
        clock: SharedClock,
    ) -> Harness {
        Self::start_notifying(scenario, extra_globals, clock, Arc::new(LogNotifier)).await
    }

    /// Like `start_with`, with the watchdog's notifications going to `notifier`.
    pub async fn start_notifying(
        scenario: impl FnOnce(&str) -> Scenario,
        extra_globals: &str,
        clock: SharedClock,
        notifier: Arc<dyn Notify>,
    ) -> Harness {
        vpswatch::daemon::install_crypto_provider();
        let keys = nostr::Keys::generate();
        let owner = owner_hex(&keys);
        let scenario = scenario(&owner);
        let sim = LnvpsSim::start(
            LOOPBACK_ANY.parse::<SocketAddr>().expect("addr"),
            scenario,
            clock.clone(),
        )
        .await
        .expect("simulator starts");
        let secret = keys.secret_key().to_secret_hex();
        let text = config_text(&sim.base_url(), extra_globals);
        let config = vpswatch::config::parse(&text, "test", &|n| {
            (n == "TEST_NSEC").then(|| secret.clone())
        })
        .expect("config valid");
        let daemon = Daemon::start_with(config, clock, Some(notifier))
            .await
            .expect("daemon starts");
        Harness {
            sim,
            daemon,
            keys,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.daemon.addr, path)
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    }

    /// Scrapes until `pred` holds for the exposition, or panics after `timeout`.
    pub async fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        let deadline = Instant::now() + timeout;
        loop {
            let exp = Exposition::parse(&self.metrics().await);
            if pred(&exp) {
                return exp;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for: {what}\n--- last /metrics ---\n{}",
                    exp.text
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.sim.shutdown();
    }
}

/// Waits for an async condition with a deadline.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// A parsed text exposition.
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (series.to_string(), Vec::new()),
            };
            samples.push((name, labels, value));
        }
        Exposition {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of the one sample of `name` whose labels include all of `want`.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, labels, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
    }

    pub fn has(&self, name: &str, want: &[(&str, &str)]) -> bool {
        self.get(name, want).is_some()
    }

    pub fn count(&self, name: &str) -> usize {
        self.samples.iter().filter(|s| s.0 == name).count()
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut val = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            o => o,
                        });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                o => val.push(o),
            }
        }
        out.push((key, val));
        rest = &rest[end.min(rest.len())..];
    }
    out
}

/// A notifier that remembers what it was told (the watchdog's side of alerting).
#[derive(Default)]
pub struct RecordingNotifier {
    pub alerts: std::sync::Mutex<Vec<AlertUpdate>>,
    pub events: std::sync::Mutex<Vec<Event>>,
}

impl Notify for RecordingNotifier {
    fn alert(&self, u: AlertUpdate) {
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(u);
    }
    fn event(&self, e: Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }
}

impl RecordingNotifier {
    /// (rule, vm, status) of every alert so far.
    pub fn alert_log(&self) -> Vec<(String, String, AlertStatus)> {
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|u| (u.key.rule.clone(), u.key.vm.clone(), u.status))
            .collect()
    }

    pub fn event_kinds(&self) -> Vec<(String, &'static str)> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| (e.key.vm.clone(), e.kind.as_str()))
            .collect()
    }
}
