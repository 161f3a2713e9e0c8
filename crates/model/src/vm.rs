//! VMs as every part of vpswatch sees them, whichever provider reported them: state,
//! billing, usage, and the writes the watchdog may ask for.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// A VM's machine state, normalised across providers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmState {
    Running,
    Stopped,
    /// Being provisioned (LNVPS `creating`, StableVPS `provisioning`).
    Creating,
    Suspended,
    /// The provider said "unknown" or gave no state.
    Unknown,
    /// A value the provider sent that we do not know; kept verbatim (sanitised) so it is
    /// visible in metrics rather than silently mapped.
    Other(String),
}

impl VmState {
    pub fn label(&self) -> &str {
        match self {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Creating => "creating",
            VmState::Suspended => "suspended",
            VmState::Unknown => "unknown",
            VmState::Other(s) => s,
        }
    }

    /// Builds an `Other` state from an upstream string, bounded and label-safe.
    pub fn other(raw: &str) -> VmState {
        let cleaned: String = raw
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(32)
            .collect::<String>()
            .to_ascii_lowercase();
        if cleaned.is_empty() {
            VmState::Unknown
        } else {
            VmState::Other(cleaned)
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, VmState::Running)
    }
}

/// What renewing a VM for one billing period costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewal {
    pub price: Money,
    /// Length of the next period, in seconds.
    pub period_seconds: f64,
}

/// Resource usage from the newest complete time-series point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub at: DateTime<Utc>,
    /// Fraction of the allotted vCPUs, 0..1.
    pub cpu_ratio: f64,
    pub memory_bytes: f64,
    pub network_receive_bytes_per_second: f64,
    pub network_transmit_bytes_per_second: f64,
    pub disk_read_bytes_per_second: f64,
    pub disk_write_bytes_per_second: f64,
}

/// One VM as the provider last reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    /// The provider's id, as text.
    pub id: String,
    pub name: String,
    pub plan: String,
    pub location: String,
    pub image: String,
    pub ipv4: Option<Ipv4Addr>,
    pub state: VmState,
    /// When the provider last observed the VM's state; `None` = never (LNVPS timestamp 0).
    pub status_time: Option<DateTime<Utc>>,
    pub created: Option<DateTime<Utc>>,
    /// End of the paid period; `None` = never paid.
    pub expires: Option<DateTime<Utc>>,
    /// When the provider will delete the VM if it is not renewed.
    pub deleting_on: Option<DateTime<Utc>>,
    pub auto_renewal_enabled: Option<bool>,
    pub renewal: Option<Renewal>,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub disk_bytes: Option<f64>,
    pub uptime_seconds: Option<f64>,
    pub usage: Option<Usage>,
    /// Why `usage` is missing when it should be there (the per-VM call failed).
    pub usage_error: Option<String>,
    /// Billing facts a renewal needs (LNVPS subscription id, prepay limit).
    pub subscription_id: Option<String>,
    pub max_prepay_days: Option<u32>,
}

/// A write the watchdog may ask for. There is deliberately no `Delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAction {
    Start,
    Stop,
    Reboot,
}

impl VmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Reboot => "reboot",
        }
    }
}
