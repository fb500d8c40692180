//! Utility API keys through the real HTTP server: a key acts on its own utility's zones and
//! webhooks only (everything else answers as if it did not exist), keys made by
//! `gridex api-key create` are stored as hashes only, and creating or revoking one takes effect
//! without a restart (issue 12).

mod common;

use gridex_store::testing::TestDb;
use protocol::ZoneId;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::process::Command;
use web::settings::{ApiKey, Settings, WebhookSettings};

const NORTH_KEY: &str = "north-9f86d081884c7d659a2feaa0c55ad015";
const SOUTH_KEY: &str = "south-3c59dc048e8850243be8079a5c74d079";

type TestApp = common::TestServer;

impl TestApp {
    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let request = common::with_api_key(&self.client, &self.address, (method, path), Some(key), body);
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Registers household `account` as `display_name` in `zone` with the utility's API `key`.
    async fn register_account(&self, key: &str, account: &str, display_name: &str, zone: &str) -> (u16, Value) {
        let body = json!({"account_id": account, "display_name": display_name, "zone": zone});
        self.call("POST", "/api/v1/accounts", key, Some(body)).await
    }
}

fn key(name: &str, utility: &str, key: &str) -> ApiKey {
    common::utility_key(name, utility, key)
}

/// A server with the keys of two utilities, `north` and `south`, each with the zone it created
/// through the API (so the zone is its own).
async fn spawn_app() -> TestApp {
    let db = TestDb::any();
    let settings = Settings {
        api_keys: vec![key("north-ops", "north", NORTH_KEY), key("south-ops", "south", SOUTH_KEY)],
        webhooks: WebhookSettings { allowed_private_networks: vec!["127.0.0.1".to_owned()], ..Default::default() },
        ..Settings::default()
    };
    let test = TestApp::start(settings, db).await;
    for (zone, key) in [("north-zone", NORTH_KEY), ("south-zone", SOUTH_KEY)] {
        let (status, body) =
            test.call("POST", "/api/v1/zones", key, Some(json!({"zone_id": zone, "name": zone}))).await;
        assert_eq!(status, 201, "{body}");
    }
    test
}

fn household(seed: u8) -> String {
    protocol::AccountId::from_verifying_key(&protocol::testing::signing_key(seed).verifying_key()).to_hex()
}

fn device(seed: u8, account: &str, zone: &str, serial: &str) -> Value {
    let device = protocol::DeviceId::from_verifying_key(&protocol::testing::signing_key(seed).verifying_key());
    json!({"device_id": device.to_hex(), "account_id": account, "zone": zone, "meter_serial": serial, "nameplate_w": 5000})
}

fn tariff() -> Value {
    json!({"effective_from_ms": 0, "retail_price_per_kwh": 300_000, "feed_in_price_per_kwh": 80_000,
           "grid_fee_per_kwh": 40_000, "protocol_fee_bps": 50})
}

fn assert_unknown(answer: &(u16, Value), code: &str, what: &str) {
    assert_eq!(answer.0, 404, "{what}: {}", answer.1);
    assert_eq!(answer.1["error"], code, "{what}: {}", answer.1);
}

/// Before the fix every utility key acted on every zone and every webhook (`registered_by` was
/// stored, never enforced). Now `north` can do each of these in its own zone and none in
/// `south`'s, where each answers as for a zone, device or webhook that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_utility_cannot_touch_another_utilitys_zone() {
    let app = spawn_app().await;
    // South's household, device and webhook.
    let south_home = household(21);
    let registered = app.register_account(SOUTH_KEY, &south_home, "S", "south-zone").await;
    assert_eq!(registered.0, 201, "{}", registered.1);
    let south_device = device(22, &south_home, "south-zone", "SN-S1");
    assert_eq!(app.call("POST", "/api/v1/devices", SOUTH_KEY, Some(south_device.clone())).await.0, 201);
    let hook = app.call("POST", "/api/v1/webhooks", SOUTH_KEY, Some(json!({"url": "http://127.0.0.1:9/south"}))).await;
    assert_eq!(hook.0, 201, "{}", hook.1);
    let south_hook = hook.1["id"].as_str().expect("an id").to_owned();

    // North in its own zone: allowed (so the refusals below are about the zone, not the key).
    let north_home = household(31);
    let own = app.register_account(NORTH_KEY, &north_home, "N", "north-zone").await;
    assert_eq!(own.0, 201, "{}", own.1);
    assert_eq!(app.call("PUT", "/api/v1/zones/north-zone/tariffs", NORTH_KEY, Some(tariff())).await.0, 200);
    assert_eq!(app.call("GET", "/api/v1/zones/north-zone/devices/silent", NORTH_KEY, None).await.0, 200);
    assert_eq!(app.call("GET", "/api/v1/export/readings?zone=north-zone", NORTH_KEY, None).await.0, 200);
    assert_unknown(
        &app.call("GET", "/api/v1/reports/north-zone/0", NORTH_KEY, None).await,
        "slot_not_settled",
        "own report",
    );

    // North in south's zone: as if it did not exist.
    let reads = [
        ("/api/v1/reports/south-zone/0", "report"),
        ("/api/v1/reports/south-zone/0?format=csv", "report as CSV"),
        ("/api/v1/export/readings?zone=south-zone", "export of the zone"),
        ("/api/v1/zones/south-zone/devices/silent", "silent devices"),
    ];
    for (path, what) in reads {
        assert_unknown(&app.call("GET", path, NORTH_KEY, None).await, "unknown_zone", what);
    }
    let device_id = south_device["device_id"].as_str().expect("hex");
    let export = app.call("GET", &format!("/api/v1/export/readings?device={device_id}"), NORTH_KEY, None).await;
    assert_unknown(&export, "unknown_device", "export of south's device");
    assert_unknown(
        &app.call("PUT", "/api/v1/zones/south-zone/tariffs", NORTH_KEY, Some(tariff())).await,
        "unknown_zone",
        "tariff",
    );
    let account = json!({"account_id": household(32), "display_name": "X", "zone": "south-zone"});
    assert_unknown(&app.call("POST", "/api/v1/accounts", NORTH_KEY, Some(account)).await, "unknown_zone", "account");
    let foreign_device = device(33, &south_home, "south-zone", "SN-X1");
    assert_unknown(
        &app.call("POST", "/api/v1/devices", NORTH_KEY, Some(foreign_device)).await,
        "unknown_zone",
        "device",
    );
    let replacement = json!({"replaced_at_ms": 1, "old": {"import_wh": 0, "export_wh": 0, "pv_wh": null},
                             "new": {"import_wh": 0, "export_wh": 0, "pv_wh": null}, "new_meter_serial": "SN-S2", "reference": "WO-1"});
    assert_unknown(
        &app.call("POST", &format!("/api/v1/devices/{device_id}/replacements"), NORTH_KEY, Some(replacement)).await,
        "unknown_device",
        "meter replacement",
    );

    // Webhooks: north sees none of south's and cannot delete them.
    let (status, listed) = app.call("GET", "/api/v1/webhooks", NORTH_KEY, None).await;
    assert_eq!((status, listed.as_array().map(Vec::len)), (200, Some(0)), "{listed}");
    assert_unknown(
        &app.call("DELETE", &format!("/api/v1/webhooks/{south_hook}"), NORTH_KEY, None).await,
        "unknown_webhook",
        "delete",
    );
    let (_, listed) = app.call("GET", "/api/v1/webhooks", SOUTH_KEY, None).await;
    let ids: Vec<&str> = listed.as_array().expect("a list").iter().filter_map(|hook| hook["id"].as_str()).collect();
    assert_eq!(ids, [south_hook.as_str()], "south's webhook is still there");
    assert_eq!(listed[0]["registered_by"], "south", "registered by the utility");

    // Nothing of the above reached south's zone: no tariff, only south's own household's device.
    let (_, tariffs) = app.call("GET", "/api/v1/zones/south-zone/tariffs", SOUTH_KEY, None).await;
    assert_eq!(tariffs.as_array().map(Vec::len), Some(0), "{tariffs}");
    app.stop_cleanly().await;
}

/// Runs `gridex` with `args` on the database at `url` (nothing else from the surroundings);
/// returns (success, stdout, stderr).
fn gridex(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gridex"));
    for name in ["DATABASE_URL", "MQTT_URL", "GRIDEX_MQTT_URL", "GRIDEX_MQTT__URL", "GRIDEX_API_KEYS"] {
        command.env_remove(name);
    }
    let output = command.args(args).env("GRIDEX_DATABASE_URL", url).output().expect("gridex runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// `gridex api-key create`: returns (key id, key).
fn create_key(url: &str, utility: &str) -> (String, String) {
    let (ok, stdout, stderr) = gridex(url, &["api-key", "create", "--utility", utility]);
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_owned();
    let id = stderr.split_whitespace().skip_while(|word| *word != "key").nth(1).expect("the key id").to_owned();
    (id, key)
}

/// Every byte the database holds that could hold the key: the SQLite file and its WAL, or every
/// row of every table of the PostgreSQL test database as text.
async fn database_contents(test_db: &TestDb) -> String {
    if let Some(path) = test_db.url.strip_prefix("sqlite://") {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-journal"] {
            bytes.extend(std::fs::read(format!("{path}{suffix}")).unwrap_or_default());
        }
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    test_db
        .db
        .run(|conn| {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                text: String,
            }
            let tables: Vec<Row> = diesel::sql_query(
                "SELECT table_name::text AS text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .load(conn)?;
            let mut all = String::new();
            for table in tables {
                let rows: Vec<Row> =
                    diesel::sql_query(format!("SELECT t::text AS text FROM \"{}\" t", table.text)).load(conn)?;
                all.extend(rows.into_iter().map(|row| row.text + "\n"));
            }
            Ok(all)
        })
        .await
        .expect("the tables read")
}

/// Before the fix keys existed only in the settings, in plain text; now `create` stores the key's
/// SHA-256 and nothing from which the key could be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let (id, key) = create_key(&app.db.url, "north");
    assert!(key.len() >= 64 && web::settings::check_api_key(&key).is_ok(), "a strong key is printed");
    assert_eq!(app.call("GET", "/api/v1/webhooks", &key, None).await.0, 200, "the printed key works");
    let contents = database_contents(&app.db).await;
    assert!(contents.contains(&id), "the scan sees the api_keys table");
    assert!(contents.contains(&hex::encode(Sha256::digest(key.as_bytes()))), "its SHA-256 is stored");
    assert!(!contents.contains(&key), "the key appears nowhere in the database");
    assert!(!contents.contains(&key.to_uppercase()), "not even in capitals");
    let (ok, listed, _) = gridex(&app.db.url, &["api-key", "list"]);
    assert!(ok && listed.contains(&id) && listed.contains("north") && !listed.contains(&key), "{listed}");
    // Nor are the settings' keys stored anywhere.
    assert!(!contents.contains(NORTH_KEY) && !contents.contains(SOUTH_KEY));
    app.stop_cleanly().await;
}

/// Before the fix a new key needed a restart (keys came from the settings only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_works_without_a_restart() {
    let app = spawn_app().await;
    let (_, key) = create_key(&app.db.url, "north");
    let (status, listed) = app.call("GET", "/api/v1/webhooks", &key, None).await;
    assert_eq!(status, 200, "{listed}");
    // It is north's: north's zone is its own, south's is not.
    assert_eq!(app.call("PUT", "/api/v1/zones/north-zone/tariffs", &key, Some(tariff())).await.0, 200);
    assert_unknown(
        &app.call("PUT", "/api/v1/zones/south-zone/tariffs", &key, Some(tariff())).await,
        "unknown_zone",
        "south",
    );
    // A zone it creates is north's.
    let created = app.call("POST", "/api/v1/zones", &key, Some(json!({"zone_id": "north-2", "name": "North 2"}))).await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(app.call("GET", "/api/v1/zones/north-2/devices/silent", NORTH_KEY, None).await.0, 200);
    assert_unknown(
        &app.call("GET", "/api/v1/zones/north-2/devices/silent", SOUTH_KEY, None).await,
        "unknown_zone",
        "south",
    );
    app.stop_cleanly().await;
}

/// Before the fix a key could be withdrawn only by editing the settings and restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_without_a_restart() {
    let app = spawn_app().await;
    let (id, key) = create_key(&app.db.url, "south");
    let (other_id, other) = create_key(&app.db.url, "south");
    assert_eq!(app.call("GET", "/api/v1/webhooks", &key, None).await.0, 200);
    let (ok, _, stderr) = gridex(&app.db.url, &["api-key", "revoke", &id]);
    assert!(ok, "{stderr}");
    let (status, body) = app.call("GET", "/api/v1/webhooks", &key, None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("bad_api_key")), "{body}");
    assert_eq!(app.call("GET", "/api/v1/webhooks", &other, None).await.0, 200, "the other key still works");
    let (ok, _, _) = gridex(&app.db.url, &["api-key", "revoke", &id]);
    assert!(!ok, "revoking twice is an error");
    let (_, listed, _) = gridex(&app.db.url, &["api-key", "list"]);
    let line = listed.lines().find(|line| line.starts_with(&id)).expect("listed");
    assert!(!line.ends_with("\t-"), "revoked: {line}");
    let other_line = listed.lines().find(|line| line.starts_with(&other_id)).expect("listed");
    assert!(other_line.ends_with("\t-"), "not revoked: {other_line}");
    app.stop_cleanly().await;
}

/// Weak keys are refused whatever their source: a utility key in the settings without a utility
/// stops `gridex serve` at start with the upgrade hint, and a weak key is never accepted by the
/// server even from settings built in code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_or_utility_less_keys_are_refused_from_every_source() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("gridex.sqlite").display());
    let config = dir.path().join("gridex.toml");
    std::fs::write(&config, format!("[[api_keys]]\nname = \"old\"\nrole = \"utility\"\nkey = \"{NORTH_KEY}\"\n"))
        .expect("write");
    let (ok, _, stderr) = gridex(&url, &["--config", config.to_str().expect("utf-8"), "migrate"]);
    assert!(!ok, "a utility key without a utility is refused");
    assert!(stderr.contains("API key `old` is refused") && stderr.contains("utility ="), "{stderr}");
    assert!(!stderr.contains(NORTH_KEY), "{stderr}");
    let (ok, _, stderr) = gridex(&url, &["migrate"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = gridex(&url, &["api-key", "create", "--utility", "Not A Name"]);
    assert!(!ok && stderr.contains("utility name"), "{stderr}");

    let db = TestDb::any();
    let settings = Settings {
        api_keys: vec![key("weak", "north", "north-north-north"), key("empty", "north", "")],
        ..Settings::default()
    };
    let app = common::start_app(settings, &db.db).await;
    let client = reqwest::Client::new();
    for token in ["north-north-north", "x"] {
        let response = client
            .post(format!("{}/api/v1/zones", app.url()))
            .bearer_auth(token)
            .json(&json!({"zone_id": "north-zone", "name": "North"}))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
    let zone = ZoneId::parse("north-zone").expect("valid");
    let found = db.db.run(move |conn| Ok(settlement::registry::zone(conn, &zone).ok().flatten())).await.expect("reads");
    assert!(found.is_none(), "no zone was created");
    app.shutdown().await.expect("stops");
}

/// `gridex api-key create --zones` limits a key to some of its utility's zones: the others
/// answer as unknown, and it cannot create zones (403: 404 cannot fit a zone not there yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_some_zones_acts_on_those_only() {
    let app = spawn_app().await;
    let second = app.call("POST", "/api/v1/zones", NORTH_KEY, Some(json!({"zone_id": "north-2", "name": "N2"}))).await;
    assert_eq!(second.0, 201, "{}", second.1);
    let (ok, _, stderr) = gridex(&app.db.url, &["api-key", "create", "--utility", "north", "--zones", "south-zone"]);
    assert!(!ok && stderr.contains("not a zone of utility north"), "{stderr}");
    let (ok, key, stderr) = gridex(&app.db.url, &["api-key", "create", "--utility", "north", "--zones", "north-zone"]);
    assert!(ok, "{stderr}");
    let key = key.trim();
    assert_eq!(app.call("PUT", "/api/v1/zones/north-zone/tariffs", key, Some(tariff())).await.0, 200);
    assert_unknown(
        &app.call("PUT", "/api/v1/zones/north-2/tariffs", key, Some(tariff())).await,
        "unknown_zone",
        "north-2",
    );
    assert_unknown(
        &app.call("GET", "/api/v1/zones/south-zone/devices/silent", key, None).await,
        "unknown_zone",
        "south",
    );
    let (status, body) =
        app.call("POST", "/api/v1/zones", key, Some(json!({"zone_id": "north-3", "name": "N3"}))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let (_, listed, _) = gridex(&app.db.url, &["api-key", "list"]);
    assert!(listed.lines().any(|line| line.contains("\tnorth-zone\t")), "{listed}");
    app.stop_cleanly().await;
}
