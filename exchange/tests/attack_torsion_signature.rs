//! Attack (issue 11): a registered trader signs an order whose R carries a torsion component of
//! order 2, with s recomputed. Verified alone it is refused; the exchange used to verify batches
//! with random coefficients, which cancel that component whenever the order's coefficient is even,
//! so among other orders it was accepted about half the time, and the logged command then failed
//! every third party's verification. Through the real path (trader → broker → exchange → command
//! log): the torsion order must be refused with `bad_signature` every time, whatever shares its
//! batch, and never reach the log, while every valid order around it is accepted.

mod support;

use support::decode;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service;
use gridex_store::clock::ManualClock;
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use protocol::{forge, topics, AccountId, Order, OrderStatus, OrderUpdate, Reason, Reject, Signed, SlotId, ZoneId};
use std::sync::Arc;
use support::*;

/// The exchange's clock: a fixed instant.
const NOW_MS: i64 = 1_790_000_000_000;
/// Rounds of the attack; the old code accepted the torsion order in about half of them.
const ROUNDS: u64 = 20;
/// Valid orders published around the torsion order in each round, back to back so that they share
/// verification batches with it.
const VALID_PER_ROUND: u64 = 50;
/// Nonces per round: room for the valid orders and the torsion order.
const NONCES_PER_ROUND: u64 = 100;

/// A resting sell order of `key` (all at one price, so none trades with another).
fn sell(key: &SigningKey, zone: &ZoneId, slot: SlotId, nonce: u64) -> Signed<Order> {
    let bytes = order(key, zone, slot, protocol::Side::Sell, 120_000, 100, nonce, NOW_MS);
    Signed::<Order>::parse(&bytes).expect("our own order parses")
}

/// The same order with R = rB + T (T of order 2) and s recomputed for that R.
fn torsion_sell(key: &SigningKey, zone: &ZoneId, slot: SlotId, nonce: u64) -> Vec<u8> {
    let mut signed = sell(key, zone, slot, nonce);
    signed.signature = forge::torsion_r(key, signed.signing_bytes(), 4);
    assert_eq!(signed.verify().unwrap_err().reason, Reason::BadSignature, "refused alone");
    signed.to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torsion_r_order_is_refused_in_every_batch_and_never_logged() {
    each_backend_and_broker(|test_db, broker| async move {
        run_attack(test_db, &broker).await;
    })
    .await;
}

async fn run_attack(test_db: TestDb, broker: &BrokerAddr) {
    let zone = ZoneId::parse(&format!("t{}", unique())).expect("a zone id");
    seed_zone(&test_db.db, &zone, 900_000);
    let (trader, _) = seed_household(&test_db.db, &zone, 1, 10_000);
    let account = AccountId::from_verifying_key(&trader.verifying_key()).to_hex();
    let config = ExchangeConfig {
        zones: vec![zone.clone()],
        // Every valid order of the test rests in the book.
        open_orders_per_account_max: (ROUNDS * VALID_PER_ROUND) as usize,
        // And all of them at one instant of the test's clock: the rate limit is not what this tests
        // (`attack_order_flood.rs` does).
        order_commands_burst: (ROUNDS * (VALID_PER_ROUND + 1)) as u32,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let options = mqtt_options(broker, &format!("exchange-{}", unique()));
    let exchange = service::start(config, test_db.db.clone(), clock, Some(options)).await.expect("the exchange starts");
    tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
    let mut probe = Probe::connect(broker, std::slice::from_ref(&zone)).await;
    let slot = SlotId::new(NOW_MS - NOW_MS % 900_000 + 4 * 900_000).expect("a slot");
    let (orders_topic, events_topic, rejects_topic) =
        (topics::orders(&zone, &account), topics::events(&zone, &account), topics::rejects(&zone, &account));

    let mut torsion_nonces = Vec::new();
    for round in 0..ROUNDS {
        // The torsion order sits at a different place in each round.
        let torsion_at = (round * 7 + 3) % (VALID_PER_ROUND + 1);
        for index in 0..=VALID_PER_ROUND {
            let nonce = round * NONCES_PER_ROUND + index + 1;
            let payload = if index == torsion_at {
                torsion_nonces.push(nonce);
                torsion_sell(&trader, &zone, slot, nonce)
            } else {
                sell(&trader, &zone, slot, nonce).to_json()
            };
            probe.publish(orders_topic.clone(), payload).await;
        }
        let (mut opened, mut refused) = (0, 0);
        while opened + refused < VALID_PER_ROUND + 1 {
            let (topic, payload) = probe.next_any(&[&events_topic, &rejects_topic]).await;
            if topic == rejects_topic {
                let reject = decode::<Reject>(&payload).expect("a reject");
                assert_eq!(
                    (reject.reason, reject.seq),
                    (Reason::BadSignature, Some(round * NONCES_PER_ROUND + torsion_at + 1)),
                    "round {round}: only the torsion order is refused, as bad_signature ({})",
                    reject.message
                );
                refused += 1;
            } else {
                let update = decode::<OrderUpdate>(&payload).expect("an order update");
                assert_eq!(update.status, OrderStatus::Open, "round {round}");
                assert!(!torsion_nonces.contains(&update.order_nonce), "round {round}: the torsion order was accepted");
                opened += 1;
            }
        }
        assert_eq!((opened, refused), (VALID_PER_ROUND, 1), "round {round}");
    }

    let mut conn = test_db.db.get().expect("a connection");
    let logged: Vec<i64> = order_commands::table
        .filter(order_commands::account_id.eq(&account))
        .select(order_commands::nonce)
        .load(&mut conn)
        .expect("the command log");
    assert_eq!(logged.len() as u64, ROUNDS * VALID_PER_ROUND, "every valid order is logged");
    for nonce in &torsion_nonces {
        assert!(!logged.contains(&(*nonce as i64)), "the torsion order {nonce} never reaches the log");
    }
    exchange.shutdown().await;
}
