//! One SMTP session with the configured server: connect (TLS or STARTTLS as configured,
//! never silently falling back to plain text), log in, send raw messages, quit.
//!
//! It drives lettre's connection type step by step instead of its pooled transport so a
//! failure is known by the step it happened in: "connection refused", "certificate not
//! trusted", "authentication failed" and "server rejected this message" call for different
//! fixes, and only the last one is about the message rather than the server. Every step
//! has its own timeout. The password only ever goes into the AUTH command.

use std::fmt;
use std::time::Duration;

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;

use super::settings::{EmailSettings, Security};

/// The step a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Starttls,
    Auth,
    Send,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connecting",
            Stage::Starttls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Send => "sending",
        }
    }
}

/// Why a session or a send failed, precise enough to act on; never holds the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpFailure {
    ConnectionRefused {
        server: String,
    },
    Timeout {
        server: String,
        stage: Stage,
        after: Duration,
    },
    /// The server's certificate was not accepted.
    Certificate {
        server: String,
        detail: String,
    },
    /// Any other TLS failure (handshake, protocol).
    Tls {
        server: String,
        detail: String,
    },
    NoStartTls {
        server: String,
    },
    AuthFailed {
        server: String,
        reply: String,
    },
    AuthUnsupported {
        server: String,
        detail: String,
    },
    /// The server answered a command about this message with an error.
    Rejected {
        reply: String,
        permanent: bool,
    },
    /// The server refused the envelope sender (MAIL FROM): the same for every message, so
    /// a problem of the configuration or the account, not of one message.
    SenderRejected {
        server: String,
        reply: String,
    },
    /// The connection broke or could not be made (DNS, reset, unreadable reply).
    Network {
        server: String,
        stage: Stage,
        detail: String,
    },
    /// A stored message that cannot be sent as it is (bad envelope).
    BadMessage {
        detail: String,
    },
}

impl SmtpFailure {
    /// True when the server, not the message, is the problem: stop this round and retry
    /// the whole outbox later.
    pub fn is_server_problem(&self) -> bool {
        !matches!(
            self,
            SmtpFailure::Rejected { .. } | SmtpFailure::BadMessage { .. }
        )
    }

    /// True when retrying the same message cannot help: a 5xx answer about it, or a
    /// stored message that cannot be sent as it is.
    pub fn is_permanent(&self) -> bool {
        match self {
            SmtpFailure::Rejected { permanent, .. } => *permanent,
            SmtpFailure::BadMessage { .. } => true,
            _ => false,
        }
    }

    /// A short, stable word for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SmtpFailure::ConnectionRefused { .. } => "connection_refused",
            SmtpFailure::Timeout { .. } => "timeout",
            SmtpFailure::Certificate { .. } => "tls_certificate",
            SmtpFailure::Tls { .. } => "tls",
            SmtpFailure::NoStartTls { .. } => "no_starttls",
            SmtpFailure::AuthFailed { .. } => "auth_failed",
            SmtpFailure::AuthUnsupported { .. } => "auth_unsupported",
            SmtpFailure::Rejected { .. } => "rejected",
            SmtpFailure::SenderRejected { .. } => "sender_rejected",
            SmtpFailure::Network { .. } => "network",
            SmtpFailure::BadMessage { .. } => "bad_message",
        }
    }
}

impl fmt::Display for SmtpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmtpFailure::ConnectionRefused { server } => write!(
                f,
                "connection refused by {server}: no SMTP server listens there (check \
                 email.smtp_host and email.smtp_port)"
            ),
            SmtpFailure::Timeout {
                server,
                stage,
                after,
            } => write!(
                f,
                "timeout while {} ({}) with {server}: the server did not answer in time \
                 (firewall, wrong port, or a slow server; see email.timeout)",
                stage.as_str(),
                humantime::format_duration(*after)
            ),
            SmtpFailure::Certificate { server, detail } => write!(
                f,
                "TLS failed with {server}: the server's certificate is not trusted ({detail}); \
                 for a private CA or a self-signed certificate set email.ca_file"
            ),
            SmtpFailure::Tls { server, detail } => {
                write!(f, "TLS failed with {server}: {detail}")
            }
            SmtpFailure::NoStartTls { server } => write!(
                f,
                "{server} does not offer STARTTLS: use security = \"tls\" if it expects TLS \
                 from the start (usually port 465)"
            ),
            SmtpFailure::AuthFailed { server, reply } => write!(
                f,
                "authentication failed at {server}: the server answered {reply} (check \
                 email.username and the password file or variable)"
            ),
            SmtpFailure::AuthUnsupported { server, detail } => write!(
                f,
                "cannot log in at {server}: {detail} (vpswatch supports AUTH PLAIN and LOGIN, \
                 and many servers offer AUTH only after TLS)"
            ),
            SmtpFailure::Rejected { reply, permanent } => write!(
                f,
                "the server rejected the message{}: {reply}",
                if *permanent { "" } else { " for now" }
            ),
            SmtpFailure::SenderRejected { server, reply } => write!(
                f,
                "{server} refused the sender address (MAIL FROM): {reply} (check email.from, \
                 and email.username if the server only relays for logged-in users)"
            ),
            SmtpFailure::Network {
                server,
                stage,
                detail,
            } => write!(
                f,
                "network error while {} with {server}: {detail}",
                stage.as_str()
            ),
            SmtpFailure::BadMessage { detail } => write!(f, "message cannot be sent: {detail}"),
        }
    }
}

impl std::error::Error for SmtpFailure {}

/// The server's positive answer, e.g. `250 2.0.0 Ok: queued as 1234`.
pub fn describe_response(r: &Response) -> String {
    let text: Vec<&str> = r.message().collect();
    format!("{} {}", r.code(), text.join(" "))
        .trim()
        .to_string()
}

/// Maps a lettre error from `stage` to a precise failure.
fn classify(
    settings: &EmailSettings,
    stage: Stage,
    e: &lettre::transport::smtp::Error,
) -> SmtpFailure {
    let server = settings.server();
    let scrub = |s: String| match &settings.auth {
        Some(a) if !a.password.expose().is_empty() => {
            s.replace(a.password.expose().as_str(), "[redacted]")
        }
        _ => s,
    };
    if let Some(code) = e.status() {
        let reply = scrub(e.to_string());
        let reply = reply
            .split_once(": ")
            .map(|(_, text)| format!("{code} {text}"))
            .unwrap_or_else(|| code.to_string());
        return match stage {
            Stage::Auth => SmtpFailure::AuthFailed { server, reply },
            Stage::Send => SmtpFailure::Rejected {
                reply,
                permanent: e.is_permanent(),
            },
            _ => SmtpFailure::Network {
                server,
                stage,
                detail: format!("unexpected reply {reply}"),
            },
        };
    }
    // Walk the causes: an io::Error tells refused/timeout; a rustls error inside it tells
    // which TLS check failed.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls_failure(server, tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_failure(server, tls);
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return SmtpFailure::ConnectionRefused { server }
                }
                std::io::ErrorKind::TimedOut => {
                    return SmtpFailure::Timeout {
                        server,
                        stage,
                        after: settings.timeout,
                    }
                }
                _ => {}
            }
        }
        source = err.source();
    }
    let detail = scrub(e.to_string());
    if e.is_tls() {
        return SmtpFailure::Tls { server, detail };
    }
    if stage == Stage::Auth {
        return SmtpFailure::AuthUnsupported { server, detail };
    }
    SmtpFailure::Network {
        server,
        stage,
        detail,
    }
}

fn tls_failure(server: String, e: &rustls::Error) -> SmtpFailure {
    match e {
        rustls::Error::InvalidCertificate(c) => SmtpFailure::Certificate {
            server,
            detail: match c {
                rustls::CertificateError::UnknownIssuer => {
                    "issued by an unknown certificate authority".to_string()
                }
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "not valid for this host name (email.smtp_host must match the certificate)"
                        .to_string()
                }
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => "expired".to_string(),
                other => format!("{other:?}"),
            },
        },
        other => SmtpFailure::Tls {
            server,
            detail: other.to_string(),
        },
    }
}

fn tls_parameters(settings: &EmailSettings) -> Result<TlsParameters, SmtpFailure> {
    let server = settings.server();
    let mut b = TlsParameters::builder(
        settings
            .smtp_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    );
    if let Some(pem) = &settings.ca_pem {
        let cert = Certificate::from_pem(pem).map_err(|e| SmtpFailure::Tls {
            server: server.clone(),
            detail: format!("email.ca_file: {e}"),
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls().map_err(|e| SmtpFailure::Tls {
        server,
        detail: e.to_string(),
    })
}

async fn step<T>(
    settings: &EmailSettings,
    stage: Stage,
    fut: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, SmtpFailure> {
    match tokio::time::timeout(settings.timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(settings, stage, &e)),
        Err(_) => Err(SmtpFailure::Timeout {
            server: settings.server(),
            stage,
            after: settings.timeout,
        }),
    }
}

/// A recipient the server refused, with its answer (`550 5.1.1 …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub recipient: String,
    pub reply: String,
}

/// The server's verdict on one message for the recipients it accepted.
#[derive(Debug)]
pub enum Verdict {
    /// `250` to the content: every accepted recipient has the mail.
    Accepted(Response),
    /// No recipient was accepted, so no content was sent.
    NoRecipient,
    /// The server refused the message itself (`Rejected`, at `DATA` or after the content),
    /// or the stored message cannot be sent as it is (`BadMessage`).
    Refused(SmtpFailure),
}

/// What one SMTP transaction did with one message: the verdict, and the recipients the
/// server refused for good (5xx to `RCPT TO`) or for now (4xx).
#[derive(Debug)]
pub struct Delivery {
    pub verdict: Verdict,
    pub refused: Vec<Refusal>,
    pub deferred: Vec<Refusal>,
}

impl Delivery {
    fn refused(f: SmtpFailure) -> Delivery {
        Delivery {
            verdict: Verdict::Refused(f),
            refused: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// The server's `250` if it took the message for every recipient; otherwise why not.
    pub fn into_result(self) -> Result<Response, SmtpFailure> {
        let Delivery {
            verdict,
            refused,
            deferred,
        } = self;
        match verdict {
            Verdict::Refused(f) => Err(f),
            Verdict::Accepted(r) if refused.is_empty() && deferred.is_empty() => Ok(r),
            Verdict::Accepted(_) | Verdict::NoRecipient => {
                let text = refused
                    .iter()
                    .chain(&deferred)
                    .map(|r| format!("{}: {}", r.recipient, r.reply))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(SmtpFailure::Rejected {
                    reply: format!("recipient refused: {text}"),
                    permanent: deferred.is_empty(),
                })
            }
        }
    }
}

/// An open, ready (encrypted and logged-in as configured) SMTP connection.
pub struct Session<'a> {
    settings: &'a EmailSettings,
    conn: AsyncSmtpConnection,
    /// Why the connection cannot be used any more (network error, timeout, 421).
    broken: Option<SmtpFailure>,
}

impl<'a> Session<'a> {
    /// Connects, secures and logs in.
    pub async fn open(settings: &'a EmailSettings) -> Result<Session<'a>, SmtpFailure> {
        crate::tls::install_crypto_provider();
        let hello = ClientId::default();
        let host = settings
            .smtp_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let wrapper = match settings.security {
            Security::Tls => Some(tls_parameters(settings)?),
            _ => None,
        };
        let mut conn = step(
            settings,
            Stage::Connect,
            AsyncSmtpConnection::connect_tokio1(
                (host.as_str(), settings.smtp_port),
                Some(settings.timeout),
                &hello,
                wrapper,
                None,
            ),
        )
        .await?;
        if settings.security == Security::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(SmtpFailure::NoStartTls {
                    server: settings.server(),
                });
            }
            let params = tls_parameters(settings)?;
            // After a failed upgrade the connection is unusable (lettre leaves no stream
            // behind; QUIT on it would panic): just drop it.
            step(settings, Stage::Starttls, conn.starttls(params, &hello)).await?;
        }
        if let Some(auth) = &settings.auth {
            let creds = Credentials::new(auth.username.clone(), auth.password.expose().clone());
            if let Err(e) = step(
                settings,
                Stage::Auth,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await
            {
                conn.abort().await;
                return Err(e);
            }
        }
        Ok(Session {
            settings,
            conn,
            broken: None,
        })
    }

    /// Sends one stored message, command by command rather than with lettre's `send`
    /// (which gives up on the connection at the first negative answer): a recipient the
    /// server refuses is reported while the others still get the mail, and after a
    /// refused message `RSET` keeps the session usable for the next one.
    ///
    /// `Ok` carries the server's verdict on this message; `Err` means the server or the
    /// connection failed (network error, timeout, `421`, the sender refused), which says
    /// nothing about this message.
    pub async fn send(
        &mut self,
        env_from: &str,
        env_to: &[String],
        raw: &[u8],
    ) -> Result<Delivery, SmtpFailure> {
        let (envelope, params) = match envelope(env_from, env_to)
            .and_then(|e| self.mail_parameters(&e, raw).map(|p| (e, p)))
        {
            Ok(v) => v,
            Err(f) => return Ok(Delivery::refused(f)),
        };
        let r = step(
            self.settings,
            Stage::Send,
            self.conn
                .command(Mail::new(envelope.from().cloned(), params)),
        )
        .await;
        match self.checked(r) {
            Ok(_) => {}
            Err(SmtpFailure::Rejected { reply, .. }) => {
                self.reset().await;
                return Err(SmtpFailure::SenderRejected {
                    server: self.settings.server(),
                    reply,
                });
            }
            Err(f) => return Err(f),
        }
        let mut accepted = 0usize;
        let mut refused = Vec::new();
        let mut deferred = Vec::new();
        for to in envelope.to() {
            let r = step(
                self.settings,
                Stage::Send,
                self.conn.command(Rcpt::new(to.clone(), vec![])),
            )
            .await;
            match self.checked(r) {
                Ok(_) => accepted += 1,
                Err(SmtpFailure::Rejected { reply, permanent }) => {
                    let list = if permanent {
                        &mut refused
                    } else {
                        &mut deferred
                    };
                    list.push(Refusal {
                        recipient: to.to_string(),
                        reply,
                    });
                }
                Err(f) => return Err(f),
            }
        }
        let verdict = if accepted == 0 {
            Verdict::NoRecipient
        } else {
            match self.data(raw).await {
                Ok(r) => Verdict::Accepted(r),
                Err(f @ SmtpFailure::Rejected { .. }) => Verdict::Refused(f),
                Err(f) => return Err(f),
            }
        };
        if !matches!(verdict, Verdict::Accepted(_)) {
            self.reset().await;
        }
        Ok(Delivery {
            verdict,
            refused,
            deferred,
        })
    }

    /// `DATA` and the content; `Ok` is the final `250`.
    async fn data(&mut self, raw: &[u8]) -> Result<Response, SmtpFailure> {
        let r = step(self.settings, Stage::Send, self.conn.command(Data)).await;
        self.checked(r)?;
        let r = step(self.settings, Stage::Send, self.conn.message(raw)).await;
        self.checked(r)
    }

    /// `MAIL FROM` parameters the message needs, or why this server cannot take it.
    fn mail_parameters(
        &self,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<Vec<MailParameter>, SmtpFailure> {
        let info = self.conn.server_info();
        let mut params = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(SmtpFailure::BadMessage {
                    detail: "an address is not ASCII and the server does not offer SMTPUTF8".into(),
                });
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(SmtpFailure::BadMessage {
                    detail: "the message is not 7-bit ASCII and the server does not offer \
                             8BITMIME"
                        .into(),
                });
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(params)
    }

    /// Passes a negative answer about the message through; anything else (network error,
    /// timeout, an unreadable reply, `421` closing the channel) leaves the connection in
    /// an unknown state, so the session is marked broken.
    fn checked<T>(&mut self, r: Result<T, SmtpFailure>) -> Result<T, SmtpFailure> {
        match r {
            Err(SmtpFailure::Rejected { reply, .. }) if reply.starts_with("421") => {
                let f = SmtpFailure::Network {
                    server: self.settings.server(),
                    stage: Stage::Send,
                    detail: format!("the server is closing the connection: {reply}"),
                };
                self.broken = Some(f.clone());
                Err(f)
            }
            Err(f @ SmtpFailure::Rejected { .. }) => Err(f),
            Err(f) => {
                self.broken = Some(f.clone());
                Err(f)
            }
            ok => ok,
        }
    }

    /// Ends a transaction the server did not complete, so the next message starts clean.
    async fn reset(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let r = step(self.settings, Stage::Send, self.conn.command(Rset)).await;
        if let Err(f) = self.checked(r) {
            self.broken.get_or_insert(f);
        }
    }

    /// False once the connection is unusable.
    pub fn is_usable(&self) -> bool {
        self.broken.is_none() && !self.conn.has_broken()
    }

    /// Why the connection became unusable, if it did.
    pub fn broken(&self) -> Option<&SmtpFailure> {
        self.broken.as_ref()
    }

    /// Says goodbye (best effort: the mails are already accepted).
    pub async fn close(mut self) {
        if !self.is_usable() {
            return;
        }
        let _ = tokio::time::timeout(self.settings.timeout, self.conn.quit()).await;
    }
}

fn envelope(from: &str, to: &[String]) -> Result<Envelope, SmtpFailure> {
    let bad = |what: &str, e: &dyn fmt::Display| SmtpFailure::BadMessage {
        detail: format!("{what}: {e}"),
    };
    let from = if from.is_empty() {
        None
    } else {
        Some(
            from.parse::<Address>()
                .map_err(|e| bad("envelope sender", &e))?,
        )
    };
    let to = to
        .iter()
        .map(|a| {
            a.parse::<Address>()
                .map_err(|e| bad("envelope recipient", &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, to).map_err(|e| bad("envelope", &e))
}
