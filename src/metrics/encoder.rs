//! Renders the exposition (text format 0.0.4) after every snapshot change and keeps it,
//! plain and gzip-compressed, for the web layer to serve as-is. Scrapes never encode and
//! never call a provider: two Prometheus replicas cost nothing extra.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::chunked::Exposition;
use super::defs;
use super::families::{add_account, FamilySet};
use super::self_metrics::SelfMetrics;
use super::source::FamilySource;
use vpswatch_model::snapshot::SnapshotStore;

/// One rendering of the exposition.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The text exposition, kept in chunks and sent as they are.
    pub plain: Exposition,
    pub gzip: Bytes,
    pub encode_time: Duration,
    /// Accounts whose first poll had not finished when this was rendered. `/-/ready`
    /// reads this, not the live store, so "ready" implies /metrics already has the data.
    pub pending: Vec<String>,
    /// False only for the placeholder before the first rendering.
    pub rendered: bool,
}

/// The latest rendering, shared with the web layer.
pub type MetricsCache = Arc<ArcSwap<Encoded>>;

/// Source revision baked in at build time (`build.rs`).
pub const REVISION: &str = env!("VPSWATCH_REVISION");

/// Renders every account's snapshot, the other parts' families (in the order given) and
/// the self-metrics.
pub fn render(
    store: &SnapshotStore,
    sources: &[Arc<dyn FamilySource>],
    self_metrics: &SelfMetrics,
) -> Encoded {
    let started = Instant::now();
    let snapshots = store.all();
    let pending = snapshots
        .iter()
        .filter(|s| s.polls == 0)
        .map(|s| format!("{}/{}", s.provider, s.account))
        .collect();
    let mut set = FamilySet::default();
    set.gauge(
        &defs::BUILD_INFO,
        &[env!("CARGO_PKG_VERSION"), REVISION],
        1.0,
    );
    for snap in &snapshots {
        add_account(&mut set, snap);
    }
    for source in sources {
        source.render(&mut set);
    }
    set.extend(self_metrics.gather());
    let plain = set.render();
    let gzip = gzip(&plain);
    Encoded {
        plain,
        gzip: Bytes::from(gzip),
        encode_time: started.elapsed(),
        pending,
        rendered: true,
    }
}

/// Compresses the exposition chunk by chunk (it is never joined). Level "fast": the
/// text compresses ~13× either way, and this runs on every change.
fn gzip(text: &Exposition) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 12 + 64),
        flate2::Compression::fast(),
    );
    for chunk in text.chunks() {
        // Writing to a Vec cannot fail.
        let _ = enc.write_all(chunk);
    }
    enc.finish().unwrap_or_default()
}

/// Re-renders whenever a snapshot, another part's families (probes, watchdog, renewals)
/// or a self-metric (provider requests, the alert outbox) change until cancelled; bursts
/// are coalesced, and the pause between renders grows with their cost.
pub async fn run(
    store: Arc<SnapshotStore>,
    sources: Vec<Arc<dyn FamilySource>>,
    self_metrics: Arc<SelfMetrics>,
    cache: MetricsCache,
    cancel: CancellationToken,
) {
    let sources: Arc<[Arc<dyn FamilySource>]> = sources.into();
    let mut receivers = vec![store.subscribe(), self_metrics.subscribe()];
    receivers.extend(sources.iter().map(|s| s.subscribe()));
    loop {
        for rx in &mut receivers {
            rx.mark_unchanged();
        }
        let (s, f, m) = (store.clone(), sources.clone(), self_metrics.clone());
        let started = tokio::time::Instant::now();
        match tokio::task::spawn_blocking(move || render(&s, &f, &m)).await {
            Ok(encoded) => cache.store(Arc::new(encoded)),
            Err(e) => tracing::error!(error = %e, "metrics encoder task failed"),
        }
        let took = started.elapsed();
        let changed =
            futures_util::future::select_all(receivers.iter_mut().map(|rx| Box::pin(rx.changed())));
        tokio::select! {
            _ = cancel.cancelled() => return,
            (r, _, _) = changed => if r.is_err() { return },
        }
        // Let a burst of publishes (many accounts finishing together, every provider
        // request of a poll) settle into one render. A render of a large fleet takes
        // hundreds of milliseconds, so the pause grows with it: nine times the last
        // render keeps the encoder under a tenth of a core however often things change.
        tokio::time::sleep((took * 9).max(Duration::from_millis(25))).await;
    }
}
