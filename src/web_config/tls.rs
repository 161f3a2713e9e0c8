//! `tls_server_config`: a rustls server configuration (ring provider, TLS 1.2/1.3) built
//! from PEM files, with optional client-certificate verification against a CA bundle.
//!
//! The provider is passed explicitly rather than taken from the process default, so
//! `check-config` builds exactly what the daemon would without installing anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

use vpswatch_model::problem::Problem;

/// `tls_server_config` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    /// Ignored, as by Go since 1.18 (the server always picks).
    prefer_server_cipher_suites: Option<bool>,
    // Toolkit keys that are refused with a reason (see `build`).
    cipher_suites: Option<serde::de::IgnoredAny>,
    curve_preferences: Option<serde::de::IgnoredAny>,
    client_allowed_sans: Option<serde::de::IgnoredAny>,
}

/// Which client certificates a TLS server asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (default).
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but if sent it must verify.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: no verified certificate, no connection.
    RequireAndVerify,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "NoClientCert",
            ClientAuth::VerifyIfGiven => "VerifyClientCertIfGiven",
            ClientAuth::RequireAndVerify => "RequireAndVerifyClientCert",
        }
    }
}

/// A built TLS server configuration.
#[derive(Clone)]
pub struct TlsSettings {
    pub server: Arc<ServerConfig>,
    pub client_auth: ClientAuth,
}

/// PEM text from a `*_file` key or its inline twin; exactly one of the two.
fn pem_source(
    file: Option<PathBuf>,
    inline: Option<String>,
    keys: (&str, &str),
    base: &Path,
    deps: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) -> Option<(Vec<u8>, String)> {
    let path = |k: &str| format!("tls_server_config.{k}");
    match (file, inline) {
        (Some(_), Some(_)) => {
            problems.push(Problem {
                path: path(keys.0),
                message: format!("set either {} or {}, not both", keys.0, keys.1),
            });
            None
        }
        (None, None) => None,
        (None, Some(text)) => Some((text.into_bytes(), format!("inline {}", keys.1))),
        (Some(f), None) => {
            let full = super::resolve(base, &f);
            deps.push(full.clone());
            match super::read_limited(&full) {
                Ok(bytes) => Some((bytes, full.display().to_string())),
                Err(e) => {
                    problems.push(Problem {
                        path: path(keys.0),
                        message: format!("cannot read {}: {e}", full.display()),
                    });
                    None
                }
            }
        }
    }
}

fn version(
    raw: Option<&str>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'static rustls::SupportedProtocolVersion> {
    match raw.map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        None => None,
        Some("TLS12") => Some(&rustls::version::TLS12),
        Some("TLS13") => Some(&rustls::version::TLS13),
        Some("TLS10" | "TLS11") => {
            problems.push(Problem {
                path: format!("tls_server_config.{key}"),
                message: "TLS 1.0 and 1.1 are not supported (rustls offers TLS12 and TLS13)".into(),
            });
            None
        }
        Some(other) => {
            problems.push(Problem {
                path: format!("tls_server_config.{key}"),
                message: format!("{other:?} is not a TLS version (TLS12 or TLS13)"),
            });
            None
        }
    }
}

/// Builds the server configuration, or records why not.
pub(super) fn build(
    raw: RawTls,
    http2: bool,
    base: &Path,
    deps: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) -> Option<TlsSettings> {
    let before = problems.len();
    let p = |k: &str| format!("tls_server_config.{k}");
    for (key, set, why) in [
        (
            "cipher_suites",
            raw.cipher_suites.is_some(),
            "not supported: rustls offers only modern AEAD suites and picks among them",
        ),
        (
            "curve_preferences",
            raw.curve_preferences.is_some(),
            "not supported: rustls' key exchange groups (X25519, P-256, P-384) are used",
        ),
        (
            "client_allowed_sans",
            raw.client_allowed_sans.is_some(),
            "not supported: any certificate that verifies against client_ca_file is accepted",
        ),
    ] {
        if set {
            problems.push(Problem {
                path: p(key),
                message: why.into(),
            });
        }
    }
    let _ = raw.prefer_server_cipher_suites;

    let cert = pem_source(
        raw.cert_file,
        raw.cert,
        ("cert_file", "cert"),
        base,
        deps,
        problems,
    );
    let key = pem_source(
        raw.key_file,
        raw.key,
        ("key_file", "key"),
        base,
        deps,
        problems,
    );
    let ca = pem_source(
        raw.client_ca_file,
        raw.client_ca,
        ("client_ca_file", "client_ca"),
        base,
        deps,
        problems,
    );

    let client_auth = match raw.client_auth_type.as_deref().map(str::trim) {
        // As in the toolkit: a CA bundle without a type means "require and verify".
        None | Some("") if ca.is_some() => ClientAuth::RequireAndVerify,
        None | Some("") | Some("NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
        Some(t @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            problems.push(Problem {
                path: p("client_auth_type"),
                message: format!(
                    "{t} (a client certificate that is never verified) is not supported; \
                     use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
                ),
            });
            ClientAuth::None
        }
        Some(other) => {
            problems.push(Problem {
                path: p("client_auth_type"),
                message: format!(
                    "{other:?} is not one of NoClientCert, VerifyClientCertIfGiven, \
                     RequireAndVerifyClientCert"
                ),
            });
            ClientAuth::None
        }
    };
    if client_auth != ClientAuth::None && ca.is_none() && problems.len() == before {
        problems.push(Problem {
            path: p("client_ca_file"),
            message: format!(
                "missing: client_auth_type {} needs the CA that signs client certificates",
                client_auth.as_str()
            ),
        });
    }
    if client_auth == ClientAuth::None && ca.is_some() {
        problems.push(Problem {
            path: p("client_ca_file"),
            message: "has no effect with client_auth_type NoClientCert".into(),
        });
    }

    let min = version(raw.min_version.as_deref(), "min_version", problems);
    let max = version(raw.max_version.as_deref(), "max_version", problems);
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    // Toolkit default: at least TLS 1.2; TLS 1.3 is the only other choice.
    let min_is_13 = min.is_some_and(|v| v.version == rustls::ProtocolVersion::TLSv1_3);
    let max_is_12 = max.is_some_and(|v| v.version == rustls::ProtocolVersion::TLSv1_2);
    if !min_is_13 {
        versions.push(&rustls::version::TLS12);
    }
    if !max_is_12 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        problems.push(Problem {
            path: p("max_version"),
            message: "is lower than min_version".into(),
        });
    }

    let certs = match &cert {
        None => {
            problems.push(Problem {
                path: p("cert_file"),
                message: "missing: TLS needs a certificate (cert_file) and its key (key_file)"
                    .into(),
            });
            None
        }
        Some((bytes, source)) => {
            match CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>() {
                Ok(c) if !c.is_empty() => Some(c),
                Ok(_) => {
                    problems.push(Problem {
                        path: p("cert_file"),
                        message: format!("{source}: no PEM certificate found"),
                    });
                    None
                }
                Err(e) => {
                    problems.push(Problem {
                        path: p("cert_file"),
                        message: format!("{source}: not a PEM certificate: {e}"),
                    });
                    None
                }
            }
        }
    };
    // The key's text is a secret: errors name its source, never its content.
    let private_key = match &key {
        None => {
            problems.push(Problem {
                path: p("key_file"),
                message: "missing: TLS needs the certificate's private key (key_file)".into(),
            });
            None
        }
        Some((bytes, source)) => match PrivateKeyDer::from_pem_slice(bytes) {
            Ok(k) => Some(k),
            Err(_) => {
                problems.push(Problem {
                    path: p("key_file"),
                    message: format!(
                        "{source}: no PEM private key found (PKCS#8, PKCS#1 or SEC1 expected)"
                    ),
                });
                None
            }
        },
    };
    let roots = match &ca {
        None => None,
        Some((bytes, source)) => {
            let mut store = RootCertStore::empty();
            let mut bad = false;
            for c in CertificateDer::pem_slice_iter(bytes) {
                match c.map_err(|e| e.to_string()).and_then(|c| {
                    store
                        .add(c)
                        .map_err(|e| format!("not a usable CA certificate: {e}"))
                }) {
                    Ok(()) => {}
                    Err(e) => {
                        bad = true;
                        problems.push(Problem {
                            path: p("client_ca_file"),
                            message: format!("{source}: {e}"),
                        });
                        break;
                    }
                }
            }
            if !bad && store.is_empty() {
                problems.push(Problem {
                    path: p("client_ca_file"),
                    message: format!("{source}: no PEM certificate found"),
                });
            }
            Some(store)
        }
    };
    if problems.len() > before {
        return None;
    }
    let (certs, private_key) = (certs?, private_key?);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
    {
        Ok(b) => b,
        Err(e) => {
            problems.push(Problem {
                path: p("min_version"),
                message: format!("cannot use these TLS versions: {e}"),
            });
            return None;
        }
    };
    let builder = match (client_auth, roots) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(roots)) => {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if mode == ClientAuth::VerifyIfGiven {
                v.allow_unauthenticated()
            } else {
                v
            };
            match v.build() {
                Ok(verifier) => builder.with_client_cert_verifier(verifier),
                Err(e) => {
                    problems.push(Problem {
                        path: p("client_ca_file"),
                        message: format!("cannot verify clients with this CA: {e}"),
                    });
                    return None;
                }
            }
        }
    };
    match builder.with_single_cert(certs, private_key) {
        Ok(mut server) => {
            // ALPN: what the connection will speak is settled in the handshake.
            server.alpn_protocols = if http2 {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            Some(TlsSettings {
                server: Arc::new(server),
                client_auth,
            })
        }
        Err(e) => {
            problems.push(Problem {
                path: p("key_file"),
                message: format!("does not go with the certificate in cert_file: {e}"),
            });
            None
        }
    }
}
