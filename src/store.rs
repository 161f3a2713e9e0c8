//! The on-disk state store: one redb database in the state directory, shared by the
//! watchdog journal (actions, rule state), the renewal journal and the alert outbox.
//!
//! Why redb: every write the watchdog and the outbox make must be atomic across several
//! records (an action's journal entry together with the rule's cooldown state; a mail's
//! acceptance together with its removal from the outbox) and durable once `commit`
//! returns, including after `kill -9` or power loss. redb gives ACID transactions with
//! fsync on commit (`Durability::Immediate`, its default), is pure Rust (no C build), is
//! actively maintained, and keeps its file consistent without a separate compaction step
//! — an append-only log would need its own torn-write handling and compaction for state
//! that changes on every evaluation. Each module declares its own tables.
//!
//! After one I/O error redb refuses every later operation on that handle ("Previous I/O
//! error occurred. Please close and re-open the database"), so a full disk or a file that
//! briefly could not be written would otherwise stop the watchdog, renewals and the
//! mailer until a restart. Every transaction therefore goes through [`StateStore`], which
//! hands out the current handle, recognises I/O errors, closes the broken handle and
//! reopens the file with backoff ([`StateStore::keep_open`]). While it is closed every
//! transaction fails at once with [`StoreError::Unavailable`]: callers that must not act
//! without a durable record (the watchdog, renewals) skip, and the mailer holds alert
//! changes in memory until they can be written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use redb::TableDefinition;
use tokio_util::sync::CancellationToken;

use crate::metrics::SelfMetrics;

/// The file name inside the state directory.
pub const DB_FILE: &str = "vpswatch.redb";

/// First wait before reopening the file after an I/O error; doubles per failed attempt.
pub const REOPEN_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait between two reopening attempts.
pub const REOPEN_MAX: Duration = Duration::from_secs(60);

/// Written by every successful reopen: proof that the file takes a durable commit again.
const STORE_META: TableDefinition<&str, i64> = TableDefinition::new("store_meta");
const LAST_REOPEN: &str = "last_reopen_unix_ms";

/// Creates a module's tables inside a write transaction (run at open and after a reopen).
pub type TableInit = fn(&redb::WriteTransaction) -> Result<(), redb::TableError>;

/// A handle to the state database; cheap to clone. Clones share one database handle and
/// see the same reopen.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    slot: Mutex<Slot>,
    tables: Mutex<Vec<TableInit>>,
    /// Wakes [`StateStore::keep_open`] when the store breaks.
    broke: tokio::sync::Notify,
    metrics: OnceLock<Arc<SelfMetrics>>,
}

#[derive(Default)]
struct Slot {
    /// `None` while the handle is closed after an I/O error.
    db: Option<Arc<redb::Database>>,
    broken: Option<Broken>,
    /// Backoff level of the last outage and when it ended: a store that breaks again
    /// soon after a reopen (a disk that is still full) keeps backing off instead of
    /// retrying every second.
    last_level: u32,
    recovered_at: Option<Instant>,
}

struct Broken {
    cause: String,
    since: Instant,
    /// Failed reopening attempts (the backoff level).
    level: u32,
    next_try: Instant,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.inner.path)
            .field("writable", &self.writable())
            .finish()
    }
}

/// Why the store could not be opened or written, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {dir}: {detail}")]
    Dir { dir: String, detail: String },
    #[error("state database {file}: {detail}")]
    Db { file: String, detail: String },
    /// The handle was closed after an I/O error and is being reopened.
    #[error("state database {file}: cannot be written since an I/O error ({cause}); reopening it")]
    Unavailable { file: String, cause: String },
}

fn backoff(level: u32) -> Duration {
    REOPEN_INITIAL
        .saturating_mul(2u32.saturating_pow(level.min(16)))
        .min(REOPEN_MAX)
}

/// True for the errors after which redb's handle is unusable until it is reopened.
fn is_io(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    StoreError::Db {
        file: path.display().to_string(),
        detail: match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                "already open by another vpswatch process (one state directory per daemon)"
                    .to_string()
            }
            other => other.to_string(),
        },
    }
}

impl StateStore {
    /// Opens (creating when needed) the database in `dir`. Fails when another process
    /// holds it: two daemons sharing one state directory would double every action.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir {
            dir: dir.display().to_string(),
            detail: e.to_string(),
        })?;
        let path = dir.join(DB_FILE);
        let db = redb::Database::create(&path).map_err(|e| open_error(&path, e))?;
        Ok(StateStore {
            inner: Arc::new(Inner {
                path,
                slot: Mutex::new(Slot {
                    db: Some(Arc::new(db)),
                    ..Slot::default()
                }),
                tables: Mutex::new(Vec::new()),
                broke: tokio::sync::Notify::new(),
                metrics: OnceLock::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle in use, or why there is none.
    fn handle(&self) -> Result<Arc<redb::Database>, StoreError> {
        let slot = self.slot();
        match (&slot.db, &slot.broken) {
            (Some(db), _) => Ok(db.clone()),
            (None, broken) => Err(StoreError::Unavailable {
                file: self.inner.path.display().to_string(),
                cause: broken.as_ref().map(|b| b.cause.clone()).unwrap_or_default(),
            }),
        }
    }

    /// Starts a write transaction on the current handle.
    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let db = self.handle()?;
        db.begin_write().map_err(|e| self.error(e))
    }

    /// Starts a read transaction on the current handle.
    pub fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        use redb::ReadableDatabase;
        let db = self.handle()?;
        db.begin_read().map_err(|e| self.error(e))
    }

    /// Commits durably; an I/O error closes the handle for reopening.
    pub fn commit(&self, tx: redb::WriteTransaction) -> Result<(), StoreError> {
        tx.commit().map_err(|e| self.error(e))
    }

    /// Wraps a redb error with the file name, for callers' error messages. An I/O error
    /// (or redb's "previous I/O error") also closes the handle and schedules a reopen.
    pub fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        let e: redb::Error = e.into();
        if is_io(&e) {
            self.broken(&e);
        }
        StoreError::Db {
            file: self.inner.path.display().to_string(),
            detail: e.to_string(),
        }
    }

    /// Wraps an error that is not the database's (a record that does not decode).
    pub fn invalid(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            file: self.inner.path.display().to_string(),
            detail: e.to_string(),
        }
    }

    /// True while the store has a usable handle (false from an I/O error until a
    /// reopen has committed again).
    pub fn writable(&self) -> bool {
        self.slot().db.is_some()
    }

    /// Creates tables now and again after every reopen (so readers never meet a missing
    /// one, whatever happened to the file meanwhile).
    pub fn ensure_tables(&self, init: TableInit) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        init(&tx).map_err(|e| self.error(e))?;
        self.commit(tx)?;
        self.inner
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(init);
        Ok(())
    }

    /// Exports `vpswatch_state_store_writable` and `…_errors_total` through `metrics`.
    pub fn attach_metrics(&self, metrics: Arc<SelfMetrics>) {
        let m = self.inner.metrics.get_or_init(|| metrics);
        m.state_store_metrics().set_writable(self.writable());
        m.changed();
    }

    fn count_error(&self) {
        if let Some(m) = self.inner.metrics.get() {
            m.state_store_metrics().count_error();
            m.changed();
        }
    }

    fn set_writable(&self, writable: bool) {
        if let Some(m) = self.inner.metrics.get() {
            m.state_store_metrics().set_writable(writable);
            m.changed();
        }
    }

    /// Closes the handle after an I/O error (once per outage) and wakes the reopener.
    fn broken(&self, e: &redb::Error) {
        self.count_error();
        let (old, wait) = {
            let mut slot = self.slot();
            if slot.broken.is_some() {
                return;
            }
            let now = Instant::now();
            let level = if slot.recovered_at.is_some_and(|t| now - t < REOPEN_MAX) {
                slot.last_level.saturating_add(1)
            } else {
                0
            };
            let wait = backoff(level);
            slot.broken = Some(Broken {
                cause: e.to_string(),
                since: now,
                level,
                next_try: now + wait,
            });
            (slot.db.take(), wait)
        };
        self.set_writable(false);
        tracing::error!(file = %self.inner.path.display(), error = %e,
            retry_in = %humantime::format_duration(wait),
            "state database failed with an I/O error: closed, will reopen it; until then the watchdog and renewals do not act and alert mails wait in memory");
        // Dropping the last handle closes the file (a write transaction still running
        // elsewhere keeps it open until it ends; the reopen then waits for the next try).
        drop(old);
        self.inner.broke.notify_one();
    }

    /// When the next reopening attempt is due, if the store is broken.
    fn next_try(&self) -> Option<Instant> {
        self.slot().broken.as_ref().map(|b| b.next_try)
    }

    /// One reopening attempt (blocking: opens the file, may repair it, commits once).
    /// Returns true when the store is writable afterwards.
    pub fn try_reopen(&self) -> bool {
        if self.writable() {
            return true;
        }
        let path = &self.inner.path;
        let tables: Vec<TableInit> = self
            .inner
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let attempt = redb::Database::create(path)
            .map_err(|e| open_error(path, e).to_string())
            .and_then(|db| {
                let probe = || -> Result<(), redb::Error> {
                    let tx = db.begin_write()?;
                    for init in &tables {
                        init(&tx)?;
                    }
                    {
                        let mut meta = tx.open_table(STORE_META)?;
                        meta.insert(LAST_REOPEN, chrono::Utc::now().timestamp_millis())?;
                    }
                    tx.commit()?;
                    Ok(())
                };
                match probe() {
                    Ok(()) => Ok(db),
                    Err(e) => Err(format!("state database {}: {e}", path.display())),
                }
            });
        match attempt {
            Ok(db) => {
                let down = {
                    let mut slot = self.slot();
                    let down = slot.broken.take().map(|b| {
                        slot.last_level = b.level;
                        b.since.elapsed()
                    });
                    slot.db = Some(Arc::new(db));
                    slot.recovered_at = Some(Instant::now());
                    down
                };
                self.set_writable(true);
                tracing::info!(file = %path.display(),
                    unavailable_for = %humantime::format_duration(
                        Duration::from_secs(down.unwrap_or_default().as_secs())),
                    "state database reopened and writable again");
                true
            }
            Err(detail) => {
                self.count_error();
                let wait = {
                    let mut slot = self.slot();
                    match slot.broken.as_mut() {
                        Some(b) => {
                            b.level = b.level.saturating_add(1);
                            let wait = backoff(b.level);
                            b.next_try = Instant::now() + wait;
                            wait
                        }
                        None => REOPEN_INITIAL,
                    }
                };
                tracing::warn!(error = %detail, retry_in = %humantime::format_duration(wait),
                    "cannot reopen the state database yet");
                false
            }
        }
    }

    /// Reopens the store after an I/O error, with backoff ([`REOPEN_INITIAL`] doubling to
    /// [`REOPEN_MAX`]), until cancelled. The daemon runs one of these per store.
    pub async fn keep_open(self, cancel: CancellationToken) {
        loop {
            let wait = self
                .next_try()
                .map(|at| at.saturating_duration_since(Instant::now()));
            match wait {
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.inner.broke.notified() => continue,
                },
                Some(wait) => tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                },
            }
            let store = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || store.try_reopen()).await {
                tracing::error!(error = %e, "state database reopener failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(6), REOPEN_MAX);
        assert_eq!(backoff(u32::MAX), REOPEN_MAX);
    }

    #[test]
    fn a_second_open_of_one_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = StateStore::open(dir.path()).expect("open");
        let second = StateStore::open(dir.path()).expect_err("second open refused");
        assert!(second.to_string().contains("already open"), "{second}");
    }

    #[test]
    fn an_io_error_closes_the_handle_and_a_reopen_restores_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        let e = store.error(redb::Error::PreviousIo);
        assert!(e.to_string().contains("vpswatch.redb"), "{e}");
        assert!(!store.writable());
        let refused = store.begin_write().map(|_| ()).expect_err("closed");
        assert!(
            matches!(refused, StoreError::Unavailable { .. }),
            "{refused}"
        );
        assert!(store.try_reopen());
        assert!(store.writable());
        let tx = store.begin_write().expect("writable again");
        store.commit(tx).expect("commit");
        // Still one daemon per directory after the reopen.
        assert!(StateStore::open(dir.path()).is_err());
    }
}
