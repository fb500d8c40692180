//! The closing auction through the API: orders signed by two households cross in a zone's call phase,
//! and after gate closure `GET /api/v1/zones/{zone}/auctions` reports the uniform price and volume.

mod common;

use exchange::config::{ClosingAuction, ExchangeConfig};
use gridex_store::clock::{Clock, ManualClock};
use gridex_store::testing::TestDb;
use protocol::{AccountId, Order, PricePerKwh, Side, Signed, SlotId, TimestampMs, Wh, ZoneId};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use web::settings::Settings;

const ZONE: &str = "auction-zone";
const SLOT_LEN_MS: i64 = 900_000;
const NOW_MS: i64 = 1_790_000_000_000;
const CALL_MS: i64 = 600_000;
/// A bound on waiting for the exchange's gate closure tick (not a timing assertion).
const DEADLINE: Duration = Duration::from_secs(30);

fn order(key: &ed25519_dalek::SigningKey, slot: SlotId, side: Side, price: i64, qty: i64, now_ms: i64) -> Vec<u8> {
    let account = AccountId::from_verifying_key(&key.verifying_key());
    let zone = ZoneId::parse(ZONE).expect("a zone");
    let order = Order::gtc(account, zone, slot, side, PricePerKwh(price), Wh(qty)).at(1, TimestampMs(now_ms));
    Signed::sign(order, key).expect("sign").to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_the_closing_auctions_price_and_volume() {
    let test_db = TestDb::any();
    let db = test_db.db.clone();
    let zone = ZoneId::parse(ZONE).expect("a zone");
    let (seller, buyer) = (protocol::testing::signing_key(21), protocol::testing::signing_key(22));
    let (seller_id, buyer_id) =
        (AccountId::from_verifying_key(&seller.verifying_key()), AccountId::from_verifying_key(&buyer.verifying_key()));
    let seeded = zone.clone();
    settlement::registry::write(&db, move |conn| {
        web::registry::create_zone(conn, &seeded, "Auction zone", SLOT_LEN_MS, 0)?;
        web::registry::set_tariff(conn, &seeded, &common::tariff(0))?;
        web::registry::register_account(conn, &seller_id, "Seller", &seeded, 0)?;
        web::registry::register_account(conn, &buyer_id, "Buyer", &seeded, 0)
    })
    .await
    .expect("seed the registry");

    let clock = Arc::new(ManualClock::new(NOW_MS));
    let config = ExchangeConfig {
        closing_auctions: vec![ClosingAuction { zone: zone.clone(), call_ms: CALL_MS }],
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let app = common::app_builder(Settings::default(), db, config.clone())
        .clock(dyn_clock, 1)
        .mqtt(None)
        .build()
        .await
        .expect("the app starts");
    let (address, exchange) = (app.url(), app.exchange().clone());

    let slot = SlotId::new(NOW_MS - NOW_MS % SLOT_LEN_MS + 4 * SLOT_LEN_MS).expect("a slot");
    let gate_ms = slot.start_ms() - config.gate_closure_ms;
    clock.set(gate_ms - CALL_MS);
    for (key, side, price) in [(&seller, Side::Sell, 100_000), (&buyer, Side::Buy, 200_000)] {
        let ack = exchange.submit_command(order(key, slot, side, price, 700, clock.now_ms())).await.expect("accepted");
        assert!(ack.trades.is_empty(), "nothing trades in the call phase");
    }
    let url = format!("{address}/api/v1/zones/{ZONE}/auctions");
    let client = reqwest::Client::new();
    let before: Vec<Value> = client.get(&url).send().await.expect("GET").json().await.expect("JSON");
    assert!(before.is_empty());

    clock.set(gate_ms);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let results = loop {
        let results: Vec<Value> = client.get(&url).send().await.expect("GET").json().await.expect("JSON");
        if !results.is_empty() {
            break results;
        }
        assert!(tokio::time::Instant::now() < deadline, "no auction result before the deadline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 700 Wh at every price from 0.10 to 0.20 with no imbalance: the middle, 0.15.
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["slot"], slot.start_ms());
    assert_eq!(results[0]["price_per_kwh"], 150_000);
    assert_eq!((results[0]["qty_wh"].as_i64(), results[0]["trades"].as_i64()), (Some(700), Some(1)));
    let trades: Vec<Value> = client
        .get(format!("{address}/api/v1/zones/{ZONE}/trades"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(trades.len(), 1);
    assert_eq!(trades[0]["price_per_kwh"], 150_000);

    drop(exchange);
    let _ = app.shutdown().await;
}
