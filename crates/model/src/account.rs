//! Accounts as every part of vpswatch sees them, whichever provider they live at: which
//! upstream, what one successful poll returned, and money in major units.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::vm::{Vm, VmState};

/// Which upstream API an account lives at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Lnvps,
    Stablevps,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Lnvps => "lnvps",
            ProviderKind::Stablevps => "stablevps",
        }
    }

    /// The states this provider documents; `vps_state` exports one series per entry
    /// (1 for the current state, 0 otherwise) plus the raw value when it is none of them.
    pub fn known_states(self) -> &'static [VmState] {
        match self {
            ProviderKind::Lnvps => &[
                VmState::Running,
                VmState::Stopped,
                VmState::Creating,
                VmState::Unknown,
            ],
            ProviderKind::Stablevps => &[
                VmState::Running,
                VmState::Stopped,
                VmState::Creating,
                VmState::Suspended,
                VmState::Unknown,
            ],
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Account-level facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub email_verified: Option<bool>,
    pub api_key_expiry: Option<DateTime<Utc>>,
    /// Saved payment methods that are enabled (LNVPS auto-renewal needs one).
    pub enabled_payment_methods: Option<u32>,
    /// How long the wallet balance covers the upcoming renewals, in seconds, as of the
    /// poll (see the providers' `runway`); `None` when there is no wallet or nothing renews.
    pub wallet_runway_seconds: Option<f64>,
}

/// Everything one successful poll of an account returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountData {
    pub fetched_at: DateTime<Utc>,
    pub vms: Vec<Vm>,
    pub wallet: Option<Money>,
    pub facts: AccountFacts,
    /// Partial failures that did not fail the poll (one VM's time-series, account facts).
    pub warnings: Vec<String>,
}
