//! A state-disk fault on the real binary: the state database is made immutable
//! (`chattr +i`, so every write fails with EPERM as on a broken or read-only disk) while a
//! VM hangs. vpswatch must not act (it cannot journal the action), must say so
//! (`vpswatch_state_store_writable` 0, `/-/healthy` 503) and keep the alert in memory;
//! once the file is writable again it must reopen the database by itself, reboot the VM
//! through the normal guards and mail the alert raised during the fault — no restart.
//! And the bound of that memory: at most `HOLD_LIMIT` notifications are held, the rest
//! are counted as dropped.

use crate::common::free_port;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::daemon_process::KillOnDrop;
use crate::common::smtp::{read_mails, Mail, ServerOpts, SmtpServer};
use crate::common::Exposition;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use vpswatch::metrics::SelfMetrics;
use vpswatch::notify::email::settings::{self, EmailSettings};
use vpswatch::notify::email::{EmailNotifier, Tuning, HOLD_LIMIT};
use vpswatch::notify::{AlertKey, AlertStatus, AlertUpdate, Facts, Notify};
use vpswatch::store::StateStore;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{LnvpsSimHandle, Scenario, VmSpec};

const T: Duration = Duration::from_secs(60);

/// Sets or clears the immutable attribute; `Err` when chattr is unusable here.
fn chattr(flag: &str, file: &Path) -> Result<(), String> {
    let out = Command::new("chattr")
        .arg(flag)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run chattr: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "chattr {flag} {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Clears the immutable attribute when dropped, so the temporary directory can be
/// removed whatever the test did.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = chattr("-i", &self.0);
    }
}

fn power_calls(sim: &LnvpsSimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.vm_id == Some(1))
        .count()
}

struct Daemon {
    web: u16,
    log: PathBuf,
    _child: KillOnDrop,
}

impl Daemon {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn scrape(&self) -> Option<Exposition> {
        let r = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.web))
            .await
            .ok()?;
        Some(Exposition::parse(&r.text().await.ok()?))
    }

    async fn healthy(&self) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://127.0.0.1:{}/-/healthy", self.web))
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// Polls until `pred` holds for the metrics, `/-/healthy` and the simulator.
    async fn wait(
        &self,
        what: &str,
        sim: &LnvpsSimHandle,
        maildir: &Path,
        pred: impl Fn(&Exposition, (u16, &str), &[Mail]) -> bool,
    ) -> (Exposition, (u16, String)) {
        let deadline = Instant::now() + T;
        loop {
            if let (Some(e), Some(h)) = (self.scrape().await, self.healthy().await) {
                let mails = read_mails(maildir);
                if pred(&e, (h.0, &h.1), &mails) {
                    return (e, h);
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for: {what}\nhealthy: {h:?}\npower calls: {}\nmails: {:?}\nstore metrics: {:?} {:?}\nskipped_error: {:?}\nlog:\n{}",
                        power_calls(sim),
                        mails.iter().map(Mail::subject).collect::<Vec<_>>(),
                        e.get("vpswatch_state_store_writable", &[]),
                        e.get("vpswatch_state_store_errors_total", &[]),
                        e.get("vpswatch_actions_total", &[("result", "skipped_error")]),
                        self.log_tail()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "timed out waiting for: {what} (no answer)\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn count(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.get(name, labels).unwrap_or(0.0)
}

fn has_subject(mails: &[Mail], prefix: &str) -> bool {
    mails.iter().any(|m| m.subject().starts_with(prefix))
}

/// chattr needs root and a filesystem with the attribute (ext4, xfs, btrfs, tmpfs since
/// Linux 6.0); without them the fault cannot be made and there is nothing to test.
fn chattr_works() -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").expect("probe file");
    match chattr("+i", &probe) {
        Ok(()) => {
            let _ = chattr("-i", &probe);
            true
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot make a file immutable here ({e}); this test needs root and chattr"
            );
            false
        }
    }
}

#[tokio::test]
async fn after_a_state_disk_fault_the_store_reopens_the_vm_is_rebooted_and_the_held_alert_mailed() {
    if !chattr_works() {
        return;
    }

    vpswatch::tls::install_crypto_provider();
    let keys = nostr::Keys::generate();
    let vm_port = free_port();
    let scenario = Scenario {
        vms: vec![VmSpec {
            owner: keys.public_key().to_hex(),
            ipv4: Some(Ipv4Addr::new(127, 8, 0, 1)),
            ..VmSpec::default()
        }],
        ..Scenario::default()
    };
    let sim = crate::common::lnvps_sim_with_vm_ports(scenario, vm_port).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("maildir");
    let smtp = SmtpServer::start(&maildir, 0, &ServerOpts::default());
    let state = dir.path().join("state");
    let web = free_port();
    let config = dir.path().join("vpswatch.toml");
    std::fs::write(
        &config,
        format!(
            r#"poll_interval = "200ms"
request_timeout = "1s"
state_dir = "{state}"
[web]
listen_address = "127.0.0.1:{web}"
[probes]
interval = "100ms"
timeout = "300ms"
[probes.ports]
lnvps = {vm_port}
[email]
smtp_host = "127.0.0.1"
smtp_port = {smtp}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
[[accounts]]
name = "main"
provider = "lnvps"
base_url = "{url}"
nsec_env = "STORE_TEST_NSEC"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
action = "reboot"
cooldown = "1h"
patience = "30s"
"#,
            state = state.display(),
            smtp = smtp.port,
            url = sim.base_url(),
        ),
    )
    .expect("write config");
    let log = dir.path().join("vpswatch.log");
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["--log.level", "info", "run", "--config"])
        .arg(&config)
        .env("STORE_TEST_NSEC", keys.secret_key().to_secret_hex())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start vpswatch");
    let d = Daemon {
        web,
        log,
        _child: KillOnDrop(child),
    };

    d.wait(
        "the VM answers and the store is writable",
        &sim,
        &maildir,
        |e, h, _| {
            e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
                && e.get("vpswatch_state_store_writable", &[]) == Some(1.0)
                && h.0 == 200
        },
    )
    .await;

    // The fault: the database file refuses every write from now on.
    let db = state.join(vpswatch::store::DB_FILE);
    chattr("+i", &db).expect("chattr +i on the state database");
    let guard = Immutable(db.clone());
    sim.set_hung(1, true);

    let (_, (_, body)) = d
        .wait(
            "the watchdog refuses to act, the store says it is not writable, /-/healthy 503",
            &sim,
            &maildir,
            |e, h, _| {
                count(e, "vpswatch_actions_total", &[("vm", "1"), ("result", "skipped_error")])
                    >= 1.0
                    && e.get("vpswatch_state_store_writable", &[]) == Some(0.0)
                    && count(e, "vpswatch_alerts_total", &[("result", "held")]) >= 1.0
                    // the I/O error and at least one reopening attempt that failed
                    && count(e, "vpswatch_state_store_errors_total", &[]) >= 2.0
                    && h.0 == 503
            },
        )
        .await;
    assert!(
        body.contains("state database cannot be written"),
        "/-/healthy names the reason: {body}"
    );
    assert_eq!(
        power_calls(&sim),
        0,
        "no action while it cannot be journaled"
    );
    assert!(
        read_mails(&maildir).is_empty(),
        "nothing could be queued during the fault"
    );

    // The disk is back.
    chattr("-i", &db).expect("chattr -i");
    drop(guard);

    let (after, _) = d
        .wait(
            "the store reopens, the VM is rebooted and the held alert is mailed",
            &sim,
            &maildir,
            |e, h, mails| {
                e.get("vpswatch_state_store_writable", &[]) == Some(1.0)
                    && h.0 == 200
                    && power_calls(&sim) >= 1
                    && has_subject(mails, "[FIRING] ssh-dead · lnvps/main")
                    && has_subject(mails, "[ACTION TAKEN] ssh-dead · lnvps/main")
            },
        )
        .await;
    assert_eq!(power_calls(&sim), 1, "exactly one reboot");
    let mails = read_mails(&maildir);
    let firing = mails
        .iter()
        .filter(|m| m.subject().starts_with("[FIRING]"))
        .count();
    assert_eq!(firing, 1, "the held alert is mailed once");
    assert_eq!(
        count(&after, "vpswatch_alerts_total", &[("result", "dropped")]),
        0.0
    );
    assert_eq!(
        count(
            &after,
            "vpswatch_alerts_total",
            &[("result", "queue_error")]
        ),
        0.0,
        "nothing lost"
    );
    let list: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("http://127.0.0.1:{web}/api/v1/actions"))
            .await
            .expect("api")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(
        list["actions"].as_array().map(Vec::len),
        Some(1),
        "the reboot is journaled: {list}"
    );
    sim.shutdown();
}

fn email_settings(port: u16) -> EmailSettings {
    let text = format!(
        r#"
smtp_host = "127.0.0.1"
smtp_port = {port}
security = "none"
allow_insecure = true
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
"#
    );
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let value = toml::Value::Table(text.parse().expect("toml"));
    let s = settings::from_toml(value, &|_| None, &mut problems, &mut warnings);
    assert!(problems.is_empty(), "{problems:?}");
    s.expect("valid email settings")
}

#[tokio::test]
async fn while_the_store_is_down_alerts_are_held_up_to_the_limit_then_queued() {
    if !chattr_works() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("store");
    let metrics = SelfMetrics::new();
    store.attach_metrics(metrics.clone());
    // Nobody listens on the mail port: what is queued stays in the outbox to be counted.
    let notifier = EmailNotifier::open_with(
        email_settings(free_port()),
        store.clone(),
        Arc::new(SystemClock),
        metrics.clone(),
        Tuning {
            tick: Duration::from_millis(20),
            retry_initial: Duration::from_secs(3600),
            retry_max: Duration::from_secs(3600),
            ..Tuning::default()
        },
    )
    .expect("notifier");
    let count = |result: &str| metrics.alert_metrics().get("email", result);

    let db = dir.path().join(vpswatch::store::DB_FILE);
    chattr("+i", &db).expect("chattr +i on the state database");
    let guard = Immutable(db.clone());
    let extra = 5;
    for vm in 0..HOLD_LIMIT + extra {
        notifier.alert(AlertUpdate {
            key: AlertKey {
                rule: "ssh-dead".into(),
                provider: ProviderKind::Lnvps,
                account: "main".into(),
                vm: vm.to_string(),
            },
            status: AlertStatus::Firing,
            facts: Facts {
                vm_name: format!("vm-{vm}"),
                summary: "TCP probe failing".into(),
                ..Facts::default()
            },
            at: Utc::now(),
        });
    }
    assert!(!store.writable(), "the first write met the I/O error");
    assert!(metrics.state_store_metrics().errors() >= 1);
    assert_eq!(count("held"), HOLD_LIMIT as u64);
    assert_eq!(count("dropped"), extra as u64);
    assert_eq!(count("queue_error"), 0);
    assert_eq!(count("queued"), 0);

    chattr("-i", &db).expect("chattr -i");
    drop(guard);
    let cancel = CancellationToken::new();
    let reopener = tokio::spawn(store.clone().keep_open(cancel.clone()));
    let sender = tokio::spawn(notifier.clone().run(cancel.clone()));
    let deadline = Instant::now() + T;
    while count("queued") < HOLD_LIMIT as u64 {
        assert!(
            Instant::now() < deadline,
            "held alerts not queued: {} of {HOLD_LIMIT}, store writable: {}",
            count("queued"),
            store.writable()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.state_store_metrics().writable());
    assert_eq!(
        notifier.outbox_stats().expect("outbox").messages,
        HOLD_LIMIT as u64,
        "every held alert is in the outbox, the dropped ones are not"
    );
    cancel.cancel();
    let _ = reopener.await;
    let _ = sender.await;
}
