//! `--web.config.file` end to end: a test CA (rcgen) signs the server's and the clients'
//! certificates; a real daemon serves with TLS, basic auth (a real `htpasswd -nBC 10`
//! hash) and security headers; mTLS is required and refused; the file is changed under
//! the running daemon (by polling and by SIGHUP) and a broken file keeps the last good
//! one; `check-config` lists every problem with its key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{owner_hex, wait_for, Exposition, LOOPBACK_ANY};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use vpswatch::daemon::Daemon;
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{LnvpsSim, LnvpsSimHandle, Scenario};

const T: Duration = Duration::from_secs(20);

/// `htpasswd -nbBC 10 prometheus 'correct horse battery staple'`, as printed.
const HTPASSWD_LINE: &str =
    "prometheus:$2y$10$FJW/mn.bjn/hkX8oCoTPn.p8n/B3MjUQPkiS2fFhwXgwZPBoSbH5G";
const PASSWORD: &str = "correct horse battery staple";

/// A CA, a server certificate for 127.0.0.1 and two client certificates: one from the
/// CA, one self-made (a "rogue" client).
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client: (String, String),
    rogue: (String, String),
}

fn ca() -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "vpswatch test CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("CA cert");
    (cert, key)
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &(rcgen::Certificate, KeyPair),
) -> (String, String) {
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &issuer.0, &issuer.1).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = ca();
    let server = leaf(
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &authority,
    );
    let client = leaf(
        &["prometheus"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &authority,
    );
    let rogue = leaf(&["intruder"], ExtendedKeyUsagePurpose::ClientAuth, &ca());
    let ca_pem = authority.0.pem();
    for (name, text) in [
        ("server.crt", &server.0),
        ("server.key", &server.1),
        ("ca.crt", &ca_pem),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    Pki {
        dir,
        ca_pem,
        client,
        rogue,
    }
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the web config (relative file names resolve against its directory).
    fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.path("web.yml");
        // Write-then-rename: the reloader never sees a half-written file.
        let tmp = self.path("web.yml.tmp");
        std::fs::write(&tmp, yaml).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        path
    }

    /// A client trusting the test CA, optionally presenting a certificate.
    fn client(&self, identity: Option<&(String, String)>) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.client_config(identity))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    /// The TLS side of [`Pki::client`].
    fn client_config(&self, identity: Option<&(String, String)>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert pem");
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .expect("key pem");
                builder.with_client_auth_cert(chain, key).expect("identity")
            }
        };
        config
    }
}

use rustls::pki_types::pem::PemObject;

/// A daemon polling an LNVPS simulator, serving with the web config file `web`.
struct Served {
    sim: LnvpsSimHandle,
    daemon: Daemon,
}

impl Served {
    async fn start(web: &Path, reload: Duration) -> Served {
        vpswatch::tls::install_crypto_provider();
        let keys = nostr::Keys::generate();
        let scenario = Scenario::load("demo", Some(&owner_hex(&keys))).expect("scenario");
        let sim = LnvpsSim::start(
            LOOPBACK_ANY.parse::<SocketAddr>().expect("addr"),
            scenario,
            Arc::new(SystemClock),
        )
        .await
        .expect("simulator");
        let secret = keys.secret_key().to_secret_hex();
        let text = crate::common::config_text(&sim.base_url(), "");
        let mut config = vpswatch::config::parse(&text, "test", &|n| {
            (n == "TEST_NSEC").then(|| secret.clone())
        })
        .expect("config");
        config.web.config_file = Some(web.to_path_buf());
        config.web.config_reload_interval = reload;
        let daemon = Daemon::start(config, Arc::new(SystemClock))
            .await
            .expect("daemon starts");
        Served { sim, daemon }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.daemon.addr)
    }

    async fn shutdown(self) {
        self.daemon.shutdown().await;
        self.sim.shutdown();
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Status of a GET with optional basic credentials; `None` when the request failed
/// (handshake refused, connection closed).
async fn status(
    c: &reqwest::Client,
    url: &str,
    creds: Option<(&str, &str)>,
) -> Option<reqwest::Response> {
    let mut req = c.get(url);
    if let Some((u, p)) = creds {
        req = req.header("authorization", basic(u, p));
    }
    req.send().await.ok()
}

fn tls_auth_yaml(extra: &str) -> String {
    let (user, hash) = HTPASSWD_LINE.split_once(':').expect("htpasswd line");
    format!(
        r#"tls_server_config:
  cert_file: server.crt
  key_file: server.key
  min_version: TLS12
basic_auth_users:
  {user}: {hash}
http_server_config:
  headers:
    Strict-Transport-Security: max-age=31536000
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
{extra}"#
    )
}

#[tokio::test]
async fn tls_with_basic_auth_and_headers() {
    let pki = pki();
    let web = pki.write_config(&tls_auth_yaml(""));
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let c = pki.client(None);
    let metrics = s.url("https", "/metrics");

    // Missing and wrong credentials: 401 with a challenge, the headers still applied.
    for creds in [
        None,
        Some(("prometheus", "wrong")),
        Some(("nobody", PASSWORD)),
    ] {
        let r = status(&c, &metrics, creds).await.expect("TLS answer");
        assert_eq!(r.status(), 401, "{creds:?}");
        let challenge = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000")
        );
    }
    // Every endpoint is protected; /-/healthy only when the file says so.
    for path in ["/-/healthy", "/-/ready", "/", "/api/v1/actions", "/nope"] {
        let r = status(&c, &s.url("https", path), None)
            .await
            .expect("answer");
        assert_eq!(r.status(), 401, "{path}");
    }

    // The right password, from a real htpasswd line: served, with the headers.
    let r = status(&c, &metrics, Some(("prometheus", PASSWORD)))
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    for (h, v) in [
        ("strict-transport-security", "max-age=31536000"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "deny"),
    ] {
        assert_eq!(
            r.headers().get(h).and_then(|v| v.to_str().ok()),
            Some(v),
            "{h}"
        );
    }
    let body = r.text().await.expect("body");
    assert!(body.contains("vpswatch_build_info"));
    assert!(Exposition::parse(&body).has("vpswatch_web_config_last_reload_successful", &[]));
    // Repeated scrapes with the same credentials keep working (cached verification).
    for _ in 0..5 {
        let r = status(&c, &metrics, Some(("prometheus", PASSWORD)))
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
    }

    // Plain HTTP to the TLS port gets no HTTP answer at all.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    if let Ok(r) = plain.get(s.url("http", "/-/healthy")).send().await {
        panic!("plain HTTP answered on the TLS port: {}", r.status());
    }
    // A client that does not trust the CA refuses the server.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(untrusting.get(metrics.clone()).send().await.is_err());
    s.shutdown().await;
}

#[tokio::test]
async fn healthy_is_exempt_only_when_opted_in() {
    let pki = pki();
    let web = pki.write_config(&tls_auth_yaml("healthy_without_auth: true\n"));
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let c = pki.client(None);
    let r = status(&c, &s.url("https", "/-/healthy"), None)
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    for path in ["/metrics", "/-/ready", "/", "/api/v1/actions"] {
        let r = status(&c, &s.url("https", path), None)
            .await
            .expect("answer");
        assert_eq!(r.status(), 401, "{path}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn client_certificates_required_and_verified() {
    let pki = pki();
    let web = pki.write_config(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let url = s.url("https", "/metrics");
    // No certificate, or one the CA did not sign: no HTTP answer.
    assert!(
        status(&pki.client(None), &url, None).await.is_none(),
        "served without a client certificate"
    );
    assert!(
        status(&pki.client(Some(&pki.rogue)), &url, None)
            .await
            .is_none(),
        "served a certificate from another CA"
    );
    let r = status(&pki.client(Some(&pki.client)), &url, None)
        .await
        .expect("the CA's client is served");
    assert_eq!(r.status(), 200);
    s.shutdown().await;

    // VerifyClientCertIfGiven: optional, but a bad certificate is still refused.
    let web = pki.write_config(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
    );
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let url = s.url("https", "/metrics");
    let r = status(&pki.client(None), &url, None).await.expect("served");
    assert_eq!(r.status(), 200);
    assert!(status(&pki.client(Some(&pki.rogue)), &url, None)
        .await
        .is_none());
    let r = status(&pki.client(Some(&pki.client)), &url, None)
        .await
        .expect("served");
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

fn reload_metric(body: &str) -> Option<f64> {
    Exposition::parse(body).get("vpswatch_web_config_last_reload_successful", &[])
}

fn auth_yaml(hash: &str) -> String {
    format!("basic_auth_users:\n  prometheus: '{hash}'\n")
}

/// A cost-4 htpasswd-style hash (fast; the format is what htpasswd writes).
fn quick_hash(password: &str) -> String {
    bcrypt::hash(password, 4)
        .expect("hash")
        .replacen("$2b$", "$2y$", 1)
}

#[tokio::test]
async fn live_reload_applies_changes_and_keeps_the_last_good_file() {
    let pki = pki();
    let web = pki.write_config(&auth_yaml(&quick_hash("old-password")));
    let s = Served::start(&web, Duration::from_millis(100)).await;
    let addr = s.daemon.addr;
    let c = reqwest::Client::new();
    let url = s.url("http", "/metrics");
    let code = |p: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            status(&c, &url, Some(("prometheus", p)))
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(code("old-password").await, Some(200));
    assert_eq!(code("new-password").await, Some(401));

    // A new password: works without a restart, on the same listener.
    pki.write_config(&auth_yaml(&quick_hash("new-password")));
    wait_for("the new password works", T, || async {
        code("new-password").await == Some(200)
    })
    .await;
    assert_eq!(code("old-password").await, Some(401));
    assert_eq!(s.daemon.addr, addr);

    // A broken file (unknown key, bad hash): the last good configuration stays, the
    // metric says so.
    pki.write_config("basic_auth_users:\n  prometheus: not-a-hash\nhttp_server_confg: {}\n");
    wait_for("the failed reload is visible", T, || async {
        let body = status(&c, &url, Some(("prometheus", "new-password")))
            .await
            .expect("served");
        reload_metric(&body.text().await.unwrap_or_default()) == Some(0.0)
    })
    .await;
    assert_eq!(code("new-password").await, Some(200));
    assert_eq!(code("old-password").await, Some(401));
    // A missing file too.
    std::fs::remove_file(&web).expect("remove");
    assert_eq!(code("new-password").await, Some(200));

    // Fixed again: reloaded, metric back to 1.
    pki.write_config(&auth_yaml(&quick_hash("third")));
    wait_for("the fixed file is applied", T, || async {
        code("third").await == Some(200)
    })
    .await;
    // The metric follows the swap (the exposition is re-rendered just after).
    wait_for("the reload metric is back to 1", T, || async {
        let body = status(&c, &url, Some(("prometheus", "third")))
            .await
            .expect("served")
            .text()
            .await
            .unwrap_or_default();
        reload_metric(&body) == Some(1.0)
            && Exposition::parse(&body)
                .get(
                    "vpswatch_web_config_last_reload_success_timestamp_seconds",
                    &[],
                )
                .is_some_and(|t| t > 0.0)
    })
    .await;
    // Turning TLS on applies to new connections of the same listener.
    pki.write_config(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{}",
        auth_yaml(&quick_hash("third"))
    ));
    let tls = pki.client(None);
    let https = s.url("https", "/metrics");
    wait_for("TLS is switched on", T, || async {
        status(&tls, &https, Some(("prometheus", "third")))
            .await
            .is_some_and(|r| r.status() == 200)
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_at_once() {
    let pki = pki();
    let web = pki.write_config(&auth_yaml(&quick_hash("before-hup")));
    // Polling every hour: only the signal can bring the change in.
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let c = reqwest::Client::new();
    let url = s.url("http", "/-/healthy");
    let ok = |p: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            status(&c, &url, Some(("prometheus", p)))
                .await
                .is_some_and(|r| r.status() == 200)
        }
    };
    assert!(ok("before-hup").await);
    // The reload metric appears once the daemon's SIGHUP handler is installed (before
    // that, SIGHUP would end this test process).
    let metrics = s.url("http", "/metrics");
    wait_for("the web config watcher runs", T, || async {
        let body = match status(&c, &metrics, Some(("prometheus", "before-hup"))).await {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        reload_metric(&body) == Some(1.0)
    })
    .await;
    pki.write_config(&auth_yaml(&quick_hash("after-hup")));
    let pid = std::process::id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    wait_for("SIGHUP applied the new password", T, || ok("after-hup")).await;
    assert!(!ok("before-hup").await);
    s.shutdown().await;
}

#[tokio::test]
async fn a_broken_file_stops_the_start() {
    let pki = pki();
    let web =
        pki.write_config("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n");
    let keys = nostr::Keys::generate();
    let secret = keys.secret_key().to_secret_hex();
    let text = crate::common::config_text("http://127.0.0.1:9", "");
    let mut config = vpswatch::config::parse(&text, "test", &|n| {
        (n == "TEST_NSEC").then(|| secret.clone())
    })
    .expect("config");
    config.web.config_file = Some(web.clone());
    let err = match Daemon::start(config, Arc::new(SystemClock)).await {
        Ok(_) => panic!("started with a broken web config"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tls_server_config.cert_file: cannot read")
            && err.contains("missing.crt")
            && err.contains(&web.display().to_string()),
        "{err}"
    );
}

fn vpswatch(args: &[&str]) -> (i32, String, String) {
    // The account's key comes from the environment.
    let nsec = nostr::Keys::generate().secret_key().to_secret_hex();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(args)
        .env("VPSWATCH_TEST_UNUSED", nsec)
        .output()
        .expect("run vpswatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_validates_the_web_config() {
    let pki = pki();
    let toml = pki.path("vpswatch.toml");
    std::fs::write(
        &toml,
        "[[accounts]]\nname = \"main\"\nprovider = \"lnvps\"\nnsec_env = \"VPSWATCH_TEST_UNUSED\"\n",
    )
    .expect("write");

    let web = pki.write_config(&tls_auth_yaml(""));
    let (code, out, err) = vpswatch(&[
        "check-config",
        &toml.display().to_string(),
        "--web.config.file",
        &web.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("web.yml: OK (TLS, client certificates: NoClientCert; basic auth for 1 user"),
        "{out}"
    );

    let bad = pki.write_config(
        r#"tls_server_config:
  cert_fil: server.crt
  key_file: server.key
  client_auth_type: RequestClientCert
  min_version: TLS10
basic_auth_users:
  alice: hunter2-plaintext
http_server_config:
  headers:
    Server: nginx
    X-Frame-Options: allow-from
"#,
    );
    let (code, out, err) = vpswatch(&[
        "check-config",
        &toml.display().to_string(),
        "--web.config.file",
        &bad.display().to_string(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    let file = bad.display().to_string();
    for want in [
        "tls_server_config.cert_fil: unknown key",
        "tls_server_config.client_auth_type: RequestClientCert",
        "tls_server_config.min_version: TLS 1.0 and 1.1 are not supported",
        "tls_server_config.cert_file: missing",
        "basic_auth_users.alice: is not a bcrypt hash",
        "http_server_config.headers.Server: this header cannot be configured",
        "http_server_config.headers.X-Frame-Options: \"allow-from\" must be",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{file}: {want}"))),
            "missing {want:?} in:\n{err}"
        );
    }
    assert!(
        !err.contains("hunter2-plaintext"),
        "a password echoed: {err}"
    );

    // `web.config_file` in the TOML is checked too, and [web] limits are validated.
    std::fs::write(
        &toml,
        format!(
            "[web]\nconfig_file = {:?}\nmax_header_bytes = 100\nidle_timeout = \"0s\"\n\
             [[accounts]]\nname = \"main\"\nprovider = \"lnvps\"\nnsec_env = \"VPSWATCH_TEST_UNUSED\"\n",
            bad.display().to_string()
        ),
    )
    .expect("write");
    let (code, _, err) = vpswatch(&["check-config", &toml.display().to_string()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("web.max_header_bytes: must be at least 8192"),
        "{err}"
    );
    assert!(
        err.contains("web.idle_timeout: must be greater than zero"),
        "{err}"
    );
    assert!(err.contains("basic_auth_users.alice"), "{err}");
}

#[tokio::test]
async fn a_tls_connection_without_a_request_is_closed_at_the_head_deadline_from_accept() {
    let pki = pki();
    let web =
        pki.write_config("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    // The default limits: a 10 s head deadline, a 2 min idle timeout.
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let head = vpswatch::web_config::limits::ServerLimits::default().header_read_timeout;
    let addr = s.daemon.addr;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(None)));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    // Handshake at once, or 8 s after connecting; then no request at all.
    let silent_after = |delay: Duration| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            use tokio::io::AsyncReadExt;
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let started = std::time::Instant::now();
            tokio::time::sleep(delay).await;
            let mut tls = connector.connect(name, tcp).await.expect("handshake");
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buf)).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "still open 60 s after the handshake ({delay:?} after connecting)"
            );
            started.elapsed()
        }
    };
    let (at_once, late) = tokio::join!(
        silent_after(Duration::ZERO),
        silent_after(Duration::from_secs(8))
    );
    for (what, after) in [("at once", at_once), ("after 8 s", late)] {
        assert!(
            after >= head - Duration::from_millis(500),
            "handshake {what}: closed early, {after:?} after connecting"
        );
        // From accept, the handshake included: not 10 s after a late handshake, and far
        // from the 2 min idle timeout.
        assert!(
            after < head + Duration::from_secs(5),
            "handshake {what}: closed {after:?} after connecting"
        );
    }
    s.shutdown().await;
}

/// The real binary serving `web` (reloaded every 100 ms), its log in a file.
struct Binary {
    _child: crate::common::daemon_process::KillOnDrop,
    port: u16,
    log: PathBuf,
}

impl Binary {
    fn start(pki: &Pki, web: &Path) -> Binary {
        // For the test's own clients.
        vpswatch::tls::install_crypto_provider();
        let port = crate::common::free_port();
        let toml = pki.path("vpswatch.toml");
        std::fs::write(
            &toml,
            format!(
                "poll_interval = \"1h\"\nstate_dir = {:?}\n[web]\nlisten_address = \"127.0.0.1:{port}\"\n\
                 config_file = {:?}\nconfig_reload_interval = \"100ms\"\n\
                 [[accounts]]\nname = \"main\"\nprovider = \"lnvps\"\nbase_url = \"http://127.0.0.1:9\"\n\
                 nsec_env = \"WEB_RELOAD_NSEC\"\n",
                pki.path("state").display().to_string(),
                web.display().to_string()
            ),
        )
        .expect("write");
        let log = pki.path("vpswatch.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vpswatch"))
            .args(["--log.level", "warn", "run", "--config"])
            .arg(&toml)
            .env(
                "WEB_RELOAD_NSEC",
                nostr::Keys::generate().secret_key().to_secret_hex(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start vpswatch");
        Binary {
            _child: crate::common::daemon_process::KillOnDrop(child),
            port,
            log,
        }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `vpswatch_web_config_last_reload_successful` as seen by `client` with `creds`.
    async fn reload_metric(&self, client: &reqwest::Client, creds: (&str, &str)) -> Option<f64> {
        let r = status(client, &self.url("https", "/metrics"), Some(creds)).await?;
        reload_metric(&r.text().await.ok()?)
    }
}

/// Plain HTTP gets no HTTP answer from a TLS port.
async fn plain_http_refused(url: &str) -> bool {
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    plain.get(url).send().await.is_err()
}

#[tokio::test]
async fn an_emptied_web_config_does_not_switch_tls_or_basic_auth_off() {
    let pki = pki();
    let web = pki.write_config(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{}",
        auth_yaml(&quick_hash("pw"))
    ));
    let d = Binary::start(&pki, &web);
    let c = pki.client(None);
    wait_for("the daemon serves TLS with basic auth", T, || async {
        d.reload_metric(&c, ("prometheus", "pw")).await == Some(1.0)
    })
    .await;

    // `: > web.yml`, as a non-atomic rewrite leaves the file for a moment.
    std::fs::File::create(&web).expect("truncate");
    wait_for("the reload of the empty file is refused", T, || async {
        d.reload_metric(&c, ("prometheus", "pw")).await == Some(0.0)
    })
    .await;
    let log = d.log();
    let file = web.display().to_string();
    for want in [
        format!("{file}: tls_server_config: missing: this would switch TLS off"),
        format!("{file}: basic_auth_users: missing or empty: this would switch basic auth off"),
    ] {
        assert!(log.contains(&want), "no {want:?} in the log:\n{log}");
    }
    assert!(
        plain_http_refused(&d.url("http", "/api/v1/actions")).await,
        "plain HTTP answered after the file was emptied"
    );
    for path in ["/api/v1/actions", "/metrics", "/-/healthy"] {
        let r = status(&c, &d.url("https", path), None)
            .await
            .expect("TLS answer");
        assert_eq!(r.status(), 401, "{path} without credentials");
    }

    // The file written in full again is applied: the refusal blocks nothing else.
    pki.write_config(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{}",
        auth_yaml(&quick_hash("pw2"))
    ));
    wait_for("the rewritten file is applied", T, || async {
        d.reload_metric(&c, ("prometheus", "pw2")).await == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_reload_cannot_drop_basic_auth_or_weaken_client_certificates() {
    let pki = pki();
    let mtls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";
    let web = pki.write_config(&format!("{mtls}{}", auth_yaml(&quick_hash("pw"))));
    let d = Binary::start(&pki, &web);
    let c = pki.client(Some(&pki.client));
    wait_for("the daemon serves mTLS with basic auth", T, || async {
        d.reload_metric(&c, ("prometheus", "pw")).await == Some(1.0)
    })
    .await;
    let file = web.display().to_string();

    // Only basic auth removed (TLS and client certificates unchanged): refused.
    pki.write_config(mtls);
    wait_for("dropping basic auth is refused", T, || async {
        d.reload_metric(&c, ("prometheus", "pw")).await == Some(0.0)
    })
    .await;
    let want = format!("{file}: basic_auth_users: missing or empty");
    assert!(d.log().contains(&want), "{}", d.log());
    assert!(!d.log().contains("tls_server_config"), "{}", d.log());
    let r = status(&c, &d.url("https", "/metrics"), None)
        .await
        .expect("answer");
    assert_eq!(r.status(), 401, "basic auth was dropped");

    // Client certificates from required to optional, basic auth kept: refused too.
    pki.write_config(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n{}",
        auth_yaml(&quick_hash("pw"))
    ));
    let want = format!(
        "{file}: tls_server_config.client_auth_type: VerifyClientCertIfGiven would weaken \
         the client certificate check from RequireAndVerifyClientCert"
    );
    wait_for("weakening client certificates is refused", T, || async {
        d.log().contains(&want)
    })
    .await;
    assert!(
        status(
            &pki.client(None),
            &d.url("https", "/-/healthy"),
            Some(("prometheus", "pw"))
        )
        .await
        .is_none(),
        "served a client without a certificate"
    );

    // Changing what is protected, keeping the protection, is applied.
    pki.write_config(&format!("{mtls}{}", auth_yaml(&quick_hash("pw2"))));
    wait_for("a new password is applied", T, || async {
        d.reload_metric(&c, ("prometheus", "pw2")).await == Some(1.0)
    })
    .await;
    assert_eq!(
        status(&c, &d.url("https", "/metrics"), Some(("prometheus", "pw")))
            .await
            .map(|r| r.status().as_u16()),
        Some(401)
    );
}

/// A client whose connections come from `ip` (any address of 127.0.0.0/8 is local).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_one_address_are_throttled_without_bcrypt() {
    use vpswatch::web_config::auth::{CHECK_BURST, CHECK_PERIOD};
    let pki = pki();
    let (user, hash) = HTPASSWD_LINE.split_once(':').expect("htpasswd line");
    // Two users with real cost-10 hashes (what htpasswd writes).
    let ops_hash = bcrypt::hash("ops-password", 10)
        .expect("hash")
        .replacen("$2b$", "$2y$", 1);
    let web = pki.write_config(&format!(
        "basic_auth_users:\n  {user}: '{hash}'\n  ops: '{ops_hash}'\n"
    ));
    let s = Served::start(&web, Duration::from_secs(3600)).await;
    let url = s.url("http", "/metrics");
    let auth = s.daemon.web_config.load().auth.clone().expect("basic auth");

    // The good client shares its address with the attacker, and is cached.
    let attacker = client_from("127.0.0.2");
    let r = status(&attacker, &url, Some((user, PASSWORD)))
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);

    // 200 clients sending wrong passwords from that address, each again as soon as it
    // has its answer.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let verifications_before = auth.verifications();
    let attack_started = std::time::Instant::now();
    let flood: Vec<_> = (0..200)
        .map(|i| {
            // One client, up to 200 connections at once.
            let (c, url, stop) = (attacker.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some(r) =
                        status(&c, &url, Some(("prometheus", &format!("guess{i}")))).await
                    else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let retry = r.headers().get("retry-after").is_some();
                    seen.push((r.status().as_u16(), retry));
                }
                seen
            })
        })
        .collect();
    wait_for("the flood is throttled", T, || async {
        auth.verifications() >= verifications_before + u64::from(CHECK_BURST)
    })
    .await;

    // Meanwhile: the cached client, from the attacker's own address, is served…
    let mut cached = Vec::new();
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let r = status(&attacker, &url, Some((user, PASSWORD)))
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "the cached client was refused");
        cached.push(t.elapsed());
    }
    // …and a client from another address gets its first, uncached, check.
    let t = std::time::Instant::now();
    let r = status(
        &client_from("127.0.0.3"),
        &url,
        Some(("ops", "ops-password")),
    )
    .await
    .expect("answer");
    assert_eq!(r.status(), 200, "another address was throttled");
    let uncached = t.elapsed();

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for task in flood {
        answers.extend(task.await.expect("attacker"));
    }
    let attack = attack_started.elapsed();
    let ran = auth.verifications() - verifications_before;
    let refused = answers.iter().filter(|(code, _)| *code == 401).count();
    let throttled = answers.iter().filter(|(code, _)| *code == 429).count();
    cached.sort();
    eprintln!(
        "{} wrong passwords in {attack:?}: {refused} checked (401), {throttled} throttled (429); \
         bcrypt ran {ran} times; cached p50 {:?} p99 {:?}; uncached from another address {uncached:?}",
        answers.len(),
        cached[cached.len() / 2],
        cached[cached.len() * 99 / 100],
    );
    assert_eq!(
        refused + throttled,
        answers.len(),
        "only 401 and 429 expected"
    );
    assert!(
        answers.iter().all(|(code, retry)| *code != 429 || *retry),
        "429 without Retry-After"
    );
    // The address's budget: a burst, then one per period (one spare for rounding); the
    // other address's check and nothing else ran bcrypt.
    let budget = u64::from(CHECK_BURST) + attack.as_secs() / CHECK_PERIOD.as_secs() + 1;
    assert!(
        refused as u64 <= budget,
        "{refused} wrong passwords checked, budget {budget}"
    );
    assert!(
        ran <= budget + 1,
        "bcrypt ran {ran} times, budget {budget} + 1"
    );
    assert!(throttled > refused, "the flood was hardly throttled");
    // Each 429 comes after a one-second pause: a client that waits for its answers
    // guesses about once a second.
    let most = 200 * (attack.as_secs() + 2);
    assert!(
        answers.len() as u64 <= most,
        "{} answers in {attack:?}: the 429s were not paused",
        answers.len()
    );
    s.shutdown().await;
}

/// `vpswatch check-config <toml> --web.config.file <web>`: exit code and stderr, or
/// `None` when it did not finish within 60 s (it is killed).
fn check_config_within(toml: &Path, web: &Path) -> Option<(i32, String)> {
    let nsec = nostr::Keys::generate().secret_key().to_secret_hex();
    let err = toml.with_extension("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .arg("check-config")
        .arg(toml)
        .arg("--web.config.file")
        .arg(web)
        .env("VPSWATCH_TEST_UNUSED", nsec)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run vpswatch");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            return Some((status.code().unwrap_or(-1), text));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn deep_nesting_and_files_that_are_not_regular_are_refused() {
    let pki = pki();
    let toml = pki.path("vpswatch.toml");
    std::fs::write(
        &toml,
        "[[accounts]]\nname = \"main\"\nprovider = \"lnvps\"\nnsec_env = \"VPSWATCH_TEST_UNUSED\"\n",
    )
    .expect("write");

    // 100,000 levels of flow nesting in 200 KB.
    let deep = pki.write_config(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
    let (code, err) = check_config_within(&toml, &deep).expect("check-config finished");
    assert_eq!(code, 2, "{err}");
    let want = format!(
        "{}: refused before parsing: 100000 '[' or '{{' characters",
        deep.display()
    );
    assert!(err.contains(&want), "no {want:?} in:\n{err}");

    // A device, a FIFO (opening it would wait for a writer) and a directory.
    let fifo = pki.path("web-fifo.yml");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for web in [Path::new("/dev/zero"), fifo.as_path(), pki.dir.path()] {
        let (code, err) = check_config_within(&toml, web)
            .unwrap_or_else(|| panic!("check-config of {} did not finish", web.display()));
        assert_eq!(code, 2, "{err}");
        let want = format!(
            "{}: cannot read the file: not a regular file",
            web.display()
        );
        assert!(err.contains(&want), "no {want:?} in:\n{err}");
    }
    // A certificate path naming a device is refused the same way, under its key.
    let web =
        pki.write_config("tls_server_config:\n  cert_file: /dev/zero\n  key_file: server.key\n");
    let (code, err) = check_config_within(&toml, &web).expect("finished");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tls_server_config.cert_file: cannot read /dev/zero: not a regular file"),
        "{err}"
    );
}
