//! `vpswatch demo`: the simulator's demo world plus a daemon against it, so a new user
//! sees real metrics, watchdog actions and (with `--smtp HOST:PORT`) alert mails at once,
//! without any account or configuration. What the world holds is described in
//! `vpswatch_sim::demo`.
//!
//! This module belongs to the binary, not to the daemon library: the library never
//! depends on the simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use vpswatch::daemon::Daemon;
use vpswatch_model::clock::{SharedClock, SystemClock};
use vpswatch_sim::demo::DemoWorld;

/// The demo's parts.
pub struct Demo {
    pub world: DemoWorld,
    pub daemon: Daemon,
    /// The journal and outbox live here for the demo's lifetime only.
    pub state_dir: tempfile::TempDir,
    /// The file holding the webhook's throw-away bearer token (in `state_dir`).
    pub webhook_token: PathBuf,
}

impl Demo {
    /// Stops everything and removes the state directory.
    pub async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.world.shutdown().await;
        drop(self.state_dir);
    }
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
    if !vpswatch::notify::email::settings::is_loopback(&host) {
        anyhow::bail!(
            "--smtp {arg:?}: the demo sends unencrypted mail, so only a loopback server \
             (127.0.0.1, ::1, localhost) is allowed"
        );
    }
    Ok((host, port))
}

/// Starts the demo world and a daemon against it, mailing alerts to `smtp` (`HOST:PORT`)
/// if given and serving with a web config file (TLS, auth, headers) if given.
pub async fn start(
    listen: SocketAddr,
    clock: SharedClock,
    smtp: Option<&str>,
    web_config_file: Option<PathBuf>,
) -> anyhow::Result<Demo> {
    let smtp = smtp.map(parse_smtp).transpose()?;
    vpswatch::tls::install_crypto_provider();
    let world = DemoWorld::start(clock.clone()).await?;
    // A fresh journal and outbox per run: the demo's history is not worth keeping.
    let state_dir = tempfile::Builder::new()
        .prefix("vpswatch-demo-")
        .tempdir()
        .context("creating the demo's state directory")?;
    let mut text = world.config_toml(listen, &state_dir.path().display().to_string());
    if let Some((host, port)) = &smtp {
        text.push_str(&vpswatch_sim::demo::email_toml(host, *port));
    }
    let webhook_token = state_dir.path().join("alertmanager.token");
    write_token(&webhook_token)?;
    text.push_str(&webhook_toml(&webhook_token));
    let mut config = vpswatch::config::parse(&text, "<demo>", &|name| world.env(name))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.web.config_file = web_config_file;
    let daemon = Daemon::start(config, clock).await?;
    world.spawn_hangs(daemon.cancel_token());
    Ok(Demo {
        world,
        daemon,
        state_dir,
        webhook_token,
    })
}

/// A fresh random token, readable by the owner only.
fn write_token(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = hex::encode(rand::random::<[u8; 24]>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The demo's webhook: `VpsUnhealthy` for a VM restarts it, through every guard.
fn webhook_toml(token: &std::path::Path) -> String {
    format!(
        r#"
[alertmanager]
bearer_token_file = {:?}

[[alertmanager.actions]]
name = "alertmanager-unhealthy"
alertname = "VpsUnhealthy"
action = "restart"
cooldown = "1m"
patience = "2m"
"#,
        token.display().to_string()
    )
}

/// Runs the demo until Ctrl-C.
pub async fn run(
    listen: SocketAddr,
    smtp: Option<&str>,
    web_config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let demo = start(listen, Arc::new(SystemClock), smtp, web_config_file).await?;
    let addr = demo.daemon.addr;
    let scheme = demo.daemon.web_config.load().scheme();
    // A closed stdout (piped into `head`, a test that stopped reading) must not kill the
    // demo, so write without println!'s panic.
    let banner = format!(
        "vpswatch demo is running.\n  status page:             {scheme}://{addr}/\n  \
         simulated LNVPS API:     {}\n  simulated StableVPS API: {}\n  \
         metrics:                 {scheme}://{addr}/metrics\n  readiness:               \
         {scheme}://{addr}/-/ready\n  watchdog journal:        {scheme}://{addr}/api/v1/actions\n  \
         alertmanager webhook: {scheme}://{addr}/api/v1/alertmanager (bearer token in {})\n  \
         Lightning renewal:       VM 6 renews itself through NWC about a minute after start\n\
         {}Press Ctrl-C to stop.\n",
        demo.world.sim.base_url(),
        demo.world.stablevps.base_url(),
        demo.webhook_token.display(),
        match smtp {
            Some(s) => format!("  alert mail:              smtp://{s}\n"),
            None =>
                "  alerts:                  logged (add --smtp HOST:PORT to mail them)\n".into(),
        }
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    vpswatch::signal::wait_for_signal().await;
    tracing::info!("shutting down");
    demo.shutdown().await;
    Ok(())
}
