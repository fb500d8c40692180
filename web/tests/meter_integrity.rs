//! Meter integrity through the web layer (issue 11): the utility registers a meter replacement by
//! the REST API or the CLI, sees its zone's silent devices, and a household sees the readings the
//! exchange refused, with their reason.

mod common;

use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::testing::grid_reading;
use protocol::{AccountId, DeviceId, MeterSerial, Signed, ZoneId};
use serde_json::{json, Value};
use settlement::registry::DeviceRole;
use std::time::Duration;
use web::application::Application;
use web::auth::sign_request;
use web::settings::{MarketSettings, Settings};
use web::state::AppState;

const UTILITY_KEY: &str = "utility-key-0123456789";
const ZONE: &str = "meter-zone";
const NAMEPLATE_W: i64 = 10_000;
/// The silent limit of these tests' server: ten minutes.
const SILENT_MS: i64 = 600_000;
/// Bound on waiting for the exchange to record a refusal (a hang guard, not a timing assertion).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

struct TestApp {
    address: String,
    client: reqwest::Client,
    state: AppState,
    household: SigningKey,
    device: SigningKey,
    /// A device registered long ago that never sent a reading.
    quiet_device: SigningKey,
    app: Option<Application>,
    _db: TestDb,
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("a zone id")
}

fn device_id(key: &SigningKey) -> DeviceId {
    DeviceId::from_verifying_key(&key.verifying_key())
}

async fn seed(db: &gridex_store::Database, household: AccountId, device: DeviceId, quiet: DeviceId) {
    settlement::registry::write(db, move |conn| {
        let zone = zone();
        // Created two hours ago, so its first slot (the report's) is in the past.
        web::registry::create_zone(conn, &zone, "Meter zone", 900_000, now_ms() - 2 * 3_600_000)?;
        web::registry::set_tariff(conn, &zone, &common::tariff(0))?;
        web::registry::register_account(conn, &household, "Carol", &zone, 0)?;
        // The household's grid meter and a sub-meter (an account has one grid meter).
        let roles = [(device, now_ms(), DeviceRole::Grid), (quiet, now_ms() - 3 * 3_600_000, DeviceRole::Submeter)];
        for (id, registered_ms, role) in roles {
            let new = web::registry::NewDevice {
                device_id: id,
                account_id: household,
                zone: zone.clone(),
                meter_serial: MeterSerial::parse("SN-1").expect("a serial"),
                nameplate_w: NAMEPLATE_W,
            };
            web::registry::register_device_with_role(conn, &new, role, registered_ms)?;
        }
        Ok::<(), settlement::registry::RegistryError>(())
    })
    .await
    .expect("seed the registry");
}

async fn spawn_app() -> TestApp {
    let test_db = TestDb::any();
    let db = test_db.db.clone();
    let (household, device, quiet_device) =
        (protocol::testing::signing_key(21), protocol::testing::signing_key(22), protocol::testing::signing_key(23));
    let account = AccountId::from_verifying_key(&household.verifying_key());
    seed(&db, account, device_id(&device), device_id(&quiet_device)).await;
    let settings = Settings {
        api_keys: vec![common::utility_key("ops", ZONE, UTILITY_KEY)],
        market: MarketSettings { silent_device_ms: SILENT_MS, ..MarketSettings::default() },
        ..Settings::default()
    };
    let app = common::start_app(settings, &db).await;
    let (address, state) = (app.url(), app.state().clone());
    TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        household,
        device,
        quiet_device,
        app: Some(app),
        _db: test_db,
    }
}

impl TestApp {
    async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("the server exits cleanly");
        }
    }

    fn exchange(&self) -> &exchange::service::ExchangeHandle {
        self.app.as_ref().expect("running").exchange()
    }

    async fn utility(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
        common::json_answer(common::with_api_key(&self.client, &self.address, (method, path), key, body)).await
    }

    async fn my_readings(&self) -> Value {
        let path = "/api/v1/me/readings";
        let mut request = self.client.get(format!("{}{path}", self.address));
        for (name, value) in sign_request(&self.household, "GET", path, b"", now_ms()) {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("json")
    }

    /// A reading of the household's device, signed by it, submitted through the exchange's pipeline.
    async fn submit(&self, seq: u64, ts_ms: i64, import_wh: i64) -> Result<(), exchange::ingest::Rejection> {
        let serial = MeterSerial::parse("SN-1").expect("a serial");
        let reading = grid_reading(&self.device, zone(), serial, seq, ts_ms, import_wh, 0);
        let bytes = Signed::sign(reading, &self.device).expect("sign").to_json();
        self.exchange().submit_reading(bytes).await
    }
}

fn replacement_body(replaced_at_ms: i64) -> Value {
    json!({
        "replaced_at_ms": replaced_at_ms,
        "old": { "import_wh": 5_010, "export_wh": 0 },
        "new": { "import_wh": 100, "export_wh": 0 },
        "new_meter_serial": "SN-2",
        "reference": "WO-17",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_replacement_is_registered_by_the_utility_api_and_the_new_meter_is_accepted() {
    let app = spawn_app().await;
    let start_ms = now_ms() - 120_000;
    app.submit(1, start_ms, 5_000).await.expect("the old meter's reading");
    let device = device_id(&app.device).to_hex();
    let path = format!("/api/v1/devices/{device}/replacements");
    let swap_ms = start_ms + 60_000;
    let (status, _) = app.utility("POST", &path, None, Some(replacement_body(swap_ms))).await;
    assert_eq!(status, 401, "a utility key is required");
    let (status, body) = app.utility("POST", &path, Some(UTILITY_KEY), Some(replacement_body(start_ms - 1))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_value")), "not before the last reading: {body}");
    let stranger = device_id(&protocol::testing::signing_key(99)).to_hex();
    let unknown = format!("/api/v1/devices/{stranger}/replacements");
    let (status, _) = app.utility("POST", &unknown, Some(UTILITY_KEY), Some(replacement_body(swap_ms))).await;
    assert_eq!(status, 404);
    let (status, body) = app.utility("POST", &path, Some(UTILITY_KEY), Some(replacement_body(swap_ms))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["new"]["import_wh"], 100);
    assert_eq!(body["new_meter_serial"], "SN-2");
    let (status, _) = app.utility("POST", &path, Some(UTILITY_KEY), Some(replacement_body(swap_ms))).await;
    assert_eq!(status, 409, "one replacement per instant");
    // The running exchange had the device cached: the new meter's reading is accepted all the same.
    app.submit(2, swap_ms + 30_000, 120).await.expect("the new meter continues from its initial counters");
    let (_, openapi) = app.utility("GET", "/api/v1/openapi.json", None, None).await;
    let documented = &openapi["paths"]["/api/v1/devices/{device}/replacements"]["post"];
    assert_eq!(
        documented["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewReplacement"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reading_is_shown_to_its_household_with_its_reason() {
    let app = spawn_app().await;
    let start_ms = now_ms() - 60_000;
    app.submit(1, start_ms, 1_000).await.expect("accepted");
    let refused = app.submit(2, start_ms + 1_000, 500_000).await.expect_err("implausible");
    assert_eq!(refused.reason, protocol::Reason::ImplausibleEnergy);
    let refused = app.submit(3, start_ms - 1_000, 1_000).await.expect_err("backdated");
    assert_eq!(refused.reason, protocol::Reason::TimestampNotIncreasing);
    // Recorded by the exchange's group commit: wait for it with a generous deadline.
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let entries = loop {
        let entries = app.my_readings().await;
        let refused = entries.as_array().expect("array").iter().filter(|entry| entry["status"] == "refused").count();
        if refused == 2 || tokio::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entries = entries.as_array().expect("array");
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[0]["seq"], 1);
    assert_eq!(entries[0]["import_wh"], 1_000);
    let reasons: Vec<(i64, &str)> = entries[1..]
        .iter()
        .map(|entry| (entry["seq"].as_i64().unwrap_or(-1), entry["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(reasons, vec![(3, "timestamp_not_increasing"), (2, "implausible_energy")], "newest first");
    assert!(entries[2]["message"].as_str().is_some_and(|message| message.contains("nameplate")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_beyond_the_limit_is_listed_for_the_utility() {
    let app = spawn_app().await;
    app.submit(1, now_ms(), 1_000).await.expect("accepted");
    let path = format!("/api/v1/zones/{ZONE}/devices/silent");
    let (status, _) = app.utility("GET", &path, None, None).await;
    assert_eq!(status, 401);
    let (status, silent) = app.utility("GET", &path, Some(UTILITY_KEY), None).await;
    assert_eq!(status, 200, "{silent}");
    let silent = silent.as_array().expect("array");
    // The device that just sent a reading is not silent; the one registered hours ago and never heard from is.
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0]["device_id"], device_id(&app.quiet_device).to_hex());
    assert!(silent[0]["silent_for_ms"].as_i64().is_some_and(|ms| ms > SILENT_MS));
    assert!(silent[0].get("last_received_ms").is_none());
    let (status, _) = app.utility("GET", "/api/v1/zones/nowhere/devices/silent", Some(UTILITY_KEY), None).await;
    assert_eq!(status, 404);
    assert_eq!(app.state.silent_device_ms, SILENT_MS);
    // The settlement report of the zone's first slot names the devices silent at its end: the
    // quiet one (the other was registered later).
    let config = settlement::SettlementConfig::new(protocol::testing::signing_key(50));
    let outcome = settlement::registry::write(&app.state.db, move |conn| {
        let zone = settlement::registry::zone(conn, &zone())?.expect("the zone");
        let slot = settlement::close::next_slot(conn, &zone)?;
        settlement::close_slot(conn, &zone.zone_id, slot, &config, now_ms() + 86_400_000)
    })
    .await
    .expect("the slot settles");
    let settlement::SlotOutcome::Settled(settled) = outcome else { panic!("a new slot was settled") };
    let report_path = format!("/api/v1/reports/{ZONE}/{}", settled.slot.start_ms());
    let (status, report) = app.utility("GET", &report_path, Some(UTILITY_KEY), None).await;
    assert_eq!(status, 200, "{report}");
    let silent: Vec<&str> =
        report["silent_devices"].as_array().expect("a list").iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert_eq!(silent, vec![device_id(&app.quiet_device).to_hex()]);
    assert!(report["statements"].is_array(), "the report itself is unchanged: {report}");
    app.stop().await;
}

#[test]
fn the_cli_registers_a_meter_replacement_and_reports_a_refusal_in_one_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run = |args: &[&str]| common::gridex(dir.path(), args);
    let (_account, device) = common::gridex_home(dir.path(), "SN-1", "5000");
    let at = (now_ms() - 1_000).to_string();
    let replace = |id: &str, old_import: &str| {
        let old_import = format!("--old-import-wh={old_import}");
        let args = [
            "device",
            "replace",
            "--id",
            id,
            "--replaced-at-ms",
            &at,
            &old_import,
            "--old-export-wh",
            "0",
            "--new-serial",
            "SN-2",
            "--reference",
            "WO-1",
        ];
        run(&args)
    };
    let refused = replace(&device, "-1");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("negative"), "{stderr}");
    let replaced = replace(&device, "1234");
    assert!(replaced.status.success(), "{}", String::from_utf8_lossy(&replaced.stderr));
    let again = replace(&device, "1234");
    assert!(!again.status.success(), "the same instant twice is refused");
}
