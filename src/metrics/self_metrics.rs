//! Counters and histograms about vpswatch's own work (requests to providers), kept in a
//! prometheus `Registry` because they accumulate between polls.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::defs;
use crate::provider::http::RequestObserver;

/// Request counters and latency histogram.
pub struct SelfMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

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
        })
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
    }
}
