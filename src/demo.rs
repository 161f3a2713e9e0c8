//! `vpswatch demo`: the simulator with a lively scenario plus the daemon against it, so a
//! new user sees real metrics at once without any account or configuration, and with
//! `--smtp HOST:PORT` the alert mails too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::daemon::Daemon;
use crate::notify::{AlertKey, AlertStatus, AlertUpdate, Facts, Notify};
use crate::sim::lnvps::{LnvpsSim, LnvpsSimHandle, Scenario};
use crate::snapshot::SnapshotStore;

/// The demo's parts, for tests that want to drive it.
pub struct Demo {
    pub sim: LnvpsSimHandle,
    pub daemon: Daemon,
    /// The throw-away state directory when mailing (removed by [`Demo::shutdown`]).
    pub state_dir: Option<PathBuf>,
}

impl Demo {
    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.sim.shutdown();
        if let Some(dir) = self.state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The `[email]` section of the demo: plain SMTP to a local test server.
pub fn demo_email_toml(host: &str, port: u16) -> String {
    format!(
        r#"
[email]
smtp_host = "{host}"
smtp_port = {port}
security = "none"            # a local test server; real servers need starttls or tls
allow_insecure = true
from = "vpswatch demo <vpswatch-demo@localhost>"
to = ["operator@localhost"]
repeat_interval = "10m"
"#
    )
}

/// Splits `HOST:PORT` and insists on loopback: the demo mails unencrypted.
fn parse_smtp(arg: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = arg
        .rsplit_once(':')
        .with_context(|| format!("--smtp {arg:?}: expected HOST:PORT, e.g. 127.0.0.1:2525"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--smtp {arg:?}: {port:?} is not a port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !crate::notify::email::settings::is_loopback(&host) {
        anyhow::bail!(
            "--smtp {arg:?}: the demo sends unencrypted mail, so only a loopback server \
             (127.0.0.1, ::1, localhost) is allowed"
        );
    }
    Ok((host, port))
}

/// Port the demo's simulated VMs listen on (their "SSH").
pub const DEMO_VM_PORT: u16 = 2222;

/// The configuration the demo runs with (also a readable example).
pub fn demo_config_toml(sim_url: &str, listen: SocketAddr) -> String {
    format!(
        r#"poll_interval = "5s"
request_timeout = "5s"

# The simulated VMs listen on their 127.1.0.x address at this port.
[probes]
interval = "5s"
timeout = "1s"
ports = {{ lnvps = {DEMO_VM_PORT} }}

[web]
listen_address = "{listen}"

[[accounts]]
name = "demo"
provider = "lnvps"
base_url = "{sim_url}"
nsec_env = "VPSWATCH_DEMO_NSEC"
"#
    )
}

/// Starts the simulator and the daemon.
pub async fn start(listen: SocketAddr, clock: SharedClock) -> anyhow::Result<Demo> {
    start_with_smtp(listen, clock, None).await
}

/// Starts the simulator and the daemon, mailing alerts to `smtp` (`HOST:PORT`) if given.
pub async fn start_with_smtp(
    listen: SocketAddr,
    clock: SharedClock,
    smtp: Option<&str>,
) -> anyhow::Result<Demo> {
    let smtp = smtp.map(parse_smtp).transpose()?;
    crate::daemon::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let mut scenario = Scenario::load("demo", Some(&owner)).context("loading the demo scenario")?;
    scenario.settings.vm_listen_port = Some(DEMO_VM_PORT);
    let sim = LnvpsSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        scenario,
        clock.clone(),
    )
    .await
    .context("starting the LNVPS simulator")?;
    let secret = keys.secret_key().to_secret_hex();
    let mut text = demo_config_toml(&sim.base_url(), listen);
    let mut state_dir = None;
    if let Some((host, port)) = &smtp {
        // A fresh outbox per run: the demo's mails are not worth keeping.
        let dir = std::env::temp_dir().join(format!(
            "vpswatch-demo-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        ));
        text = format!("state_dir = {:?}\n{text}", dir.display().to_string());
        text.push_str(&demo_email_toml(host, *port));
        state_dir = Some(dir);
    }
    let config = crate::config::parse(&text, "<demo>", &|name| {
        (name == "VPSWATCH_DEMO_NSEC").then(|| secret.clone())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let daemon = Daemon::start(config, clock.clone()).await?;
    let cancel = daemon.cancel_token();
    tokio::spawn(demo_alerts(
        daemon.store.clone(),
        daemon.notifier.clone(),
        clock,
        cancel,
    ));
    Ok(Demo {
        sim,
        daemon,
        state_dir,
    })
}

/// Rule name of the demo's stand-in alert.
pub const DEMO_RULE: &str = "vm-not-running";

/// A stand-in for the watchdog until it is wired into the daemon: one alert per VM the
/// provider reports stopped (firing) and back to running (resolved), sent through the
/// daemon's notifier so `--smtp` shows real mail. The watchdog replaces this.
async fn demo_alerts(
    store: Arc<SnapshotStore>,
    notify: Arc<dyn Notify>,
    clock: SharedClock,
    cancel: CancellationToken,
) {
    let mut changes = store.subscribe();
    let mut firing: BTreeMap<AlertKey, Facts> = BTreeMap::new();
    loop {
        let mut now_firing = BTreeMap::new();
        for snap in store.all() {
            let Some(data) = &snap.data else { continue };
            for vm in &data.vms {
                if vm.state == crate::provider::VmState::Stopped {
                    let key = AlertKey {
                        rule: DEMO_RULE.into(),
                        provider: snap.provider,
                        account: snap.account.clone(),
                        vm: vm.id.clone(),
                    };
                    let facts = Facts {
                        vm_name: vm.name.clone(),
                        summary: format!("{} is {}", vm.name, vm.state.label()),
                        details: vec![("state".into(), vm.state.label().into())],
                        next_step: "none: the demo only reports".into(),
                        journal_id: None,
                    };
                    now_firing.insert(key, facts);
                }
            }
        }
        let at = clock.now();
        for (key, facts) in &now_firing {
            if !firing.contains_key(key) {
                notify.alert(AlertUpdate {
                    key: key.clone(),
                    status: AlertStatus::Firing,
                    facts: facts.clone(),
                    at,
                });
            }
        }
        for (key, facts) in &firing {
            if !now_firing.contains_key(key) {
                let mut facts = facts.clone();
                facts.summary = format!("{} is running again", facts.vm_name);
                facts.details = vec![("state".into(), "running".into())];
                notify.alert(AlertUpdate {
                    key: key.clone(),
                    status: AlertStatus::Resolved,
                    facts,
                    at,
                });
            }
        }
        firing = now_firing;
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr, smtp: Option<&str>) -> anyhow::Result<()> {
    let demo = start_with_smtp(listen, Arc::new(SystemClock), smtp).await?;
    let addr = demo.daemon.addr;
    // A closed stdout (piped into `head`, a test that stopped reading) must not kill the
    // demo, so write without println!'s panic.
    let banner = format!(
        "vpswatch demo is running.\n  simulated LNVPS API: {}\n  metrics:             \
         http://{addr}/metrics\n  readiness:           http://{addr}/-/ready\n\
         {}Press Ctrl-C to stop.\n",
        demo.sim.base_url(),
        match smtp {
            Some(s) => format!("  alert mail:          smtp://{s}\n"),
            None => "  alerts:              logged (add --smtp HOST:PORT to mail them)\n".into(),
        }
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    crate::signal::wait_for_signal().await;
    tracing::info!("shutting down");
    demo.shutdown().await;
    Ok(())
}
