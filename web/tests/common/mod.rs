//! Test support shared by the web integration tests.
// Each test crate includes this module and uses a part of it.
#![allow(dead_code)]

use exchange::config::ExchangeConfig;
use gridex_store::testing::TestDb;
use gridex_store::{Database, DbConnection};
use protocol::ZoneId;
use settlement::registry::RegistryError;
use web::application::{Application, ApplicationBuilder};
use web::settings::{ApiKey, Role, Secret, Settings};

/// The utility's API key in [`api_keys`].
pub const UTILITY_KEY: &str = "utility-key-0123456789";
/// The observer's API key in [`api_keys`].
pub const OBSERVER_KEY: &str = "observer-key-0123456789";

/// Two API keys: `ops`, the utility of `zone` ([`UTILITY_KEY`]), and `grafana`, an observer
/// ([`OBSERVER_KEY`]).
pub fn api_keys(zone: &str) -> Vec<ApiKey> {
    vec![
        utility_key("ops", zone, UTILITY_KEY),
        ApiKey { name: "grafana".into(), role: Role::Observer, utility: None, key: Secret::new(OBSERVER_KEY) },
    ]
}

/// An API key `name` of the utility of `zone`.
pub fn utility_key(name: &str, zone: &str, key: &str) -> ApiKey {
    ApiKey { name: name.into(), role: Role::Utility, utility: Some(zone.into()), key: Secret::new(key) }
}

/// The test market's tariff from `effective_from_ms`: retail 0.30, feed-in 0.08, grid fee 0.04 per
/// kWh, protocol fee 0.5 %, no time-of-use bands.
pub fn tariff(effective_from_ms: i64) -> web::public::TariffView {
    web::public::TariffView {
        effective_from_ms,
        retail_price_per_kwh: 300_000,
        feed_in_price_per_kwh: 80_000,
        grid_fee_per_kwh: 40_000,
        protocol_fee_bps: 50,
        utc_offset_minutes: 0,
        bands: Vec::new(),
    }
}

/// `MQTT_URL`, or gridex's embedded broker (as `gridex demo` starts it) on a free port.
pub fn broker_url() -> String {
    if let Ok(url) = std::env::var("MQTT_URL") {
        return url;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port();
    web::demo::start_broker(port).expect("the embedded broker starts");
    format!("mqtt://127.0.0.1:{port}")
}

/// Runs the `gridex` binary with a SQLite database in `dir` (GRIDEX_DATABASE_URL wins over
/// DATABASE_URL).
pub fn gridex(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gridex"))
        .args(args)
        .env("GRIDEX_DATABASE_URL", format!("sqlite://{}", dir.join("admin.sqlite").display()))
        .output()
        .expect("gridex runs")
}

/// Runs the `gridex` binary as [`gridex`] does and asserts that it succeeded; returns its standard
/// output, trimmed.
pub fn gridex_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let output = gridex(dir, args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

/// Registers a home through the `gridex` admin subcommands in `dir`: migrates the database, makes
/// an account key (`a.key`) and a device key (`d.key`), creates zone `north`, adds the account
/// `Alice` in it and her device (`serial`, `nameplate_w`). Returns the account's and the device's
/// ids.
pub fn gridex_home(dir: &std::path::Path, serial: &str, nameplate_w: &str) -> (String, String) {
    let key_path = |name: &str| dir.join(name).display().to_string();
    gridex_ok(dir, &["migrate"]);
    let account = gridex_ok(dir, &["keygen", "--key", &key_path("a.key")]);
    let device = gridex_ok(dir, &["keygen", "--key", &key_path("d.key")]);
    gridex_ok(dir, &["zone", "create", "--id", "north", "--name", "North"]);
    gridex_ok(dir, &["account", "add", "--id", &account, "--name", "Alice", "--zone", "north"]);
    let device_add = ["device", "add", "--id", &device, "--account", &account, "--zone", "north"];
    gridex_ok(dir, &[&device_add[..], &["--serial", serial, "--nameplate-w", nameplate_w]].concat());
    (account, device)
}

/// A webhook delivery as a test receiver saw it: its signature, dedup key and attempt headers and
/// its body.
#[derive(Debug)]
pub struct Delivery {
    pub signature: String,
    pub delivery: String,
    pub attempt: String,
    pub body: String,
}

/// A webhook receiver on loopback: answers the first `failures` POSTs with 500 and every later one
/// with 200, and reports each. Returns its URL.
pub async fn webhook_receiver(failures: usize) -> (String, tokio::sync::mpsc::Receiver<Delivery>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let (sender, received) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        for attempt in 0.. {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut raw = Vec::new();
            let mut buffer = [0u8; 4096];
            let (head, body) = loop {
                let read = socket.read(&mut buffer).await.unwrap_or(0);
                if read == 0 {
                    break (String::new(), String::new());
                }
                raw.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = header(head, "content-length").parse().unwrap_or(0);
                    if body.len() >= length {
                        break (head.to_owned(), body.to_owned());
                    }
                }
            };
            let status = if attempt < failures { "500 Internal Server Error" } else { "200 OK" };
            let _ = socket
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
            let seen = Delivery {
                signature: header(&head, "x-gridex-signature"),
                delivery: header(&head, "x-gridex-delivery"),
                attempt: header(&head, "x-gridex-delivery-attempt"),
                body,
            };
            let _ = sender.send(seen).await;
        }
    });
    (url, received)
}

/// The value of header `name` in an HTTP request's head, empty when absent.
fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
        .unwrap_or_default()
}

/// gridex as `serve` wires it, for a test: `settings`, on `db` and a port-0 listener, with `config`
/// as the exchange's configuration and no settlement loop (tests settle by hand). The test adds
/// what else it needs (a clock, a broker) and builds it.
pub fn app_builder(settings: Settings, db: Database, config: ExchangeConfig) -> ApplicationBuilder {
    Application::builder(settings)
        .database(db)
        .listener(std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .exchange_config(config)
        .without_settlement()
}

/// Starts gridex as [`app_builder`] wires it, with the default exchange configuration and no
/// broker.
pub async fn start_app(settings: Settings, db: &Database) -> Application {
    app_builder(settings, db.clone(), ExchangeConfig::new(protocol::testing::operator_key()))
        .mqtt(None)
        .build()
        .await
        .expect("the app starts")
}

/// Sends `request`: its status and its JSON body (`null` when it has none).
pub async fn json_answer(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// `method path` with `body` at `base` (the server's URL), signed by trader `key` at `ts_ms` with the
/// request-signature headers.
pub fn signed(
    client: &reqwest::Client,
    base: &str,
    key: &ed25519_dalek::SigningKey,
    (method, path, body): (&str, &str, &[u8]),
    ts_ms: i64,
) -> reqwest::RequestBuilder {
    let mut request = client.request(method.parse().expect("method"), format!("{base}{path}")).body(body.to_vec());
    for (name, value) in web::auth::sign_request(key, method, path, body, ts_ms) {
        request = request.header(name, value);
    }
    request
}

/// `method path` at `base` (the server's URL) with `body` as JSON, and API key `key` as bearer token
/// when given.
pub fn with_api_key(
    client: &reqwest::Client,
    base: &str,
    (method, path): (&str, &str),
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> reqwest::RequestBuilder {
    let mut request = client.request(method.parse().expect("method"), format!("{base}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request
}

/// gridex started for a test on its own database, with an HTTP client for it.
pub struct TestServer {
    /// Its base URL, `http://127.0.0.1:port`.
    pub address: String,
    pub client: reqwest::Client,
    pub app: Application,
    /// Kept for the server's lifetime; tests write to it directly too.
    pub db: TestDb,
}

impl TestServer {
    /// Starts gridex with `settings` on `db`, as [`start_app`] does.
    pub async fn start(settings: Settings, db: TestDb) -> Self {
        let app = start_app(settings, &db.db).await;
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        Self { address: app.url(), client, app, db }
    }

    /// Stops the server whether or not it exits cleanly (for tests that check something else).
    pub async fn stop(self) {
        let _ = self.app.shutdown().await;
    }

    /// Stops the server and asserts that it exits cleanly.
    pub async fn stop_cleanly(self) {
        self.app.shutdown().await.expect("the server exits cleanly");
    }
}

/// Seeds `zone` (`name`, slots of `slot_len_ms`) with the test market as [`seed_zone_market`] does,
/// from now, and registers each of `homes` (account, display name) in it.
pub async fn seed_market_with_homes(
    db: &Database,
    zone: &ZoneId,
    name: &str,
    slot_len_ms: i64,
    homes: &[(protocol::AccountId, &str)],
) {
    use gridex_store::clock::{Clock, SystemClock};
    let (zone, name) = (zone.clone(), name.to_owned());
    let homes: Vec<(protocol::AccountId, String)> =
        homes.iter().map(|(account, display_name)| (*account, (*display_name).to_owned())).collect();
    settlement::registry::write(db, move |conn| {
        seed_zone_market(conn, &zone, &name, slot_len_ms, SystemClock.now_ms())?;
        for (account, display_name) in &homes {
            web::registry::register_account(conn, account, display_name, &zone, 0)?;
        }
        Ok::<(), RegistryError>(())
    })
    .await
    .expect("seed the registry");
}

/// Registers `zone` with the test market's reward schedule (genesis an hour before `now_ms`) and
/// tariff (retail 0.30, feed-in 0.08, grid fee 0.04 per kWh, protocol fee 0.5 %), through the
/// registry as the utility API does.
pub fn seed_zone_market(
    conn: &mut DbConnection,
    zone: &ZoneId,
    name: &str,
    slot_len_ms: i64,
    now_ms: i64,
) -> Result<(), RegistryError> {
    web::registry::create_zone(conn, zone, name, slot_len_ms, now_ms)?;
    web::registry::set_reward_schedule(
        conn,
        &web::registry::RewardSchedule {
            genesis_ms: now_ms - 3_600_000,
            epoch_len_ms: 86_400_000,
            initial_emission_per_epoch: 1_000_000_000,
            halving_epochs: 365,
            max_supply: 21_000_000_000_000,
        },
    )?;
    web::registry::set_tariff(conn, zone, &tariff(0))
}
