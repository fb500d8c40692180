//! Home batteries through the API (issue 15): a real server on port 0, a fresh database and the real
//! exchange, which stores version 2 readings submitted to it (its direct path parses a reading on
//! the version its own fields say). A household reads its battery per slot and what it earned
//! (`/me/battery`) and sees the battery in its readings (`/me/readings`); the zone's utility reads
//! the zone's storage (`/zones/{zone}/storage`).

mod common;

use common::{OBSERVER_KEY, UTILITY_KEY};
use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::testing::grid_reading;
use protocol::{AccountId, DeviceId, MeterSerial, Reading, Signed, Wh, ZoneId};
use serde_json::{json, Value};
use web::application::Application;
use web::settings::Settings;

const ZONE: &str = "battery-zone";
const SLOT_LEN_MS: i64 = 900_000;
/// The test market's tariff (`common::seed_zone_market`).
const RETAIL: i64 = 300_000;
const FEED_IN: i64 = 80_000;

struct TestApp {
    app: Application,
    client: reqwest::Client,
    alice: SigningKey,
    bob: SigningKey,
    device: SigningKey,
    _db: TestDb,
}

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("valid zone")
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

async fn spawn_app() -> TestApp {
    let test_db = TestDb::any();
    let (alice, bob, device) =
        (protocol::testing::signing_key(61), protocol::testing::signing_key(62), protocol::testing::signing_key(63));
    let (alice_id, bob_id, device_id) =
        (account(&alice), account(&bob), DeviceId::from_verifying_key(&device.verifying_key()));
    settlement::registry::write(&test_db.db, move |conn| {
        common::seed_zone_market(conn, &zone(), "Battery zone", SLOT_LEN_MS, SystemClock.now_ms())?;
        web::registry::register_account(conn, &alice_id, "Alice", &zone(), 0)?;
        web::registry::register_account(conn, &bob_id, "Bob", &zone(), 0)?;
        let device = web::registry::NewDevice {
            device_id,
            account_id: alice_id,
            zone: zone(),
            meter_serial: MeterSerial::parse("SN-B").expect("valid"),
            nameplate_w: 10_000,
        };
        web::registry::register_device(conn, &device, 0)
    })
    .await
    .expect("seed the registry");
    let settings = Settings { api_keys: common::api_keys(ZONE), ..Settings::default() };
    let app = common::start_app(settings, &test_db.db).await;
    TestApp { app, client: reqwest::Client::new(), alice, bob, device, _db: test_db }
}

impl TestApp {
    async fn trader_get(&self, key: &SigningKey, path: &str) -> (u16, Value) {
        let request = common::signed(&self.client, &self.app.url(), key, ("GET", path, b""), SystemClock.now_ms());
        common::json_answer(request).await
    }

    async fn utility_get(&self, key: Option<&str>, path: &str) -> (u16, Value) {
        common::json_answer(common::with_api_key(&self.client, &self.app.url(), ("GET", path), key, None)).await
    }

    /// A version 2 reading of Alice's device, stored by the exchange (its direct path).
    async fn reading(&self, seq: u64, ts_ms: i64, grid: (i64, i64), battery: (i64, i64, u16)) {
        let (import_wh, export_wh) = grid;
        let (charge_wh, discharge_wh, soc_permille) = battery;
        let serial = MeterSerial::parse("SN-B").expect("valid");
        let reading = Reading {
            battery_charge_wh: Some(Wh(charge_wh)),
            battery_discharge_wh: Some(Wh(discharge_wh)),
            battery_soc_permille: Some(soc_permille),
            battery_capacity_wh: Some(Wh(10_000)),
            ..grid_reading(&self.device, zone(), serial, seq, ts_ms, import_wh, export_wh)
        };
        let bytes = Signed::sign(reading, &self.device).expect("signs").to_json();
        self.app.exchange().submit_reading(bytes).await.expect("the exchange stores the reading");
    }
}

/// Two slots that have ended: slot A (the house imported 200 Wh while its battery discharged
/// 500 Wh) and slot B (it exported 300 Wh while its battery charged 800 Wh). Returns A's start.
async fn two_slots_of_a_battery(app: &TestApp) -> i64 {
    let now = SystemClock.now_ms();
    let a = now.div_euclid(SLOT_LEN_MS) * SLOT_LEN_MS - 2 * SLOT_LEN_MS;
    app.reading(1, a, (1_000, 0), (100, 50, 500)).await;
    app.reading(2, a + SLOT_LEN_MS, (1_200, 0), (100, 550, 450)).await;
    app.reading(3, a + 2 * SLOT_LEN_MS, (1_200, 300), (900, 550, 530)).await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_sees_its_battery_per_slot_and_what_it_earned() {
    let app = spawn_app().await;
    let a = two_slots_of_a_battery(&app).await;
    let path = format!("/api/v1/me/battery?from_ms={a}&to_ms={}", a + 2 * SLOT_LEN_MS);
    let (status, battery) = app.trader_get(&app.alice, &path).await;
    assert_eq!(status, 200, "{battery}");
    let slots = battery["slots"].as_array().expect("slots");
    assert_eq!(slots.len(), 2, "{battery}");
    assert_eq!(
        (&slots[0]["slot"], &slots[0]["charge_wh"], &slots[0]["discharge_wh"], &slots[0]["soc_permille"]),
        (&json!(a), &json!(0), &json!(500), &json!(450))
    );
    // Net import and no trade: the 500 Wh discharged saved the retail price.
    assert_eq!(slots[0]["price_basis"], "retail");
    assert_eq!(slots[0]["earned"], RETAIL * 500 / 1_000);
    // Net export: the 800 Wh charged could have been fed in.
    assert_eq!(slots[1]["price_basis"], "feed_in");
    assert_eq!(slots[1]["earned"], -(FEED_IN * 800 / 1_000));
    assert_eq!(battery["earned"], RETAIL * 500 / 1_000 - FEED_IN * 800 / 1_000);
    assert_eq!((&battery["now"]["soc_permille"], &battery["now"]["stored_wh"]), (&json!(530), &json!(5_300)));

    // The default range (the last day) holds the same slots.
    let (status, default) = app.trader_get(&app.alice, "/api/v1/me/battery").await;
    assert_eq!((status, default["earned"].clone()), (200, battery["earned"].clone()));
    // Bob has no battery: nothing, not Alice's.
    let (status, bobs) = app.trader_get(&app.bob, "/api/v1/me/battery").await;
    assert_eq!((status, bobs["slots"].clone(), bobs["now"].clone()), (200, json!([]), Value::Null));
    // Unsigned, or a range beyond a week: refused.
    assert_eq!(app.utility_get(None, "/api/v1/me/battery").await.0, 401);
    let too_long = format!("/api/v1/me/battery?from_ms=0&to_ms={}", 8 * 86_400_000_i64);
    let (status, error) = app.trader_get(&app.alice, &too_long).await;
    assert_eq!((status, error["error"].clone()), (400, json!("range_too_long")));
    app.app.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_carry_the_battery_and_its_interval_energy() {
    let app = spawn_app().await;
    let a = two_slots_of_a_battery(&app).await;
    let path = format!("/api/v1/me/readings?from_ms={a}&to_ms={}", a + 3 * SLOT_LEN_MS);
    let (status, rows) = app.trader_get(&app.alice, &path).await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (&rows[1]["battery_discharge_wh"], &rows[1]["interval_battery_discharge_wh"], &rows[1]["battery_soc_permille"]),
        (&json!(550), &json!(500), &json!(450))
    );
    assert_eq!(
        (&rows[2]["interval_battery_charge_wh"], &rows[2]["battery_capacity_wh"]),
        (&json!(800), &json!(10_000))
    );
    app.app.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zones_utility_sees_its_storage_and_nobody_else_does() {
    let app = spawn_app().await;
    let a = two_slots_of_a_battery(&app).await;
    // Three slots: A and B are among them even if a new slot begins while the test runs.
    let path = format!("/api/v1/zones/{ZONE}/storage?slots=3");
    let (status, storage) = app.utility_get(Some(UTILITY_KEY), &path).await;
    assert_eq!(status, 200, "{storage}");
    assert_eq!(
        (&storage["batteries"], &storage["capacity_wh"], &storage["stored_wh"], &storage["soc_permille"]),
        (&json!(1), &json!(10_000), &json!(5_300), &json!(530))
    );
    let slots: Vec<(i64, i64, i64)> = storage["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .map(|slot| {
            let field = |name: &str| slot[name].as_i64().expect("an integer");
            (field("slot"), field("charge_wh"), field("discharge_wh"))
        })
        .filter(|slot| slot.0 == a || slot.0 == a + SLOT_LEN_MS)
        .collect();
    assert_eq!(slots, vec![(a, 0, 500), (a + SLOT_LEN_MS, 800, 0)]);
    assert_eq!(app.utility_get(None, &path).await.0, 401);
    assert_eq!(app.utility_get(Some(OBSERVER_KEY), &path).await.0, 403);
    assert_eq!(app.utility_get(Some(UTILITY_KEY), "/api/v1/zones/nowhere/storage").await.0, 404);
    let (status, error) = app.utility_get(Some(UTILITY_KEY), &format!("/api/v1/zones/{ZONE}/storage?slots=97")).await;
    assert_eq!((status, error["error"].clone()), (400, json!("invalid_query")));
    app.app.shutdown().await.expect("a clean shutdown");
}
