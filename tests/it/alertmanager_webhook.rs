//! Alertmanager-driven actions end to end (docs/watchdog.md#alertmanager-driven-actions):
//! a real Prometheus evaluates an alert rule on vpswatch's own metrics, two real
//! Alertmanager peers clustered on loopback both notify vpswatch's webhook, and the
//! simulator counts the restarts it receives. Direct posts cover authentication, bad
//! input, dry-run, maintenance windows and a restart of vpswatch between re-sends.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::alertmanager::Alertmanager;
use crate::common::prometheus::Prometheus;
use crate::common::{free_port, wait_for, Exposition, Harness, RecordingNotifier};
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{Scenario, VmSpec, VmState};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "am-webhook-token-for-tests";

/// A daemon watching `n` running VMs on 127.6.<subnet>.<i>, with the webhook on and the
/// given extra config (mappings, maintenance). Returns the harness, the global config
/// lines (for a restart) and the state/token directory.
async fn start(subnet: u8, n: u8, extra: &str) -> (Harness, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("am.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token written");
    let mut perms = std::fs::metadata(&token).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&token, perms).expect("chmod");
    let port = free_port();
    let globals = format!(
        r#"state_dir = {state:?}
[probes]
interval = "200ms"
timeout = "300ms"
[probes.ports]
lnvps = {port}
[alertmanager]
bearer_token_file = {token:?}
max_body_bytes = 8192
[[alertmanager.actions]]
name = "am-unhealthy"
alertname = "VpsUnhealthy"
action = "reboot"
cooldown = "3s"
patience = "2m"
{extra}
"#,
        state = dir.path().display().to_string(),
        token = token.display().to_string(),
    );
    let h = Harness::start_notifying(
        move |owner| {
            let vms = (1..=n)
                .map(|i| VmSpec {
                    owner: owner.to_string(),
                    state: VmState::Running,
                    ipv4: Some(Ipv4Addr::new(127, 6, subnet, i)),
                    ..VmSpec::default()
                })
                .collect();
            let mut s = Scenario {
                vms,
                ..Scenario::default()
            };
            s.settings.vm_listen_port = Some(port);
            s
        },
        &globals,
        Arc::new(SystemClock),
        Arc::new(RecordingNotifier::default()),
    )
    .await;
    h.wait_metrics("every VM answers its probe", T, |e| {
        (1..=n).all(|i| e.get("vps_probe_success", &[("vm", &i.to_string())]) == Some(1.0))
    })
    .await;
    (h, globals, dir)
}

fn restarts(h: &Harness, vm: u64) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.vm_id == Some(vm) && r.path.ends_with("restart"))
        .count()
}

fn am_requests(e: &Exposition, code: &str) -> Option<f64> {
    e.get("vpswatch_alertmanager_requests_total", &[("code", code)])
}

fn am_alerts(e: &Exposition, result: &str) -> f64 {
    e.get("vpswatch_alertmanager_alerts_total", &[("result", result)])
        .unwrap_or(0.0)
}

/// A version-4 notification with one alert.
fn payload(status: &str, alertname: &str, vm: &str, starts_at: &str) -> String {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"x\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "vpswatch",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [{
            "status": status,
            "labels": {"alertname": alertname, "provider": "lnvps", "account": "main", "vm": vm},
            "annotations": {"summary": "test"},
            "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": format!("fp-{alertname}-{vm}"),
        }],
    })
    .to_string()
}

/// Posts to the webhook; returns the status and the body.
async fn post(h: &Harness, token: Option<&str>, body: String) -> (u16, String) {
    let mut req = h
        .http
        .post(h.url("/api/v1/alertmanager"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("posted");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// The `result` of the single alert in a 200 answer.
fn result_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["alerts"][0]["result"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn webhook_refuses_bad_credentials_and_input_and_runs_every_guard() {
    let extra = r#"
[[alertmanager.actions]]
name = "am-dry"
alertname = "VpsDry"
action = "reboot"
dry_run = true

[[maintenance]]
name = "vm3-always"
start = "00:00"
end = "24:00"
[maintenance.match]
vms = ["3"]
"#;
    let (h, globals, dir) = start(1, 3, extra).await;
    let firing = payload("firing", "VpsUnhealthy", "1", "2030-01-01T00:00:00Z");

    // No credential, a wrong one, basic auth instead of the token: 401, nothing acted on.
    for token in [None, Some("wrong"), Some("am-webhook-token-for-test")] {
        let (status, _) = post(&h, token, firing.clone()).await;
        assert_eq!(status, 401, "token {token:?}");
    }
    let r = h
        .http
        .post(h.url("/api/v1/alertmanager"))
        .basic_auth("alertmanager", Some(TOKEN))
        .body(firing.clone())
        .send()
        .await
        .expect("posted");
    assert_eq!(r.status().as_u16(), 401, "basic auth is not configured");
    // An operator sees the refusals (a misconfigured token) on /metrics.
    let e = h
        .wait_metrics("the refused requests are counted", T, |e| {
            am_requests(e, "401") == Some(4.0)
        })
        .await;
    assert_eq!(am_requests(&e, "200"), Some(0.0), "{}", e.text);

    // Bad input: 400 with the reason, 413 over the limit.
    let (status, body) = post(&h, Some(TOKEN), "{".into()).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("not an Alertmanager webhook payload"),
        "{body}"
    );
    let (status, body) = post(&h, Some(TOKEN), firing.replace("\"4\"", "\"3\"")).await;
    assert_eq!(status, 400);
    assert!(body.contains("version \"3\""), "{body}");
    let big = firing.replace("\"test\"", &format!("\"{}\"", "x".repeat(9000)));
    let (status, _) = post(&h, Some(TOKEN), big).await;
    assert_eq!(status, 413);

    // The first accepted delivery acts: so none of the refused ones did.
    let (status, body) = post(&h, Some(TOKEN), firing.clone()).await;
    assert_eq!(
        (status, result_of(&body).as_str()),
        (200, "acted"),
        "{body}"
    );
    wait_for("the restart reached the simulator", T, || async {
        restarts(&h, 1) == 1
    })
    .await;
    // A re-send of the same episode (another peer, a repeat) does not act again.
    let (_, body) = post(&h, Some(TOKEN), firing.clone()).await;
    assert_eq!(result_of(&body), "duplicate", "{body}");

    // Dry run: journaled, not sent.
    let dry = payload("firing", "VpsDry", "2", "2030-01-01T00:00:00Z");
    let (_, body) = post(&h, Some(TOKEN), dry).await;
    assert_eq!(result_of(&body), "dry_run", "{body}");
    // A maintenance window covering VM 3 holds the action back.
    let (_, body) = post(
        &h,
        Some(TOKEN),
        payload("firing", "VpsUnhealthy", "3", "2030-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(result_of(&body), "skipped", "{body}");
    assert!(body.contains("maintenance window"), "{body}");
    // Labels that name no VM, an alert nothing maps.
    let (_, body) = post(
        &h,
        Some(TOKEN),
        payload("firing", "VpsUnhealthy", "99", "2030-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(result_of(&body), "unknown_vm", "{body}");
    let (_, body) = post(
        &h,
        Some(TOKEN),
        payload("firing", "DiskFull", "1", "2030-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(result_of(&body), "no_mapping", "{body}");

    let e = h
        .wait_metrics("webhook counters", T, |e| am_alerts(e, "no_mapping") == 1.0)
        .await;
    for (code, n) in [("200", 6.0), ("400", 2.0), ("401", 4.0), ("413", 1.0)] {
        assert_eq!(am_requests(&e, code), Some(n), "{code}\n{}", e.text);
    }
    for (result, n) in [
        ("acted", 1.0),
        ("duplicate", 1.0),
        ("dry_run", 1.0),
        ("skipped", 1.0),
        ("unknown_vm", 1.0),
    ] {
        assert_eq!(am_alerts(&e, result), n, "{result}\n{}", e.text);
    }
    let source = [("source", "alertmanager")];
    let with = |vm: &'static str, result: &'static str| {
        let mut l = vec![("vm", vm), ("result", result)];
        l.extend(source);
        e.get("vpswatch_actions_total", &l)
    };
    assert_eq!(with("2", "dry_run"), Some(1.0), "{}", e.text);
    assert_eq!(with("3", "skipped_maintenance"), Some(1.0), "{}", e.text);
    assert_eq!(
        restarts(&h, 2) + restarts(&h, 3),
        0,
        "dry run and maintenance never send"
    );

    let journal = h
        .http
        .get(h.url("/api/v1/actions"))
        .send()
        .await
        .expect("journal")
        .text()
        .await
        .expect("body");
    let journal: Value = serde_json::from_str(&journal).expect("json");
    let entries = journal["actions"].as_array().expect("actions");
    assert_eq!(entries.len(), 2, "{journal}");
    assert!(
        entries.iter().all(|a| a["source"] == "alertmanager"),
        "{journal}"
    );
    assert!(
        entries
            .iter()
            .any(|a| a["vm"] == "2" && a["status"] == "dry_run"),
        "{journal}"
    );

    // A restart of vpswatch between re-sends: the episode is in the journal.
    let Harness {
        sim,
        daemon,
        keys,
        http,
    } = h;
    drop(http);
    daemon.shutdown().await;
    let secret = keys.secret_key().to_secret_hex();
    let text = crate::common::config_text(&sim.base_url(), &globals);
    let config = vpswatch::config::parse(&text, "test", &|n| {
        (n == "TEST_NSEC").then(|| secret.clone())
    })
    .expect("config valid");
    let daemon = vpswatch::daemon::Daemon::start(config, Arc::new(SystemClock))
        .await
        .expect("daemon restarts");
    let h = Harness {
        sim,
        daemon,
        keys,
        http: reqwest::Client::new(),
    };
    h.wait_metrics("polled after the restart", T, |e| {
        e.get("vpswatch_provider_up", &[("account", "main")]) == Some(1.0)
    })
    .await;
    let (_, body) = post(&h, Some(TOKEN), firing.clone()).await;
    assert_eq!(result_of(&body), "duplicate", "{body}");
    // Resolved closes the episode; a late firing re-send of it stays a duplicate.
    let resolved = payload("resolved", "VpsUnhealthy", "1", "2030-01-01T00:00:00Z");
    let (_, body) = post(&h, Some(TOKEN), resolved).await;
    assert_eq!(result_of(&body), "resolved", "{body}");
    let (_, body) = post(&h, Some(TOKEN), firing).await;
    assert_eq!(result_of(&body), "duplicate", "{body}");
    assert_eq!(restarts(&h, 1), 1);
    h.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn prometheus_alert_through_two_clustered_alertmanagers_restarts_once_per_episode() {
    let (h, _globals, dir) = start(2, 1, "").await;
    // Long enough a boot that the episode stays firing through several re-sends.
    h.sim.set_reboot_duration(Duration::from_secs(6));
    let token = dir.path().join("am.token");
    let am_config = format!(
        r#"route:
  receiver: vpswatch
  group_by: [alertname, provider, account, vm]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: vpswatch
    webhook_configs:
      - url: http://{addr}/api/v1/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {token}
"#,
        addr = h.daemon.addr,
        token = token.display(),
    );
    let (p1, p2) = (free_port(), free_port());
    // Both peers must deliver every notification, as an HA pair does while its gossip
    // lags. In Alertmanager 0.25 a peer waits `peer_timeout × its position` before it
    // notifies, then skips the notification if the notification log already holds one
    // sent by a peer. Log entries travel as memberlist broadcasts: on each gossip tick,
    // piggybacked on every failure-detector probe (once a second by default), and in
    // the periodic full push/pull sync. With the defaults the second peer is
    // deduplicated now and then, so which peer delivered varied from run to run. Here
    // the peers join (membership and positions as in a real cluster) but none of those
    // three paths runs while the test does, so each peer delivers on its own, and the
    // tiny peer timeout keeps the second one from lagging behind a group interval.
    let peer = |listen: u16, other: u16| {
        vec![
            format!("--cluster.listen-address=127.0.0.1:{listen}"),
            format!("--cluster.peer=127.0.0.1:{other}"),
            "--cluster.peer-timeout=10ms".to_string(),
            "--cluster.gossip-interval=1h".to_string(),
            "--cluster.probe-interval=1h".to_string(),
            "--cluster.pushpull-interval=1h".to_string(),
            "--cluster.settle-timeout=1s".to_string(),
        ]
    };
    let am1 = Alertmanager::start_with(&am_config, &peer(p1, p2)).await;
    let am2 = Alertmanager::start_with(&am_config, &peer(p2, p1)).await;
    wait_for("the two Alertmanagers form a cluster", T, || async {
        let v: Value = match am1
            .http
            .get(format!("{}/api/v2/status", am1.url))
            .send()
            .await
        {
            Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default(),
            Err(_) => return false,
        };
        v["cluster"]["peers"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let prom_config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [actions.rules.yml]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{a1}", "{a2}"]
scrape_configs:
  - job_name: vpswatch
    static_configs:
      - targets: ["{addr}"]
"#,
        a1 = am1.url.trim_start_matches("http://"),
        a2 = am2.url.trim_start_matches("http://"),
        addr = h.daemon.addr,
    );
    let rules = r#"groups:
  - name: vpswatch-actions
    rules:
      - alert: VpsUnhealthy
        expr: vps_probe_success == 0
        for: 2s
        labels:
          severity: critical
        annotations:
          summary: "VM {{ $labels.vm }} does not answer on port {{ $labels.port }}"
"#;
    let prom = Prometheus::start(&prom_config, &[("actions.rules.yml", rules)]).await;
    let why = |h: &Harness| {
        format!(
            "\n--- am1 ---\n{}\n--- am2 ---\n{}\n--- prometheus ---\n{}\n--- sim actions ---\n{:?}",
            am1.log(),
            am2.log(),
            prom.log(),
            h.sim.actions()
        )
    };

    // Episode 1: the guest hangs; the alert fires; one restart cures it.
    h.sim.set_hung(1, true);
    h.wait_metrics("the first episode acted", T, |e| {
        am_alerts(e, "acted") == 1.0
    })
    .await;
    // Both peers and their repeats deliver the same episode again while the VM boots.
    let e = h
        .wait_metrics("re-sends of the first episode", T, |e| {
            am_alerts(e, "duplicate") >= 2.0
        })
        .await;
    // Each peer delivered the episode itself (its own counter of webhook notifications
    // sent), and the simulator still saw one restart.
    wait_for(
        "both Alertmanager peers delivered to vpswatch",
        T,
        || async {
            am1.webhook_notifications().await >= 1.0 && am2.webhook_notifications().await >= 1.0
        },
    )
    .await;
    assert_eq!(restarts(&h, 1), 1, "one restart per episode{}", why(&h));
    assert_eq!(
        e.get(
            "vpswatch_actions_total",
            &[("vm", "1"), ("result", "ok"), ("source", "alertmanager")]
        ),
        Some(1.0),
        "{}",
        e.text
    );
    // Recovery: Prometheus resolves, the peers send the resolved notification, and the
    // episode's action counts as recovered.
    h.wait_metrics("the resolved notification closed the episode", T, |e| {
        am_alerts(e, "resolved") >= 1.0
            && e.get(
                "vpswatch_action_outcomes_total",
                &[
                    ("vm", "1"),
                    ("outcome", "recovered"),
                    ("source", "alertmanager"),
                ],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(restarts(&h, 1), 1, "{}", why(&h));

    // Episode 2, after the cooldown: acts again, once.
    h.sim.set_hung(1, true);
    h.wait_metrics("the second episode acted", T, |e| {
        am_alerts(e, "acted") == 2.0
    })
    .await;
    wait_for("the second restart reached the simulator", T, || async {
        restarts(&h, 1) == 2
    })
    .await;
    h.wait_metrics("the second episode resolved", T, |e| {
        e.get(
            "vpswatch_action_outcomes_total",
            &[
                ("vm", "1"),
                ("outcome", "recovered"),
                ("source", "alertmanager"),
            ],
        ) == Some(2.0)
    })
    .await;
    assert_eq!(restarts(&h, 1), 2, "{}", why(&h));
    drop((prom, am1, am2));
    h.shutdown().await;
}
