//! Gates an action must pass besides the rule's own guards: maintenance windows and
//! active Alertmanager silences. A gate that cannot tell (Alertmanager unreachable)
//! closes: "do nothing and tell someone", never "act".

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::action::Skip;
use super::engine::ActionGate;
use super::maintenance::Maintenance;
use super::rules::WatchdogConfig;
use super::selector::Target;
use super::silences::SilenceChecker;

/// Closed while a configured maintenance window covering the VM is open.
pub struct MaintenanceGate(pub Maintenance);

#[async_trait::async_trait]
impl ActionGate for MaintenanceGate {
    async fn check(&self, target: Target<'_>, now: DateTime<Utc>) -> Option<Skip> {
        self.0
            .active_for(target, now)
            .map(|name| Skip::Maintenance(name.to_string()))
    }
}

/// Closed while an active Alertmanager silence matches the VM's labels
/// (`provider`, `account`, `vm`, `name`).
pub struct SilenceGate(pub SilenceChecker);

#[async_trait::async_trait]
impl ActionGate for SilenceGate {
    async fn check(&self, target: Target<'_>, now: DateTime<Utc>) -> Option<Skip> {
        let labels = [
            ("provider", target.provider.as_str()),
            ("account", target.account),
            ("vm", target.vm.unwrap_or("")),
            ("name", target.vm_name.unwrap_or("")),
        ];
        match self.0.silenced_by(&labels, now).await {
            Ok(None) => None,
            Ok(Some(m)) => Some(Skip::Silenced(format!(
                "silence {} by {} until {}: {}",
                m.id,
                m.created_by,
                m.ends_at.to_rfc3339(),
                m.comment
            ))),
            Err(e) => Some(Skip::Error(format!(
                "cannot read Alertmanager silences: {e}"
            ))),
        }
    }
}

/// The gates the `[watchdog]` section asks for.
pub fn build(w: &WatchdogConfig) -> Vec<Arc<dyn ActionGate>> {
    let mut gates: Vec<Arc<dyn ActionGate>> = Vec::new();
    match Maintenance::new(&w.maintenance) {
        Ok(m) if !m.is_empty() => gates.push(Arc::new(MaintenanceGate(m))),
        Ok(_) => {}
        // Validated when the config was read; should this still fail, refuse to act.
        Err(problems) => {
            tracing::error!(?problems, "maintenance windows invalid; actions disabled");
            gates.push(Arc::new(ClosedGate(
                "maintenance windows could not be compiled".into(),
            )));
        }
    }
    if let Some(url) = &w.alertmanager_url {
        match SilenceChecker::new(url.as_str(), w.alertmanager_timeout, w.silence_refresh) {
            Ok(c) => gates.push(Arc::new(SilenceGate(c))),
            Err(e) => {
                tracing::error!(error = %e, "Alertmanager client unusable; actions disabled");
                gates.push(Arc::new(ClosedGate(e.to_string())));
            }
        }
    }
    gates
}

/// Always closed, with a reason.
struct ClosedGate(String);

#[async_trait::async_trait]
impl ActionGate for ClosedGate {
    async fn check(&self, _: Target<'_>, _: DateTime<Utc>) -> Option<Skip> {
        Some(Skip::Error(self.0.clone()))
    }
}
