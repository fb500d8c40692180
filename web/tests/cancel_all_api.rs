//! `cancel_all` over HTTP (issue 16): `POST /api/v1/orders` takes the signed command like an order,
//! cancel or replace and answers with the typed `OrderReply` listing every order it cancelled.

mod common;

use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use protocol::{AccountId, CancelAll, Order, PricePerKwh, Side, Signed, SlotId, TimeInForce, TimestampMs, Wh, ZoneId};
use serde_json::{json, Value};
use web::application::Application;
use web::settings::Settings;

const ZONE: &str = "cancel-all-zone";
const SLOT_LEN_MS: i64 = 900_000;

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("valid zone")
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

/// The open slot `hours` from now.
fn slot(hours: i64) -> SlotId {
    SlotId::containing(TimestampMs(SystemClock.now_ms() + hours * 3_600_000), SLOT_LEN_MS)
}

async fn signed_request(app: &Application, key: &SigningKey, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let request = common::signed(&reqwest::Client::new(), &app.url(), key, (method, path, body), SystemClock.now_ms());
    common::json_answer(request).await
}

/// Places a resting sell (above every buy: nothing trades).
async fn rest(app: &Application, key: &SigningKey, slot: SlotId, nonce: u64) {
    let order = Order::gtc(account(key), zone(), slot, Side::Sell, PricePerKwh(250_000), Wh(100))
        .at(nonce, TimestampMs(SystemClock.now_ms()));
    assert_eq!(order.tif, TimeInForce::Gtc);
    let body = Signed::sign(order, key).expect("sign").to_json();
    let (status, reply) = signed_request(app, key, "POST", "/api/v1/orders", &body).await;
    assert_eq!(status, 201, "{reply}");
}

async fn my_order_nonces(app: &Application, key: &SigningKey) -> Vec<u64> {
    let (status, orders) = signed_request(app, key, "GET", "/api/v1/me/orders", b"").await;
    assert_eq!(status, 200, "{orders}");
    let mut nonces: Vec<u64> = orders
        .as_array()
        .expect("a list")
        .iter()
        .map(|order| order["order_nonce"].as_u64().expect("a nonce"))
        .collect();
    nonces.sort();
    nonces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_all_posted_to_the_orders_endpoint_cancels_the_accounts_orders_and_lists_them() {
    let test_db = TestDb::any();
    let (alice, bob) = (protocol::testing::signing_key(41), protocol::testing::signing_key(42));
    let (alice_id, bob_id) = (account(&alice), account(&bob));
    let homes = [(alice_id, "Alice"), (bob_id, "Bob")];
    common::seed_market_with_homes(&test_db.db, &zone(), "Cancel-all zone", SLOT_LEN_MS, &homes).await;
    let app = common::start_app(Settings::default(), &test_db.db).await;

    rest(&app, &alice, slot(1), 1).await;
    rest(&app, &alice, slot(3), 2).await;
    rest(&app, &bob, slot(1), 1).await;

    let cancel_all =
        CancelAll { account: alice_id, zone: zone(), slot: None, nonce: 3, ts_ms: TimestampMs(SystemClock.now_ms()) };
    let body = Signed::sign(cancel_all, &alice).expect("sign").to_json();
    let (status, reply) = signed_request(&app, &alice, "POST", "/api/v1/orders", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (&reply["status"], &reply["outcome"], &reply["order_nonce"]),
        (&json!("accepted"), &json!("cancelled"), &Value::Null)
    );
    let updates = reply["updates"].as_array().expect("updates");
    let mut cancelled: Vec<u64> =
        updates.iter().map(|update| update["order_nonce"].as_u64().expect("a nonce")).collect();
    cancelled.sort();
    assert_eq!(cancelled, vec![1, 2], "{reply}");
    assert!(updates.iter().all(|update| update["status"] == json!("cancelled")), "{reply}");
    assert_eq!(reply["trades"], json!([]));
    assert_eq!(my_order_nonces(&app, &alice).await, Vec::<u64>::new());
    assert_eq!(my_order_nonces(&app, &bob).await, vec![1], "Bob's order rests");

    // The same signed command again: refused, nothing changes.
    let (status, refused) = signed_request(&app, &alice, "POST", "/api/v1/orders", &body).await;
    assert_eq!((status, &refused["error"]), (409, &json!("duplicate")), "{refused}");
    // Bob cannot send Alice's cancel-all under his request signature.
    let (status, refused) = signed_request(&app, &bob, "POST", "/api/v1/orders", &body).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(my_order_nonces(&app, &bob).await, vec![1]);
    app.shutdown().await.expect("the server exits cleanly");
}
