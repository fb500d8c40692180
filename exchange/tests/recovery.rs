//! Crash recovery with a real process: the `exchange-node` binary serves a database and a broker;
//! the test submits orders over MQTT, SIGKILLs it mid-stream and restarts it, and checks that no
//! acknowledged order or trade is lost or duplicated and that the rebuilt books equal the books
//! before the crash (same orders, same priority, same open quantities).

#[path = "support/node.rs"]
mod node;
mod support;

use support::decode;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use node::*;
use protocol::topics;
use protocol::{Side, SlotId, Trade, ZoneId};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use support::*;

const ACCOUNTS: u8 = 6;

/// What [`stream_orders`] saw: the acknowledged `(account, nonce)`s, the trades published, and the
/// task still publishing the rest of the stream.
struct Streamed {
    acked: BTreeSet<(String, u64)>,
    trades: Vec<Trade>,
    publisher: tokio::task::JoinHandle<()>,
}

/// Publishes `count` orders and collects acknowledgements (order updates) until `stop_after` of the
/// orders sent are answered.
async fn stream_orders(
    probe: &mut Probe,
    stream: &mut Stream,
    keys: &[SigningKey],
    zone: &ZoneId,
    slot: SlotId,
    count: usize,
    stop_after: usize,
) -> Streamed {
    let mut sent = BTreeSet::new();
    let publisher = probe.client.clone();
    let mut batch = Vec::new();
    for _ in 0..count {
        let (seed, nonce, bytes) = stream.order(keys, zone, slot);
        let account = account_hex(&keys[seed as usize]);
        sent.insert((account.clone(), nonce));
        batch.push((topics::orders(zone, &account), bytes));
    }
    // Publishing runs beside the collection, so the kill can land mid-stream.
    let publisher = tokio::spawn(async move {
        for (topic, bytes) in batch {
            if publisher.publish(topic, rumqttc::QoS::AtLeastOnce, false, bytes).await.is_err() {
                break;
            }
        }
    });
    let mut acked = BTreeSet::new();
    let mut answered = BTreeSet::new();
    let mut seen_trades = Vec::new();
    let watched: Vec<String> = keys
        .iter()
        .flat_map(|key| [topics::events(zone, &account_hex(key)), topics::rejects(zone, &account_hex(key))])
        .chain([topics::trades(zone)])
        .collect();
    let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
    while answered.len() < stop_after {
        let (topic, payload) = probe.next_any(&watched).await;
        if topic.ends_with("/trades") {
            seen_trades.push(decode::<Trade>(&payload).expect("a trade"));
        } else {
            let (key, accepted) = answer(&topic, &payload);
            if !accepted {
                answered.insert(key);
            } else if sent.contains(&key) {
                acked.insert(key.clone());
                answered.insert(key);
            }
        }
    }
    Streamed { acked, trades: seen_trades, publisher }
}

/// Waits until the node has taken in everything the stream published: once the publisher is done,
/// publishes a marker order (a sell at the top of the band, which rests and never trades) and waits
/// for its answer. The broker delivers one client's messages in order and the node answers a command
/// only once it is applied and its trades are stored, so after the answer nothing the stream sent is
/// still on its way. A broker may drop a message while the node's queue is full (Mosquitto's
/// `max_queued_messages`), so a marker without an answer is followed by another. Timing-based
/// quiescence (two equal dumps a moment apart) was not enough on a loaded machine: a redelivery could
/// start after the dumps, and its trades were stored after the test read them.
async fn settle(
    probe: &mut Probe,
    stream: &mut Stream,
    keys: &[SigningKey],
    zone: &ZoneId,
    slot: SlotId,
    publisher: tokio::task::JoinHandle<()>,
) {
    publisher.await.expect("the publisher finishes");
    let account = account_hex(&keys[0]);
    let answers = [topics::events(zone, &account), topics::rejects(zone, &account)];
    let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
    for _ in 0..10 {
        let nonce = stream.next_nonce(0);
        let now_ms = chrono::Utc::now().timestamp_millis();
        probe
            .publish(
                topics::orders(zone, &account),
                order(&keys[0], zone, slot, Side::Sell, 300_000, 100, nonce, now_ms),
            )
            .await;
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let (topic, payload) = probe.next_any(&answers).await;
                let ((_, answered_nonce), _) = answer(&topic, &payload);
                if answered_nonce == nonce {
                    return;
                }
            }
        })
        .await;
        if answered.is_ok() {
            return;
        }
    }
    panic!("the node answered none of 10 marker orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_the_restarted_exchange_rebuilds_the_same_books_and_loses_nothing_acknowledged() {
    each_backend_and_broker(|test_db, broker| async move {
        crash_and_recover(&test_db, &broker).await;
    })
    .await;
}

async fn crash_and_recover(test_db: &TestDb, broker: &BrokerAddr) {
    let zone = ZoneId::parse(&format!("r{}", unique())).expect("a zone id");
    seed_zone(&test_db.db, &zone, 900_000);
    let keys: Vec<SigningKey> =
        (0..ACCOUNTS).map(|seed| seed_household(&test_db.db, &zone, seed + 10, 10_000).0).collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let slot = SlotId::containing(protocol::TimestampMs(now_ms + 3 * 3_600_000), 900_000);
    let mut probe = Probe::connect(broker, std::slice::from_ref(&zone)).await;
    let mut stream = Stream::new(42, ACCOUNTS);

    // 1. Kill mid-stream: 3000 orders on their way, SIGKILL after 100 are answered.
    // One client id for every incarnation: the restarted node resumes the dead one's MQTT session.
    let client_id = format!("node-{}", unique());
    let node = Node::start(&test_db.url, broker, &client_id, &zone);
    let Streamed { acked, trades: mut seen_trades, publisher } =
        stream_orders(&mut probe, &mut stream, &keys, &zone, slot, 3_000, 100).await;
    node.kill();
    // Trades the dead node published that the broker has not delivered yet (it delivers each
    // subscription filter at its own pace).
    let trades_topic = topics::trades(&zone);
    for (topic, payload) in probe.drain(std::time::Duration::from_millis(500)).await {
        if topic == trades_topic {
            seen_trades.push(decode::<Trade>(&payload).expect("a trade"));
        }
    }
    let mut node = Node::start(&test_db.url, broker, &client_id, &zone);
    // The broker redelivers what the dead node took but never acknowledged, and what was published
    // while it was down; wait until the node has taken all of it.
    settle(&mut probe, &mut stream, &keys, &zone, slot, publisher).await;
    let rebuilt = node.dump();

    let log = logged(test_db);
    eprintln!("killed with {} acknowledged, {} logged of 3000 sent", acked.len(), log.len());
    let lost: Vec<_> = acked.difference(&log).collect();
    assert!(lost.is_empty(), "acknowledged orders missing from the log: {lost:?}");
    let stored = stored_trades(test_db);
    for trade in &seen_trades {
        let expected = (trade.price_per_kwh.0, trade.qty_wh.0, trade.buyer.to_hex(), trade.seller.to_hex());
        assert_eq!(stored.get(&trade.trade_id), Some(&expected), "published trade {} is stored", trade.trade_id);
    }
    let (derived, replayed) = replay_log(test_db);
    let missing: Vec<_> = derived.iter().filter(|(id, trade)| stored.get(id) != Some(trade)).collect();
    let extra: Vec<_> = stored.iter().filter(|(id, trade)| derived.get(id) != Some(trade)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "stored trades are exactly the trades the log implies: {} of {} derived trades not stored \
         ({missing:?}), {} of {} stored trades not derived ({extra:?})",
        missing.len(),
        derived.len(),
        extra.len(),
        stored.len()
    );
    assert_eq!(rebuilt, replayed, "the restarted node rebuilt every book from the log");
    assert!(!stored.is_empty(), "the stream should have traded");

    // 2. Quiescent books, then a kill: the rebuilt books equal the books before the crash exactly.
    let streamed = stream_orders(&mut probe, &mut stream, &keys, &zone, slot, 60, 60).await;
    settle(&mut probe, &mut stream, &keys, &zone, slot, streamed.publisher).await;
    let before = node.dump();
    let trades_before = stored_trades(test_db);
    node.kill();
    let mut node = Node::start(&test_db.url, broker, &client_id, &zone);
    let after = node.dump();
    assert_eq!(after, before, "same orders, same priority, same open quantities");
    assert_eq!(stored_trades(test_db), trades_before, "recovery added no trade and lost none");
    let open_orders: usize = after
        .as_array()
        .map_or(0, |books| books.iter().map(|book| book["orders"].as_array().map_or(0, Vec::len)).sum());
    assert!(open_orders > 0, "the books are not trivially empty");
    writeln!(node.stdin, "quit").expect("quit");
    assert_eq!(node.line(), "bye");
    let _ = node.child.wait();
}

/// The log is the truth: a command-log row that does not parse cannot be skipped, since replaying
/// the log without it would rebuild a different book from the one that acknowledged it (orders that
/// rested on it, trades it made). So the exchange refuses to start and names the row. The row is
/// written straight into `order_commands`, as a torn write or a bad manual edit would leave it; the
/// valid row before it shows that recovery names the row that is wrong, not the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_to_start_on_a_command_log_row_it_cannot_parse_and_names_the_row() {
    const NOW_MS: i64 = 1_790_000_000_000;
    const SLOT_LEN_MS: i64 = 900_000;
    for test_db in TestDb::all() {
        eprintln!("backend {:?}", test_db.db.backend());
        let zone = ZoneId::parse(&format!("c{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, SLOT_LEN_MS);
        let key = SigningKey::from_bytes(&[7; 32]);
        let slot = SlotId::containing(protocol::TimestampMs(NOW_MS), SLOT_LEN_MS).next(SLOT_LEN_MS).next(SLOT_LEN_MS);
        let valid = String::from_utf8(order(&key, &zone, slot, Side::Buy, 100_000, 1_000, 1, NOW_MS)).expect("utf-8");
        let torn = valid[..valid.len() / 2].to_owned();
        let rows = [(41_i64, 1_i64, valid), (42, 2, torn)];
        let (zone_id, account) = (zone.as_str().to_owned(), account_hex(&key));
        test_db
            .db
            .write_blocking(move |conn| {
                for (command_seq, nonce, payload) in rows {
                    diesel::insert_into(order_commands::table)
                        .values((
                            order_commands::command_seq.eq(command_seq),
                            order_commands::zone_id.eq(&zone_id),
                            order_commands::slot_start_ms.eq(slot.start_ms()),
                            order_commands::account_id.eq(&account),
                            order_commands::nonce.eq(nonce),
                            order_commands::kind.eq("order"),
                            order_commands::payload.eq(payload),
                            order_commands::received_ms.eq(NOW_MS),
                        ))
                        .execute(conn)?;
                }
                Ok::<_, gridex_store::DbError>(())
            })
            .expect("write the log rows");

        let config = exchange::config::ExchangeConfig {
            zones: vec![zone.clone()],
            ..exchange::config::ExchangeConfig::new(protocol::testing::operator_key())
        };
        let clock = Arc::new(gridex_store::clock::ManualClock::new(NOW_MS));
        let error = match exchange::service::start(config, test_db.db.clone(), clock, None).await {
            Ok(exchange) => {
                exchange.shutdown().await;
                panic!("the exchange started on a command log with a row it cannot parse");
            }
            Err(error) => error,
        };
        let message = error.to_string();
        assert!(message.contains(&format!("zone {zone}")), "names the zone: {message}");
        assert!(message.contains("command_seq 42"), "names the row: {message}");
        assert!(!message.contains("command_seq 41"), "names only the row that does not parse: {message}");
    }
}
