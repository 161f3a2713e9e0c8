//! The demo's world: both simulators with lively scenarios and an NWC wallet, plus the
//! daemon configuration that points at them. `vpswatch demo` starts this world and a
//! daemon with [`DemoWorld::config_toml`]; tests drive the same world in-process.
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
use std::time::Duration;

use crate::SimError;
use tokio_util::sync::CancellationToken;
use vpswatch_model::clock::SharedClock;

use crate::lnvps::{LnvpsSim, LnvpsSimHandle, RelTime, Scenario, VmSpec, VmState};
use crate::nwc_wallet::NwcWalletService;
use crate::scenario::TemplateSpec;
use crate::stablevps::{
    StableScenario, StableVpsSim, StableVpsSimHandle, DEMO_FULL_KEY, DEMO_READ_KEY,
};

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

/// Environment variables the demo's configuration names for its simulator keys (as a
/// real deployment would); [`DemoWorld::env`] answers them, the process environment is
/// never touched.
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

/// The running simulators of the demo and the secrets its configuration names.
pub struct DemoWorld {
    pub sim: LnvpsSimHandle,
    pub stablevps: StableVpsSimHandle,
    /// The NWC wallet the renewal pays with (on its own loopback relay).
    pub wallet: NwcWalletService,
    nsec_hex: String,
    nwc_uri: String,
}

impl DemoWorld {
    /// Starts both simulators and the wallet on loopback, on `clock`.
    pub async fn start(clock: SharedClock) -> Result<DemoWorld, SimError> {
        let keys = nostr::Keys::generate();
        let owner = keys.public_key().to_hex();
        let mut scenario = Scenario::load("demo", Some(&owner))
            .map_err(|e| e.context("loading the demo scenario"))?;
        scenario.settings.vm_listen_port = Some(DEMO_VM_PORT);
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let sim = LnvpsSim::start(loopback, scenario, clock.clone())
            .await
            .map_err(|e| e.context("starting the LNVPS simulator"))?;
        let mut stable = StableScenario::demo();
        stable.rdp_port = DEMO_RDP_PORT;
        let stablevps = StableVpsSim::start(loopback, stable, clock)
            .await
            .map_err(|e| e.context("starting the StableVPS simulator"))?;
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
            refuse!("the demo's renewing VM got id {renewing}, not {DEMO_RENEWING_VM}");
        }
        let wallet = NwcWalletService::start(sim.clone(), loopback, DEMO_WALLET_MSAT)
            .await
            .map_err(|e| e.context("starting the demo's NWC wallet service"))?;
        Ok(DemoWorld {
            nwc_uri: wallet.uri(),
            sim,
            stablevps,
            wallet,
            nsec_hex: keys.secret_key().to_secret_hex(),
        })
    }

    /// The daemon configuration for this world (also a readable example).
    pub fn config_toml(&self, listen: SocketAddr, state_dir: &str) -> String {
        config_toml(
            &self.sim.base_url(),
            &self.stablevps.base_url(),
            listen,
            state_dir,
        )
    }

    /// The value of an environment variable the configuration names, if it is the demo's.
    pub fn env(&self, name: &str) -> Option<String> {
        match name {
            NSEC_VAR => Some(self.nsec_hex.clone()),
            STABLEVPS_READ_VAR => Some(DEMO_READ_KEY.to_string()),
            STABLEVPS_WRITE_VAR => Some(DEMO_FULL_KEY.to_string()),
            NWC_VAR => Some(self.nwc_uri.clone()),
            _ => None,
        }
    }

    /// Hangs the demo's first VM now and then until `cancel`; the watchdog's reboot clears it.
    pub fn spawn_hangs(&self, cancel: CancellationToken) {
        let sim = self.sim.clone();
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

    /// Stops the wallet and both simulators.
    pub async fn shutdown(self) {
        self.wallet.shutdown().await;
        self.sim.shutdown();
        self.stablevps.shutdown_and_wait().await;
    }
}

/// The `[email]` section of the demo: plain SMTP to a local test server.
pub fn email_toml(host: &str, port: u16) -> String {
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

fn config_toml(sim_url: &str, stablevps_url: &str, listen: SocketAddr, state_dir: &str) -> String {
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
