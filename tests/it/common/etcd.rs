//! A real single-member etcd (Debian `etcd-server`) on loopback ports in a temp data
//! dir, stopped by PID when dropped or [`Etcd::kill`]ed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon_process::KillOnDrop;
use super::free_port;

pub struct Etcd {
    pub client_url: String,
    process: Option<KillOnDrop>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts a member and waits until it answers `/health`.
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("etcd tempdir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(std::env::var("VPSWATCH_TEST_ETCD").unwrap_or("etcd".into()))
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let etcd = Etcd {
            client_url,
            process: Some(KillOnDrop(child)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = match reqwest::get(format!("{}/health", etcd.client_url)).await {
                Ok(r) => r.text().await.unwrap_or_default().contains("true"),
                Err(_) => false,
            };
            if ok {
                return etcd;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the member (and reaps it).
    pub fn kill(&mut self) {
        self.process.take();
    }
}
