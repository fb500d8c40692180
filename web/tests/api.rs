//! API integration tests: a real server on port 0, a fresh database, the real exchange service.

mod common;

use common::{OBSERVER_KEY, UTILITY_KEY};
use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::{AccountId, Order, PricePerKwh, Side, Signed, SlotId, TimeInForce, TimestampMs, Wh, ZoneId};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use web::application::Application;
use web::auth::sign_request;
use web::live::{LiveEvent, SlotSettled};
use web::settings::{Secret, Settings, WebhookSettings};
use web::state::AppState;

const ZONE: &str = "test-zone";
const SLOT_LEN_MS: i64 = 900_000;

struct TestApp {
    address: String,
    client: reqwest::Client,
    state: AppState,
    alice: SigningKey,
    bob: SigningKey,
    alice_device: SigningKey,
    nonce: std::sync::atomic::AtomicU64,
    app: Option<Application>,
    db: Option<TestDb>,
}

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("valid zone")
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// A slot comfortably inside the open horizon: an hour from now.
fn open_slot() -> SlotId {
    SlotId::containing(TimestampMs(now_ms() + 3_600_000), SLOT_LEN_MS)
}

async fn spawn_app() -> TestApp {
    let webhooks = WebhookSettings { backoff_initial_ms: 20, ..Default::default() };
    spawn_app_on(TestDb::any(), true, webhooks).await
}

/// A server on `test_db`; `seed` registers the zone, tariff, accounts and device (a fresh database).
async fn spawn_app_on(test_db: TestDb, seed: bool, webhooks: WebhookSettings) -> TestApp {
    let db = test_db.db.clone();
    let (alice, bob, alice_device) =
        (protocol::testing::signing_key(11), protocol::testing::signing_key(12), protocol::testing::signing_key(13));
    if seed {
        seed_registry(&db, account(&alice), account(&bob), alice_device.verifying_key()).await;
    }
    let settings = Settings {
        api_keys: common::api_keys(ZONE),
        // The test receivers listen on loopback: allowed here, as a deployment would name its
        // own private receivers (the check itself is tested in tests/locks.rs).
        webhooks: WebhookSettings { allowed_private_networks: vec!["127.0.0.1".to_owned()], ..webhooks },
        ..Settings::default()
    };
    let app = common::start_app(settings, &db).await;
    let (address, state) = (app.url(), app.state().clone());
    TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        alice,
        bob,
        alice_device,
        nonce: std::sync::atomic::AtomicU64::new(1),
        app: Some(app),
        db: Some(test_db),
    }
}

async fn seed_registry(
    db: &gridex_store::Database,
    alice_id: AccountId,
    bob_id: AccountId,
    device_id: ed25519_dalek::VerifyingKey,
) {
    settlement::registry::write(db, move |conn| {
        let zone = zone();
        common::seed_zone_market(conn, &zone, "Test zone", SLOT_LEN_MS, now_ms())?;
        web::registry::register_account(conn, &alice_id, "Alice", &zone, 0)?;
        web::registry::register_account(conn, &bob_id, "Bob", &zone, 0)?;
        web::registry::register_device(
            conn,
            &web::registry::NewDevice {
                device_id: protocol::DeviceId::from_verifying_key(&device_id),
                account_id: alice_id,
                zone: zone.clone(),
                meter_serial: protocol::MeterSerial::parse("SN-A").expect("valid"),
                nameplate_w: 10_000,
            },
            0,
        )
    })
    .await
    .expect("seed the registry");
}

impl TestApp {
    async fn stop(self) {
        drop(self.stop_keeping_database().await);
    }

    /// Stops the server and the exchange; returns the database for another start.
    async fn stop_keeping_database(mut self) -> TestDb {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("the server exits cleanly");
        }
        self.db.take().expect("the database is kept until the app stops")
    }

    /// Stops this app and starts a new one on the same database, as a restarted `gridex` would.
    async fn restart(self, webhooks: WebhookSettings) -> TestApp {
        let db = self.stop_keeping_database().await;
        spawn_app_on(db, false, webhooks).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        common::json_answer(self.client.get(self.url(path))).await
    }

    async fn signed(&self, key: &SigningKey, method: &str, path: &str, body: &[u8], ts_ms: i64) -> (u16, Value) {
        common::json_answer(common::signed(&self.client, &self.address, key, (method, path, body), ts_ms)).await
    }

    async fn trader_get(&self, key: &SigningKey, path: &str) -> (u16, Value) {
        self.signed(key, "GET", path, b"", now_ms()).await
    }

    async fn utility(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
        common::json_answer(common::with_api_key(&self.client, &self.address, (method, path), key, body)).await
    }

    fn order(&self, key: &SigningKey, side: Side, price: i64, qty: i64) -> Vec<u8> {
        self.order_with(key, side, price, qty, TimeInForce::Gtc, false)
    }

    fn order_with(
        &self,
        key: &SigningKey,
        side: Side,
        price: i64,
        qty: i64,
        tif: TimeInForce,
        post_only: bool,
    ) -> Vec<u8> {
        let order = Order {
            account: account(key),
            zone: zone(),
            slot: open_slot(),
            side,
            price_per_kwh: PricePerKwh(price),
            qty_wh: Wh(qty),
            tif,
            post_only,
            nonce: self.nonce.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            ts_ms: TimestampMs(now_ms()),
        };
        Signed::sign(order, key).expect("sign").to_json()
    }

    async fn place(&self, key: &SigningKey, side: Side, price: i64, qty: i64) -> (u16, Value) {
        let body = self.order(key, side, price, qty);
        self.signed(key, "POST", "/api/v1/orders", &body, now_ms()).await
    }
}

fn assert_error(response: &(u16, Value), status: u16, code: &str) {
    assert_eq!(response.0, status, "{:?}", response.1);
    assert_eq!(response.1["error"], code, "{:?}", response.1);
    assert!(response.1["message"].is_string(), "{:?}", response.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await, (200, json!({"status": "ok"})));
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["database"], true);
    let text = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(text.contains("gridex_http_requests_total"), "{text}");
    app.stop().await;
}

/// The value of the sample `series` (name and labels exactly as rendered), or 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

impl TestApp {
    async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.expect("metrics");
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
        response.text().await.expect("text")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_accepted_and_rejected_orders_and_show_latencies_and_queue_depths() {
    let app = spawn_app().await;
    let accepted = r#"gridex_orders_total{result="accepted"}"#;
    let out_of_band = r#"gridex_orders_total{result="price_out_of_band"}"#;
    let bad_signature = r#"gridex_orders_total{result="bad_signature"}"#;
    let before = app.metrics().await;
    assert_eq!(app.place(&app.alice, Side::Sell, 150_000, 1_000).await.0, 201);
    assert_eq!(app.place(&app.alice, Side::Sell, 900_000, 1_000).await.0, 422);
    let tampered = String::from_utf8(app.order(&app.alice, Side::Sell, 150_000, 1_000))
        .expect("utf-8")
        .replace("\"qty_wh\":1000", "\"qty_wh\":9000");
    assert_eq!(app.signed(&app.alice, "POST", "/api/v1/orders", tampered.as_bytes(), now_ms()).await.0, 401);
    // Settle a slot and announce it as the settlement loop does.
    let settled = settlement::service::settled_channel();
    web::ledger::spawn_settled_forwarder(&app.state, settled.subscribe());
    let config = settlement::SettlementConfig::new(protocol::testing::signing_key(50));
    let closed =
        settlement::service::close_due(&app.state.db, &config, now_ms() + 2 * 3_600_000).await.expect("settle");
    assert!(!closed.is_empty());
    let mut live = app.state.live.subscribe();
    for slot in closed {
        settled.send(slot).expect("the forwarder listens");
    }
    // The forwarder records the latency before it publishes the slot.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), live.recv()).await.expect("announced").expect("open");
        if matches!(event, LiveEvent::Settlement(_)) {
            break;
        }
    }

    let after = app.metrics().await;
    // Other tests in this process count too: each counter grew by at least this test's share.
    assert!(sample(&after, accepted) >= sample(&before, accepted) + 1.0, "{after}");
    assert!(sample(&after, out_of_band) >= sample(&before, out_of_band) + 1.0, "{after}");
    assert!(sample(&after, bad_signature) >= sample(&before, bad_signature) + 1.0, "{after}");
    for series in [
        "gridex_matching_seconds_bucket{le=",
        "gridex_group_commit_seconds_bucket{le=",
        "gridex_settlement_latency_seconds_bucket{le=",
        r#"gridex_queue_depth{queue="ingest"}"#,
        r#"gridex_queue_depth{queue="commit"}"#,
        r#"gridex_queue_depth{queue="live_feed"}"#,
        r#"gridex_queue_depth{queue="webhook_outbox"}"#,
        "# TYPE gridex_matching_seconds histogram",
        "# TYPE gridex_orders_total counter",
    ] {
        assert!(after.contains(series), "no {series} in\n{after}");
    }
    // The traded slot starts an hour from now and ends at most 15 min later; settled at "now + 2 h",
    // its latency is at least 45 min.
    assert!(sample(&after, "gridex_settlement_latency_seconds_sum") >= 2_700.0, "{after}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_key_is_published_for_pinning() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/v1/operator-key").await;
    assert_eq!(status, 200);
    let expected = hex::encode(protocol::testing::operator_key().verifying_key().to_bytes());
    assert_eq!(body, json!({ "operator": expected }), "the key the exchange signs its messages with");
    // The dashboard pins it in the page it is served in, not from the responses it verifies.
    let page = app.client.get(app.url("/")).send().await.expect("index").text().await.expect("text");
    assert!(page.contains(&format!(r#"<meta name="gridex-operator-key" content="{expected}">"#)), "pinned in the page");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    assert_error(&app.get("/api/v1/nothing-here").await, 404, "no_route");
    let response = app.utility("DELETE", "/api/v1/zones", None, None).await;
    assert_error(&response, 405, "method_not_allowed");
    // A 405 says what the path does serve (RFC 9110): GET and POST on /api/v1/zones.
    let response = app.client.delete(app.url("/api/v1/zones")).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 405);
    let allow = response.headers().get("allow").and_then(|value| value.to_str().ok()).map(str::to_owned);
    assert_eq!(allow.as_deref(), Some("GET, POST"), "the Allow header of a 405");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_at_the_root() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/")).send().await.expect("index");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    for (name, _) in web::assets::files() {
        let response = app.client.get(app.url(&format!("/static/{name}"))).send().await.expect("asset");
        assert_eq!(response.status().as_u16(), 200, "{name}");
    }
    assert_error(&app.get("/static/does-not-exist.js").await, 404, "not_found");
    app.stop().await;
}

fn example_path(path: &str) -> String {
    let slot = open_slot().start_ms().to_string();
    path.replace("{zone}", ZONE).replace("{slot}", &slot).replace("{path}", "index.html")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_matches_the_routes() {
    let app = spawn_app().await;
    let (status, document) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().expect("openapi version").starts_with("3."));
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());
    let paths = document["paths"].as_object().expect("paths");
    let schemes = document["components"]["securitySchemes"].as_object().expect("security schemes");
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    let mut documented = Vec::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        for (method, operation) in item.as_object().expect("path item") {
            assert!(["get", "post", "put", "delete", "patch"].contains(&method.as_str()), "{method}");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}");
            for (code, response) in responses {
                assert!(code == "default" || code.parse::<u16>().is_ok(), "{code}");
                assert!(response["description"].is_string(), "{method} {path} {code}");
            }
            // Every templated segment is declared as a path parameter, and nothing else is.
            let declared: Vec<&str> = operation["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().expect("name"))
                .collect();
            let templated: Vec<&str> =
                path.split('{').skip(1).map(|part| part.split('}').next().expect("closing brace")).collect();
            assert_eq!(declared, templated, "{method} {path}");
            // A zone parameter states what the server accepts, so clients and fuzzers stay inside it.
            for zone in operation["parameters"].as_array().into_iter().flatten().filter(|p| p["name"] == "zone") {
                assert_eq!(zone["schema"]["pattern"], "^[a-z0-9-]{1,32}$", "{method} {path}");
            }
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().expect("requirement").keys() {
                    assert!(schemes.contains_key(scheme), "{scheme}");
                }
            }
            let text = operation.to_string();
            for reference in text.split("#/components/schemas/").skip(1) {
                let name = reference.split('"').next().expect("name");
                assert!(schemas.contains_key(name), "missing schema {name}");
            }
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    // Every route mounted is documented, and every documented operation is routed (not the
    // fallback 404 or a 405).
    let mounted: Vec<(String, String)> = web::routes::mounted(false)
        .iter()
        .map(|endpoint| (endpoint.method.to_uppercase(), web::routes::openapi_path(endpoint.path)))
        .collect();
    let mut sorted_documented = documented.clone();
    sorted_documented.sort();
    let mut sorted_mounted = mounted.clone();
    sorted_mounted.sort();
    assert_eq!(sorted_documented, sorted_mounted);
    assert!(!documented.iter().any(|(_, path)| path.contains("/demo/")), "demo routes only in demo mode");
    for (method, path) in &documented {
        if path == "/api/v1/stream" {
            continue; // a stream never ends; covered by its own test
        }
        let response = app
            .client
            .request(method.parse().expect("method"), app.url(&example_path(path)))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(body["error"] != "no_route" && status != 405, "{method} {path} is not routed: {status} {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_list_their_current_tariff() {
    let app = spawn_app().await;
    let (status, zones) = app.get("/api/v1/zones").await;
    assert_eq!(status, 200);
    assert_eq!(zones[0]["zone_id"], ZONE);
    assert_eq!(zones[0]["slot_len_ms"], SLOT_LEN_MS);
    assert_eq!(zones[0]["tariff"]["retail_price_per_kwh"], 300_000);
    let (status, tariffs) = app.get(&format!("/api/v1/zones/{ZONE}/tariffs")).await;
    assert_eq!(status, 200);
    assert_eq!(tariffs.as_array().expect("array").len(), 1);
    assert_error(&app.get("/api/v1/zones/nowhere/tariffs").await, 404, "unknown_zone");
    assert_error(&app.get("/api/v1/zones/NOT_VALID/tariffs").await, 400, "invalid_zone");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utility_endpoints_need_a_utility_key() {
    let app = spawn_app().await;
    let body = json!({"zone_id": "south", "name": "South"});
    assert_error(&app.utility("POST", "/api/v1/zones", None, Some(body.clone())).await, 401, "missing_api_key");
    assert_error(
        &app.utility("POST", "/api/v1/zones", Some("wrong-key-000000000"), Some(body.clone())).await,
        401,
        "bad_api_key",
    );
    assert_error(&app.utility("POST", "/api/v1/zones", Some(OBSERVER_KEY), Some(body.clone())).await, 403, "forbidden");
    for path in ["/api/v1/export/readings?zone=test-zone", "/api/v1/reports/test-zone/0"] {
        assert_error(&app.utility("GET", path, None, None).await, 401, "missing_api_key");
    }
    assert_error(
        &app.utility("POST", "/api/v1/webhooks", Some(OBSERVER_KEY), Some(json!({"url": "http://x"}))).await,
        403,
        "forbidden",
    );
    assert_error(&app.utility("GET", "/api/v1/webhooks", None, None).await, 401, "missing_api_key");
    assert_error(&app.utility("GET", "/api/v1/webhooks", Some(OBSERVER_KEY), None).await, 403, "forbidden");
    assert_error(&app.utility("DELETE", "/api/v1/webhooks/0123", Some(OBSERVER_KEY), None).await, 403, "forbidden");
    app.stop().await;
}

/// The test market's tariff as the utility API takes it (retail 0.30, feed-in 0.08, grid fee 0.04
/// per kWh, protocol fee 0.5 %), with time-of-use `bands`.
fn tariff_with_bands(bands: Value) -> Value {
    json!({"effective_from_ms": 0, "retail_price_per_kwh": 300000, "feed_in_price_per_kwh": 80000,
           "grid_fee_per_kwh": 40000, "protocol_fee_bps": 50, "bands": bands})
}

impl TestApp {
    /// Creates zone `zone_id` (`name`) with the utility's key and sets `tariff` as its tariff.
    async fn zone_with_tariff(&self, zone_id: &str, name: &str, tariff: Value) {
        let key = Some(UTILITY_KEY);
        let (status, _) =
            self.utility("POST", "/api/v1/zones", key, Some(json!({"zone_id": zone_id, "name": name}))).await;
        assert_eq!(status, 201);
        let (status, body) = self.utility("PUT", &format!("/api/v1/zones/{zone_id}/tariffs"), key, Some(tariff)).await;
        assert_eq!(status, 200, "{body}");
    }
}

// Time-of-use tariffs (issue 16): the body takes optional bands; the public views show them; an
// overlap is refused with its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utility_sets_time_of_use_bands_and_the_public_tariff_views_show_them() {
    let app = spawn_app().await;
    let key = Some(UTILITY_KEY);
    let peak = json!({"days": 31, "start_minute": 1020, "end_minute": 1260, "retail_price_per_kwh": 450000,
                      "feed_in_price_per_kwh": 100000, "grid_fee_per_kwh": 60000});
    let mut tariff = tariff_with_bands(json!([peak]));
    tariff["utc_offset_minutes"] = json!(60);
    app.zone_with_tariff("tou", "Time of use", tariff).await;
    let (_, tariffs) = app.get("/api/v1/zones/tou/tariffs").await;
    assert_eq!(tariffs[0]["utc_offset_minutes"], 60);
    assert_eq!(tariffs[0]["bands"], json!([peak]));
    let (_, zones) = app.get("/api/v1/zones").await;
    let zone = zones.as_array().expect("array").iter().find(|zone| zone["zone_id"] == "tou").expect("listed").clone();
    assert_eq!(zone["tariff"]["bands"], json!([peak]));

    let overlapping = tariff_with_bands(json!([peak, {"days": 1, "start_minute": 1200, "end_minute": 1440,
                                                      "retail_price_per_kwh": 1, "feed_in_price_per_kwh": 0,
                                                      "grid_fee_per_kwh": 0}]));
    assert_error(
        &app.utility("PUT", "/api/v1/zones/tou/tariffs", key, Some(overlapping)).await,
        400,
        "overlapping_bands",
    );
    let no_days = tariff_with_bands(json!([{"days": 0, "start_minute": 0, "end_minute": 60, "retail_price_per_kwh": 1,
                                            "feed_in_price_per_kwh": 0, "grid_fee_per_kwh": 0}]));
    assert_error(&app.utility("PUT", "/api/v1/zones/tou/tariffs", key, Some(no_days)).await, 400, "invalid_value");
    // The refused bodies left the accepted version as it was.
    let (_, tariffs) = app.get("/api/v1/zones/tou/tariffs").await;
    assert_eq!(tariffs[0]["bands"], json!([peak]));
    app.stop().await;
}

// A slot's book states the band of the time-of-use period it falls in, so an agent quotes inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_slots_book_states_the_time_of_use_band_it_accepts() {
    let app = spawn_app().await;
    // One band over the whole week: every slot is in it, whenever the test runs.
    let always = json!({"days": 127, "start_minute": 0, "end_minute": 1440, "retail_price_per_kwh": 450000,
                        "feed_in_price_per_kwh": 100000, "grid_fee_per_kwh": 60000});
    app.zone_with_tariff("peak", "Always peak", tariff_with_bands(json!([always]))).await;
    let slot = open_slot().start_ms();
    let path = format!("/api/v1/zones/peak/book?slot={slot}&levels=5");
    // On PostgreSQL a new zone is served once an instance has taken its lease (within a renewal).
    wait_until("the new zone has an owner", || async { app.get(&path).await.0 == 200 }).await;
    let (status, book) = app.get(&path).await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["price_band"], json!({"min_per_kwh": 100_000, "max_per_kwh": 450_000}), "{book}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_may_add_a_pv_meter_but_not_a_second_grid_meter_that_would_bill_it_twice() {
    let app = spawn_app().await;
    let key = Some(UTILITY_KEY);
    let alice = account(&app.alice);
    let device = |seed: u8| account(&protocol::testing::signing_key(seed));
    // Alice's grid meter is registered (without a role: a grid meter); her inverter joins as PV.
    let pv = json!({"device_id": device(24), "account_id": alice, "zone": ZONE, "meter_serial": "INV-A",
                    "nameplate_w": 6000, "role": "pv"});
    let (status, body) = app.utility("POST", "/api/v1/devices", key, Some(pv)).await;
    assert_eq!((status, &body["role"]), (201, &json!("pv")), "{body}");
    let second_grid = json!({"device_id": device(25), "account_id": alice, "zone": ZONE, "meter_serial": "SN-A2",
                             "nameplate_w": 6000});
    assert_error(&app.utility("POST", "/api/v1/devices", key, Some(second_grid)).await, 400, "invalid_value");
    let unknown_role = json!({"device_id": device(26), "account_id": alice, "zone": ZONE, "meter_serial": "SN-A3",
                              "nameplate_w": 6000, "role": "meter"});
    assert_error(&app.utility("POST", "/api/v1/devices", key, Some(unknown_role)).await, 400, "invalid_body");
    // Bob's first device, without a role, is his grid meter, and the answer says so.
    let bob_meter = json!({"device_id": device(27), "account_id": account(&app.bob), "zone": ZONE,
                           "meter_serial": "SN-B", "nameplate_w": 6000});
    let (status, body) = app.utility("POST", "/api/v1/devices", key, Some(bob_meter)).await;
    assert_eq!((status, &body["role"]), (201, &json!("grid")), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utility_registers_zones_tariffs_accounts_and_devices() {
    let app = spawn_app().await;
    let key = Some(UTILITY_KEY);
    let (status, _) =
        app.utility("POST", "/api/v1/zones", key, Some(json!({"zone_id": "south", "name": "South"}))).await;
    assert_eq!(status, 201);
    let again = app.utility("POST", "/api/v1/zones", key, Some(json!({"zone_id": "south", "name": "South"}))).await;
    assert_error(&again, 409, "conflict");
    let tariff = json!({"effective_from_ms": 1000, "retail_price_per_kwh": 310000, "feed_in_price_per_kwh": 70000,
                        "grid_fee_per_kwh": 40000, "protocol_fee_bps": 50});
    let (status, _) = app.utility("PUT", "/api/v1/zones/south/tariffs", key, Some(tariff)).await;
    assert_eq!(status, 200);
    let (_, tariffs) = app.get("/api/v1/zones/south/tariffs").await;
    assert_eq!(tariffs[0]["retail_price_per_kwh"], 310_000);
    let carol = account(&protocol::testing::signing_key(21));
    let meter = account(&protocol::testing::signing_key(22));
    let (status, _) = app
        .utility(
            "POST",
            "/api/v1/accounts",
            key,
            Some(json!({"account_id": carol, "display_name": "Carol", "zone": "south"})),
        )
        .await;
    assert_eq!(status, 201);
    let device =
        json!({"device_id": meter, "account_id": carol, "zone": "south", "meter_serial": "SN-C", "nameplate_w": 8000});
    assert_eq!(app.utility("POST", "/api/v1/devices", key, Some(device.clone())).await.0, 201);
    assert_error(&app.utility("POST", "/api/v1/devices", key, Some(device)).await, 409, "conflict");
    let wrong_zone = json!({"device_id": account(&protocol::testing::signing_key(23)), "account_id": carol,
                            "zone": ZONE, "meter_serial": "SN-D", "nameplate_w": 8000});
    assert_error(&app.utility("POST", "/api/v1/devices", key, Some(wrong_zone)).await, 400, "invalid_value");

    // The running exchange serves the new zone at once: Carol's signed order rests in its book.
    let carol_key = protocol::testing::signing_key(21);
    let south = ZoneId::parse("south").expect("a zone id");
    let order = Order {
        account: account(&carol_key),
        zone: south,
        slot: open_slot(),
        side: Side::Sell,
        price_per_kwh: PricePerKwh(150_000),
        qty_wh: Wh(1_000),
        tif: TimeInForce::Gtc,
        post_only: false,
        nonce: 1,
        ts_ms: TimestampMs(now_ms()),
    };
    let body = Signed::sign(order, &carol_key).expect("sign").to_json();
    let (status, ack) = app.signed(&carol_key, "POST", "/api/v1/orders", &body, now_ms()).await;
    assert_eq!(status, 201, "{ack}");
    let slot = open_slot().start_ms();
    let (status, book) = app.get(&format!("/api/v1/zones/south/book?slot={slot}&levels=5")).await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["asks"][0], json!({"price_per_kwh": 150_000, "qty_wh": 1_000, "orders": 1}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_utility_bodies_are_refused() {
    let app = spawn_app().await;
    let send = |body: Vec<u8>| {
        app.client
            .post(app.url("/api/v1/zones"))
            .bearer_auth(UTILITY_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let malformed = send(b"{\"zone_id\": ".to_vec()).await.expect("request");
    assert_eq!(malformed.status().as_u16(), 400);
    assert_eq!(malformed.json::<Value>().await.expect("json")["error"], "malformed_json");
    let unknown = send(br#"{"zone_id":"x","name":"X","extra":1}"#.to_vec()).await.expect("request");
    assert_eq!(unknown.json::<Value>().await.expect("json")["error"], "invalid_body");
    let bad_zone = send(br#"{"zone_id":"NO/PE","name":"X"}"#.to_vec()).await.expect("request");
    assert_eq!(bad_zone.status().as_u16(), 400);
    let oversized = send(vec![b' '; 17 * 1024]).await.expect("request");
    assert_eq!(oversized.status().as_u16(), 413);
    assert_eq!(oversized.json::<Value>().await.expect("json")["error"], "too_large");
    let bad_tariff = json!({"effective_from_ms": 0, "retail_price_per_kwh": 1, "feed_in_price_per_kwh": 1,
                            "grid_fee_per_kwh": 1, "protocol_fee_bps": 20000});
    assert_error(
        &app.utility("PUT", "/api/v1/zones/test-zone/tariffs", Some(UTILITY_KEY), Some(bad_tariff)).await,
        400,
        "invalid_value",
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_order_rests_in_the_book_and_in_the_traders_open_orders() {
    let app = spawn_app().await;
    let slot = open_slot().start_ms();
    // Before any order, the open slot's book is there and empty (not "not found").
    let (status, empty) = app.get(&format!("/api/v1/zones/{ZONE}/book?slot={slot}&levels=5")).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!((&empty["state"], &empty["bids"], &empty["asks"]), (&json!("open"), &json!([]), &json!([])), "{empty}");
    // It states the prices it accepts: the test tariff's feed-in to retail.
    assert_eq!(empty["price_band"], json!({"min_per_kwh": 80_000, "max_per_kwh": 300_000}), "{empty}");
    // A slot whose gate has closed (and that never had a book) is not found.
    let past = open_slot().start_ms() - 4 * SLOT_LEN_MS;
    let (status, gone) = app.get(&format!("/api/v1/zones/{ZONE}/book?slot={past}&levels=5")).await;
    assert_eq!(status, 404, "{gone}");
    let (status, ack) = app.place(&app.alice, Side::Sell, 150_000, 2_000).await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["status"], "accepted");
    let (status, book) = app.get(&format!("/api/v1/zones/{ZONE}/book?slot={slot}&levels=5")).await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["asks"][0], json!({"price_per_kwh": 150_000, "qty_wh": 2_000, "orders": 1}));
    let (status, slots) = app.get(&format!("/api/v1/zones/{ZONE}/slots")).await;
    assert_eq!(status, 200);
    let listed = slots.as_array().expect("array").iter().find(|s| s["slot"] == slot).expect("the slot is listed");
    assert_eq!(listed["best_ask"], 150_000);
    let (status, mine) = app.trader_get(&app.alice, "/api/v1/me/orders").await;
    assert_eq!(status, 200);
    assert_eq!(mine.as_array().expect("array").len(), 1);
    let (_, theirs) = app.trader_get(&app.bob, "/api/v1/me/orders").await;
    assert_eq!(theirs, json!([]), "bob does not see alice's orders");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_orders_show_side_time_in_force_and_open_and_filled_energy() {
    let app = spawn_app().await;
    let (status, sell) = app.place(&app.alice, Side::Sell, 150_000, 2_000).await;
    assert_eq!(status, 201, "{sell}");
    let body = app.order_with(&app.alice, Side::Buy, 100_000, 700, TimeInForce::Gtc, true);
    let (status, buy) = app.signed(&app.alice, "POST", "/api/v1/orders", &body, now_ms()).await;
    assert_eq!(status, 201, "{buy}");
    // Bob takes 500 Wh of Alice's sell order.
    assert_eq!(app.place(&app.bob, Side::Buy, 160_000, 500).await.0, 201);

    let (status, mine) = app.trader_get(&app.alice, "/api/v1/me/orders").await;
    assert_eq!(status, 200, "{mine}");
    let by_nonce = |nonce: &Value| {
        mine.as_array().expect("array").iter().find(|order| order["order_nonce"] == *nonce).cloned().expect("listed")
    };
    let sell = by_nonce(&sell["order_nonce"]);
    assert_eq!(sell["side"], "sell", "{sell}");
    assert_eq!(sell["tif"], "gtc");
    assert_eq!(sell["post_only"], false);
    assert_eq!(sell["status"], "open");
    assert_eq!(sell["open_qty_wh"], 1_500);
    assert_eq!(sell["filled_qty_wh"], 500);
    assert_eq!(sell["slot"], open_slot().start_ms());
    assert!(sell["placed_ms"].as_i64().expect("placed_ms") > 0, "{sell}");
    let buy = by_nonce(&buy["order_nonce"]);
    assert_eq!(buy["side"], "buy", "{buy}");
    assert_eq!(buy["post_only"], true);
    assert_eq!((buy["open_qty_wh"].as_i64(), buy["filled_qty_wh"].as_i64()), (Some(700), Some(0)));

    // The OpenAPI document describes what the endpoint returns.
    let (_, document) = app.get("/api/v1/openapi.json").await;
    let schema =
        &document["paths"]["/api/v1/me/orders"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(schema["items"]["$ref"], "#/components/schemas/OpenOrder", "{schema}");
    let properties = &document["components"]["schemas"]["OpenOrder"]["properties"];
    for field in sell.as_object().expect("object").keys() {
        assert!(properties.get(field).is_some(), "OpenOrder does not document {field}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_orders_trade_and_show_in_trades_and_prices() {
    let app = spawn_app().await;
    let (status, sell) = app.place(&app.alice, Side::Sell, 150_000, 2_000).await;
    assert_eq!((status, &sell["outcome"]), (201, &json!("resting")), "a new order is created: {sell}");
    let (status, ack) = app.place(&app.bob, Side::Buy, 160_000, 500).await;
    assert_eq!((status, &ack["outcome"]), (201, &json!("filled")), "{ack}");
    assert_eq!(ack["trades"][0]["price_per_kwh"], 150_000);
    // The rest of Alice's sell is cancelled: 200 (an existing order changed), with where it stands.
    let cancel = protocol::Cancel {
        account: account(&app.alice),
        zone: zone(),
        slot: open_slot(),
        order_nonce: sell["order_nonce"].as_u64().expect("the order's nonce"),
        nonce: app.nonce.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        ts_ms: TimestampMs(now_ms()),
    };
    let body = Signed::sign(cancel, &app.alice).expect("sign").to_json();
    let (status, cancelled) = app.signed(&app.alice, "POST", "/api/v1/orders", &body, now_ms()).await;
    assert_eq!((status, &cancelled["outcome"]), (200, &json!("cancelled")), "{cancelled}");
    assert_eq!(cancelled["updates"][0]["filled_qty_wh"], 500, "{cancelled}");
    let (_, trades) = app.get(&format!("/api/v1/zones/{ZONE}/trades?limit=10")).await;
    assert_eq!(trades[0]["qty_wh"], 500);
    assert_eq!(trades[0]["seller"], account(&app.alice).to_hex());
    let (_, prices) = app.get(&format!("/api/v1/zones/{ZONE}/prices")).await;
    assert_eq!(prices[0]["slot"], open_slot().start_ms());
    assert_eq!(prices[0]["volume_wh"], 500);
    assert_error(&app.get(&format!("/api/v1/zones/{ZONE}/trades?limit=0")).await, 400, "invalid_query");
    assert_error(
        &app.get(&format!("/api/v1/zones/{ZONE}/prices?from_ms=0&to_ms=999999999999")).await,
        400,
        "range_too_long",
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trader_requests_without_a_valid_signature_are_refused() {
    let app = spawn_app().await;
    assert_error(&app.get("/api/v1/me/orders").await, 401, "missing_signature");
    assert_error(
        &app.signed(&app.alice, "GET", "/api/v1/me/orders", b"", now_ms() - 120_000).await,
        401,
        "timestamp_too_old",
    );
    assert_error(
        &app.signed(&app.alice, "GET", "/api/v1/me/orders", b"", now_ms() + 120_000).await,
        401,
        "timestamp_in_future",
    );
    // Signed for one path, sent to another.
    let mut request = app.client.get(app.url("/api/v1/me/balances"));
    for (name, value) in sign_request(&app.alice, "GET", "/api/v1/me/orders", b"", now_ms()) {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status().as_u16(), 401);
    // Bob claims to be Alice: his signature does not verify under her key.
    let mut request = app.client.get(app.url("/api/v1/me/orders"));
    for (name, value) in sign_request(&app.bob, "GET", "/api/v1/me/orders", b"", now_ms()) {
        let value = if name == web::auth::HEADER_ACCOUNT { account(&app.alice).to_hex() } else { value };
        request = request.header(name, value);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.json::<Value>().await.expect("json")["error"], "bad_signature");
    // An unregistered key.
    let stranger = protocol::testing::signing_key(99);
    assert_error(&app.trader_get(&stranger, "/api/v1/me/orders").await, 401, "unknown_key");
    for path in
        ["/api/v1/me/readings", "/api/v1/me/statements", "/api/v1/me/balances", "/api/v1/me/statements/test-zone/0"]
    {
        assert_error(&app.get(path).await, 401, "missing_signature");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_malformed_and_oversized_orders_are_refused() {
    let app = spawn_app().await;
    // An order of Alice's, submitted in a request signed by Bob.
    let alices_order = app.order(&app.alice, Side::Sell, 150_000, 1_000);
    assert_error(&app.signed(&app.bob, "POST", "/api/v1/orders", &alices_order, now_ms()).await, 403, "forbidden");
    // Alice's order with a field changed after signing.
    let text = String::from_utf8(alices_order).expect("utf-8").replace("\"qty_wh\":1000", "\"qty_wh\":9000");
    assert_error(
        &app.signed(&app.alice, "POST", "/api/v1/orders", text.as_bytes(), now_ms()).await,
        401,
        "bad_signature",
    );
    assert_error(
        &app.signed(&app.alice, "POST", "/api/v1/orders", b"{\"type\":", now_ms()).await,
        400,
        "malformed_json",
    );
    let float = br#"{"type":"order","price_per_kwh":1.5}"#;
    assert_error(&app.signed(&app.alice, "POST", "/api/v1/orders", float, now_ms()).await, 400, "float_not_allowed");
    let big = vec![b' '; 20 * 1024];
    assert_error(&app.signed(&app.alice, "POST", "/api/v1/orders", &big, now_ms()).await, 413, "too_large");
    // A price outside the tariff band is the exchange's rejection, passed through with its reason.
    let (status, body) = app.place(&app.alice, Side::Sell, 900_000, 1_000).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("price_out_of_band")), "{body}");
    // The refusal says the band (the seeded tariff's feed-in 80 000 to retail 300 000 on the tick).
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("price band is 80000..=300000"), "the refusal does not say the band: {body}");
    app.stop().await;
}

async fn insert_reading(app: &TestApp, seq: i64, ts: i64, import: i64, export: i64) {
    let device = account(&app.alice_device).to_hex();
    app.state
        .db
        .write(move |conn| {
            use diesel::prelude::*;
            use gridex_store::schema::readings as r;
            diesel::insert_into(r::table)
                .values((
                    r::device_id.eq(device),
                    r::seq.eq(seq),
                    r::ts_ms.eq(ts),
                    r::import_wh.eq(import),
                    r::export_wh.eq(export),
                    r::pv_wh.eq(Some(export * 2)),
                    r::power_w.eq(-500_i64),
                    r::received_ms.eq(ts),
                    r::payload.eq("{}"),
                ))
                .execute(conn)
                .map_err(gridex_store::DbError::from)
        })
        .await
        .expect("insert a reading");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_interval_data_for_their_owner_and_csv_for_the_utility() {
    let app = spawn_app().await;
    let base = now_ms() - 600_000;
    insert_reading(&app, 1, base, 1_000, 500).await;
    insert_reading(&app, 2, base + 60_000, 1_010, 540).await;
    let (status, rows) = app.trader_get(&app.alice, "/api/v1/me/readings").await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows.as_array().expect("array").len(), 2);
    assert_eq!(rows[1]["interval_import_wh"], 10);
    assert_eq!(rows[1]["interval_export_wh"], 40);
    let (_, bobs) = app.trader_get(&app.bob, "/api/v1/me/readings").await;
    assert_eq!(bobs, json!([]), "bob does not see alice's readings");
    let csv = app
        .client
        .get(app.url(&format!("/api/v1/export/readings?zone={ZONE}")))
        .bearer_auth(UTILITY_KEY)
        .send()
        .await
        .expect("export");
    assert_eq!(csv.status().as_u16(), 200);
    assert!(csv.headers()["content-type"].to_str().expect("ascii").starts_with("text/csv"));
    let text = csv.text().await.expect("text");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().nth(2).expect("second row").ends_with(",10,40"), "{text}");
    let both = app.utility("GET", "/api/v1/export/readings?zone=test-zone&device=ab", Some(UTILITY_KEY), None).await;
    assert_error(&both, 400, "invalid_query");
    app.stop().await;
}

async fn read_event(response: &mut reqwest::Response, name: &str) -> Value {
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("stream open");
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(rest) = frame.strip_prefix(&format!("event: {name}\ndata: ")) {
                return serde_json::from_str(rest.trim_end()).expect("event data is JSON");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_streams_trades_books_and_settlements_of_its_zone() {
    let app = spawn_app().await;
    assert_error(&app.get("/api/v1/stream").await, 400, "invalid_query");
    assert_error(&app.get("/api/v1/stream?zone=nowhere").await, 404, "unknown_zone");
    let mut stream = app.client.get(app.url(&format!("/api/v1/stream?zone={ZONE}"))).send().await.expect("stream");
    assert_eq!(stream.status().as_u16(), 200);
    assert!(stream.headers()["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
    assert_eq!(app.place(&app.alice, Side::Sell, 150_000, 2_000).await.0, 201);
    let book = read_event(&mut stream, "book").await;
    assert_eq!(book["zone"], ZONE);
    assert_eq!(app.place(&app.bob, Side::Buy, 150_000, 700).await.0, 201);
    let trade = read_event(&mut stream, "trade").await;
    assert_eq!(trade["qty_wh"], 700);
    // Both carry the operator's signature, which verifies against the pinned key (PROTOCOL.md §2.1).
    let pinned = protocol::testing::operator_key().verifying_key().to_bytes();
    let book = serde_json::to_vec(&book).expect("JSON");
    Signed::<protocol::BookSnapshot>::parse(&book).expect("a signed book").verify_operator(&pinned).expect("verifies");
    let trade = serde_json::to_vec(&trade).expect("JSON");
    Signed::<protocol::Trade>::parse(&trade).expect("a signed trade").verify_operator(&pinned).expect("verifies");
    app.state.publish(LiveEvent::Settlement(SlotSettled {
        zone: zone(),
        slot: open_slot(),
        root: "ab".repeat(32),
        statements: 2,
    }));
    let settled = read_event(&mut stream, "settlement").await;
    assert_eq!(settled["statements"], 2);
    drop(stream);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_updates_reach_only_their_traders_stream() {
    let app = spawn_app().await;
    let path = format!("/api/v1/stream?zone={ZONE}");
    let mut request = app.client.get(app.url(&path));
    for (name, value) in sign_request(&app.alice, "GET", &path, b"", now_ms()) {
        request = request.header(name, value);
    }
    let mut alices = request.send().await.expect("stream");
    assert_eq!(alices.status().as_u16(), 200);
    assert_eq!(app.place(&app.bob, Side::Buy, 100_000, 100).await.0, 201);
    assert_eq!(app.place(&app.alice, Side::Sell, 200_000, 100).await.0, 201);
    let update = read_event(&mut alices, "order_update").await;
    assert_eq!(update["account"], account(&app.alice).to_hex(), "bob's update was not sent to alice");
    drop(alices);
    app.stop().await;
}

/// Settles the zone's next slot (really, through settlement) and announces it on the live feed, as
/// the running server does. Returns the announced slot.
async fn settle_next_slot(app: &TestApp, announce: bool) -> SlotSettled {
    let settled = settle_next_slot_in(&app.state.db).await;
    if announce {
        app.state.publish(LiveEvent::Settlement(settled.clone()));
    }
    settled
}

async fn settle_next_slot_in(db: &gridex_store::Database) -> SlotSettled {
    let config = settlement::SettlementConfig::new(protocol::testing::signing_key(50));
    let outcome = settlement::registry::write(db, move |conn| {
        let zone = settlement::registry::zone(conn, &zone())?.expect("the test zone");
        let slot = settlement::close::next_slot(conn, &zone)?;
        settlement::close_slot(conn, &zone.zone_id, slot, &config, now_ms() + 30 * 86_400_000)
    })
    .await
    .expect("the slot settles");
    let settlement::SlotOutcome::Settled(settled) = outcome else { panic!("a new slot was settled") };
    SlotSettled { zone: settled.zone, slot: settled.slot, root: settled.root, statements: settled.statements }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_slot_is_posted_to_webhooks_signed_and_retried_until_acknowledged() {
    let app = spawn_app().await;
    let (url, mut received) = common::webhook_receiver(1).await;
    let (status, created) = app.utility("POST", "/api/v1/webhooks", Some(UTILITY_KEY), Some(json!({"url": url}))).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert_error(
        &app.utility("POST", "/api/v1/webhooks", Some(UTILITY_KEY), Some(json!({"url": "ftp://x"}))).await,
        400,
        "invalid_value",
    );
    let settled = settle_next_slot(&app, true).await;
    let wait = Duration::from_secs(10);
    let first = tokio::time::timeout(wait, received.recv()).await.expect("first POST").expect("open");
    let second = tokio::time::timeout(wait, received.recv()).await.expect("retry").expect("open");
    assert_eq!(first.body, second.body, "a retry sends the same body");
    assert_eq!((first.attempt.as_str(), second.attempt.as_str()), ("1", "2"));
    assert_signed(&secret, &first);
    assert_signed(&secret, &second);
    let body: Value = serde_json::from_str(&second.body).expect("JSON body");
    assert_eq!(body["event"], "slot_settled");
    assert_eq!(body["data"]["root"], settled.root.as_str());
    assert_eq!(body["data"]["slot"], settled.slot.start_ms());
    // Announcing the slot again (or a lagging feed catching up) delivers nothing twice.
    app.state.publish(LiveEvent::Settlement(settled));
    // Acknowledged: the outbox empties (the dispatcher removes the delivery once the receiver's
    // answer is in, a moment after the POST arrived), and no third attempt follows.
    wait_until("the acknowledged delivery leaves the outbox", || async {
        app.state.webhooks.pending().await.expect("count") == 0
    })
    .await;
    assert!(tokio::time::timeout(Duration::from_millis(500), received.recv()).await.is_err());
    app.stop().await;
}

/// The delivery passes the receiver's documented check (each attempt is signed at its own time).
fn assert_signed(secret: &str, received: &common::Delivery) {
    let now_s = now_ms() / 1_000;
    let tolerance_s = web::webhooks::SIGNATURE_TOLERANCE_S;
    let checked =
        web::webhooks::verify_signature(secret, &received.signature, received.body.as_bytes(), now_s, tolerance_s);
    assert_eq!(checked, Ok(()), "{received:?}");
}

/// The attempts recorded for the deliveries in the outbox.
async fn outbox_attempts(app: &TestApp) -> Vec<i64> {
    app.state
        .db
        .run(|conn| {
            use diesel::prelude::*;
            use gridex_store::schema::webhook_deliveries as d;
            d::table.select(d::attempts).load(conn).map_err(gridex_store::DbError::from)
        })
        .await
        .expect("read the outbox")
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_survives_a_restart_and_arrives_signed_afterwards() {
    // Two seconds before the retry: time enough to restart before it is due.
    let slow_retry = WebhookSettings { backoff_initial_ms: 2_000, ..Default::default() };
    let app = spawn_app_on(TestDb::any(), true, slow_retry.clone()).await;
    let (url, mut received) = common::webhook_receiver(1).await;
    let (status, created) = app.utility("POST", "/api/v1/webhooks", Some(UTILITY_KEY), Some(json!({"url": url}))).await;
    assert_eq!(status, 201, "{created}");
    let (id, secret) = (created["id"].clone(), created["secret"].as_str().expect("secret").to_owned());
    settle_next_slot(&app, true).await;
    let wait = Duration::from_secs(10);
    let first = tokio::time::timeout(wait, received.recv()).await.expect("first POST").expect("open");
    assert_eq!(first.attempt, "1");
    wait_until("the failure is recorded", || async { outbox_attempts(&app).await == vec![1] }).await;

    let app = app.restart(slow_retry).await;
    let (status, listed) = app.utility("GET", "/api/v1/webhooks", Some(UTILITY_KEY), None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["id"], id, "the registration survived the restart");
    assert_eq!(listed[0]["url"], url);
    assert!(listed[0].get("secret").is_none(), "a listing never shows the secret");
    let second = tokio::time::timeout(wait, received.recv()).await.expect("the retry after the restart").expect("open");
    assert_eq!(second.attempt, "2", "the attempt count survived the restart");
    assert_eq!(second.body, first.body);
    assert_signed(&secret, &second);
    wait_until("the acknowledged delivery leaves the outbox", || async { outbox_attempts(&app).await.is_empty() })
        .await;

    let path = format!("/api/v1/webhooks/{}", id.as_str().expect("id"));
    assert_eq!(app.utility("DELETE", &path, Some(UTILITY_KEY), None).await.0, 204);
    assert_error(&app.utility("DELETE", &path, Some(UTILITY_KEY), None).await, 404, "unknown_webhook");
    assert_eq!(app.utility("GET", "/api/v1/webhooks", Some(UTILITY_KEY), None).await.1, json!([]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_settled_while_the_web_server_was_down_is_delivered_after_it_restarts() {
    let app = spawn_app_on(TestDb::any(), true, WebhookSettings { backoff_initial_ms: 20, ..Default::default() }).await;
    let (url, mut received) = common::webhook_receiver(1).await;
    let (status, created) = app.utility("POST", "/api/v1/webhooks", Some(UTILITY_KEY), Some(json!({"url": url}))).await;
    assert_eq!(status, 201, "{created}");
    let db = app.stop_keeping_database().await;
    // Settled with nobody to announce it (the crash window between settlement and the outbox).
    let settled = settle_next_slot_in(&db.db).await;
    let app = spawn_app_on(db, false, WebhookSettings { backoff_initial_ms: 20, ..Default::default() }).await;
    let wait = Duration::from_secs(10);
    let delivery = tokio::time::timeout(wait, received.recv()).await.expect("a POST after the restart").expect("open");
    let body: Value = serde_json::from_str(&delivery.body).expect("JSON body");
    assert_eq!(body["data"]["slot"], settled.slot.start_ms());
    assert_eq!(body["data"]["root"], settled.root.as_str());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_webhook_drops_its_pending_deliveries_and_stops_the_retries() {
    let app = spawn_app().await;
    // A port nobody listens on: every attempt fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let url = format!("http://{dead}/hook");
    let (status, created) = app.utility("POST", "/api/v1/webhooks", Some(UTILITY_KEY), Some(json!({"url": url}))).await;
    assert_eq!(status, 201, "{created}");
    settle_next_slot(&app, true).await;
    // Retried past the old limit of 8 attempts would take 20 ms × 2^8: just see it keep going.
    wait_until("two failed attempts", || async { outbox_attempts(&app).await.first().is_some_and(|n| *n >= 2) }).await;
    let (_, listed) = app.utility("GET", "/api/v1/webhooks", Some(UTILITY_KEY), None).await;
    assert_eq!(listed[0]["pending_deliveries"], 1, "{listed}");
    let path = format!("/api/v1/webhooks/{}", created["id"].as_str().expect("id"));
    assert_eq!(app.utility("DELETE", &path, Some(UTILITY_KEY), None).await.0, 204);
    assert_eq!(app.state.webhooks.pending().await.expect("count"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_slots_give_statements_with_proofs_balances_reports_and_tokens() {
    let app = spawn_app().await;
    let slot = open_slot().start_ms();
    let report_path = format!("/api/v1/reports/{ZONE}/{slot}");
    assert_error(&app.utility("GET", &report_path, Some(UTILITY_KEY), None).await, 404, "slot_not_settled");
    assert_eq!(app.place(&app.alice, Side::Sell, 150_000, 2_000).await.0, 201);
    assert_eq!(app.place(&app.bob, Side::Buy, 150_000, 1_000).await.0, 201);
    // Settle everything up to two hours from now, as the settlement loop would then.
    let config = settlement::SettlementConfig::new(protocol::testing::signing_key(50));
    let closed =
        settlement::service::close_due(&app.state.db, &config, now_ms() + 2 * 3_600_000).await.expect("settle");
    assert!(closed.iter().any(|settled| settled.slot.start_ms() == slot), "the traded slot was settled");

    let (status, statements) = app.trader_get(&app.alice, "/api/v1/me/statements?limit=50").await;
    assert_eq!(status, 200, "{statements}");
    let mine = statements.as_array().expect("array");
    assert!(mine.iter().all(|statement| statement["account"] == account(&app.alice).to_hex()));
    let traded = mine.iter().find(|statement| statement["slot"] == slot).expect("a statement for the traded slot");
    assert_eq!(traded["sold_wh"], 1_000);
    let (status, proof) = app.trader_get(&app.alice, &format!("/api/v1/me/statements/{ZONE}/{slot}")).await;
    assert_eq!(status, 200, "{proof}");
    assert_eq!(proof["statement"]["account"], account(&app.alice).to_hex());
    assert_eq!(proof["root"].as_str().expect("root").len(), 64);
    // The slot's root is public, as the operator signed it, and verifies against the pinned key.
    let root = app.client.get(app.url(&format!("/api/v1/zones/{ZONE}/roots/{slot}"))).send().await.expect("root");
    assert_eq!(root.status().as_u16(), 200);
    let signed = Signed::<protocol::SlotRoot>::parse(&root.bytes().await.expect("body")).expect("a slot_root");
    signed.verify_operator(&config.operator_key.verifying_key().to_bytes()).expect("signed by the operator");
    assert_eq!(signed.message.root, proof["root"].as_str().expect("root"));
    let stranger_slot = slot + 24 * 3_600_000;
    assert_error(&app.get(&format!("/api/v1/zones/{ZONE}/roots/{stranger_slot}")).await, 404, "slot_not_settled");
    assert_error(
        &app.trader_get(&app.alice, &format!("/api/v1/me/statements/{ZONE}/{stranger_slot}")).await,
        404,
        "statement_not_found",
    );
    let (status, balances) = app.trader_get(&app.alice, "/api/v1/me/balances").await;
    assert_eq!(status, 200, "{balances}");
    assert_eq!(balances["account"], account(&app.alice).to_hex());

    let (status, report) = app.utility("GET", &report_path, Some(UTILITY_KEY), None).await;
    assert_eq!(status, 200, "{report}");
    assert!(report["statements"].as_array().expect("statements").len() >= 2);
    let csv = app
        .client
        .get(app.url(&format!("{report_path}?format=csv")))
        .bearer_auth(UTILITY_KEY)
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.status().as_u16(), 200);
    let text = csv.text().await.expect("text");
    assert!(text.starts_with("zone,slot,account,") && text.lines().count() >= 3, "{text}");
    assert_error(
        &app.utility("GET", &format!("{report_path}?format=xml"), Some(UTILITY_KEY), None).await,
        400,
        "invalid_query",
    );

    let (status, stats) = app.get(&format!("/api/v1/zones/{ZONE}/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert!(stats["settled_slots"].as_i64().expect("count") >= 1);
    let (status, tokens) = app.get("/api/v1/tokens").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["max_supply"], 21_000_000_000_000_i64);
    assert_eq!(tokens["emission_per_epoch"], 1_000_000_000, "{tokens}");
    assert!(tokens["supply"].as_i64().expect("supply") >= 0, "{tokens}");
    app.stop().await;
}

/// Starts `gridex demo --homes 3` as a new user would, waits for trades and a settled slot with
/// token rewards, then stops it with SIGINT and expects a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_trades_and_a_settled_slot_with_rewards_and_stops_cleanly_on_sigint() {
    const DEADLINE: Duration = Duration::from_secs(120);
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gridex"))
        .args(["demo", "--homes", "3", "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("gridex starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let (mut traded, mut settled) = (false, false);
    while started.elapsed() < DEADLINE && !(traded && settled) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(response) = client.get(format!("{base}/api/v1/zones/demo/trades?limit=5")).send().await {
            traded =
                response.json::<Value>().await.map(|t| t.as_array().is_some_and(|t| !t.is_empty())).unwrap_or(false);
        }
        if let Ok(response) = client.get(format!("{base}/api/v1/zones/demo/stats")).send().await {
            let stats: Value = response.json().await.unwrap_or(Value::Null);
            settled =
                stats["settled_slots"].as_i64().unwrap_or(0) >= 1 && stats["tokens_emitted"].as_i64().unwrap_or(0) > 0;
        }
    }
    assert!(traded, "no trade within {DEADLINE:?}");
    assert!(settled, "no settled slot with token rewards within {DEADLINE:?}");
    let households: Value = client
        .get(format!("{base}/api/v1/demo/households"))
        .send()
        .await
        .expect("households")
        .json()
        .await
        .expect("json");
    assert_eq!(households.as_array().expect("array").len(), 3);
    let tokens: Value =
        client.get(format!("{base}/api/v1/tokens")).send().await.expect("tokens").json().await.expect("json");
    assert!(tokens["supply"].as_i64().expect("supply") > 0, "{tokens}");
    let (status, _) = {
        let response = client.get(format!("{base}/")).send().await.expect("dashboard");
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 200);

    let pid = child.id().expect("running").to_string();
    let signalled = std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
    assert!(signalled.success());
    let exit =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits within 30 s").expect("wait");
    assert!(exit.success(), "gridex demo exited with {exit}");
}

#[test]
fn admin_subcommands_register_a_market_and_report_errors_in_one_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key_path = |name: &str| dir.path().join(name).display().to_string();
    let (account, _device) = common::gridex_home(dir.path(), "SN1", "9000");
    assert_eq!(account.len(), 64);
    common::gridex_ok(
        dir.path(),
        &["tariff", "set", "--zone", "north", "--retail", "300000", "--feed-in", "80000", "--grid-fee", "40000"],
    );
    let again = common::gridex(dir.path(), &["zone", "create", "--id", "north", "--name", "North"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8(again.stderr).expect("utf-8");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    let overwrite = common::gridex(dir.path(), &["keygen", "--key", &key_path("a.key")]);
    assert!(!overwrite.status.success(), "keygen never overwrites a key");
}

/// An embedded broker whose listeners accept only `user`/`password`; returns its TLS port.
/// (rumqttd cannot be stopped; its thread ends with the test process.)
fn start_tls_broker(certificates: &gridex_test_support::certs::TestCertificates, user: &str, password: &str) -> u16 {
    let tls = rumqttd::TlsConfig::Rustls {
        capath: None,
        certpath: certificates.server_cert.display().to_string(),
        keypath: certificates.server_key.display().to_string(),
    };
    gridex_test_support::broker::embedded_broker_with_tls(tls, Some((user, password))).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_settings_connect_the_exchange_over_mqtts_with_a_ca_file_and_a_login() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let Some(certificates) = gridex_test_support::certs::make(dir.path()) else { return };
    let port = start_tls_broker(&certificates, "exchange", "s3cret-password");
    let test_db = TestDb::any();
    let (alice, bob, device) =
        (protocol::testing::signing_key(11), protocol::testing::signing_key(12), protocol::testing::signing_key(13));
    seed_registry(&test_db.db, account(&alice), account(&bob), device.verifying_key()).await;
    let connect = |password: &str| {
        let settings = web::settings::MqttSettings {
            url: Some(Secret::new(format!("mqtts://localhost:{port}"))),
            username: Some("exchange".to_owned()),
            password: Some(Secret::new(password)),
            ca_file: Some(certificates.ca.display().to_string()),
            client_id: None,
        };
        web::broker::mqtt_options(&settings).expect("valid settings").expect("a broker")
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let start = |options| {
        exchange::service::start(
            exchange::config::ExchangeConfig::new(protocol::testing::operator_key()),
            test_db.db.clone(),
            clock.clone(),
            Some(options),
        )
    };

    // A wrong password: the broker refuses the login, so the exchange never subscribes.
    let refused = start(connect("wrong-password")).await.expect("the exchange starts");
    assert!(tokio::time::timeout(Duration::from_secs(2), refused.mqtt_subscribed()).await.is_err());
    refused.shutdown().await;

    let exchange = start(connect("s3cret-password")).await.expect("the exchange starts");
    tokio::time::timeout(Duration::from_secs(10), exchange.mqtt_subscribed())
        .await
        .expect("the exchange subscribes over TLS, trusting the CA file");
    exchange.shutdown().await;
}
