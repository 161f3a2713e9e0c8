//! `vpswatch demo`: the simulator with a lively scenario plus the daemon against it, so a
//! new user sees real metrics at once without any account or configuration.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::clock::{SharedClock, SystemClock};
use crate::daemon::Daemon;
use crate::sim::lnvps::{LnvpsSim, LnvpsSimHandle, Scenario};

/// The demo's parts, for tests that want to drive it.
pub struct Demo {
    pub sim: LnvpsSimHandle,
    pub daemon: Daemon,
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
    let text = demo_config_toml(&sim.base_url(), listen);
    let config = crate::config::parse(&text, "<demo>", &|name| {
        (name == "VPSWATCH_DEMO_NSEC").then(|| secret.clone())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let daemon = Daemon::start(config, clock).await?;
    Ok(Demo { sim, daemon })
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let demo = start(listen, Arc::new(SystemClock)).await?;
    let addr = demo.daemon.addr;
    // A closed stdout (piped into `head`, a test that stopped reading) must not kill the
    // demo, so write without println!'s panic.
    let banner = format!(
        "vpswatch demo is running.\n  simulated LNVPS API: {}\n  metrics:             \
         http://{addr}/metrics\n  readiness:           http://{addr}/-/ready\n\
         Press Ctrl-C to stop.\n",
        demo.sim.base_url()
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    demo.daemon.run_until_signal().await;
    demo.sim.shutdown();
    Ok(())
}
