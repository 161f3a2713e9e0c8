//! The provider-neutral model and the one trait every provider client implements.
//!
//! The poller, the metrics encoder and the watchdog only ever see these types, so adding
//! a provider means one new file here plus one line in [`build`]. Everything is plain data
//! (no handles, no locks) so a snapshot can be shared read-only between tasks.

pub mod bounded;
pub mod budget;
pub mod http;
pub mod lnvps;
pub mod runway;
pub mod stablevps;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// An amount of money in major units (EUR 19.49, BTC 0.0001).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Money {
    pub amount: f64,
    pub currency: String,
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

/// Account-level facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub email_verified: Option<bool>,
    pub api_key_expiry: Option<DateTime<Utc>>,
    /// Saved payment methods that are enabled (LNVPS auto-renewal needs one).
    pub enabled_payment_methods: Option<u32>,
    /// How long the wallet balance covers the upcoming renewals, in seconds, as of the
    /// poll (see [`runway`]); `None` when there is no wallet or nothing renews.
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

/// Why a call to a provider failed. Messages never contain credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("{endpoint}: HTTP {status}: {message}")]
    Http {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint}: rate limited (HTTP 429), retry after {retry_after_secs} s")]
    RateLimited {
        endpoint: String,
        retry_after_secs: u64,
    },
    #[error("{endpoint}: timed out after {after_ms} ms")]
    Timeout { endpoint: String, after_ms: u64 },
    #[error("{endpoint}: connection failed: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("{endpoint}: invalid response: {detail}")]
    InvalidResponse { endpoint: String, detail: String },
    #[error("{endpoint}: could not sign the request: {detail}")]
    Auth { endpoint: String, detail: String },
    /// Refused locally, nothing was sent (e.g. actions disabled for a read-only key).
    #[error("{endpoint}: not sent: {reason}")]
    NotSent { endpoint: String, reason: String },
}

impl ProviderError {
    /// The value of the `code` label on `vpswatch_provider_requests_total`.
    pub fn code_label(&self) -> String {
        match self {
            ProviderError::Http { status, .. } => status.to_string(),
            ProviderError::RateLimited { .. } => "429".into(),
            ProviderError::Timeout { .. } => "timeout".into(),
            ProviderError::Connect { .. } => "connect_error".into(),
            ProviderError::InvalidResponse { .. } => "invalid_response".into(),
            ProviderError::Auth { .. } => "auth_error".into(),
            ProviderError::NotSent { .. } => "not_sent".into(),
        }
    }
}

/// One account at one provider.
#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    /// The account's configured name.
    fn account(&self) -> &str;
    /// Reads everything the exporter needs. Fails only when the account as a whole could
    /// not be read (the VM list); per-VM failures land in `warnings`/`usage_error`.
    async fn poll(&self) -> Result<AccountData, ProviderError>;
    /// Performs a write on one VM.
    async fn act(&self, vm_id: &str, action: VmAction) -> Result<(), ProviderError>;
    /// False when this account's credential cannot act (a read-only key, or no write
    /// credential configured): the watchdog then reports actions disabled and never
    /// calls [`Provider::act`]. May turn false at run time (a 403 on a write).
    fn actions_enabled(&self) -> bool {
        true
    }
}

pub type SharedProvider = Arc<dyn Provider>;

/// Everything a provider client needs from the daemon.
pub struct BuildContext<'a> {
    pub config: &'a crate::config::Config,
    pub budgets: &'a budget::BudgetRegistry,
    pub observer: Arc<dyn http::RequestObserver>,
    pub clock: vpswatch_model::clock::SharedClock,
}

/// Builds the client for one configured account. Adding a provider adds one arm here.
pub fn build(
    account: &crate::config::AccountConfig,
    ctx: BuildContext<'_>,
) -> Result<SharedProvider, String> {
    let limits = ctx.config.limits(account.provider);
    let host = format!(
        "{}@{}:{}",
        account.provider,
        account.base_url.host_str().unwrap_or(""),
        account.base_url.port_or_known_default().unwrap_or(0)
    );
    let budget = ctx.budgets.get(&host, limits.requests_per_minute);
    let settings = http::HttpSettings {
        timeout: ctx.config.request_timeout,
        max_attempts: limits.max_attempts,
        max_body_bytes: ctx.config.max_response_bytes,
        ..http::HttpSettings::default()
    };
    match (&account.provider, &account.credentials) {
        (ProviderKind::Lnvps, crate::config::Credentials::Nostr(keys)) => {
            let signer = Arc::new(lnvps::Nip98Signer::new(
                keys.expose().clone(),
                ctx.clock.clone(),
            ));
            let api = http::ApiClient::new(
                account.base_url.clone(),
                budget,
                signer,
                ctx.observer,
                settings,
            )?;
            let opts = lnvps::LnvpsOptions {
                account: account.name.clone(),
                btc_unit: account.btc_amount_unit,
                vm_names: account.vm_names.clone(),
                concurrency: limits.concurrency,
            };
            Ok(Arc::new(lnvps::LnvpsClient::new(opts, api, ctx.clock)))
        }
        (
            ProviderKind::Stablevps,
            crate::config::Credentials::ApiKey {
                read,
                write,
                header,
            },
        ) => {
            let api = |key: &crate::secret::Secret<String>| {
                let auth = Arc::new(stablevps::ApiKeyAuth::new(key.clone(), *header));
                let client = http::ApiClient::new(
                    account.base_url.clone(),
                    budget.clone(),
                    auth.clone(),
                    ctx.observer.clone(),
                    settings.clone(),
                )?;
                Ok::<_, String>((client, auth))
            };
            let read = api(read)?;
            let write = write.as_ref().map(api).transpose()?;
            let opts = stablevps::StableVpsOptions {
                account: account.name.clone(),
                vm_names: account.vm_names.clone(),
                plans: Arc::new(ctx.config.stablevps_plans.clone()),
                concurrency: limits.concurrency,
                runway_horizon_seconds: runway::DEFAULT_HORIZON_SECONDS,
            };
            Ok(Arc::new(stablevps::StableVpsClient::new(
                opts, read, write, ctx.clock,
            )))
        }
        (kind, creds) => Err(format!(
            "{kind} accounts cannot use {creds:?} credentials (configuration bug)"
        )),
    }
}
