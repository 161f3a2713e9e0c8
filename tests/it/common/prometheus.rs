//! A real Prometheus for tests (Debian's `prometheus`), on a free loopback port with its
//! own data directory, plus the API calls the tests need.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts one with `config` (prometheus.yml) and `files` written beside it (rule
    /// files), and waits for `/-/ready`; a port lost to a race is retried.
    pub async fn start(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("prometheus.yml");
            std::fs::write(&path, config).expect("config written");
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).expect("file written");
            }
            let log = std::fs::File::create(dir.path().join("log")).expect("log file");
            let port = super::free_port();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect(
                    "prometheus must be installed (Debian package prometheus; scripts/test installs it)",
                );
            let mut p = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                http: super::alertmanager::client(),
                dir,
            };
            if p.wait_ready().await {
                return p;
            }
            last_log = p.log();
        }
        panic!("Prometheus never became ready; its log:\n{last_log}");
    }

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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The alerts Prometheus holds (pending and firing).
    pub async fn alerts(&self) -> Vec<Value> {
        let text = self
            .http
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .expect("alerts")
            .text()
            .await
            .expect("body");
        let v: Value = serde_json::from_str(&text).expect("json");
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }
}
