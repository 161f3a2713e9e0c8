//! The emulated LNVPS endpoints. Each runs after auth with the world locked and
//! returns a [`Reply`]; extractor-style checks run in the real handlers' argument order
//! (path id, then query, then JSON body) and ownership is checked before deletion
//! (403 before 404), as in the real server.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::http::{api_error, internal_error, Reply};
use super::power::take_failure;
use super::render;
use super::routes::{self, Endpoint};
use super::wire::{
    ApiAccount, ApiExchangeRates, ApiPaymentInfo, ApiPaymentMethod, ApiRenewalQuote, ApiTaxInfo,
    ApiTemplates, Data, Paginated,
};
use super::world::{interval_seconds, PowerAction, SimVm, World};

/// Largest renewal, in intervals.
const MAX_RENEWAL_INTERVALS: u32 = 120;

/// One routed, authenticated (or public) call.
pub struct Call<'a> {
    pub endpoint: Endpoint,
    pub id: Option<&'a str>,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// Authenticated pubkey (hex); empty for public endpoints.
    pub user: &'a str,
    pub now: DateTime<Utc>,
}

type Outcome = Result<Reply, Reply>;

pub fn ok<T: serde::Serialize>(data: T) -> Reply {
    Reply::json(StatusCode::OK, &Data { data })
}

/// An error answer for `code` as the real deployment gives it: 500 → the API's
/// sanitized error; 502–504 → the reverse proxy's HTML page; anything else → a JSON
/// error with the status' reason.
pub fn status_error(code: u16) -> Reply {
    let Ok(status) = StatusCode::from_u16(code) else {
        return internal_error();
    };
    match code {
        500 => internal_error(),
        502..=504 => {
            let title = format!("{} {}", code, status.canonical_reason().unwrap_or("Error"));
            Reply::html(
                status,
                format!(
                    "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
                ),
            )
        }
        _ => api_error(status, status.canonical_reason().unwrap_or("Error")),
    }
}

fn not_found() -> Reply {
    api_error(StatusCode::NOT_FOUND, "Resource not found")
}

/// Runs an endpoint that needs no account.
pub fn public(world: &World, call: &Call<'_>) -> Reply {
    match call.endpoint {
        Endpoint::Templates => {
            let templates = world
                .catalogue
                .templates
                .iter()
                .map(|t| render::template(&world.catalogue, t))
                .collect();
            ok(ApiTemplates { templates })
        }
        Endpoint::Images => ok(world
            .catalogue
            .images
            .iter()
            .map(render::image)
            .collect::<Vec<_>>()),
        Endpoint::PublicPaymentMethods => ok(["lightning", "onchain", "nwc", "lnurl"]
            .into_iter()
            .map(|name| ApiPaymentInfo {
                name,
                currencies: vec!["BTC"],
            })
            .collect::<Vec<_>>()),
        Endpoint::ExchangeRate => exchange_rate(world, call),
        _ => not_found(),
    }
}

fn exchange_rate(world: &World, call: &Call<'_>) -> Reply {
    let q = routes::query_pairs(call.query);
    let base = routes::query_str(&q, "base")
        .unwrap_or("BTC")
        .to_uppercase();
    let mut rates = std::collections::BTreeMap::new();
    if base == "BTC" {
        rates.insert("EUR".to_string(), world.settings.btc_eur);
        rates.insert("USD".to_string(), world.settings.btc_usd);
    }
    ok(ApiExchangeRates {
        updated: call.now,
        base,
        rates,
    })
}

/// Runs an authenticated endpoint; the caller has upserted the user.
pub fn authenticated(world: &mut World, call: &Call<'_>) -> Reply {
    if let Some(reply) = read_only(world, call) {
        return reply;
    }
    let result = match call.endpoint {
        Endpoint::PatchVm => patch_vm(world, call),
        Endpoint::Start => power(world, call, PowerAction::Start),
        Endpoint::Stop => power(world, call, PowerAction::Stop),
        Endpoint::Restart => power(world, call, PowerAction::Restart),
        Endpoint::Renew => vm_renew(world, call),
        Endpoint::SubscriptionRenew => subscription_renew(world, call),
        Endpoint::PatchSubscription => patch_subscription(world, call),
        // Answered by `read_only` above.
        _ => Err(status_error(500)),
    };
    result.unwrap_or_else(|e| e)
}

/// The authenticated endpoints whose handlers only read the world (their `&World`
/// signature proves it); `None` for the others.
pub fn read_only(world: &World, call: &Call<'_>) -> Option<Reply> {
    let result = match call.endpoint {
        Endpoint::ListVms => Ok(list_vms(world, call)),
        Endpoint::GetVm => get_vm(world, call),
        Endpoint::TimeSeries => time_series(world, call),
        Endpoint::History => history(world, call),
        Endpoint::RenewQuote => vm_renew_quote(world, call),
        Endpoint::GetPayment => get_payment(world, call),
        Endpoint::SubscriptionRenewQuote => subscription_renew_quote(world, call),
        Endpoint::Account => Ok(account()),
        Endpoint::PaymentMethods => Ok(payment_methods(world, call)),
        Endpoint::Subscriptions => list_subscriptions(world, call),
        Endpoint::GetSubscription => get_subscription(world, call),
        Endpoint::SubscriptionPayments => subscription_payments(world, call),
        Endpoint::Templates
        | Endpoint::Images
        | Endpoint::PublicPaymentMethods
        | Endpoint::ExchangeRate => Ok(public(world, call)),
        _ => return None,
    };
    Some(result.unwrap_or_else(|e| e))
}

// ---- extractors ---------------------------------------------------------------------

fn path_id(call: &Call<'_>) -> Result<u64, Reply> {
    let raw = call.id.unwrap_or("");
    routes::parse_id(raw).map_err(|msg| Reply::text(StatusCode::BAD_REQUEST, msg))
}

fn query(call: &Call<'_>) -> Vec<(String, String)> {
    routes::query_pairs(call.query)
}

fn query_num<T>(q: &[(String, String)], key: &str) -> Result<Option<T>, Reply>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    routes::query_num(q, key).map_err(|msg| Reply::text(StatusCode::BAD_REQUEST, msg))
}

/// axum's `Json<T>`: content type, syntax (400) and data (422) errors as plain text.
fn json_body<T: DeserializeOwned>(call: &Call<'_>) -> Result<T, Reply> {
    let ct = call.content_type.unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json =
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    if !is_json {
        return Err(Reply::text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected request with `Content-Type: application/json`",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(call.body);
    let parsed = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => de
            .end()
            .map(|()| v)
            .map_err(|e| (e.classify(), e.to_string())),
        Err(e) => Err((e.inner().classify(), e.to_string())),
    };
    parsed.map_err(|(category, msg)| {
        let (status, what) = match category {
            serde_json::error::Category::Data => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Failed to deserialize the JSON body into the target type",
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "Failed to parse the request body as JSON",
            ),
        };
        Reply::text(status, format!("{what}: {msg}"))
    })
}

/// The caller's VM: 404 if missing, 403 if not theirs, 404 "VM not found" if deleted.
fn user_vm<'w>(world: &'w World, user: &str, id: u64) -> Result<&'w SimVm, Reply> {
    let vm = world.vm(id).ok_or_else(not_found)?;
    if vm.owner != user {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "VM does not belong to you",
        ));
    }
    if vm.deleted {
        return Err(api_error(StatusCode::NOT_FOUND, "VM not found"));
    }
    Ok(vm)
}

/// The caller's subscription (shares the VM's id).
fn user_subscription<'w>(
    world: &'w World,
    user: &str,
    id: u64,
    foreign: StatusCode,
) -> Result<&'w SimVm, Reply> {
    let vm = world
        .vm(id)
        .filter(|vm| !vm.no_subscription)
        .ok_or_else(not_found)?;
    if vm.owner != user {
        return Err(api_error(foreign, "Access denied: not your subscription"));
    }
    Ok(vm)
}

// ---- VMs ----------------------------------------------------------------------------

fn list_vms(world: &World, call: &Call<'_>) -> Reply {
    let vms: Vec<_> = world
        .user_vms(call.user)
        .map(|vm| render::vm_status(world, vm, call.now))
        .collect();
    ok(vms)
}

fn get_vm(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let vm = user_vm(world, call.user, id)?;
    Ok(ok(render::vm_status(world, vm, call.now)))
}

#[derive(Deserialize)]
struct VmPatch {
    ssh_key_id: Option<u64>,
    reverse_dns: Option<String>,
    auto_renewal_enabled: Option<bool>,
}

fn patch_vm(world: &mut World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let patch: VmPatch = json_body(call)?;
    user_vm(world, call.user, id)?;
    if let Some(key) = patch.ssh_key_id {
        let own_key = world.user(call.user).map(|u| u.id);
        if own_key != Some(key) {
            return Err(not_found());
        }
    }
    if let Some(vm) = world.vm_mut(id) {
        if let Some(ptr) = patch.reverse_dns {
            vm.reverse_dns = Some(ptr);
        }
        if let Some(v) = patch.auto_renewal_enabled {
            vm.auto_renewal_enabled = v;
        }
    }
    Ok(ok(()))
}

fn time_series(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let vm = user_vm(world, call.user, id)?;
    if vm.timeseries_error || !vm.is_provisioned() {
        return Err(internal_error());
    }
    Ok(ok(render::time_series(vm, call.now)))
}

/// PATCH /vm/{id}/start|stop|restart; every request with a valid id is recorded with
/// its answer.
fn power(world: &mut World, call: &Call<'_>, action: PowerAction) -> Outcome {
    let id = path_id(call)?;
    let result = power_checked(world, call, id, action);
    let status = match &result {
        Ok(r) | Err(r) => r.status.as_u16(),
    };
    world.record_action(id, action, call.now, status);
    result
}

fn power_checked(world: &mut World, call: &Call<'_>, id: u64, action: PowerAction) -> Outcome {
    let vm = user_vm(world, call.user, id)?;
    if !vm.is_provisioned() {
        // The host has no such VM yet.
        return Err(internal_error());
    }
    // An injected failure: the host call failed (the real server answers 500).
    let failed = world
        .vm_mut(id)
        .and_then(|vm| take_failure(&mut vm.action_failures, action));
    if let Some(status) = failed {
        return Err(status_error(status));
    }
    world.power(id, action, call.now);
    Ok(ok(()))
}

fn history(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let q = query(call);
    let limit: Option<u64> = query_num(&q, "limit")?;
    let offset: Option<u64> = query_num(&q, "offset")?;
    let vm = user_vm(world, call.user, id)?;
    let all = render::history(vm);
    let page = match (limit, offset) {
        (Some(l), Some(o)) => all
            .into_iter()
            .skip(usize::try_from(o).unwrap_or(usize::MAX))
            .take(usize::try_from(l).unwrap_or(usize::MAX))
            .collect(),
        _ => all,
    };
    Ok(ok(page))
}

// ---- renewal quotes -----------------------------------------------------------------

/// Whether `method` is paid in BTC (lightning is the default for unknown values).
fn pays_in_btc(method: Option<&str>) -> bool {
    !matches!(method, Some("revolut" | "stripe" | "paypal" | "saved"))
}

/// Converts `amount` of `from` into the method's currency; `None` without an FX rate.
fn convert(world: &World, amount: u64, from: &str, btc: bool) -> Option<(u64, String)> {
    let rate = |cur: &str| match cur {
        "EUR" => Some(world.settings.btc_eur),
        "USD" => Some(world.settings.btc_usd),
        _ => None,
    };
    match (from, btc) {
        ("BTC", true) => Some((amount, "BTC".into())),
        ("BTC", false) => {
            let r = rate("EUR")?;
            let cents = amount as f64 / 1e11 * r * 100.0;
            Some((cents.round() as u64, "EUR".into()))
        }
        (fiat, true) => {
            let r = rate(fiat).filter(|r| *r > 0.0)?;
            let msat = amount as f64 / 100.0 / r * 1e11;
            Some((msat.round() as u64, "BTC".into()))
        }
        (fiat, false) => Some((amount, fiat.to_string())),
    }
}

/// The renewal query (`method`, `intervals`), parsed as axum's `Query` would.
pub struct RenewQuery {
    pub method: Option<String>,
    pub intervals: Option<u32>,
}

impl RenewQuery {
    pub fn parse(call: &Call<'_>) -> Result<Self, Reply> {
        let q = query(call);
        Ok(Self {
            intervals: query_num(&q, "intervals")?,
            method: routes::query_str(&q, "method").map(str::to_string),
        })
    }
}

/// Prices a renewal of `vm` as the query asks.
pub fn quote(world: &World, vm: &SimVm, q: &RenewQuery, now: DateTime<Utc>) -> Outcome {
    let intervals = q.intervals.unwrap_or(1);
    if !(1..=MAX_RENEWAL_INTERVALS).contains(&intervals) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            &format!("intervals must be between 1 and {MAX_RENEWAL_INTERVALS}"),
        ));
    }
    let plan = &vm.template.cost;
    let base = vm.expires.map_or(now, |e| e.max(now));
    let time = interval_seconds(base, plan).saturating_mul(u64::from(intervals));
    let total = plan.amount.saturating_mul(u64::from(intervals));
    if let Some(p) = super::renewal::reusable(vm, time, now) {
        // The pending invoice the renew call would hand back.
        return Ok(ok(ApiRenewalQuote {
            amount: p.amount,
            tax: 0,
            processing_fee: 0,
            currency: p.currency.clone(),
            time: p.time,
        }));
    }
    let btc = pays_in_btc(q.method.as_deref());
    let (amount, currency) =
        convert(world, total, &plan.currency, btc).ok_or_else(internal_error)?;
    Ok(ok(ApiRenewalQuote {
        amount,
        tax: 0,
        processing_fee: 0,
        currency,
        time,
    }))
}

fn vm_renew_quote(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let q = RenewQuery::parse(call)?;
    let vm = user_vm(world, call.user, id)?;
    quote(world, vm, &q, call.now)
}

fn subscription_renew_quote(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let q = RenewQuery::parse(call)?;
    let vm = user_subscription(world, call.user, id, StatusCode::FORBIDDEN)?;
    quote(world, vm, &q, call.now)
}

fn renew_intervals(q: &RenewQuery) -> Result<u32, Reply> {
    let intervals = q.intervals.unwrap_or(1);
    if !(1..=MAX_RENEWAL_INTERVALS).contains(&intervals) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            &format!("intervals must be between 1 and {MAX_RENEWAL_INTERVALS}"),
        ));
    }
    Ok(intervals)
}

fn vm_renew(world: &mut World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let q = RenewQuery::parse(call)?;
    user_vm(world, call.user, id)?;
    let intervals = renew_intervals(&q)?;
    let p = world.renew(id, q.method.as_deref(), intervals, call.now)?;
    let vm = world.vm(id).ok_or_else(internal_error)?;
    Ok(ok(render::vm_payment(vm, &p)))
}

fn subscription_renew(world: &mut World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let q = RenewQuery::parse(call)?;
    user_subscription(world, call.user, id, StatusCode::FORBIDDEN)?;
    let intervals = renew_intervals(&q)?;
    let p = world.renew(id, q.method.as_deref(), intervals, call.now)?;
    let vm = world.vm(id).ok_or_else(internal_error)?;
    Ok(ok(render::payment(vm, &p)))
}

fn get_payment(world: &World, call: &Call<'_>) -> Outcome {
    let id = super::renewal::check_payment_id(call.id.unwrap_or(""))?;
    let (vm, p) = world.payment(&id).ok_or_else(not_found)?;
    if vm.owner != call.user {
        return Err(api_error(StatusCode::FORBIDDEN, "Access denied"));
    }
    Ok(ok(render::vm_payment(vm, p)))
}

// ---- account ------------------------------------------------------------------------

fn account() -> Reply {
    ok(ApiAccount {
        account_type: "nostr",
        contact_nip17: true,
        contact_email: false,
        contact_telegram: false,
        telegram_linked: false,
        contact_whatsapp: false,
        whatsapp_verified: false,
        country_code: None,
        name: None,
        address_1: None,
        address_2: None,
        state: None,
        city: None,
        postcode: None,
        tax_id: None,
        tax: vec![ApiTaxInfo {
            company_id: 1,
            company_name: "Default Company",
            rate: 0.0,
            treatment: "out_of_scope",
        }],
    })
}

fn payment_methods(world: &World, call: &Call<'_>) -> Reply {
    let methods: Vec<ApiPaymentMethod> = world
        .user(call.user)
        .map(|u| {
            u.payment_methods
                .iter()
                .map(|m| ApiPaymentMethod {
                    id: m.id,
                    provider: m.provider.clone(),
                    name: m.name.clone(),
                    created: m.created,
                    card_brand: None,
                    card_last_four: None,
                    exp_month: None,
                    exp_year: None,
                    is_default: m.is_default,
                    enabled: m.enabled,
                })
                .collect()
        })
        .unwrap_or_default();
    ok(methods)
}

// ---- subscriptions ------------------------------------------------------------------

/// `limit` (default 50, capped at 100) and `offset` (default 0).
fn page(q: &[(String, String)]) -> Result<(u64, u64), Reply> {
    let limit: Option<u64> = query_num(q, "limit")?;
    let offset: Option<u64> = query_num(q, "offset")?;
    Ok((limit.unwrap_or(50).min(100), offset.unwrap_or(0)))
}

fn paginate<T: serde::Serialize>(items: Vec<T>, limit: u64, offset: u64) -> Reply {
    let total = items.len() as u64;
    let data = items
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect();
    Reply::json(
        StatusCode::OK,
        &Paginated {
            data,
            total,
            limit,
            offset,
        },
    )
}

fn list_subscriptions(world: &World, call: &Call<'_>) -> Outcome {
    let (limit, offset) = page(&query(call))?;
    let mut subs: Vec<&SimVm> = world.user_subscriptions(call.user).collect();
    subs.sort_by_key(|vm| std::cmp::Reverse(vm.id));
    let items: Vec<_> = subs.into_iter().map(render::subscription).collect();
    Ok(paginate(items, limit, offset))
}

fn get_subscription(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let vm = user_subscription(world, call.user, id, StatusCode::FORBIDDEN)?;
    Ok(ok(render::subscription(vm)))
}

#[derive(Deserialize)]
struct SubscriptionPatch {
    auto_renewal_enabled: Option<bool>,
}

fn patch_subscription(world: &mut World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let patch: SubscriptionPatch = json_body(call)?;
    user_subscription(world, call.user, id, StatusCode::FORBIDDEN)?;
    let vm = world.vm_mut(id).ok_or_else(not_found)?;
    if let Some(v) = patch.auto_renewal_enabled {
        vm.auto_renewal_enabled = v;
    }
    Ok(ok(render::subscription(vm)))
}

fn subscription_payments(world: &World, call: &Call<'_>) -> Outcome {
    let id = path_id(call)?;
    let q = query(call);
    let (limit, offset) = page(&q)?;
    let vm = user_subscription(world, call.user, id, StatusCode::BAD_REQUEST)?;
    let mut items: Vec<_> = vm.payments.iter().map(|p| render::payment(vm, p)).collect();
    items.sort_by_key(|p| std::cmp::Reverse(p.created));
    Ok(paginate(items, limit, offset))
}
