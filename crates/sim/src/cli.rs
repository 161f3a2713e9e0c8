//! `vpswatch simulate`: one fake provider on the system clock, with what a person needs
//! to point a vpswatch at it printed on stdout.

use crate::SimError;
use std::net::SocketAddr;
use std::sync::Arc;

use vpswatch_model::clock::SystemClock;

use crate::lnvps::{LnvpsSim, Scenario};
use crate::nwc_wallet::NwcWalletService;
use crate::stablevps::{KeyScope, StableScenario, StableVpsSim};

/// Balance of the wallet `vpswatch simulate` starts (100 000 sats).
const SIM_WALLET_MSAT: u64 = 100_000_000;

/// Like `println!`, but a closed stdout (a reader that went away) is not a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// How many owners a `bench:AxN` scenario name has (0 for any other scenario).
fn bench_accounts(scenario: &str) -> usize {
    scenario
        .strip_prefix("bench:")
        .and_then(|spec| spec.split_once('x'))
        .and_then(|(a, _)| a.parse().ok())
        .unwrap_or(0)
}

/// `vpswatch simulate`: serves `scenario` on the system clock until `stop` resolves (the
/// command line passes Ctrl-C or SIGTERM). Without `owner_pubkey` a throwaway key is generated and its secret printed, so a
/// local vpswatch can be pointed at the simulator.
pub async fn serve_lnvps(
    listen: SocketAddr,
    scenario: &str,
    owner_pubkey: Option<String>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SimError> {
    let (owner, generated) = match owner_pubkey {
        Some(o) => (crate::scenario::normalize_pubkey(&o)?, None),
        None => {
            let keys = nostr::Keys::generate();
            (keys.public_key().to_hex(), Some(keys))
        }
    };
    let scenario_name = scenario;
    let scenario = Scenario::load(scenario, Some(&owner))?;
    let vms = scenario.vms.len();
    let sim = LnvpsSim::start(listen, scenario, Arc::new(SystemClock)).await?;
    outln!("LNVPS simulator listening on {}", sim.base_url());
    outln!("  VMs: {vms}, owner pubkey: {owner}");
    if let Some(keys) = generated {
        outln!(
            "  owner secret key (throwaway, generated for this run): {}",
            keys.secret_key().to_secret_hex()
        );
    }
    // `bench:AxN` owners have fixed public test keys: print them, so replicas or a
    // script can be configured with one account per owner.
    for i in 0..bench_accounts(scenario_name) {
        outln!(
            "  account {i} secret key (public bench key): {}",
            crate::scenario::bench_account_secret(i)
        );
    }
    outln!("  control API: {}/_sim/", sim.base_url());
    // A NIP-47 wallet that pays this simulator's invoices, for `[rules.renew]` tests.
    let relay = SocketAddr::new(listen.ip(), 0);
    let wallet = NwcWalletService::start(sim.clone(), relay, SIM_WALLET_MSAT).await?;
    outln!(
        "  NWC wallet ({} sats; throwaway, put it in a renew rule's nwc_uri_file): {}",
        SIM_WALLET_MSAT / 1000,
        wallet.uri()
    );
    outln!("Press Ctrl-C to stop.");
    stop.await;
    wallet.shutdown().await;
    sim.shutdown_and_wait().await;
    Ok(())
}

/// Serves `scenario` (a built-in name or a TOML/JSON file) on the system clock until
/// `stop` resolves (the command line passes Ctrl-C or SIGTERM), after printing the base URL, the keys and the RDP addresses.
pub async fn serve_stablevps(
    listen: SocketAddr,
    scenario: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SimError> {
    let scenario = StableScenario::load(scenario)?;
    let keys: Vec<(String, KeyScope)> = scenario
        .accounts
        .iter()
        .flat_map(|a| a.keys.iter().map(|k| (k.key.clone(), k.scope)))
        .collect();
    let sim = StableVpsSim::start(listen, scenario, Arc::new(SystemClock)).await?;
    outln!("StableVPS simulator listening on {}", sim.base_url());
    for (key, scope) in keys {
        outln!("  API key ({}): {key}", scope.as_str());
    }
    for v in sim.vpses() {
        outln!(
            "  VPS {} {}/{} status={} vpsStatus={} rdp={}",
            v.id,
            v.plan_id,
            v.billing_cycle,
            v.status,
            v.vps_status,
            v.rdp_addr()
        );
    }
    outln!("  control API: {}/_sim/", sim.base_url());
    outln!("Press Ctrl-C to stop.");
    stop.await;
    sim.shutdown_and_wait().await;
    Ok(())
}
