//! The etcd-backed replica (built with the `cluster` feature): its lease, the members it
//! sees, the accounts it owns, and the fencing transactions (see the module above).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::ClusterConfig;
use super::{assign, ActionGuard, FenceError, LastAction, SharedPut, StateError, Versioned, View};
use crate::metrics::defs;
use crate::metrics::families::FamilySet;
use crate::metrics::FamilySource;

/// The value under `actions/<provider>/<account>/<vm>`: recent action times (within the
/// rule's window), and the replica, rule, remedy and ladder rung of the last one.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ActionTimes {
    member: String,
    times: Vec<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    rung: usize,
}

/// One replica's membership in the cluster.
pub struct Cluster {
    config: ClusterConfig,
    /// `<provider>/<account>` by account index.
    accounts: Vec<String>,
    view: watch::Sender<View>,
    client: tokio::sync::Mutex<Option<Client>>,
    etcd_errors: AtomicU64,
    /// Whether the last etcd request failed (so an outage is logged once).
    failing: std::sync::atomic::AtomicBool,
    ownership_changes: AtomicU64,
    tick: watch::Sender<u64>,
    /// The lease of the last session. etcd renews every lease when it elects a leader,
    /// so after a quorum loss the old lease outlives the session that gave it up by a
    /// whole TTL, keeping this replica's owner keys taken; the next session revokes it.
    last_lease: std::sync::Mutex<Option<i64>>,
}

impl Cluster {
    /// The replica for `config` (always one in this build; see `disabled.rs`).
    pub fn create(config: ClusterConfig, accounts: Vec<String>) -> Option<Arc<Cluster>> {
        Some(Self::new(config, accounts))
    }

    /// `accounts` are `<provider>/<account>` in config order.
    pub fn new(config: ClusterConfig, accounts: Vec<String>) -> Arc<Cluster> {
        let owned = vec![false; accounts.len()];
        Arc::new(Cluster {
            config,
            accounts,
            view: watch::channel(View {
                owned,
                ..View::default()
            })
            .0,
            client: tokio::sync::Mutex::new(None),
            etcd_errors: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            ownership_changes: AtomicU64::new(0),
            tick: watch::channel(0).0,
            last_lease: std::sync::Mutex::new(None),
        })
    }

    /// How long a replica's lease outlives its last renewal: the time scale on which
    /// the cluster notices a failure and recovers from it.
    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}/{kind}/{rest}", self.config.prefix)
    }

    fn etcd_error(&self, what: &str, e: &etcd_client::Error) {
        self.etcd_errors.fetch_add(1, Ordering::Relaxed);
        self.tick.send_modify(|t| *t += 1);
        // An outage retries every second: its start is a warning, the rest is detail.
        if self.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(member = %self.config.member, error = %e, "etcd: {what} failed");
        } else if let Some(hint) = self.tls_hint(e) {
            tracing::warn!(member = %self.config.member, error = %e, hint, "etcd: {what} failed");
        } else {
            tracing::warn!(member = %self.config.member, error = %e, "etcd: {what} failed");
        }
    }

    /// An etcd that requires client certificates refuses a client without one with a
    /// TLS alert or, as TLS 1.3 checks it after the handshake, by dropping the connection
    /// (the client then sees "operation was canceled" or a broken pipe): say what
    /// probably happened.
    fn tls_hint(&self, e: &etcd_client::Error) -> Option<&'static str> {
        let no_identity = self.config.tls.as_ref()?.identity.is_none();
        let text = e.to_string();
        let refused = [
            "connection closed",
            "fatal alert",
            "broken pipe",
            "reset by peer",
        ]
        .iter()
        .any(|how| text.contains(how));
        (no_identity && refused).then_some(
            "etcd closed the TLS connection: if it requires client certificates \
             (--client-cert-auth), set cluster.cert_file and cluster.key_file",
        )
    }

    fn etcd_ok(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(member = %self.config.member, "etcd answers again");
        }
    }

    fn publish(&self, next: View) {
        let changed = self.view.send_if_modified(|v| {
            if *v == next {
                return false;
            }
            let moved = v
                .owned
                .iter()
                .zip(&next.owned)
                .filter(|(a, b)| a != b)
                .count();
            if moved > 0 {
                self.ownership_changes
                    .fetch_add(moved as u64, Ordering::Relaxed);
                for (i, (was, is)) in v.owned.iter().zip(&next.owned).enumerate() {
                    if was != is {
                        tracing::info!(
                            member = %self.config.member,
                            account = %self.accounts[i],
                            owned = is,
                            "cluster: account {}",
                            if *is { "taken over" } else { "given up" }
                        );
                    }
                }
            }
            *v = next;
            true
        });
        if changed {
            self.tick.send_modify(|t| *t += 1);
        }
    }

    fn lose_lease(&self) {
        self.publish(View {
            lease: None,
            members: Vec::new(),
            owned: vec![false; self.accounts.len()],
        });
    }

    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let ttl = self.config.lease_ttl;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(ttl.min(Duration::from_secs(5)))
            .with_timeout(ttl.min(Duration::from_secs(5)));
        if let Some((user, password)) = &self.config.auth {
            options = options.with_user(user.clone(), password.expose().clone());
        }
        if let Some(tls) = &self.config.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key.expose()));
            }
            options = options.with_tls(t);
        }
        Client::connect(&self.config.endpoints, Some(options)).await
    }

    /// Keeps this replica registered and its owned accounts claimed until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let retry = Duration::from_secs(1);
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.session() => r,
            };
            if let Err(e) = result {
                self.etcd_error("session", &e);
            }
            self.lose_lease();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        // Leaving on purpose: free the accounts now rather than after the TTL.
        let lease = self.view.borrow().lease;
        self.lose_lease();
        if let (Some(lease), Some(mut client)) = (lease, self.client.lock().await.clone()) {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
        }
    }

    /// One lease's life: register, keep alive, reconcile ownership. Returns when the lease
    /// is lost (or cannot be renewed for a whole TTL).
    async fn session(&self) -> Result<(), etcd_client::Error> {
        let mut client = self.connect().await?;
        *self.client.lock().await = Some(client.clone());
        let ttl = self.config.lease_ttl;
        let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
        client
            .put(
                self.key("members", &self.config.member),
                self.config.member.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        tracing::info!(member = %self.config.member, lease, "cluster: registered");
        // After the member key moved to the new lease, so that the others never see this
        // member gone and take its accounts for a moment.
        let previous = self
            .last_lease
            .lock()
            .map(|mut last| last.replace(lease))
            .unwrap_or_default();
        if let Some(old) = previous {
            self.revoke_previous(&mut client, old).await;
        }
        let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
        let mut events = client
            .watch(
                format!("{}/", self.config.prefix),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        let period = (ttl / 3).max(Duration::from_millis(500));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        let mut watching = true;
        let mut owned = vec![false; self.accounts.len()];
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // Renew; a lease unrenewed for a whole TTL may be gone already.
                    let ack = async {
                        keeper.keep_alive().await?;
                        acks.message().await
                    };
                    match tokio::time::timeout(period, ack).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => renewed = Instant::now(),
                        Ok(Ok(_)) => {
                            tracing::warn!(member = %self.config.member, "cluster: lease expired");
                            return Ok(());
                        }
                        Ok(Err(e)) => {
                            self.etcd_error("lease keep-alive", &e);
                            // The stream broke (connection reset): open a new one.
                            match client.lease_keep_alive(lease).await {
                                Ok((k, a)) => (keeper, acks) = (k, a),
                                Err(e) => self.etcd_error("lease keep-alive", &e),
                            }
                        }
                        Err(_) => {
                            self.etcd_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(member = %self.config.member, "etcd: lease keep-alive timed out");
                            // The stream may be stuck on a member that died: open another.
                            if let Ok(Ok((k, a))) =
                                tokio::time::timeout(period, client.lease_keep_alive(lease)).await
                            {
                                (keeper, acks) = (k, a);
                            }
                        }
                    }
                    if renewed.elapsed() >= ttl {
                        tracing::warn!(member = %self.config.member, "cluster: lease not renewed for a TTL; giving up every account");
                        return Ok(());
                    }
                }
                ev = events.message(), if watching => {
                    // A broken watch is reopened on a later tick; the ticker goes on.
                    watching = matches!(ev, Ok(Some(_)));
                }
            }
            if !watching {
                let watch = client.watch(
                    format!("{}/", self.config.prefix),
                    Some(WatchOptions::new().with_prefix()),
                );
                match tokio::time::timeout(period, watch).await {
                    Ok(Ok(s)) => (events, watching) = (s, true),
                    Ok(Err(e)) => self.etcd_error("watch", &e),
                    Err(_) => {}
                }
            }
            // Bounded by one renewal period: a request stuck on a dead etcd member (or
            // waiting out an election) must not hold back the next keep-alive.
            let reconciled =
                tokio::time::timeout(period, self.reconcile(&mut client, lease, &mut owned)).await;
            match reconciled {
                Err(_) => {
                    self.etcd_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(member = %self.config.member, "etcd: ownership check timed out");
                }
                Ok(Err(e)) => self.etcd_error("ownership", &e),
                Ok(Ok(members)) => {
                    self.etcd_ok();
                    self.publish(View {
                        lease: Some(lease),
                        members,
                        owned: owned.clone(),
                    })
                }
            }
        }
    }

    /// Frees the owner keys a previous session's lease still holds, so this session can
    /// claim them now rather than when that lease lapses. Best effort: a lease that
    /// expired already is not found, and one etcd will not revoke lapses by itself.
    async fn revoke_previous(&self, client: &mut Client, lease: i64) {
        let period = (self.config.lease_ttl / 3).max(Duration::from_millis(500));
        match tokio::time::timeout(period, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => tracing::info!(
                member = %self.config.member,
                lease,
                "cluster: revoked the previous session's lease"
            ),
            Ok(Err(e)) => {
                tracing::debug!(member = %self.config.member, lease, error = %e, "cluster: previous lease not revoked")
            }
            Err(_) => {
                tracing::debug!(member = %self.config.member, lease, "cluster: revoking the previous lease timed out")
            }
        }
    }

    /// Claims the free accounts assigned to this replica and gives up the others.
    async fn reconcile(
        &self,
        client: &mut Client,
        lease: i64,
        owned: &mut [bool],
    ) -> Result<Vec<String>, etcd_client::Error> {
        let members_prefix = self.key("members", "");
        let resp = client
            .get(
                members_prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut members: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|k| k.strip_prefix(&members_prefix))
            .map(str::to_string)
            .collect();
        members.sort();
        let owners_prefix = self.key("owners", "");
        let resp = client
            .get(
                owners_prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let holders: std::collections::HashMap<String, i64> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let k = kv.key_str().ok()?.strip_prefix(&owners_prefix)?;
                Some((k.to_string(), kv.lease()))
            })
            .collect();
        let me = self.config.member.as_str();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = self.key("owners", account);
            let mine = members.iter().any(|m| m == me) && assign(account, &members) == Some(me);
            let holder = holders.get(account).copied();
            owned[i] = holder == Some(lease);
            if mine && holder.is_none() {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        me,
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                owned[i] = client.txn(txn).await?.succeeded();
            } else if !mine && owned[i] {
                let txn = Txn::new()
                    .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                client.txn(txn).await?;
                owned[i] = false;
            }
        }
        Ok(members)
    }

    /// Records `intent` for account `idx` in etcd if, and only if, this replica still owns
    /// it. Call before every provider write; on an error, do not call the provider.
    pub async fn fence(&self, idx: usize, intent: &str) -> Result<(), FenceError> {
        self.fence_with(idx, intent, None).await
    }

    /// [`Cluster::fence`] for a watchdog power action on one VM, which also keeps the
    /// VM's cooldown and cap across replicas: the action times live in etcd under
    /// `actions/<provider>/<account>/<vm>`, so a new owner after a failover sees what the
    /// old one did.
    pub async fn fence_action(
        &self,
        idx: usize,
        intent: &str,
        guard: ActionGuard,
    ) -> Result<(), FenceError> {
        self.fence_with(idx, intent, Some(guard)).await
    }

    async fn fence_with(
        &self,
        idx: usize,
        intent: &str,
        guard: Option<ActionGuard>,
    ) -> Result<(), FenceError> {
        let account = self.accounts.get(idx).cloned().unwrap_or_default();
        let Some(lease) = self.view.borrow().lease else {
            return Err(FenceError::NoLease);
        };
        let Some(mut client) = self.client.lock().await.clone() else {
            return Err(FenceError::NoLease);
        };
        let timeout = self.config.lease_ttl.min(Duration::from_secs(5));
        let etcd = |e: etcd_client::Error| {
            self.etcd_error("fence", &e);
            FenceError::Etcd {
                account: account.clone(),
                reason: e.to_string(),
            }
        };
        let late = || {
            self.etcd_errors.fetch_add(1, Ordering::Relaxed);
            FenceError::Etcd {
                account: account.clone(),
                reason: format!("no answer within {}", humantime::format_duration(timeout)),
            }
        };
        let value = serde_json::json!({
            "member": self.config.member,
            "intent": intent,
            "at": chrono::Utc::now().to_rfc3339(),
        })
        .to_string();
        let mut compares = vec![Compare::lease(
            self.key("owners", &account),
            CompareOp::Equal,
            lease,
        )];
        let mut ops = vec![TxnOp::put(self.key("intents", &account), value, None)];
        if let Some(g) = guard {
            let key = self.key("actions", &format!("{account}/{}", g.vm));
            let got = tokio::time::timeout(timeout, client.get(key.as_str(), None))
                .await
                .map_err(|_| late())?
                .map_err(etcd)?;
            let (revision, past) = match got.kvs().first() {
                Some(kv) => (
                    kv.mod_revision(),
                    serde_json::from_slice::<ActionTimes>(kv.value()).unwrap_or_default(),
                ),
                None => (0, ActionTimes::default()),
            };
            let window = chrono::Duration::from_std(g.window).unwrap_or(chrono::Duration::MAX);
            let cooldown = chrono::Duration::from_std(g.cooldown).unwrap_or(chrono::Duration::MAX);
            let mut times: Vec<_> = past
                .times
                .into_iter()
                .filter(|t| g.now.signed_duration_since(*t) < window)
                .collect();
            if let Some(last) = times.iter().max() {
                if g.now.signed_duration_since(*last) < cooldown {
                    return Err(FenceError::Cooldown {
                        account,
                        vm: g.vm,
                        member: past.member,
                        at: last.to_rfc3339(),
                        cooldown: humantime::format_duration(g.cooldown).to_string(),
                    });
                }
            }
            if times.len() >= g.max_actions as usize {
                return Err(FenceError::Cap {
                    account,
                    vm: g.vm,
                    count: times.len(),
                    window: humantime::format_duration(g.window).to_string(),
                });
            }
            times.push(g.now);
            let next = ActionTimes {
                member: self.config.member.clone(),
                times,
                rule: g.rule,
                action: g.action,
                rung: g.rung,
            };
            // Nobody else recorded an action on the VM since it was read.
            compares.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            ));
            ops.push(TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&next).unwrap_or_default(),
                None,
            ));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        match tokio::time::timeout(timeout, client.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => Ok(()),
            Ok(Ok(_)) => Err(FenceError::NotOwner { account }),
            Ok(Err(e)) => Err(etcd(e)),
            Err(_) => Err(late()),
        }
    }

    /// This replica's member name.
    pub fn member(&self) -> &str {
        &self.config.member
    }

    fn request_timeout(&self) -> Duration {
        self.config.lease_ttl.min(Duration::from_secs(5))
    }

    /// The connected client, or why there is none.
    async fn connected(&self, what: &str) -> Result<Client, StateError> {
        self.client
            .lock()
            .await
            .clone()
            .ok_or_else(|| StateError::Etcd {
                what: what.to_string(),
                reason: "not connected".into(),
            })
    }

    fn state_error(&self, what: &str, e: &etcd_client::Error) -> StateError {
        self.etcd_error(what, e);
        StateError::Etcd {
            what: what.to_string(),
            reason: e.to_string(),
        }
    }

    fn state_late(&self, what: &str) -> StateError {
        self.etcd_errors.fetch_add(1, Ordering::Relaxed);
        StateError::Etcd {
            what: what.to_string(),
            reason: format!(
                "no answer within {}",
                humantime::format_duration(self.request_timeout())
            ),
        }
    }

    /// Reads one shared-state key (relative to the prefix) with its revision.
    pub async fn read(&self, key: &str) -> Result<Versioned, StateError> {
        let mut client = self.connected(key).await?;
        let got = tokio::time::timeout(self.request_timeout(), client.get(self.key_of(key), None))
            .await
            .map_err(|_| self.state_late(key))?
            .map_err(|e| self.state_error(key, &e))?;
        Ok(match got.kvs().first() {
            Some(kv) => Versioned {
                value: Some(kv.value().to_vec()),
                revision: kv.mod_revision(),
            },
            None => Versioned::default(),
        })
    }

    /// Every key under `prefix` (relative to the cluster prefix), with the part after
    /// `prefix`.
    pub async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut client = self.connected(prefix).await?;
        let full = self.key_of(prefix);
        let got = tokio::time::timeout(
            self.request_timeout(),
            client.get(full.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| self.state_late(prefix))?
        .map_err(|e| self.state_error(prefix, &e))?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = kv.key_str().ok()?.strip_prefix(full.as_str())?;
                Some((rest.to_string(), kv.value().to_vec()))
            })
            .collect())
    }

    /// Writes `puts` in one transaction. With `fence = Some(idx)` only while this replica
    /// still owns account `idx` (else [`FenceError::NotOwner`]); each put with an
    /// `expect` only if its key was not written since it was read (else
    /// [`StateError::Conflict`]).
    pub async fn write(
        &self,
        fence: Option<usize>,
        puts: Vec<SharedPut>,
    ) -> Result<(), StateError> {
        let what = puts.first().map(|p| p.key.clone()).unwrap_or_default();
        let mut compares = Vec::new();
        let mut owner_key = None;
        if let Some(idx) = fence {
            let account = self.accounts.get(idx).cloned().unwrap_or_default();
            let Some(lease) = self.view.borrow().lease else {
                return Err(FenceError::NoLease.into());
            };
            let key = self.key("owners", &account);
            compares.push(Compare::lease(key.as_str(), CompareOp::Equal, lease));
            owner_key = Some((key, lease, account));
        }
        let mut ops = Vec::new();
        for p in puts {
            let key = self.key_of(&p.key);
            if let Some(rev) = p.expect {
                compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, rev));
            }
            ops.push(TxnOp::put(key, p.value, None));
        }
        let mut txn = Txn::new().when(compares).and_then(ops);
        if let Some((key, _, _)) = &owner_key {
            // On failure, tells an ownership loss from a concurrent write.
            txn = txn.or_else([TxnOp::get(key.as_str(), None)]);
        }
        let mut client = self.connected(&what).await?;
        let resp = tokio::time::timeout(self.request_timeout(), client.txn(txn))
            .await
            .map_err(|_| self.state_late(&what))?
            .map_err(|e| self.state_error(&what, &e))?;
        if resp.succeeded() {
            return Ok(());
        }
        if let Some((_, lease, account)) = owner_key {
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.lease())),
                _ => None,
            });
            if holder.flatten() != Some(lease) {
                return Err(FenceError::NotOwner { account }.into());
            }
        }
        Err(StateError::Conflict { what })
    }

    /// The last power action any replica recorded on `vm` of account `idx`.
    pub async fn last_action(
        &self,
        idx: usize,
        vm: &str,
    ) -> Result<Option<LastAction>, StateError> {
        let account = self.accounts.get(idx).cloned().unwrap_or_default();
        let key = format!("actions/{account}/{vm}");
        let got = self.read(&key).await?;
        let Some(bytes) = got.value else {
            return Ok(None);
        };
        let t: ActionTimes = serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
            what: key,
            reason: e.to_string(),
        })?;
        Ok(t.times.iter().max().map(|at| LastAction {
            member: t.member.clone(),
            rule: t.rule.clone(),
            action: t.action.clone(),
            rung: t.rung,
            at: *at,
        }))
    }

    fn key_of(&self, rest: &str) -> String {
        format!("{}/{rest}", self.config.prefix)
    }

    /// The index of `<provider>/<account>`.
    pub fn index_of(&self, provider: &str, account: &str) -> Option<usize> {
        let key = format!("{provider}/{account}");
        self.accounts.iter().position(|a| *a == key)
    }
}

impl FamilySource for Cluster {
    fn render(&self, set: &mut FamilySet) {
        let v = self.view.borrow().clone();
        set.gauge(&defs::CLUSTER_MEMBERS, &[], v.members.len() as f64);
        set.gauge(&defs::CLUSTER_ACCOUNTS, &[], self.accounts.len() as f64);
        set.gauge(
            &defs::CLUSTER_ACCOUNTS_OWNED,
            &[],
            v.owned.iter().filter(|o| **o).count() as f64,
        );
        set.gauge(
            &defs::CLUSTER_LEASE_UP,
            &[],
            if v.lease.is_some() { 1.0 } else { 0.0 },
        );
        set.counter(
            &defs::CLUSTER_ETCD_ERRORS,
            &[],
            self.etcd_errors.load(Ordering::Relaxed) as f64,
        );
        set.counter(
            &defs::CLUSTER_OWNERSHIP_CHANGES,
            &[],
            self.ownership_changes.load(Ordering::Relaxed) as f64,
        );
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }
}
