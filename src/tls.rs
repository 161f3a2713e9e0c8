//! The process-wide TLS crypto provider. vpswatch uses rustls with *ring* everywhere (the
//! provider clients, SMTP, the web listener); rustls needs it installed once before the
//! first TLS configuration is built, by whichever part gets there first.

/// Installs the process-wide TLS provider (ring) once; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
