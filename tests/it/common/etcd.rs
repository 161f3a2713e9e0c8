//! A real etcd (Debian `etcd-server`) on loopback ports in temp data dirs: one member
//! ([`Etcd`]) or several forming one cluster ([`EtcdCluster`]), each member a child
//! process stopped by PID (killed when dropped, or on purpose to take quorum away) and
//! restartable on its own data dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon_process::KillOnDrop;

/// A free loopback port below the kernel's ephemeral range. A killed member is
/// restarted on its old ports; had they come from the ephemeral range, any connection
/// made meanwhile (the tests scrape constantly) could hold one as its source port.
fn member_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let (start, span) = (10000, low - 10000);
    // Test binaries run in parallel: start at a place of this process's own.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (start + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn etcd_binary() -> String {
    std::env::var("VPSWATCH_TEST_ETCD").unwrap_or("etcd".into())
}

/// Server TLS for the client port: `https://` client URLs, and with `client_cert_auth`
/// every client must present a certificate signed by `ca`.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub client_cert_auth: bool,
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    /// Plain-HTTP `/health` (and `/metrics`), also when the client port speaks TLS.
    health_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<KillOnDrop>,
}

/// A cluster of etcd members on loopback, all listed in each one's `--initial-cluster`.
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<ServerTls>,
    initial_cluster: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (plain HTTP) and waits until each answers `/health`.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None).await
    }

    /// Like [`EtcdCluster::start`], the client ports speaking TLS when `tls` is given.
    pub async fn start_with(n: usize, tls: Option<ServerTls>) -> EtcdCluster {
        // The health checks use reqwest, which needs the process's rustls provider.
        vpswatch::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("etcd tempdir");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", member_port()),
                peer_url: format!("http://127.0.0.1:{}", member_port()),
                health_url: format!("http://127.0.0.1:{}/health", member_port()),
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            tls,
            initial_cluster,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log");
        let metrics = m.health_url.trim_end_matches("/health");
        let mut cmd = Command::new(etcd_binary());
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={}", m.client_url))
            .arg(format!("--advertise-client-urls={}", m.client_url))
            .arg(format!("--listen-peer-urls={}", m.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg(format!("--listen-metrics-urls={metrics}"))
            // Loopback: elect a new leader quickly once one is killed.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()));
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.members[i].process = Some(KillOnDrop(child));
    }

    /// Every member's client URL.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The temp dir the members' data and logs live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs member `i` (by its PID, and reaps it); its data dir stays.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process.take();
    }

    /// Freezes (`STOP`) or resumes (`CONT`) member `i` by its PID: while frozen, its
    /// connections stay open but nothing is answered.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].process.as_ref().expect("running").0.id();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal} etcd member {i}");
    }

    /// Starts member `i` again on its data dir (it rejoins as itself).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// The index of the member that is the Raft leader now (its `/metrics` says so).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.process.is_none() {
                    continue;
                }
                let url = m.health_url.replace("/health", "/metrics");
                if let Ok(r) = reqwest::get(&url).await {
                    let text = r.text().await.unwrap_or_default();
                    if text.lines().any(|l| l == "etcd_server_is_leader 1") {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running member answers `/health` with a leader.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in self.members.iter().filter(|m| m.process.is_some()) {
            loop {
                let ok = match reqwest::get(&m.health_url).await {
                    Ok(r) => r.text().await.unwrap_or_default().contains("true"),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not become healthy:\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// `etcdctl` against member 0 with `args` (and the TLS flags the cluster needs);
    /// panics with its output when it fails.
    pub fn etcdctl(&self, args: &[&str], tls_client: Option<(&Path, &Path)>) -> String {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.members[0].client_url));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()));
        }
        if let Some((cert, key)) = tls_client {
            cmd.arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        let out = cmd.args(args).output().expect("run etcdctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "etcdctl {args:?} failed: {text}");
        text
    }

    /// Keeps `lease` alive from outside (`etcdctl lease keep-alive`, plain HTTP) until
    /// the returned process is dropped or the lease is revoked.
    pub fn keep_alive(&self, lease: i64) -> KillOnDrop {
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_urls().join(",")))
            .args(["lease", "keep-alive", &format!("{lease:x}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl lease keep-alive");
        KillOnDrop(child)
    }
}

/// A single-member etcd.
pub struct Etcd {
    pub client_url: String,
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts a member and waits until it answers `/health`.
    pub async fn start() -> Etcd {
        let cluster = EtcdCluster::start(1).await;
        Etcd {
            client_url: cluster.client_urls().remove(0),
            cluster,
        }
    }

    /// SIGKILLs the member (and reaps it).
    pub fn kill(&mut self) {
        self.cluster.kill(0);
    }
}
