//! deploy/ and grafana/ checked with the real tools:
//!
//! - Prometheus rules: `promtool check rules`, `promtool test rules` (the unit tests in
//!   deploy/prometheus/vpswatch.rules.test.yml), and a scan that every alert has a firing
//!   and a silent test case, a severity, and a runbook_url whose anchor is a heading of
//!   docs/alerts.md; every link from deploy/ and grafana/ into the docs resolves.
//! - `promtool check config` on the example prometheus.yml; `amtool check-config` and
//!   `amtool config routes test` on the example alertmanager.yml, and a real
//!   Alertmanager running it to show that its inhibit rules inhibit.
//! - systemd: `systemd-analyze verify` and `systemd-analyze security --offline` on the
//!   unit when systemd-analyze exists here; the unit and its example config agree, and
//!   the config passes `vpswatch check-config`.
//! - Containerfile: no engine can build it here, so its structure is linted, its build
//!   context is shown to satisfy Cargo, and its HEALTHCHECK command runs against a real
//!   vpswatch.
//! - Grafana: the dashboard's structure, and end to end: `vpswatch demo` scraped by a
//!   real Prometheus that loads the rules; every dashboard query must return series and
//!   the demo's scenario must make the expected alerts pending or firing, and no others.
//!
//! Missing tools fail the tests with the Debian package to install (`bash .ci/run`
//! installs them); only systemd-analyze is optional, as the unit's checks need systemd.

use crate::common::free_port;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// ── helpers ──────────────────────────────────────────────────────────────────────────

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The path of `name` on PATH, or a failure that says which Debian package has it.
fn tool(name: &str, package: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: this test needs the real tool. Install the Debian \
             package: apt-get install -y --no-install-recommends {package} (bash .ci/run \
             does this)"
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs a command to completion; fails the test with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn client() -> reqwest::Client {
    vpswatch::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Kills a child process when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Alert names in the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Where the shipped artefacts link into this repository's documentation.
const DOCS_URL: &str = "https://github.com/vpswatch/vpswatch/blob/main/";

// ── Prometheus rules ─────────────────────────────────────────────────────────────────

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let promtool = tool("promtool", "prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "vpswatch.rules.yml"])
            .current_dir(repo("deploy/prometheus")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let n = alert_names(&read("deploy/prometheus/vpswatch.rules.yml")).len();
    assert!(n >= 15, "only {n} alerts");
    assert!(text.contains("SUCCESS"), "{text}");

    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "vpswatch.rules.test.yml"])
            .current_dir(repo("deploy/prometheus")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every alert: at least one unit-test case where it fires and one where it must stay
/// silent; a severity of critical, warning or info; summary, description and a
/// runbook_url pointing at its heading in docs/alerts.md; a row in that file's threshold
/// table.
#[test]
fn every_alert_is_tested_both_ways_and_has_a_runbook() {
    let rules = read("deploy/prometheus/vpswatch.rules.yml");
    let tests = read("deploy/prometheus/vpswatch.rules.test.yml");
    let runbook = read("docs/alerts.md");
    let anchors = crate::common::docs::anchors(&runbook);

    // The test file's layout (documented at its top): `alertname:` lines, each followed
    // by `exp_alerts: []` (a silent case) or `exp_alerts:` + entries (a firing case).
    let mut fires: BTreeMap<String, usize> = BTreeMap::new();
    let mut silent: BTreeMap<String, usize> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if t.starts_with("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            let map = if t == "exp_alerts: []" {
                &mut silent
            } else {
                &mut fires
            };
            *map.entry(name).or_default() += 1;
        }
    }

    // Split the rules file into one chunk per alert.
    let mut chunks: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            chunks.push((name.trim().to_string(), String::new()));
        } else if line.trim().starts_with("- record:") || line.trim().starts_with("- name:") {
            chunks.push((String::new(), String::new()));
        } else if let Some((_, body)) = chunks.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let chunks: Vec<_> = chunks.into_iter().filter(|(n, _)| !n.is_empty()).collect();
    assert_eq!(
        chunks.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        alert_names(&rules)
    );

    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (name, body) in &chunks {
        if !seen.insert(name.clone()) {
            problems.push(format!("{name}: defined twice"));
        }
        if fires.get(name).copied().unwrap_or(0) == 0 {
            problems.push(format!("{name}: no unit test where it fires"));
        }
        if silent.get(name).copied().unwrap_or(0) == 0 {
            problems.push(format!("{name}: no unit test where it stays silent"));
        }
        let severity = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim);
        if !matches!(severity, Some("critical" | "warning" | "info")) {
            problems.push(format!("{name}: severity {severity:?}"));
        }
        for key in ["summary:", "description:"] {
            if !body.lines().any(|l| l.trim().starts_with(key)) {
                problems.push(format!("{name}: no {key}"));
            }
        }
        let url = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url:"))
            .map(str::trim);
        let Some(url) = url else {
            problems.push(format!("{name}: no runbook_url"));
            continue;
        };
        let anchor = name.to_lowercase();
        let want = format!("{DOCS_URL}docs/alerts.md#{anchor}");
        if url != want {
            problems.push(format!("{name}: runbook_url {url} should be {want}"));
        }
        if !anchors.contains(&anchor) {
            problems.push(format!("{name}: docs/alerts.md has no heading `{name}`"));
        }
        if !runbook.contains(&format!("| [`{name}`](#{anchor}) |")) {
            problems.push(format!(
                "{name}: not in docs/alerts.md's alert threshold table"
            ));
        }
    }
    for name in fires.keys().chain(silent.keys()) {
        if !seen.contains(name) {
            problems.push(format!("the unit tests name an unknown alert {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every documentation link in deploy/ and grafana/ (runbook URLs, the unit's
/// `Documentation=`, the dashboard's links, the rules' unit-test expectations) names a
/// file of this repository and a heading that exists in it.
#[test]
fn documentation_links_in_the_artefacts_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in [
        "deploy/prometheus/vpswatch.rules.yml",
        "deploy/prometheus/vpswatch.rules.test.yml",
        "deploy/alertmanager/alertmanager.yml",
        "deploy/systemd/vpswatch.service",
        "grafana/vpswatch.json",
    ] {
        let text = read(file);
        for (i, _) in text.match_indices(DOCS_URL) {
            let target: String = text[i + DOCS_URL.len()..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ')' | ','))
                .collect();
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            if !repo(path).is_file() {
                problems.push(format!("{file}: {target}: no file {path}"));
            } else if !anchor.is_empty()
                && !crate::common::docs::file_anchors(path).contains(anchor)
            {
                problems.push(format!("{file}: {target}: {path} has no heading #{anchor}"));
            }
        }
    }
    assert!(checked >= 20, "only {checked} documentation links found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ── Prometheus and Alertmanager configuration ────────────────────────────────────────

#[test]
fn promtool_accepts_the_example_prometheus_config() {
    let promtool = tool("promtool", "prometheus");
    // Checked in place: its rule_files entry is relative to the file.
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(repo("deploy/prometheus")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 rule files found"), "{text}");

    let config = read("deploy/prometheus/prometheus.yml");
    for needle in [
        "- vpswatch.rules.yml",
        "alertmanagers:",
        "job_name: vpswatch\n",
        "targets: [\"127.0.0.1:10047\"]",
        "scheme: https",
        "ca_file:",
        "basic_auth:",
        "password_file:",
    ] {
        assert!(config.contains(needle), "prometheus.yml lacks {needle:?}");
    }
    // VpswatchDown finds the exporter by job name.
    for job in config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- job_name:"))
    {
        assert!(job.trim().starts_with("vpswatch"), "job {job}");
    }
}

#[test]
fn amtool_accepts_the_example_alertmanager_config_and_routes_by_severity() {
    let amtool = tool("amtool", "prometheus-alertmanager");
    let dir = repo("deploy/alertmanager");
    let out = run_ok(
        Command::new(&amtool)
            .args(["check-config", "alertmanager.yml"])
            .current_dir(&dir),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SUCCESS") && text.contains("4 inhibit rules"),
        "{text}"
    );

    for (labels, receivers) in [
        (&["alertname=VpsExpiringSoon", "severity=info"][..], "null"),
        (
            &[
                "alertname=VpsNotRunning",
                "severity=warning",
                "provider=lnvps",
            ][..],
            "ops-email",
        ),
        (
            &["alertname=VpswatchDown", "severity=critical"][..],
            "ops-email",
        ),
        (
            &["alertname=VpsWalletRunwayLow", "severity=warning"][..],
            "billing-email",
        ),
        (
            &["alertname=VpsExpiringVerySoon", "severity=critical"][..],
            "billing-email,ops-email",
        ),
        // Alert-driven actions reach vpswatch's webhook, and people too.
        (
            &[
                "alertname=VpsUnhealthy",
                "severity=critical",
                "provider=lnvps",
                "vm=1",
            ][..],
            "vpswatch-actions,ops-email",
        ),
    ] {
        run_ok(
            Command::new(&amtool)
                .args(["config", "routes", "test", "--config.file=alertmanager.yml"])
                .arg(format!("--verify.receivers={receivers}"))
                .args(labels)
                .current_dir(&dir),
        );
    }
}

/// The webhook receiver of the example: bearer token from a file, resolved notifications
/// on, vpswatch's path; and the example alert it is meant for passes `promtool check rules`.
#[test]
fn the_example_webhook_receiver_and_its_alert_rule_are_valid() {
    let config = read("deploy/alertmanager/alertmanager.yml");
    for needle in [
        "url: http://127.0.0.1:10047/api/v1/alertmanager",
        "send_resolved: true",
        "credentials_file: /etc/alertmanager/vpswatch.token",
    ] {
        assert!(config.contains(needle), "alertmanager.yml lacks {needle:?}");
    }
    let promtool = tool("promtool", "prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "vpswatch-actions.rules.yml"])
            .current_dir(repo("deploy/prometheus")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 1 rules found"), "{text}");
}

/// The example alertmanager.yml in a real Alertmanager: a provider outage inhibits the
/// per-VM condition alerts of that account (not another account's, not billing alerts),
/// and the sharper expiry alert inhibits the milder one.
#[tokio::test]
async fn alertmanager_inhibits_vm_alerts_of_an_unreachable_account() {
    let bin = tool("prometheus-alertmanager", "prometheus-alertmanager");
    let http = client();
    // The example as shipped, except for where mail would go: nowhere but loopback.
    let config = read("deploy/alertmanager/alertmanager.yml");
    let smtp_port = free_port();
    assert!(config.contains("smtp_smarthost: smtp.example.com:587"));
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("smtp.password");
    std::fs::write(&password, "secret").expect("password file");
    let config = config
        .replace(
            "smtp_smarthost: smtp.example.com:587",
            &format!("smtp_smarthost: 127.0.0.1:{smtp_port}"),
        )
        .replace(
            "/etc/alertmanager/smtp.password",
            &password.display().to_string(),
        );
    let config_file = dir.path().join("alertmanager.yml");
    std::fs::write(&config_file, config).expect("config");

    let mut am = None;
    let mut last_log = String::new();
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start alertmanager");
        let mut child = Proc(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                break false;
            }
            let r = http.get(format!("{url}/-/ready")).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if ready {
            am = Some((child, url));
            break;
        }
        last_log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    }
    let Some((_am, url)) = am else {
        panic!("Alertmanager never became ready:\n{last_log}");
    };

    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    let alert = |labels: Value| {
        json!({"labels": labels, "annotations": {}, "startsAt": at(now),
               "endsAt": at(now + chrono::Duration::hours(1))})
    };
    let alerts = json!([
        alert(
            json!({"alertname": "VpswatchProviderDown", "severity": "critical",
                     "provider": "lnvps", "account": "main"})
        ),
        alert(json!({"alertname": "VpsNotRunning", "severity": "warning",
                     "provider": "lnvps", "account": "main", "vm": "1", "state": "stopped"})),
        alert(
            json!({"alertname": "VpsProbeFailing", "severity": "critical",
                     "provider": "lnvps", "account": "main", "vm": "2", "port": "22"})
        ),
        alert(json!({"alertname": "VpsNotRunning", "severity": "warning",
                     "provider": "lnvps", "account": "other", "vm": "7", "state": "stopped"})),
        alert(
            json!({"alertname": "VpsWalletRunwayLow", "severity": "warning",
                     "provider": "lnvps", "account": "main"})
        ),
        alert(
            json!({"alertname": "VpsExpiringVerySoon", "severity": "critical",
                     "provider": "lnvps", "account": "other", "vm": "7"})
        ),
        alert(json!({"alertname": "VpsExpiringSoon", "severity": "info",
                     "provider": "lnvps", "account": "other", "vm": "7"})),
        alert(json!({"alertname": "VpsExpiringSoon", "severity": "info",
                     "provider": "lnvps", "account": "other", "vm": "8"})),
    ]);
    let r = http
        .post(format!("{url}/api/v2/alerts"))
        .header("content-type", "application/json")
        .body(alerts.to_string())
        .send()
        .await
        .expect("alerts posted");
    assert!(r.status().is_success(), "{}", r.status());

    // (alertname, account, vm) → expected state
    let want: BTreeMap<(&str, &str, &str), &str> = [
        (("VpswatchProviderDown", "main", ""), "active"),
        (("VpsNotRunning", "main", "1"), "suppressed"),
        (("VpsProbeFailing", "main", "2"), "suppressed"),
        (("VpsNotRunning", "other", "7"), "active"),
        (("VpsWalletRunwayLow", "main", ""), "active"),
        (("VpsExpiringVerySoon", "other", "7"), "active"),
        (("VpsExpiringSoon", "other", "7"), "suppressed"),
        (("VpsExpiringSoon", "other", "8"), "active"),
    ]
    .into_iter()
    .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = http
            .get(format!("{url}/api/v2/alerts"))
            .send()
            .await
            .expect("alerts listed")
            .text()
            .await
            .expect("body");
        let got: Vec<Value> = serde_json::from_str(&text).expect("json");
        let states: BTreeMap<(String, String, String), String> = got
            .iter()
            .map(|a| {
                let l = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
                (
                    (l("alertname"), l("account"), l("vm")),
                    a["status"]["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let matches = want.len() == states.len()
            && want.iter().all(|((n, a, v), s)| {
                states
                    .get(&(n.to_string(), a.to_string(), v.to_string()))
                    .is_some_and(|g| g == s)
            });
        if matches {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager states {states:#?}, want {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ── systemd ──────────────────────────────────────────────────────────────────────────

/// `Key=value` lines of a unit (comments skipped), in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_unit_is_hardened_and_matches_its_example_config() {
    let unit = read("deploy/systemd/vpswatch.service");
    let settings = unit_settings(&unit);
    let get = |k: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "vpswatch"),
        ("ConfigurationDirectory", "vpswatch"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        (
            "ExecStart",
            "/usr/local/bin/vpswatch run --config /etc/vpswatch/vpswatch.toml",
        ),
    ] {
        assert!(
            get(key).contains(&value),
            "{key}={value} missing; have {:?}",
            get(key)
        );
    }
    for key in ["RestartSec", "RestartSteps", "RestartMaxDelaySec"] {
        assert_eq!(get(key).len(), 1, "{key}");
    }

    // Every credential the unit loads is used by the config, and every secret path in
    // the config is a credential the unit loads.
    let config = read("deploy/systemd/vpswatch.toml");
    let prefix = "/run/credentials/vpswatch.service/";
    let loaded: BTreeSet<&str> = get("LoadCredential")
        .iter()
        .map(|v| v.split_once(':').expect("ID:PATH").0)
        .collect();
    let used: BTreeSet<&str> = config
        .match_indices(prefix)
        .map(|(i, _)| {
            let rest = &config[i + prefix.len()..];
            &rest[..rest.find('"').expect("quoted path")]
        })
        .collect();
    assert!(!loaded.is_empty());
    assert_eq!(loaded, used, "LoadCredential IDs vs paths in vpswatch.toml");
    for v in get("LoadCredential") {
        let (id, path) = v.split_once(':').unwrap();
        assert_eq!(path, format!("/etc/vpswatch/credentials/{id}"), "{v}");
    }
    assert!(config.contains("state_dir = \"/var/lib/vpswatch\""));
}

/// The example config, with its credential paths pointing at real files, passes
/// `vpswatch check-config` (the binary), as the unit would see it.
#[test]
fn example_config_passes_check_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).expect("dir");
    let write = |name: &str, content: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = creds.join(name);
        std::fs::write(&p, content).expect("secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    write("lnvps-main.nsec", &"01".repeat(32));
    write(
        "stablevps-shop.read.key",
        "svps_live_readreadreadreadreadread0001",
    );
    write(
        "stablevps-shop.full.key",
        "svps_live_fullfullfullfullfullfull0002",
    );
    write("smtp.password", "not-a-real-password");
    let config = read("deploy/systemd/vpswatch.toml")
        .replace(
            "/run/credentials/vpswatch.service",
            &creds.display().to_string(),
        )
        .replace("/var/lib/vpswatch", &dir.path().display().to_string());
    let file = dir.path().join("vpswatch.toml");
    std::fs::write(&file, config).expect("config");
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_vpswatch"))
            .arg("check-config")
            .arg(&file),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OK (2 accounts, 4 rules; email via smtp.example.com:587)"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
}

/// `systemd-analyze verify` and `security --offline` on the unit (ExecStart pointed at
/// the built binary: verify insists that it exists). Needs systemd; without
/// systemd-analyze on this machine the check is reported as not run.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!(
            "NOTE: systemd-analyze is not installed here: deploy/systemd/vpswatch.service \
             was NOT verified by systemd (only its settings were checked)"
        );
        return;
    };
    let version_out = run_ok(Command::new(&analyze).arg("--version"));
    let version: u32 = String::from_utf8_lossy(&version_out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemd version");
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("vpswatch.service");
    std::fs::write(
        &unit,
        read("deploy/systemd/vpswatch.service")
            .replace("/usr/local/bin/vpswatch", env!("CARGO_BIN_EXE_vpswatch")),
    )
    .expect("unit");

    // systemd < 254 does not know the restart backoff keys: the only warnings allowed.
    let allowed = |line: &str| {
        version < 254
            && (line.contains("Unknown key 'RestartSteps'")
                || line.contains("Unknown key 'RestartMaxDelaySec'"))
    };
    let out = run_ok(Command::new(&analyze).arg("verify").arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !allowed(l))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains:\n{}",
        complaints.join("\n")
    );

    if version >= 250 {
        let out = run_ok(
            Command::new(&analyze)
                .args(["security", "--offline=yes", "--no-pager"])
                .arg(&unit),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split("Overall exposure level for vpswatch.service:")
                    .nth(1)
            })
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
        assert!(score <= 1.5, "exposure {score} (want ≤ 1.5):\n{text}");
    }
}

// ── Containerfile ────────────────────────────────────────────────────────────────────

/// Instructions of a Containerfile with continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let (op, args) = pending.split_once(' ').unwrap_or((&pending, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        pending.clear();
    }
    out
}

/// The HEALTHCHECK's exec-form command.
fn healthcheck_command(text: &str) -> Vec<String> {
    let (_, args) = instructions(text)
        .into_iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    let json_part = &args[args.find("CMD").expect("CMD") + 3..];
    serde_json::from_str(json_part.trim()).expect("HEALTHCHECK CMD in exec (JSON) form")
}

#[test]
fn containerfile_is_multi_stage_non_root_with_a_healthcheck() {
    let text = read("deploy/Containerfile");
    let ins = instructions(&text);
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].ends_with(" AS build"));
    assert!(froms[1].contains("debian:") && froms[1].contains("slim"));
    for f in &froms {
        assert!(!f.contains(":latest"), "pin base images: {f}");
    }
    // The final stage: everything after the second FROM.
    let last_from = ins.iter().rposition(|(op, _)| op == "FROM").expect("FROM");
    let runtime = &ins[last_from..];
    let build = &ins[..last_from];
    let find = |stage: &[(String, String)], op: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    };
    assert!(find(build, "RUN")
        .iter()
        .any(|r| r.contains("cargo build --release --locked")));
    assert!(find(runtime, "COPY")
        .iter()
        .any(|c| c.starts_with("--from=build ")));
    assert!(
        !find(runtime, "RUN").iter().any(|r| r.contains("cargo")),
        "no toolchain in the runtime stage"
    );
    let users = find(runtime, "USER");
    assert_eq!(users.len(), 1, "{users:?}");
    let user = users[0].split(':').next().unwrap();
    assert!(
        !matches!(user, "0" | "root") && user.parse::<u32>().is_ok_and(|u| u >= 1000),
        "runtime USER must be a numeric non-root uid, not {user}"
    );
    assert_eq!(find(runtime, "EXPOSE"), ["10047"]);
    assert_eq!(
        find(runtime, "ENTRYPOINT"),
        ["[\"/usr/local/bin/vpswatch\"]"]
    );
    assert!(find(runtime, "VOLUME")
        .iter()
        .any(|v| v.contains("/var/lib/vpswatch")));
    let hc = find(runtime, "HEALTHCHECK");
    assert_eq!(hc.len(), 1);
    let cmd = healthcheck_command(&text);
    assert!(
        cmd.join(" ").ends_with("http://127.0.0.1:10047/-/healthy"),
        "{cmd:?}"
    );
    // busybox is what runs it, so the runtime stage must install it.
    assert_eq!(cmd[0], "busybox");
    assert!(find(runtime, "RUN")
        .iter()
        .any(|r| r.contains("apt-get install") && r.contains("busybox")));

    // Every COPY source of the build stage exists, and those files alone satisfy Cargo
    // (a manifest whose targets are missing fails before anything compiles; asking for
    // a binary that does not exist stops right after the manifest is read).
    let ctx = tempfile::tempdir().expect("temp dir");
    for copy in find(build, "COPY") {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        assert!(!parts[0].starts_with("--from"), "{copy}");
        for src in &parts[..parts.len() - 1] {
            let from = repo(src);
            assert!(from.exists(), "COPY source {src} does not exist");
            let status = Command::new("cp")
                .arg("-r")
                .arg(&from)
                .arg(ctx.path())
                .status()
                .expect("cp");
            assert!(status.success());
        }
    }
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "--offline",
            "--bin",
            "containerfile-probe",
        ])
        .arg("--target-dir")
        .arg(ctx.path().join("target"))
        .current_dir(ctx.path())
        .output()
        .expect("cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no bin target named `containerfile-probe`") && stderr.contains("vpswatch"),
        "the Containerfile's build context does not satisfy Cargo:\n{stderr}"
    );
}

/// The HEALTHCHECK command, exactly as written (busybox wget), against a real vpswatch:
/// it succeeds while /-/healthy answers and fails when nothing listens or the path 404s.
#[tokio::test]
async fn containerfile_healthcheck_command_works() {
    let busybox = tool("busybox", "busybox");
    let cmd = healthcheck_command(&read("deploy/Containerfile"));
    let run_check = |addr: &str, path: &str| -> Output {
        let args: Vec<String> = cmd[1..]
            .iter()
            .map(|a| {
                a.replace("127.0.0.1:10047", addr)
                    .replace("/-/healthy", path)
            })
            .collect();
        Command::new(&busybox)
            .args(&args)
            .output()
            .expect("busybox")
    };

    // vpswatch with one account whose API is not there: it serves /-/healthy anyway.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("vpswatch.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[probes]\nenabled = false\n[[accounts]]\nname = \"a\"\n\
             provider = \"lnvps\"\nbase_url = \"http://127.0.0.1:{}\"\nnsec_env = \"HC_NSEC\"\n",
            dir.path().display(),
            free_port()
        ),
    )
    .expect("config");
    let http = client();
    let mut served = None;
    for _ in 0..3 {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
            .args(["--log.level", "error", "run", "--config"])
            .arg(&config)
            .args(["--web.listen-address", &addr])
            .env("HC_NSEC", "01".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vpswatch");
        let mut child = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let up = loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                break false;
            }
            let r = http.get(format!("http://{addr}/-/healthy")).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if up {
            served = Some((child, addr));
            break;
        }
    }
    let (_vpswatch, addr) = served.expect("vpswatch never served /-/healthy");

    let ok = run_check(&addr, "/-/healthy");
    assert!(
        ok.status.success(),
        "healthcheck failed against a healthy vpswatch: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Failing means exit status 1, as wget reports errors (not a crash).
    let missing = run_check(&addr, "/-/no-such-endpoint");
    assert_eq!(
        missing.status.code(),
        Some(1),
        "an HTTP 404 must fail the check"
    );
    let refused = run_check(&format!("127.0.0.1:{}", free_port()), "/-/healthy");
    assert_eq!(
        refused.status.code(),
        Some(1),
        "nothing listening must fail the check"
    );
}

// ── Grafana ──────────────────────────────────────────────────────────────────────────

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/vpswatch.json")).expect("grafana/vpswatch.json is JSON")
}

/// Panels, including those nested in collapsed rows.
fn all_panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

/// (panel title, refId, expr) of every query of every panel.
fn panel_queries(d: &Value) -> Vec<(String, String, String)> {
    all_panels(d)
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    (
                        title.clone(),
                        t["refId"].as_str().unwrap_or("").to_string(),
                        t["expr"].as_str().unwrap_or("").to_string(),
                    )
                })
        })
        .collect()
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(d["uid"], "vpswatch");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));

    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let panels = all_panels(&d);
    assert!(panels.len() >= 30, "{} panels", panels.len());
    let mut ids = HashSet::new();
    let mut areas: Vec<(String, i64, i64, i64, i64)> = Vec::new();
    let known_types = [
        "row",
        "stat",
        "timeseries",
        "table",
        "bargauge",
        "state-timeline",
    ];
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        let kind = p["type"].as_str().unwrap_or("");
        assert!(known_types.contains(&kind), "{title}: type {kind}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().unwrap(),
            g["y"].as_i64().unwrap(),
            g["w"].as_i64().unwrap(),
            g["h"].as_i64().unwrap(),
        );
        assert!(x >= 0 && w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for (other, ox, oy, ow, oh) in &areas {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        areas.push((title.clone(), x, y, w, h));
        if kind == "row" {
            continue;
        }
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{title}: no description"
        );
        assert_eq!(p["datasource"], ds, "{title}: panel datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        let mut refs = HashSet::new();
        for t in targets {
            assert_eq!(t["datasource"], ds, "{title}: target datasource");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()));
        }
    }

    // No hard-coded hosts, instances or jobs: everything comes from the variables.
    let text = read("grafana/vpswatch.json");
    for bad in [
        "instance=",
        "instance=~",
        "job=",
        "localhost",
        "127.0.0.1",
        ":10047",
        ":9090",
    ] {
        for (title, _, expr) in panel_queries(&d) {
            assert!(!expr.contains(bad), "{title}: {bad} in {expr}");
        }
    }
    assert!(
        !text.contains("\"uid\": \"prometheus\""),
        "a fixed datasource uid"
    );

    // Variables: the datasource one plus provider/account/vm from label_values; each
    // used somewhere else in the dashboard.
    let vars = d["templating"]["list"].as_array().expect("templating");
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "provider", "account", "vm"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    for v in &vars[1..] {
        assert_eq!(v["datasource"], ds);
        assert!(v["query"]["query"]
            .as_str()
            .is_some_and(|q| q.starts_with("label_values(")));
    }
    for v in vars {
        let name = v["name"].as_str().unwrap();
        let mut elsewhere = d.clone();
        elsewhere["templating"]["list"]
            .as_array_mut()
            .unwrap()
            .retain(|o| o["name"] != name);
        let rest = elsewhere.to_string();
        assert!(
            rest.contains(&format!("${name}")) || rest.contains(&format!("${{{name}}}")),
            "variable {name} is never used"
        );
    }
}

#[test]
fn grafana_provisioning_loads_the_dashboard() {
    let dashboards = read("grafana/provisioning/dashboards/vpswatch.yml");
    for needle in [
        "apiVersion: 1",
        "type: file",
        "path: /var/lib/grafana/dashboards/vpswatch",
    ] {
        assert!(
            dashboards.contains(needle),
            "dashboards provisioning lacks {needle}"
        );
    }
    let datasources = read("grafana/provisioning/datasources/prometheus.yml");
    for needle in ["apiVersion: 1", "type: prometheus", "url: http"] {
        assert!(
            datasources.contains(needle),
            "datasource provisioning lacks {needle}"
        );
    }
    // docs/deploy.md tells where to put the JSON: the same directory.
    assert!(read("docs/deploy.md").contains("/var/lib/grafana/dashboards/vpswatch/"));
}

// ── End to end: demo → Prometheus → rules and dashboard ──────────────────────────────

/// Dashboard queries that may legitimately return nothing in the demo, with the reason.
const EMPTY_IN_DEMO: &[(&str, &str)] = &[
    (
        "Watchdog errors",
        "vpswatch_watchdog_errors_total is created by the first internal error; the demo has none",
    ),
    ("Replicas", CLUSTER_ONLY),
    ("Accounts owned per replica", CLUSTER_ONLY),
    ("etcd lease", CLUSTER_ONLY),
    ("etcd errors", CLUSTER_ONLY),
    ("Ownership changes", CLUSTER_ONLY),
];

/// Why the Cluster row is empty in the demo (the cluster dashboard test fills it).
const CLUSTER_ONLY: &str = "the demo is one process without [cluster]";

/// Values for Grafana's variables when running the dashboard's queries: "All" for the
/// template variables, interval sizes that hold several 1 s scrapes and 5 s polls.
fn substitute(expr: &str) -> String {
    let values: BTreeMap<&str, &str> = [
        ("provider", ".*"),
        ("account", ".*"),
        ("vm", ".*"),
        ("__rate_interval", "30s"),
        ("__interval", "15s"),
        ("__range", "5m"),
    ]
    .into_iter()
    .collect();
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        if braced {
            rest = &rest[1..];
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let value = values
            .get(name)
            .unwrap_or_else(|| panic!("unknown variable ${name} in {expr}"));
        out.push_str(value);
        rest = &rest[end..];
        if braced {
            rest = rest.strip_prefix('}').expect("closing brace");
        }
    }
    out.push_str(rest);
    out
}

struct Prom {
    url: String,
    http: reqwest::Client,
}

impl Prom {
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.url), params).expect("url");
        let text = self
            .http
            .get(url)
            .send()
            .await
            .expect("Prometheus answers")
            .text()
            .await
            .expect("body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// An instant query: Ok(result vector) or Err(Prometheus' error).
    async fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let v = self.get("/api/v1/query", &[("query", q)]).await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn alerts(&self) -> Vec<Value> {
        let v = self.get("/api/v1/alerts", &[]).await;
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }
}

/// `vpswatch demo` (with its alert mails going to a port where nothing listens, so the
/// outbox metrics exist and fill up) scraped every second by a real Prometheus that
/// loads deploy/prometheus/vpswatch.rules.yml, evaluating every second.
#[tokio::test]
async fn demo_in_prometheus_feeds_every_dashboard_query_and_the_expected_alerts() {
    let prometheus = tool("prometheus", "prometheus");
    let http = client();

    let smtp = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args([
            "--log.level",
            "error",
            "demo",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .args(["--smtp", &smtp])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let mut demo = Proc(child);
    let stdout = demo.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("metrics:") {
                let _ = tx.send(line.split_whitespace().last().unwrap_or("").to_string());
            }
        }
    });
    let metrics_url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo printed its metrics URL");
    let target = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: vpswatch\n    static_configs:\n      - targets: [\"{target}\"]\n",
            repo("deploy/prometheus/vpswatch.rules.yml").display()
        ),
    )
    .expect("prometheus.yml");
    let mut started = None;
    let mut last_log = String::new();
    for attempt in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join(format!("data{attempt}")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut child = Proc(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                break false;
            }
            let r = http.get(format!("{url}/-/ready")).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if ready {
            started = Some((child, url));
            break;
        }
        last_log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    }
    let Some((_prometheus, url)) = started else {
        panic!("Prometheus never became ready:\n{last_log}");
    };
    let prom = Prom { url, http };

    // Wait until Prometheus holds what the scenario produces within its first half
    // minute: usage of running VMs, the wallet, the watchdog's reboot of the hung VM,
    // queued alert mails, and the rules' first pending alerts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for q in [
        "vps_cpu_usage_ratio",
        "vps_probe_success",
        "vps_wallet_runway_seconds",
        "vps_api_key_expiry_timestamp_seconds",
        "vpswatch_alert_outbox_messages > 0",
        "vpswatch_alerts_total",
        r#"vpswatch_actions_total{action="reboot",result="ok"}"#,
        r#"vpswatch_action_outcomes_total{outcome="recovered"}"#,
        "ALERTS",
        // rate() windows need a few samples of the 5 s polls.
        "rate(vpswatch_provider_requests_total[30s]) > 0",
    ] {
        loop {
            match prom.query(q).await {
                Ok(r) if !r.is_empty() => break,
                other => assert!(
                    Instant::now() < deadline,
                    "Prometheus never had {q}: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Every query of every dashboard panel: no errors, and series unless listed above.
    let d = dashboard();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (title, refid, expr) in panel_queries(&d) {
        let q = substitute(&expr);
        checked += 1;
        match prom.query(&q).await {
            Err(e) => failures.push(format!("{title} [{refid}]: {e}\n    {q}")),
            Ok(r) if r.is_empty() => {
                if !EMPTY_IN_DEMO.iter().any(|(t, _)| *t == title) {
                    failures.push(format!("{title} [{refid}]: no series\n    {q}"));
                }
            }
            Ok(_) => {
                if EMPTY_IN_DEMO.iter().any(|(t, _)| *t == title) {
                    failures.push(format!(
                        "{title} [{refid}]: listed as empty in the demo but has data: \
                         drop it from EMPTY_IN_DEMO"
                    ));
                }
            }
        }
    }
    // The variables' label_values() queries, as the series they read.
    for v in d["templating"]["list"].as_array().unwrap() {
        let Some(def) = v["query"]["query"].as_str() else {
            continue;
        };
        let inner = substitute(
            def.strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .expect("label_values(…)"),
        );
        let (selector, label) = inner.rsplit_once(',').expect("selector, label");
        let q = format!("count by ({}) ({selector})", label.trim());
        match prom.query(&q).await {
            Ok(r) if !r.is_empty() => {}
            other => failures.push(format!("variable {}: {other:?}\n    {q}", v["name"])),
        }
    }
    assert!(checked >= 50, "only {checked} queries");
    assert!(
        failures.is_empty(),
        "dashboard queries failing against the demo:\n{}",
        failures.join("\n")
    );

    // Every rule evaluates without error (e.g. no many-to-many matching on real data).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = prom.get("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let in_file = read("deploy/prometheus/vpswatch.rules.yml")
            .lines()
            .filter(|l| {
                let t = l.trim();
                t.starts_with("- alert:") || t.starts_with("- record:")
            })
            .count();
        assert_eq!(rules.len(), in_file, "rules loaded: {v}");
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if bad.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "rules not healthy: {bad:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fresh = prom
        .query("vpswatch:provider_fresh == 1")
        .await
        .expect("query");
    assert_eq!(
        fresh.len(),
        2,
        "both demo accounts have fresh data: {fresh:?}"
    );

    // The demo's scenario: LNVPS VM 4 expires within two days with auto-renewal on but
    // no saved payment method; VM 3 is stopped; the StableVPS wallet (20 EUR) runs
    // short within minutes; its API key expires in ten days. These alerts must be
    // pending (their `for` is minutes long) or firing.
    type Want = (&'static str, &'static [(&'static str, &'static str)]);
    let want: &[Want] = &[
        ("VpsExpiringSoon", &[("provider", "lnvps"), ("vm", "4")]),
        ("VpsExpiringVerySoon", &[("provider", "lnvps"), ("vm", "4")]),
        (
            "VpsAutoRenewalDisabled",
            &[
                ("provider", "lnvps"),
                ("vm", "4"),
                (
                    "reason",
                    "the account has no saved payment method to charge",
                ),
            ],
        ),
        (
            "VpsNotRunning",
            &[("provider", "lnvps"), ("vm", "3"), ("state", "stopped")],
        ),
        ("VpsWalletRunwayLow", &[("provider", "stablevps")]),
        ("VpsWalletRunwayCritical", &[("provider", "stablevps")]),
        (
            "VpsWalletBalanceLow",
            &[("provider", "stablevps"), ("currency", "EUR")],
        ),
        ("VpsApiKeyExpiringSoon", &[("provider", "stablevps")]),
    ];
    // And these must not be there at all: the exporter and both APIs are fine, the
    // watchdog healed what it touched, nothing has expired, and a VM being created is
    // not "down".
    let never = [
        "VpswatchDown",
        "VpswatchAbsent",
        "VpswatchProviderDown",
        "VpswatchProviderDataStale",
        "VpswatchWatchdogStalled",
        "VpswatchWatchdogGaveUp",
        "VpswatchActionFailed",
        "VpswatchStateStoreUnwritable",
        "VpsDeletionScheduled",
    ];
    let has = |a: &Value, name: &str, labels: &[(&str, &str)]| {
        a["labels"]["alertname"] == name && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let alerts = prom.alerts().await;
        let all_there = want
            .iter()
            .all(|(name, labels)| alerts.iter().any(|a| has(a, name, labels)));
        if all_there {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "expected alerts missing; have:\n{}",
            serde_json::to_string_pretty(&alerts).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for a in &alerts {
        let state = a["state"].as_str().unwrap_or("");
        assert!(matches!(state, "pending" | "firing"), "{a}");
        let name = a["labels"]["alertname"].as_str().unwrap_or("");
        assert!(!never.contains(&name), "{name} must not be active: {a}");
        assert!(
            !has(a, "VpsNotRunning", &[("vm", "5")]),
            "VM 5 is being created, not down: {a}"
        );
        // Annotations rendered without template errors.
        for key in ["summary", "description", "runbook_url"] {
            let text = a["annotations"][key].as_str().unwrap_or("");
            assert!(
                !text.is_empty() && !text.contains("<error") && !text.contains("{{"),
                "{name} {key}: {text:?}"
            );
        }
    }
    // The exporter-absent alert was pending only before the first scrape, if ever.
    assert!(prom
        .query(r#"ALERTS{alertname="VpswatchAbsent"}"#)
        .await
        .expect("query")
        .is_empty());
}

// ── deploy/ha: the local cluster script and the three example replicas ───────────────

/// `shellcheck` finds nothing in deploy/ha/run (the script that starts etcd, the
/// simulator and the replicas; `deploy_ha` runs it).
#[test]
fn shellcheck_accepts_the_ha_script() {
    let shellcheck = tool("shellcheck", "shellcheck");
    run_ok(Command::new(shellcheck).arg(repo("deploy/ha/run")));
}

/// The three example replicas differ only in what must differ per replica (member name,
/// source address, web address, the comment naming the host), and each passes
/// `vpswatch check-config` with its credential paths pointing at real files.
#[cfg(feature = "cluster")]
#[test]
fn ha_example_replicas_differ_only_per_replica_and_pass_check_config() {
    let per_replica = [
        "member = ",
        "source_address = ",
        "listen_address = ",
        "# /etc/",
    ];
    let shared = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !per_replica.iter().any(|p| l.starts_with(p)))
            .map(String::from)
            .collect()
    };
    let configs: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| read(&format!("deploy/ha/replica-{m}.toml")))
        .collect();
    for (m, text) in ["b", "c"].iter().zip(&configs[1..]) {
        assert_eq!(
            shared(text),
            shared(&configs[0]),
            "replica-{m}.toml vs replica-a.toml"
        );
    }
    let mut members = BTreeSet::new();
    for text in &configs {
        for key in ["member = ", "source_address = "] {
            let line = text.lines().find(|l| l.starts_with(key)).expect(key);
            assert!(members.insert(line.to_string()), "{line} twice");
        }
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).expect("dir");
    let pem = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
    for (name, content) in [
        ("lnvps-main.nsec", "01".repeat(32)),
        ("lnvps-shop.nsec", "02".repeat(32)),
        ("etcd-ca.pem", pem("CERTIFICATE")),
        ("etcd-client.pem", pem("CERTIFICATE")),
        ("etcd-client.key", pem("PRIVATE KEY")),
        (
            "nwc.uri",
            format!(
                "nostr+walletconnect://{}?relay=wss%3A%2F%2Frelay.example.com&secret={}",
                "03".repeat(32),
                "04".repeat(32)
            ),
        ),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let p = creds.join(name);
        std::fs::write(&p, content).expect("secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    for (m, text) in ["a", "b", "c"].iter().zip(&configs) {
        let file = dir.path().join(format!("{m}.toml"));
        let text = text
            .replace(
                "/run/credentials/vpswatch.service",
                &creds.display().to_string(),
            )
            .replace("/var/lib/vpswatch", &dir.path().display().to_string());
        std::fs::write(&file, text).expect("config");
        let out = run_ok(
            Command::new(env!("CARGO_BIN_EXE_vpswatch"))
                .arg("check-config")
                .arg(&file),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("OK (2 accounts, 1 rule)"),
            "replica-{m}: {text}"
        );
        assert!(!text.contains("warning"), "replica-{m}: {text}");
    }
}

// ── Grafana against replicas ─────────────────────────────────────────────────────────

/// A range query at 1 s steps: one entry per series, or Prometheus' error.
#[cfg(feature = "cluster")]
async fn query_range(prom: &Prom, q: &str, start: f64, end: f64) -> Result<Vec<Value>, String> {
    let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
    let v = prom
        .get(
            "/api/v1/query_range",
            &[
                ("query", q),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        )
        .await;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Two replicas (real etcd, real binaries, disjoint accounts) scraped by a real
/// Prometheus as one job; one is killed and its accounts move to the other. Over that
/// window every dashboard query evaluates, the Cluster row has data, the fleet totals
/// count each VM once, and the per-VM and per-account panels draw one series per VM or
/// account — not one per replica that exported it.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn dashboard_queries_sum_across_replicas_and_follow_a_moving_account() {
    use crate::common::daemon_process::spawn_logged;
    use crate::common::etcd::Etcd;
    use crate::common::prometheus::Prometheus;
    use vpswatch_sim::lnvps::{Scenario, VmState};

    tool("prometheus", "prometheus");
    vpswatch::tls::install_crypto_provider();
    let (accounts, per_account) = (4, 3);
    let sim = crate::common::lnvps_sim_with_vm_ports(
        Scenario::bench_accounts(accounts, per_account).expect("scenario"),
        free_port(),
    )
    .await;
    let running = sim
        .vms()
        .iter()
        .filter(|v| v.state == VmState::Running)
        .count();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut account_text = String::new();
    for i in 0..accounts {
        let key = dir.path().join(format!("acc{i}.nsec"));
        std::fs::write(&key, vpswatch_sim::scenario::bench_account_secret(i)).expect("key");
        account_text.push_str(&format!(
            "[[accounts]]\nname = \"acc{i}\"\nprovider = \"lnvps\"\nbase_url = \"{}\"\nnsec_file = {:?}\n",
            sim.base_url(),
            key.display().to_string()
        ));
    }
    let mut replicas = Vec::new();
    let mut targets = Vec::new();
    for (m, source) in [("a", "127.0.0.2"), ("b", "127.0.0.3")] {
        let port = free_port();
        let config = dir.path().join(format!("{m}.toml"));
        std::fs::write(
            &config,
            format!(
                "poll_interval = \"1s\"\nstate_dir = {:?}\n[web]\nlisten_address = \"127.0.0.1:{port}\"\n\
                 [probes]\ninterval = \"1s\"\ntimeout = \"300ms\"\n\
                 [cluster]\nendpoints = [\"{}\"]\nmember = \"{m}\"\nlease_ttl = \"2s\"\n\
                 source_address = \"{source}\"\n{account_text}",
                dir.path().join(format!("state-{m}")).display().to_string(),
                etcd.client_url
            ),
        )
        .expect("config");
        replicas.push(Some(spawn_logged(
            &config,
            &dir.path().join(format!("{m}.log")),
        )));
        targets.push(format!("\"127.0.0.1:{port}\""));
    }
    let prometheus = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: vpswatch\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
        &[],
    )
    .await;
    let prom = Prom {
        url: prometheus.url.clone(),
        http: prometheus.http.clone(),
    };
    let _prometheus = prometheus;
    let instant = |q: String| {
        let prom = &prom;
        async move { prom.query(&q).await.unwrap_or_default() }
    };
    let value = |r: &[Value]| -> Option<f64> { r.first()?["value"][1].as_str()?.parse().ok() };
    // Both replicas own a share, and every running VM has usage data in Prometheus.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let shares = instant("vpswatch_cluster_accounts_owned > 0".into())
            .await
            .len();
        let cpu = instant("count(vps_cpu_usage_ratio)".into()).await;
        // A few scrapes of each, so the window holds a's series before the kill.
        let scrapes = instant("min(count_over_time(up[1m]))".into()).await;
        if shares == 2
            && value(&cpu) == Some(running as f64)
            && value(&scrapes).is_some_and(|n| n >= 3.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never shared the accounts with data"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
        - 5.0;
    // kill -9 of a: b takes its accounts over; Prometheus sees b export them.
    replicas[0].take();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Prometheus saw a go (its series are stale) and b own everything.
        let scraped = instant("count(vpswatch_cluster_lease_up)".into()).await;
        let owned = instant("max(vpswatch_cluster_accounts_owned)".into()).await;
        let polled = instant("count(vpswatch_provider_up == 1)".into()).await;
        let cpu = instant("count(vps_cpu_usage_ratio)".into()).await;
        if value(&scraped) == Some(1.0)
            && value(&owned) == Some(accounts as f64)
            && value(&polled) == Some(accounts as f64)
            && value(&cpu) == Some(running as f64)
        {
            break;
        }
        assert!(Instant::now() < deadline, "b never took every account over");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();

    let d = dashboard();
    let queries: BTreeMap<String, String> = panel_queries(&d)
        .into_iter()
        .map(|(title, refid, expr)| (format!("{title} [{refid}]"), substitute(&expr)))
        .collect();
    let mut failures = Vec::new();
    for (name, q) in &queries {
        if let Err(e) = query_range(&prom, q, start, end).await {
            failures.push(format!("{name}: {e}\n    {q}"));
        }
    }
    // One series per VM (or account) over a window in which half the accounts moved
    // from one replica to the other.
    for (name, want) in [
        ("CPU [A]", running),
        ("Memory [A]", running),
        ("Network [A]", running),
        ("Probe result [A]", running),
        ("Polls [A]", accounts),
        ("Data age [A]", accounts),
        ("Poll duration and failures [A]", accounts),
        ("Time until expiry [A]", accounts * per_account),
        ("Expiry timeline [A]", accounts * per_account),
    ] {
        let q = queries
            .get(name)
            .unwrap_or_else(|| panic!("no panel query {name}"));
        match query_range(&prom, q, start, end).await {
            Ok(r) if r.len() == want => {}
            Ok(r) => failures.push(format!(
                "{name}: {} series, want {want}: {:?}\n    {q}",
                r.len(),
                r.iter()
                    .map(|s| s["metric"].to_string())
                    .collect::<Vec<_>>()
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    // Fleet totals count every VM once; the Cluster row has data.
    for (name, want) in [
        ("VMs running [A]", running as f64),
        ("Accounts polled OK [B]", accounts as f64),
        ("Accounts owned per replica [B]", accounts as f64),
    ] {
        let got = value(&instant(queries[name].clone()).await);
        if got != Some(want) {
            failures.push(format!("{name}: {got:?}, want {want}"));
        }
    }
    for name in [
        "Replicas [B]",
        "Replicas [C]",
        "etcd lease [A]",
        "etcd errors [A]",
        "Ownership changes [A]",
    ] {
        match prom.query(&queries[name]).await {
            Ok(r) if !r.is_empty() => {}
            other => failures.push(format!(
                "{name}: no series: {other:?}\n    {}",
                queries[name]
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard against two replicas:\n{}",
        failures.join("\n")
    );
    sim.shutdown();
}
