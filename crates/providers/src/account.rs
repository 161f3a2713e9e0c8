//! One configured account as its provider client needs it: where it lives, its loaded
//! credentials, and the limits all accounts of its provider share.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::config_doc::KeyDoc;
use vpswatch_model::problem::Problem;
use vpswatch_model::redact;
use vpswatch_model::secret::Secret;

/// How to read BTC amounts: the real server sends millisatoshis, the older public
/// document says satoshis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BtcUnit {
    /// Decide by magnitude (see [`crate::lnvps::btc_amount_to_btc`]).
    #[default]
    Auto,
    Msat,
    Sat,
}

/// Which header carries the key. The API accepts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ApiKeyHeader {
    /// `Authorization: Bearer svps_live_…`
    #[default]
    #[serde(rename = "bearer")]
    Bearer,
    /// `X-API-Key: svps_live_…`
    #[serde(rename = "x-api-key")]
    XApiKey,
}

impl ApiKeyHeader {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyHeader::Bearer => "bearer",
            ApiKeyHeader::XApiKey => "x-api-key",
        }
    }
}

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

/// `[[accounts]]` as written; [`validate`] checks it.
#[derive(Debug, Deserialize)]
pub struct RawAccount {
    pub name: String,
    pub(crate) provider: ProviderKind,
    pub(crate) base_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) poll_interval: Option<Duration>,
    pub(crate) nsec_file: Option<PathBuf>,
    pub(crate) nsec_env: Option<String>,
    pub(crate) api_key_file: Option<PathBuf>,
    pub(crate) api_key_env: Option<String>,
    pub(crate) write_api_key_file: Option<PathBuf>,
    pub(crate) write_api_key_env: Option<String>,
    pub(crate) auth_header: Option<ApiKeyHeader>,
    pub(crate) btc_amount_unit: Option<BtcUnit>,
    #[serde(default)]
    pub(crate) vm_names: HashMap<String, String>,
    pub(crate) probe_port: Option<u16>,
}

/// Where a provider records what is wrong with one account's entry while it loads the
/// account's credentials; problems and warnings carry the entry's key path.
pub struct CheckContext<'a> {
    pub prefix: &'a str,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub problems: &'a mut Vec<Problem>,
    pub warnings: &'a mut Vec<Problem>,
}

impl CheckContext<'_> {
    pub fn problem(&mut self, key: &str, message: String) {
        self.problems.push(Problem {
            path: format!("{}.{key}", self.prefix),
            message,
        });
    }

    pub fn warning(&mut self, key: &str, message: String) {
        self.warnings.push(Problem {
            path: format!("{}.{key}", self.prefix),
            message,
        });
    }
}

/// Checks one `[[accounts]]` entry (`prefix` is its key path) and loads its credentials;
/// every problem is recorded with its key path.
pub fn validate(
    prefix: &str,
    raw: RawAccount,
    default_interval: Duration,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<AccountConfig> {
    let before = problems.len();
    let mut problem = vpswatch_model::problem::under(prefix, problems);
    if let Err(why) = vpswatch_model::problem::check_label_name(&raw.name) {
        problem("name", why.to_string());
    }
    let default_url = crate::module(raw.provider).default_base_url();
    let url_text = raw.base_url.as_deref().unwrap_or(default_url);
    let base_url = match Url::parse(url_text) {
        Ok(u) if u.scheme() == "https" => Some(u),
        Ok(u) if u.scheme() == "http" && is_loopback_host(&u) => Some(u),
        Ok(u) if u.scheme() == "http" => {
            problem(
                "base_url",
                format!(
                    "plain http is only allowed to loopback addresses (credentials would \
                     travel unencrypted to {})",
                    redact::value(u.host_str().unwrap_or("?"))
                ),
            );
            None
        }
        Ok(u) => {
            problem(
                "base_url",
                format!("scheme {:?} is not http or https", u.scheme()),
            );
            None
        }
        Err(e) => {
            problem("base_url", format!("{url_text:?} is not a URL: {e}"));
            None
        }
    };
    let poll_interval = raw.poll_interval.unwrap_or(default_interval);
    if poll_interval.is_zero() {
        problem("poll_interval", "must be greater than zero".into());
    }
    // Done recording under this prefix: the provider records its own problems next.
    drop(problem);
    let credentials = crate::module(raw.provider).credentials(
        &raw,
        &mut CheckContext {
            prefix,
            env,
            problems,
            warnings,
        },
    );
    if problems.len() > before {
        return None;
    }
    Some(AccountConfig {
        name: raw.name,
        provider: raw.provider,
        base_url: base_url?,
        poll_interval,
        credentials: credentials?,
        btc_amount_unit: raw.btc_amount_unit.unwrap_or_default(),
        vm_names: raw.vm_names,
        probe_port: raw.probe_port,
    })
}

fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}
