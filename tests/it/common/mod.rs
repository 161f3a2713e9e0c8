//! Shared test harness: simulators and a daemon on loopback, and polling helpers.
//! [`Harness`] is one LNVPS account; [`Stack`] is any mix of an LNVPS and a StableVPS
//! simulator with accounts on either.
#![allow(dead_code)]

pub mod alertmanager;
pub mod chromium;
pub mod daemon_process;
pub mod docs;
pub mod etcd;
pub mod log_capture;
pub mod prometheus;
pub mod smtp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpswatch::daemon::Daemon;
use vpswatch::notify::{AlertStatus, AlertUpdate, Event, Notify};
use vpswatch_model::clock::{SharedClock, SystemClock};
use vpswatch_sim::lnvps::{LnvpsSim, LnvpsSimHandle, Scenario};
use vpswatch_sim::stablevps::{StableScenario, StableVpsSim, StableVpsSimHandle};

pub const LOOPBACK_ANY: &str = "127.0.0.1:0";

/// An LNVPS simulator on loopback and the system clock, its running VMs listening on
/// `vm_port` (on their own 127.x addresses) so probes make real connections.
pub async fn lnvps_sim_with_vm_ports(mut scenario: Scenario, vm_port: u16) -> LnvpsSimHandle {
    scenario.settings.vm_listen_port = Some(vm_port);
    LnvpsSim::start(
        LOOPBACK_ANY.parse().expect("addr"),
        scenario,
        Arc::new(SystemClock),
    )
    .await
    .expect("simulator")
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

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
        Self::start_inner(scenario, extra_globals, clock, None, |_| {}).await
    }

    /// Like `start_with`, with the watchdog's notifications going to `notifier`.
    pub async fn start_notifying(
        scenario: impl FnOnce(&str) -> Scenario,
        extra_globals: &str,
        clock: SharedClock,
        notifier: Arc<dyn Notify>,
    ) -> Harness {
        Self::start_inner(scenario, extra_globals, clock, Some(notifier), |_| {}).await
    }

    /// Like `start_notifying`, with `tweak` applied to the parsed configuration before
    /// the daemon starts (e.g. `[web]` settings the generated text does not carry).
    pub async fn start_tweaked(
        scenario: impl FnOnce(&str) -> Scenario,
        extra_globals: &str,
        clock: SharedClock,
        notifier: Arc<dyn Notify>,
        tweak: impl FnOnce(&mut vpswatch::config::Config),
    ) -> Harness {
        Self::start_inner(scenario, extra_globals, clock, Some(notifier), tweak).await
    }

    /// The configured notifier (email or the log) unless `notifier` replaces it.
    async fn start_inner(
        scenario: impl FnOnce(&str) -> Scenario,
        extra_globals: &str,
        clock: SharedClock,
        notifier: Option<Arc<dyn Notify>>,
        tweak: impl FnOnce(&mut vpswatch::config::Config),
    ) -> Harness {
        vpswatch::tls::install_crypto_provider();
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
        let mut config = vpswatch::config::parse(&text, "test", &|n| {
            (n == "TEST_NSEC").then(|| secret.clone())
        })
        .expect("config valid");
        tweak(&mut config);
        let daemon = Daemon::start_with(config, clock, notifier)
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
        scrape(&self.http, self.daemon.addr).await
    }

    /// Scrapes until `pred` holds for the exposition, or panics after `timeout`.
    pub async fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        wait_metrics_at(&self.http, self.daemon.addr, what, timeout, pred).await
    }

    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.sim.shutdown();
    }
}

/// One scrape of a daemon's /metrics.
pub async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> String {
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

/// Scrapes until `pred` holds for the exposition, or panics after `timeout`.
pub async fn wait_metrics_at(
    http: &reqwest::Client,
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + timeout;
    loop {
        let exp = Exposition::parse(&scrape(http, addr).await);
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

/// StableVPS keys the tests put in their scenarios (simulator keys, not real ones),
/// with distinct `keyPrefix`es: env `SVPS_FULL` (scope full) and `SVPS_READ` (read).
pub const SVPS_FULL: &str = "svps_live_f0110000000000000000000000000000000001";
pub const SVPS_READ: &str = "svps_live_4ead0000000000000000000000000000000002";
/// A second full key (env `SVPS_FULL2`), for a separate write key.
pub const SVPS_FULL2: &str = "svps_live_f0120000000000000000000000000000000003";

/// Builds an LNVPS scenario for the owner's hex public key.
pub type LnvpsScenarioFn = Box<dyn FnOnce(&str) -> Scenario>;

/// What a [`Stack`] runs.
pub struct StackSpec {
    /// An LNVPS simulator with this scenario (given the owner's hex key), if any.
    pub lnvps: Option<LnvpsScenarioFn>,
    /// A StableVPS simulator with this scenario, if any.
    pub stablevps: Option<StableScenario>,
    /// `[[accounts]]` tables; `{lnvps_url}` and `{stablevps_url}` are replaced. Keys
    /// are available as env `TEST_NSEC`, `SVPS_FULL`, `SVPS_READ`, `SVPS_FULL2`.
    pub accounts: String,
    /// Top-level config lines (before `[web]`).
    pub globals: String,
    pub clock: SharedClock,
}

/// Config text of a stack: fast polls, short timeouts, ephemeral loopback port.
pub fn stack_config(accounts: &str, globals: &str) -> String {
    format!(
        r#"poll_interval = "200ms"
request_timeout = "1s"
{globals}
[web]
listen_address = "{LOOPBACK_ANY}"

{accounts}
"#
    )
}

/// One StableVPS account `svps` on the stack's StableVPS simulator, plus `extra` lines.
pub fn stable_account(extra: &str) -> String {
    format!(
        r#"[[accounts]]
name = "svps"
provider = "stablevps"
base_url = "{{stablevps_url}}"
{extra}
"#
    )
}

/// Simulators plus a daemon polling accounts on them.
pub struct Stack {
    pub lnvps: Option<LnvpsSimHandle>,
    pub stablevps: Option<StableVpsSimHandle>,
    pub daemon: Daemon,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start(spec: StackSpec) -> Stack {
        vpswatch::tls::install_crypto_provider();
        let listen = LOOPBACK_ANY.parse::<SocketAddr>().expect("addr");
        let keys = nostr::Keys::generate();
        let lnvps = match spec.lnvps {
            Some(scenario) => Some(
                LnvpsSim::start(listen, scenario(&owner_hex(&keys)), spec.clock.clone())
                    .await
                    .expect("LNVPS simulator starts"),
            ),
            None => None,
        };
        let stablevps = match spec.stablevps {
            Some(scenario) => Some(
                StableVpsSim::start(listen, scenario, spec.clock.clone())
                    .await
                    .expect("StableVPS simulator starts"),
            ),
            None => None,
        };
        let accounts = spec
            .accounts
            .replace(
                "{lnvps_url}",
                &lnvps.as_ref().map(|s| s.base_url()).unwrap_or_default(),
            )
            .replace(
                "{stablevps_url}",
                &stablevps.as_ref().map(|s| s.base_url()).unwrap_or_default(),
            );
        let text = stack_config(&accounts, &spec.globals);
        let nsec = keys.secret_key().to_secret_hex();
        let config = vpswatch::config::parse(&text, "test", &|n| match n {
            "TEST_NSEC" => Some(nsec.clone()),
            "SVPS_FULL" => Some(SVPS_FULL.to_string()),
            "SVPS_READ" => Some(SVPS_READ.to_string()),
            "SVPS_FULL2" => Some(SVPS_FULL2.to_string()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("config invalid: {e}\n{text}"));
        let daemon = Daemon::start(config, spec.clock)
            .await
            .expect("daemon starts");
        Stack {
            lnvps,
            stablevps,
            daemon,
            http: reqwest::Client::new(),
        }
    }

    /// The StableVPS simulator (panics if the stack has none).
    pub fn svps(&self) -> &StableVpsSimHandle {
        self.stablevps
            .as_ref()
            .expect("the stack runs a StableVPS simulator")
    }

    pub async fn metrics(&self) -> String {
        scrape(&self.http, self.daemon.addr).await
    }

    pub async fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        wait_metrics_at(&self.http, self.daemon.addr, what, timeout, pred).await
    }

    pub async fn shutdown(self) {
        // Our idle keep-alive connection would hold the daemon's graceful shutdown for
        // its full grace period.
        drop(self.http);
        self.daemon.shutdown().await;
        if let Some(s) = self.lnvps {
            s.shutdown();
        }
        if let Some(s) = self.stablevps {
            s.shutdown();
        }
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

/// The demo world's machines listen on fixed addresses and ports (127.1.0.x:2222,
/// 127.2.x.y:3389), so one demo at a time runs in this test binary: hold this while one
/// runs, in-process or as `vpswatch demo`.
pub async fn demo_slot() -> tokio::sync::MutexGuard<'static, ()> {
    static SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SLOT.lock().await
}

/// The demo world and a daemon against it, in-process: what `vpswatch demo` runs, on a
/// clock the test controls.
pub struct DemoRun {
    pub world: vpswatch_sim::demo::DemoWorld,
    pub daemon: Daemon,
    _state_dir: tempfile::TempDir,
    _slot: tokio::sync::MutexGuard<'static, ()>,
}

impl DemoRun {
    pub async fn start(clock: SharedClock) -> DemoRun {
        let slot = demo_slot().await;
        vpswatch::tls::install_crypto_provider();
        let world = vpswatch_sim::demo::DemoWorld::start(clock.clone())
            .await
            .expect("demo world starts");
        let state_dir = tempfile::tempdir().expect("state dir");
        let text = world.config_toml(
            LOOPBACK_ANY.parse().expect("addr"),
            &state_dir.path().display().to_string(),
        );
        let config = vpswatch::config::parse(&text, "<demo>", &|name| world.env(name))
            .expect("the demo config parses");
        let daemon = Daemon::start(config, clock).await.expect("daemon starts");
        world.spawn_hangs(daemon.cancel_token());
        DemoRun {
            world,
            daemon,
            _state_dir: state_dir,
            _slot: slot,
        }
    }

    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.world.shutdown().await;
    }
}
