//! Secret hygiene across the whole daemon: with distinctive secrets — two Nostr keys (one
//! file in hex, one as nsec), StableVPS read and write API keys, an SMTP password, and
//! the `rdpPassword`s the StableVPS simulator serves — vpswatch runs through startup,
//! polls, every fault kind on both providers, watchdog reboots of hung VMs on both, mail
//! it cannot deliver (SMTP port closed) and configuration errors; none of the secrets,
//! in any obvious encoding (as written, hex, bech32, base64), may appear in the logs,
//! /metrics, /api/v1/actions, the status page (`/`) and its JSON twin, the files in the
//! state directory (redb bytes) or any error message. Once in-process with every tracing event captured at TRACE, once as
//! the real binary with `--log.level debug`, stdout and stderr captured.
//!
//! Also: key files readable by group or others draw a warning naming the file.
//!
//! The log capture is process-wide (`common::log_capture`).

use crate::common::free_port;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{wait_for, wait_metrics_at, Exposition};
use base64::Engine;
use nostr::ToBech32;
use vpswatch::daemon::Daemon;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{self, LnvpsSim, LnvpsSimHandle};
use vpswatch_sim::stablevps::{
    self, AccountSpec, KeyScope, KeySpec, StableScenario, StableVpsSim, StableVpsSimHandle, VpsSpec,
};

const T: Duration = Duration::from_secs(30);

/// Distinctive values: a hit on any of them is a leak, not a coincidence.
const READ_KEY: &str = "svps_live_5ec2e7a11ce0000000000000000000000000d00d";
const WRITE_KEY: &str = "svps_live_f0ff5ec2e7b0b0000000000000000000000000beef";
const SMTP_PASSWORD: &str = "smtp-Pa55w0rd-never-logged-7f3a9c";

/// Every form a secret could leak in.
fn encodings(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        b64.encode(secret),
        b64url.encode(secret),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        out.push(text.to_string());
    }
    out
}

/// The test's secrets, each with its encodings.
struct Secrets {
    lnvps_hex: nostr::Keys,
    lnvps_nsec: nostr::Keys,
    rdp_passwords: Vec<String>,
}

impl Secrets {
    fn all(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, keys) in [("hex key", &self.lnvps_hex), ("nsec key", &self.lnvps_nsec)] {
            let sk = keys.secret_key();
            for e in encodings(&sk.to_secret_bytes()) {
                out.push((name.to_string(), e));
            }
            out.push((
                name.to_string(),
                sk.to_bech32().expect("bech32").to_string(),
            ));
        }
        for (name, s) in [
            ("read API key", READ_KEY),
            ("write API key", WRITE_KEY),
            ("SMTP password", SMTP_PASSWORD),
        ] {
            for e in encodings(s.as_bytes()) {
                out.push((name.to_string(), e));
            }
        }
        for p in &self.rdp_passwords {
            assert!(p.len() >= 12, "a password too short to test for: {p:?}");
            for e in encodings(p.as_bytes()) {
                out.push(("rdpPassword".to_string(), e));
            }
        }
        out
    }

    /// Panics naming the secret (never printing it) and where it was found.
    fn assert_absent(&self, place: &str, text: &str) {
        for (name, needle) in self.all() {
            assert!(
                !text.contains(&needle),
                "the {name} (or an encoding of it) appears in {place}"
            );
        }
    }

    fn assert_absent_bytes(&self, place: &str, bytes: &[u8]) {
        for (name, needle) in self.all() {
            let n = needle.as_bytes();
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "the {name} (or an encoding of it) appears in {place}"
            );
        }
    }
}

/// Both simulators with VMs that listen (so the watchdog has something to heal) and
/// the key files on disk.
struct World {
    dir: tempfile::TempDir,
    lnvps: LnvpsSimHandle,
    stable: StableVpsSimHandle,
    secrets: Secrets,
    vm_port: u16,
    rdp_port: u16,
}

fn write_secret(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

impl World {
    async fn start(subnet: u8) -> World {
        vpswatch::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (lnvps_hex, lnvps_nsec) = (nostr::Keys::generate(), nostr::Keys::generate());
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (vm_port, rdp_port) = (free_port(), free_port());
        let vm = |owner: &nostr::Keys, n: u8| lnvps::VmSpec {
            owner: owner.public_key().to_hex(),
            state: lnvps::VmState::Running,
            ipv4: Some(Ipv4Addr::new(127, 7, subnet, n)),
            ..lnvps::VmSpec::default()
        };
        let mut scenario = lnvps::Scenario {
            vms: vec![vm(&lnvps_hex, 1), vm(&lnvps_nsec, 2)],
            ..lnvps::Scenario::default()
        };
        scenario.settings.vm_listen_port = Some(vm_port);
        let lnvps = LnvpsSim::start(listen, scenario, Arc::new(SystemClock))
            .await
            .expect("LNVPS simulator");
        let key = |k: &str, scope| KeySpec {
            key: k.into(),
            name: None,
            scope,
            expires_at: None,
        };
        let vps = |n: u8| VpsSpec {
            ip_address: Some(Ipv4Addr::new(127, 7, subnet + 100, n)),
            rdp_port: Some(rdp_port),
            listen_rdp: true,
            // Every poll fetches each VPS on its own, rdpPassword included.
            list_omits: vec!["ipAddress".into()],
            ..VpsSpec::default()
        };
        let stable = StableVpsSim::start(
            listen,
            StableScenario {
                accounts: vec![AccountSpec {
                    keys: vec![
                        key(READ_KEY, KeyScope::Read),
                        key(WRITE_KEY, KeyScope::Full),
                    ],
                    ..AccountSpec::default()
                }],
                vps: vec![vps(1), vps(2)],
                ..StableScenario::default()
            },
            Arc::new(SystemClock),
        )
        .await
        .expect("StableVPS simulator");
        let rdp_passwords = stable.vpses().into_iter().map(|v| v.rdp_password).collect();
        let d = dir.path();
        write_secret(d, "hex.key", &lnvps_hex.secret_key().to_secret_hex(), 0o600);
        write_secret(
            d,
            "nsec.key",
            &lnvps_nsec.secret_key().to_bech32().expect("bech32"),
            0o600,
        );
        write_secret(d, "read.key", READ_KEY, 0o600);
        write_secret(d, "write.key", WRITE_KEY, 0o600);
        write_secret(d, "smtp.pass", SMTP_PASSWORD, 0o600);
        std::fs::create_dir(d.join("state")).expect("state dir");
        World {
            dir,
            lnvps,
            stable,
            secrets: Secrets {
                lnvps_hex,
                lnvps_nsec,
                rdp_passwords,
            },
            vm_port,
            rdp_port,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The daemon's configuration: three accounts, a reboot rule, mail to a closed port.
    fn config(&self, listen: &str) -> String {
        let smtp_port = free_port();
        format!(
            r#"poll_interval = "200ms"
request_timeout = "300ms"
state_dir = {state:?}

[web]
listen_address = "{listen}"

[providers.lnvps]
max_attempts = 2
[providers.stablevps]
max_attempts = 2

[probes]
interval = "100ms"
timeout = "200ms"
ports = {{ lnvps = {vm_port}, stablevps = {rdp_port} }}

[[accounts]]
name = "ln-hex"
provider = "lnvps"
base_url = "{lnvps}"
nsec_file = {hex:?}

[[accounts]]
name = "ln-nsec"
provider = "lnvps"
base_url = "{lnvps}"
nsec_file = {nsec:?}

[[accounts]]
name = "svps"
provider = "stablevps"
base_url = "{stable}"
api_key_file = {read:?}
write_api_key_file = {write:?}

[[rules]]
name = "hung-vm"
condition = "probe_failing"
for = "200ms"
failures = 2
recoveries = 1
action = "reboot"
cooldown = "1h"
patience = "10s"

[email]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
security = "none"
allow_insecure = true
username = "vpswatch"
password_file = {smtp:?}
from = "vpswatch <vpswatch@example.test>"
to = ["ops@example.test"]
timeout = "1s"
"#,
            state = self.path("state"),
            vm_port = self.vm_port,
            rdp_port = self.rdp_port,
            lnvps = self.lnvps.base_url(),
            stable = self.stable.base_url(),
            hex = self.path("hex.key"),
            nsec = self.path("nsec.key"),
            read = self.path("read.key"),
            write = self.path("write.key"),
            smtp = self.path("smtp.pass"),
        )
    }

    /// Hangs one VM per provider and waits until both were rebooted.
    async fn heal_hung_vms(&self) {
        let (ln_before, sv_before) = (self.lnvps.actions().len(), self.stable.actions().len());
        self.lnvps.update_vm(1, |v| v.hung = true);
        let id = self.stable.vpses()[0].id.clone();
        self.stable.update_vps(&id, |v| v.hang = true);
        wait_for("both hung VMs rebooted", T, || async {
            self.lnvps.actions().len() > ln_before && self.stable.actions().len() > sv_before
        })
        .await;
    }

    /// Plays every fault kind on both providers, each until the daemon counted it.
    async fn play_faults(&self, http: &reqwest::Client, addr: SocketAddr) {
        use lnvps::FaultKind as K;
        let kinds = [
            (K::Status(500), "500"),
            (K::Status(502), "502"),
            (K::Status(503), "503"),
            (K::Status(403), "403"),
            (K::MalformedJson, "invalid_response"),
            (K::TruncatedBody, "invalid_response"),
            (K::WrongContentType, "invalid_response"),
            (K::Unauthorized, "401"),
            (
                K::RateLimited {
                    retry_after_secs: 1,
                },
                "429",
            ),
            (K::Hang, "timeout"),
            (K::Latency(Duration::from_secs(1)), "timeout"),
        ];
        let count = |e: &Exposition, provider: &str, code: &str| -> f64 {
            e.samples
                .iter()
                .filter(|(n, l, _)| {
                    n == "vpswatch_provider_requests_total"
                        && l.iter().any(|(k, v)| k == "provider" && v == provider)
                        && l.iter().any(|(k, v)| k == "code" && v == code)
                })
                .map(|s| s.2)
                .sum()
        };
        for (kind, code) in kinds {
            let before = Exposition::parse(&crate::common::scrape(http, addr).await);
            let (ln0, sv0) = (
                count(&before, "lnvps", code),
                count(&before, "stablevps", code),
            );
            self.lnvps
                .inject_fault(lnvps::Fault::new(lnvps::EndpointMatch::Any, kind.clone()));
            self.stable.inject_fault(stablevps::Fault::new(
                stablevps::EndpointMatch::Any,
                kind.clone(),
            ));
            wait_metrics_at(http, addr, &format!("{kind:?} counted"), T, |e| {
                count(e, "lnvps", code) > ln0 && count(e, "stablevps", code) > sv0
            })
            .await;
            self.lnvps.clear_faults();
            self.stable.clear_faults();
        }
        // NIP-98 clock skew, both ways.
        for skew in [90, -90] {
            let before = Exposition::parse(&crate::common::scrape(http, addr).await);
            let ln0 = count(&before, "lnvps", "401");
            self.lnvps.set_clock_skew(skew);
            wait_metrics_at(http, addr, "skew counted", T, |e| {
                count(e, "lnvps", "401") > ln0
            })
            .await;
            self.lnvps.set_clock_skew(0);
        }
    }

    /// Every file of the state directory, as bytes.
    fn state_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.path().join("state")];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).expect("read state dir").flatten() {
                let p = entry.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    out.push((p.display().to_string(), bytes));
                }
            }
        }
        out
    }

    fn shutdown(&self) {
        self.lnvps.shutdown();
        self.stable.shutdown();
    }
}

async fn all_up(http: &reqwest::Client, addr: SocketAddr) -> Exposition {
    wait_metrics_at(http, addr, "all three accounts up", T, |e| {
        ["ln-hex", "ln-nsec", "svps"]
            .iter()
            .all(|a| e.get("vpswatch_provider_up", &[("account", a)]) == Some(1.0))
    })
    .await
}

async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body")
}

/// The status page and its JSON twin, once they show the watchdog's reboots (so they
/// hold everything there is to show: both accounts, every VM, the journal's entries).
async fn status_page(http: &reqwest::Client, addr: SocketAddr) -> (String, String) {
    let page = get_text(http, &format!("http://{addr}/")).await;
    let status = get_text(http, &format!("http://{addr}/api/v1/status")).await;
    assert!(
        page.contains("id=\"problems\"") && page.contains("reboot"),
        "{page}"
    );
    assert!(status.contains("\"last_action\":{"), "{status}");
    (page, status)
}

/// Configuration errors name the file, never the content.
fn config_errors(w: &World) -> Vec<String> {
    let d = w.dir.path();
    let hex = w.secrets.lnvps_hex.secret_key().to_secret_hex();
    // A hex key with one character broken, an nsec with a broken checksum, and API keys
    // with a space in them: each refused.
    let mut broken_hex = hex.clone();
    broken_hex.replace_range(0..1, "z");
    let nsec = w
        .secrets
        .lnvps_nsec
        .secret_key()
        .to_bech32()
        .expect("bech32");
    // A different last character breaks the bech32 checksum (the same one would not:
    // one key in 32 ends in `q`).
    let last = if nsec.ends_with('q') { 'p' } else { 'q' };
    let broken_nsec = format!("{}{last}", &nsec[..nsec.len() - 1]);
    let files = [
        write_secret(d, "bad-hex.key", &broken_hex, 0o600),
        write_secret(d, "bad-nsec.key", &broken_nsec, 0o600),
        write_secret(d, "bad-read.key", &format!("{READ_KEY} x"), 0o600),
        write_secret(d, "bad-write.key", &format!("x {WRITE_KEY}"), 0o600),
        write_secret(d, "bad-smtp.pass", "", 0o600),
    ];
    let text = format!(
        r#"[[accounts]]
name = "a"
provider = "lnvps"
nsec_file = {:?}
[[accounts]]
name = "b"
provider = "lnvps"
nsec_file = {:?}
[[accounts]]
name = "c"
provider = "stablevps"
api_key_file = {:?}
write_api_key_file = {:?}
[email]
smtp_host = "127.0.0.1"
security = "none"
allow_insecure = true
username = "u"
password_file = {:?}
from = "a@example.test"
to = ["b@example.test"]
"#,
        files[0], files[1], files[2], files[3], files[4]
    );
    let err = match vpswatch::config::parse(&text, "bad.toml", &|_| None) {
        Ok(_) => panic!("broken secrets accepted"),
        Err(e) => e.to_string(),
    };
    for key in [
        "accounts[0].nsec_file",
        "accounts[1].nsec_file",
        "accounts[2].api_key_file",
        "accounts[2].write_api_key_file",
        "email.password_file",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
    // The broken values must not be echoed either (each holds a secret's bulk).
    for v in [&broken_hex, &broken_nsec] {
        assert!(!err.contains(v.as_str()), "a broken key is echoed");
    }
    vec![err]
}

#[tokio::test]
async fn no_secret_leaks_in_process() {
    let capture = crate::common::log_capture::capture();
    let w = World::start(1).await;
    let text = w.config("127.0.0.1:0");
    let config = vpswatch::config::parse(&text, "hygiene.toml", &|_| None)
        .unwrap_or_else(|e| panic!("config: {e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let daemon = Daemon::start(config, Arc::new(SystemClock))
        .await
        .expect("daemon");
    let http = reqwest::Client::new();
    let addr = daemon.addr;
    all_up(&http, addr).await;
    // Per-VPS answers (with passwords) were read.
    wait_for("rdpPasswords were served", T, || async {
        w.stable
            .requests()
            .iter()
            .filter(|r| r.endpoint == stablevps::VPS_ONE && r.status == 200)
            .count()
            >= 4
    })
    .await;
    w.heal_hung_vms().await;
    w.play_faults(&http, addr).await;
    // Mail was attempted (and failed: nothing listens) at least once.
    wait_for("a mail delivery attempt failed", T, || async {
        daemon.email.as_ref().is_some_and(|e| {
            daemon
                .self_metrics
                .alert_metrics()
                .get("email", "failed_attempt")
                > 0
                && e.outbox_stats().map(|s| s.messages).unwrap_or(0) > 0
        })
    })
    .await;
    let exp = all_up(&http, addr).await;

    let actions = get_text(&http, &format!("http://{addr}/api/v1/actions")).await;
    assert!(actions.contains("\"reboot\""), "{actions}");
    let (page, status) = status_page(&http, addr).await;
    let mut errors = config_errors(&w);
    for snap in daemon.store.all() {
        errors.extend(snap.last_error.clone());
        if let Some(d) = &snap.data {
            errors.extend(d.warnings.iter().cloned());
            errors.push(format!("{:?}", d.vms));
        }
    }
    errors.push(format!("{:?}", daemon.providers.len()));
    drop(http);
    daemon.shutdown().await;

    let logs = capture.text();
    assert!(logs.contains("TRACE"), "no trace output captured");
    assert!(
        logs.contains("hung-vm"),
        "the watchdog's work is not in the logs"
    );
    w.secrets.assert_absent("the logs", &logs);
    w.secrets.assert_absent("/metrics", &exp.text);
    w.secrets.assert_absent("/api/v1/actions", &actions);
    w.secrets.assert_absent("the status page", &page);
    w.secrets.assert_absent("/api/v1/status", &status);
    for e in &errors {
        w.secrets.assert_absent("an error message", e);
    }
    let files = w.state_files();
    assert!(!files.is_empty(), "the state directory is empty");
    for (name, bytes) in &files {
        w.secrets.assert_absent_bytes(name, bytes);
    }
    w.shutdown();
}

/// Runs `vpswatch` with `args`, returning (exit code, stdout, stderr).
fn vpswatch(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(args)
        .output()
        .expect("run vpswatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn no_secret_leaks_from_the_binary() {
    let w = World::start(2).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let config_path = w.dir.path().join("vpswatch.toml");
    std::fs::write(&config_path, w.config(&listen)).expect("write config");
    // One key file readable by others: a warning, and still no leak.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(w.path("read.key"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let cfg = config_path.display().to_string();
    let (code, out, err) = vpswatch(&["check-config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("accounts[2].api_key_file") && out.contains("readable by group or others"),
        "{out}"
    );

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["--log.level", "debug", "run", "--config", &cfg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start vpswatch");
    let pid = child.id().expect("pid");
    let addr: SocketAddr = listen.parse().expect("addr");
    let http = reqwest::Client::new();
    wait_for("the daemon listens", T, || async {
        http.get(format!("http://{addr}/-/healthy"))
            .send()
            .await
            .is_ok()
    })
    .await;
    all_up(&http, addr).await;
    w.heal_hung_vms().await;
    w.play_faults(&http, addr).await;
    let exp = all_up(&http, addr).await;
    let actions = get_text(&http, &format!("http://{addr}/api/v1/actions")).await;
    assert!(actions.contains("\"reboot\""), "{actions}");
    let (page, status) = status_page(&http, addr).await;
    drop(http);

    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let output = tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect("the daemon stops on SIGTERM")
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DEBUG"), "debug logging is not on");
    assert!(
        stderr.contains("readable by group or others"),
        "no warning for the loose key file"
    );
    w.secrets.assert_absent("stdout", &stdout);
    w.secrets.assert_absent("stderr", &stderr);
    w.secrets.assert_absent("/metrics", &exp.text);
    w.secrets.assert_absent("/api/v1/actions", &actions);
    w.secrets.assert_absent("the status page", &page);
    w.secrets.assert_absent("/api/v1/status", &status);
    for (name, bytes) in &w.state_files() {
        w.secrets.assert_absent_bytes(name, bytes);
    }

    // check-config with broken secret files: precise errors, no secret.
    let broken = w.dir.path().join("broken.toml");
    let hex = w.secrets.lnvps_hex.secret_key().to_secret_hex();
    let bad_key = write_secret(w.dir.path(), "broken.key", &format!("{hex}00"), 0o600);
    std::fs::write(
        &broken,
        format!(
            "[[accounts]]\nname = \"x\"\nprovider = \"lnvps\"\nnsec_file = {:?}\n",
            bad_key.display().to_string()
        ),
    )
    .expect("write");
    let (code, out, err) = vpswatch(&["check-config", &broken.display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("accounts[0].nsec_file"), "{err}");
    w.secrets
        .assert_absent("check-config output", &format!("{out}{err}"));
    w.shutdown();
}

#[test]
fn loose_key_files_draw_a_warning_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = nostr::Keys::generate();
    let key = write_secret(
        dir.path(),
        "k.nsec",
        &keys.secret_key().to_secret_hex(),
        0o640,
    );
    let api = write_secret(dir.path(), "api.key", READ_KEY, 0o604);
    let text = format!(
        "[[accounts]]\nname = \"a\"\nprovider = \"lnvps\"\nnsec_file = {:?}\n\
         [[accounts]]\nname = \"b\"\nprovider = \"stablevps\"\napi_key_file = {:?}\n",
        key.display().to_string(),
        api.display().to_string()
    );
    let config = vpswatch::config::parse(&text, "t.toml", &|_| None).expect("valid");
    let w: Vec<String> = config
        .warnings
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    assert!(
        w.iter().any(|l| l.starts_with("accounts[0].nsec_file:")
            && l.contains("k.nsec")
            && l.contains("mode 640")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|l| l.starts_with("accounts[1].api_key_file:")
            && l.contains("api.key")
            && l.contains("mode 604")),
        "{w:?}"
    );
    // A private file draws none.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&api, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    let config = vpswatch::config::parse(&text, "t.toml", &|_| None).expect("valid");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

/// Whether `text` holds `secret` or any 12-character piece of it (a truncated echo leaks
/// too).
fn holds_part_of(text: &str, secret: &str) -> bool {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(12)
        .any(|w| text.contains(&w.iter().collect::<String>()))
}

/// Keys pasted where they do not belong, each echoed by an error before: the path field
/// (`nsec_file = "nsec1…"`), the variable name field (`nsec_env = "<64 hex>"`), an
/// unquoted value in the TOML parser's snippet, a value in serde's type error, API keys
/// and a password in the same places; and a 900 KB `name`. `check-config` and `run`
/// must name the key path or line and echo neither the key nor more than 64 characters
/// of any value.
#[test]
fn config_errors_never_echo_key_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = nostr::Keys::generate();
    let nsec = keys.secret_key().to_bech32().expect("bech32");
    let hex = keys.secret_key().to_secret_hex();
    let account = "[[accounts]]\nname = \"a\"\nprovider = \"lnvps\"\n";
    let stable = "[[accounts]]\nname = \"s\"\nprovider = \"stablevps\"\n";
    let long_name = "x".repeat(900_000);
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "key in nsec_file",
            format!("{account}nsec_file = {nsec:?}\n"),
            Some(&nsec),
            "accounts[0].nsec_file",
        ),
        (
            "hex key in nsec_env",
            format!("{account}nsec_env = {hex:?}\n"),
            Some(&hex),
            "accounts[0].nsec_env",
        ),
        (
            "unquoted key in the TOML snippet",
            format!("{account}nsec = {nsec}\n"),
            Some(&nsec),
            "line 4, column 8, key nsec",
        ),
        (
            "key in a type error",
            format!("poll_interval = {nsec:?}\n{account}nsec_env = \"K\"\n"),
            Some(&nsec),
            "poll_interval",
        ),
        (
            "hex key in a type error",
            format!("{account}nsec_env = \"K\"\nprobe_port = {hex:?}\n"),
            Some(&hex),
            "accounts[0].probe_port",
        ),
        (
            "API key in api_key_file",
            format!("{stable}api_key_file = {READ_KEY:?}\n"),
            Some(READ_KEY),
            "accounts[0].api_key_file",
        ),
        (
            "API key in api_key_env",
            format!("{stable}api_key_env = {WRITE_KEY:?}\n"),
            Some(WRITE_KEY),
            "accounts[0].api_key_env",
        ),
        (
            "unquoted password in the TOML snippet",
            format!(
                "{account}nsec_env = \"K\"\n[email]\nsmtp_host = \"127.0.0.1\"\n\
                 password = {SMTP_PASSWORD}\n"
            ),
            Some(SMTP_PASSWORD),
            "line 7, column 12, key password",
        ),
        (
            "password in password_file",
            format!(
                "{account}nsec_env = \"K\"\n[email]\nsmtp_host = \"127.0.0.1\"\n\
                 username = \"u\"\npassword_file = {SMTP_PASSWORD:?}\n\
                 from = \"a@example.test\"\nto = [\"b@example.test\"]\n"
            ),
            Some(SMTP_PASSWORD),
            "email.password_file",
        ),
        (
            "password in password_env",
            format!(
                "{account}nsec_env = \"K\"\n[email]\nsmtp_host = \"127.0.0.1\"\n\
                 username = \"u\"\npassword_env = {SMTP_PASSWORD:?}\n\
                 from = \"a@example.test\"\nto = [\"b@example.test\"]\n"
            ),
            Some(SMTP_PASSWORD),
            "email.password_env",
        ),
        (
            "a 900 KB name",
            format!("[[accounts]]\nname = {long_name:?}\nprovider = \"lnvps\"\nnsec_env = \"K\"\n"),
            None,
            "accounts[0].name",
        ),
    ];
    let file = dir.path().join("vpswatch.toml");
    let cfg = file.display().to_string();
    for (what, text, secret, key) in &cases {
        std::fs::write(&file, text).expect("write");
        for args in [
            vec!["check-config", cfg.as_str()],
            vec!["run", "--config", cfg.as_str()],
        ] {
            let (code, out, err) = vpswatch(&args);
            let all = format!("{out}{err}");
            assert_eq!(code, 2, "{what}, {args:?}: {all}");
            assert!(
                all.contains(key),
                "{what}, {args:?}: {key} not named: {all}"
            );
            assert!(
                !secret.is_some_and(|s| holds_part_of(&all, s)),
                "{what}, {args:?}: the value is echoed: {all}"
            );
            assert!(
                !all.contains(&"x".repeat(65)) && all.len() < 4096,
                "{what}, {args:?}: an echo is not capped ({} bytes)",
                all.len()
            );
        }
    }
    // The long value is shown capped, with its size.
    std::fs::write(&file, &cases[cases.len() - 1].1).expect("write");
    let (_, _, err) = vpswatch(&["check-config", &cfg]);
    assert!(err.contains("(900000 bytes)"), "{err}");
}
