//! The per-account order rate limit of issue 12 through the real HTTP server and the real exchange:
//! a household that floods `POST /api/v1/orders` with valid orders signed by its own key is
//! answered 429 `rate_limited` with `Retry-After` beyond its limit, nothing refused is logged, and
//! its neighbour trades on. Before the limit every order of the flood was accepted (201).

mod common;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use gridex_store::clock::{Clock, ManualClock, SystemClock};
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use protocol::{AccountId, Order, PricePerKwh, Side, Signed, SlotId, TimestampMs, Wh, ZoneId};
use serde_json::Value;
use std::sync::Arc;
use web::auth::sign_request;
use web::settings::Settings;

const ZONE: &str = "flood-zone";
const SLOT_LEN_MS: i64 = 900_000;
/// The limit under test: one order command a second per account, three at once.
const PER_S: u32 = 1;
const BURST: u32 = 3;
/// Orders the flooding household sends at one instant of the market clock.
const FLOOD: u64 = 6;

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("valid zone")
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

/// A signed sell order of `key` an hour ahead (`now_ms`: the market clock's time).
fn sell(key: &SigningKey, nonce: u64, now_ms: i64) -> Vec<u8> {
    let slot = SlotId::containing(TimestampMs(now_ms + 3_600_000), SLOT_LEN_MS);
    let order =
        Order::gtc(account(key), zone(), slot, Side::Sell, PricePerKwh(150_000 + nonce as i64 * 1_000), Wh(100))
            .at(nonce, TimestampMs(now_ms));
    Signed::sign(order, key).expect("sign").to_json()
}

/// One `POST /api/v1/orders`, signed at `ts_ms` (wall clock): status, `Retry-After`, JSON body.
async fn post_order(
    client: &reqwest::Client,
    address: &str,
    key: &SigningKey,
    body: &[u8],
    ts_ms: i64,
) -> (u16, Option<String>, Value) {
    let path = "/api/v1/orders";
    let mut request = client.post(format!("{address}{path}")).body(body.to_vec());
    for (name, value) in sign_request(key, "POST", path, body, ts_ms) {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().expect("ascii").to_owned());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

/// The value of the `gridex_orders_total{result="rate_limited"}` series (0 when absent).
async fn rate_limited_total(client: &reqwest::Client, address: &str) -> u64 {
    let text = client.get(format!("{address}/metrics")).send().await.expect("metrics");
    let text = text.text().await.expect("a text body");
    let series = r#"gridex_orders_total{result="rate_limited"} "#;
    text.lines().find_map(|line| line.strip_prefix(series)).map_or(0, |value| value.trim().parse().expect("a count"))
}

fn logged(test_db: &TestDb, key: &SigningKey) -> i64 {
    let mut conn = test_db.db.get().expect("a connection");
    order_commands::table
        .filter(order_commands::account_id.eq(account(key).to_hex()))
        .count()
        .get_result(&mut conn)
        .expect("count the command log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_flood_over_http_is_answered_429_rate_limited_with_retry_after() {
    for test_db in TestDb::all() {
        eprintln!("backend {:?}", test_db.db.backend());
        order_flood(test_db).await;
    }
}

async fn order_flood(test_db: TestDb) {
    let (flooder, neighbour) = (protocol::testing::signing_key(31), protocol::testing::signing_key(32));
    let (flooder_id, neighbour_id) = (account(&flooder), account(&neighbour));
    let homes = [(flooder_id, "Flooder"), (neighbour_id, "Neighbour")];
    common::seed_market_with_homes(&test_db.db, &zone(), "Flood zone", SLOT_LEN_MS, &homes).await;
    // The market clock stands still unless the test moves it: the limit reads only this clock.
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let config = ExchangeConfig {
        order_commands_per_account_per_s: PER_S,
        order_commands_burst: BURST,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    let app = common::app_builder(Settings::default(), test_db.db.clone(), config)
        .clock(clock.clone(), 1)
        .mqtt(None)
        .build()
        .await
        .expect("the app starts");
    let address = app.url();
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let metric_before = rate_limited_total(&client, &address).await;

    let market_ms = clock.now_ms();
    let mut answers = Vec::new();
    let mut signed_at = Vec::new();
    for nonce in 1..=FLOOD {
        let ts_ms = SystemClock.now_ms();
        signed_at.push(ts_ms);
        answers.push(post_order(&client, &address, &flooder, &sell(&flooder, nonce, market_ms), ts_ms).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, _, _)| *status).collect();
    let burst = usize::try_from(BURST).expect("small");
    let mut expected = vec![201; burst];
    expected.resize(usize::try_from(FLOOD).expect("small"), 429);
    assert_eq!(statuses, expected, "the burst is accepted, the rest refused: {answers:?}");
    for (status, retry_after, body) in &answers[burst..] {
        assert_eq!((*status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");
        assert!(body["message"].is_string(), "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "429 says when to come back");
    }
    assert!(answers[..burst].iter().all(|(_, retry_after, _)| retry_after.is_none()));
    assert_eq!(logged(&test_db, &flooder), i64::from(BURST), "no refused order is logged");
    let refused = FLOOD - u64::from(BURST);
    assert_eq!(rate_limited_total(&client, &address).await - metric_before, refused, "each refusal is counted");

    // The neighbour in the same zone is not limited by the flooder's bucket.
    let order = sell(&neighbour, 1, market_ms);
    let neighbours = post_order(&client, &address, &neighbour, &order, SystemClock.now_ms()).await;
    assert_eq!(neighbours.0, 201, "{neighbours:?}");

    // After Retry-After (on the market clock) the first refused order, sent again as it was signed
    // (a new request signature: each is accepted once), is accepted; the next is still too early.
    clock.advance(1_000);
    let retry = sell(&flooder, u64::from(BURST) + 1, market_ms);
    let resent = post_order(&client, &address, &flooder, &retry, signed_at[burst] + 1).await;
    assert_eq!(resent.0, 201, "{resent:?}");
    let next = sell(&flooder, u64::from(BURST) + 2, market_ms);
    let early = post_order(&client, &address, &flooder, &next, signed_at[burst + 1] + 1).await;
    assert_eq!((early.0, early.2["error"].as_str()), (429, Some("rate_limited")), "{early:?}");
    assert_eq!(logged(&test_db, &flooder), i64::from(BURST) + 1);

    app.shutdown().await.expect("shuts down cleanly");
}
