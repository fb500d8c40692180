//! Interval data out as Green Button (ESPI) XML and the utility's own meter data in as CSV to
//! reconcile (issue 16), through the real HTTP server on port 0, a fresh database (SQLite, and
//! PostgreSQL too when `DATABASE_URL` is set) and the real exchange storing signed readings.
//!
//! The XML is checked with `xmllint` (package libxml2-utils): the whole feed must be well-formed
//! and each ESPI resource inside an entry's `content` (UsagePoint, MeterReading, ReadingType,
//! IntervalBlock) valid against gridex's own subset schema of those resources
//! (tests/fixtures/espi/gridex-espi-subset.xsd, not the NAESB file) and, when the environment
//! variable `GRIDEX_ESPI_XSD` names the official NAESB `espi.xsd`, against that too (see
//! tests/fixtures/espi/README.md). The Atom wrapper itself is not schema-validated (RFC 4287
//! defines Atom in RELAX NG); its structure is asserted here instead.

mod common;

use common::{OBSERVER_KEY, UTILITY_KEY};
use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::testing::grid_reading;
use protocol::{AccountId, DeviceId, MeterSerial, Signed, ZoneId};
use serde_json::{json, Value};
use std::process::Command;
use web::application::Application;
use web::settings::Settings;

const ZONE: &str = "espi-zone";
/// A zone of another utility.
const OTHER_ZONE: &str = "other-zone";
const SLOT_LEN_MS: i64 = 900_000;
/// gridex's own schema of the ESPI resources the export writes.
const SUBSET_XSD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/espi/gridex-espi-subset.xsd");
/// Names the official NAESB `espi.xsd` (kept outside the repository) to validate against as well.
const OFFICIAL_XSD_VAR: &str = "GRIDEX_ESPI_XSD";
const HEADER: &str = "device_id,slot_start,import_wh,export_wh\n";

struct TestApp {
    app: Application,
    client: reqwest::Client,
    /// Alice's meter ("SN-A") and Bob's ("SN-B").
    meter_a: SigningKey,
    meter_b: SigningKey,
    _db: TestDb,
}

fn zone(name: &str) -> ZoneId {
    ZoneId::parse(name).expect("valid zone")
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

fn device_id(key: &SigningKey) -> DeviceId {
    DeviceId::from_verifying_key(&key.verifying_key())
}

async fn spawn_app(test_db: TestDb) -> TestApp {
    let (alice, bob) = (protocol::testing::signing_key(71), protocol::testing::signing_key(72));
    let (meter_a, meter_b) = (protocol::testing::signing_key(73), protocol::testing::signing_key(74));
    let registered = [(account(&alice), device_id(&meter_a), "SN-A"), (account(&bob), device_id(&meter_b), "SN-B")];
    settlement::registry::write(&test_db.db, move |conn| {
        let now_ms = SystemClock.now_ms();
        common::seed_zone_market(conn, &zone(ZONE), "ESPI zone", SLOT_LEN_MS, now_ms)?;
        web::registry::create_zone(conn, &zone(OTHER_ZONE), "Another utility's zone", SLOT_LEN_MS, now_ms)?;
        for (index, (account_id, device_id, serial)) in registered.into_iter().enumerate() {
            web::registry::register_account(conn, &account_id, &format!("Home {index}"), &zone(ZONE), 0)?;
            let device = web::registry::NewDevice {
                device_id,
                account_id,
                zone: zone(ZONE),
                meter_serial: MeterSerial::parse(serial).expect("valid"),
                nameplate_w: 10_000,
            };
            web::registry::register_device(conn, &device, 0)?;
        }
        Ok::<(), settlement::registry::RegistryError>(())
    })
    .await
    .expect("seed the registry");
    let settings = Settings { api_keys: common::api_keys(ZONE), ..Settings::default() };
    let app = common::start_app(settings, &test_db.db).await;
    TestApp { app, client: reqwest::Client::new(), meter_a, meter_b, _db: test_db }
}

impl TestApp {
    /// A signed version 1 reading, stored by the exchange (its direct path).
    async fn reading(&self, meter: &SigningKey, serial: &str, seq: u64, ts_ms: i64, import_wh: i64, export_wh: i64) {
        let serial = MeterSerial::parse(serial).expect("valid");
        let reading = grid_reading(meter, zone(ZONE), serial, seq, ts_ms, import_wh, export_wh);
        let bytes = Signed::sign(reading, meter).expect("signs").to_json();
        self.app.exchange().submit_reading(bytes).await.expect("the exchange stores the reading");
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, String, String) {
        let mut request = self.client.get(format!("{}{path}", self.app.url()));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
        (status, content_type, response.text().await.expect("a body"))
    }

    async fn reconcile(&self, zone: &str, key: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/api/v1/zones/{zone}/reconcile", self.app.url()))
            .header("content-type", "text/csv")
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// Two slots that have ended, A and B. Meter A: A imports 200 Wh and exports 50, B imports 300
/// and exports 300. Meter B: A imports 120, and no reading after A's end, so B is "no data".
/// Returns A's start.
async fn two_slots(app: &TestApp) -> i64 {
    let a = SystemClock.now_ms().div_euclid(SLOT_LEN_MS) * SLOT_LEN_MS - 2 * SLOT_LEN_MS;
    app.reading(&app.meter_a, "SN-A", 1, a, 1_000, 0).await;
    app.reading(&app.meter_a, "SN-A", 2, a + SLOT_LEN_MS, 1_200, 50).await;
    app.reading(&app.meter_a, "SN-A", 3, a + 2 * SLOT_LEN_MS, 1_500, 350).await;
    app.reading(&app.meter_b, "SN-B", 1, a, 40, 7).await;
    app.reading(&app.meter_b, "SN-B", 2, a + SLOT_LEN_MS, 160, 7).await;
    a
}

/// Runs `xmllint` with `args` on `xml`; the error is its report.
fn xmllint(args: &[&str], xml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("document.xml");
    std::fs::write(&path, xml).expect("write the document");
    let output = Command::new("xmllint")
        .args(args)
        .arg(&path)
        .output()
        .expect("xmllint runs (Debian package libxml2-utils, installed by .ci/run)");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The schemas to validate against: the subset, and the official one if `GRIDEX_ESPI_XSD` is set
/// (then it must name an existing file).
fn schemas() -> Vec<String> {
    let mut schemas = vec![SUBSET_XSD.to_owned()];
    if let Some(official) = std::env::var_os(OFFICIAL_XSD_VAR) {
        let official = official.into_string().expect("GRIDEX_ESPI_XSD is UTF-8");
        assert!(std::path::Path::new(&official).is_file(), "{OFFICIAL_XSD_VAR}={official} is not a file");
        schemas.push(official);
    }
    schemas
}

fn valid_against(schema: &str, resource: &str) -> Result<(), String> {
    xmllint(&["--noout", "--schema", schema], resource)
}

/// Valid against every schema of `schemas()`; the error names the schema and has its report.
fn valid_espi(resource: &str) -> Result<(), String> {
    schemas()
        .iter()
        .try_for_each(|schema| valid_against(schema, resource).map_err(|report| format!("{schema}: {report}")))
}

/// The parts of `xml` between each `<open…>` and its `</close>` (not nested in this feed).
fn parts<'a>(xml: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    xml.split(open).skip(1).map(|part| part.split(close).next().expect("closed")).collect()
}

/// The `(start s, value Wh)` of an IntervalBlock entry's readings.
fn interval_readings(entry: &str) -> Vec<(i64, i64)> {
    parts(entry, "<IntervalReading>", "</IntervalReading>")
        .into_iter()
        .map(|reading| {
            let start = parts(reading, "<start>", "</start>")[0].parse().expect("an integer start");
            let value = parts(reading, "<value>", "</value>")[0].parse().expect("an integer value");
            (start, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_data_exports_as_green_button_xml_valid_against_the_espi_schema() {
    let app = spawn_app(TestDb::any()).await;
    let a = two_slots(&app).await;
    let path = format!("/api/v1/export/espi?zone={ZONE}&from_ms={a}&to_ms={}", a + 2 * SLOT_LEN_MS);
    let (status, content_type, xml) = app.get(&path, Some(UTILITY_KEY)).await;
    assert_eq!(status, 200, "{xml}");
    assert!(content_type.starts_with("application/atom+xml"), "{content_type}");
    xmllint(&["--noout"], &xml).expect("the feed is well-formed XML");
    assert!(xml.contains(r#"<feed xmlns="http://www.w3.org/2005/Atom">"#), "{xml}");

    // Every ESPI resource inside an entry is valid against the schema.
    let contents = parts(&xml, "<content>", "</content>");
    for resource in &contents {
        valid_espi(resource).unwrap_or_else(|report| panic!("{resource}\n{report}"));
    }
    let count = |name: &str| contents.iter().filter(|resource| resource.starts_with(&format!("<{name} "))).count();
    assert_eq!(
        [count("UsagePoint"), count("MeterReading"), count("ReadingType"), count("IntervalBlock")],
        [2, 4, 4, 4]
    );
    // Each entry has the Atom elements RFC 4287 requires.
    let entries = parts(&xml, "<entry>", "</entry>");
    assert_eq!(entries.len(), 14);
    for entry in &entries {
        for element in ["<id>urn:uuid:", "<title>", "<updated>", r#"<link rel="self" href=""#, "<content>"] {
            assert!(entry.contains(element), "an entry without {element}: {entry}");
        }
    }

    // The energy per slot, integer Wh, forward = import and reverse = export, in 900 s intervals.
    let reading_types: Vec<&&str> = contents.iter().filter(|r| r.starts_with("<ReadingType ")).collect();
    for reading_type in &reading_types {
        assert!(reading_type.contains("<intervalLength>900</intervalLength>"), "{reading_type}");
        assert!(reading_type.contains("<powerOfTenMultiplier>0</powerOfTenMultiplier>"), "{reading_type}");
        assert!(reading_type.contains("<uom>72</uom>"), "{reading_type}");
    }
    let block = |meter: &SigningKey, reading: u8| {
        let self_link = format!("/UsagePoint/{}/MeterReading/{reading}/IntervalBlock/", device_id(meter).to_hex());
        let entry = entries.iter().find(|entry| entry.contains(&self_link)).expect("the block's entry");
        interval_readings(entry)
    };
    let (slot_a, slot_b) = (a / 1_000, (a + SLOT_LEN_MS) / 1_000);
    assert_eq!(block(&app.meter_a, 1), vec![(slot_a, 200), (slot_b, 300)], "meter A import (forward)");
    assert_eq!(block(&app.meter_a, 2), vec![(slot_a, 50), (slot_b, 300)], "meter A export (reverse)");
    // Meter B has no data in slot B: no IntervalReading for it.
    assert_eq!(block(&app.meter_b, 1), vec![(slot_a, 120)], "meter B import (forward)");
    assert_eq!(block(&app.meter_b, 2), vec![(slot_a, 0)], "meter B export (reverse)");
    for flow in ["<flowDirection>1</flowDirection>", "<flowDirection>19</flowDirection>"] {
        assert_eq!(reading_types.iter().filter(|r| r.contains(flow)).count(), 2, "{flow}");
    }

    // One device only.
    let path_b = format!("{path}&device={}", device_id(&app.meter_b).to_hex());
    let (status, _, only_b) = app.get(&path_b, Some(UTILITY_KEY)).await;
    assert_eq!(status, 200, "{only_b}");
    assert_eq!(parts(&only_b, "<entry>", "</entry>").len(), 7);
    app.app.shutdown().await.expect("stops");
}

/// The schema check must be able to fail: a broken value, a misplaced element and an element the
/// schema does not know are each refused, by every schema checked against (the subset, and the
/// official one when `GRIDEX_ESPI_XSD` is set).
#[test]
fn the_schema_check_detects_broken_espi_elements() {
    let block = "<IntervalBlock xmlns=\"http://naesb.org/espi\"><interval><duration>1800</duration>\
                 <start>1764843300</start></interval><IntervalReading><timePeriod><duration>900</duration>\
                 <start>1764843300</start></timePeriod><value>200</value></IntervalReading></IntervalBlock>";
    let reading_type = "<ReadingType xmlns=\"http://naesb.org/espi\"><accumulationBehaviour>4</accumulationBehaviour>\
                        <flowDirection>1</flowDirection><uom>72</uom></ReadingType>";
    let misordered = reading_type
        .replace("<flowDirection>1</flowDirection><uom>72</uom>", "<uom>72</uom><flowDirection>1</flowDirection>");
    let unknown = reading_type.replace("<uom>", "<unit>").replace("</uom>", "</unit>");
    let without_start = block.replace("<start>1764843300</start></timePeriod>", "</timePeriod>");
    for schema in schemas() {
        valid_against(&schema, block).unwrap_or_else(|report| panic!("the intact block is valid: {report}"));
        let broken_value = block.replace("<value>200</value>", "<value>2OO</value>");
        assert!(valid_against(&schema, &broken_value).is_err(), "{schema}: a non-integer value");
        assert!(valid_against(&schema, &without_start).is_err(), "{schema}: a time period without its start");
        valid_against(&schema, reading_type)
            .unwrap_or_else(|report| panic!("the intact reading type is valid: {report}"));
        assert!(valid_against(&schema, &misordered).is_err(), "{schema}: elements out of the schema's order");
        assert!(valid_against(&schema, &unknown).is_err(), "{schema}: an unknown element");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_espi_export_is_the_zones_utilitys_only() {
    let app = spawn_app(TestDb::any()).await;
    let path = |zone: &str| format!("/api/v1/export/espi?zone={zone}");
    assert_eq!(app.get(&path(ZONE), None).await.0, 401);
    assert_eq!(app.get(&path(ZONE), Some(OBSERVER_KEY)).await.0, 403);
    let (status, _, body) = app.get(&path(OTHER_ZONE), Some(UTILITY_KEY)).await;
    assert_eq!(status, 404, "another utility's zone answers as an unknown one: {body}");
    assert!(body.contains("unknown_zone"), "{body}");
    let stranger = device_id(&protocol::testing::signing_key(99)).to_hex();
    let (status, _, body) = app.get(&format!("{}&device={stranger}", path(ZONE)), Some(UTILITY_KEY)).await;
    assert_eq!(status, 404, "{body}");
    let week_and_a_slot = 673 * SLOT_LEN_MS;
    let (status, _, body) =
        app.get(&format!("{}&from_ms=0&to_ms={week_and_a_slot}", path(ZONE)), Some(UTILITY_KEY)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("range_too_long"), "{body}");
    app.app.shutdown().await.expect("stops");
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("in range").to_rfc3339()
}

/// The utility's data against gridex's on every backend: one row equal, one different by 10 Wh,
/// one in a slot gridex has no data for, one of a device not in the zone, and one slot it left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_reports_each_difference_exactly() {
    for test_db in TestDb::all() {
        let app = spawn_app(test_db).await;
        let a = two_slots(&app).await;
        let b = a + SLOT_LEN_MS;
        let (meter_a, meter_b) = (device_id(&app.meter_a).to_hex(), device_id(&app.meter_b).to_hex());
        let stranger = device_id(&protocol::testing::signing_key(99)).to_hex();
        let csv = format!(
            "{HEADER}{meter_a},{},200,50\n{meter_a},{b},310,300\n{meter_b},{b},100,0\n{stranger},{a},5,5\n",
            rfc3339(a)
        );
        let (status, report) = app.reconcile(ZONE, Some(UTILITY_KEY), csv).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            (&report["from_ms"], &report["to_ms"], &report["utility_rows"], &report["compared"], &report["matching"]),
            (&json!(a), &json!(a + 2 * SLOT_LEN_MS), &json!(4), &json!(2), &json!(1)),
            "{report}"
        );
        assert_eq!(
            report["differences"],
            json!([{ "device_id": meter_a, "slot_start_ms": b,
                     "gridex_import_wh": 300, "gridex_export_wh": 300,
                     "utility_import_wh": 310, "utility_export_wh": 300,
                     "import_difference_wh": 10, "export_difference_wh": 0 }])
        );
        let mut utility_only = vec![
            json!({ "device_id": meter_b, "slot_start_ms": b, "import_wh": 100, "export_wh": 0,
                    "reason": "no_data", "line": 4 }),
            json!({ "device_id": stranger, "slot_start_ms": a, "import_wh": 5, "export_wh": 5,
                    "reason": "unknown_device", "line": 5 }),
        ];
        utility_only.sort_by_key(|row| row["device_id"].as_str().unwrap_or_default().to_owned());
        assert_eq!(report["utility_only"], json!(utility_only));
        assert_eq!(
            report["gridex_only"],
            json!([{ "device_id": meter_b, "slot_start_ms": a, "import_wh": 120, "export_wh": 0 }])
        );
        assert_eq!(
            report["totals"],
            json!({ "gridex_import_wh": 620, "gridex_export_wh": 350,
                    "utility_import_wh": 615, "utility_export_wh": 355,
                    "import_difference_wh": -5, "export_difference_wh": 5 })
        );
        app.app.shutdown().await.expect("stops");
    }
}

fn assert_refused(answer: &(u16, Value), status: u16, code: &str, says: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    let message = answer.1["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "the message does not say `{says}`: {}", answer.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_truncated_or_oversized_upload_is_refused_with_the_line() {
    let app = spawn_app(TestDb::any()).await;
    let meter_a = device_id(&app.meter_a).to_hex();
    let good = format!("{HEADER}{meter_a},0,1,1\n{meter_a},900000,2,2\n");
    let malformed = format!("{HEADER}{meter_a},0,1,1\n{meter_a},900000,two,2\n");
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), malformed).await, 400, "invalid_csv", "line 3: import_wh");
    let misaligned = format!("{HEADER}{meter_a},0,1,1\n{meter_a},900001,2,2\n");
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), misaligned).await, 400, "invalid_csv", "line 3: slot_start");
    // Cut off inside the last row's last number, and inside its fields.
    let cut = &good[..good.len() - 2];
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), cut.to_owned()).await, 400, "invalid_csv", "line 3");
    let cut = &good[..good.len() - 5];
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), cut.to_owned()).await, 400, "invalid_csv", "line 3");
    let repeated = format!("{HEADER}{meter_a},0,1,1\n{meter_a},0,1,1\n");
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), repeated).await, 400, "invalid_csv", "repeat line 2");
    let wrong_header = format!("device,slot_start,import_wh,export_wh\n{meter_a},0,1,1\n");
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), wrong_header).await, 400, "invalid_csv", "line 1");
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), HEADER).await, 400, "invalid_csv", "no rows");
    let oversized = vec![b'x'; web::reconcile::RECONCILE_BODY_BYTES_MAX + 1];
    assert_refused(&app.reconcile(ZONE, Some(UTILITY_KEY), oversized).await, 413, "too_large", "exceeds");
    // The intact body is accepted, so each refusal above is about what was broken.
    let (status, report) = app.reconcile(ZONE, Some(UTILITY_KEY), good).await;
    assert_eq!(status, 200, "{report}");
    app.app.shutdown().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_of_another_utilitys_zone_answers_as_an_unknown_zone() {
    let app = spawn_app(TestDb::any()).await;
    let body = format!("{HEADER}{},0,1,1\n", device_id(&app.meter_a).to_hex());
    assert_refused(
        &app.reconcile(OTHER_ZONE, Some(UTILITY_KEY), body.clone()).await,
        404,
        "unknown_zone",
        "no such zone",
    );
    assert_refused(
        &app.reconcile("no-such-zone", Some(UTILITY_KEY), body.clone()).await,
        404,
        "unknown_zone",
        "no such zone",
    );
    assert_eq!(app.reconcile(ZONE, None, body.clone()).await.0, 401);
    assert_eq!(app.reconcile(ZONE, Some(OBSERVER_KEY), body).await.0, 403);
    app.app.shutdown().await.expect("stops");
}
