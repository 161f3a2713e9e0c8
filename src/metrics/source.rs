//! What the encoder renders besides the snapshots and the self-metrics: families owned by
//! other parts of the daemon (probe results, the watchdog, renewals). Each part renders
//! its own families and says when they changed, so the encoder depends on none of them.

use tokio::sync::watch;

use super::families::FamilySet;

/// Families one part of the daemon contributes to /metrics.
pub trait FamilySource: Send + Sync {
    /// Adds this part's families to the exposition being rendered.
    fn render(&self, set: &mut FamilySet);
    /// Changes whenever the families would render differently.
    fn subscribe(&self) -> watch::Receiver<u64>;
}
