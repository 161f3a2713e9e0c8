//! One configured account as its provider client needs it: where it lives, its loaded
//! credentials, and the limits all accounts of its provider share.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::config_doc::KeyDoc;
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

/// `[providers.<name>]`: the limits all accounts of one provider share.
pub const LIMIT_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`providers.<p>.requests_per_minute`"#,
        default: r#"600"#,
        meaning: r#"request budget per upstream host, all accounts together"#,
    },
    KeyDoc {
        key: r#"`providers.<p>.concurrency`"#,
        default: r#"4"#,
        meaning: r#"per-VM calls in flight per account"#,
    },
    KeyDoc {
        key: r#"`providers.<p>.max_attempts`"#,
        default: r#"3"#,
        meaning: r#"attempts per request"#,
    },
    KeyDoc {
        key: r#"`providers.stablevps.plans.<planId>`"#,
        default: r#"built-in table"#,
        meaning: r#"overrides of the StableVPS [plan table](providers.md#plan-table), see [above](#a-stablevps-account)"#,
    },
];

/// `[[accounts]]`.
pub const ACCOUNT_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`accounts[].name`"#,
        default: r#"—"#,
        meaning: r#"account label"#,
    },
    KeyDoc {
        key: r#"`accounts[].provider`"#,
        default: r#"—"#,
        meaning: r#"`lnvps` or `stablevps`"#,
    },
    KeyDoc {
        key: r#"`accounts[].base_url`"#,
        default: r#"provider's"#,
        meaning: r#"API root (`https://api.lnvps.net`, `https://stablevps.com`)"#,
    },
    KeyDoc {
        key: r#"`accounts[].nsec_file` / `nsec_env`"#,
        default: r#"—"#,
        meaning: r#"lnvps only, exactly one: the Nostr secret key (hex or nsec) from a file or an environment variable. A key file readable by group or others draws a warning"#,
    },
    KeyDoc {
        key: r#"`accounts[].api_key_file` / `api_key_env`"#,
        default: r#"—"#,
        meaning: r#"stablevps only, exactly one: the API key (`svps_live_…`) used for polling; a `read`-scope key is enough"#,
    },
    KeyDoc {
        key: r#"`accounts[].write_api_key_file` / `write_api_key_env`"#,
        default: r#"—"#,
        meaning: r#"stablevps only, optional: a separate key used only for actions (start/stop/reboot). Without it the polling key is used and its scope decides whether actions are enabled"#,
    },
    KeyDoc {
        key: r#"`accounts[].auth_header`"#,
        default: r#"`bearer`"#,
        meaning: r#"stablevps only: `bearer` (`Authorization: Bearer …`) or `x-api-key` (`X-API-Key: …`)"#,
    },
    KeyDoc {
        key: r#"`accounts[].poll_interval`"#,
        default: r#"global"#,
        meaning: r#"per-account interval"#,
    },
    KeyDoc {
        key: r#"`accounts[].btc_amount_unit`"#,
        default: r#"`auto`"#,
        meaning: r#"lnvps only: how BTC amounts are read (`auto`, `msat`, `sat`; see [LNVPS API notes](providers.md#lnvps-api-notes))"#,
    },
    KeyDoc {
        key: r#"`accounts[].vm_names`"#,
        default: r#"—"#,
        meaning: r#"VM id → name for the `name` label (default: LNVPS forward DNS or `vm-<id>`; StableVPS `hostname` if the list has it, else `serverId`)"#,
    },
    KeyDoc {
        key: r#"`accounts[].probe_port`"#,
        default: r#"provider's"#,
        meaning: r#"probe port for this account's VMs"#,
    },
];
