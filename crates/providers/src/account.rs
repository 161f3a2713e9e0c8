//! One configured account as its provider client needs it: where it lives, its loaded
//! credentials, and the limits all accounts of its provider share.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::secret::Secret;

use crate::lnvps::BtcUnit;
use crate::stablevps::ApiKeyHeader;

/// Limits shared by all accounts of one provider.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProviderLimits {
    /// Requests per minute from this host, all accounts together (LNVPS: 600 per IP).
    pub requests_per_minute: u32,
    /// Per-VM calls in flight at once per account.
    pub concurrency: usize,
    /// Attempts per request, first one included.
    pub max_attempts: u32,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            concurrency: 4,
            max_attempts: 3,
        }
    }
}

/// Credentials of one account, loaded.
#[derive(Clone)]
pub enum Credentials {
    Nostr(Secret<nostr::Keys>),
    /// StableVPS: `read` polls; `write`, when set, is the only key used for actions
    /// (least privilege: a read-scope key for polling, a full-scope key for writes).
    /// Without `write` the read key does both and its scope decides.
    ApiKey {
        read: Secret<String>,
        write: Option<Secret<String>>,
        header: ApiKeyHeader,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Nostr(_) => f.write_str("Nostr([redacted])"),
            Credentials::ApiKey { write, header, .. } => write!(
                f,
                "ApiKey {{ read: [redacted], write: {}, header: {} }}",
                if write.is_some() {
                    "[redacted]"
                } else {
                    "none"
                },
                header.as_str()
            ),
        }
    }
}

/// One account to poll.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub name: String,
    pub provider: ProviderKind,
    pub base_url: Url,
    pub poll_interval: Duration,
    pub credentials: Credentials,
    pub btc_amount_unit: BtcUnit,
    pub vm_names: HashMap<String, String>,
    /// Overrides the provider's probe port for this account's VMs.
    pub probe_port: Option<u16>,
}
