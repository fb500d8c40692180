//! A household floods the exchange with valid commands signed by its own account key (issue 12,
//! "Abuse limits"), through the real path: published to a real broker (embedded rumqttd, and
//! Mosquitto when `MQTT_URL` is set), verified and committed by the exchange (SQLite, and
//! PostgreSQL when `DATABASE_URL` is set). Before the per-account rate limit every command of the
//! flood was logged and applied, starving the zone's book task and the group commit.

mod support;

use support::decode;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use gridex_store::clock::ManualClock;
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use protocol::{topics, AccountId, Cancel, OrderStatus, OrderUpdate, Reason, Reject, Side, Signed, SlotId};
use protocol::{TimestampMs, ZoneId};
use std::sync::Arc;
use support::*;

/// The exchange's clock: a fixed instant, moved by hand (the limit reads only this clock).
const NOW_MS: i64 = 1_790_000_000_000;
/// The limit under test: 2 commands per second, 10 at once.
const PER_S: u32 = 2;
const BURST: u32 = 10;
/// The flood: well beyond the burst, all at one instant of the exchange's clock.
const FLOOD: u64 = 25;
/// The neighbour's orders, published after the flood.
const NEIGHBOUR_ORDERS: u64 = 5;

fn account_hex(key: &SigningKey) -> String {
    AccountId::from_verifying_key(&key.verifying_key()).to_hex()
}

/// What the exchange answered an account's commands: `(nonce, Ok(order status) | Err(reason))`,
/// in the order the answers came.
async fn answers(
    probe: &mut Probe,
    zone: &ZoneId,
    key: &SigningKey,
    count: u64,
) -> Vec<(u64, Result<OrderStatus, Reason>)> {
    let account = account_hex(key);
    let (events, rejects) = (topics::events(zone, &account), topics::rejects(zone, &account));
    let mut answered = Vec::new();
    for _ in 0..count {
        let (topic, payload) = probe.next_any(&[&events, &rejects]).await;
        if topic == rejects {
            let reject = decode::<Reject>(&payload).expect("a reject");
            answered.push((reject.seq.expect("the reject names the nonce"), Err(reject.reason)));
        } else {
            let update = decode::<OrderUpdate>(&payload).expect("an order update");
            answered.push((update.order_nonce, Ok(update.status)));
        }
    }
    answered
}

fn logged_nonces(test_db: &TestDb, key: &SigningKey) -> Vec<i64> {
    let mut conn = test_db.db.get().expect("a connection");
    order_commands::table
        .filter(order_commands::account_id.eq(account_hex(key)))
        .select(order_commands::nonce)
        .order(order_commands::nonce)
        .load(&mut conn)
        .expect("the command log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_flood_from_one_account_is_rate_limited_and_its_neighbour_is_unaffected() {
    each_backend_and_broker(|test_db, broker| async move {
        order_flood(&test_db, &broker).await;
    })
    .await;
}

async fn order_flood(test_db: &TestDb, broker: &BrokerAddr) {
    let zone = ZoneId::parse(&format!("f{}", unique())).expect("a zone id");
    seed_zone(&test_db.db, &zone, 900_000);
    let (flooder, _) = seed_household(&test_db.db, &zone, 21, 10_000);
    let (neighbour, _) = seed_household(&test_db.db, &zone, 22, 10_000);
    let clock = Arc::new(ManualClock::new(NOW_MS));
    // Only this test's zone: tests share Mosquitto.
    let config = ExchangeConfig {
        zones: vec![zone.clone()],
        order_commands_per_account_per_s: PER_S,
        order_commands_burst: BURST,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    let options = mqtt_options(broker, &format!("exchange-{}", unique()));
    let exchange =
        exchange::service::start(config, test_db.db.clone(), clock.clone(), Some(options)).await.expect("starts");
    tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
    let mut probe = Probe::connect(broker, std::slice::from_ref(&zone)).await;
    let slot = SlotId::new(NOW_MS - NOW_MS % 900_000 + 4 * 900_000).expect("a slot");
    // Sells above the neighbour's buys: nothing trades, every accepted order rests.
    let sell =
        |nonce: u64| order(&flooder, &zone, slot, Side::Sell, 200_000 + nonce as i64 * 1_000, 100, nonce, NOW_MS);
    let buy = |nonce: u64| order(&neighbour, &zone, slot, Side::Buy, 100_000, 100, nonce, NOW_MS);
    let flooder_orders = topics::orders(&zone, &account_hex(&flooder));

    // The flood, then the neighbour's orders, all at one instant of the exchange's clock.
    for nonce in 1..=FLOOD {
        probe.publish(flooder_orders.clone(), sell(nonce)).await;
    }
    for nonce in 1..=NEIGHBOUR_ORDERS {
        probe.publish(topics::orders(&zone, &account_hex(&neighbour)), buy(nonce)).await;
    }
    let flood = answers(&mut probe, &zone, &flooder, FLOOD).await;
    let burst = u64::from(BURST);
    let expected: Vec<(u64, Result<OrderStatus, Reason>)> = (1..=FLOOD)
        .map(|nonce| (nonce, if nonce <= burst { Ok(OrderStatus::Open) } else { Err(Reason::RateLimited) }))
        .collect();
    let mut sorted = flood.clone();
    sorted.sort_by_key(|(nonce, _)| *nonce);
    assert_eq!(sorted, expected, "exactly the burst is accepted, in arrival order; the rest is rate_limited");
    let neighbours = answers(&mut probe, &zone, &neighbour, NEIGHBOUR_ORDERS).await;
    assert!(neighbours.iter().all(|(_, answer)| *answer == Ok(OrderStatus::Open)), "{neighbours:?}");
    let accepted: Vec<i64> = (1..=BURST.into()).collect();
    assert_eq!(logged_nonces(test_db, &flooder), accepted, "no refused command of the flood is logged");
    assert_eq!(logged_nonces(test_db, &neighbour).len() as u64, NEIGHBOUR_ORDERS);

    // One bucket per account whatever the entry: over HTTP, and for a cancel, it is just as empty.
    let refused = exchange.submit_command(sell(FLOOD + 1)).await.expect_err("limited over HTTP too");
    assert_eq!(refused.reason, Reason::RateLimited, "{refused:?}");
    let cancel = Cancel {
        account: AccountId::from_verifying_key(&flooder.verifying_key()),
        zone: zone.clone(),
        slot,
        order_nonce: 1,
        nonce: FLOOD + 2,
        ts_ms: TimestampMs(NOW_MS),
    };
    let cancel = Signed::sign(cancel, &flooder).expect("sign a cancel").to_json();
    let refused = exchange.submit_command(cancel.clone()).await.expect_err("a cancel counts too");
    assert_eq!(refused.reason, Reason::RateLimited, "{refused:?}");

    // The bucket refills on the exchange's clock: half a second later (2 per second) one command
    // passes, and a refused command may be sent again as it was signed (its nonce was not used).
    clock.advance(500);
    probe.publish(flooder_orders.clone(), sell(burst + 1)).await;
    probe.publish(flooder_orders.clone(), sell(burst + 2)).await;
    let retried = answers(&mut probe, &zone, &flooder, 2).await;
    let mut retried_sorted = retried.clone();
    retried_sorted.sort_by_key(|(nonce, _)| *nonce);
    assert_eq!(retried_sorted, vec![(burst + 1, Ok(OrderStatus::Open)), (burst + 2, Err(Reason::RateLimited))]);
    clock.advance(500);
    let ack = exchange.submit_command(cancel).await.expect("the refused cancel, resent a token later");
    assert_eq!(ack.updates.first().map(|update| update.status), Some(OrderStatus::Cancelled));
    let mut logged: Vec<i64> = (1..=BURST.into()).collect();
    logged.extend([burst as i64 + 1, FLOOD as i64 + 2]);
    assert_eq!(logged_nonces(test_db, &flooder), logged);
    exchange.shutdown().await;
}
