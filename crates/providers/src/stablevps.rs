//! StableVPS client: API-key auth, tolerant response models, the plan table, wallet
//! runway, read-only key detection, and the mapping to the neutral model.
//!
//! Written against the provider's public API page (summarised in docs/providers.md; no server source is
//! public), so everything it leaves open is tolerated rather than assumed: unknown fields
//! are ignored, every field is optional, unknown `status`/`vpsStatus` values are kept
//! verbatim, and one unreadable VPS entry never fails the account. The list lacks plan
//! resources and prices, so they come from a plan table (built from the page's "Plans &
//! Pricing" section, overridable in the config).
//!
//! `rdpPassword` (served by `GET /api/v1/vps/:id`) is a secret: no model here has a field
//! for it, so it is never deserialized, kept, logged or exported.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::stream::{self, StreamExt};
use http::{HeaderName, HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::bounded::BoundedList;
use crate::http::{decode_json, ApiClient, ApiRequest, AuthError, Authorizer, DecodeError, Retry};
use crate::runway::{self, BillingPeriod, RenewalStream};
use crate::{Provider, ProviderError};
use vpswatch_model::account::{AccountData, AccountFacts, ProviderKind};
use vpswatch_model::clock::SharedClock;
use vpswatch_model::money::Money;
use vpswatch_model::secret::Secret;
use vpswatch_model::vm::{Renewal, Vm, VmAction, VmState};

// ---------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------

pub use crate::account::ApiKeyHeader;

/// Adds the API key to every attempt. The header value is marked sensitive so no
/// `Debug` output of a request shows it.
pub struct ApiKeyAuth {
    key: Secret<String>,
    header: ApiKeyHeader,
}

impl ApiKeyAuth {
    pub fn new(key: Secret<String>, header: ApiKeyHeader) -> Self {
        Self { key, header }
    }

    /// Whether `prefix` (a `keyPrefix` from `GET /api/v1/auth`) identifies this key.
    fn has_prefix(&self, prefix: &str) -> bool {
        !prefix.is_empty() && self.key.expose().starts_with(prefix)
    }
}

impl Authorizer for ApiKeyAuth {
    fn headers(
        &self,
        _method: &Method,
        _url: &Url,
        _body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, AuthError> {
        let (name, value) = match self.header {
            ApiKeyHeader::Bearer => (
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.key.expose()),
            ),
            ApiKeyHeader::XApiKey => (
                HeaderName::from_static("x-api-key"),
                self.key.expose().clone(),
            ),
        };
        // The message must not carry the key: say what is wrong, not with what.
        let mut value = HeaderValue::from_str(&value).map_err(|_| AuthError::NotAHeaderValue)?;
        value.set_sensitive(true);
        Ok(vec![(name, value)])
    }
}

// ---------------------------------------------------------------------------------------
// Plan table
// ---------------------------------------------------------------------------------------

/// Currency of every StableVPS price ("All prices in EUR").
pub const CURRENCY: &str = "EUR";

/// One price of a plan: what one billing period costs and how long it lasts.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCycle {
    /// EUR, major units.
    pub price: f64,
    pub period: BillingPeriod,
}

/// What the VPS list does not say about a plan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Marketing name ("Professional"); informational.
    pub name: String,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub disk_bytes: Option<f64>,
    /// Exported as the `image` label of `vps_info`.
    pub image: String,
    /// By `billingCycle` value (`monthly`, `yearly`).
    pub cycles: BTreeMap<String, PlanCycle>,
}

/// Plans by `planId`.
pub type PlanTable = BTreeMap<String, Plan>;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The periods the API's `billingCycle` values stand for: calendar months and years
/// (a service created on the 11th renews on the 11th).
pub fn default_period(billing_cycle: &str) -> Option<BillingPeriod> {
    match billing_cycle {
        "monthly" => Some(BillingPeriod::Months(1)),
        "yearly" => Some(BillingPeriod::Months(12)),
        _ => None,
    }
}

/// The plan table of the StableVPS API page ("Plans & Pricing", as of 2026-05): vCPUs,
/// RAM and NVMe storage (the page's "GB" read as GiB, 2^30 bytes, as hosting panels
/// count), Windows Server 2022, EUR prices per billing cycle.
pub fn builtin_plans() -> PlanTable {
    let plan =
        |name: &str, cpus: f64, ram_gib: f64, disk_gib: f64, monthly: f64, yearly: f64| Plan {
            name: name.to_string(),
            cpus: Some(cpus),
            memory_bytes: Some(ram_gib * GIB),
            disk_bytes: Some(disk_gib * GIB),
            image: "Windows Server 2022".to_string(),
            cycles: BTreeMap::from([
                (
                    "monthly".to_string(),
                    PlanCycle {
                        price: monthly,
                        period: BillingPeriod::Months(1),
                    },
                ),
                (
                    "yearly".to_string(),
                    PlanCycle {
                        price: yearly,
                        period: BillingPeriod::Months(12),
                    },
                ),
            ]),
        };
    BTreeMap::from([
        (
            "basic".to_string(),
            plan("Starter", 1.0, 2.5, 17.0, 12.49, 124.90),
        ),
        (
            "prime".to_string(),
            plan("Professional", 2.0, 4.0, 35.0, 19.49, 194.90),
        ),
        (
            "pro".to_string(),
            plan("Enterprise", 4.0, 8.0, 65.0, 34.49, 344.90),
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// Response models: every field optional, unknown fields ignored.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct VpsList {
    vps: BoundedList<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    total: Option<u64>,
}

// --- the list parser as a pure function, for fuzzing ---

/// Parses `GET /api/v1/vps` entry by entry (one unreadable entry is skipped with a
/// warning); at most [`MAX_LIST_ENTRIES`](crate::bounded::MAX_LIST_ENTRIES) entries.
pub fn parse_vps_list(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(Vec<ApiVps>, Vec<String>), DecodeError> {
    const EP: &str = "GET /api/v1/vps";
    let list: VpsList = decode_json(content_type, body)?;
    let mut out = Vec::with_capacity(list.vps.0.len());
    let mut warnings = Vec::new();
    for (i, raw) in list.vps.0.iter().enumerate() {
        match serde_json::from_str::<ApiVps>(raw.get()) {
            Ok(v) if v.id.as_deref().is_some_and(is_plain_id) => out.push(v),
            Ok(_) => warnings.push(format!("{EP}: entry {i} has no usable id; skipped")),
            Err(e) => warnings.push(format!("{EP}: entry {i} unreadable ({e}); skipped")),
        }
    }
    if let Some(total) = list.total {
        if total > list.vps.0.len() as u64 {
            // Pagination of this endpoint is undocumented: say so instead of guessing.
            warnings.push(format!(
                "{EP}: the list has {} entries but total = {total}; the rest are not visible",
                list.vps.0.len()
            ));
        }
    }
    Ok((out, warnings))
}

/// Parses `GET /api/v1/vps/:id` (the detail answer; `rdpPassword` is never read).
pub fn parse_vps(content_type: Option<&str>, body: &[u8]) -> Result<ApiVps, DecodeError> {
    decode_json(content_type, body)
}

/// One VPS as `GET /api/v1/vps` (and, with more fields, `/vps/:id`) returns it. There is
/// deliberately no `rdp_password`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ApiVps {
    #[serde(deserialize_with = "text")]
    pub id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub plan_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub billing_cycle: Option<String>,
    /// Billing/service status.
    #[serde(deserialize_with = "text")]
    pub status: Option<String>,
    /// Machine status.
    #[serde(deserialize_with = "text")]
    pub vps_status: Option<String>,
    #[serde(deserialize_with = "text")]
    pub ip_address: Option<String>,
    #[serde(deserialize_with = "text")]
    pub location: Option<String>,
    #[serde(deserialize_with = "text")]
    pub server_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub hostname: Option<String>,
    #[serde(deserialize_with = "time")]
    pub current_period_end: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "time")]
    pub created_at: Option<DateTime<Utc>>,
}

impl ApiVps {
    /// Whether the list entry lacks something the exporter needs, so the per-VPS call is
    /// worth its request: state, billing facts, or the address of a machine that is up
    /// (probes need it).
    pub fn lacks_needed_fields(&self) -> bool {
        self.status.is_none()
            || self.vps_status.is_none()
            || self.current_period_end.is_none()
            || self.plan_id.is_none()
            || self.billing_cycle.is_none()
            || (self.ip_address.is_none() && self.vps_status.as_deref() == Some("active"))
    }

    /// Fills the fields the list left out from the per-VPS answer.
    fn fill_from(&mut self, detail: ApiVps) {
        fn fill<T>(a: &mut Option<T>, b: Option<T>) {
            if a.is_none() {
                *a = b;
            }
        }
        fill(&mut self.plan_id, detail.plan_id);
        fill(&mut self.billing_cycle, detail.billing_cycle);
        fill(&mut self.status, detail.status);
        fill(&mut self.vps_status, detail.vps_status);
        fill(&mut self.ip_address, detail.ip_address);
        fill(&mut self.location, detail.location);
        fill(&mut self.server_id, detail.server_id);
        fill(&mut self.current_period_end, detail.current_period_end);
        fill(&mut self.created_at, detail.created_at);
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiBalance {
    #[serde(deserialize_with = "number")]
    balance: Option<f64>,
    #[serde(deserialize_with = "text")]
    currency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiKeyList {
    keys: Vec<Box<serde_json::value::RawValue>>,
}

/// Metadata of one API key (`GET /api/v1/auth`); the raw key is never returned.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ApiKeyMeta {
    #[serde(deserialize_with = "text")]
    key_prefix: Option<String>,
    #[serde(deserialize_with = "text")]
    scope: Option<String>,
    #[serde(deserialize_with = "time")]
    expires_at: Option<DateTime<Utc>>,
}

/// A string, or a number as text; anything else (null, objects) is "absent" rather than
/// a reason to drop the whole entry.
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A number, or a numeric string ("100.00").
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite()))
}

/// ISO 8601 / RFC 3339 time (the API sends UTC with milliseconds); Unix seconds or
/// milliseconds are accepted too. Unreadable → absent.
fn time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => n.as_i64().and_then(|v| {
            // Past 1e11 a value can only be milliseconds (1e11 s is the year 5138).
            if v.abs() >= 100_000_000_000 {
                Utc.timestamp_millis_opt(v).single()
            } else {
                Utc.timestamp_opt(v, 0).single()
            }
        }),
        _ => None,
    })
}

/// The currency as a label value: a short upper-case code, or EUR (the only currency
/// the API documents) when absent or not code-like, so upstream text never becomes an
/// unbounded label.
pub fn currency_label(raw: Option<&str>) -> String {
    match raw.map(str::trim) {
        Some(c) if (1..=8).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_alphanumeric()) => {
            c.to_ascii_uppercase()
        }
        _ => CURRENCY.to_string(),
    }
}

/// Service ids go into URL paths: only plain ids (the API's are 24 hex characters) are
/// used, so a strange value can never change which URL is called.
pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

// ---------------------------------------------------------------------------------------
// Mapping to the neutral model
// ---------------------------------------------------------------------------------------

/// Billing statuses after which a service is not charged again (the API page names only
/// `active`/`provisioning`; these are the ones it says to expect).
const ENDED: &[&str] = &[
    "cancelled",
    "canceled",
    "deleted",
    "terminated",
    "expired",
    "suspended",
];

/// Whether a service with this billing `status` renews. An unknown status counts as
/// renewing: for a runway it is safer to expect one payment too many than one too few.
pub fn renews(status: Option<&str>) -> bool {
    match status {
        Some(s) => !ENDED.contains(&s.trim().to_ascii_lowercase().as_str()),
        None => true,
    }
}

/// The neutral state from the two status fields. The machine status (`vpsStatus`) is
/// the state, unless the billing status (`status`) says the service is something other
/// than active or provisioning: a suspended or expired service is not "running",
/// whatever its machine does. Unknown values are kept verbatim (sanitised).
pub fn map_state(status: Option<&str>, vps_status: Option<&str>) -> VmState {
    let lower = |s: Option<&str>| s.map(|s| s.trim().to_ascii_lowercase());
    match lower(status).as_deref() {
        None | Some("") | Some("active") | Some("provisioning") => {}
        Some("suspended") => return VmState::Suspended,
        Some(other) => return VmState::other(other),
    }
    match lower(vps_status).as_deref() {
        Some("active") => VmState::Running,
        Some("provisioning") => VmState::Creating,
        Some("stopped") => VmState::Stopped,
        Some("suspended") => VmState::Suspended,
        Some("unknown") | Some("") => VmState::Unknown,
        None if lower(status).as_deref() == Some("provisioning") => VmState::Creating,
        None => VmState::Unknown,
        Some(other) => VmState::other(other),
    }
}

/// The plan price for this VPS's billing cycle, if the table knows it.
fn plan_cycle<'a>(api: &ApiVps, plans: &'a PlanTable) -> Option<(&'a Plan, &'a PlanCycle)> {
    let plan = plans.get(api.plan_id.as_deref()?)?;
    let cycle = plan.cycles.get(api.billing_cycle.as_deref()?)?;
    Some((plan, cycle))
}

/// Builds the neutral VM. StableVPS reports state live on every request, so the poll
/// time is when the state was observed.
pub fn map_vps(
    api: &ApiVps,
    plans: &PlanTable,
    names: &HashMap<String, String>,
    observed: DateTime<Utc>,
) -> Vm {
    let id = api.id.clone().unwrap_or_default();
    let plan = api.plan_id.as_deref().and_then(|p| plans.get(p));
    let renewal = plan_cycle(api, plans).and_then(|(_, c)| {
        let from = api.current_period_end.unwrap_or(observed);
        Some(Renewal {
            price: Money {
                amount: c.price,
                currency: CURRENCY.to_string(),
            },
            period_seconds: c.period.seconds_from(from)?,
        })
    });
    let name = names
        .get(&id)
        .cloned()
        .or_else(|| api.hostname.clone())
        .or_else(|| api.server_id.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("vps-{id}"));
    Vm {
        name,
        plan: api.plan_id.clone().unwrap_or_default(),
        location: api.location.clone().unwrap_or_default(),
        image: plan.map(|p| p.image.clone()).unwrap_or_default(),
        ipv4: api
            .ip_address
            .as_deref()
            .and_then(|a| a.trim().parse::<Ipv4Addr>().ok()),
        state: map_state(api.status.as_deref(), api.vps_status.as_deref()),
        status_time: Some(observed),
        created: api.created_at,
        expires: api.current_period_end,
        deleting_on: None,
        auto_renewal_enabled: None,
        renewal,
        cpus: plan.and_then(|p| p.cpus),
        memory_bytes: plan.and_then(|p| p.memory_bytes),
        disk_bytes: plan.and_then(|p| p.disk_bytes),
        uptime_seconds: None,
        usage: None,
        usage_error: None,
        subscription_id: None,
        max_prepay_days: None,
        id,
    }
}

/// The renewals the wallet will be charged for: every renewing VPS with a period end
/// and a known price. VPSes whose plan is not in the table are listed in the second
/// value (they are left out of the runway, which the caller reports).
pub fn renewal_streams(vpses: &[ApiVps], plans: &PlanTable) -> (Vec<RenewalStream>, Vec<String>) {
    let mut streams = Vec::new();
    let mut unknown = Vec::new();
    for v in vpses {
        if !renews(v.status.as_deref()) {
            continue;
        }
        let Some(first_due) = v.current_period_end else {
            continue;
        };
        match plan_cycle(v, plans) {
            Some((_, c)) => streams.push(RenewalStream {
                first_due,
                price: c.price,
                period: c.period,
            }),
            None => unknown.push(format!(
                "VPS {}: plan {:?} with billing cycle {:?} is not in the plan table \
                 (add it under [providers.stablevps.plans]); the wallet runway leaves it out",
                v.id.as_deref().unwrap_or("?"),
                v.plan_id.as_deref().unwrap_or(""),
                v.billing_cycle.as_deref().unwrap_or("")
            )),
        }
    }
    (streams, unknown)
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// Settings of one StableVPS account's client.
pub struct StableVpsOptions {
    pub account: String,
    pub vm_names: HashMap<String, String>,
    pub plans: Arc<PlanTable>,
    /// Per-VPS calls in flight at once (the rate budget still paces them).
    pub concurrency: usize,
    /// How far the wallet runway looks ahead.
    pub runway_horizon_seconds: i64,
}

/// Whether writes may be sent. Turns off for good (until restart) once the write key is
/// known to be read-only; a key's scope cannot change.
#[derive(Default)]
struct ActionsGate {
    disabled: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl ActionsGate {
    fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::Acquire)
    }

    /// Disables actions; the first call logs why, later ones are silent.
    fn disable(&self, account: &str, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::warn!(provider = "stablevps", %account, %reason, "actions disabled for this account");
            *r = Some(reason);
        }
        self.disabled.store(true, Ordering::Release);
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "actions are disabled".into())
    }
}

/// One StableVPS account.
pub struct StableVpsClient {
    opts: StableVpsOptions,
    read: ApiClient,
    read_auth: Arc<ApiKeyAuth>,
    /// Client and key for writes: the separate write key when configured, else the
    /// read key (which may well have `full` scope).
    write: ApiClient,
    write_auth: Arc<ApiKeyAuth>,
    separate_write_key: bool,
    clock: SharedClock,
    gate: ActionsGate,
}

/// What `GET /api/v1/auth` says about the keys in use.
#[derive(Debug, Default, PartialEq)]
struct KeyFacts {
    /// Soonest expiry among the keys vpswatch uses.
    expiry: Option<DateTime<Utc>>,
    /// Scope of the key used for writes, when it is listed unambiguously.
    write_scope: Option<String>,
}

impl StableVpsClient {
    /// `write` is `None` when the account has no separate write key: the read key then
    /// does both jobs. Both clients should share one rate budget and observer.
    pub fn new(
        opts: StableVpsOptions,
        read: (ApiClient, Arc<ApiKeyAuth>),
        write: Option<(ApiClient, Arc<ApiKeyAuth>)>,
        clock: SharedClock,
    ) -> Self {
        let separate_write_key = write.is_some();
        let (write, write_auth) = match write {
            Some(w) => w,
            None => {
                let (api, auth) = &read;
                (api.with_authorizer(auth.clone()), auth.clone())
            }
        };
        let (read, read_auth) = read;
        Self {
            opts,
            read,
            read_auth,
            write,
            write_auth,
            separate_write_key,
            clock,
            gate: ActionsGate::default(),
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path_and_query: String,
        endpoint: &'static str,
    ) -> Result<T, ProviderError> {
        let req = ApiRequest {
            method: Method::GET,
            path_and_query,
            endpoint,
            body: None,
            retry: Retry::Idempotent,
        };
        self.read
            .send_decoded(&req, |resp| {
                decode_json(resp.content_type.as_deref(), &resp.body)
            })
            .await
    }

    /// The VPS list, entry by entry: one unreadable entry is skipped with a warning.
    async fn list(&self, warnings: &mut Vec<String>) -> Result<Vec<ApiVps>, ProviderError> {
        let req = ApiRequest {
            method: Method::GET,
            path_and_query: "/api/v1/vps".into(),
            endpoint: "GET /api/v1/vps",
            body: None,
            retry: Retry::Idempotent,
        };
        let (list, more) = self
            .read
            .send_decoded(&req, |resp| {
                parse_vps_list(resp.content_type.as_deref(), &resp.body)
            })
            .await?;
        warnings.extend(more);
        Ok(list)
    }

    /// Completes list entries that lack needed fields with `GET /api/v1/vps/:id`; a
    /// failing call leaves the entry as the list had it.
    async fn complete(&self, vpses: &mut [ApiVps], warnings: &mut Vec<String>) {
        let wanted: Vec<(usize, String)> = vpses
            .iter()
            .enumerate()
            .filter(|(_, v)| v.lacks_needed_fields())
            .filter_map(|(i, v)| v.id.clone().map(|id| (i, id)))
            .collect();
        let results = stream::iter(wanted)
            .map(|(i, id)| async move {
                let r = self
                    .get::<ApiVps>(format!("/api/v1/vps/{id}"), "GET /api/v1/vps/{id}")
                    .await;
                (i, r)
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for (i, r) in results {
            match r {
                Ok(detail) => vpses[i].fill_from(detail),
                Err(e) => warnings.push(e.to_string()),
            }
        }
    }

    /// The wallet: `GET /api/v1/wallet`, or the balance in `GET /api/v1/account` when
    /// the wallet endpoint fails (both carry it; asking twice every poll would only
    /// spend budget).
    async fn wallet(&self, warnings: &mut Vec<String>) -> Option<Money> {
        let to_money = |b: ApiBalance| {
            Some(Money {
                amount: b.balance?,
                currency: currency_label(b.currency.as_deref()),
            })
        };
        match self
            .get::<ApiBalance>("/api/v1/wallet".into(), "GET /api/v1/wallet")
            .await
        {
            Ok(b) => {
                if let Some(m) = to_money(b) {
                    return Some(m);
                }
                warnings.push("GET /api/v1/wallet: no balance in the answer".into());
            }
            Err(e) => warnings.push(e.to_string()),
        }
        match self
            .get::<ApiBalance>("/api/v1/account".into(), "GET /api/v1/account")
            .await
        {
            Ok(b) => to_money(b),
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        }
    }

    /// Expiry and scope of the keys in use, from their metadata.
    async fn key_facts(&self, warnings: &mut Vec<String>) -> Option<KeyFacts> {
        const EP: &str = "GET /api/v1/auth";
        let list: ApiKeyList = match self.get("/api/v1/auth".into(), EP).await {
            Ok(l) => l,
            Err(e) => {
                warnings.push(e.to_string());
                return None;
            }
        };
        let metas: Vec<ApiKeyMeta> = list
            .keys
            .iter()
            .filter_map(|raw| serde_json::from_str(raw.get()).ok())
            .collect();
        let mut auths = vec![&self.read_auth];
        if self.separate_write_key {
            auths.push(&self.write_auth);
        }
        Some(key_facts_from(&metas, &auths, &self.write_auth))
    }
}

/// Matches key metadata to the keys in use by `keyPrefix`. Prefixes are short, so two
/// keys may share one: the soonest expiry of every match counts, and a scope only when
/// all matches agree on it.
fn key_facts_from(
    metas: &[ApiKeyMeta],
    in_use: &[&Arc<ApiKeyAuth>],
    writer: &ApiKeyAuth,
) -> KeyFacts {
    let matches = |auth: &ApiKeyAuth| -> Vec<&ApiKeyMeta> {
        metas
            .iter()
            .filter(|m| m.key_prefix.as_deref().is_some_and(|p| auth.has_prefix(p)))
            .collect()
    };
    let expiry = in_use
        .iter()
        .flat_map(|a| matches(a))
        .filter_map(|m| m.expires_at)
        .min();
    let scopes: Vec<String> = matches(writer)
        .iter()
        .filter_map(|m| m.scope.as_deref().map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let write_scope = match scopes.split_first() {
        Some((first, rest)) if rest.iter().all(|s| s == first) => Some(first.clone()),
        _ => None,
    };
    KeyFacts {
        expiry,
        write_scope,
    }
}

#[async_trait]
impl Provider for StableVpsClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Stablevps
    }

    fn account(&self) -> &str {
        &self.opts.account
    }

    async fn poll(&self) -> Result<AccountData, ProviderError> {
        let mut warnings = Vec::new();
        let mut vpses = self.list(&mut warnings).await?;
        let (mut w_detail, mut w_wallet, mut w_keys) = (Vec::new(), Vec::new(), Vec::new());
        let (_, wallet, keys) = tokio::join!(
            self.complete(&mut vpses, &mut w_detail),
            self.wallet(&mut w_wallet),
            self.key_facts(&mut w_keys),
        );
        warnings.extend(w_detail.into_iter().chain(w_wallet).chain(w_keys));

        let now = self.clock.now();
        let vms = vpses
            .iter()
            .map(|v| map_vps(v, &self.opts.plans, &self.opts.vm_names, now))
            .collect();
        let mut facts = AccountFacts::default();
        if let Some(k) = keys {
            facts.api_key_expiry = k.expiry;
            if k.write_scope.as_deref() == Some("read") {
                let which = if self.separate_write_key {
                    "write_api_key"
                } else {
                    "api_key"
                };
                self.gate.disable(
                    &self.opts.account,
                    format!("the {which} has scope \"read\" (GET /api/v1/auth)"),
                );
            }
        }
        if let Some(m) = &wallet {
            let (streams, unknown) = renewal_streams(&vpses, &self.opts.plans);
            warnings.extend(unknown);
            facts.wallet_runway_seconds = runway::wallet_runway_seconds(
                m.amount,
                &streams,
                now,
                self.opts.runway_horizon_seconds,
            );
        }
        Ok(AccountData {
            fetched_at: now,
            vms,
            wallet,
            facts,
            warnings,
        })
    }

    async fn act(&self, vm_id: &str, action: VmAction) -> Result<(), ProviderError> {
        const EP: &str = "POST /api/v1/vps/{id}/actions";
        if !self.gate.enabled() {
            return Err(ProviderError::NotSent {
                endpoint: EP.into(),
                reason: self.gate.reason(),
            });
        }
        if !is_plain_id(vm_id) {
            return Err(ProviderError::NotSent {
                endpoint: EP.into(),
                reason: "not a StableVPS service id".into(),
            });
        }
        let body = serde_json::json!({ "action": action.as_str() }).to_string();
        let req = ApiRequest {
            method: Method::POST,
            path_and_query: format!("/api/v1/vps/{vm_id}/actions"),
            endpoint: EP,
            body: Some(body.into_bytes()),
            // A write is repeated only when it certainly did not reach the handler; a
            // 403 or any other answer is final.
            retry: Retry::OnlyIfNotProcessed,
        };
        match self.write.send(&req).await {
            Ok(resp) => {
                #[derive(Deserialize, Default)]
                #[serde(default)]
                struct Answer {
                    success: Option<bool>,
                    #[serde(deserialize_with = "text")]
                    message: Option<String>,
                }
                let answer: Answer = serde_json::from_slice(&resp.body).unwrap_or_default();
                if answer.success == Some(false) {
                    return Err(ProviderError::Http {
                        endpoint: EP.into(),
                        status: resp.status,
                        message: answer
                            .message
                            .unwrap_or_else(|| "the provider answered success: false".into()),
                    });
                }
                Ok(())
            }
            Err(e) => {
                if let ProviderError::Http { status: 403, .. } = &e {
                    let which = if self.separate_write_key {
                        "write_api_key"
                    } else {
                        "api_key"
                    };
                    self.gate.disable(
                        &self.opts.account,
                        format!("a write with the {which} was refused with 403 (read-only key)"),
                    );
                }
                Err(e)
            }
        }
    }

    fn actions_enabled(&self) -> bool {
        self.gate.enabled()
    }
}

// ---------------------------------------------------------------------------------------
// The provider's entry in the registry
// ---------------------------------------------------------------------------------------

/// StableVPS in the registry ([`crate::module`]).
pub struct StableVps;

impl StableVps {
    /// One API key from `<file_key>` or `<env_key>`; a key that does not look like
    /// StableVPS's is used with a warning.
    fn api_key(
        ctx: &mut crate::account::CheckContext<'_>,
        file: Option<&std::path::Path>,
        var: Option<&str>,
        keys: (&'static str, &'static str),
    ) -> Result<Secret<String>, (&'static str, String)> {
        let (text, source, warn) =
            vpswatch_model::secret::load_one(file, var, keys.0, keys.1, ctx.env)?;
        if let Some(w) = warn {
            ctx.warning(keys.0, w);
        }
        match vpswatch_model::secret::parse_api_key(&text) {
            Ok((key, note)) => {
                if let Some(n) = note {
                    ctx.warning(source.key(), format!("{}: {n}", source.describe()));
                }
                Ok(Secret::new(key))
            }
            Err(why) => Err((source.key(), format!("{}: {why}", source.describe()))),
        }
    }
}

impl crate::ProviderModule for StableVps {
    fn default_base_url(&self) -> &'static str {
        "https://stablevps.com"
    }

    fn default_probe_port(&self) -> u16 {
        3389
    }

    /// A read key (`api_key_file`/`api_key_env`) and, for least privilege, an optional
    /// separate write key used only for actions.
    fn credentials(
        &self,
        raw: &crate::account::RawAccount,
        ctx: &mut crate::account::CheckContext<'_>,
    ) -> Option<crate::Credentials> {
        for (key, set) in [
            ("nsec_file", raw.nsec_file.is_some()),
            ("nsec_env", raw.nsec_env.is_some()),
        ] {
            if set {
                ctx.problem(
                    key,
                    "not used by stablevps accounts: they authenticate with an API key \
                     (api_key_file or api_key_env)"
                        .into(),
                );
            }
        }
        if raw.btc_amount_unit.is_some() {
            ctx.problem(
                "btc_amount_unit",
                "only applies to lnvps accounts (StableVPS amounts are EUR)".into(),
            );
        }
        let read = Self::api_key(
            ctx,
            raw.api_key_file.as_deref(),
            raw.api_key_env.as_deref(),
            ("api_key_file", "api_key_env"),
        );
        let write = (raw.write_api_key_file.is_some() || raw.write_api_key_env.is_some())
            .then(|| {
                Self::api_key(
                    ctx,
                    raw.write_api_key_file.as_deref(),
                    raw.write_api_key_env.as_deref(),
                    ("write_api_key_file", "write_api_key_env"),
                )
            })
            .transpose();
        match (read, write) {
            (Ok(read), Ok(write)) => Some(crate::Credentials::ApiKey {
                read,
                write,
                header: raw.auth_header.unwrap_or_default(),
            }),
            (read, write) => {
                for (key, why) in [read.err(), write.err()].into_iter().flatten() {
                    ctx.problem(key, why);
                }
                None
            }
        }
    }

    fn build(
        &self,
        account: &crate::AccountConfig,
        ctx: crate::BuildContext<'_>,
    ) -> Result<crate::SharedProvider, crate::BuildError> {
        let crate::Credentials::ApiKey {
            read,
            write,
            header,
        } = &account.credentials
        else {
            return Err(crate::BuildError::Credentials {
                kind: ProviderKind::Stablevps,
                credentials: format!("{:?}", account.credentials),
            });
        };
        let budget = ctx.budget(account);
        let settings = ctx.http_settings();
        let api = |key: &Secret<String>| {
            let auth = Arc::new(ApiKeyAuth::new(key.clone(), *header));
            let client = ApiClient::new(
                account.base_url.clone(),
                budget.clone(),
                auth.clone(),
                ctx.observer.clone(),
                settings.clone(),
            )?;
            Ok::<_, crate::BuildError>((client, auth))
        };
        let read = api(read)?;
        let write = write.as_ref().map(api).transpose()?;
        let opts = StableVpsOptions {
            account: account.name.clone(),
            vm_names: account.vm_names.clone(),
            plans: ctx.settings.stablevps_plans.clone(),
            concurrency: ctx.settings.limits.concurrency,
            runway_horizon_seconds: crate::runway::DEFAULT_HORIZON_SECONDS,
        };
        Ok(Arc::new(StableVpsClient::new(opts, read, write, ctx.clock)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(key: &str) -> Arc<ApiKeyAuth> {
        Arc::new(ApiKeyAuth::new(
            Secret::new(key.to_string()),
            ApiKeyHeader::Bearer,
        ))
    }

    #[test]
    fn states_from_both_status_fields() {
        assert_eq!(map_state(Some("active"), Some("active")), VmState::Running);
        assert_eq!(
            map_state(Some("active"), Some("provisioning")),
            VmState::Creating
        );
        assert_eq!(map_state(Some("provisioning"), None), VmState::Creating);
        assert_eq!(map_state(Some("active"), Some("stopped")), VmState::Stopped);
        // Billing status wins over a running machine.
        assert_eq!(
            map_state(Some("suspended"), Some("active")),
            VmState::Suspended
        );
        assert_eq!(
            map_state(Some("expired"), Some("active")),
            VmState::Other("expired".into())
        );
        // Unknown machine values are kept, sanitised.
        assert_eq!(
            map_state(Some("active"), Some("Re booting!")),
            VmState::Other("rebooting".into())
        );
        assert_eq!(map_state(None, None), VmState::Unknown);
    }

    #[test]
    fn tolerant_vps_model_and_no_password_field() {
        let j = r#"{"id":"6641abc0000000000000001a","planId":"prime","billingCycle":"monthly",
            "status":"active","vpsStatus":"active","ipAddress":"185.12.34.56",
            "location":"amsterdam","rdpUsername":"Administrator","rdpPassword":"hunter2",
            "serverId":7,"currentPeriodEnd":"2026-06-11T09:00:00.000Z",
            "createdAt":{"weird":true},"newField":[1,2]}"#;
        let v: ApiVps = serde_json::from_str(j).expect("parses");
        assert_eq!(v.server_id.as_deref(), Some("7"));
        assert_eq!(v.created_at, None);
        assert!(!format!("{v:?}").contains("hunter2"));
        let vm = map_vps(&v, &builtin_plans(), &HashMap::new(), Utc::now());
        assert_eq!(vm.ipv4, Some(Ipv4Addr::new(185, 12, 34, 56)));
        assert_eq!(vm.cpus, Some(2.0));
        assert_eq!(vm.memory_bytes, Some(4.0 * GIB));
        assert_eq!(vm.name, "7");
        let r = vm.renewal.expect("prime/monthly is priced");
        assert_eq!(r.price.amount, 19.49);
        assert_eq!(r.price.currency, "EUR");
        // June 11 → July 11.
        assert_eq!(r.period_seconds, 30.0 * 86_400.0);
        assert!(!v.lacks_needed_fields());
        let partial: ApiVps =
            serde_json::from_str(r#"{"id":"x","vpsStatus":"active","status":"active"}"#)
                .expect("parses");
        assert!(partial.lacks_needed_fields());
    }

    #[test]
    fn renewing_statuses() {
        assert!(renews(Some("active")));
        assert!(renews(Some("provisioning")));
        assert!(renews(Some("something-new")));
        assert!(renews(None));
        assert!(!renews(Some("Suspended")));
        assert!(!renews(Some("cancelled")));
    }

    #[test]
    fn renewal_streams_skip_ended_and_report_unknown_plans() {
        let end = Utc::now();
        let vps = |status: &str, plan: &str| ApiVps {
            id: Some("a".into()),
            plan_id: Some(plan.into()),
            billing_cycle: Some("monthly".into()),
            status: Some(status.into()),
            current_period_end: Some(end),
            ..ApiVps::default()
        };
        let (streams, unknown) = renewal_streams(
            &[
                vps("active", "basic"),
                vps("suspended", "basic"),
                vps("active", "mega"),
            ],
            &builtin_plans(),
        );
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].price, 12.49);
        assert_eq!(unknown.len(), 1);
        assert!(unknown[0].contains("mega"), "{unknown:?}");
    }

    #[test]
    fn key_metadata_matched_by_prefix() {
        let read = auth("svps_live_aaaa0000000000000000000000000002");
        let write = auth("svps_live_bbbb0000000000000000000000000001");
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .ok()
        };
        let meta = |prefix: &str, scope: &str, exp: Option<DateTime<Utc>>| ApiKeyMeta {
            key_prefix: Some(prefix.into()),
            scope: Some(scope.into()),
            expires_at: exp,
        };
        let metas = vec![
            meta("svps_live_aaaa", "read", t("2026-07-01T00:00:00Z")),
            meta("svps_live_bbbb", "full", t("2026-06-01T00:00:00Z")),
            meta("svps_live_cccc", "full", t("2026-01-01T00:00:00Z")),
        ];
        // Only the read key in use: its own expiry and scope.
        let f = key_facts_from(&metas, &[&read], &read);
        assert_eq!(f.expiry, t("2026-07-01T00:00:00Z"));
        assert_eq!(f.write_scope.as_deref(), Some("read"));
        // Both keys: the soonest expiry, the write key's scope; unrelated keys ignored.
        let f = key_facts_from(&metas, &[&read, &write], &write);
        assert_eq!(f.expiry, t("2026-06-01T00:00:00Z"));
        assert_eq!(f.write_scope.as_deref(), Some("full"));
        // Ambiguous prefix with disagreeing scopes: scope unknown.
        let mut two = metas;
        two.push(meta("svps_live_aaaa", "full", None));
        let f = key_facts_from(&two, &[&read], &read);
        assert_eq!(f.write_scope, None);
    }

    #[test]
    fn header_styles_and_sensitive_values() {
        let url = Url::parse("http://127.0.0.1/api/v1/vps").expect("url");
        let key = "svps_live_0123";
        let bearer = ApiKeyAuth::new(Secret::new(key.into()), ApiKeyHeader::Bearer)
            .headers(&Method::GET, &url, b"")
            .expect("headers");
        assert_eq!(bearer[0].0, http::header::AUTHORIZATION);
        assert_eq!(bearer[0].1.to_str().ok(), Some("Bearer svps_live_0123"));
        assert!(bearer[0].1.is_sensitive());
        assert!(!format!("{:?}", bearer[0].1).contains(key));
        let x = ApiKeyAuth::new(Secret::new(key.into()), ApiKeyHeader::XApiKey)
            .headers(&Method::GET, &url, b"")
            .expect("headers");
        assert_eq!(x[0].0.as_str(), "x-api-key");
        let bad = ApiKeyAuth::new(Secret::new("svps\nsecret".into()), ApiKeyHeader::XApiKey)
            .headers(&Method::GET, &url, b"")
            .expect_err("newline refused")
            .to_string();
        assert!(!bad.contains("secret"), "{bad}");
    }

    #[test]
    fn currency_labels_are_bounded() {
        assert_eq!(currency_label(Some("eur")), "EUR");
        assert_eq!(currency_label(None), "EUR");
        assert_eq!(currency_label(Some("a very long \"currency\"")), "EUR");
    }

    #[test]
    fn plain_ids_only() {
        assert!(is_plain_id("6641abc0000000000000001a"));
        assert!(!is_plain_id("../account"));
        assert!(!is_plain_id("a?b"));
        assert!(!is_plain_id(""));
    }
}
