//! Counters and histograms about vpswatch's own work (requests to providers, alert
//! delivery), kept in a prometheus `Registry` because they accumulate between polls.
//!
//! Requests and alert metrics change between polls (a mail is queued or delivered at any
//! time, and a renewal or a watchdog action calls a provider at any time), so they announce each
//! change on a watch channel the encoder listens to; /metrics then shows them as they
//! are, not as they were at the last poll.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tokio::sync::watch;

use super::defs;
use vpswatch_providers::http::RequestObserver;

/// Request counters and latency histogram.
pub struct SelfMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Registered on first use, so a daemon without email exports no outbox gauges.
    alerts: OnceLock<AlertMetrics>,
    /// Registered on first use: only a daemon with a web config file exports them.
    web_config: OnceLock<WebConfigMetrics>,
    /// Registered on first use: only a daemon with a state database exports them.
    state_store: OnceLock<StateStoreMetrics>,
    changes: watch::Sender<u64>,
}

/// Delivery counters and outbox gauges of the notification channels.
pub struct AlertMetrics {
    alerts: IntCounterVec,
    outbox_messages: IntGauge,
    outbox_oldest: Gauge,
    outbox_rejected: IntGauge,
}

impl AlertMetrics {
    /// Counts one notification outcome (`queued`, `sent`, `failed_attempt`, …).
    pub fn count(&self, channel: &str, result: &str, n: u64) {
        self.alerts.with_label_values(&[channel, result]).inc_by(n);
    }

    /// The count so far for one channel and outcome (tests).
    pub fn get(&self, channel: &str, result: &str) -> u64 {
        self.alerts.with_label_values(&[channel, result]).get()
    }

    /// Sets the outbox gauges; `oldest` in Unix seconds, `None` for an empty outbox.
    pub fn set_outbox(&self, messages: u64, oldest: Option<f64>) {
        self.outbox_messages
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
        self.outbox_oldest.set(oldest.unwrap_or(0.0));
    }

    pub fn outbox_messages(&self) -> u64 {
        u64::try_from(self.outbox_messages.get()).unwrap_or(0)
    }

    /// Sets how many mails the server refused for good are kept aside.
    pub fn set_rejected(&self, messages: u64) {
        self.outbox_rejected
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    pub fn rejected_messages(&self) -> u64 {
        u64::try_from(self.outbox_rejected.get()).unwrap_or(0)
    }
}

// The families are built from the static definitions in `defs` and registered once into
// a registry of their own; a failure there is a programming error that the unit tests of
// this module and every daemon test would hit first.
#[allow(
    clippy::expect_used,
    reason = "static metric definitions registered once into a private registry"
)]
impl SelfMetrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(defs::PROVIDER_REQUESTS.name, defs::PROVIDER_REQUESTS.help),
            defs::PROVIDER_REQUESTS.labels,
        )
        .expect("static metric definition is valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                defs::PROVIDER_REQUEST_DURATION.name,
                defs::PROVIDER_REQUEST_DURATION.help,
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            defs::PROVIDER_REQUEST_DURATION.labels,
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        Arc::new(Self {
            registry,
            requests,
            duration,
            alerts: OnceLock::new(),
            web_config: OnceLock::new(),
            state_store: OnceLock::new(),
            changes: watch::channel(0).0,
        })
    }

    /// The alert metrics, registered on first call.
    pub fn alert_metrics(&self) -> &AlertMetrics {
        self.alerts.get_or_init(|| {
            let alerts = IntCounterVec::new(
                Opts::new(defs::ALERTS.name, defs::ALERTS.help),
                defs::ALERTS.labels,
            )
            .expect("static metric definition is valid");
            let outbox_messages = IntGauge::with_opts(Opts::new(
                defs::ALERT_OUTBOX_MESSAGES.name,
                defs::ALERT_OUTBOX_MESSAGES.help,
            ))
            .expect("static metric definition is valid");
            let outbox_oldest = Gauge::with_opts(Opts::new(
                defs::ALERT_OUTBOX_OLDEST.name,
                defs::ALERT_OUTBOX_OLDEST.help,
            ))
            .expect("static metric definition is valid");
            let outbox_rejected = IntGauge::with_opts(Opts::new(
                defs::ALERT_OUTBOX_REJECTED.name,
                defs::ALERT_OUTBOX_REJECTED.help,
            ))
            .expect("static metric definition is valid");
            for c in [
                Box::new(alerts.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(outbox_messages.clone()),
                Box::new(outbox_oldest.clone()),
                Box::new(outbox_rejected.clone()),
            ] {
                self.registry.register(c).expect("registered once");
            }
            AlertMetrics {
                alerts,
                outbox_messages,
                outbox_oldest,
                outbox_rejected,
            }
        })
    }

    /// The state database's gauges, registered on first call.
    pub fn state_store_metrics(&self) -> &StateStoreMetrics {
        self.state_store.get_or_init(|| {
            let writable = IntGauge::with_opts(Opts::new(
                defs::STATE_STORE_WRITABLE.name,
                defs::STATE_STORE_WRITABLE.help,
            ))
            .expect("static metric definition is valid");
            let errors = IntCounter::with_opts(Opts::new(
                defs::STATE_STORE_ERRORS.name,
                defs::STATE_STORE_ERRORS.help,
            ))
            .expect("static metric definition is valid");
            for c in [
                Box::new(writable.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(errors.clone()),
            ] {
                self.registry.register(c).expect("registered once");
            }
            StateStoreMetrics { writable, errors }
        })
    }

    // --- web config reload metrics ---
    /// The web config reload gauges, registered on first call.
    pub fn web_config_metrics(&self) -> &WebConfigMetrics {
        self.web_config.get_or_init(|| {
            let success = IntGauge::with_opts(Opts::new(
                defs::WEB_CONFIG_RELOAD_SUCCESS.name,
                defs::WEB_CONFIG_RELOAD_SUCCESS.help,
            ))
            .expect("static metric definition is valid");
            let timestamp = Gauge::with_opts(Opts::new(
                defs::WEB_CONFIG_RELOAD_TIMESTAMP.name,
                defs::WEB_CONFIG_RELOAD_TIMESTAMP.help,
            ))
            .expect("static metric definition is valid");
            for c in [
                Box::new(success.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(timestamp.clone()),
            ] {
                self.registry.register(c).expect("registered once");
            }
            WebConfigMetrics { success, timestamp }
        })
    }

    /// Tells the encoder that metrics changed outside a poll (it re-renders).
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes announced with [`SelfMetrics::changed`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// An observer that records one account's requests.
    pub fn observer(self: &Arc<Self>, provider: &str, account: &str) -> Arc<AccountObserver> {
        Arc::new(AccountObserver {
            metrics: self.clone(),
            provider: provider.to_string(),
            account: account.to_string(),
        })
    }

    /// Requests counted so far for one account and endpoint with one code (tests).
    pub fn request_count(&self, provider: &str, account: &str, endpoint: &str, code: &str) -> u64 {
        self.requests
            .with_label_values(&[provider, account, endpoint, code])
            .get()
    }
}

/// Whether the state database takes writes, and its I/O errors.
pub struct StateStoreMetrics {
    writable: IntGauge,
    errors: IntCounter,
}

impl StateStoreMetrics {
    pub fn set_writable(&self, writable: bool) {
        self.writable.set(i64::from(writable));
    }

    pub fn count_error(&self) {
        self.errors.inc();
    }

    pub fn writable(&self) -> bool {
        self.writable.get() == 1
    }

    pub fn errors(&self) -> u64 {
        self.errors.get()
    }
}

/// Outcome of the latest `--web.config.file` load.
pub struct WebConfigMetrics {
    success: IntGauge,
    timestamp: Gauge,
}

impl WebConfigMetrics {
    /// A load succeeded at `at` (Unix seconds).
    pub fn succeeded(&self, at: f64) {
        self.success.set(1);
        self.timestamp.set(at);
    }

    /// A load failed; the time of the last success stays.
    pub fn failed(&self) {
        self.success.set(0);
    }
}

/// Records requests of one account.
pub struct AccountObserver {
    metrics: Arc<SelfMetrics>,
    provider: String,
    account: String,
}

impl RequestObserver for AccountObserver {
    fn observe(&self, endpoint: &str, code: &str, elapsed: Duration) {
        self.metrics
            .requests
            .with_label_values(&[&self.provider, &self.account, endpoint, code])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[&self.provider, &self.account, endpoint])
            .observe(elapsed.as_secs_f64());
        // Requests made between polls (renewals, watchdog actions) would otherwise
        // show only when the next poll re-renders; the encoder coalesces bursts.
        self.metrics.changed();
    }
}
