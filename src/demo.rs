//! `vpswatch demo`: both simulators with lively scenarios plus the daemon against them,
//! so a new user sees real metrics, watchdog actions and (with `--smtp HOST:PORT`) alert
//! mails at once, without any account or configuration.
//!
//! LNVPS: running VMs with changing usage, one stopped, one expiring, one being created,
//! and one that hangs now and then for the watchdog to heal.
//! Lightning renewal: VM 6 (a daily BTC plan, eight days left) enters its renewal window
//! a minute after start and renews itself through a Nostr Wallet Connect wallet (the
//! simulator's NIP-47 wallet service on an in-process relay). It is a VM of its own so
//! the other VMs' expiry alerts stay as the scenario sets them.
//! StableVPS: a read key for polling and a full key for actions, one VPS provisioning,
//! active ones, and a wallet that pays the renewal due after one minute but not the one
//! after three (the runway counts down to it, then that VPS is suspended).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::daemon::Daemon;
use crate::sim::lnvps::{LnvpsSim, LnvpsSimHandle, RelTime, Scenario, VmSpec, VmState};
use crate::sim::nwc_wallet::NwcWalletService;
use crate::sim::scenario::TemplateSpec;
use crate::sim::stablevps::{
    StableScenario, StableVpsSim, StableVpsSimHandle, DEMO_FULL_KEY, DEMO_READ_KEY,
};

/// The demo's parts, for tests that want to drive it.
pub struct Demo {
    pub sim: LnvpsSimHandle,
    pub stablevps: StableVpsSimHandle,
    pub daemon: Daemon,
    /// The NWC wallet the renewal pays with (on its own loopback relay).
    pub wallet: NwcWalletService,
    /// The journal and outbox live here for the demo's lifetime only.
    pub state_dir: tempfile::TempDir,
}

impl Demo {
    /// Stops everything and removes the state directory.
    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.wallet.shutdown().await;
        self.sim.shutdown();
        self.stablevps.shutdown_and_wait().await;
        drop(self.state_dir);
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

/// The demo VM that hangs (its port stops answering while LNVPS still says running)
/// shortly after start and again every few minutes, for the watchdog to heal.
pub const DEMO_HANGING_VM: u64 = 1;
/// When the first hang happens, then how often it recurs.
pub const DEMO_FIRST_HANG: Duration = Duration::from_secs(10);
pub const DEMO_HANG_EVERY: Duration = Duration::from_secs(300);

/// Port the demo's simulated VMs listen on (their "SSH").
pub const DEMO_VM_PORT: u16 = 2222;

/// Port the demo's simulated StableVPS machines listen on: RDP, the StableVPS default
/// probe port, on their own 127.2.x.y addresses.
pub const DEMO_RDP_PORT: u16 = 3389;

/// Environment variables the demo passes its simulator keys in (as a real deployment
/// would; the demo sets them for itself, not in the process environment).
const NSEC_VAR: &str = "VPSWATCH_DEMO_NSEC";
const STABLEVPS_READ_VAR: &str = "VPSWATCH_DEMO_STABLEVPS_READ_KEY";
const STABLEVPS_WRITE_VAR: &str = "VPSWATCH_DEMO_STABLEVPS_KEY";
const NWC_VAR: &str = "VPSWATCH_DEMO_NWC_URI";

/// The demo VM that renews itself through NWC (a daily BTC plan expiring in eight days,
/// added after the scenario's five; the rule's window opens a minute after start).
pub const DEMO_RENEWING_VM: u64 = 6;
/// When the renewing VM expires at start, and the rule's window (a minute shorter).
const DEMO_RENEWING_EXPIRES: i64 = 8 * 86_400;
const DEMO_RENEW_WITHIN: &str = "7d 23h 59m";
/// The demo wallet's starting balance.
pub const DEMO_WALLET_MSAT: u64 = 100_000_000;

/// The configuration the demo runs with (also a readable example).
pub fn demo_config_toml(
    sim_url: &str,
    stablevps_url: &str,
    listen: SocketAddr,
    state_dir: &str,
) -> String {
    format!(
        r#"poll_interval = "5s"
request_timeout = "5s"
state_dir = "{state_dir}"

# The simulated VMs listen on their own loopback addresses at these ports.
[probes]
interval = "5s"
timeout = "1s"
ports = {{ lnvps = {DEMO_VM_PORT}, stablevps = {DEMO_RDP_PORT} }}

[web]
listen_address = "{listen}"

[[accounts]]
name = "demo"
provider = "lnvps"
base_url = "{sim_url}"
nsec_env = "{NSEC_VAR}"

# Least privilege: a read-scope key polls, a full-scope key is used only for actions.
[[accounts]]
name = "demo-stablevps"
provider = "stablevps"
base_url = "{stablevps_url}"
api_key_env = "{STABLEVPS_READ_VAR}"
write_api_key_env = "{STABLEVPS_WRITE_VAR}"

# A VM whose SSH port stops answering while the provider says "running" is hung:
# reboot it, then power-cycle it, then give up and tell a human.
[[rules]]
name = "ssh-unreachable"
condition = "probe_failing"
for = "5s"
failures = 2
recoveries = 2
action = "reboot"
escalate = ["stop_start"]
cooldown = "1m"
max_actions = 3
window = "1h"
patience = "1m"

# A stopped VM is only reported: its owner may have stopped it on purpose.
[[rules]]
name = "vm-stopped"
condition = "vm_not_running"
for = "10s"
failures = 2

[[rules]]
name = "provider-down"
condition = "provider_unreachable"
failures = 1

[[rules]]
name = "cpu-high"
condition = "cpu_above"
threshold = 0.9
for = "5m"

# Lightning renewal: pay VM {DEMO_RENEWING_VM}'s renewal from a Nostr Wallet Connect wallet
# when it expires within the window (the demo's VM enters it a minute after start). The
# account has no saved payment method, so LNVPS's own auto-renewal cannot pay first.
[[rules]]
name = "renew-lightning"
condition = "expires_within"
within = "{DEMO_RENEW_WITHIN}"
action = "renew"
[rules.match]
vms = ["{DEMO_RENEWING_VM}"]
[rules.renew]
mode = "nwc"
intervals = 1
nwc_uri_env = "{NWC_VAR}"
max_per_renewal_sats = 2000
max_per_month_sats = 20000
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
    start_full(listen, clock, smtp, None).await
}

/// Like [`start_with_smtp`], serving with a web config file (TLS, auth, headers).
pub async fn start_full(
    listen: SocketAddr,
    clock: SharedClock,
    smtp: Option<&str>,
    web_config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Demo> {
    let smtp = smtp.map(parse_smtp).transpose()?;
    crate::daemon::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let mut scenario = Scenario::load("demo", Some(&owner)).context("loading the demo scenario")?;
    scenario.settings.vm_listen_port = Some(DEMO_VM_PORT);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let sim = LnvpsSim::start(loopback, scenario, clock.clone())
        .await
        .context("starting the LNVPS simulator")?;
    let mut stable = StableScenario::demo();
    stable.rdp_port = DEMO_RDP_PORT;
    let stablevps = StableVpsSim::start(loopback, stable, clock.clone())
        .await
        .context("starting the StableVPS simulator")?;
    // The VM that renews itself, beside the scenario's VMs.
    let renewing = sim.add_vm(
        &owner,
        VmSpec {
            owner: owner.clone(),
            state: VmState::Running,
            expires: Some(RelTime::Offset(DEMO_RENEWING_EXPIRES)),
            age: Duration::from_secs(90 * 86_400),
            template: TemplateSpec::named("Daily BTC"),
            ..VmSpec::default()
        },
    );
    if renewing != DEMO_RENEWING_VM {
        anyhow::bail!("the demo's renewing VM got id {renewing}, not {DEMO_RENEWING_VM}");
    }
    let wallet = NwcWalletService::start(sim.clone(), loopback, DEMO_WALLET_MSAT)
        .await
        .context("starting the demo's NWC wallet service")?;
    let nwc_uri = crate::secret::Secret::new(wallet.uri());
    let secret = keys.secret_key().to_secret_hex();
    // A fresh journal and outbox per run: the demo's history is not worth keeping.
    let state_dir = tempfile::Builder::new()
        .prefix("vpswatch-demo-")
        .tempdir()
        .context("creating the demo's state directory")?;
    let mut text = demo_config_toml(
        &sim.base_url(),
        &stablevps.base_url(),
        listen,
        &state_dir.path().display().to_string(),
    );
    if let Some((host, port)) = &smtp {
        text.push_str(&demo_email_toml(host, *port));
    }
    let config = crate::config::parse(&text, "<demo>", &|name| match name {
        NSEC_VAR => Some(secret.clone()),
        STABLEVPS_READ_VAR => Some(DEMO_READ_KEY.to_string()),
        STABLEVPS_WRITE_VAR => Some(DEMO_FULL_KEY.to_string()),
        NWC_VAR => Some(nwc_uri.expose().clone()),
        _ => None,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = config;
    config.web.config_file = web_config_file;
    let daemon = Daemon::start(config, clock).await?;
    spawn_hangs(sim.clone(), daemon.cancel_token());
    Ok(Demo {
        sim,
        stablevps,
        daemon,
        wallet,
        state_dir,
    })
}

/// Hangs the demo's first VM now and then; the watchdog's reboot clears it.
fn spawn_hangs(sim: LnvpsSimHandle, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut wait = DEMO_FIRST_HANG;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            tracing::info!(
                vm = DEMO_HANGING_VM,
                "demo: the VM hangs (its SSH port stops answering)"
            );
            sim.update_vm(DEMO_HANGING_VM, |v| v.hung = true);
            wait = DEMO_HANG_EVERY;
        }
    });
}

/// Runs the demo until Ctrl-C.
pub async fn run(
    listen: SocketAddr,
    smtp: Option<&str>,
    web_config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let demo = start_full(listen, Arc::new(SystemClock), smtp, web_config_file).await?;
    let addr = demo.daemon.addr;
    let scheme = demo.daemon.web_config.load().scheme();
    // A closed stdout (piped into `head`, a test that stopped reading) must not kill the
    // demo, so write without println!'s panic.
    let banner = format!(
        "vpswatch demo is running.\n  simulated LNVPS API:     {}\n  simulated StableVPS API: {}\n  \
         metrics:                 {scheme}://{addr}/metrics\n  readiness:               \
         {scheme}://{addr}/-/ready\n  watchdog journal:        {scheme}://{addr}/api/v1/actions\n  \
         Lightning renewal:       VM 6 renews itself through NWC about a minute after start\n\
         {}Press Ctrl-C to stop.\n",
        demo.sim.base_url(),
        demo.stablevps.base_url(),
        match smtp {
            Some(s) => format!("  alert mail:              smtp://{s}\n"),
            None => "  alerts:                  logged (add --smtp HOST:PORT to mail them)\n".into(),
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
