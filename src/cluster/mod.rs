//! Several replicas sharing the accounts through etcd: membership, ownership, fencing.
//!
//! Keys under the configured prefix (docs/cluster.md draws the picture):
//! - `members/<member>`: one per live replica, attached to its lease;
//! - `owners/<provider>/<account>`: the replica that owns the account, attached to that
//!   replica's lease, so a dead replica's accounts are free once its lease expires;
//! - `intents/<provider>/<account>`: the last provider write a replica was allowed to make;
//! - `actions/<provider>/<account>/<vm>`: the times of recent power actions on a VM (and
//!   the rule and ladder rung of the last one), so cooldowns, caps and ladders hold across
//!   replicas and failovers;
//! - `renewals/lnvps/<account>/<vm>`, `spend/lnvps/<account>/<month>`: the renewal
//!   journal (the invoice in flight, paid periods, the month's spend), written only by the
//!   account's owner, each write conditioned on its ownership;
//! - `rearms/lnvps/<account>/<vm>`: operator clears of a renewal, from any replica;
//! - `mails/<provider>/<account>/<hash>`: the last alert mail kind sent for an alert key.
//!
//! Every replica computes the same assignment (rendezvous hashing of accounts over live
//! members). A replica claims an account only when its owner key is free, and gives it up
//! (deletes the key) as soon as the assignment names another member, so at any moment at
//! most one replica holds an account. A provider write is preceded by [`Cluster::fence`]:
//! a transaction that records the intent only if the owner key still carries this
//! replica's lease; a replica that was paused, partitioned or slow cannot commit it.

pub mod config;
#[cfg(not(feature = "cluster"))]
mod disabled;
#[cfg(feature = "cluster")]
mod member;

#[cfg(not(feature = "cluster"))]
pub use disabled::Cluster;
#[cfg(feature = "cluster")]
pub use member::Cluster;

use std::time::Duration;

use sha2::{Digest, Sha256};

/// What this replica currently knows about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// This replica's live lease; `None` while it has none (etcd unreachable).
    pub lease: Option<i64>,
    /// Live members' names, sorted.
    pub members: Vec<String>,
    /// Per configured account (config order): whether this replica holds its owner key.
    pub owned: Vec<bool>,
}

/// The watchdog's guards on one VM, checked against every replica's actions.
#[derive(Debug, Clone)]
pub struct ActionGuard {
    pub vm: String,
    pub now: chrono::DateTime<chrono::Utc>,
    pub cooldown: Duration,
    pub max_actions: u32,
    pub window: Duration,
    /// The rule acting and the ladder rung it is on, kept with the action's time so a
    /// new owner continues the ladder.
    pub rule: String,
    pub action: String,
    pub rung: usize,
}

/// The last power action recorded on a VM in etcd (by any replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAction {
    pub member: String,
    pub rule: String,
    pub action: String,
    pub rung: usize,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// One key's value as read from etcd, with the revision a later conditional write
/// compares against (0: the key does not exist).
#[derive(Debug, Clone, Default)]
pub struct Versioned {
    pub value: Option<Vec<u8>>,
    pub revision: i64,
}

/// One put of a shared-state transaction; `key` is relative to the cluster prefix.
#[derive(Debug, Clone)]
pub struct SharedPut {
    pub key: String,
    pub value: Vec<u8>,
    /// The modification revision the key must still have (0: still absent); `None`
    /// writes unconditionally.
    pub expect: Option<i64>,
}

/// Why shared state could not be read or written in etcd.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error("etcd: {what}: {reason}")]
    Etcd { what: String, reason: String },
    #[error("etcd: {what}: written by someone else since it was read")]
    Conflict { what: String },
    #[error("etcd: {what}: undecodable value: {reason}")]
    Invalid { what: String, reason: String },
}

/// Why a provider write was not allowed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("this replica holds no etcd lease (etcd unreachable or the lease expired)")]
    NoLease,
    #[error("this replica no longer owns account {account} in etcd")]
    NotOwner { account: String },
    #[error("VM {vm} of account {account} was acted on by replica {member} at {at} (cooldown {cooldown})")]
    Cooldown {
        account: String,
        vm: String,
        member: String,
        at: String,
        cooldown: String,
    },
    #[error(
        "VM {vm} of account {account} had {count} actions from the replicas within {window} (cap)"
    )]
    Cap {
        account: String,
        vm: String,
        count: usize,
        window: String,
    },
    #[error("etcd did not confirm ownership of account {account}: {reason}")]
    Etcd { account: String, reason: String },
}

impl FenceError {
    /// etcd could not be asked (unreachable, no quorum, no lease): nothing was decided
    /// about the action, so it is tried again when etcd answers, not after a cooldown.
    pub fn etcd_unavailable(&self) -> bool {
        matches!(self, FenceError::NoLease | FenceError::Etcd { .. })
    }
}

/// The rendezvous (highest random weight) score of `account` on `member`.
fn score(member: &str, account: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(member.as_bytes())
        .chain_update([0u8])
        .chain_update(account.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The member an account belongs to: the same answer on every replica that sees the
/// same members, and only the accounts of a member that leaves or joins move.
pub fn assign<'a>(account: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (score(m, account), m.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_shared_and_moves_only_the_leavers_accounts() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let accounts: Vec<String> = (0..30).map(|i| format!("lnvps/acc{i}")).collect();
        let mut per = std::collections::HashMap::new();
        for acc in &accounts {
            let owner = assign(acc, &three).unwrap();
            *per.entry(owner).or_insert(0) += 1;
            let after = assign(acc, &two).unwrap();
            if owner != "b" {
                assert_eq!(owner, after, "{acc} moved though its owner stayed");
            }
        }
        assert_eq!(per.len(), 3, "every member gets accounts: {per:?}");
        assert_eq!(assign("x", &[]), None);
    }
}
