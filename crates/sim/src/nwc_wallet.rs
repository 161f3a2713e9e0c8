//! A NIP-47 (Nostr Wallet Connect) wallet service on a real local relay, so a renewal is
//! paid end to end: the client sends an encrypted `pay_invoice` request (kind 23194)
//! through the relay, this service decrypts it, decodes the BOLT11 invoice, pays the
//! simulator's invoice through [`LnvpsSimHandle::settle_invoice`] (which extends the VM)
//! and answers with the preimage (kind 23195). It keeps a balance (`get_balance`) and
//! fails on command: insufficient balance, a failed payment, no answer at all, or — the
//! nasty one — paying but never answering.
//!
//! The relay is `nostr-relay-builder`'s in-process relay on 127.0.0.1; the wallet's
//! connection URI (`nostr+walletconnect://…?secret=…`) is a secret and only handed out
//! by [`NwcWalletService::uri`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::SimError;
use lightning_invoice::Bolt11Invoice;
use nostr::nips::nip04;
use nostr::nips::nip47::{
    ErrorCode, GetBalanceResponse, Method, NIP47Error, NostrWalletConnectURI, PayInvoiceResponse,
    Request, RequestParams, Response, ResponseResult,
};
use nostr::{EventBuilder, Filter, JsonUtil, Keys, Kind, RelayUrl, Tag, Timestamp};
use nostr_relay_builder::prelude::{LocalRelay, RelayBuilder};
use nostr_sdk::{Client, RelayPoolNotification};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lnvps::LnvpsSimHandle;

/// How the wallet treats the next `pay_invoice` requests (`get_balance` always answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalletFailure {
    /// `pay_invoice` answers PAYMENT_FAILED without paying.
    PaymentFailed,
    /// The request goes unanswered (the client times out); nothing is paid.
    NoAnswer,
    /// `pay_invoice` pays, but the answer never comes (the client times out).
    PayWithoutAnswer,
}

/// One payment the wallet made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalletPayment {
    pub payment_hash: String,
    pub amount_msat: u64,
}

#[derive(Default)]
struct WalletState {
    balance_msat: u64,
    /// Failure applied to the next `count` requests (None = forever).
    failure: Option<(WalletFailure, Option<u32>)>,
    payments: Vec<WalletPayment>,
    pay_requests: u32,
    balance_requests: u32,
    seen: HashSet<nostr::EventId>,
}

impl WalletState {
    /// The failure that applies to this request, consuming one count.
    fn take_failure(&mut self) -> Option<WalletFailure> {
        let (f, count) = self.failure?;
        match count {
            None => Some(f),
            Some(0) => {
                self.failure = None;
                None
            }
            Some(n) => {
                self.failure = if n > 1 { Some((f, Some(n - 1))) } else { None };
                Some(f)
            }
        }
    }
}

/// A running wallet service (and the relay it listens on). Cheap to clone.
#[derive(Clone)]
pub struct NwcWalletService {
    inner: Arc<Inner>,
}

struct Inner {
    relay: LocalRelay,
    relay_url: RelayUrl,
    uri: NostrWalletConnectURI,
    state: Mutex<WalletState>,
    shutdown: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl NwcWalletService {
    /// Starts a relay on `relay_addr` (port 0 = any) and the wallet service on it, with
    /// `balance_msat` to spend on `sim`'s invoices.
    pub async fn start(
        sim: LnvpsSimHandle,
        relay_addr: SocketAddr,
        balance_msat: u64,
    ) -> Result<NwcWalletService, SimError> {
        let mut builder = RelayBuilder::default().addr(relay_addr.ip());
        if relay_addr.port() != 0 {
            builder = builder.port(relay_addr.port());
        }
        let relay = LocalRelay::new(builder);
        relay
            .run()
            .await
            .map_err(|e| SimError::other("starting the local Nostr relay", e))?;
        let relay_url = relay.url().await;
        let service = Keys::generate();
        let app = Keys::generate();
        let uri = NostrWalletConnectURI::new(
            service.public_key(),
            vec![relay_url.clone()],
            app.secret_key().clone(),
            None,
        );
        let client = Client::new(service.clone());
        client
            .add_relay(relay_url.clone())
            .await
            .map_err(|e| SimError::other("adding the local relay", e))?;
        client
            .try_connect_relay(relay_url.clone(), Duration::from_secs(10))
            .await
            .map_err(|e| SimError::other("connecting the wallet service to the local relay", e))?;
        let filter = Filter::new()
            .kind(Kind::WalletConnectRequest)
            .pubkey(service.public_key())
            .since(Timestamp::now());
        client
            .subscribe(filter, None)
            .await
            .map_err(|e| SimError::other("subscribing to wallet requests", e))?;
        let inner = Arc::new(Inner {
            relay,
            relay_url,
            uri,
            state: Mutex::new(WalletState {
                balance_msat,
                ..WalletState::default()
            }),
            shutdown: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(serve(
            client,
            service,
            app.public_key(),
            sim,
            Arc::clone(&inner),
        ));
        *lock(&inner.task) = Some(task);
        Ok(NwcWalletService { inner })
    }

    /// The connection URI for clients. A secret: never log it.
    pub fn uri(&self) -> String {
        self.inner.uri.to_string()
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn relay_url(&self) -> String {
        self.inner.relay_url.to_string()
    }

    pub fn balance_msat(&self) -> u64 {
        self.state().balance_msat
    }

    pub fn set_balance_msat(&self, msat: u64) {
        self.state().balance_msat = msat;
    }

    /// Applies `failure` to the next `count` `pay_invoice` requests (`None` = until
    /// cleared).
    pub fn fail(&self, failure: WalletFailure, count: Option<u32>) {
        self.state().failure = Some((failure, count));
    }

    pub fn clear_failure(&self) {
        self.state().failure = None;
    }

    /// Payments made, oldest first.
    pub fn payments(&self) -> Vec<WalletPayment> {
        self.state().payments.clone()
    }

    /// `pay_invoice` requests received (answered or not).
    pub fn pay_requests(&self) -> u32 {
        self.state().pay_requests
    }

    /// `get_balance` requests received.
    pub fn balance_requests(&self) -> u32 {
        self.state().balance_requests
    }

    /// Stops the service and the relay.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let task = lock(&self.inner.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.inner.relay.shutdown();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WalletState> {
        lock(&self.inner.state)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    client: Client,
    service: Keys,
    app: nostr::PublicKey,
    sim: LnvpsSimHandle,
    inner: Arc<Inner>,
) {
    let mut notifications = client.notifications();
    loop {
        let note = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            n = notifications.recv() => n,
        };
        let event = match note {
            Ok(RelayPoolNotification::Event { event, .. }) => event,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => break,
        };
        if event.kind != Kind::WalletConnectRequest || !lock(&inner.state).seen.insert(event.id) {
            continue;
        }
        let Some(response) = answer(&service, app, &event, &sim, &inner) else {
            continue;
        };
        let Ok(content) = nip04::encrypt(service.secret_key(), &event.pubkey, response.as_json())
        else {
            continue;
        };
        let built = EventBuilder::new(Kind::WalletConnectResponse, content)
            .tags([Tag::public_key(event.pubkey), Tag::event(event.id)])
            .sign_with_keys(&service);
        if let Ok(reply) = built {
            if let Err(e) = client.send_event(&reply).await {
                tracing::warn!(error = %e, "sim wallet: sending the answer failed");
            }
        }
    }
    client.shutdown().await;
}

fn error(method: Method, code: ErrorCode, message: &str) -> Response {
    Response {
        result_type: method,
        error: Some(NIP47Error {
            code,
            message: message.to_string(),
        }),
        result: None,
    }
}

/// The answer to one request; `None` = stay silent.
fn answer(
    service: &Keys,
    app: nostr::PublicKey,
    event: &nostr::Event,
    sim: &LnvpsSimHandle,
    inner: &Inner,
) -> Option<Response> {
    let plain = nip04::decrypt(service.secret_key(), &event.pubkey, &event.content).ok()?;
    let request = Request::from_json(plain).ok()?;
    if event.pubkey != app {
        return Some(error(
            request.method,
            ErrorCode::Unauthorized,
            "unknown connection",
        ));
    }
    let mut state = lock(&inner.state);
    match request.params {
        RequestParams::GetBalance => {
            state.balance_requests += 1;
            Some(Response {
                result_type: Method::GetBalance,
                error: None,
                result: Some(ResponseResult::GetBalance(GetBalanceResponse {
                    balance: state.balance_msat,
                })),
            })
        }
        RequestParams::PayInvoice(p) => {
            state.pay_requests += 1;
            let failure = state.take_failure();
            match failure {
                Some(WalletFailure::NoAnswer) => return None,
                Some(WalletFailure::PaymentFailed) => {
                    return Some(error(
                        Method::PayInvoice,
                        ErrorCode::PaymentFailed,
                        "no route",
                    ))
                }
                _ => {}
            }
            let pay = Method::PayInvoice;
            let Ok(invoice) = Bolt11Invoice::from_str(&p.invoice) else {
                return Some(error(pay, ErrorCode::Other, "invalid invoice"));
            };
            let Some(amount) = invoice.amount_milli_satoshis() else {
                return Some(error(pay, ErrorCode::Other, "amountless invoice"));
            };
            if amount > state.balance_msat {
                return Some(error(
                    pay,
                    ErrorCode::InsufficientBalance,
                    "insufficient balance",
                ));
            }
            let hash = hex::encode(AsRef::<[u8]>::as_ref(invoice.payment_hash()));
            match sim.settle_invoice(&hash) {
                Ok(preimage) => {
                    state.balance_msat -= amount;
                    state.payments.push(WalletPayment {
                        payment_hash: hash,
                        amount_msat: amount,
                    });
                    if failure == Some(WalletFailure::PayWithoutAnswer) {
                        return None;
                    }
                    Some(Response {
                        result_type: pay,
                        error: None,
                        result: Some(ResponseResult::PayInvoice(PayInvoiceResponse {
                            preimage,
                            fees_paid: Some(0),
                        })),
                    })
                }
                Err(e) => Some(error(pay, ErrorCode::PaymentFailed, &e.to_string())),
            }
        }
        _ => Some(error(
            request.method,
            ErrorCode::NotImplemented,
            "not implemented",
        )),
    }
}
