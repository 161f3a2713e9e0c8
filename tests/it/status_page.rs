//! The status page (`/`) and its JSON twin (`/api/v1/status`) in a real browser:
//! headless Chromium loads the page of a running `vpswatch demo` (the binary) and the
//! test reads the DOM it built — the demo's stopped VM among the problems, the expiring
//! VM's countdown, the StableVPS wallet's runway — and keeps a screenshot in the test
//! output (`VPSWATCH_UPDATE_SCREENSHOT=1` also rewrites docs/status.png, the README's
//! picture). A VM whose name is markup, served by the simulator, stays text in the DOM;
//! basic auth guards both answers when the web config sets it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::chromium;
use crate::common::daemon_process::KillOnDrop;
use crate::common::{wait_for, Harness};
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{RelTime, Scenario, VmSpec, VmState};
use vpswatch_sim::scenario::TemplateSpec;

const XSS_NAME: &str = "<img src=x onerror=alert(1)>";
const XSS_PLAN: &str = "<script>alert(2)</script>";

/// The element of `html` that starts at the first `<{tag}` whose opening tag contains
/// `marker`, up to the matching close of the same tag (no nesting of that tag inside).
fn element<'a>(html: &'a str, tag: &str, marker: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut from = 0;
    while let Some(i) = html[from..].find(&open).map(|i| i + from) {
        let head_end = html[i..].find('>')? + i;
        if html[i..head_end].contains(marker) {
            let end = html[i..].find(&close)? + i + close.len();
            return Some(&html[i..end]);
        }
        from = head_end;
    }
    None
}

/// The table row of `html` that mentions `needle`.
fn row_with<'a>(html: &'a str, needle: &str) -> Option<&'a str> {
    html.split("<tr").skip(1).find(|r| r.contains(needle))
}

async fn json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => {
            serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default()
        }
        _ => serde_json::Value::Null,
    }
}

/// `vpswatch demo` as a child process; returns it and its base URL (`http://…:port`).
fn start_demo() -> (KillOnDrop, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args([
            "--log.level",
            "warn",
            "demo",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading stdout to the end so the demo never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("metrics:") {
                let _ = tx.send(line.split_whitespace().last().unwrap_or("").to_string());
            }
        }
    });
    let metrics = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo printed its metrics URL");
    let base = metrics
        .strip_suffix("/metrics")
        .expect("…/metrics")
        .to_string();
    (child, base)
}

#[tokio::test]
async fn the_demo_status_page_in_a_real_browser() {
    let _slot = crate::common::demo_slot().await;
    vpswatch::tls::install_crypto_provider();
    let (_demo, base) = start_demo();
    let http = reqwest::Client::new();
    let api = format!("{base}/api/v1/status");
    let update = std::env::var("VPSWATCH_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");

    // Both accounts polled, the StableVPS runway known, probes in; for the committed
    // picture also a watchdog action with its outcome (the demo heals VM 1 within ~30 s).
    let deadline = Instant::now() + Duration::from_secs(if update { 120 } else { 60 });
    let status = loop {
        let s = json(&http, &api).await;
        let vms = s["vms"].as_array().cloned().unwrap_or_default();
        let polled = s["summary"]["accounts_up"] == 2;
        let runway =
            s["accounts"].as_array().into_iter().flatten().any(|a| {
                a["account"] == "demo-stablevps" && a["runway_seconds"].as_f64() > Some(0.0)
            });
        let probed = vms
            .iter()
            .any(|v| !v["probes"].as_array().is_none_or(|p| p.is_empty()));
        let acted = vms
            .iter()
            .any(|v| v["last_action"]["outcome"] == "recovered");
        if polled && runway && probed && (acted || !update) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the demo's status never filled:\n{s:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The page is served with a strict CSP: nothing but its own stylesheet may load.
    let r = http.get(format!("{base}/")).send().await.expect("GET /");
    assert_eq!(r.status(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("style-src 'sha256-"),
        "{csp}"
    );

    let dom = chromium::dump_dom(&format!("{base}/")).await;
    assert!(!dom.contains("<script"), "the page runs no script");

    // The stopped VM is listed among the problems.
    let stopped = status["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["state"] == "stopped")
        .unwrap_or_else(|| panic!("the demo has a stopped VM:\n{status:#}"));
    let stopped_name = stopped["name"].as_str().expect("name");
    let problems = element(&dom, "section", "id=\"problems\"").expect("a problems section");
    let item = problems
        .split("<li")
        .find(|li| li.contains(&format!("<b>{stopped_name}</b>")))
        .unwrap_or_else(|| panic!("{stopped_name} is not among the problems:\n{problems}"));
    // Its state is the first thing said about it (not only the rule that fires on it).
    assert!(item.contains("</span>: stopped"), "{item}");

    // The VM expiring within two days shows its countdown (40 h at start: "in 1d 15h").
    let expiring = row_with(&dom, "<b>vm-4</b>").expect("vm-4 has a row");
    let cell = element(expiring, "td", "class=\"expires\"").expect("an expiry cell");
    assert!(
        regex::Regex::new(r"in 1d 1[4-6]h")
            .expect("regex")
            .is_match(cell),
        "{cell}"
    );

    // The StableVPS wallet's runway, in the accounts table and in the timeline.
    let account = row_with(&dom, "<b>demo-stablevps</b>").expect("an account row");
    let runway = element(account, "td", "class=\"runway\"").expect("a runway cell");
    assert!(
        regex::Regex::new(r">\d+m( \d+s)?<")
            .expect("regex")
            .is_match(runway),
        "{runway}"
    );
    let timeline = element(&dom, "section", "id=\"timeline\"").expect("a timeline");
    assert!(timeline.contains("<svg"), "{timeline}");
    assert!(timeline.contains("wallet: "), "{timeline}");

    // A picture for a person to look at, in the test output directory.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status.png");
    chromium::screenshot(&format!("{base}/"), &shot, 1280, 1100).await;
    if update {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/status.png");
        std::fs::copy(&shot, &docs).expect("update docs/status.png");
    }
    eprintln!("status page screenshot: {}", shot.display());
}

#[tokio::test]
async fn a_vm_named_like_markup_is_text_in_the_browser() {
    let h = Harness::start_with(
        |owner| Scenario {
            vms: vec![VmSpec {
                owner: owner.into(),
                state: VmState::Running,
                expires: Some(RelTime::Offset(3 * 86_400)),
                template: TemplateSpec::named(XSS_PLAN),
                ..VmSpec::default()
            }],
            ..Scenario::default()
        },
        "",
        Arc::new(SystemClock),
    )
    .await;
    // The provider names the VM by its address's DNS name: markup, served as such.
    h.sim
        .update_vm(1, |v| v.reverse_dns = Some(XSS_NAME.to_string()));
    let api = h.url("/api/v1/status");
    wait_for(
        "the VM's markup name on the status JSON",
        Duration::from_secs(30),
        || async { json(&h.http, &api).await["vms"][0]["name"] == XSS_NAME },
    )
    .await;
    let status = json(&h.http, &api).await;
    assert_eq!(status["vms"][0]["plan"], XSS_PLAN, "{status:#}");

    let body = h
        .http
        .get(h.url("/"))
        .send()
        .await
        .expect("GET /")
        .text()
        .await
        .expect("body");
    assert!(
        !body.contains("<img") && !body.contains("<script"),
        "{body}"
    );

    let dom = chromium::dump_dom(&h.url("/")).await;
    assert!(!dom.contains("<img"), "an img element was injected:\n{dom}");
    assert!(
        !dom.contains("<script"),
        "a script element was injected:\n{dom}"
    );
    // The names are there, as text (the DOM serialiser escapes text nodes).
    assert!(
        dom.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the VM's name is not shown as text:\n{dom}"
    );
    assert!(
        dom.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{dom}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn basic_auth_guards_the_page_and_its_json() {
    // `htpasswd -nbBC 10 prometheus 'correct horse battery staple'`.
    const HASH: &str = "$2y$10$FJW/mn.bjn/hkX8oCoTPn.p8n/B3MjUQPkiS2fFhwXgwZPBoSbH5G";
    const PASSWORD: &str = "correct horse battery staple";
    let dir = tempfile::tempdir().expect("dir");
    let web = dir.path().join("web.yml");
    std::fs::write(&web, format!("basic_auth_users:\n  prometheus: {HASH}\n")).expect("write");
    let h = Harness::start_tweaked(
        Scenario::demo,
        "",
        Arc::new(SystemClock),
        Arc::new(crate::common::RecordingNotifier::default()),
        |c| c.web.config_file = Some(web.clone()),
    )
    .await;
    for path in ["/", "/api/v1/status"] {
        for creds in [None, Some(("prometheus", "wrong"))] {
            let mut req = h.http.get(h.url(path));
            if let Some((u, p)) = creds {
                req = req.basic_auth(u, Some(p));
            }
            let r = req.send().await.expect("answer");
            assert_eq!(r.status(), 401, "{path} with {creds:?}");
            let body = r.text().await.unwrap_or_default();
            assert!(!body.contains("vm-"), "{path} leaked VM data: {body}");
        }
    }
    wait_for(
        "the status behind the password",
        Duration::from_secs(30),
        || async {
            let r = h
                .http
                .get(h.url("/api/v1/status"))
                .basic_auth("prometheus", Some(PASSWORD))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let s: serde_json::Value =
                        serde_json::from_str(&r.text().await.unwrap_or_default())
                            .unwrap_or_default();
                    s["summary"]["vms"].as_u64() > Some(0)
                }
                _ => false,
            }
        },
    )
    .await;
    let r = h
        .http
        .get(h.url("/"))
        .basic_auth("prometheus", Some(PASSWORD))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    assert!(
        body.contains("id=\"problems\"") && body.contains("vm-3"),
        "{body}"
    );
    h.shutdown().await;
}
