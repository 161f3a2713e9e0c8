//! The simulator's Lightning side: a node key that signs real BOLT11 invoices (amount in
//! millisats, 600 s expiry, as the real server mints them), and the records of the
//! server-side auto-renewal and of settlement that the world keeps.

use std::time::Duration;

use bitcoin_hashes::{sha256, Hash};
use chrono::{DateTime, Utc};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use secp256k1::{Message, Secp256k1, SecretKey};
use serde::Serialize;

/// Lifetime of a Lightning invoice (the real server: created + 600 s).
pub const INVOICE_EXPIRY: Duration = Duration::from_secs(600);

/// The simulator's Lightning node: the key that signs its invoices.
pub struct LightningNode {
    key: SecretKey,
}

impl LightningNode {
    pub fn generate() -> Self {
        loop {
            let bytes: [u8; 32] = rand::random();
            if let Ok(key) = SecretKey::from_slice(&bytes) {
                return Self { key };
            }
        }
    }

    /// A signed BOLT11 invoice; returns (payment hash hex, preimage hex, invoice text).
    pub fn mint(
        &self,
        amount_msat: u64,
        created: DateTime<Utc>,
        description: &str,
    ) -> Result<(String, String, String), MintError> {
        let preimage: [u8; 32] = rand::random();
        let hash = sha256::Hash::hash(&preimage);
        let secs = u64::try_from(created.timestamp()).map_err(|_| MintError::BeforeEpoch)?;
        let secp = Secp256k1::new();
        let invoice = InvoiceBuilder::new(Currency::Bitcoin)
            .description(description.to_string())
            .payment_hash(hash)
            .payment_secret(PaymentSecret(rand::random()))
            .duration_since_epoch(Duration::from_secs(secs))
            .min_final_cltv_expiry_delta(144)
            .amount_milli_satoshis(amount_msat)
            .expiry_time(INVOICE_EXPIRY)
            .build_signed(|m: &Message| secp.sign_ecdsa_recoverable(m, &self.key))
            .map_err(|e| MintError::Invoice(e.to_string()))?;
        Ok((
            hex::encode(hash.to_byte_array()),
            hex::encode(preimage),
            invoice.to_string(),
        ))
    }
}

/// Why no invoice could be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the invoice time is before 1970")]
    BeforeEpoch,
    #[error("the invoice could not be built: {0}")]
    Invoice(String),
}

/// What the server-side auto-renewal did (for tests and the demo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoRenewOutcome {
    /// A new invoice, paid from the saved wallet.
    Paid,
    /// A new invoice; the saved wallet failed to pay it.
    Failed,
    /// An unpaid invoice existed and was handed back: nothing was paid (the trap).
    ReusedUnpaid,
    /// No enabled saved payment method.
    NoMethod,
}

/// One firing of the server-side auto-renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoRenewAttempt {
    pub vm_id: u64,
    pub at: DateTime<Utc>,
    /// The `expires` it tried to extend.
    pub expires: DateTime<Utc>,
    pub outcome: AutoRenewOutcome,
}

/// Why an invoice could not be settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleError {
    UnknownInvoice,
    AlreadyPaid,
    Expired,
}

impl std::fmt::Display for SettleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SettleError::UnknownInvoice => "unknown invoice",
            SettleError::AlreadyPaid => "invoice already paid",
            SettleError::Expired => "invoice expired",
        })
    }
}
