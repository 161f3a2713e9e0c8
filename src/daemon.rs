//! Wires a validated configuration into running tasks: one poller per account, the
//! metrics encoder, the web server and the notification channel (email outbox sender),
//! all stopped by one cancellation token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::FamilySource;
use crate::metrics::{encoder, MetricsCache, SelfMetrics};
use crate::notify::{self, email::EmailNotifier, Notify};
use crate::poll::Poller;
use crate::renew::report::RenewReport;
use crate::store::StateStore;
use crate::watchdog::engine::{self, WatchdogParts};
use crate::watchdog::journal::Journal;
use crate::watchdog::probe::{self, ProbeSettings, ProbeStore};
use crate::watchdog::report::WatchdogReport;
use crate::web::{self, WebState};
use crate::web_config::live::LiveWebConfig;
use crate::web_config::WebConfig;
use vpswatch_model::clock::SharedClock;
use vpswatch_model::snapshot::SnapshotStore;
use vpswatch_providers::budget::BudgetRegistry;
use vpswatch_providers::AccountConfig;
use vpswatch_providers::{self, BuildContext, SharedProvider};

fn probe_settings(config: &Config) -> ProbeSettings {
    ProbeSettings {
        interval: config.probes.interval,
        timeout: config.probes.timeout,
        account_ports: config
            .accounts
            .iter()
            .filter_map(|a| a.probe_port.map(|p| ((a.provider, a.name.clone()), p)))
            .collect(),
        default_ports: [
            (
                vpswatch_model::account::ProviderKind::Lnvps,
                config.probes.ports.lnvps,
            ),
            (
                vpswatch_model::account::ProviderKind::Stablevps,
                config.probes.ports.stablevps,
            ),
        ]
        .into_iter()
        .collect(),
        targets: crate::watchdog::probe_targets::ProbeTargets::new(&config.probes.targets),
        rule_ports: config
            .watchdog
            .rules
            .iter()
            .filter_map(|r| r.port.map(|p| (r.selector.clone(), p)))
            .collect(),
    }
}

/// What this replica does with one account.
enum Holding {
    /// Not owned: nothing polled, nothing exported.
    No,
    /// Owned: its poller runs until this token is cancelled.
    Polling(CancellationToken),
    /// Owned when the lease was lost: not polled (etcd cannot confirm the ownership),
    /// but its last data is still exported, its staleness growing, until a lease is back.
    Kept,
}

/// Runs each account's poller while this replica owns the account: started when it is
/// taken over, stopped (and the account's data dropped) the moment it is given up while
/// holding a lease, i.e. when another replica may own it now. Without a lease (etcd
/// unreachable or without quorum) nobody can take it over: polling stops, but the last
/// data stays (and marks itself stale) until the lease is back and says who owns it.
async fn follow_ownership(
    mut view: tokio::sync::watch::Receiver<crate::cluster::View>,
    pollers: Vec<Poller>,
    store: Arc<SnapshotStore>,
    cancel: CancellationToken,
) {
    let mut holding: Vec<Holding> = pollers.iter().map(|_| Holding::No).collect();
    loop {
        let (lease, owned) = {
            let v = view.borrow_and_update();
            (v.lease, v.owned.clone())
        };
        for (idx, poller) in pollers.iter().enumerate() {
            let own = owned.get(idx).copied().unwrap_or(false);
            match (&holding[idx], own, lease.is_some()) {
                (Holding::No | Holding::Kept, true, _) => {
                    let token = cancel.child_token();
                    store.set_owned(idx, true);
                    tokio::spawn(
                        Poller {
                            initial_delay: Duration::ZERO,
                            ..poller.clone()
                        }
                        .run(token.clone()),
                    );
                    holding[idx] = Holding::Polling(token);
                }
                (Holding::Polling(token), false, false) => {
                    token.cancel();
                    holding[idx] = Holding::Kept;
                }
                (Holding::Polling(token), false, true) => {
                    token.cancel();
                    store.set_owned(idx, false);
                    holding[idx] = Holding::No;
                }
                (Holding::Kept, false, true) => {
                    store.set_owned(idx, false);
                    holding[idx] = Holding::No;
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = view.changed() => if r.is_err() { return },
        }
    }
}

/// A running daemon.
pub struct Daemon {
    /// Where the web server listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    pub store: Arc<SnapshotStore>,
    pub self_metrics: Arc<SelfMetrics>,
    pub cache: MetricsCache,
    pub providers: Vec<SharedProvider>,
    pub probes: Arc<ProbeStore>,
    /// The watchdog's metrics state (empty when no rules are configured).
    pub watchdog: Arc<WatchdogReport>,
    /// Renewal counters (`vpswatch_renewals_total` and friends).
    pub renewals: Arc<RenewReport>,
    /// The watchdog journal; `None` when no rules are configured.
    pub journal: Option<Journal>,
    /// Where alerts and events go (the watchdog's handle): email when configured,
    /// else the log.
    pub notifier: Arc<dyn Notify>,
    /// The email channel, when configured (outbox inspection).
    pub email: Option<Arc<EmailNotifier>>,
    /// The state database, opened when something needs it (rules or email).
    pub state: Option<StateStore>,
    /// The web configuration in force (TLS, auth, headers), reloaded from its file.
    pub web_config: Arc<LiveWebConfig>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

/// Why the daemon could not start; each names what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("[cluster] is set, but this vpswatch was built without the `cluster` feature")]
    ClusterNotBuilt,
    /// The web config file (`web.config_file`): the message names the file and key.
    #[error(transparent)]
    WebConfig(#[from] vpswatch_model::problem::ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("account {account}: {source}")]
    Client {
        account: String,
        source: vpswatch_providers::BuildError,
    },
    #[error(transparent)]
    StateStore(#[from] crate::store::StoreError),
    #[error(transparent)]
    Notifier(#[from] notify::NotifierError),
}

impl Daemon {
    /// Binds the listener and starts every task.
    pub async fn start(config: Config, clock: SharedClock) -> Result<Daemon, StartError> {
        Self::start_with(config, clock, None).await
    }

    /// Like [`Daemon::start`]; `notifier` replaces the configured channel (tests).
    pub async fn start_with(
        config: Config,
        clock: SharedClock,
        notifier: Option<Arc<dyn Notify>>,
    ) -> Result<Daemon, StartError> {
        crate::tls::install_crypto_provider();
        if config.cluster.is_some() && !cfg!(feature = "cluster") {
            return Err(StartError::ClusterNotBuilt);
        }
        // TLS, auth and headers; a broken file stops the start.
        let web_config = Arc::new(match &config.web.config_file {
            Some(path) => LiveWebConfig::from_file(path)?,
            None => LiveWebConfig::fixed(WebConfig::default()),
        });
        let listen = |source| StartError::Listen {
            address: config.listen_address,
            source,
        };
        let listener = TcpListener::bind(config.listen_address)
            .await
            .map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;

        let store =
            SnapshotStore::new(config.accounts.iter().map(|a| (a.provider, a.name.clone())));
        let self_metrics = SelfMetrics::new();
        let budgets = BudgetRegistry::default();
        let client_settings: HashMap<_, _> = config
            .accounts
            .iter()
            .map(|a| (a.provider, config.client_settings(a.provider)))
            .collect();
        // What every client of an account (the poller's, the billing's) is built with:
        // one budget per upstream host, one request observer per account.
        let context = {
            let (settings, budgets, self_metrics) = (&client_settings, &budgets, &self_metrics);
            let clock = clock.clone();
            move |a: &AccountConfig| BuildContext {
                settings: &settings[&a.provider],
                budgets,
                observer: self_metrics.observer(a.provider.as_str(), &a.name),
                clock: clock.clone(),
            }
        };
        let mut providers = Vec::new();
        for account in &config.accounts {
            let p = vpswatch_providers::build(account, context(account)).map_err(|source| {
                StartError::Client {
                    account: account.name.clone(),
                    source,
                }
            })?;
            providers.push(p);
        }

        // The state store is only opened (and created) when something persists: the
        // watchdog's journal or the email outbox.
        let watchdog_runs = !config.watchdog.rules.is_empty() || config.alertmanager.is_some();
        let state = if !watchdog_runs && config.email.is_none() && config.renew_rules.is_empty() {
            None
        } else {
            Some(StateStore::open(&config.state_dir)?)
        };
        let built = notify::build_notifier(
            config.email.as_ref(),
            state.as_ref(),
            clock.clone(),
            &self_metrics,
        )?;
        let email = built.email;
        let notifier = notifier.unwrap_or(built.notify);

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(state) = &state {
            // Reopens the database after an I/O error, so nothing waits for a restart.
            state.attach_metrics(self_metrics.clone());
            tasks.spawn(state.clone().keep_open(cancel.child_token()));
        }
        if let Some(email) = &email {
            tasks.spawn(email.clone().run(cancel.child_token()));
        }
        let cache: MetricsCache = Default::default();
        let n = config.accounts.len().max(1) as u32;
        let pollers: Vec<Poller> = config
            .accounts
            .iter()
            .zip(&providers)
            .enumerate()
            .map(|(idx, (account, p))| Poller {
                idx,
                provider: p.clone(),
                store: store.clone(),
                clock: clock.clone(),
                interval: account.poll_interval,
                timeout: config.poll_timeout,
                // Spread first polls over up to one second so accounts do not burst together.
                initial_delay: (Duration::from_secs(1) / n).min(account.poll_interval / n)
                    * idx as u32,
            })
            .collect();
        let cluster = config.cluster.clone().and_then(|c| {
            crate::cluster::Cluster::create(
                c,
                config
                    .accounts
                    .iter()
                    .map(|a| format!("{}/{}", a.provider, a.name))
                    .collect(),
            )
        });
        if let (Some(email), Some(cluster)) = (&email, &cluster) {
            email.share_marks(cluster.clone());
        }
        match &cluster {
            None => {
                for poller in pollers {
                    tasks.spawn(poller.run(cancel.child_token()));
                }
            }
            Some(cluster) => {
                // Nothing is owned until etcd says so.
                for idx in 0..config.accounts.len() {
                    store.set_owned(idx, false);
                }
                tasks.spawn(cluster.clone().run(cancel.child_token()));
                tasks.spawn(follow_ownership(
                    cluster.subscribe(),
                    pollers,
                    store.clone(),
                    cancel.child_token(),
                ));
            }
        }
        let probes = Arc::new(ProbeStore::default());
        if config.probes.enabled {
            tasks.spawn(probe::run(
                store.clone(),
                probes.clone(),
                probe_settings(&config),
                clock.clone(),
                cancel.child_token(),
            ));
        }
        let watchdog = Arc::new(WatchdogReport::default());
        let renewals = Arc::new(RenewReport::default());
        let journal = state
            .clone()
            .filter(|_| watchdog_runs)
            .map(|s| Journal::keeping(s, config.watchdog.journal_entries));
        // The webhook's receiver (web side) and inbox (engine side).
        let (alertmanager, inbox) = match &config.alertmanager {
            Some(c) => {
                let (receiver, inbox) =
                    crate::watchdog::webhook::Receiver::new(c, watchdog.clone());
                (Some(Arc::new(receiver)), Some((c.mappings.clone(), inbox)))
            }
            None => (None, None),
        };
        if let Some(journal) = &journal {
            if !config.probes.enabled
                && config
                    .watchdog
                    .rules
                    .iter()
                    .any(|r| r.condition == crate::watchdog::rules::Condition::ProbeFailing)
            {
                tracing::warn!("probe_failing rules never fire: probes are disabled");
            }
            tasks.spawn(engine::run(
                WatchdogParts {
                    config: config.watchdog.clone(),
                    staleness_limit: config.staleness_limit,
                    store: store.clone(),
                    probes: probes.clone(),
                    providers: providers.clone(),
                    journal: journal.clone(),
                    notifier: notifier.clone(),
                    clock: clock.clone(),
                    report: watchdog.clone(),
                    gates: crate::watchdog::gates::build(&config.watchdog),
                    webhook: inbox,
                    cluster: cluster.clone(),
                },
                cancel.child_token(),
            ));
        }
        // Lightning renewal: its own task, beside the engine.
        if let (false, Some(state)) = (config.renew_rules.is_empty(), &state) {
            let mut accounts = Vec::new();
            for a in &config.accounts {
                let billing =
                    vpswatch_providers::lnvps_billing(a, context(a)).map_err(|source| {
                        StartError::Client {
                            account: a.name.clone(),
                            source,
                        }
                    })?;
                if let Some(billing) = billing {
                    accounts.push(Arc::new(crate::renew::RenewAccount {
                        name: a.name.clone(),
                        btc_unit: a.btc_amount_unit,
                        billing,
                    }));
                }
            }
            tasks.spawn(crate::renew::run(
                crate::renew::RenewParts {
                    rules: config.renew_rules.clone(),
                    global_dry_run: config.watchdog.dry_run,
                    staleness_limit: config.staleness_limit,
                    store: store.clone(),
                    accounts,
                    journal: crate::renew::journal::RenewalJournal::new(
                        state.clone(),
                        cluster.clone(),
                    ),
                    notifier: notifier.clone(),
                    clock: clock.clone(),
                    report: renewals.clone(),
                    cluster: cluster.clone(),
                },
                cancel.child_token(),
            ));
        }
        // Probes, then renewals, then the watchdog: the order their families appear in.
        let process = Arc::new(crate::metrics::process::ProcessMetrics::default());
        tasks.spawn(process.clone().run(cancel.child_token()));
        let mut sources: Vec<Arc<dyn FamilySource>> =
            vec![probes.clone(), renewals.clone(), watchdog.clone(), process];
        if let Some(c) = &cluster {
            sources.push(c.clone());
        }
        // A well-formed exposition from the first scrape (every account `provider_up 0`
        // until its first poll): an empty 200 would read to Prometheus as "every series
        // gone".
        cache.store(Arc::new(encoder::render(&store, &sources, &self_metrics)));
        tasks.spawn(encoder::run(
            store.clone(),
            sources,
            self_metrics.clone(),
            cache.clone(),
            cancel.child_token(),
        ));
        let web_state = Arc::new(WebState {
            cache: cache.clone(),
            store: store.clone(),
            journal: journal.clone(),
            state_db: state.clone(),
            alertmanager,
            status: Arc::new(crate::status::StatusSources {
                store: store.clone(),
                probes: probes.clone(),
                watchdog: watchdog.clone(),
                renewals: renewals.clone(),
                journal: journal.clone(),
                clock: clock.clone(),
                policy: crate::status::StatusPolicy::from_config(&config),
            }),
            renewals: state
                .clone()
                .filter(|_| !config.renew_rules.is_empty())
                .map(|s| crate::renew::journal::RenewalJournal::new(s, cluster.clone())),
        });
        // Reload the web config file; serve with limits.
        tasks.spawn(crate::web_config::live::watch(
            web_config.clone(),
            config.web.config_reload_interval,
            self_metrics.clone(),
            clock.clone(),
            cancel.child_token(),
        ));
        tasks.spawn(web::serve_with(
            listener,
            web_state,
            web_config.clone(),
            config.web.limits.clone(),
            cancel.child_token(),
        ));
        tracing::info!(
            %addr,
            scheme = web_config.load().scheme(),
            web = %web_config.load().summary(),
            accounts = config.accounts.len(),
            "vpswatch started"
        );
        Ok(Daemon {
            addr,
            store,
            self_metrics,
            cache,
            providers,
            probes,
            watchdog,
            renewals,
            journal,
            notifier,
            email,
            state,
            web_config,
            cancel,
            tasks,
        })
    }

    /// A token that stops the daemon when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until SIGTERM/SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        crate::signal::wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}
