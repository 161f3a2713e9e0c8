//! `vpswatch demo`: both simulators with lively scenarios plus the daemon against them,
//! so a new user sees real metrics at once without any account or configuration.
//!
//! LNVPS: running VMs with changing usage, one stopped, one expiring, one being created.
//! StableVPS: a read key for polling and a full key for actions, one VPS provisioning,
//! active ones, and a wallet that pays the renewal due after one minute but not the one
//! after three (the runway counts down to it, then that VPS is suspended).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::clock::{SharedClock, SystemClock};
use crate::daemon::Daemon;
use crate::sim::lnvps::{LnvpsSim, LnvpsSimHandle, Scenario};
use crate::sim::stablevps::{
    StableScenario, StableVpsSim, StableVpsSimHandle, DEMO_FULL_KEY, DEMO_READ_KEY,
};

/// The demo's parts, for tests that want to drive it.
pub struct Demo {
    pub sim: LnvpsSimHandle,
    pub stablevps: StableVpsSimHandle,
    pub daemon: Daemon,
}

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

/// The configuration the demo runs with (also a readable example).
pub fn demo_config_toml(sim_url: &str, stablevps_url: &str, listen: SocketAddr) -> String {
    format!(
        r#"poll_interval = "5s"
request_timeout = "5s"

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
"#
    )
}

/// Starts the simulators and the daemon.
pub async fn start(listen: SocketAddr, clock: SharedClock) -> anyhow::Result<Demo> {
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
    let secret = keys.secret_key().to_secret_hex();
    let text = demo_config_toml(&sim.base_url(), &stablevps.base_url(), listen);
    let config = crate::config::parse(&text, "<demo>", &|name| match name {
        NSEC_VAR => Some(secret.clone()),
        STABLEVPS_READ_VAR => Some(DEMO_READ_KEY.to_string()),
        STABLEVPS_WRITE_VAR => Some(DEMO_FULL_KEY.to_string()),
        _ => None,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let daemon = Daemon::start(config, clock).await?;
    Ok(Demo {
        sim,
        stablevps,
        daemon,
    })
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let demo = start(listen, Arc::new(SystemClock)).await?;
    let addr = demo.daemon.addr;
    // A closed stdout (piped into `head`, a test that stopped reading) must not kill the
    // demo, so write without println!'s panic.
    let banner = format!(
        "vpswatch demo is running.\n  simulated LNVPS API:     {}\n  simulated StableVPS API: {}\n  \
         metrics:                 http://{addr}/metrics\n  readiness:               \
         http://{addr}/-/ready\nPress Ctrl-C to stop.\n",
        demo.sim.base_url(),
        demo.stablevps.base_url(),
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    demo.daemon.run_until_signal().await;
    demo.sim.shutdown();
    demo.stablevps.shutdown_and_wait().await;
    Ok(())
}
