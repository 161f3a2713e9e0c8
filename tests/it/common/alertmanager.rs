//! A real Alertmanager for tests (Debian's `prometheus-alertmanager`), started on a free
//! loopback port with clustering off, plus silence helpers over its v2 API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

const BINARY: &str = "prometheus-alertmanager";
const CONFIG: &str = "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n";

fn binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(BINARY))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{BINARY} is not installed: these tests need a real Alertmanager. Install the \
             Debian package: apt-get install -y --no-install-recommends prometheus-alertmanager \
             (bash .ci/run does this)"
        )
    })
}

/// A running Alertmanager, killed on drop.
pub struct Alertmanager {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use super::free_port;

pub fn client() -> reqwest::Client {
    vpswatch::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

impl Alertmanager {
    /// Starts one and waits for `/-/ready`; a port lost to a race is retried.
    pub async fn start() -> Alertmanager {
        Self::start_with(CONFIG, &["--cluster.listen-address=".to_string()]).await
    }

    /// Starts one with this configuration and extra flags (`--cluster.*` to cluster
    /// peers on loopback), and waits for `/-/ready`; a port lost to a race is retried.
    pub async fn start_with(config_yaml: &str, flags: &[String]) -> Alertmanager {
        let bin = binary();
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = dir.path().join("alertmanager.yml");
            std::fs::write(&config, config_yaml).expect("config written");
            let log = std::fs::File::create(dir.path().join("log")).expect("log file");
            let port = free_port();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut am = Alertmanager {
                child,
                url: format!("http://127.0.0.1:{port}"),
                http: client(),
                dir,
            };
            if am.wait_ready().await {
                return am;
            }
            last_log = std::fs::read_to_string(am.dir.path().join("log")).unwrap_or_default();
        }
        panic!("Alertmanager never became ready; its log:\n{last_log}");
    }

    /// Webhook notifications this peer itself sent successfully (its own
    /// `alertmanager_notifications_total{integration="webhook"}` minus the failed ones).
    pub async fn webhook_notifications(&self) -> f64 {
        let text = match self.http.get(format!("{}/metrics", self.url)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        let e = super::Exposition::parse(&text);
        let sum = |name: &str| -> f64 {
            e.samples
                .iter()
                .filter(|(n, labels, _)| {
                    n == name
                        && labels
                            .iter()
                            .any(|(k, v)| k == "integration" && v == "webhook")
                })
                .map(|s| s.2)
                .sum()
        };
        sum("alertmanager_notifications_total") - sum("alertmanager_notifications_failed_total")
    }

    /// Its log so far (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Polls `/-/ready` until it answers 200 (true) or the process exits / 30 s pass.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let ready = self.http.get(format!("{}/-/ready", self.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Creates a silence through the v2 API; returns its id.
    pub async fn silence(
        &self,
        matchers: Value,
        starts: DateTime<Utc>,
        ends: DateTime<Utc>,
        comment: &str,
    ) -> String {
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let body = json!({
            "matchers": matchers,
            "startsAt": ts(starts),
            "endsAt": ts(ends),
            "createdBy": "ops@example.com",
            "comment": comment,
        });
        let r = self
            .http
            .post(format!("{}/api/v2/silences", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("silence posted");
        let status = r.status();
        let text = r.text().await.expect("body");
        assert!(status.is_success(), "creating {comment:?}: {status} {text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        v["silenceID"].as_str().expect("silenceID").to_string()
    }

    pub async fn expire(&self, id: &str) {
        let r = self
            .http
            .delete(format!("{}/api/v2/silence/{id}", self.url))
            .send()
            .await
            .expect("expire sent");
        assert!(r.status().is_success(), "expire: {}", r.status());
    }
}
