//! The fault matrix: both providers × every way an API can fail, each asserting the
//! same four things —
//! 1. the failure is visible (`vpswatch_provider_up 0`, the error counted by code in
//!    `vpswatch_provider_requests_total`) and nothing panics;
//! 2. the last good data stays exported and `vpswatch_provider_last_success_timestamp_seconds`
//!    does not move (staleness is visible);
//! 3. the watchdog does nothing to the affected account: a VM hangs during the fault,
//!    a rule that would reboot it sees "unknown", and the simulator receives no power
//!    action (a positive control first proves the rule does reboot a hung VM);
//! 4. recovery once the fault clears.
//!
//! Each provider's account talks to its simulator through a small TCP proxy so that
//! "connection refused" is real (the proxy closes its port). Time is scaled: polls every
//! 200 ms, requests time out after 300 ms, probes every 100 ms. The matrix is printed
//! (run with `--nocapture` to see it) and mirrored in docs/security.md ("Fault matrix").

use crate::common::free_port;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{wait_for, wait_metrics_at, Exposition, SVPS_FULL};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vpswatch::daemon::Daemon;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{self, LnvpsSim, LnvpsSimHandle};
use vpswatch_sim::stablevps::{
    self, AccountSpec, KeyScope, KeySpec, StableScenario, StableVpsSim, StableVpsSimHandle, VpsSpec,
};

const T: Duration = Duration::from_secs(20);
const RULE: &str = "hung-vm";

/// A TCP forwarder that can refuse connections (its port closed) and come back on the
/// same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    running: Mutex<Option<(JoinHandle<()>, CancellationToken)>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let p = Arc::new(Proxy {
            addr,
            upstream,
            running: Mutex::new(None),
        });
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        let (t, upstream) = (token.clone(), self.upstream);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let t = t.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = t.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some((task, token));
    }

    /// Closes the port and every open connection: new connections are refused.
    async fn refuse(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((task, token)) = running {
            token.cancel();
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens on the same port again.
    async fn resume(&self) {
        let deadline = Instant::now() + T;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

/// One way an API fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    Status(u16),
    RateLimited,
    Timeout,
    Refused,
    MalformedJson,
    Truncated,
    WrongContentType,
    Unauthorized,
    Skew(i64),
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::Status(503) => "503 (proxy HTML page)".into(),
            Case::Status(s) => s.to_string(),
            Case::RateLimited => "429 + retry-after".into(),
            Case::Timeout => "timeout (no answer)".into(),
            Case::Refused => "connection refused".into(),
            Case::MalformedJson => "malformed JSON".into(),
            Case::Truncated => "truncated body".into(),
            Case::WrongContentType => "wrong content type (HTML 200)".into(),
            Case::Unauthorized => "401".into(),
            Case::Skew(s) => format!("host clock {s:+} s (NIP-98)"),
        }
    }

    /// The `code` label the failure is counted under.
    fn code(self) -> &'static str {
        match self {
            Case::Status(500) => "500",
            Case::Status(502) => "502",
            Case::Status(503) => "503",
            Case::Status(403) => "403",
            Case::Status(_) => "other",
            Case::RateLimited => "429",
            Case::Timeout => "timeout",
            Case::Refused => "connect_error",
            Case::MalformedJson | Case::Truncated | Case::WrongContentType => "invalid_response",
            Case::Unauthorized | Case::Skew(_) => "401",
        }
    }

    fn kind(self) -> Option<lnvps::FaultKind> {
        Some(match self {
            Case::Status(s) => lnvps::FaultKind::Status(s),
            Case::RateLimited => lnvps::FaultKind::RateLimited {
                retry_after_secs: 1,
            },
            Case::Timeout => lnvps::FaultKind::Hang,
            Case::MalformedJson => lnvps::FaultKind::MalformedJson,
            Case::Truncated => lnvps::FaultKind::TruncatedBody,
            Case::WrongContentType => lnvps::FaultKind::WrongContentType,
            Case::Unauthorized => lnvps::FaultKind::Unauthorized,
            Case::Refused | Case::Skew(_) => return None,
        })
    }
}

const COMMON_CASES: &[Case] = &[
    Case::Status(500),
    Case::Status(502),
    Case::Status(503),
    Case::RateLimited,
    Case::Timeout,
    Case::Refused,
    Case::MalformedJson,
    Case::Truncated,
    Case::WrongContentType,
    Case::Unauthorized,
    Case::Status(403),
];

/// The simulator of the provider under test.
enum Sim {
    Lnvps(LnvpsSimHandle, u64),
    Stable(StableVpsSimHandle, String),
}

impl Sim {
    fn provider(&self) -> &'static str {
        match self {
            Sim::Lnvps(..) => "lnvps",
            Sim::Stable(..) => "stablevps",
        }
    }

    fn vm(&self) -> String {
        match self {
            Sim::Lnvps(_, id) => id.to_string(),
            Sim::Stable(_, id) => id.clone(),
        }
    }

    fn list_endpoint(&self) -> &'static str {
        match self {
            Sim::Lnvps(..) => "GET /api/v1/vm",
            Sim::Stable(..) => "GET /api/v1/vps",
        }
    }

    fn hang(&self, hung: bool) {
        match self {
            Sim::Lnvps(s, id) => s.update_vm(*id, |v| v.hung = hung),
            Sim::Stable(s, id) => s.update_vps(id, |v| v.hang = hung),
        }
    }

    fn power_actions(&self) -> usize {
        match self {
            Sim::Lnvps(s, _) => s.actions().len(),
            Sim::Stable(s, _) => s.actions().len(),
        }
    }

    async fn apply(&self, case: Case, proxy: &Proxy) {
        match (self, case) {
            (_, Case::Refused) => proxy.refuse().await,
            (Sim::Lnvps(s, _), Case::Skew(secs)) => s.set_clock_skew(secs),
            (Sim::Stable(..), Case::Skew(_)) => unreachable!("NIP-98 only"),
            (Sim::Lnvps(s, _), c) => {
                if let Some(kind) = c.kind() {
                    s.inject_fault(lnvps::Fault::new(lnvps::EndpointMatch::Any, kind));
                }
            }
            (Sim::Stable(s, _), c) => {
                if let Some(kind) = c.kind() {
                    s.inject_fault(stablevps::Fault::new(stablevps::EndpointMatch::Any, kind));
                }
            }
        }
    }

    async fn clear(&self, case: Case, proxy: &Proxy) {
        match (self, case) {
            (_, Case::Refused) => proxy.resume().await,
            (Sim::Lnvps(s, _), _) => {
                s.set_clock_skew(0);
                s.clear_faults();
            }
            (Sim::Stable(s, _), _) => s.clear_faults(),
        }
    }
}

struct Matrix {
    sim: Sim,
    proxy: Arc<Proxy>,
    daemon: Daemon,
    http: reqwest::Client,
    _state: tempfile::TempDir,
}

fn config_text(provider: &str, base_url: &str, probe_port: u16, state_dir: &str) -> String {
    let credentials = match provider {
        "lnvps" => "nsec_env = \"TEST_NSEC\"",
        _ => "api_key_env = \"SVPS_FULL\"",
    };
    format!(
        r#"poll_interval = "200ms"
request_timeout = "300ms"
state_dir = {state_dir:?}

[web]
listen_address = "127.0.0.1:0"

[providers.{provider}]
max_attempts = 2

[probes]
interval = "100ms"
timeout = "200ms"
[probes.ports]
{provider} = {probe_port}

[[accounts]]
name = "acct"
provider = "{provider}"
base_url = "{base_url}"
{credentials}

[[rules]]
name = "{RULE}"
condition = "probe_failing"
for = "200ms"
failures = 2
recoveries = 1
action = "reboot"
cooldown = "1s"
max_actions = 1000
window = "1h"
patience = "5s"
"#
    )
}

impl Matrix {
    async fn start(provider: &str, subnet: u8) -> Matrix {
        vpswatch::tls::install_crypto_provider();
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let port = free_port();
        let ip = Ipv4Addr::new(127, 6, subnet, 1);
        let keys = nostr::Keys::generate();
        let (sim, upstream) = match provider {
            "lnvps" => {
                let owner = keys.public_key().to_hex();
                let mut s = lnvps::Scenario {
                    vms: vec![lnvps::VmSpec {
                        owner,
                        state: lnvps::VmState::Running,
                        ipv4: Some(ip),
                        ..lnvps::VmSpec::default()
                    }],
                    ..lnvps::Scenario::default()
                };
                s.settings.vm_listen_port = Some(port);
                let h = LnvpsSim::start(listen, s, Arc::new(SystemClock))
                    .await
                    .expect("LNVPS simulator");
                let addr = h.addr();
                (Sim::Lnvps(h, 1), addr)
            }
            _ => {
                let s = StableScenario {
                    accounts: vec![AccountSpec {
                        keys: vec![KeySpec {
                            key: SVPS_FULL.into(),
                            name: None,
                            scope: KeyScope::Full,
                            expires_at: None,
                        }],
                        ..AccountSpec::default()
                    }],
                    vps: vec![VpsSpec {
                        ip_address: Some(ip),
                        rdp_port: Some(port),
                        listen_rdp: true,
                        ..VpsSpec::default()
                    }],
                    ..StableScenario::default()
                };
                let h = StableVpsSim::start(listen, s, Arc::new(SystemClock))
                    .await
                    .expect("StableVPS simulator");
                let id = h.vpses()[0].id.clone();
                let addr = h.addr();
                (Sim::Stable(h, id), addr)
            }
        };
        let proxy = Proxy::start(upstream).await;
        let state = tempfile::tempdir().expect("tempdir");
        let text = config_text(
            provider,
            &format!("http://{}", proxy.addr),
            port,
            &state.path().display().to_string(),
        );
        let nsec = keys.secret_key().to_secret_hex();
        let config = vpswatch::config::parse(&text, "fault-matrix", &|n| match n {
            "TEST_NSEC" => Some(nsec.clone()),
            "SVPS_FULL" => Some(SVPS_FULL.to_string()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let daemon = Daemon::start(config, Arc::new(SystemClock))
            .await
            .expect("daemon");
        Matrix {
            sim,
            proxy,
            daemon,
            http: reqwest::Client::new(),
            _state: state,
        }
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Exposition) -> bool) -> Exposition {
        wait_metrics_at(&self.http, self.daemon.addr, what, T, pred).await
    }

    fn up(e: &Exposition) -> Option<f64> {
        e.get("vpswatch_provider_up", &[("account", "acct")])
    }

    fn last_ok(e: &Exposition) -> f64 {
        e.get(
            "vpswatch_provider_last_success_timestamp_seconds",
            &[("account", "acct")],
        )
        .unwrap_or(0.0)
    }

    fn counted(&self, e: &Exposition, code: &str) -> f64 {
        e.get(
            "vpswatch_provider_requests_total",
            &[
                ("account", "acct"),
                ("endpoint", self.sim.list_endpoint()),
                ("code", code),
            ],
        )
        .unwrap_or(0.0)
    }

    fn probe_ok(&self, e: &Exposition) -> Option<f64> {
        e.get("vps_probe_success", &[("vm", &self.sim.vm())])
    }

    /// Waits until the watchdog has evaluated at a time after `t` (Unix seconds).
    async fn evaluated_after(&self, t: f64) -> Exposition {
        self.wait("a later watchdog evaluation", |e| {
            e.get("vpswatch_watchdog_last_evaluation_timestamp_seconds", &[])
                .is_some_and(|x| x > t)
        })
        .await
    }

    /// The positive control: without a fault, a hung VM is rebooted.
    async fn control(&self) {
        let vm = self.sim.vm();
        self.wait("first poll and probe", |e| {
            Self::up(e) == Some(1.0) && self.probe_ok(e) == Some(1.0)
        })
        .await;
        let before = self.sim.power_actions();
        self.sim.hang(true);
        wait_for("the hung VM is rebooted (control)", T, || async {
            self.sim.power_actions() > before
        })
        .await;
        // The reboot fixes the hang in the simulator; wait until it answers again and
        // the rule has resolved.
        self.wait("the VM answers again after the control reboot", |e| {
            self.probe_ok(e) == Some(1.0)
                && e.get("vpswatch_rule_firing", &[("rule", RULE), ("vm", &vm)]) == Some(0.0)
        })
        .await;
    }

    /// Plays one case; returns the printed row.
    async fn case(&self, case: Case) -> String {
        let vm = self.sim.vm();
        let started = Instant::now();
        let code = case.code();
        let before = self
            .wait("healthy before the case", |e| {
                Self::up(e) == Some(1.0) && self.probe_ok(e) == Some(1.0)
            })
            .await;
        let counted_before = self.counted(&before, code);
        let actions_before = self.sim.power_actions();

        self.sim.apply(case, &self.proxy).await;
        let down = self
            .wait(
                &format!("{case:?}: provider down, counted as {code}"),
                |e| Self::up(e) == Some(0.0) && self.counted(e, code) > counted_before,
            )
            .await;
        let last_ok = Self::last_ok(&down);
        assert!(last_ok > 0.0, "{case:?}");

        // A VM hangs during the fault: the rule cannot judge it, so it must not act.
        self.sim.hang(true);
        self.wait(&format!("{case:?}: the probe sees the hang"), |e| {
            self.probe_ok(e) == Some(0.0)
                && e.get("vpswatch_rule_unknown", &[("rule", RULE), ("vm", &vm)]) == Some(1.0)
        })
        .await;
        // Long past `for` + failures + cooldown of the rule: a known failure would have
        // been acted on by now.
        let hung_at = vpswatch_model::clock::unix_seconds(chrono::Utc::now());
        let exp = self.evaluated_after(hung_at + 1.5).await;
        assert_eq!(
            self.sim.power_actions(),
            actions_before,
            "{case:?}: a power action reached the provider during the fault"
        );
        assert_eq!(Self::up(&exp), Some(0.0), "{case:?}");
        assert_eq!(
            Self::last_ok(&exp),
            last_ok,
            "{case:?}: the last success time moved"
        );
        assert_eq!(
            exp.get(
                "vpswatch_rule_firing",
                &[("rule", RULE), ("vm", vm.as_str())]
            ),
            Some(0.0),
            "{case:?}"
        );
        // Last good data stays exported, as it was.
        assert_eq!(
            exp.get("vps_up", &[("vm", vm.as_str())]),
            Some(1.0),
            "{case:?}"
        );
        assert!(exp.has("vps_info", &[("vm", vm.as_str())]), "{case:?}");
        let stale_for = vpswatch_model::clock::unix_seconds(chrono::Utc::now()) - last_ok;
        assert!(stale_for >= 1.0, "{case:?}: staleness not visible");

        // Recovery: the VM is fixed by hand, then the API comes back.
        self.sim.hang(false);
        self.wait(&format!("{case:?}: the VM answers again"), |e| {
            self.probe_ok(e) == Some(1.0)
        })
        .await;
        self.sim.clear(case, &self.proxy).await;
        let back = self
            .wait(&format!("{case:?}: recovery"), |e| {
                Self::up(e) == Some(1.0) && Self::last_ok(e) > last_ok
            })
            .await;
        assert_eq!(
            self.sim.power_actions(),
            actions_before,
            "{case:?}: a power action after recovery"
        );
        assert_eq!(back.get("vps_up", &[("vm", vm.as_str())]), Some(1.0));
        format!(
            "| {:<9} | {:<29} | {:<16} | {:<3} | {:<20} | {:<7} | {:>5.1} s |",
            self.sim.provider(),
            case.name(),
            code,
            "0",
            format!("kept ({stale_for:.1} s old)"),
            "0",
            started.elapsed().as_secs_f64()
        )
    }

    async fn shutdown(self) {
        drop(self.http);
        self.daemon.shutdown().await;
        self.proxy.refuse().await;
        match self.sim {
            Sim::Lnvps(s, _) => s.shutdown(),
            Sim::Stable(s, _) => s.shutdown(),
        }
    }
}

async fn run(provider: &str, subnet: u8, cases: &[Case]) {
    let m = Matrix::start(provider, subnet).await;
    m.control().await;
    let mut rows = vec![
        "| provider  | fault                         | counted as       | up  | last good data       | actions | time    |".to_string(),
        "|-----------|-------------------------------|------------------|-----|----------------------|---------|---------|".to_string(),
    ];
    for case in cases {
        rows.push(m.case(*case).await);
    }
    m.shutdown().await;
    println!("\nfault matrix ({provider}):\n{}\n", rows.join("\n"));
}

#[tokio::test]
async fn lnvps_fault_matrix() {
    let mut cases = COMMON_CASES.to_vec();
    cases.extend([Case::Skew(90), Case::Skew(-90)]);
    run("lnvps", 1, &cases).await;
}

#[tokio::test]
async fn stablevps_fault_matrix() {
    run("stablevps", 2, COMMON_CASES).await;
}
