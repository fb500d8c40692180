//! HTTPS served by gridex itself (issue 12; THREATS.md, "anyone on the network": TLS available).
//! Without it the example settings bind `0.0.0.0` and bearer API keys and signed trader requests
//! cross the network in clear. Every test starts the real server through [`Application::build`],
//! the path `gridex serve` runs, with certificates made by the openssl command line.
//!
//! TLS does not depend on the database: these tests use a SQLite file of their own, with or
//! without `DATABASE_URL`.

use gridex_test_support::certs::{self, TestCertificates};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;
use web::application::Application;
use web::settings::{ApiKey, Role, Secret, Settings};

/// A utility key strong enough for `Settings::validate`.
const API_KEY: &str = "9f86d081884c7d659a2feaa0c55ad015";
/// Bound on the plain-HTTP probe's read (a hang guard, not a timing assertion).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `serve`'s settings on a loopback port of the system's choosing, with a SQLite file and an
/// operator key in `dir`, no broker.
fn settings(dir: &Path) -> Settings {
    let operator_key = dir.join("operator.key");
    meter_gateway::keys::load_or_generate(&operator_key).expect("an operator key");
    let mut settings = Settings::default();
    settings.database.url = Secret::new(format!("sqlite://{}", dir.join("gridex.sqlite").display()));
    settings.market.operator_key_path = operator_key.display().to_string();
    settings.http.port = 0;
    settings.api_keys.push(ApiKey {
        name: "ops".to_owned(),
        role: Role::Utility,
        utility: Some("ops".to_owned()),
        key: Secret::new(API_KEY),
    });
    settings
}

fn with_tls(mut settings: Settings, cert: &Path, key: &Path) -> Settings {
    settings.http.tls_cert_file = Some(cert.display().to_string());
    settings.http.tls_key_file = Some(key.display().to_string());
    settings
}

/// A client that trusts the test CA only (not the system's roots), capped at `max` TLS version.
fn client(certificates: &TestCertificates, max: reqwest::tls::Version) -> reqwest::Client {
    let ca = std::fs::read(&certificates.ca).expect("read the test CA");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("the test CA parses"))
        .max_tls_version(max)
        .build()
        .expect("a client")
}

/// What the server sends back to a plain-HTTP request carrying the API key (empty if it just
/// closes the connection).
fn plain_http_answer(address: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).expect("a read timeout");
    let request =
        format!("GET /api/v1/webhooks HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    // A reset instead of a close is as good an answer as none.
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_cross_the_network_in_clear_when_tls_is_configured() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let Some(certificates) = certs::make(dir.path()) else { return };
    let mut settings = with_tls(settings(dir.path()), &certificates.server_cert, &certificates.server_key);
    settings.http.hsts = true;
    settings.validate().expect("the settings are valid");
    let app = Application::build(settings).await.expect("gridex serve starts with TLS");
    assert_eq!(app.scheme(), "https");
    let base = app.url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");

    // HTTPS answers, with TLS 1.3 and with TLS 1.2, and tells browsers to stay on HTTPS.
    for max in [reqwest::tls::Version::TLS_1_3, reqwest::tls::Version::TLS_1_2] {
        let response = client(&certificates, max).get(format!("{base}/healthz")).send().await.expect("HTTPS answers");
        assert_eq!(response.status(), 200, "TLS up to {max:?}");
        let hsts = response.headers().get("strict-transport-security").and_then(|value| value.to_str().ok());
        assert_eq!(hsts, Some(web::tls::HSTS_HEADER_VALUE));
    }
    let https = client(&certificates, reqwest::tls::Version::TLS_1_3);
    let response =
        https.get(format!("{base}/api/v1/webhooks")).bearer_auth(API_KEY).send().await.expect("an HTTPS request");
    assert_eq!(response.status(), 200, "the API key works over HTTPS");

    // The same port refuses plain HTTP: a request with the key in clear gets no HTTP answer.
    let plain = format!("http://{}/api/v1/webhooks", app.address());
    let refused = reqwest::Client::new().get(&plain).bearer_auth(API_KEY).send().await;
    assert!(refused.is_err(), "plain HTTP answered: {:?}", refused.map(|response| response.status()));
    let address = app.address();
    let answer = tokio::task::spawn_blocking(move || plain_http_answer(address)).await.expect("the probe");
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP answered: {}", String::from_utf8_lossy(&answer));

    // A client that does not trust the server's CA (here: the system's roots only) is refused.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().expect("a client");
    assert!(untrusting.get(format!("{base}/healthz")).send().await.is_err(), "the test CA is not a public root");

    app.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_files_the_server_speaks_plain_http_and_sends_no_hsts() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut settings = settings(dir.path());
    settings.http.hsts = true;
    let app = Application::build(settings).await.expect("gridex serve starts");
    assert_eq!(app.scheme(), "http");
    let response = reqwest::get(format!("{}/healthz", app.url())).await.expect("plain HTTP answers");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("strict-transport-security").is_none(), "HSTS over plain HTTP is meaningless");
    app.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn a_tls_certificate_without_its_key_is_refused_at_start_naming_the_missing_setting() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (cert, key, missing) in
        [(Some("cert.pem"), None, "http.tls_key_file"), (None, Some("key.pem"), "http.tls_cert_file")]
    {
        let mut settings = settings(dir.path());
        settings.http.tls_cert_file = cert.map(str::to_owned);
        settings.http.tls_key_file = key.map(str::to_owned);
        let shown = settings.validate().expect_err("refused when the settings load").to_string();
        assert!(shown.contains(missing), "{shown}");
        let shown = Application::build(settings).await.expect_err("refused at start").to_string();
        assert!(shown.contains(missing), "{shown}");
    }
}

#[tokio::test]
async fn an_invalid_tls_certificate_or_key_file_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write");
    let absent = dir.path().join("absent.pem");
    let refusal = |settings: Settings| async move {
        let shown = Application::build(settings).await.expect_err("refused at start").to_string();
        assert!(!shown.contains('\n'), "one line: {shown}");
        shown
    };

    let shown = refusal(with_tls(settings(dir.path()), &garbage, &garbage)).await;
    assert!(shown.contains(&garbage.display().to_string()) && shown.contains("certificate"), "{shown}");
    let shown = refusal(with_tls(settings(dir.path()), &absent, &garbage)).await;
    assert!(shown.contains(&absent.display().to_string()), "{shown}");

    let Some(certificates) = certs::make(dir.path()) else { return };
    let shown = refusal(with_tls(settings(dir.path()), &certificates.server_cert, &garbage)).await;
    assert!(shown.contains(&garbage.display().to_string()) && shown.contains("private key"), "{shown}");
    // The CA's certificate with the server's key: a pair that does not belong together.
    let shown = refusal(with_tls(settings(dir.path()), &certificates.ca, &certificates.server_key)).await;
    assert!(shown.contains(&certificates.ca.display().to_string()), "{shown}");
}
