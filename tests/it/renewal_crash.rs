//! `kill -9` of the real binary after the wallet paid a renewal and before vpswatch
//! recorded `is_paid` (the wallet pays but never answers): the restarted daemon resumes
//! the journaled renewal by looking the payment up and never asks the wallet again, even
//! though the VM is still inside the rule's window.

use crate::common::free_port;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::daemon_process::{spawn_run, KillOnDrop};
use crate::common::{wait_for, Exposition};
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{LnvpsSim, LnvpsSimHandle, RelTime, Scenario, VmSpec};
use vpswatch_sim::nwc_wallet::{NwcWalletService, WalletFailure};
use vpswatch_sim::scenario::TemplateSpec;

const T: Duration = Duration::from_secs(30);

fn spawn(config: &std::path::Path, nsec: &str) -> KillOnDrop {
    spawn_run(config, "RENEW_CRASH_NSEC", nsec)
}

async fn scrape(url: &str) -> Option<Exposition> {
    let r = reqwest::get(url).await.ok()?;
    Some(Exposition::parse(&r.text().await.ok()?))
}

fn vm_polls(sim: &LnvpsSimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.endpoint == "/api/v1/vm")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_paying_then_restart_pays_nothing_more() {
    vpswatch::tls::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let owner = keys.public_key().to_hex();
    let sim = LnvpsSim::start(
        "127.0.0.1:0".parse().expect("addr"),
        Scenario::default(),
        Arc::new(SystemClock),
    )
    .await
    .expect("sim");
    let vm = sim.add_vm(
        &owner,
        VmSpec {
            owner: owner.clone(),
            expires: Some(RelTime::Offset(20 * 3600)),
            age: Duration::from_secs(40 * 86_400),
            template: TemplateSpec::named("Daily BTC"),
            auto_renewal_enabled: false,
            ..VmSpec::default()
        },
    );
    let before = sim.vm(vm).and_then(|v| v.expires).expect("paid");
    let wallet =
        NwcWalletService::start(sim.clone(), "127.0.0.1:0".parse().expect("a"), 10_000_000)
            .await
            .expect("wallet");
    wallet.fail(WalletFailure::PayWithoutAnswer, Some(1));

    let dir = tempfile::tempdir().expect("dir");
    let uri_file = dir.path().join("nwc.uri");
    std::fs::write(&uri_file, wallet.uri()).expect("uri file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&uri_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let port = free_port();
    let config = dir.path().join("vpswatch.toml");
    std::fs::write(
        &config,
        format!(
            r#"poll_interval = "200ms"
request_timeout = "2s"
state_dir = "{state}"
[web]
listen_address = "127.0.0.1:{port}"
[[accounts]]
name = "main"
provider = "lnvps"
base_url = "{url}"
nsec_env = "RENEW_CRASH_NSEC"
[[rules]]
name = "renew"
condition = "expires_within"
within = "3d"          # still inside after one renewal: only the journal stops a second
action = "renew"
[rules.renew]
mode = "nwc"
nwc_uri_file = "{uri}"
max_per_renewal_sats = 1000
max_per_month_sats = 5000
wallet_timeout = "60s"
"#,
            state = dir.path().join("state").display(),
            url = sim.base_url(),
            uri = uri_file.display(),
        ),
    )
    .expect("config");
    let nsec = keys.secret_key().to_secret_hex();

    let mut first = spawn(&config, &nsec);
    wait_for("the wallet paid", T, || {
        let n = wallet.payments().len();
        async move { n == 1 }
    })
    .await;
    // The daemon now waits for the wallet's answer, which never comes: kill -9.
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    assert_eq!(wallet.pay_requests(), 1);

    let _second = spawn(&config, &nsec);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + T;
    loop {
        let paid = scrape(&url).await.and_then(|e| {
            e.get(
                "vpswatch_renewals_total",
                &[("vm", &vm.to_string()), ("result", "paid")],
            )
        });
        if paid == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no paid renewal after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several more polls: nothing else is paid.
    let polls = vm_polls(&sim);
    wait_for("five more polls", T, || {
        let n = vm_polls(&sim);
        async move { n >= polls + 5 }
    })
    .await;
    assert_eq!(wallet.pay_requests(), 1, "never sent to the wallet again");
    assert_eq!(wallet.payments().len(), 1);
    let paid = sim.payments(vm).iter().filter(|p| p.is_paid).count();
    assert_eq!(paid, 1);
    let after = sim.vm(vm).and_then(|v| v.expires).expect("paid");
    assert_eq!(after - before, chrono::Duration::days(1));
    wallet.shutdown().await;
    sim.shutdown();
}
