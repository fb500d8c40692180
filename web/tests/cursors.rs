//! Cursors of issue 12 through the real HTTP server: every list that can outgrow a page hands out
//! `X-Next-Cursor` and `Link` instead of truncating, a walk of the cursors reaches every row once
//! in the list's order, and a cursor is checked before it is used.

mod common;

use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::{AccountId, PricePerKwh, Side, SlotId, TimestampMs, Trade, Wh, ZoneId};
use serde_json::Value;
use web::auth::sign_request;
use web::settings::Settings;

const ZONE: &str = "cursor-zone";
const UTILITY_KEY: &str = "utility-key-0123456789";
const SLOT_LEN_MS: i64 = 900_000;
/// Most pages a walk may take before the test calls it endless (the walks below take 3).
const PAGES_MAX: usize = 10;

type TestApp = common::TestServer;

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// The key of the test household's `index`th device.
fn device_key(index: u8) -> SigningKey {
    protocol::testing::signing_key(90 + index)
}

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("valid zone")
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

/// A server on a fresh database with the zone (tariff and reward schedule as the test market's)
/// and `household` registered in it with one device.
async fn spawn_app(household: &SigningKey) -> TestApp {
    let test_db = TestDb::any();
    let alice = account(household);
    let device = protocol::DeviceId::from_verifying_key(&device_key(0).verifying_key());
    settlement::registry::write(&test_db.db, move |conn| {
        common::seed_zone_market(conn, &zone(), "Cursor zone", SLOT_LEN_MS, now_ms())?;
        web::registry::register_account(conn, &alice, "Alice", &zone(), 0)?;
        web::registry::register_device(
            conn,
            &web::registry::NewDevice {
                device_id: device,
                account_id: alice,
                zone: zone(),
                meter_serial: protocol::MeterSerial::parse("SN-C").expect("valid serial"),
                nameplate_w: 10_000,
            },
            0,
        )
    })
    .await
    .expect("seed the registry");
    let settings =
        Settings { api_keys: vec![common::utility_key("utility", ZONE, UTILITY_KEY)], ..Settings::default() };
    TestApp::start(settings, test_db).await
}

/// Who asks: anyone, a household signing its request, or the utility with its key.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Public,
    Trader(&'a SigningKey),
    Utility,
}

/// One answered page: status, the cursor headers and the JSON body.
struct Page {
    status: u16,
    next: Option<String>,
    link: Option<String>,
    body: Value,
}

impl TestApp {
    /// GETs `path` as `auth`.
    async fn page(&self, path: &str, auth: Auth<'_>) -> Page {
        let mut request = self.client.get(format!("{}{path}", self.address));
        match auth {
            Auth::Public => {}
            Auth::Trader(key) => {
                for (name, value) in sign_request(key, "GET", path, b"", now_ms()) {
                    request = request.header(name, value);
                }
            }
            Auth::Utility => request = request.bearer_auth(UTILITY_KEY),
        }
        let response = request.send().await.expect("the server answers");
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().expect("ascii").to_owned());
        let (next, link) = (header("x-next-cursor"), header("link"));
        let status = response.status().as_u16();
        Page { status, next, link, body: response.json().await.unwrap_or(Value::Null) }
    }

    /// Follows the cursors from `first` (a path with a query) to the last page; returns the pages' rows.
    async fn walk(&self, first: &str, auth: Auth<'_>) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut path = first.to_owned();
        for _ in 0..PAGES_MAX {
            let page = self.page(&path, auth).await;
            assert_eq!(page.status, 200, "{path}: {}", page.body);
            pages.push(page.body.as_array().expect("a JSON list").clone());
            let Some(next) = page.next else {
                assert!(page.link.is_none(), "the last page has no Link either");
                return pages;
            };
            let link = page.link.expect("a page with a cursor has a Link");
            assert!(link.contains(&format!("cursor={next}")) && link.ends_with("rel=\"next\""), "{link}");
            path = format!("{first}&cursor={next}");
        }
        panic!("{first}: no last page after {PAGES_MAX} pages");
    }
}

fn trade(trade_id: u64, slot: SlotId, buyer: AccountId, seller: AccountId) -> Trade {
    Trade {
        trade_id,
        zone: zone(),
        slot,
        price_per_kwh: PricePerKwh(100_000 + trade_id as i64),
        qty_wh: Wh(10),
        buyer,
        seller,
        buy_nonce: trade_id,
        sell_nonce: trade_id,
        aggressor: Side::Buy,
        ts_ms: TimestampMs(slot.start_ms()),
    }
}

fn ids(pages: &[Vec<Value>]) -> Vec<u64> {
    pages.iter().flatten().map(|trade| trade["trade_id"].as_u64().expect("trade id")).collect()
}

/// Regression (issue 16): `/zones/{zone}/trades` answered the latest trades only, with neither a
/// slot filter nor a next page, so a busy slot's trades became unreachable.
#[tokio::test]
async fn a_busy_slots_trades_are_all_reachable_through_cursors() {
    let alice = protocol::testing::signing_key(61);
    let app = spawn_app(&alice).await;
    let busy = SlotId::new((now_ms() / SLOT_LEN_MS + 2) * SLOT_LEN_MS).expect("slot");
    let other = SlotId::new(busy.start_ms() + SLOT_LEN_MS).expect("slot");
    let (buyer, seller) = (account(&alice), account(&protocol::testing::signing_key(62)));
    // 50 trades in the busy slot and 30 in the next, their ids interleaved as two books trade at once.
    let trades: Vec<(Trade, u64)> =
        (1..=80u64).map(|id| (trade(id, if id % 8 < 5 { busy } else { other }, buyer, seller), id)).collect();
    let busy_ids: Vec<u64> = trades.iter().rev().filter(|(t, _)| t.slot == busy).map(|(t, _)| t.trade_id).collect();
    assert_eq!(busy_ids.len(), 50);
    app.db
        .db
        .write(move |conn| exchange::store::insert_trades(conn, &trades))
        .await
        .expect("the exchange stores the trades");

    // The busy slot in pages of 20: 20, 20 and 10, newest first, each trade once.
    let pages = app.walk(&format!("/api/v1/zones/{ZONE}/trades?slot={}&limit=20", busy.start_ms()), Auth::Public).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [20, 20, 10]);
    assert!(pages.iter().flatten().all(|trade| trade["slot"] == busy.start_ms()), "only the busy slot's trades");
    assert_eq!(ids(&pages), busy_ids, "every trade of the slot once, newest first");

    // The whole zone in pages of 30: 30, 30 and 20.
    let pages = app.walk(&format!("/api/v1/zones/{ZONE}/trades?limit=30"), Auth::Public).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [30, 30, 20]);
    assert_eq!(ids(&pages), (1..=80).rev().collect::<Vec<u64>>(), "every trade once, newest first");

    // Price history counts every trade of both slots: open and close by trade id.
    let (from_ms, to_ms) = (busy.start_ms(), other.start_ms() + SLOT_LEN_MS);
    let prices = app.page(&format!("/api/v1/zones/{ZONE}/prices?from_ms={from_ms}&to_ms={to_ms}"), Auth::Public).await;
    assert_eq!(prices.status, 200, "{}", prices.body);
    let candle = |index: usize, field: &str| prices.body[index][field].as_i64().expect("a number");
    let first_busy = *busy_ids.last().expect("a trade");
    assert_eq!((candle(0, "slot"), candle(0, "trades"), candle(0, "volume_wh")), (busy.start_ms(), 50, 500));
    assert_eq!((candle(0, "open"), candle(0, "close")), (100_000 + first_busy as i64, 100_000 + busy_ids[0] as i64));
    assert_eq!(
        (candle(1, "slot"), candle(1, "trades"), candle(1, "low"), candle(1, "high")),
        (other.start_ms(), 30, 100_005, 100_079)
    );

    // A slot that is not one of the zone's slots is refused, not answered empty.
    let misaligned = app.page(&format!("/api/v1/zones/{ZONE}/trades?slot={}", busy.start_ms() + 1), Auth::Public).await;
    assert_eq!(misaligned.status, 400, "{}", misaligned.body);
    assert_eq!(misaligned.body["error"], "slot_misaligned");

    // An edited cursor is refused with a clear error, never a wrong or empty page.
    let first = app.page(&format!("/api/v1/zones/{ZONE}/trades?limit=30"), Auth::Public).await;
    let cursor = first.next.expect("a cursor");
    let mut edited = cursor.clone().into_bytes();
    edited[0] = if edited[0] == b'0' { b'1' } else { b'0' };
    let edited = String::from_utf8(edited).expect("ascii");
    for bad in [edited.as_str(), "zz", &cursor[..cursor.len() - 1]] {
        let page = app.page(&format!("/api/v1/zones/{ZONE}/trades?limit=30&cursor={bad}"), Auth::Public).await;
        assert_eq!(page.status, 400, "cursor {bad}: {}", page.body);
        assert_eq!(page.body["error"], "invalid_cursor", "{}", page.body);
        assert!(page.body["message"].as_str().is_some_and(|m| m.contains("X-Next-Cursor")), "{}", page.body);
    }
    // So is another list's cursor.
    let tariffs = app.page(&format!("/api/v1/zones/{ZONE}/tariffs?cursor={cursor}"), Auth::Public).await;
    assert_eq!((tariffs.status, tariffs.body["error"].clone()), (400, Value::from("invalid_cursor")));
    app.stop().await;
}

/// Regression (issue 12): `/me/statements` answered the latest `limit` statements and nothing
/// more, so a household's older statements could not be read.
#[tokio::test]
async fn an_accounts_statements_over_many_slots_are_all_reachable_through_cursors() {
    let alice = protocol::testing::signing_key(63);
    let app = spawn_app(&alice).await;
    let config = settlement::SettlementConfig::new(protocol::testing::signing_key(50));
    let settled: Vec<i64> = settlement::registry::write(&app.db.db, move |conn| {
        let zone = settlement::registry::zone(conn, &zone())?.expect("the zone");
        let mut settled = Vec::new();
        for _ in 0..25 {
            let slot = settlement::close::next_slot(conn, &zone)?;
            settlement::close_slot(conn, &zone.zone_id, slot, &config, now_ms() + 30 * 86_400_000)?;
            settled.push(slot.start_ms());
        }
        Ok::<_, settlement::SettlementError>(settled)
    })
    .await
    .expect("settlement closes the slots");

    let pages = app.walk("/api/v1/me/statements?limit=10", Auth::Trader(&alice)).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let slots: Vec<i64> = pages.iter().flatten().map(|s| s["slot"].as_i64().expect("slot")).collect();
    assert_eq!(slots, settled.iter().rev().copied().collect::<Vec<i64>>(), "every slot once, newest first");
    assert!(pages.iter().flatten().all(|s| s["account"] == account(&alice).to_hex()), "only the signer's");

    // An edited cursor is refused.
    let first = app.page("/api/v1/me/statements?limit=10", Auth::Trader(&alice)).await;
    let cursor = first.next.expect("a cursor");
    let edited = format!("{}{}", &cursor[..cursor.len() - 1], if cursor.ends_with('0') { '1' } else { '0' });
    let page = app.page(&format!("/api/v1/me/statements?limit=10&cursor={edited}"), Auth::Trader(&alice)).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert_eq!(page.body["error"], "invalid_cursor");
    app.stop().await;
}

/// The registry's lists page the same way: zones, a zone's tariffs and its silent devices.
#[tokio::test]
async fn registry_lists_are_all_reachable_through_cursors() {
    let alice = protocol::testing::signing_key(64);
    let app = spawn_app(&alice).await;
    let created = now_ms();
    let registered = settlement::registry::write(&app.db.db, move |conn| {
        for i in 0..4 {
            let id = ZoneId::parse(&format!("extra-{i}")).expect("valid zone");
            web::registry::create_zone(conn, &id, "Extra", SLOT_LEN_MS, created)?;
        }
        for i in 1..=6 {
            web::registry::set_tariff(conn, &zone(), &common::tariff(i * 86_400_000))?;
        }
        let mut registered = vec![protocol::DeviceId::from_verifying_key(&device_key(0).verifying_key()).to_hex()];
        for i in 1..=2u8 {
            let device = protocol::DeviceId::from_verifying_key(&device_key(i).verifying_key());
            // Alice has her grid meter: these are sub-meters (an account has one grid meter).
            web::registry::register_device_with_role(
                conn,
                &web::registry::NewDevice {
                    device_id: device,
                    account_id: account(&protocol::testing::signing_key(64)),
                    zone: zone(),
                    meter_serial: protocol::MeterSerial::parse(&format!("SN-{i}")).expect("valid serial"),
                    nameplate_w: 10_000,
                },
                settlement::registry::DeviceRole::Submeter,
                i64::from(i) * 1_000,
            )?;
            registered.push(device.to_hex());
        }
        Ok::<_, settlement::registry::RegistryError>(registered)
    })
    .await
    .expect("seed the registry");

    let zones = app.walk("/api/v1/zones?limit=2", Auth::Public).await;
    assert_eq!(zones.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let names: Vec<&str> = zones.iter().flatten().map(|z| z["zone_id"].as_str().expect("id")).collect();
    assert_eq!(names, ["cursor-zone", "extra-0", "extra-1", "extra-2", "extra-3"]);

    let tariffs = app.walk(&format!("/api/v1/zones/{ZONE}/tariffs?limit=3"), Auth::Public).await;
    assert_eq!(tariffs.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let from: Vec<i64> = tariffs.iter().flatten().map(|t| t["effective_from_ms"].as_i64().expect("ms")).collect();
    assert_eq!(from, [0, 86_400_000, 2 * 86_400_000, 3 * 86_400_000, 4 * 86_400_000, 5 * 86_400_000, 6 * 86_400_000]);

    // Silent devices, as the utility sees them: longest silent first (none sent a reading, so by
    // registration time), one a page.
    let silent = app.walk(&format!("/api/v1/zones/{ZONE}/devices/silent?limit=1"), Auth::Utility).await;
    assert_eq!(silent.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    let devices: Vec<&str> = silent.iter().flatten().map(|d| d["device_id"].as_str().expect("id")).collect();
    assert_eq!(devices, registered.iter().map(String::as_str).collect::<Vec<_>>());
    app.stop().await;
}
