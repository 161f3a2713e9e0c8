//! LNVPS client: NIP-98 signing, tolerant response models, and the mapping to the
//! neutral model.
//!
//! Written against the real server (see docs/providers.md): every request and
//! every retry carries a freshly signed kind-27235 event with a random `nonce` (the server
//! burns event ids for 120 s and identical requests in one second would collide), BTC
//! amounts may be millisatoshis (real server) or satoshis (older docs), and unknown
//! fields or state values never fail a poll.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Months, TimeZone, Utc};
use futures_util::stream::{self, StreamExt};
use http::{HeaderName, HeaderValue, Method};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag, TagKind, Timestamp};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

pub mod billing;

use crate::bounded::BoundedList;
use crate::http::{decode_json, ApiClient, ApiRequest, AuthError, Authorizer, DecodeError, Retry};
use crate::{Provider, ProviderError};
use vpswatch_model::account::{AccountData, AccountFacts, ProviderKind};
use vpswatch_model::clock::SharedClock;
use vpswatch_model::money::Money;
use vpswatch_model::vm::{Renewal, Usage, Vm, VmAction, VmState};

// ---------------------------------------------------------------------------------------
// NIP-98
// ---------------------------------------------------------------------------------------

/// Signs every attempt with a fresh NIP-98 event.
pub struct Nip98Signer {
    keys: Keys,
    clock: SharedClock,
}

impl Nip98Signer {
    pub fn new(keys: Keys, clock: SharedClock) -> Self {
        Self { keys, clock }
    }

    /// The `Authorization` header value for one request.
    pub fn authorization(
        &self,
        method: &Method,
        url: &Url,
        body: &[u8],
    ) -> Result<String, AuthError> {
        let nonce: [u8; 16] = rand::random();
        let mut tags = vec![
            Tag::custom(TagKind::Custom("u".into()), [url.as_str()]),
            Tag::custom(TagKind::Custom("method".into()), [method.as_str()]),
            Tag::custom(TagKind::Custom("nonce".into()), [hex::encode(nonce)]),
        ];
        if !body.is_empty() {
            let digest = hex::encode(Sha256::digest(body));
            tags.push(Tag::custom(TagKind::Custom("payload".into()), [digest]));
        }
        let created_at = self.clock.now().timestamp().max(0) as u64;
        let event = EventBuilder::new(Kind::HttpAuth, "")
            .tags(tags)
            .custom_created_at(Timestamp::from(created_at))
            .sign_with_keys(&self.keys)
            .map_err(|e| AuthError::Sign(e.to_string()))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(event.as_json());
        Ok(format!("Nostr {encoded}"))
    }
}

impl Authorizer for Nip98Signer {
    fn headers(
        &self,
        method: &Method,
        url: &Url,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, AuthError> {
        let value = self.authorization(method, url, body)?;
        let value = HeaderValue::from_str(&value).map_err(|_| AuthError::NotAHeaderValue)?;
        Ok(vec![(http::header::AUTHORIZATION, value)])
    }

    fn retry_rejection(&self, status: u16, message: &str) -> bool {
        status == 401 && message.contains("already been used")
    }
}

// ---------------------------------------------------------------------------------------
// Response models: every field optional or defaulted, unknown fields ignored.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Debug, Deserialize)]
struct Paginated<T> {
    data: Vec<T>,
    #[serde(default)]
    total: Option<u64>,
}

/// `ApiVmStatus`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiVm {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    #[serde(deserialize_with = "lenient_time")]
    pub created: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "lenient_time")]
    pub expires: Option<DateTime<Utc>>,
    pub image: Option<ApiImage>,
    pub template: Option<ApiTemplate>,
    pub ip_assignments: Vec<ApiIp>,
    pub status: Option<ApiStatus>,
    pub auto_renewal_enabled: Option<bool>,
    #[serde(deserialize_with = "lenient_time")]
    pub deleting_on: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "opt_id_text")]
    pub subscription_id: Option<String>,
    pub max_prepay_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiImage {
    pub distribution: Option<String>,
    pub flavour: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiTemplate {
    pub name: Option<String>,
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub disk_size: Option<f64>,
    pub cost_plan: Option<ApiCostPlan>,
    pub region: Option<ApiRegion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiCostPlan {
    pub currency: Option<String>,
    pub amount: Option<f64>,
    pub interval_amount: Option<u32>,
    pub interval_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiRegion {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiIp {
    pub ip: Option<String>,
    pub forward_dns: Option<String>,
    pub reverse_dns: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiStatus {
    pub timestamp: Option<i64>,
    pub state: Option<String>,
    pub uptime: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
pub struct ApiTimeSeriesPoint {
    pub timestamp: i64,
    pub cpu: f64,
    pub memory: f64,
    pub memory_size: f64,
    pub net_in: f64,
    pub net_out: f64,
    pub disk_write: f64,
    pub disk_read: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiAccount {
    email_verified: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiPaymentMethod {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiSubscription {
    #[serde(deserialize_with = "id_text")]
    id: String,
    line_items: Vec<ApiLineItem>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiLineItem {
    resource: Option<ApiResource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiResource {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(deserialize_with = "opt_id_text")]
    vm_id: Option<String>,
}

/// Accepts a number or a string id.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_id_text(d)?.unwrap_or_default())
}

fn opt_id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// RFC 3339 time; anything unparseable becomes `None` instead of failing the VM.
fn lenient_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => n.as_i64().and_then(|s| Utc.timestamp_opt(s, 0).single()),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------------

pub use crate::account::BtcUnit;

/// Above this many units per 30 days an amount cannot be satoshis (0.01 BTC a month is
/// far beyond any LNVPS plan) and must be millisatoshis; below it, as millisatoshis it
/// would be under 1,000 sat (well under one euro) a month, so it is satoshis.
const MSAT_THRESHOLD_PER_30_DAYS: f64 = 1_000_000.0;

/// Converts a BTC amount in the provider's smallest unit to BTC.
pub fn btc_amount_to_btc(amount: f64, period_days: f64, unit: BtcUnit) -> f64 {
    let msat = match unit {
        BtcUnit::Msat => true,
        BtcUnit::Sat => false,
        BtcUnit::Auto => {
            let per_30_days = if period_days > 0.0 {
                amount * 30.0 / period_days
            } else {
                amount
            };
            per_30_days >= MSAT_THRESHOLD_PER_30_DAYS
        }
    };
    if msat {
        amount / 1e11
    } else {
        amount / 1e8
    }
}

/// Converts a smallest-unit amount to major units for the given currency.
pub fn to_major_units(amount: f64, currency: &str, period_days: f64, unit: BtcUnit) -> f64 {
    if currency.eq_ignore_ascii_case("BTC") {
        btc_amount_to_btc(amount, period_days, unit)
    } else {
        // Fiat: cents.
        amount / 100.0
    }
}

/// The next billing period in seconds: calendar months/years are counted from
/// max(expires, now) as the server does when a renewal settles.
pub fn period_seconds(
    interval_amount: u32,
    interval_type: &str,
    from: DateTime<Utc>,
) -> Option<f64> {
    let n = interval_amount.max(1);
    let end = match interval_type {
        "day" => from.checked_add_signed(chrono::Duration::days(i64::from(n)))?,
        "month" => from.checked_add_months(Months::new(n))?,
        "year" => from.checked_add_months(Months::new(n.checked_mul(12)?))?,
        _ => return None,
    };
    Some((end - from).num_seconds() as f64)
}

// ---------------------------------------------------------------------------------------
// Mapping to the neutral model
// ---------------------------------------------------------------------------------------

fn map_state(raw: Option<&str>) -> VmState {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        Some("running") => VmState::Running,
        Some("stopped") => VmState::Stopped,
        Some("creating") => VmState::Creating,
        Some("unknown") | None | Some("") => VmState::Unknown,
        Some(other) => VmState::other(other),
    }
}

fn first_ipv4(ips: &[ApiIp]) -> Option<(Ipv4Addr, &ApiIp)> {
    ips.iter().find_map(|a| {
        let text = a.ip.as_deref()?;
        let addr = text.split('/').next()?.parse::<Ipv4Addr>().ok()?;
        Some((addr, a))
    })
}

// --- the response parsers as pure functions, for fuzzing ---

/// Parses `GET /api/v1/vm`. Entries stay raw until each is parsed on its own: one
/// malformed VM must not hide the others, and raw slices cost far less memory than a
/// `Value` tree. At most [`MAX_LIST_ENTRIES`](crate::bounded::MAX_LIST_ENTRIES) entries.
pub fn parse_vm_list(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(Vec<ApiVm>, Vec<String>), DecodeError> {
    let env: Envelope<BoundedList<Box<serde_json::value::RawValue>>> =
        decode_json(content_type, body)?;
    let mut vms = Vec::with_capacity(env.data.0.len());
    let mut warnings = Vec::new();
    for (i, raw) in env.data.0.iter().enumerate() {
        match serde_json::from_str::<ApiVm>(raw.get()) {
            Ok(vm) if !vm.id.is_empty() => vms.push(vm),
            Ok(_) => warnings.push(format!("GET /api/v1/vm: entry {i} has no id; skipped")),
            Err(e) => warnings.push(format!(
                "GET /api/v1/vm: entry {i} unreadable ({e}); skipped"
            )),
        }
    }
    Ok((vms, warnings))
}

/// Parses `GET /api/v1/vm/{id}/time-series` (at most `MAX_LIST_ENTRIES` points).
pub fn parse_time_series(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<ApiTimeSeriesPoint>, DecodeError> {
    let env: Envelope<BoundedList<ApiTimeSeriesPoint>> = decode_json(content_type, body)?;
    Ok(env.data.0)
}

/// Builds the neutral VM (without usage) from the API's VM.
pub fn map_vm(
    api: &ApiVm,
    now: DateTime<Utc>,
    unit: BtcUnit,
    names: &HashMap<String, String>,
) -> Vm {
    let template = api.template.as_ref();
    let ipv4 = first_ipv4(&api.ip_assignments);
    let name = names
        .get(&api.id)
        .cloned()
        .or_else(|| {
            ipv4.and_then(|(_, a)| {
                a.forward_dns
                    .clone()
                    .or_else(|| a.reverse_dns.clone())
                    .filter(|s| !s.is_empty())
            })
        })
        .unwrap_or_else(|| format!("vm-{}", api.id));
    let image = api
        .image
        .as_ref()
        .map(|i| {
            [i.distribution.as_deref(), i.version.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let status = api.status.as_ref();
    let status_time = status
        .and_then(|s| s.timestamp)
        .filter(|t| *t > 0)
        .and_then(|t| Utc.timestamp_opt(t, 0).single());
    let renewal = template
        .and_then(|t| t.cost_plan.as_ref())
        .and_then(|plan| {
            let currency = plan.currency.clone()?;
            let amount = plan.amount?;
            let from = api.expires.map_or(now, |e| e.max(now));
            let period = period_seconds(
                plan.interval_amount.unwrap_or(1),
                plan.interval_type.as_deref().unwrap_or("month"),
                from,
            )?;
            Some(Renewal {
                price: Money {
                    amount: to_major_units(amount, &currency, period / 86_400.0, unit),
                    currency,
                },
                period_seconds: period,
            })
        });
    Vm {
        id: api.id.clone(),
        name,
        plan: template.and_then(|t| t.name.clone()).unwrap_or_default(),
        location: template
            .and_then(|t| t.region.as_ref())
            .and_then(|r| r.name.clone())
            .unwrap_or_default(),
        image,
        ipv4: ipv4.map(|(a, _)| a),
        state: map_state(status.and_then(|s| s.state.as_deref())),
        status_time,
        created: api.created,
        expires: api.expires,
        deleting_on: api.deleting_on,
        auto_renewal_enabled: api.auto_renewal_enabled,
        renewal,
        cpus: template.and_then(|t| t.cpu),
        memory_bytes: template.and_then(|t| t.memory),
        disk_bytes: template.and_then(|t| t.disk_size),
        uptime_seconds: status.and_then(|s| s.uptime),
        usage: None,
        usage_error: None,
        subscription_id: api.subscription_id.clone(),
        max_prepay_days: api.max_prepay_days,
    }
}

fn is_gap(p: &ApiTimeSeriesPoint) -> bool {
    p.cpu == 0.0
        && p.memory == 0.0
        && p.net_in == 0.0
        && p.net_out == 0.0
        && p.disk_read == 0.0
        && p.disk_write == 0.0
}

/// The newest point whose interval is over (the current minute is still being
/// averaged) and which is not a gap (gaps come back as all zeros). Falls back to the
/// newest non-gap point when every point is recent.
pub fn newest_complete_point(
    points: &[ApiTimeSeriesPoint],
    now: DateTime<Utc>,
) -> Option<&ApiTimeSeriesPoint> {
    let mut sorted: Vec<&ApiTimeSeriesPoint> = points.iter().filter(|p| !is_gap(p)).collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.timestamp));
    let step = sorted
        .windows(2)
        .map(|w| w[0].timestamp - w[1].timestamp)
        .find(|d| *d > 0)
        .unwrap_or(60);
    let now = now.timestamp();
    sorted
        .iter()
        .find(|p| p.timestamp + step <= now)
        .or_else(|| sorted.first())
        .copied()
}

/// Usage from one point. `memory` is bytes used on Proxmox hosts but a fraction of
/// `memory_size` on others: a value ≤ 1 cannot be a byte count of a running VM.
pub fn usage_from_point(p: &ApiTimeSeriesPoint) -> Option<Usage> {
    let at = Utc.timestamp_opt(p.timestamp, 0).single()?;
    let memory_bytes = if p.memory <= 1.0 && p.memory_size > 1.0 {
        p.memory * p.memory_size
    } else {
        p.memory
    };
    Some(Usage {
        at,
        cpu_ratio: p.cpu,
        memory_bytes,
        network_receive_bytes_per_second: p.net_in,
        network_transmit_bytes_per_second: p.net_out,
        disk_read_bytes_per_second: p.disk_read,
        disk_write_bytes_per_second: p.disk_write,
    })
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// Settings of one LNVPS account's client.
pub struct LnvpsOptions {
    pub account: String,
    pub btc_unit: BtcUnit,
    pub vm_names: HashMap<String, String>,
    /// Time-series calls in flight at once (the rate budget still paces them).
    pub concurrency: usize,
}

/// One LNVPS account.
pub struct LnvpsClient {
    opts: LnvpsOptions,
    api: ApiClient,
    clock: SharedClock,
}

impl LnvpsClient {
    pub fn new(opts: LnvpsOptions, api: ApiClient, clock: SharedClock) -> Self {
        Self { opts, api, clock }
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
        self.api
            .send_decoded(&req, |resp| {
                decode_json(resp.content_type.as_deref(), &resp.body)
            })
            .await
    }

    async fn list_vms(&self) -> Result<(Vec<ApiVm>, Vec<String>), ProviderError> {
        let req = ApiRequest {
            method: Method::GET,
            path_and_query: "/api/v1/vm".into(),
            endpoint: "GET /api/v1/vm",
            body: None,
            retry: Retry::Idempotent,
        };
        self.api
            .send_decoded(&req, |resp| {
                parse_vm_list(resp.content_type.as_deref(), &resp.body)
            })
            .await
    }

    async fn usage(&self, vm_id: &str) -> Result<Option<Usage>, ProviderError> {
        let req = ApiRequest {
            method: Method::GET,
            path_and_query: format!("/api/v1/vm/{vm_id}/time-series"),
            endpoint: "GET /api/v1/vm/{id}/time-series",
            body: None,
            retry: Retry::Idempotent,
        };
        let points = self
            .api
            .send_decoded(&req, |resp| {
                parse_time_series(resp.content_type.as_deref(), &resp.body)
            })
            .await?;
        Ok(newest_complete_point(&points, self.clock.now()).and_then(usage_from_point))
    }

    async fn facts(&self, warnings: &mut Vec<String>) -> (AccountFacts, HashMap<String, String>) {
        let account =
            self.get::<Envelope<ApiAccount>>("/api/v1/account".into(), "GET /api/v1/account");
        let methods = self.get::<Envelope<Vec<ApiPaymentMethod>>>(
            "/api/v1/payment-methods".into(),
            "GET /api/v1/payment-methods",
        );
        let subs = self.subscriptions();
        let (account, methods, subs) = tokio::join!(account, methods, subs);
        let mut facts = AccountFacts::default();
        match account {
            Ok(a) => facts.email_verified = a.data.email_verified,
            Err(e) => warnings.push(e.to_string()),
        }
        match methods {
            Ok(m) => {
                facts.enabled_payment_methods =
                    Some(m.data.iter().filter(|p| p.enabled.unwrap_or(true)).count() as u32)
            }
            Err(e) => warnings.push(e.to_string()),
        }
        let mut vm_to_sub = HashMap::new();
        match subs {
            Ok(list) => {
                for s in list {
                    for li in &s.line_items {
                        if let Some(r) = &li.resource {
                            if r.kind.as_deref() == Some("vps") {
                                if let Some(vm) = &r.vm_id {
                                    vm_to_sub.insert(vm.clone(), s.id.clone());
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => warnings.push(e.to_string()),
        }
        (facts, vm_to_sub)
    }

    /// All subscriptions, following the pagination (100 per page, the server's cap).
    async fn subscriptions(&self) -> Result<Vec<ApiSubscription>, ProviderError> {
        const PAGE: usize = 100;
        const MAX_PAGES: usize = 100;
        let mut all = Vec::new();
        for page in 0..MAX_PAGES {
            let offset = page * PAGE;
            let p: Paginated<ApiSubscription> = self
                .get(
                    format!("/api/v1/subscriptions?limit={PAGE}&offset={offset}"),
                    "GET /api/v1/subscriptions",
                )
                .await?;
            let n = p.data.len();
            all.extend(p.data);
            let total = p.total.unwrap_or(all.len() as u64) as usize;
            if n == 0 || all.len() >= total {
                break;
            }
        }
        Ok(all)
    }
}

#[async_trait]
impl Provider for LnvpsClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lnvps
    }

    fn account(&self) -> &str {
        &self.opts.account
    }

    async fn poll(&self) -> Result<AccountData, ProviderError> {
        let (api_vms, mut warnings) = self.list_vms().await?;
        let now = self.clock.now();
        let mut vms: Vec<Vm> = api_vms
            .iter()
            .map(|v| map_vm(v, now, self.opts.btc_unit, &self.opts.vm_names))
            .collect();

        // Usage only for running VMs: a stopped VM's series is all zeros and would spend
        // budget for nothing.
        let running: Vec<(usize, String)> = vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.state.is_running())
            .map(|(i, v)| (i, v.id.clone()))
            .collect();
        let usage_fut = stream::iter(running)
            .map(|(i, id)| async move { (i, self.usage(&id).await) })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect::<Vec<_>>();
        let (usages, (facts, vm_to_sub)) = tokio::join!(usage_fut, self.facts(&mut warnings));
        for (i, result) in usages {
            match result {
                Ok(u) => vms[i].usage = u,
                Err(e) => {
                    // One VM's failure never fails the account.
                    vms[i].usage_error = Some(e.to_string());
                    warnings.push(e.to_string());
                }
            }
        }
        for vm in &mut vms {
            if vm.subscription_id.is_none() {
                vm.subscription_id = vm_to_sub.get(&vm.id).cloned();
            }
        }
        Ok(AccountData {
            fetched_at: self.clock.now(),
            vms,
            wallet: None,
            facts,
            warnings,
        })
    }

    async fn act(&self, vm_id: &str, action: VmAction) -> Result<(), ProviderError> {
        let (verb, endpoint) = match action {
            VmAction::Start => ("start", "PATCH /api/v1/vm/{id}/start"),
            VmAction::Stop => ("stop", "PATCH /api/v1/vm/{id}/stop"),
            // `restart` is a hard reset on LNVPS.
            VmAction::Reboot => ("restart", "PATCH /api/v1/vm/{id}/restart"),
        };
        let req = ApiRequest {
            method: Method::PATCH,
            path_and_query: format!("/api/v1/vm/{vm_id}/{verb}"),
            endpoint,
            body: None,
            retry: Retry::OnlyIfNotProcessed,
        };
        self.api.send(&req).await.map(|_| ())
    }
}

/// Shared so the daemon can build clients without naming this module's types.
pub type SharedLnvps = Arc<LnvpsClient>;

// ---------------------------------------------------------------------------------------
// The provider's entry in the registry
// ---------------------------------------------------------------------------------------

/// LNVPS in the registry ([`crate::module`]).
pub struct Lnvps;

impl crate::ProviderModule for Lnvps {
    fn default_base_url(&self) -> &'static str {
        "https://api.lnvps.net"
    }

    fn default_probe_port(&self) -> u16 {
        22
    }

    /// Every request is signed with the account's Nostr key (`nsec_file` or `nsec_env`).
    fn credentials(
        &self,
        raw: &crate::account::RawAccount,
        ctx: &mut crate::account::CheckContext<'_>,
    ) -> Option<crate::Credentials> {
        for (key, set) in [
            ("api_key_file", raw.api_key_file.is_some()),
            ("api_key_env", raw.api_key_env.is_some()),
            ("write_api_key_file", raw.write_api_key_file.is_some()),
            ("write_api_key_env", raw.write_api_key_env.is_some()),
            ("auth_header", raw.auth_header.is_some()),
        ] {
            if set {
                ctx.problem(
                    key,
                    "only applies to stablevps accounts (lnvps accounts sign every \
                     request with the key in nsec_file or nsec_env)"
                        .into(),
                );
            }
        }
        let loaded = vpswatch_model::secret::load_one(
            raw.nsec_file.as_deref(),
            raw.nsec_env.as_deref(),
            "nsec_file",
            "nsec_env",
            ctx.env,
        );
        match loaded {
            Ok((text, source, warn)) => {
                if let Some(w) = warn {
                    ctx.warning("nsec_file", w);
                }
                match vpswatch_model::secret::parse_nostr_key(&text) {
                    Ok(keys) => Some(crate::Credentials::Nostr(
                        vpswatch_model::secret::Secret::new(keys),
                    )),
                    Err(why) => {
                        ctx.problem(source.key(), format!("{}: {why}", source.describe()));
                        None
                    }
                }
            }
            Err((key, why)) => {
                ctx.problem(key, why);
                None
            }
        }
    }

    fn build(
        &self,
        account: &crate::AccountConfig,
        ctx: crate::BuildContext<'_>,
    ) -> Result<crate::SharedProvider, crate::BuildError> {
        let Some(api) = signed_api(account, &ctx)? else {
            return Err(crate::BuildError::Credentials {
                kind: ProviderKind::Lnvps,
                credentials: format!("{:?}", account.credentials),
            });
        };
        let opts = LnvpsOptions {
            account: account.name.clone(),
            btc_unit: account.btc_amount_unit,
            vm_names: account.vm_names.clone(),
            concurrency: ctx.settings.limits.concurrency,
        };
        Ok(Arc::new(LnvpsClient::new(opts, api, ctx.clock)))
    }
}

/// The NIP-98-signing API client of an LNVPS account, on the account's rate budget:
/// what both the provider and its billing calls send through. `None` when the account
/// has no Nostr key (not an LNVPS account).
pub(crate) fn signed_api(
    account: &crate::AccountConfig,
    ctx: &crate::BuildContext<'_>,
) -> Result<Option<ApiClient>, crate::BuildError> {
    let crate::Credentials::Nostr(keys) = &account.credentials else {
        return Ok(None);
    };
    let signer = Arc::new(Nip98Signer::new(keys.expose().clone(), ctx.clock.clone()));
    let api = ApiClient::new(
        account.base_url.clone(),
        ctx.budget(account),
        signer,
        ctx.observer.clone(),
        ctx.http_settings(),
    )?;
    Ok(Some(api))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btc_units_told_apart_by_magnitude() {
        // Real server: 10,000,000 msat = 10,000 sat = 0.0001 BTC a month.
        let real = btc_amount_to_btc(10_000_000.0, 30.0, BtcUnit::Auto);
        assert!((real - 0.0001).abs() < 1e-12);
        // Seed: 21,000 sat a month.
        let seed = btc_amount_to_btc(21_000.0, 30.0, BtcUnit::Auto);
        assert!((seed - 0.00021).abs() < 1e-12);
        // Explicit units override the guess.
        assert!((btc_amount_to_btc(21_000.0, 30.0, BtcUnit::Msat) - 0.00000021).abs() < 1e-15);
    }

    #[test]
    fn fiat_is_cents() {
        assert!((to_major_units(1249.0, "EUR", 30.0, BtcUnit::Auto) - 12.49).abs() < 1e-9);
    }

    #[test]
    fn calendar_month_period() {
        let from = DateTime::parse_from_rfc3339("2026-12-23T06:44:53Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        let p = from.and_then(|f| period_seconds(1, "month", f));
        assert_eq!(p, Some(2_678_400.0)); // 31 days in December
    }

    #[test]
    fn memory_fraction_and_bytes() {
        let frac = ApiTimeSeriesPoint {
            timestamp: 100,
            memory: 0.25,
            memory_size: 1024.0,
            cpu: 0.1,
            ..Default::default()
        };
        assert_eq!(usage_from_point(&frac).map(|u| u.memory_bytes), Some(256.0));
        let bytes = ApiTimeSeriesPoint {
            memory: 300_000_000.0,
            ..frac
        };
        assert_eq!(
            usage_from_point(&bytes).map(|u| u.memory_bytes),
            Some(300_000_000.0)
        );
    }

    #[test]
    fn parses_real_samples() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/lnvps");
        let text = std::fs::read_to_string(format!("{dir}/get_vm_list.json"))
            .expect("tests/fixtures/lnvps holds the real LNVPS samples");
        let env: Envelope<Vec<ApiVm>> = serde_json::from_str(&text).expect("sample parses");
        let vm = map_vm(&env.data[0], Utc::now(), BtcUnit::Auto, &HashMap::new());
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.ipv4, Some(Ipv4Addr::new(127, 9, 94, 167)));
        assert_eq!(vm.renewal.map(|r| r.price.currency), Some("BTC".into()));
    }
}
