//! The on-disk state store: one redb database in the state directory, shared by the
//! watchdog journal (actions, rule state) and the alert outbox.
//!
//! Why redb: every write the watchdog and the outbox make must be atomic across several
//! records (an action's journal entry together with the rule's cooldown state; a mail's
//! acceptance together with its removal from the outbox) and durable once `commit`
//! returns, including after `kill -9` or power loss. redb gives ACID transactions with
//! fsync on commit (`Durability::Immediate`, its default), is pure Rust (no C build), is
//! actively maintained, and keeps its file consistent without a separate compaction step
//! — an append-only log would need its own torn-write handling and compaction for state
//! that changes on every evaluation. Each module declares its own tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name inside the state directory.
pub const DB_FILE: &str = "vpswatch.redb";

/// A handle to the state database; cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
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
        let db = redb::Database::create(&path).map_err(|e| StoreError::Db {
            file: path.display().to_string(),
            detail: match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    "already open by another vpswatch process (one state directory per daemon)"
                        .to_string()
                }
                other => other.to_string(),
            },
        })?;
        Ok(StateStore {
            db: Arc::new(db),
            path,
        })
    }

    pub fn db(&self) -> &redb::Database {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps a redb error with the file name, for callers' error messages.
    pub fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            file: self.path.display().to_string(),
            detail: e.to_string(),
        }
    }
}
