//! The provider clients behind the one trait the daemon calls, and the one registry
//! ([`build`]) that makes them from a configured account.
//!
//! The poller, the metrics encoder and the watchdog only ever see the model's types
//! (`vpswatch_model::account`, `vpswatch_model::vm`), [`Provider`] and [`ProviderModule`],
//! so adding a provider means one new module here plus one arm in [`module`].

pub mod account;
pub mod bounded;
pub mod budget;
pub mod http;
pub mod lnvps;
pub mod runway;
pub mod section;
pub mod stablevps;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use vpswatch_model::account::{AccountData, ProviderKind};
use vpswatch_model::clock::SharedClock;
use vpswatch_model::vm::VmAction;

pub use account::{AccountConfig, Credentials, ProviderLimits};

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

/// Why no client could be built for an account.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the HTTP client could not be built: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("{kind} accounts cannot use {credentials} credentials (a configuration bug)")]
    Credentials {
        kind: ProviderKind,
        credentials: String,
    },
}

/// What every client of one account is built with, besides its account.
pub struct ClientSettings {
    /// The limits of the account's provider (`[providers.<name>]`).
    pub limits: ProviderLimits,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    /// StableVPS plans by `planId`.
    pub stablevps_plans: Arc<stablevps::PlanTable>,
    /// Local address provider requests leave from; `None` = the system's choice.
    pub source_address: Option<std::net::IpAddr>,
}

/// Everything a provider client needs from the daemon.
pub struct BuildContext<'a> {
    pub settings: &'a ClientSettings,
    pub budgets: &'a budget::BudgetRegistry,
    pub observer: Arc<dyn http::RequestObserver>,
    pub clock: SharedClock,
}

impl BuildContext<'_> {
    /// The request budget of the account's upstream host: every client of every account
    /// at one host (the poller's and the billing's) draws from the same one.
    pub(crate) fn budget(&self, account: &AccountConfig) -> Arc<budget::RateBudget> {
        let host = format!(
            "{}@{}:{}",
            account.provider,
            account.base_url.host_str().unwrap_or(""),
            account.base_url.port_or_known_default().unwrap_or(0)
        );
        self.budgets
            .get(&host, self.settings.limits.requests_per_minute)
    }

    pub(crate) fn http_settings(&self) -> http::HttpSettings {
        http::HttpSettings {
            timeout: self.settings.request_timeout,
            max_attempts: self.settings.limits.max_attempts,
            max_body_bytes: self.settings.max_response_bytes,
            source_address: self.settings.source_address,
            ..http::HttpSettings::default()
        }
    }
}

/// What differs between providers, behind one trait: the daemon, the config checks and
/// [`build`] reach every provider through [`module`], so adding a provider is a module
/// implementing this trait, its `ProviderKind` variant in the model, and one arm in
/// [`module`].
pub trait ProviderModule: Sync {
    /// The API's address when an account sets no `base_url`.
    fn default_base_url(&self) -> &'static str;
    /// The TCP port VMs are probed on when neither the account nor `[probes]` sets one.
    fn default_probe_port(&self) -> u16;
    /// Loads and checks an account's credentials, recording every problem with its key
    /// path; `None` when they are unusable.
    fn credentials(
        &self,
        raw: &account::RawAccount,
        ctx: &mut account::CheckContext<'_>,
    ) -> Option<Credentials>;
    /// The poller's client for one configured account of this provider.
    fn build(
        &self,
        account: &AccountConfig,
        ctx: BuildContext<'_>,
    ) -> Result<SharedProvider, BuildError>;
}

/// The registry: the one place that lists the providers.
pub fn module(kind: ProviderKind) -> &'static dyn ProviderModule {
    match kind {
        ProviderKind::Lnvps => &lnvps::Lnvps,
        ProviderKind::Stablevps => &stablevps::StableVps,
    }
}

/// Builds the client for one configured account.
pub fn build(account: &AccountConfig, ctx: BuildContext<'_>) -> Result<SharedProvider, BuildError> {
    module(account.provider).build(account, ctx)
}

/// The billing client of an LNVPS account (`None` for other accounts): its own NIP-98
/// signer on the account's key, the same host budget and request settings as the poller.
pub fn lnvps_billing(
    account: &AccountConfig,
    ctx: BuildContext<'_>,
) -> Result<Option<lnvps::billing::Billing>, BuildError> {
    if account.provider != ProviderKind::Lnvps {
        return Ok(None);
    }
    let Some(api) = lnvps::signed_api(account, &ctx)? else {
        return Ok(None);
    };
    Ok(Some(lnvps::billing::Billing::new(Arc::new(api))))
}
