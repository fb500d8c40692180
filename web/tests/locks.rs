//! Locks of issue 12 through the real HTTP server and the real `gridex` binary: the metrics labels
//! stay bounded whatever methods and paths clients send, weak API keys stop the server at start
//! and `Bearer ` with nothing after it is never valid, webhooks to loopback and private addresses
//! are refused unless allowed, and a webhook delivery carries a signed time so a replay is detected.

mod common;

use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use web::live::{LiveEvent, SlotSettled};
use web::settings::{ApiKey, Settings, WebhookSettings};

const UTILITY_KEY: &str = "utility-key-0123456789";
const ZONE: &str = "lock-zone";
const SLOT_LEN_MS: i64 = 900_000;
/// Generous deadline of every wait for a condition (busy machines are slow, never this slow).
const DEADLINE: Duration = Duration::from_secs(60);

type TestApp = common::TestServer;

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn utility_key(name: &str, key: &str) -> ApiKey {
    common::utility_key(name, ZONE, key)
}

/// A server on a fresh database with `settings` (these locks sit in front of the exchange).
async fn spawn_app(settings: Settings) -> TestApp {
    TestApp::start(settings, TestDb::any()).await
}

impl TestApp {
    async fn register_webhook(&self, url: &str) -> (u16, Value) {
        let body = Some(json!({ "url": url }));
        let request =
            common::with_api_key(&self.client, &self.address, ("POST", "/api/v1/webhooks"), Some(UTILITY_KEY), body);
        common::json_answer(request).await
    }
}

fn settings_with(webhooks: WebhookSettings) -> Settings {
    Settings { api_keys: vec![utility_key("ops", UTILITY_KEY)], webhooks, ..Settings::default() }
}

// ---- metrics ------------------------------------------------------------------------------------

/// The distinct values of `label` among the series of `metric` in a Prometheus text exposition.
fn label_values(text: &str, metric: &str, label: &str) -> std::collections::BTreeSet<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter_map(|line| {
            let start = line.find(&needle)? + needle.len();
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_owned())
        })
        .collect()
}

/// Before the fix every made-up method became a label value: 2,000 of them grew `/metrics` from
/// 12 KB to 3.2 MB and the server's memory past 200 MB. Raw paths must not become labels either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_made_up_methods_leave_the_metrics_small() {
    /// Requests with made-up methods (the acceptance figure).
    const ODD_METHODS: usize = 10_000;
    /// Requests to made-up paths, each distinct, unmatched and on a route with a parameter.
    const ODD_PATHS: usize = 1_000;
    /// Concurrent clients sending them.
    const CLIENTS: usize = 4;
    let app = Arc::new(spawn_app(settings_with(WebhookSettings::default())).await);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let app = app.clone();
        clients.spawn(async move {
            for i in (client..ODD_METHODS).step_by(CLIENTS) {
                let method = reqwest::Method::from_bytes(format!("X-ODD-{i}").as_bytes()).expect("a token");
                let url = format!("{}/api/v1/zones", app.address);
                app.client.request(method, url).send().await.expect("the server answers");
            }
            for i in (client..ODD_PATHS).step_by(CLIENTS) {
                for path in [format!("/api/v1/no-such-path-{i}"), format!("/api/v1/zones/odd-zone-{i}/tariffs")] {
                    app.client.get(format!("{}{path}", app.address)).send().await.expect("the server answers");
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("a client finished");
    }
    let text = app.client.get(format!("{}/metrics", app.address)).send().await.expect("metrics");
    let text = text.text().await.expect("a text body");
    let methods = label_values(&text, "gridex_http_requests_total", "method");
    assert!(methods.len() <= 10, "method labels: {methods:?}");
    assert!(methods.contains("other"), "the odd methods are counted as other: {methods:?}");
    let forbidden = ["X-ODD-", "no-such-path-", "odd-zone-"];
    assert!(forbidden.iter().all(|odd| !text.contains(odd)), "no client string became a label");
    let routes = label_values(&text, "gridex_http_requests_total", "route");
    assert!(routes.contains("/api/v1/zones/{zone}/tariffs"), "the route pattern is the label: {routes:?}");
    assert!(routes.contains("unmatched"), "paths no route matches share one label: {routes:?}");
    let series = text.lines().filter(|line| line.starts_with("gridex_http_requests_total{")).count();
    assert!(series <= 200, "{series} request series");
    // Before the fix: megabytes. After: tens of kilobytes, whatever else the process recorded.
    assert!(text.len() < 256 * 1024, "/metrics is {} bytes", text.len());
    Arc::into_inner(app).expect("the clients are done").stop().await;
}

// ---- API keys -----------------------------------------------------------------------------------

/// Runs `gridex serve` with `toml` as its settings and `env` on top, no database or broker from
/// the surroundings; returns (exit status success, stderr). Killed (and the test failed) if it is
/// still running after [`DEADLINE`]: a weak key must stop it at start.
fn serve_with(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("gridex.toml");
    std::fs::write(&config, toml).expect("write the settings");
    let mut command = Command::new(env!("CARGO_BIN_EXE_gridex"));
    command.arg("--config").arg(&config).arg("serve");
    for name in ["DATABASE_URL", "MQTT_URL", "GRIDEX_MQTT_URL", "GRIDEX_MQTT__URL", "GRIDEX_API_KEYS"] {
        command.env_remove(name);
    }
    let database = format!("sqlite://{}", dir.path().join("gridex.sqlite").display());
    command
        .env("GRIDEX_DATABASE_URL", database)
        .env("GRIDEX_HTTP_PORT", "0")
        .env("GRIDEX_OPERATOR_KEY_PATH", dir.path().join("missing-operator.key"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("gridex starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for gridex") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("gridex serve is still running: the weak key did not stop it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("read stderr");
    }
    (status.success(), stderr)
}

/// Before the fix a key from the TOML file had no minimum: `key = ""` started the server.
#[test]
fn empty_and_short_api_keys_stop_gridex_serve_at_start() {
    let weak = [("empty", ""), ("short", "abc123"), ("repetitive", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")];
    for (name, key) in weak {
        let toml = format!("[[api_keys]]\nname = \"ops-{name}\"\nrole = \"utility\"\nkey = \"{key}\"\n");
        let (success, stderr) = serve_with(&toml, &[]);
        assert!(!success, "{name}: gridex serve must not start");
        let error_lines: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "{name}: one clear line: {stderr}");
        assert!(error_lines[0].contains(&format!("API key `ops-{name}` is refused")), "{name}: {stderr}");
        assert!(key.is_empty() || !stderr.contains(key), "{name}: the key is never shown: {stderr}");
    }
    // The environment is held to the same rule.
    let (success, stderr) = serve_with("", &[("GRIDEX_API_KEYS", "ops-env:utility:bbbbbbbbbbbbbbbbbbbbbbbb")]);
    assert!(!success && stderr.contains("API key `ops-env` is refused"), "{stderr}");
    assert!(!stderr.contains("bbbbbbbb"), "{stderr}");
}

/// Before the fix a configured key had no minimum, so a one-character key made
/// `Authorization: Bearer x` valid, and an empty one was a hair from matching `Bearer ` (the HTTP
/// parser trims the trailing space, which alone saved it). Settings built in code skip
/// `Settings::validate`; the server still refuses weak keys and empty tokens at request time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_or_empty_bearer_token_is_never_valid() {
    let settings = Settings {
        api_keys: vec![utility_key("empty", ""), utility_key("short", "x"), utility_key("ops", UTILITY_KEY)],
        ..Settings::default()
    };
    let app = spawn_app(settings).await;
    let port = app.address.trim_start_matches("http://").to_owned();
    let headers = [
        "Authorization: Bearer \r\n",
        "Authorization: Bearer\r\n",
        "Authorization: Bearer \t\r\n",
        "Authorization: Bearer x\r\n",
    ];
    for header in headers {
        // Raw bytes: exactly the header a client can send.
        let mut socket = tokio::net::TcpStream::connect(&port).await.expect("connect");
        let request = format!("GET /api/v1/webhooks HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 401"), "{header:?} answered {answer}");
    }
    let listed = app
        .client
        .get(format!("{}/api/v1/webhooks", app.address))
        .bearer_auth(UTILITY_KEY)
        .send()
        .await
        .expect("answers");
    assert_eq!(listed.status().as_u16(), 200, "a strong key still works");
    app.stop().await;
}

// ---- webhooks -----------------------------------------------------------------------------------

/// Before the fix any URL was registered, so a utility key could make the server probe loopback,
/// private and link-local services (and read from `pending_deliveries` whether they answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_to_127_0_0_1_is_refused_unless_the_allow_list_names_it() {
    let app = spawn_app(settings_with(WebhookSettings::default())).await;
    let refused = [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://0.0.0.0:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://2130706433/hook",
    ];
    for url in refused {
        let (status, body) = app.register_webhook(url).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("refused_target")), "{url}: {body}");
    }
    let (_, body) = app.register_webhook("http://127.0.0.1:9/hook").await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("127.0.0.1") && message.contains("loopback"), "a clear error: {message}");
    assert!(message.contains("webhooks.allowed_private_networks"), "it says how to allow it: {message}");
    let listed = app.app.state().webhooks.list().await.expect("list");
    assert!(listed.is_empty(), "nothing was registered: {listed:?}");
    app.stop().await;

    let allowed = WebhookSettings { allowed_private_networks: vec!["127.0.0.1".into()], ..WebhookSettings::default() };
    let app = spawn_app(settings_with(allowed)).await;
    assert_eq!(app.register_webhook("http://127.0.0.1:9/hook").await.0, 201, "named by the allow list");
    assert_eq!(app.register_webhook("http://10.0.0.1/hook").await.0, 400, "only what it names");
    app.stop().await;
}

/// Registers the zone (with the tariff and reward schedule settlement needs) and settles its next
/// slot through settlement, announcing it as the running server does.
async fn settle_a_slot(app: &TestApp) -> SlotSettled {
    let config = settlement::SettlementConfig::new(protocol::testing::signing_key(50));
    let outcome = settlement::registry::write(&app.app.state().db, move |conn| {
        let zone = protocol::ZoneId::parse(ZONE).expect("a valid zone");
        common::seed_zone_market(conn, &zone, "Lock zone", SLOT_LEN_MS, now_ms())?;
        let zone = settlement::registry::zone(conn, &zone)?.expect("the zone just created");
        let slot = settlement::close::next_slot(conn, &zone)?;
        settlement::close_slot(conn, &zone.zone_id, slot, &config, now_ms() + 30 * 86_400_000)
    })
    .await
    .expect("the slot settles");
    let settlement::SlotOutcome::Settled(settled) = outcome else { panic!("a new slot was settled") };
    let settled =
        SlotSettled { zone: settled.zone, slot: settled.slot, root: settled.root, statements: settled.statements };
    app.app.state().publish(LiveEvent::Settlement(settled.clone()));
    settled
}

/// Before the fix the signature covered the body only (`sha256=…`), so a captured delivery could be
/// replayed to the receiver forever. Now it signs `<t>.<body>`: the documented check accepts the
/// fresh delivery and refuses the same bytes once `t` is older than the tolerance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_webhook_delivery_is_detected_by_the_receivers_check() {
    use web::webhooks::{verify_signature, SignatureError, SIGNATURE_TOLERANCE_S};
    let allowed = WebhookSettings { allowed_private_networks: vec!["127.0.0.1".into()], ..WebhookSettings::default() };
    let app = spawn_app(settings_with(allowed)).await;
    let (url, mut received) = common::webhook_receiver(0).await;
    let (status, created) = app.register_webhook(&url).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("the secret").to_owned();
    let settled = settle_a_slot(&app).await;
    let seen = tokio::time::timeout(DEADLINE, received.recv()).await.expect("a POST").expect("open");
    assert_eq!(seen.delivery, format!("slot_settled/{ZONE}/{}", settled.slot.start_ms()), "the dedup key");
    let (t, v1) = seen.signature.split_once(',').expect("t=…,v1=…");
    let signed_s: i64 = t.strip_prefix("t=").expect("t first").parse().expect("unix seconds");
    assert!(v1.strip_prefix("v1=").is_some_and(|hex| hex.len() == 64), "{}", seen.signature);
    let now_s = now_ms() / 1_000;
    assert!((signed_s - now_s).abs() <= SIGNATURE_TOLERANCE_S, "signed now: {signed_s} vs {now_s}");
    let body = seen.body.as_bytes();
    assert_eq!(verify_signature(&secret, &seen.signature, body, now_s, SIGNATURE_TOLERANCE_S), Ok(()));
    // The same bytes replayed later than the tolerance: refused by the documented check.
    let replay_s = signed_s + SIGNATURE_TOLERANCE_S + 1;
    assert_eq!(
        verify_signature(&secret, &seen.signature, body, replay_s, SIGNATURE_TOLERANCE_S),
        Err(SignatureError::OutsideTolerance)
    );
    // Refreshing the time on a captured delivery breaks the signature.
    let refreshed = seen.signature.replacen(t, &format!("t={replay_s}"), 1);
    assert_eq!(
        verify_signature(&secret, &refreshed, body, replay_s, SIGNATURE_TOLERANCE_S),
        Err(SignatureError::Mismatch)
    );
    app.stop().await;
}
