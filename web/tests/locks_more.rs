//! More locks of issue 12 through the real HTTP server: a signed trader request is accepted once,
//! list endpoints hand out cursors instead of truncating, and one client opens only so many live
//! streams.

mod common;

use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::AccountId;
use serde_json::Value;
use settlement::registry::DeviceRole;
use std::time::{Duration, Instant};
use web::auth::sign_request;
use web::settings::Settings;

const ZONE: &str = "lock-zone";
const UTILITY_KEY: &str = "utility-key-0123456789";
const SLOT_LEN_MS: i64 = 900_000;
/// Generous deadline of every wait for a condition (busy machines are slow, never this slow).
const DEADLINE: Duration = Duration::from_secs(60);

type TestApp = common::TestServer;

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

/// A server on a fresh database with one zone and `household` registered in it (these locks sit in
/// front of the exchange).
async fn spawn_app(household: &SigningKey) -> TestApp {
    spawn_app_with(household, Settings::default()).await
}

async fn spawn_app_with(household: &SigningKey, settings: Settings) -> TestApp {
    let test_db = TestDb::any();
    let alice = account(household);
    settlement::registry::write(&test_db.db, move |conn| {
        let zone = protocol::ZoneId::parse(ZONE).expect("valid zone");
        web::registry::create_zone(conn, &zone, "Lock zone", SLOT_LEN_MS, now_ms())?;
        web::registry::register_account(conn, &alice, "Alice", &zone, 0)
    })
    .await
    .expect("seed the registry");
    let settings = Settings { api_keys: vec![common::utility_key("utility", ZONE, UTILITY_KEY)], ..settings };
    TestApp::start(settings, test_db).await
}

impl TestApp {
    /// GETs `path` with the utility's API key.
    async fn utility_get(&self, path: &str) -> reqwest::Response {
        let request = common::with_api_key(&self.client, &self.address, ("GET", path), Some(UTILITY_KEY), None);
        request.send().await.expect("the server answers")
    }

    /// Sends exactly these signature headers (a captured request is sent again byte for byte).
    async fn send_signed(&self, path: &str, headers: &[(String, String); 3]) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        common::json_answer(request).await
    }
}

#[tokio::test]
async fn a_replayed_trader_request_is_refused() {
    let alice = protocol::testing::signing_key(41);
    let app = spawn_app(&alice).await;
    let path = "/api/v1/me/readings";
    let captured = sign_request(&alice, "GET", path, b"", now_ms());

    let (status, first) = app.send_signed(path, &captured).await;
    assert_eq!(status, 200, "the first request is served: {first}");

    // The same signed request again, well within its 60 s window: an eavesdropper's replay.
    let (status, replay) = app.send_signed(path, &captured).await;
    assert_eq!(status, 409, "a replay is refused: {replay}");
    assert_eq!(replay["error"], "replayed_request", "with a clear JSON error: {replay}");

    // A request signed anew (another timestamp) is a new request and is served.
    let mut fresh = sign_request(&alice, "GET", path, b"", now_ms());
    if fresh == captured {
        fresh = sign_request(&alice, "GET", path, b"", now_ms() + 1);
    }
    let (status, again) = app.send_signed(path, &fresh).await;
    assert_eq!(status, 200, "a freshly signed request is served: {again}");
    app.stop().await;
}

/// Devices of the 120,000-reading household, and readings per device.
const EXPORT_DEVICES: u8 = 4;
const READINGS_PER_DEVICE: i64 = 30_000;
/// A reading every 20 s: 30,000 of them span 6.9 days, inside `/me/readings`' 7-day range.
const READING_INTERVAL_MS: i64 = 20_000;
/// Energy imported between two readings of a device: every interval but a device's first shows it,
/// also across page boundaries.
const IMPORT_STEP_WH: i64 = 7;
/// Rows per insert statement: 9 columns stay under SQLite's and PostgreSQL's bind-parameter limits.
const INSERT_BATCH_ROWS: usize = 1_000;

fn device_key(index: u8) -> SigningKey {
    protocol::testing::signing_key(100 + index)
}

/// Registers the devices and stores their readings in bulk; returns every `(device, seq)`.
async fn seed_readings(app: &TestApp, alice: AccountId, from_ms: i64) -> std::collections::BTreeSet<(String, i64)> {
    use diesel::prelude::*;
    use gridex_store::schema::readings;
    use gridex_store::DbConnection;
    let devices: Vec<protocol::DeviceId> =
        (0..EXPORT_DEVICES).map(|i| protocol::DeviceId::from_verifying_key(&device_key(i).verifying_key())).collect();
    let registered = devices.clone();
    settlement::registry::write(&app.db.db, move |conn| {
        for (i, device) in registered.iter().enumerate() {
            // One grid meter per account; the others are its sub-meters, whose readings export alike.
            let role = if i == 0 { DeviceRole::Grid } else { DeviceRole::Submeter };
            web::registry::register_device_with_role(
                conn,
                &web::registry::NewDevice {
                    device_id: *device,
                    account_id: alice,
                    zone: protocol::ZoneId::parse(ZONE).expect("valid zone"),
                    meter_serial: protocol::MeterSerial::parse(&format!("SN-{i}")).expect("valid serial"),
                    nameplate_w: 10_000,
                },
                role,
                0,
            )?;
        }
        Ok::<(), settlement::registry::RegistryError>(())
    })
    .await
    .expect("register the devices");
    let mut all = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for device in &devices {
        for seq in 1..=READINGS_PER_DEVICE {
            all.insert((device.to_hex(), seq));
            rows.push((device.to_hex(), seq, from_ms + (seq - 1) * READING_INTERVAL_MS, seq * IMPORT_STEP_WH));
        }
    }
    app.db
        .db
        .write(move |conn| {
            for batch in rows.chunks(INSERT_BATCH_ROWS) {
                let values: Vec<_> = batch
                    .iter()
                    .map(|(device, seq, ts_ms, import_wh)| {
                        (
                            readings::device_id.eq(device.clone()),
                            readings::seq.eq(*seq),
                            readings::ts_ms.eq(*ts_ms),
                            readings::import_wh.eq(*import_wh),
                            readings::export_wh.eq(0_i64),
                            readings::pv_wh.eq(None::<i64>),
                            readings::power_w.eq(0_i64),
                            readings::received_ms.eq(*ts_ms),
                            readings::payload.eq("{}"),
                        )
                    })
                    .collect();
                let insert = diesel::insert_into(readings::table).values(values);
                match conn {
                    DbConnection::Postgres(pg) => insert.execute(pg)?,
                    DbConnection::Sqlite(sqlite) => insert.execute(sqlite)?,
                };
            }
            Ok(())
        })
        .await
        .expect("insert the readings");
    all
}

/// Checks one page's rows: each `(device, seq)` seen once overall, interval energy right.
fn take_rows(seen: &mut std::collections::BTreeSet<(String, i64)>, rows: impl Iterator<Item = (String, i64, i64)>) {
    for (device, seq, interval_import_wh) in rows {
        let expected = if seq == 1 { 0 } else { IMPORT_STEP_WH };
        assert_eq!(interval_import_wh, expected, "interval energy of {device}/{seq}, also across pages");
        assert!(seen.insert((device.clone(), seq)), "{device}/{seq} returned twice");
    }
}

/// Most pages a walk may take before the test calls it endless (120,000 rows are 3 pages).
const PAGES_MAX: usize = 10;

#[tokio::test]
async fn cursors_walk_a_120_000_row_export_whole() {
    let alice = protocol::testing::signing_key(42);
    let app = spawn_app(&alice).await;
    let from_ms = now_ms() - 8 * 86_400_000;
    let to_ms = from_ms + 7 * 86_400_000;
    let stored = seed_readings(&app, account(&alice), from_ms).await;
    assert_eq!(stored.len(), 120_000);

    // The utility's CSV export, page by page through `X-Next-Cursor` (and the same `Link`).
    let mut seen = std::collections::BTreeSet::new();
    let mut path = format!("/api/v1/export/readings?zone={ZONE}&from_ms={from_ms}&to_ms={to_ms}");
    for _ in 0..PAGES_MAX {
        let response = app.utility_get(&path).await;
        assert_eq!(response.status().as_u16(), 200);
        let next = response.headers().get("x-next-cursor").map(|v| v.to_str().expect("ascii").to_owned());
        let link = response.headers().get("link").map(|v| v.to_str().expect("ascii").to_owned());
        let csv = response.text().await.expect("a CSV body");
        take_rows(
            &mut seen,
            csv.lines().skip(1).map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                (fields[0].to_owned(), fields[1].parse().expect("seq"), fields[7].parse().expect("interval import"))
            }),
        );
        let Some(next) = next else { break };
        let link = link.expect("a Link header with the cursor");
        assert!(link.contains(&format!("cursor={next}")) && link.ends_with("rel=\"next\""), "{link}");
        path = format!("/api/v1/export/readings?zone={ZONE}&from_ms={from_ms}&to_ms={to_ms}&cursor={next}");
    }
    assert_eq!(seen.len(), stored.len(), "the CSV pages hold every reading");
    assert!(seen == stored, "the CSV pages hold exactly the stored readings");

    // The household's own `/me/readings`, signed page by page.
    let mut seen = std::collections::BTreeSet::new();
    let mut path = format!("/api/v1/me/readings?from_ms={from_ms}&to_ms={to_ms}");
    for _ in 0..PAGES_MAX {
        let mut request = app.client.get(format!("{}{path}", app.address));
        for (name, value) in sign_request(&alice, "GET", &path, b"", now_ms()) {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("the server answers");
        assert_eq!(response.status().as_u16(), 200);
        let next = response.headers().get("x-next-cursor").map(|v| v.to_str().expect("ascii").to_owned());
        let rows: Vec<Value> = response.json().await.expect("a JSON list");
        take_rows(
            &mut seen,
            rows.iter().map(|row| {
                let device = row["device"].as_str().expect("device").to_owned();
                (device, row["seq"].as_i64().expect("seq"), row["interval_import_wh"].as_i64().expect("interval"))
            }),
        );
        let Some(next) = next else { break };
        path = format!("/api/v1/me/readings?from_ms={from_ms}&to_ms={to_ms}&cursor={next}");
    }
    assert_eq!(seen.len(), stored.len(), "the JSON pages hold every reading");
    assert!(seen == stored, "the JSON pages hold exactly the stored readings");

    // A cursor is validated, never trusted.
    let response = app.utility_get(&format!("/api/v1/export/readings?zone={ZONE}&cursor=zz")).await;
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"], "invalid_cursor");

    // The OpenAPI document tells clients about the pages.
    let document: Value = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("a JSON document");
    for path in ["/api/v1/export/readings", "/api/v1/me/readings"] {
        let operation = &document["paths"][path]["get"];
        let parameters = operation["parameters"].as_array().expect("parameters");
        assert!(parameters.iter().any(|p| p["name"] == "cursor"), "{path} takes a cursor");
        assert!(operation["responses"]["200"]["headers"]["X-Next-Cursor"].is_object(), "{path} names X-Next-Cursor");
    }
    app.stop().await;
}

/// Streams one client may hold in the cap test: small, so the test opens few.
const STREAMS_PER_CLIENT: usize = 2;

impl TestApp {
    async fn open_stream(&self) -> reqwest::Response {
        self.client.get(format!("{}/api/v1/stream?zone={ZONE}", self.address)).send().await.expect("the server answers")
    }
}

#[tokio::test]
async fn one_client_cannot_open_more_than_its_share_of_live_streams() {
    let alice = protocol::testing::signing_key(43);
    let mut settings = Settings::default();
    settings.http.sse_streams_per_client_max = STREAMS_PER_CLIENT;
    let app = spawn_app_with(&alice, settings).await;

    let mut open = Vec::new();
    for _ in 0..STREAMS_PER_CLIENT {
        let mut stream = app.open_stream().await;
        assert_eq!(stream.status().as_u16(), 200);
        let first = stream.chunk().await.expect("a frame").expect("the stream is open");
        assert!(first.starts_with(b": connected"), "a live stream: {first:?}");
        open.push(stream);
    }
    // The client's next stream is refused with a JSON error, while its others stay open.
    let refused = app.open_stream().await;
    assert_eq!(refused.status().as_u16(), 429);
    let error: Value = refused.json().await.expect("a JSON error");
    assert_eq!(error["error"], "too_many_streams", "{error}");

    // Closing a stream gives its place back once the server notices the client went away: at a
    // failed keepalive write, about two keepalive intervals after the close.
    drop(open.pop());
    let release_deadline = DEADLINE.max(web::sse::KEEPALIVE_INTERVAL * 8);
    let start = Instant::now();
    loop {
        let stream = app.open_stream().await;
        if stream.status().as_u16() == 200 {
            break;
        }
        assert_eq!(stream.status().as_u16(), 429);
        assert!(start.elapsed() < release_deadline, "a closed stream's place was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);
    app.stop().await;
}
