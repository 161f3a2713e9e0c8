//! Renewal payments as the real server makes them: Lightning invoices (real BOLT11,
//! minted by [`super::lightning::LightningNode`]),
//! reuse of an unpaid, unexpired Renewal with the same method and time, the max-prepay
//! rejection, settlement (`expires = max(expires, now) + time`), `?method=nwc` paid from
//! the user's saved wallet, and the worker's server-side auto-renewal: one attempt per
//! expiry, in its lead window `min(24 h, interval/2)`, including the double-pay trap (an
//! unpaid invoice found at that moment is handed back and nothing is paid).
//!
//! Invoice minting can be made to fail ([`World::mint_failure`]) as on a server whose
//! Lightning node is missing or down: every renew that needs a new invoice answers the
//! sanitized 500, a pending invoice is still handed back.
//!
//! The server's saved wallet is not a Nostr wallet here: it pays or fails as
//! [`World::saved_wallet_fails`] says. The NIP-47 wallet service the client pays with
//! lives in `nwc_wallet` and settles invoices through [`World::settle`].

use chrono::{DateTime, Utc};
use http::StatusCode;

use super::http::{api_error, internal_error, Reply};
use super::lightning::{AutoRenewAttempt, AutoRenewOutcome, SettleError, INVOICE_EXPIRY};
use super::world::{interval_seconds, whole_seconds, MintFailure, SimPayment, SimVm, World};

/// Longest lead of the server-side auto-renewal.
const MAX_LEAD_SECS: u64 = 24 * 3600;

/// The payment methods whose money is BTC over Lightning.
fn is_lightning(method: Option<&str>) -> bool {
    !matches!(
        method,
        Some("revolut" | "stripe" | "paypal" | "saved" | "onchain")
    )
}

/// The server's seconds-added for `intervals` from `max(expires, now)`.
pub fn renewal_time(vm: &SimVm, intervals: u32, now: DateTime<Utc>) -> u64 {
    let base = vm.expires.map_or(now, |e| e.max(now));
    interval_seconds(base, &vm.template.cost).saturating_mul(u64::from(intervals))
}

/// The unpaid, unexpired Lightning Renewal with this `time` that the server would hand
/// back instead of minting a new invoice.
pub fn reusable(vm: &SimVm, time: u64, now: DateTime<Utc>) -> Option<&SimPayment> {
    vm.payments.iter().find(|p| {
        !p.is_paid
            && p.expires > now
            && p.payment_type == "Renewal"
            && p.payment_method == "lightning"
            && p.time == time
    })
}

impl World {
    /// `GET /vm/{id}/renew` (and `/subscriptions/{id}/renew`) for an owned, not deleted
    /// VM. `intervals` is already range-checked. For `nwc`, the saved wallet pays.
    pub fn renew(
        &mut self,
        vm_id: u64,
        method: Option<&str>,
        intervals: u32,
        now: DateTime<Utc>,
    ) -> Result<SimPayment, Reply> {
        let now = whole_seconds(now);
        let (payment, reused) = self.renewal_invoice(vm_id, method, intervals, now)?;
        if method == Some("nwc") && !payment.is_paid {
            if !self.has_saved_method(vm_id) {
                return Err(internal_error());
            }
            // The real server reuses a pending invoice and returns before paying it.
            if reused {
                return Ok(payment);
            }
            if self.saved_wallet_fails {
                return Err(internal_error());
            }
            self.settle(&payment.id, now)
                .map_err(|_| internal_error())?;
            return self
                .payment(&payment.id)
                .map(|(_, p)| p.clone())
                .ok_or_else(internal_error);
        }
        Ok(payment)
    }

    /// Finds the reusable invoice or mints a new one.
    fn renewal_invoice(
        &mut self,
        vm_id: u64,
        method: Option<&str>,
        intervals: u32,
        now: DateTime<Utc>,
    ) -> Result<(SimPayment, bool), Reply> {
        if !is_lightning(method) {
            // No card processor or on-chain wallet is configured on the simulator.
            return Err(internal_error());
        }
        let max_prepay = i64::from(self.settings.max_prepay_days) * 86_400;
        let vm = self.vm(vm_id).ok_or_else(internal_error)?;
        let time = renewal_time(vm, intervals, now);
        if let Some(p) = reusable(vm, time, now) {
            return Ok((p.clone(), true));
        }
        let base = vm.expires.map_or(now, |e| e.max(now));
        let until = base.timestamp().saturating_add(time as i64);
        if until > now.timestamp().saturating_add(max_prepay) {
            return Err(internal_error());
        }
        let total = vm.template.cost.amount.saturating_mul(u64::from(intervals));
        let currency = vm.template.cost.currency.clone();
        let amount = match currency.as_str() {
            "BTC" => total,
            fiat => {
                let rate = match fiat {
                    "EUR" => self.settings.btc_eur,
                    "USD" => self.settings.btc_usd,
                    _ => 0.0,
                };
                if rate <= 0.0 {
                    return Err(internal_error());
                }
                (total as f64 / 100.0 / rate * 1e11).round() as u64
            }
        };
        if self.mint_failure.as_mut().is_some_and(MintFailure::take) {
            // What the real server answers when its Lightning node cannot create the
            // invoice (captured in tests/fixtures/lnvps/get_subscription_renew_lightning.json).
            return Err(internal_error());
        }
        let (hash, preimage, bolt11) = self
            .lightning
            .mint(amount, now, &format!("VM renewal {vm_id}"))
            .map_err(|_| internal_error())?;
        let payment = SimPayment {
            id: hash,
            created: now,
            expires: now + chrono::Duration::seconds(INVOICE_EXPIRY.as_secs() as i64),
            amount,
            currency: "BTC".into(),
            payment_method: "lightning".into(),
            payment_type: "Renewal".into(),
            is_paid: false,
            paid_at: None,
            time,
            data: serde_json::json!({ "lightning": bolt11 }),
            preimage,
        };
        let vm = self.vm_mut(vm_id).ok_or_else(internal_error)?;
        vm.pending_payment = vm.expires.is_none();
        vm.payments.push(payment.clone());
        Ok((payment, false))
    }

    /// Whether the VM's owner has an enabled saved payment method.
    fn has_saved_method(&self, vm_id: u64) -> bool {
        self.vm(vm_id)
            .and_then(|vm| self.user(&vm.owner))
            .is_some_and(|u| u.payment_methods.iter().any(|m| m.enabled))
    }

    /// The payment with this id (hex payment hash), with its VM.
    pub fn payment(&self, id: &str) -> Option<(&SimVm, &SimPayment)> {
        let id = id.to_ascii_lowercase();
        self.all_vms()
            .find_map(|vm| vm.payments.iter().find(|p| p.id == id).map(|p| (vm, p)))
    }

    /// A Lightning payment of invoice `payment_hash` arrived: marks it paid and extends
    /// the VM (`expires = max(expires, now) + time`). Returns the preimage.
    pub fn settle(
        &mut self,
        payment_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<String, SettleError> {
        let now = whole_seconds(now);
        let id = payment_hash.to_ascii_lowercase();
        let vm_id = self
            .payment(&id)
            .map(|(vm, _)| vm.id)
            .ok_or(SettleError::UnknownInvoice)?;
        let vm = self.vm_mut(vm_id).ok_or(SettleError::UnknownInvoice)?;
        let p = vm
            .payments
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(SettleError::UnknownInvoice)?;
        if p.is_paid {
            return Err(SettleError::AlreadyPaid);
        }
        if p.expires <= now {
            return Err(SettleError::Expired);
        }
        p.is_paid = true;
        p.paid_at = Some(now);
        let time = p.time;
        let preimage = p.preimage.clone();
        let base = vm.expires.map_or(now, |e| e.max(now));
        vm.expires = Some(base + chrono::Duration::seconds(time as i64));
        vm.subscription_active = true;
        vm.pending_payment = false;
        self.record(vm_id, "payment_received", "owner", now);
        self.record(vm_id, "renewed", "system", now);
        Ok(preimage)
    }

    /// The worker's CheckSubscriptions pass over one VM: the server-side auto-renewal
    /// attempt (docs/providers.md).
    pub(super) fn auto_renew(&mut self, vm_id: u64, now: DateTime<Utc>) {
        let Some(vm) = self.vm(vm_id) else {
            return;
        };
        let Some(expires) = vm.expires else {
            return;
        };
        if vm.deleted || !vm.subscription_active || !vm.auto_renewal_enabled {
            return;
        }
        if vm.auto_renew_attempted == Some(expires) || expires <= now {
            return;
        }
        let lead = (interval_seconds(expires, &vm.template.cost) / 2).min(MAX_LEAD_SECS);
        if expires >= now + chrono::Duration::seconds(lead as i64) {
            return;
        }
        let has_method = self.has_saved_method(vm_id);
        let reused = reusable(vm, renewal_time(vm, 1, now), now).is_some();
        if let Some(vm) = self.vm_mut(vm_id) {
            vm.auto_renew_attempted = Some(expires);
        }
        let outcome = if !has_method {
            AutoRenewOutcome::NoMethod
        } else if reused {
            AutoRenewOutcome::ReusedUnpaid
        } else {
            match self.renewal_invoice(vm_id, None, 1, now) {
                Ok((p, _)) if !self.saved_wallet_fails && self.settle(&p.id, now).is_ok() => {
                    AutoRenewOutcome::Paid
                }
                _ => AutoRenewOutcome::Failed,
            }
        };
        self.auto_renew_log.push(AutoRenewAttempt {
            vm_id,
            at: whole_seconds(now),
            expires,
            outcome,
        });
    }
}

/// 400 for ids that are not hex (the real server's message).
pub fn check_payment_id(raw: &str) -> Result<String, Reply> {
    match hex::decode(raw) {
        Ok(_) => Ok(raw.to_ascii_lowercase()),
        Err(_) => Err(api_error(StatusCode::BAD_REQUEST, "Invalid payment id")),
    }
}
