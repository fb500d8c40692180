//! `gridex serve` as users run it: [`Application::build`] from settings alone, against real services
//! when they are configured (PostgreSQL with `DATABASE_URL`, Mosquitto with `MQTT_URL`), else SQLite
//! and an embedded broker. A signed order over HTTP rests in the book, readings published over MQTT
//! are stored, `/metrics` answers, and shutdown completes.

mod common;

use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::testing::grid_reading;
use protocol::{AccountId, DeviceId, MeterSerial, Order, PricePerKwh, Side, Signed, SlotId, TimestampMs, Wh, ZoneId};
use serde_json::{json, Value};
use std::time::Duration;
use web::application::Application;
use web::settings::{MqttSettings, Secret, Settings};

const SLOT_LEN_MS: i64 = 900_000;
/// Bound on every wait for the running server (a hang guard, not a timing assertion).
const DEADLINE: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

async fn seed(test_db: &TestDb, zone: &ZoneId, account: AccountId, device: DeviceId) {
    let zone = zone.clone();
    settlement::registry::write(&test_db.db, move |conn| {
        common::seed_zone_market(conn, &zone, "Serve zone", SLOT_LEN_MS, now_ms())?;
        web::registry::register_account(conn, &account, "Dora", &zone, 0)?;
        web::registry::register_device(
            conn,
            &web::registry::NewDevice {
                device_id: device,
                account_id: account,
                zone: zone.clone(),
                meter_serial: MeterSerial::parse("SN-S").expect("a serial"),
                nameplate_w: 10_000,
            },
            0,
        )
    })
    .await
    .expect("seed the registry");
}

async fn signed_request(
    client: &reqwest::Client,
    base: &str,
    key: &ed25519_dalek::SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    common::json_answer(common::signed(client, base, key, (method, path, body), now_ms())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_trades_over_http_stores_mqtt_readings_answers_metrics_and_shuts_down() {
    // One zone per run: a shared broker carries other tests' traffic too.
    let zone = ZoneId::parse(&format!("serve-{}", std::process::id())).expect("a zone");
    let (trader, device) = (protocol::testing::signing_key(31), protocol::testing::signing_key(32));
    let account = AccountId::from_verifying_key(&trader.verifying_key());
    let device_id = DeviceId::from_verifying_key(&device.verifying_key());
    let test_db = TestDb::any();
    seed(&test_db, &zone, account, device_id).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let operator_key = dir.path().join("operator.key");
    meter_gateway::keys::generate_file(&operator_key).expect("an operator key");

    let mut settings = Settings::default();
    settings.database.url = Secret::new(test_db.url.clone());
    settings.mqtt = MqttSettings {
        url: Some(Secret::new(common::broker_url())),
        // A persistent session per exchange: a client id of its own, not another test's.
        client_id: Some(format!("gridex-serve-test-{}-{}", std::process::id(), now_ms())),
        ..MqttSettings::default()
    };
    let settings_mqtt = settings.mqtt.clone();
    settings.http.port = 0;
    settings.market.operator_key_path = operator_key.display().to_string();
    let app = Application::build(settings).await.expect("gridex serve starts");
    tokio::time::timeout(DEADLINE, app.exchange().mqtt_subscribed()).await.expect("the exchange subscribes");
    let (base, client) = (app.url(), reqwest::Client::new());

    // A signed order over HTTP is accepted and rests in the book.
    let slot = SlotId::containing(TimestampMs(now_ms() + 3_600_000), SLOT_LEN_MS);
    let order = Order::gtc(account, zone.clone(), slot, Side::Sell, PricePerKwh(150_000), Wh(1_000))
        .at(1, TimestampMs(now_ms()));
    let body = Signed::sign(order, &trader).expect("sign").to_json();
    let (status, ack) = signed_request(&client, &base, &trader, "POST", "/api/v1/orders", &body).await;
    assert_eq!(status, 201, "{ack}");
    let book_url = format!("{base}/api/v1/zones/{zone}/book?slot={}&levels=5", slot.start_ms());
    let book: Value = client.get(&book_url).send().await.expect("GET the book").json().await.expect("JSON");
    assert_eq!(book["asks"][0], json!({"price_per_kwh": 150_000, "qty_wh": 1_000, "orders": 1}), "{book}");

    // Two readings over MQTT, as a gateway sends them, are stored: the household sees the interval.
    let broker = web::broker::address(&settings_mqtt).expect("a valid broker URL").expect("a broker");
    let mut options =
        rumqttc::MqttOptions::new(format!("serve-test-device-{}", std::process::id()), broker.host, broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (mqtt, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let base_ms = now_ms() - 120_000;
    for (seq, import_wh) in [(1_u64, 1_000_i64), (2, 1_010)] {
        let serial = MeterSerial::parse("SN-S").expect("a serial");
        let reading = grid_reading(&device, zone.clone(), serial, seq, base_ms + seq as i64 * 60_000, import_wh, 0);
        let payload = Signed::sign(reading, &device).expect("sign").to_json();
        mqtt.publish(protocol::topics::readings(&zone, &device_id), rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish a reading");
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let rows = loop {
        let (status, rows) = signed_request(&client, &base, &trader, "GET", "/api/v1/me/readings", b"").await;
        assert_eq!(status, 200, "{rows}");
        if rows.as_array().map_or(0, Vec::len) == 2 {
            break rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "the readings were not stored: {rows}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows[1]["interval_import_wh"], 10, "{rows}");
    let _ = mqtt.disconnect().await;
    driver.abort();

    // /metrics answers with the server's own series.
    let metrics = client.get(format!("{base}/metrics")).send().await.expect("GET /metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.expect("text");
    assert!(text.contains("gridex_orders_total"), "{text}");

    tokio::time::timeout(DEADLINE, app.shutdown()).await.expect("shutdown completes").expect("a clean shutdown");
    // The server is gone: nothing listens on its port any more.
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
}

/// The `gridex` binary as an operator starts it under a supervisor: stdout and stderr are pipes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_binary_announces_its_address_on_stdout_and_logs_without_colour_codes() {
    use std::io::{BufRead as _, Read as _};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let operator_key = dir.path().join("operator.key");
    meter_gateway::keys::generate_file(&operator_key).expect("an operator key");
    let config = dir.path().join("gridex.toml");
    let settings = format!(
        "[http]\nport = 0\n\n[database]\nurl = \"sqlite://{db}\"\n\n[mqtt]\nurl = \"{broker}\"\nclient_id = \"gridex-serve-bin-{pid}-{now}\"\n\n[market]\noperator_key_path = \"{key}\"\n",
        db = dir.path().join("gridex.sqlite").display(),
        broker = common::broker_url(),
        pid = std::process::id(),
        now = now_ms(),
        key = operator_key.display(),
    );
    std::fs::write(&config, settings).expect("write the settings");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gridex"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        // The settings file's SQLite, whatever the test environment names.
        .env_remove("DATABASE_URL")
        .env_remove("GRIDEX_DATABASE_URL")
        .env_remove("MQTT_URL")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gridex starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let first_line = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("gridex serve prints a line within the deadline")
    .expect("the reader runs")
    .expect("stdout is readable");
    let url = first_line.trim().strip_prefix("gridex serving on ").map(str::to_owned);
    let healthz = match &url {
        Some(url) => reqwest::get(format!("{url}/healthz")).await.map(|response| response.status().as_u16()).ok(),
        None => None,
    };
    let _ = std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    let exited = tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || child.wait())).await;
    let log = stderr_reader.join().expect("the stderr reader");
    assert!(url.is_some(), "the first line on stdout is not the announcement: {first_line:?}\n{log}");
    assert_eq!(healthz, Some(200), "the announced address does not answer /healthz: {first_line:?}\n{log}");
    assert!(log.contains("gridex serving"), "the log has no serving line: {log}");
    assert!(!log.contains('\u{1b}'), "the log written to a pipe carries ANSI escape codes: {log:?}");
    let status = exited.expect("gridex stops on SIGINT").expect("wait").expect("an exit status");
    assert!(status.success(), "gridex serve exited with {status}: {log}");
}
