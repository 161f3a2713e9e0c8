//! The LNVPS billing calls a renewal needs: quote, renew (mints or hands
//! back a Lightning invoice), payment lookup, and the subscription's payments. Each
//! request is NIP-98 signed afresh by the account's key and shares the account host's
//! rate budget with the poller.
//!
//! Renewals go through the subscription (`/subscriptions/{id}/renew`, its quote and its
//! payments), the server's current endpoints; the deprecated VM endpoints
//! (`/vm/{id}/renew`, `/payment/{id}`) are only for a VM whose subscription id is
//! unknown ([`RenewTarget::Vm`]). docs/providers.md lists both.
//!
//! Amounts are read tolerantly (a number, or `{currency, amount}` as in subscription
//! payments); the BOLT11 invoice is decoded by the caller and is the final word on what
//! is paid.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::Method;
use serde::Deserialize;

use crate::http::{decode_json, ApiClient, ApiRequest, Retry};
use crate::ProviderError;

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

/// `GET /vm/{id}/renew/quote`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Quote {
    #[serde(deserialize_with = "amount")]
    pub amount: u64,
    #[serde(default)]
    pub currency: String,
    /// Seconds the renewal adds.
    #[serde(default)]
    pub time: u64,
}

/// A VM or subscription payment (`/vm/{id}/renew`, `/payment/{id}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Payment {
    pub id: String,
    #[serde(deserialize_with = "amount")]
    pub amount: u64,
    #[serde(default)]
    pub currency: Option<String>,
    pub expires: Option<DateTime<Utc>>,
    #[serde(default)]
    pub is_paid: bool,
    #[serde(default)]
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub time: Option<u64>,
    #[serde(default)]
    pub payment_type: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Payment {
    /// The BOLT11 text in `data` (`lightning`, any case).
    pub fn bolt11(&self) -> Option<&str> {
        let obj = self.data.as_object()?;
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("lightning"))
            .and_then(|(_, v)| v.as_str())
    }

    /// A paid Renewal (subscription payments say `payment_type`; VM payments do not).
    pub fn is_paid_renewal(&self) -> bool {
        self.is_paid
            && self
                .payment_type
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case("renewal"))
    }
}

fn amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let n = match &v {
        serde_json::Value::Object(o) => o.get("amount").cloned().unwrap_or_default(),
        other => other.clone(),
    };
    n.as_u64()
        .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
        .ok_or_else(|| serde::de::Error::custom("amount is not a non-negative number"))
}

#[derive(Debug, Deserialize)]
struct Paginated<T> {
    data: Vec<T>,
}

/// What a renewal is bought for: the VM's subscription (current endpoints) or, when
/// the subscription id is unknown, the VM itself (deprecated endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewTarget<'a> {
    Subscription(&'a str),
    Vm(&'a str),
}

impl RenewTarget<'_> {
    /// Whether the deprecated VM endpoints are used.
    pub fn is_deprecated(self) -> bool {
        matches!(self, RenewTarget::Vm(_))
    }
}

/// One LNVPS account's billing client.
pub struct Billing {
    api: Arc<ApiClient>,
}

fn check_id(id: &str) -> Result<&str, ProviderError> {
    if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(ProviderError::NotSent {
            endpoint: "renewal".into(),
            reason: "id is not alphanumeric".into(),
        })
    }
}

impl Billing {
    pub fn new(api: Arc<ApiClient>) -> Billing {
        Billing { api }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: String,
        endpoint: &'static str,
        retry: Retry,
    ) -> Result<T, ProviderError> {
        let req = ApiRequest {
            method: Method::GET,
            path_and_query,
            endpoint,
            body: None,
            retry,
        };
        self.api
            .send_decoded(&req, |resp| {
                decode_json::<Envelope<T>>(resp.content_type.as_deref(), &resp.body).map(|e| e.data)
            })
            .await
    }

    pub async fn quote(
        &self,
        target: RenewTarget<'_>,
        intervals: u32,
    ) -> Result<Quote, ProviderError> {
        match target {
            RenewTarget::Subscription(sub) => {
                let sub = check_id(sub)?;
                self.get(
                    format!(
                        "/api/v1/subscriptions/{sub}/renew/quote?method=lightning&intervals={intervals}"
                    ),
                    "GET /api/v1/subscriptions/{id}/renew/quote",
                    Retry::Idempotent,
                )
                .await
            }
            RenewTarget::Vm(vm) => {
                let vm = check_id(vm)?;
                self.get(
                    format!("/api/v1/vm/{vm}/renew/quote?method=lightning&intervals={intervals}"),
                    "GET /api/v1/vm/{id}/renew/quote",
                    Retry::Idempotent,
                )
                .await
            }
        }
    }

    /// Mints (or is handed back) a Lightning invoice for `intervals`. Only retried when
    /// the request certainly did not reach the handler: each call that reaches it makes
    /// the server try to create an invoice.
    pub async fn renew(
        &self,
        target: RenewTarget<'_>,
        intervals: u32,
    ) -> Result<Payment, ProviderError> {
        match target {
            RenewTarget::Subscription(sub) => {
                let sub = check_id(sub)?;
                self.get(
                    format!(
                        "/api/v1/subscriptions/{sub}/renew?method=lightning&intervals={intervals}"
                    ),
                    "GET /api/v1/subscriptions/{id}/renew",
                    Retry::OnlyIfNotProcessed,
                )
                .await
            }
            RenewTarget::Vm(vm) => {
                let vm = check_id(vm)?;
                self.get(
                    format!("/api/v1/vm/{vm}/renew?method=lightning&intervals={intervals}"),
                    "GET /api/v1/vm/{id}/renew",
                    Retry::OnlyIfNotProcessed,
                )
                .await
            }
        }
    }

    /// The payment `id` as the server sees it now: from the subscription's payments, or
    /// `GET /payment/{id}` for a VM without a subscription id. `None` when the
    /// subscription does not list it (yet).
    pub async fn payment(
        &self,
        target: RenewTarget<'_>,
        id: &str,
    ) -> Result<Option<Payment>, ProviderError> {
        let id = check_id(id)?;
        match target {
            RenewTarget::Subscription(sub) => Ok(self
                .subscription_payments(sub)
                .await?
                .into_iter()
                .find(|p| p.id.eq_ignore_ascii_case(id))),
            RenewTarget::Vm(_) => self
                .get(
                    format!("/api/v1/payment/{id}"),
                    "GET /api/v1/payment/{id}",
                    Retry::Idempotent,
                )
                .await
                .map(Some),
        }
    }

    /// The subscription's newest payments (first page, newest first).
    pub async fn subscription_payments(
        &self,
        subscription: &str,
    ) -> Result<Vec<Payment>, ProviderError> {
        let sub = check_id(subscription)?;
        let req = ApiRequest {
            method: Method::GET,
            path_and_query: format!("/api/v1/subscriptions/{sub}/payments?limit=50&offset=0"),
            endpoint: "GET /api/v1/subscriptions/{id}/payments",
            body: None,
            retry: Retry::Idempotent,
        };
        self.api
            .send_decoded(&req, |resp| {
                decode_json::<Paginated<Payment>>(resp.content_type.as_deref(), &resp.body)
                    .map(|p| p.data)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscription payment as the real server renders it (docs/providers.md): amounts
    /// as `{currency, amount}`, `payment_type` capitalised, no `time`.
    #[test]
    fn subscription_payment_shape() {
        let text = r#"{"data":[{"id":"ab12","subscription_id":1,"created":"2026-11-23T06:00:00Z",
            "expires":"2026-11-23T06:10:00Z","amount":{"currency":"BTC","amount":500000},
            "payment_method":"lightning","payment_type":"Renewal","is_paid":true,
            "paid_at":"2026-11-23T06:01:00Z","tax":{"currency":"BTC","amount":0},
            "processing_fee":{"currency":"BTC","amount":0},"data":{"lightning":"lnbc1x"}}],
            "total":1,"limit":50,"offset":0}"#;
        let page: Paginated<Payment> = serde_json::from_str(text).expect("parses");
        let p = &page.data[0];
        assert_eq!(p.amount, 500_000);
        assert!(p.is_paid_renewal());
        assert_eq!(p.bolt11(), Some("lnbc1x"));
        assert_eq!(p.time, None);
    }

    #[test]
    fn renew_targets() {
        assert!(RenewTarget::Vm("1").is_deprecated());
        assert!(!RenewTarget::Subscription("1").is_deprecated());
    }
}
