//! `end_to_end` load tool: N simulated gateways publish signed readings, and M traders signed
//! orders, through a real broker into the exchange (in this process, with its real pipeline and
//! database); it measures accepted readings/s and orders/s with zero loss, and in the same run the
//! broker's raw pass-through rate for the same payloads (rumqttc publishers → one subscriber).
//!
//! ```text
//! cargo run --release -p exchange --example load -- [GATEWAYS] [READINGS_EACH] [TRADERS] [ORDERS_EACH]
//! ```
//! Uses the embedded rumqttd broker, and also Mosquitto when `MQTT_URL` is set; SQLite in a
//! temporary file, or PostgreSQL when `DATABASE_URL` is set. `LOAD_WINDOW` overrides the number of
//! messages outstanding at once ([`WINDOW`]).

#[path = "../tests/support/mod.rs"]
mod support;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, MarketEvent};
use gridex_store::clock::SystemClock;
use gridex_store::schema::{order_commands, readings};
use gridex_store::testing::TestDb;
use protocol::{topics, Side, SlotId, TimestampMs, ZoneId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// The flood arrives faster than a sender would ever send; the ingest queue holds all of it so the
/// run measures throughput, not load shedding (which the tests cover).
const LOAD_INGEST_QUEUE_LEN: usize = 65_536;
/// Messages published but not yet delivered (raw) or accepted (exchange), over all senders; the
/// same window applies to both runs of a broker. Mosquitto 2.0.11 with its default
/// `max_queued_messages` (1000) still drops QoS 1 messages for the one subscriber fed by 50
/// publishers even with only 20 outstanding (its count runs ahead of what is really queued), so
/// against Mosquitto run with `examples/mosquitto-load.conf` (see BENCHMARKS.md).
const WINDOW: usize = 500;
/// The window: `LOAD_WINDOW` when set, else [`WINDOW`]. Both runs of a broker use the same.
fn window() -> usize {
    std::env::var("LOAD_WINDOW")
        .ok()
        .and_then(|window| window.parse().ok())
        .filter(|window| *window > 0)
        .unwrap_or(WINDOW)
}

/// Longest a phase may take before the run counts as failed.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// TCP_NODELAY, as the exchange sets it: every client of both runs sends the same way.
fn no_delay() -> rumqttc::NetworkOptions {
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

fn key(kind: u8, index: usize) -> SigningKey {
    let mut seed = [kind; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// Publishes every `(topic, payload)` of each sender over its own connection, all senders at once.
async fn publish_all(broker: &BrokerAddr, senders: Vec<Vec<(String, Vec<u8>)>>, window: Arc<tokio::sync::Semaphore>) {
    let mut tasks = Vec::new();
    for messages in senders {
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(mqtt_options(broker, &format!("load-{}", unique())), 1_000);
        eventloop.set_network_options(no_delay());
        // The client lives until the broker acknowledged every message: dropping it earlier ends
        // the event loop with messages still unsent.
        let (acked_tx, acked_rx) = tokio::sync::oneshot::channel::<()>();
        let total = messages.len();
        tokio::spawn(async move {
            let mut acked = 0;
            let mut acked_tx = Some(acked_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acked += 1;
                        if acked == total {
                            if let Some(sender) = acked_tx.take() {
                                let _ = sender.send(());
                            }
                        }
                    }
                    // The event loop keeps a request sender of its own, so it never sees
                    // `RequestsDone`; without this it would reconnect every 100 ms for the rest of
                    // the process, loading the broker during the later phases.
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(error) => {
                        eprintln!("load publisher: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            for (topic, payload) in messages {
                window.acquire().await.expect("the window stays open").forget();
                client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
            }
            let _ = acked_rx.await;
            let _ = client.disconnect().await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The broker's raw rate: the same payloads, same publishers, to one subscriber. Messages/s.
async fn raw_rate(broker: &BrokerAddr, senders: &[Vec<(String, Vec<u8>)>]) -> f64 {
    let run = unique();
    let total: usize = senders.iter().map(Vec::len).sum();
    let (client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_options(broker, &format!("raw-sub-{run}")), 1_000);
    eventloop.set_network_options(no_delay());
    client.subscribe(format!("loadraw/{run}/#"), rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let window = Arc::new(tokio::sync::Semaphore::new(window()));
    let delivered = window.clone();
    let received_count = Arc::new(AtomicU64::new(0));
    let received_total = received_count.clone();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut done_tx = Some(done_tx);
        let mut received = 0;
        let progress = received_count.clone();
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(sender) = subscribed_tx.take() {
                        let _ = sender.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                    delivered.add_permits(1);
                    received += 1;
                    progress.store(received as u64, Ordering::Relaxed);
                    if received == total {
                        if let Some(sender) = done_tx.take() {
                            let _ = sender.send(Instant::now());
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    subscribed_rx.await.expect("raw subscriber subscribed");
    let renamed: Vec<Vec<(String, Vec<u8>)>> = senders
        .iter()
        .enumerate()
        .map(|(index, messages)| {
            messages.iter().map(|(_, payload)| (format!("loadraw/{run}/{index}"), payload.clone())).collect()
        })
        .collect();
    let started = Instant::now();
    publish_all(broker, renamed, window).await;
    let finished = tokio::time::timeout(PHASE_TIMEOUT, done_rx)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "raw run on {}: {} of {total} delivered (see the broker's log; Mosquitto drops QoS 1 messages \
                 beyond max_queued_messages)",
                broker.name,
                received_total.load(Ordering::Relaxed)
            )
        })
        .expect("done");
    total as f64 / finished.duration_since(started).as_secs_f64()
}

/// Orders resting in the books (applied and acknowledged), or readings stored.
async fn accepted(exchange: &exchange::service::ExchangeHandle, test_db: &TestDb, orders: bool) -> i64 {
    if orders {
        exchange.resting_orders().await.iter().map(|book| book.orders.len() as i64).sum()
    } else {
        count(test_db, false)
    }
}

fn count(test_db: &TestDb, orders: bool) -> i64 {
    let Ok(mut conn) = test_db.db.get() else { return 0 };
    if orders {
        order_commands::table.count().get_result(&mut conn).unwrap_or(0)
    } else {
        readings::table.count().get_result(&mut conn).unwrap_or(0)
    }
}

/// Publishes the payloads into the exchange and waits until all are stored. Messages/s.
async fn exchange_rate(
    exchange: &exchange::service::ExchangeHandle,
    broker: &BrokerAddr,
    test_db: &TestDb,
    senders: Vec<Vec<(String, Vec<u8>)>>,
    orders: bool,
    rejected: &AtomicU64,
    window: Arc<tokio::sync::Semaphore>,
) -> f64 {
    let total: usize = senders.iter().map(Vec::len).sum();
    let before = accepted(exchange, test_db, orders).await;
    let started = Instant::now();
    publish_all(broker, senders, window).await;
    loop {
        let stored = accepted(exchange, test_db, orders).await - before;
        if stored as usize >= total {
            break;
        }
        assert!(started.elapsed() < PHASE_TIMEOUT, "only {stored} of {total} stored");
        assert_eq!(rejected.load(Ordering::Relaxed), 0, "the exchange rejected messages");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn run(broker: &BrokerAddr, gateways: usize, readings_each: u64, traders: usize, orders_each: u64) {
    let test_db = TestDb::any();
    let zone = ZoneId::parse(&format!("l{}", unique())).expect("a zone id");
    seed_zone(&test_db.db, &zone, 900_000);
    let devices: Vec<SigningKey> = (0..gateways).map(|index| key(1, index)).collect();
    let accounts: Vec<SigningKey> = (0..traders.max(gateways)).map(|index| key(2, index)).collect();
    for (index, account) in accounts.iter().enumerate() {
        let device = devices.get(index).cloned().unwrap_or_else(|| key(3, index));
        seed_keys(&test_db.db, &zone, account, &device, 20_000);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let reading_senders: Vec<Vec<(String, Vec<u8>)>> = devices
        .iter()
        .map(|device| {
            let topic = topics::readings(&zone, &device_hex(device));
            (1..=readings_each)
                .map(|seq| {
                    let ts_ms = now_ms - (readings_each - seq) as i64 * 1_000;
                    (topic.clone(), signed_reading(device, reading(device, &zone, seq, ts_ms, seq as i64, 0)))
                })
                .collect()
        })
        .collect();
    let slot = SlotId::containing(TimestampMs(now_ms + 3 * 3_600_000), 900_000);
    let order_senders: Vec<Vec<(String, Vec<u8>)>> = accounts[..traders]
        .iter()
        .map(|account| {
            let hex = protocol::AccountId::from_verifying_key(&account.verifying_key()).to_hex();
            let topic = topics::orders(&zone, &hex);
            (1..=orders_each)
                .map(|nonce| {
                    // Buys below and sells above the middle: the orders rest (no self-trade, no fills).
                    let (side, price) = if nonce % 2 == 0 {
                        (Side::Buy, 100_000 + (nonce % 40) as i64 * 1_000)
                    } else {
                        (Side::Sell, 160_000 + (nonce % 40) as i64 * 1_000)
                    };
                    (topic.clone(), order(account, &zone, slot, side, price, 500, nonce, now_ms))
                })
                .collect()
        })
        .collect();
    let readings_total: usize = reading_senders.iter().map(Vec::len).sum();
    let orders_total: usize = order_senders.iter().map(Vec::len).sum();

    let raw_readings = raw_rate(broker, &reading_senders).await;
    let raw_orders = raw_rate(broker, &order_senders).await;

    let config = ExchangeConfig {
        ingest_queue_len: LOAD_INGEST_QUEUE_LEN,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    let options = mqtt_options(broker, &format!("exchange-{}", unique()));
    let exchange =
        service::start(config, test_db.db.clone(), Arc::new(SystemClock), Some(options)).await.expect("start");
    exchange.mqtt_subscribed().await;
    let rejected = Arc::new(AtomicU64::new(0));
    let mut events = exchange.subscribe();
    let rejected_count = rejected.clone();
    let window = Arc::new(tokio::sync::Semaphore::new(window()));
    let accepted_window = window.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(MarketEvent::Rejected { reject, .. }) => {
                    eprintln!("rejected: {reject:?}");
                    rejected_count.fetch_add(1, Ordering::Relaxed);
                    accepted_window.add_permits(1);
                }
                // Each reading gets one ack; each (resting) order one update.
                Ok(MarketEvent::ReadingAccepted { .. } | MarketEvent::OrderUpdate(_)) => accepted_window.add_permits(1),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    accepted_window.add_permits(missed as usize)
                }
                Err(_) => break,
            }
        }
    });
    let exchange_readings =
        exchange_rate(&exchange, broker, &test_db, reading_senders, false, &rejected, window.clone()).await;
    let exchange_orders = exchange_rate(&exchange, broker, &test_db, order_senders, true, &rejected, window).await;
    let resting: usize = exchange.resting_orders().await.iter().map(|book| book.orders.len()).sum();
    assert_eq!(resting, orders_total, "every order rests in the book");
    assert_eq!(count(&test_db, false) as usize, readings_total, "zero loss of readings");
    exchange.shutdown().await;

    println!(
        "{} / {:?}: readings {readings_total} from {gateways} gateways: exchange {exchange_readings:.0}/s, raw {raw_readings:.0}/s, ratio {:.2}x",
        broker.name,
        test_db.db.backend(),
        exchange_readings / raw_readings
    );
    println!(
        "{} / {:?}: orders {orders_total} from {traders} traders: exchange {exchange_orders:.0}/s, raw {raw_orders:.0}/s, ratio {:.2}x",
        broker.name,
        test_db.db.backend(),
        exchange_orders / raw_orders
    );
}

#[tokio::main]
async fn main() {
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect();
    let gateways = numbers.first().copied().unwrap_or(50) as usize;
    let readings_each = numbers.get(1).copied().unwrap_or(100);
    let traders = numbers.get(2).copied().unwrap_or(50) as usize;
    let orders_each = numbers.get(3).copied().unwrap_or(80).min(90);
    for broker in brokers() {
        run(&broker, gateways, readings_each, traders, orders_each).await;
    }
}
