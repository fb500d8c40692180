//! The command relay between instances (issue 13, "any web server takes any zone's orders"): an
//! instance that takes a command over HTTP for a zone another instance owns forwards the signed
//! bytes to the broker; the owner verifies, commits and matches them as its own and answers through
//! the broker, so the caller gets the answer it would have had from the owner. On PostgreSQL only
//! (SQLite takes one exchange, which owns every zone).

mod support;

use ed25519_dalek::{SigningKey, Verifier};
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::testing::TestDb;
use gridex_store::Database;
use protocol::{topics, OrderStatus, Reason, Side, SlotId, ZoneId};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const NOW_MS: i64 = 1_790_000_000_000;
const SLOT_LEN_MS: i64 = 900_000;
/// Short enough for the timeout test to end soon; the answered tests never reach it.
const TEST_RELAY_TIMEOUT_MS: u64 = 20_000;

fn open_slot() -> SlotId {
    SlotId::new(NOW_MS - NOW_MS % SLOT_LEN_MS + 4 * SLOT_LEN_MS).expect("a slot")
}

/// An instance that leases only `zone`.
fn config(zone: &ZoneId, relay_timeout_ms: u64) -> ExchangeConfig {
    ExchangeConfig {
        zones: vec![zone.clone()],
        instance_id: format!("instance-{}", unique()),
        lease_ttl_ms: 1_500,
        lease_renew_interval_ms: 200,
        relay_timeout_ms,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    }
}

/// Starts an instance leasing `zone`, with its own pool and broker session, once subscribed.
async fn start(test_db: &TestDb, broker: &BrokerAddr, zone: &ZoneId, relay_timeout_ms: u64) -> ExchangeHandle {
    let db = Database::open(&test_db.url, 4).expect("a pool of its own");
    let options = mqtt_options(broker, &format!("relay-{}", unique()));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let exchange =
        service::start(config(zone, relay_timeout_ms), db, clock, Some(options)).await.expect("the instance starts");
    tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
    exchange
}

fn two_zones() -> (ZoneId, ZoneId) {
    let id = unique();
    (ZoneId::parse(&format!("n{id}")).expect("zone"), ZoneId::parse(&format!("s{id}")).expect("zone"))
}

/// Every test here: on PostgreSQL, on each broker (the embedded one, and Mosquitto with `MQTT_URL`).
async fn on_postgres_and_every_broker<F, Fut>(scenario: F)
where
    F: Fn(TestDb, BrokerAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for broker in brokers() {
        let Some(test_db) = postgres_for("relaying needs PostgreSQL (SQLite takes one exchange)") else { return };
        eprintln!("broker {}", broker.name);
        scenario(test_db, broker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_taken_by_an_instance_that_does_not_own_its_zone_is_relayed_matched_and_answered_as_by_the_owner() {
    on_postgres_and_every_broker(|test_db, broker| async move {
        let (north, south) = two_zones();
        seed_zone(&test_db.db, &north, SLOT_LEN_MS);
        seed_zone(&test_db.db, &south, SLOT_LEN_MS);
        let (seller, _) = seed_household(&test_db.db, &south, 31, 10_000);
        let (buyer, _) = seed_household(&test_db.db, &south, 32, 10_000);
        let north_owner = start(&test_db, &broker, &north, TEST_RELAY_TIMEOUT_MS).await;
        let south_owner = start(&test_db, &broker, &south, TEST_RELAY_TIMEOUT_MS).await;
        let slot = open_slot();

        // The seller at the owner, the buyer at the other instance: relayed, matched, answered.
        let sell = order(&seller, &south, slot, Side::Sell, 120_000, 500, 1, NOW_MS);
        let sold = south_owner.submit_command(sell).await.expect("the owner takes the sell");
        let buy = order(&buyer, &south, slot, Side::Buy, 130_000, 500, 1, NOW_MS);
        let bought = tokio::time::timeout(ANSWER_TIMEOUT, north_owner.submit_command(buy.clone()))
            .await
            .expect("answered in time")
            .expect("the relayed buy is accepted by the owner");
        assert!(bought.command_seq > sold.command_seq, "logged after the sell, by the owner");
        assert_eq!(bought.trades.len(), 1, "matched against the resting sell: {bought:?}");
        assert_eq!(bought.trades[0].qty_wh.0, 500);
        assert_eq!(bought.updates.last().map(|update| update.status), Some(OrderStatus::Filled));
        assert!(north_owner
            .open_orders(protocol::AccountId::from_verifying_key(&buyer.verifying_key()))
            .await
            .expect("answered")
            .is_empty());
        assert!(!north_owner.zones().contains(&south), "the relaying instance never served the zone");

        // The same command again, at either instance: the same refusal, word for word.
        let at_owner = south_owner.submit_command(buy.clone()).await.expect_err("a resend");
        let relayed = tokio::time::timeout(ANSWER_TIMEOUT, north_owner.submit_command(buy))
            .await
            .expect("answered in time")
            .expect_err("a resend");
        assert_eq!(at_owner.reason, Reason::Duplicate);
        assert_eq!(relayed, at_owner);

        // And a resting order answered through the relay equals the owner's own view of it.
        let rest = order(&seller, &south, slot, Side::Sell, 125_000, 200, 2, NOW_MS);
        let rested = north_owner.submit_command(rest).await.expect("relayed and accepted");
        assert!(rested.trades.is_empty());
        let seller_account = protocol::AccountId::from_verifying_key(&seller.verifying_key());
        let open: Vec<_> = south_owner
            .open_orders(seller_account)
            .await
            .expect("answered")
            .into_iter()
            .map(|order| order.update)
            .collect();
        assert_eq!(rested.updates, open, "the relayed answer is the owner's state of the order");
        north_owner.shutdown().await;
        south_owner.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_command_no_instance_answers_is_refused_as_having_no_live_owner() {
    on_postgres_and_every_broker(|test_db, broker| async move {
        let (north, south) = two_zones();
        seed_zone(&test_db.db, &north, SLOT_LEN_MS);
        seed_zone(&test_db.db, &south, SLOT_LEN_MS);
        let (buyer, _) = seed_household(&test_db.db, &south, 33, 10_000);
        // Nobody serves the south zone.
        let north_owner = start(&test_db, &broker, &north, 300).await;
        let buy = order(&buyer, &south, open_slot(), Side::Buy, 130_000, 500, 1, NOW_MS);
        let refused = tokio::time::timeout(ANSWER_TIMEOUT, north_owner.submit_command(buy))
            .await
            .expect("answered in time")
            .expect_err("no owner answered");
        assert_eq!(refused.reason, Reason::Overloaded, "{refused:?}");
        assert!(refused.message.contains(&format!("zone {south} has no live owner")), "{}", refused.message);
        assert!(refused.message.contains("may still have been committed"), "{}", refused.message);
        north_owner.shutdown().await;
    })
    .await;
}

/// A broker client allowed on the relay topic (a compromised web server, or a broker without ACL)
/// relays an order whose signature does not verify: the owner refuses it, signs the refusal, and
/// nothing is logged. The relay launders nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_order_with_a_forged_signature_is_refused() {
    on_postgres_and_every_broker(|test_db, broker| async move {
        let (_, south) = two_zones();
        seed_zone(&test_db.db, &south, SLOT_LEN_MS);
        let (buyer, _) = seed_household(&test_db.db, &south, 34, 10_000);
        let south_owner = start(&test_db, &broker, &south, TEST_RELAY_TIMEOUT_MS).await;

        let genuine =
            String::from_utf8(order(&buyer, &south, open_slot(), Side::Buy, 130_000, 500, 1, NOW_MS)).expect("utf-8");
        let forged = genuine.replace("\"qty_wh\":500", "\"qty_wh\":5000");
        assert_ne!(forged, genuine);

        let instance = format!("mallory{}", unique());
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(mqtt_options(&broker, &format!("mallory-{}", unique())), 100);
        let (replies_tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                        let _ = replies_tx.send(publish.payload.to_vec());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        client.subscribe(topics::relay_replies(&south, &instance), rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
        tokio::time::timeout(ANSWER_TIMEOUT, subscribed.recv()).await.expect("subscribed in time");
        let topic = topics::relay(&south, &instance, "r1");
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, forged.into_bytes()).await.expect("publish");

        let payload = tokio::time::timeout(ANSWER_TIMEOUT, replies.recv()).await.expect("answered").expect("a reply");
        let envelope: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        let body = envelope["body"].as_str().expect("a body");
        let sig: [u8; 64] = hex_bytes(envelope["sig"].as_str().expect("a signature")).try_into().expect("64 bytes");
        let mut signed = b"gridex-relay-reply/1\n".to_vec();
        signed.extend_from_slice(body.as_bytes());
        let operator = protocol::testing::operator_key().verifying_key();
        operator.verify(&signed, &ed25519_dalek::Signature::from_bytes(&sig)).expect("signed by the operator");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["request"], "r1");
        assert_eq!(body["outcome"]["status"], "refused", "{body}");
        assert_eq!(body["outcome"]["reason"], "bad_signature", "{body}");
        assert_eq!(logged_commands(&test_db.db, &buyer), 0, "nothing of the forged order is logged");

        // The genuine order is still accepted: the forgery took no nonce.
        let accepted = south_owner.submit_command(genuine.into_bytes()).await.expect("the genuine order");
        assert_eq!(accepted.updates.first().map(|update| update.open_qty_wh.0), Some(500));
        south_owner.shutdown().await;
    })
    .await;
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2).expect("even length"), 16).expect("hex"))
        .collect()
}

fn logged_commands(db: &Database, account: &SigningKey) -> i64 {
    use diesel::prelude::*;
    use gridex_store::schema::order_commands;
    let account = protocol::AccountId::from_verifying_key(&account.verifying_key()).to_hex();
    let mut conn = db.get().expect("a connection");
    order_commands::table.filter(order_commands::account_id.eq(account)).count().get_result(&mut conn).expect("the log")
}

/// A `cancel_all` taken by an instance that does not own its zone: its signed bytes are relayed like
/// any command, the owner cancels every resting order of the account in the zone, and the caller
/// gets the owner's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_all_taken_by_an_instance_that_does_not_own_its_zone_is_relayed_and_answered_with_its_list() {
    on_postgres_and_every_broker(|test_db, broker| async move {
        let (north, south) = two_zones();
        seed_zone(&test_db.db, &north, SLOT_LEN_MS);
        seed_zone(&test_db.db, &south, SLOT_LEN_MS);
        let (seller, _) = seed_household(&test_db.db, &south, 35, 10_000);
        let north_owner = start(&test_db, &broker, &north, TEST_RELAY_TIMEOUT_MS).await;
        let south_owner = start(&test_db, &broker, &south, TEST_RELAY_TIMEOUT_MS).await;
        let later = SlotId::new(open_slot().start_ms() + 2 * SLOT_LEN_MS).expect("a slot");
        for (nonce, slot) in [(1, open_slot()), (2, later)] {
            let sell = order(&seller, &south, slot, Side::Sell, 200_000, 100, nonce, NOW_MS);
            south_owner.submit_command(sell).await.expect("the owner takes the sell");
        }
        let account = protocol::AccountId::from_verifying_key(&seller.verifying_key());
        let cancel_all = protocol::CancelAll {
            account,
            zone: south.clone(),
            slot: None,
            nonce: 3,
            ts_ms: protocol::TimestampMs(NOW_MS),
        };
        let bytes = protocol::Signed::sign(cancel_all, &seller).expect("signs").to_json();
        let ack = tokio::time::timeout(ANSWER_TIMEOUT, north_owner.submit_command(bytes))
            .await
            .expect("answered in time")
            .expect("the relayed cancel-all is accepted by the owner");
        let cancelled: Vec<(u64, OrderStatus)> =
            ack.updates.iter().map(|update| (update.order_nonce, update.status)).collect();
        assert_eq!(cancelled, vec![(1, OrderStatus::Cancelled), (2, OrderStatus::Cancelled)]);
        assert!(
            south_owner.open_orders(account).await.expect("answered").is_empty(),
            "the owner's books hold nothing of the seller"
        );
        north_owner.shutdown().await;
        south_owner.shutdown().await;
    })
    .await;
}
