//! The `vpswatch demo` binary end to end: it starts without configuration, serves
//! /metrics with both simulators' VMs, the output passes `promtool check metrics`, the
//! watchdog heals the VM that hangs, and SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn demo_serves_lint_clean_metrics_and_stops_on_sigterm() {
    let _slot = crate::common::demo_slot().await;
    vpswatch::tls::install_crypto_provider();
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args([
            "--log.level",
            "warn",
            "demo",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start demo");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading stdout to the end so the demo never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim_start();
            if line.starts_with("metrics:") || line.starts_with("alertmanager webhook:") {
                let _ = tx.send(line.to_string());
            }
        }
    });
    let line = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("demo printed the {what} line"))
    };
    let url = line("metrics")
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_string();
    // alertmanager webhook: <URL> (bearer token in <PATH>)
    let webhook = line("alertmanager webhook");
    let (hook_url, token_path) = webhook
        .strip_prefix("alertmanager webhook: ")
        .and_then(|r| r.split_once(" (bearer token in "))
        .map(|(u, p)| (u.to_string(), p.trim_end_matches(')').to_string()))
        .unwrap_or_else(|| panic!("webhook line: {webhook}"));

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let text = match client.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        // Wait until usage of the running VMs has arrived too.
        if text.contains("vps_cpu_usage_ratio{")
            && text.contains("vps_up{")
            && text.contains("vps_probe_success{")
            && text.contains("vps_wallet_runway_seconds{")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "demo never served VM metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for needle in [
        "vps_state{",
        "state=\"stopped\"} 1",
        "vps_expiry_timestamp_seconds{",
        "vps_renewal_price{",
        "vpswatch_provider_up{provider=\"lnvps\",account=\"demo\"} 1",
        "vpswatch_build_info{",
        // The demo's running VMs listen on their own addresses: probes succeed.
        "vps_probe_success{provider=\"lnvps\",account=\"demo\",vm=\"2\",port=\"2222\"} 1",
        // The StableVPS account: read key polling, full key for actions, a wallet.
        "vpswatch_provider_up{provider=\"stablevps\",account=\"demo-stablevps\"} 1",
        "vps_actions_enabled{provider=\"stablevps\",account=\"demo-stablevps\"} 1",
        "vps_wallet_balance{provider=\"stablevps\",account=\"demo-stablevps\",currency=\"EUR\"}",
        "vps_api_key_expiry_timestamp_seconds{provider=\"stablevps\",account=\"demo-stablevps\"}",
        "vps_renewal_price{provider=\"stablevps\",account=\"demo-stablevps\",",
        "vps_info{provider=\"stablevps\",account=\"demo-stablevps\",",
        // The standard process series of every exporter.
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_virtual_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "vpswatch_alertmanager_alerts_total{result=\"acted\"} 0",
    ] {
        assert!(body.contains(needle), "missing {needle} in:\n{body}");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package prometheus; scripts/test installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The demo's VM 1 hangs shortly after start; the watchdog reboots it and sees it
    // come back.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = match client.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let healed = text.lines().any(|l| {
            l.starts_with("vpswatch_action_outcomes_total{")
                && l.contains("vm=\"1\"")
                && l.contains("outcome=\"recovered\"")
        });
        if healed {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("vpswatch_actions_total{")
                        && l.contains("vm=\"1\"")
                        && l.contains("action=\"reboot\"")
                        && l.contains("result=\"ok\"")),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo's hung VM was not healed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The webhook: a hand-made firing VpsUnhealthy for running VM 2 restarts it once,
    // through the guards, and says so with source="alertmanager".
    let token = std::fs::read_to_string(&token_path).expect("the token file");
    let alert = serde_json::json!({
        "version": "4", "status": "firing", "receiver": "vpswatch", "groupKey": "demo",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "VpsUnhealthy", "provider": "lnvps", "account": "demo", "vm": "2"},
            "annotations": {}, "startsAt": "2030-01-01T00:00:00Z"
        }]
    });
    let r = client
        .post(&hook_url)
        .bearer_auth(token.trim())
        .body(alert.to_string())
        .send()
        .await
        .expect("webhook answered");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert!(
        status.is_success() && body.contains("\"acted\""),
        "{status} {body}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = client
            .get(&url)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .unwrap_or_default();
        if text.lines().any(|l| {
            l.starts_with("vpswatch_actions_total{")
                && l.contains("vm=\"2\"")
                && l.contains("result=\"ok\"")
                && l.contains("source=\"alertmanager\"")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no alert-driven restart:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM → graceful exit with status 0.
    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "demo exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the demo if the test fails half-way, so no process outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
