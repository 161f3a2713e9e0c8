//! The web configuration in force, and its reloading: every `config_reload_interval` (and
//! on SIGHUP) the config file and every file it names are fingerprinted; when anything
//! changed, the file is loaded again. A good load is swapped in atomically — new
//! connections get the new TLS settings, every request after the swap the new users and
//! headers — and the listener is never closed. A bad load keeps the last good
//! configuration, logs every problem once (not once per poll), and sets
//! `vpswatch_web_config_last_reload_successful` to 0.
//!
//! A reload may add or change TLS, client-certificate checks and basic auth, but never
//! switch off or weaken what is in force: a file that would (an empty file from a
//! non-atomic rewrite looks exactly like "plain HTTP, no auth") is refused like a broken
//! one. Dropping protection takes a restart, a deliberate act.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::tls::ClientAuth;
use super::WebConfig;
use crate::metrics::SelfMetrics;
use vpswatch_model::clock::SharedClock;
use vpswatch_model::problem::{ConfigError, Problem};

/// The configuration in force and where it comes from.
pub struct LiveWebConfig {
    current: ArcSwap<WebConfig>,
    source: Option<Source>,
}

struct Source {
    path: PathBuf,
    watched: Mutex<Watched>,
}

/// What the last load attempt read, and how those files looked then.
struct Watched {
    files: Vec<PathBuf>,
    fingerprint: [u8; 32],
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// Nothing changed on disk (and the reload was not forced).
    Unchanged,
    Applied,
    /// The file did not load; the previous configuration stays.
    Failed(ConfigError),
}

fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        match super::read_limited(f) {
            Ok(bytes) => {
                h.update(b"ok");
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"err");
                h.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    h.finalize().into()
}

impl LiveWebConfig {
    /// A configuration that never changes (no `--web.config.file`).
    pub fn fixed(config: WebConfig) -> Self {
        Self {
            current: ArcSwap::from_pointee(config),
            source: None,
        }
    }

    /// Loads the file; an error here stops the daemon from starting.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (result, files) = super::load_tracked(path);
        let config = result?;
        let fingerprint = fingerprint(&files);
        Ok(Self {
            current: ArcSwap::from_pointee(config),
            source: Some(Source {
                path: path.to_path_buf(),
                watched: Mutex::new(Watched { files, fingerprint }),
            }),
        })
    }

    /// The configuration in force.
    pub fn load(&self) -> Arc<WebConfig> {
        self.current.load_full()
    }

    /// The file this configuration comes from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.source.as_ref().map(|s| s.path.as_path())
    }

    /// Loads the file again if it (or a file it names) changed, or always with `force`.
    /// Blocking (reads files): call from a blocking thread.
    pub fn reload(&self, force: bool) -> Reload {
        let Some(source) = &self.source else {
            return Reload::Unchanged;
        };
        let mut watched = source.watched.lock().unwrap_or_else(|e| e.into_inner());
        if !force && fingerprint(&watched.files) == watched.fingerprint {
            return Reload::Unchanged;
        }
        let (result, files) = super::load_tracked(&source.path);
        // Remember what this attempt saw, so an unchanged broken file is not retried
        // (and logged) every interval.
        watched.fingerprint = fingerprint(&files);
        watched.files = files;
        match result {
            Ok(config) => {
                let dropped = weakened(&self.current.load(), &config);
                if !dropped.is_empty() {
                    return Reload::Failed(ConfigError {
                        file: source.path.display().to_string(),
                        problems: dropped,
                    });
                }
                self.current.store(Arc::new(config));
                Reload::Applied
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

fn client_auth_rank(c: ClientAuth) -> u8 {
    match c {
        ClientAuth::None => 0,
        ClientAuth::VerifyIfGiven => 1,
        ClientAuth::RequireAndVerify => 2,
    }
}

/// What `new` would switch off or weaken of the protection `old` has in force, each as a
/// problem naming the key and what a restart would be needed for.
fn weakened(old: &WebConfig, new: &WebConfig) -> Vec<Problem> {
    const RESTART: &str = "a live reload never removes protection in force; if this is \
                           meant, restart vpswatch to apply it";
    let mut problems = Vec::new();
    if let Some(old_tls) = &old.tls {
        match &new.tls {
            None => problems.push(Problem {
                path: "tls_server_config".into(),
                message: format!(
                    "missing: this would switch TLS off (plain HTTP){}; {RESTART}",
                    if old_tls.client_auth == ClientAuth::None {
                        String::new()
                    } else {
                        format!(
                            " and drop the client certificate check ({})",
                            old_tls.client_auth.as_str()
                        )
                    }
                ),
            }),
            Some(new_tls)
                if client_auth_rank(new_tls.client_auth)
                    < client_auth_rank(old_tls.client_auth) =>
            {
                problems.push(Problem {
                    path: "tls_server_config.client_auth_type".into(),
                    message: format!(
                        "{} would weaken the client certificate check from {}; {RESTART}",
                        new_tls.client_auth.as_str(),
                        old_tls.client_auth.as_str()
                    ),
                })
            }
            Some(_) => {}
        }
    }
    if let Some(old_auth) = &old.auth {
        if new.auth.is_none() {
            problems.push(Problem {
                path: "basic_auth_users".into(),
                message: format!(
                    "missing or empty: this would switch basic auth off (now {} user{}); \
                     {RESTART}",
                    old_auth.user_count(),
                    if old_auth.user_count() == 1 { "" } else { "s" }
                ),
            });
        }
    }
    problems
}

/// Watches the file until cancelled: polls every `interval`, and reloads at once on
/// SIGHUP. Updates the reload metrics.
pub async fn watch(
    live: Arc<LiveWebConfig>,
    interval: Duration,
    metrics: Arc<SelfMetrics>,
    clock: SharedClock,
    cancel: CancellationToken,
) {
    if live.source.is_none() {
        return;
    }
    // The handler first: once the metric below is visible, SIGHUP is safe to send (its
    // default action would end the process).
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let m = metrics.web_config_metrics();
    m.succeeded(vpswatch_model::clock::unix_seconds(clock.now()));
    metrics.changed();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => false,
            _ = hangup => true,
        };
        let l = live.clone();
        let outcome = match tokio::task::spawn_blocking(move || l.reload(force)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "web config reload task failed");
                continue;
            }
        };
        match outcome {
            Reload::Unchanged => {}
            Reload::Applied => {
                tracing::info!(
                    file = %live.path().map(|p| p.display().to_string()).unwrap_or_default(),
                    config = %live.load().summary(),
                    "web config reloaded"
                );
                m.succeeded(vpswatch_model::clock::unix_seconds(clock.now()));
                metrics.changed();
            }
            Reload::Failed(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(problem = %line, "web config not reloaded; keeping the last good one");
                }
                m.failed();
                metrics.changed();
            }
        }
    }
}
