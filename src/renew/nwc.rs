//! The NIP-47 (Nostr Wallet Connect) client that pays renewal invoices, on the `nwc`
//! crate. The connection URI carries the wallet's spending secret: it is held in a
//! [`Secret`], never printed, and no error produced here repeats it (errors name the
//! NIP-47 error code, "no answer" or the relay failure, nothing from the URI).

use std::time::Duration;

use nwc::prelude::{NostrWalletConnectOptions, NostrWalletConnectURI, PayInvoiceRequest, NWC};

use vpswatch_model::secret::Secret;

/// Why a wallet call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    /// The wallet answered with an error: it did not pay (NIP-47 error code).
    #[error("wallet refused: {code}: {message}")]
    Refused { code: String, message: String },
    /// No answer within the timeout: the payment may or may not have been made.
    #[error("wallet did not answer within {0:?}")]
    NoAnswer(Duration),
    /// Relay or protocol trouble; the request may or may not have reached the wallet.
    #[error("wallet connection failed: {0}")]
    Transport(String),
}

impl WalletError {
    /// True when the wallet certainly did not pay.
    pub fn certainly_unpaid(&self) -> bool {
        matches!(self, WalletError::Refused { .. })
    }
}

/// A connected-on-demand NWC wallet.
pub struct NwcWallet {
    nwc: NWC,
    timeout: Duration,
}

impl std::fmt::Debug for NwcWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NwcWallet([redacted])")
    }
}

/// Checks that `uri` is a NWC connection URI without echoing it.
pub fn parse_uri(uri: &Secret<String>) -> Result<NostrWalletConnectURI, String> {
    NostrWalletConnectURI::parse(uri.expose().trim()).map_err(|_| {
        "not a Nostr Wallet Connect URI (expected nostr+walletconnect://<wallet pubkey>?relay=…&secret=…)"
            .to_string()
    })
}

impl NwcWallet {
    pub fn new(uri: &Secret<String>, timeout: Duration) -> Result<NwcWallet, String> {
        let parsed = parse_uri(uri)?;
        let nwc = NWC::with_opts(parsed, NostrWalletConnectOptions::new().timeout(timeout));
        Ok(NwcWallet { nwc, timeout })
    }

    /// Pays a BOLT11 invoice; returns the preimage (hex).
    pub async fn pay(&self, bolt11: &str) -> Result<String, WalletError> {
        let req = PayInvoiceRequest::new(bolt11);
        let call = self.nwc.pay_invoice(req);
        // A hard cap beside the crate's own timeout: relays can stall the connection.
        match tokio::time::timeout(self.timeout + Duration::from_secs(2), call).await {
            Err(_) => Err(WalletError::NoAnswer(self.timeout)),
            Ok(Ok(r)) => Ok(r.preimage),
            Ok(Err(e)) => Err(classify(e, self.timeout)),
        }
    }

    /// The wallet's balance in millisatoshis.
    pub async fn balance_msat(&self) -> Result<u64, WalletError> {
        match tokio::time::timeout(
            self.timeout + Duration::from_secs(2),
            self.nwc.get_balance(),
        )
        .await
        {
            Err(_) => Err(WalletError::NoAnswer(self.timeout)),
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(classify(e, self.timeout)),
        }
    }

    pub async fn shutdown(self) {
        self.nwc.shutdown().await;
    }
}

fn classify(e: nwc::Error, timeout: Duration) -> WalletError {
    match e {
        nwc::Error::Timeout | nwc::Error::PrematureExit => WalletError::NoAnswer(timeout),
        nwc::Error::NIP47(nostr::nips::nip47::Error::ErrorCode(err)) => WalletError::Refused {
            code: serde_json::to_value(err.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "OTHER".into()),
            message: err.message.chars().take(200).collect(),
        },
        other => WalletError::Transport(other.to_string().chars().take(200).collect()),
    }
}
