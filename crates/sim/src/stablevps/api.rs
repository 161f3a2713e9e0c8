//! The emulated StableVPS endpoints: route table, API key authentication and the JSON
//! shapes of the public API page (no `data` envelope, `{"error": …}` errors, money as
//! EUR numbers, times as ISO 8601 UTC with milliseconds).

use chrono::{DateTime, SecondsFormat, Utc};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::scenario::KeyScope;
use super::world::{plan_price, round_eur, SimAction, SimVps, World};
use crate::http::Reply;
use crate::power::{take_failure, PowerAction};

pub const VPS_LIST: &str = "/api/v1/vps";
pub const VPS_ONE: &str = "/api/v1/vps/{id}";
pub const VPS_ACTIONS: &str = "/api/v1/vps/{id}/actions";
pub const ACCOUNT: &str = "/api/v1/account";
pub const WALLET: &str = "/api/v1/wallet";
pub const AUTH: &str = "/api/v1/auth";

/// A routed endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ListVps,
    CreateVps,
    GetVps,
    DeleteVps,
    VpsAction,
    Account,
    Wallet,
    ListKeys,
}

impl Endpoint {
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Endpoint::CreateVps | Endpoint::DeleteVps | Endpoint::VpsAction
        )
    }

    pub fn has_body(self) -> bool {
        matches!(self, Endpoint::CreateVps | Endpoint::VpsAction)
    }
}

/// The outcome of routing a path and method.
pub enum Routed {
    Found {
        endpoint: Endpoint,
        template: &'static str,
        id: Option<String>,
    },
    /// Path known, method not: carries the template (for faults and the log).
    MethodNotAllowed(&'static str),
    NotFound,
}

impl Routed {
    pub fn template(&self) -> Option<&'static str> {
        match self {
            Routed::Found { template, .. } | Routed::MethodNotAllowed(template) => Some(template),
            Routed::NotFound => None,
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Routed::Found { id, .. } => id.as_deref(),
            _ => None,
        }
    }
}

pub fn route(path: &str, method: &Method) -> Routed {
    let path = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    let (template, id) = match segs.as_slice() {
        ["", "api", "v1", "vps"] => (VPS_LIST, None),
        ["", "api", "v1", "vps", id] if !id.is_empty() => (VPS_ONE, Some(*id)),
        ["", "api", "v1", "vps", id, "actions"] if !id.is_empty() => (VPS_ACTIONS, Some(*id)),
        ["", "api", "v1", "account"] => (ACCOUNT, None),
        ["", "api", "v1", "wallet"] => (WALLET, None),
        ["", "api", "v1", "auth"] => (AUTH, None),
        _ => return Routed::NotFound,
    };
    let endpoint = match (template, method.as_str()) {
        (VPS_LIST, "GET") => Endpoint::ListVps,
        (VPS_LIST, "POST") => Endpoint::CreateVps,
        (VPS_ONE, "GET") => Endpoint::GetVps,
        (VPS_ONE, "DELETE") => Endpoint::DeleteVps,
        (VPS_ACTIONS, "POST") => Endpoint::VpsAction,
        (ACCOUNT, "GET") => Endpoint::Account,
        (WALLET, "GET") => Endpoint::Wallet,
        (AUTH, "GET") => Endpoint::ListKeys,
        _ => return Routed::MethodNotAllowed(template),
    };
    Routed::Found {
        endpoint,
        template,
        id: id.map(str::to_string),
    }
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(status, &json!({ "error": message }))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The raw key from `Authorization: Bearer …` or `X-API-Key: …`.
pub fn presented_key(headers: &http::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let header = || {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    };
    bearer.or_else(header).map(str::to_string)
}

/// Which header carried the key: `bearer` (`Authorization: Bearer`, preferred when
/// both are sent, as [`presented_key`] does) or `x-api-key`.
pub fn presented_style(headers: &http::HeaderMap) -> Option<&'static str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") || v.starts_with("bearer "));
    if bearer {
        Some("bearer")
    } else if headers.contains_key("x-api-key") {
        Some("x-api-key")
    } else {
        None
    }
}

/// Length of the `keyPrefix` the API shows for a key (`svps_live_a3f7`).
pub const KEY_PREFIX_LEN: usize = 14;

/// Who is calling: the key's account and scope.
pub struct Caller {
    pub account_id: String,
    pub scope: KeyScope,
}

/// Checks a presented key (401s) and marks it used.
pub fn authenticate(w: &mut World, key: Option<&str>, now: DateTime<Utc>) -> Result<Caller, Reply> {
    let Some(key) = key else {
        return Err(error(StatusCode::UNAUTHORIZED, "API key required"));
    };
    let Some(k) = w.keys.iter_mut().find(|k| k.raw == key) else {
        return Err(error(StatusCode::UNAUTHORIZED, "Invalid API key"));
    };
    if k.expires_at.is_some_and(|t| t <= now) {
        return Err(error(StatusCode::UNAUTHORIZED, "API key has expired"));
    }
    k.last_used_at = Some(now);
    Ok(Caller {
        account_id: k.account_id.clone(),
        scope: k.scope,
    })
}

fn vps_summary(v: &SimVps) -> Value {
    json!({
        "id": v.id,
        "planId": v.plan_id,
        "billingCycle": v.billing_cycle,
        "status": v.status,
        "vpsStatus": v.vps_status,
        "ipAddress": v.ip_address.to_string(),
        "location": v.location,
        "rdpUsername": v.rdp_username,
        "serverId": v.server_id,
        "currentPeriodEnd": ts(v.current_period_end),
        "createdAt": ts(v.created_at),
    })
}

fn vps_detail(v: &SimVps) -> Value {
    let mut j = vps_summary(v);
    if let Some(o) = j.as_object_mut() {
        o.insert("hostname".into(), json!(v.hostname));
        o.insert("rdpPassword".into(), json!(v.rdp_password));
        o.insert(
            "currentPeriodStart".into(),
            json!(ts(v.current_period_start)),
        );
    }
    j
}

fn not_found() -> Reply {
    error(StatusCode::NOT_FOUND, "VPS not found")
}

/// One authenticated, routed request.
pub struct Call<'a> {
    pub endpoint: Endpoint,
    pub id: Option<&'a str>,
    pub body: &'a [u8],
    pub caller: &'a Caller,
    pub now: DateTime<Utc>,
}

/// Runs an authenticated endpoint (scope already checked).
pub fn handle(w: &mut World, call: &Call<'_>) -> Reply {
    let account = call.caller.account_id.as_str();
    match call.endpoint {
        Endpoint::ListVps => list_vps(w, account),
        Endpoint::GetVps => match call.id.and_then(|id| w.owned_vps_mut(account, id)) {
            Some(v) => Reply::json(StatusCode::OK, &vps_detail(v)),
            None => not_found(),
        },
        Endpoint::Account => account_info(w, account),
        Endpoint::Wallet => match w.account(account) {
            Some(a) => Reply::json(
                StatusCode::OK,
                &json!({ "balance": a.balance, "currency": "EUR" }),
            ),
            None => error(StatusCode::NOT_FOUND, "Account not found"),
        },
        Endpoint::ListKeys => list_keys(w, account),
        Endpoint::VpsAction => recorded(w, call, |w| vps_action(w, call)),
        Endpoint::DeleteVps => recorded(w, call, |w| delete_vps(w, call)),
        Endpoint::CreateVps => recorded(w, call, |w| create_vps(w, call)),
    }
}

/// Runs a write and records it with the status it answered.
fn recorded(
    w: &mut World,
    call: &Call<'_>,
    f: impl FnOnce(&mut World) -> (Reply, String, Option<String>),
) -> Reply {
    let (reply, action, vps_id) = f(w);
    w.actions.push(SimAction {
        at: call.now,
        account_id: call.caller.account_id.clone(),
        vps_id,
        action,
        status: reply.status.as_u16(),
    });
    w.reconcile_listeners();
    reply
}

fn list_vps(w: &World, account: &str) -> Reply {
    let list: Vec<Value> = w
        .vps
        .iter()
        .filter(|v| v.account_id == account && !v.deleted)
        .map(|v| {
            let mut j = vps_summary(v);
            if let Some(o) = j.as_object_mut() {
                for field in &v.list_omits {
                    o.remove(field);
                }
            }
            j
        })
        .collect();
    let total = list.len();
    Reply::json(StatusCode::OK, &json!({ "vps": list, "total": total }))
}

fn account_info(w: &World, account: &str) -> Reply {
    let Some(a) = w.account(account) else {
        return error(StatusCode::NOT_FOUND, "Account not found");
    };
    let mine = || {
        w.vps
            .iter()
            .filter(|v| v.account_id == account && !v.deleted)
    };
    Reply::json(
        StatusCode::OK,
        &json!({
            "id": a.id,
            "firstName": a.first_name,
            "lastName": a.last_name,
            "email": a.email,
            "role": "user",
            "balance": a.balance,
            "currency": "EUR",
            "referralCode": a.referral_code,
            "affiliateStats": { "totalReferrals": 0, "successfulReferrals": 0, "totalEarnings": 0.0 },
            "activeVpsCount": mine().filter(|v| v.status == "active").count(),
            "totalVpsCount": mine().count(),
            "createdAt": ts(a.created_at),
        }),
    )
}

fn list_keys(w: &World, account: &str) -> Reply {
    let keys: Vec<Value> = w
        .keys
        .iter()
        .filter(|k| k.account_id == account)
        .map(|k| {
            json!({
                "_id": k.id,
                "name": k.name,
                "keyPrefix": k.raw.chars().take(KEY_PREFIX_LEN).collect::<String>(),
                "scope": k.scope.as_str(),
                "lastUsedAt": k.last_used_at.map(ts),
                "expiresAt": k.expires_at.map(ts),
                "createdAt": ts(k.created_at),
            })
        })
        .collect();
    Reply::json(StatusCode::OK, &json!({ "keys": keys }))
}

/// The string field `name` of a JSON object body.
fn body_field(body: &[u8], name: &str) -> Result<Option<String>, Reply> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "Invalid JSON body"))?;
    Ok(v.get(name).and_then(Value::as_str).map(str::to_string))
}

/// start/stop/reboot. Simulator choice: rebooting a `provisioning` VPS is refused
/// with 409 (the real behaviour is an open question). An injected action failure
/// answers its status after the checks (the provider call failed). Start and reboot
/// boot the machine (see `SimVps::power`): a hung machine answers again afterwards
/// unless it `stays_dead`, or `needs_power_cycle` and was not stopped first.
fn vps_action(w: &mut World, call: &Call<'_>) -> (Reply, String, Option<String>) {
    let vps_id = call.id.map(str::to_string);
    let action = match body_field(call.body, "action") {
        Ok(a) => a.unwrap_or_default(),
        Err(r) => return (r, String::new(), vps_id),
    };
    let boot_time = w.reboot_duration;
    let booting_status = w.booting_vps_status.clone();
    let Some(v) = call
        .id
        .and_then(|id| w.owned_vps_mut(&call.caller.account_id, id))
    else {
        return (not_found(), action, vps_id);
    };
    let power = match action.as_str() {
        "start" => PowerAction::Start,
        "stop" => PowerAction::Stop,
        "reboot" => PowerAction::Restart,
        _ => {
            let r = error(
                StatusCode::BAD_REQUEST,
                "Invalid action. Must be one of: start, stop, reboot",
            );
            return (r, action, vps_id);
        }
    };
    if power == PowerAction::Restart && v.vps_status == "provisioning" {
        let r = error(
            StatusCode::CONFLICT,
            "VPS is still provisioning and cannot be rebooted",
        );
        return (r, action, vps_id);
    }
    if let Some(status) = take_failure(&mut v.action_failures, power) {
        return (status_error(status), action, vps_id);
    }
    v.power(power, call.now, boot_time, booting_status.as_deref());
    let reply = Reply::json(
        StatusCode::OK,
        &json!({
            "success": true,
            "action": action,
            "vpsId": v.server_id,
            "message": format!("VPS {action} request sent successfully"),
        }),
    );
    (reply, action, vps_id)
}

/// A JSON error for `status` as the API page describes them (500 internal, 502 the
/// underlying provider failed; others with their reason).
pub fn status_error(code: u16) -> Reply {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status.as_u16() {
        500 => "Internal server error",
        502 => "VPS provider request failed",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    error(status, message)
}

fn delete_vps(w: &mut World, call: &Call<'_>) -> (Reply, String, Option<String>) {
    let vps_id = call.id.map(str::to_string);
    let action = "delete".to_string();
    let Some(v) = call
        .id
        .and_then(|id| w.owned_vps_mut(&call.caller.account_id, id))
    else {
        return (not_found(), action, vps_id);
    };
    v.deleted = true;
    let reply = Reply::json(
        StatusCode::OK,
        &json!({
            "success": true,
            "message": "VPS terminated successfully",
            "id": v.id,
            "providerDeleted": true,
        }),
    );
    (reply, action, vps_id)
}

const LOCATIONS: [&str; 6] = [
    "amsterdam",
    "london",
    "frankfurt",
    "newYork",
    "singapore",
    "tokyo",
];

/// POST /api/v1/vps: validates, charges the wallet (402 if short), and adds a
/// `provisioning` VPS that turns active after the scenario's delay.
fn create_vps(w: &mut World, call: &Call<'_>) -> (Reply, String, Option<String>) {
    let action = "create".to_string();
    let fields = ["planId", "billingCycle", "location"].map(|f| body_field(call.body, f));
    let [plan, cycle, location] = match fields {
        [Ok(Some(p)), Ok(Some(c)), Ok(Some(l))] => [p, c, l],
        [Err(r), ..] => return (r, action, None),
        _ => {
            let r = error(
                StatusCode::BAD_REQUEST,
                "planId, billingCycle and location are required",
            );
            return (r, action, None);
        }
    };
    let Some(price) = plan_price(&plan, &cycle) else {
        let r = error(StatusCode::BAD_REQUEST, "Invalid planId or billingCycle");
        return (r, action, None);
    };
    if !LOCATIONS.contains(&location.as_str()) {
        return (
            error(StatusCode::BAD_REQUEST, "Invalid location"),
            action,
            None,
        );
    }
    let account = call.caller.account_id.clone();
    let Some(a) = w.account_mut(&account) else {
        return (
            error(StatusCode::NOT_FOUND, "Account not found"),
            action,
            None,
        );
    };
    if a.balance + 1e-9 < price {
        let r = Reply::json(
            StatusCode::PAYMENT_REQUIRED,
            &json!({
                "error": "Insufficient wallet balance",
                "required": price,
                "available": a.balance,
                "currency": "EUR",
            }),
        );
        return (r, action, None);
    }
    a.balance = round_eur(a.balance - price);
    let new_balance = a.balance;
    let spec = super::scenario::VpsSpec {
        account: account.clone(),
        plan_id: plan,
        billing_cycle: cycle,
        status: "active".into(),
        vps_status: "provisioning".into(),
        location,
        current_period_end: crate::scenario::RelTime::At(next_period_or_now(call.now, call)),
        current_period_start: Some(crate::scenario::RelTime::At(call.now)),
        created_at: Some(crate::scenario::RelTime::At(call.now)),
        ..Default::default()
    };
    let id = w.add_vps(&account, spec, call.now);
    let reply = match w.vps(&id) {
        Some(v) => Reply::json(
            StatusCode::CREATED,
            &json!({
                "success": true,
                "message": "VPS provisioning started. It will be active in a few minutes.",
                "id": v.id,
                "vpsId": v.server_id,
                "planId": v.plan_id,
                "billingCycle": v.billing_cycle,
                "location": v.location,
                "vpsStatus": v.vps_status,
                "rdpUsername": v.rdp_username,
                "cost": price,
                "newBalance": new_balance,
                "currency": "EUR",
                "currentPeriodEnd": ts(v.current_period_end),
            }),
        ),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
    };
    (reply, action, Some(id))
}

fn next_period_or_now(now: DateTime<Utc>, call: &Call<'_>) -> DateTime<Utc> {
    let cycle = body_field(call.body, "billingCycle")
        .ok()
        .flatten()
        .unwrap_or_default();
    let months = if cycle == "yearly" { 12 } else { 1 };
    now.checked_add_months(chrono::Months::new(months))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = Method::GET;
        assert!(matches!(
            route("/api/v1/vps/abc/actions", &Method::POST),
            Routed::Found {
                endpoint: Endpoint::VpsAction,
                ..
            }
        ));
        assert!(matches!(
            route("/api/v1/vps/abc", &Method::PUT),
            Routed::MethodNotAllowed(VPS_ONE)
        ));
        assert!(matches!(
            route("/api/v1/vps//actions", &get),
            Routed::NotFound
        ));
        assert!(matches!(route("/nope", &get), Routed::NotFound));
        assert_eq!(route("/api/v1/vps/x", &get).id(), Some("x"));
    }
}
