//! `end_to_end` load tool: N simulated gateways publish signed readings, and M traders signed
//! orders, spread over [`ZONES`] zones, through a real broker into the exchange (with its real
//! pipeline and database); it measures accepted readings/s and orders/s with zero loss, and in the
//! same run the broker's raw pass-through rate for the same payloads (rumqttc publishers → one
//! subscriber), the CPU time the exchange spent per accepted message, the CPU time one thread needs
//! to batch-verify the same payloads (`cpu::verification_us`), and the homes one node serves at the
//! gateways' default cadence (31 readings per home per 15-minute slot).
//!
//! ```text
//! cargo run --release -p exchange --example load -- [GATEWAYS] [READINGS_EACH] [TRADERS] [ORDERS_EACH]
//! ```
//! Uses the embedded rumqttd broker, and also Mosquitto when `MQTT_URL` is set; SQLite in a
//! temporary file, or PostgreSQL when `DATABASE_URL` is set. `LOAD_WINDOW` overrides the number of
//! messages outstanding at once ([`WINDOW`]).
//!
//! `LOAD_EXCHANGE_PROCESSES=N` (N ≥ 1) runs the exchange as N separate `exchange-node` processes
//! instead of in this process (0 or unset): they share the zones by PostgreSQL lease, so it needs
//! `DATABASE_URL`, and it uses only the broker of `MQTT_URL` (else the embedded one). Build the node
//! first, next to the example: `cargo build --release -p exchange --bin exchange-node` (or point
//! `LOAD_EXCHANGE_NODE` at a binary). Timing starts once the nodes have split the zones (`zones` on
//! each) and a probe reading of every zone was stored. The nodes' CPU time is utime + stime from
//! `/proc/<pid>/stat`; in-process, the CPU time reported is the whole tool's (exchange, senders and,
//! for rumqttd, the broker). `LOAD_BROKER_PID` adds the broker's CPU time (e.g. `pgrep -f
//! mosquitto-load`); every `postgres` process of the machine is summed as the database's.

#[path = "../../tests/support/mod.rs"]
mod support;

mod cpu;
mod nodes;

use cpu::{Clocks, Spent};
use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, MarketEvent};
use gridex_store::clock::SystemClock;
use gridex_store::schema::{order_commands, readings};
use gridex_store::testing::TestDb;
use protocol::{topics, Side, SlotId, TimestampMs, ZoneId};
use std::collections::BTreeSet;
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

/// Zones the load is spread over (gateway and trader `i` in zone `i % ZONES`): several, so that
/// exchange processes can split them by lease. `LOAD_ZONES` overrides it.
const ZONES: usize = 8;
/// Readings per home per second at the gateways' default cadence: one every `publish_interval_ms`
/// (30 s) plus one after each 15-minute slot boundary, 900 / 30 + 1 = 31 per 900 s (BENCHMARKS.md,
/// "Gateway cadence").
const READINGS_PER_HOME_PER_S: f64 = 31.0 / 900.0;
/// Longest wait until a probe reading of every zone is stored by the nodes (bound on a hang).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

fn zone_count() -> usize {
    std::env::var("LOAD_ZONES").ok().and_then(|zones| zones.parse().ok()).filter(|zones| *zones > 0).unwrap_or(ZONES)
}

/// `LOAD_EXCHANGE_PROCESSES`: 0 (or unset) runs the exchange in this process.
fn exchange_processes() -> usize {
    std::env::var("LOAD_EXCHANGE_PROCESSES").ok().and_then(|processes| processes.parse().ok()).unwrap_or(0)
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
        let acked_rx = drive_publisher(eventloop, messages.len(), "load publisher");
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

/// The exchange under load: in this process, or separate `exchange-node` processes.
enum Exchange {
    InProcess(Box<exchange::service::ExchangeHandle>),
    Processes(Vec<nodes::Node>),
}

impl Exchange {
    fn pids(&self) -> Vec<u32> {
        match self {
            Exchange::InProcess(_) => Vec::new(),
            Exchange::Processes(nodes) => nodes.iter().map(nodes::Node::pid).collect(),
        }
    }

    fn mode(&self) -> String {
        match self {
            Exchange::InProcess(_) => "in-process".to_owned(),
            Exchange::Processes(nodes) => format!("{} process(es)", nodes.len()),
        }
    }

    async fn resting_orders(&mut self) -> usize {
        match self {
            Exchange::InProcess(exchange) => exchange.resting_orders().await.iter().map(|book| book.orders.len()).sum(),
            Exchange::Processes(nodes) => nodes.iter_mut().map(nodes::Node::resting_orders).sum(),
        }
    }

    /// Accepted so far: readings stored; orders resting in the books (in-process) or order
    /// commands committed (processes; that they rest is checked after the phase).
    async fn accepted(&mut self, test_db: &TestDb, orders: bool) -> i64 {
        match self {
            Exchange::InProcess(_) if orders => self.resting_orders().await as i64,
            _ => count(test_db, orders),
        }
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

/// Readings stored of the load's gateways (not of the zone probes).
fn load_readings_stored(test_db: &TestDb, probes: &[(ZoneId, SigningKey)]) -> usize {
    let probes: Vec<String> = probes.iter().map(|(_, device)| device_hex(device)).collect();
    let mut conn = test_db.db.get().expect("a database connection");
    let stored: i64 = readings::table
        .filter(readings::device_id.ne_all(probes))
        .count()
        .get_result(&mut conn)
        .expect("count the stored readings");
    stored as usize
}

/// One timed phase: messages/s and the CPU spent.
struct Phase {
    rate: f64,
    spent: Spent,
}

/// Publishes the payloads into the exchange and waits until all are accepted. In-process, the
/// exchange's events free the window; with processes, the accepted count does (polled every 10 ms).
#[allow(clippy::too_many_arguments)]
async fn exchange_rate(
    exchange: &mut Exchange,
    broker: &BrokerAddr,
    test_db: &TestDb,
    senders: Vec<Vec<(String, Vec<u8>)>>,
    orders: bool,
    rejected: &AtomicU64,
    window: Arc<tokio::sync::Semaphore>,
) -> Phase {
    let total: usize = senders.iter().map(Vec::len).sum();
    let before = exchange.accepted(test_db, orders).await;
    let frees_window = matches!(exchange, Exchange::Processes(_));
    let pids = exchange.pids();
    let start = Clocks::now(&pids);
    let started = Instant::now();
    let publishing = tokio::spawn({
        let broker = broker.clone();
        let window = window.clone();
        async move { publish_all(&broker, senders, window).await }
    });
    let mut freed = 0;
    loop {
        let stored = (exchange.accepted(test_db, orders).await - before) as usize;
        if frees_window && stored > freed {
            window.add_permits(stored - freed);
            freed = stored;
        }
        if stored >= total {
            break;
        }
        assert!(started.elapsed() < PHASE_TIMEOUT, "only {stored} of {total} stored");
        assert_eq!(rejected.load(Ordering::Relaxed), 0, "the exchange rejected messages");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let spent = Clocks::now(&pids).since(&start);
    publishing.await.expect("the publishers");
    Phase { rate, spent }
}

/// Counts the exchange's rejects (MQTT `rejects/+` of every zone; `rejects` is sent at QoS 1).
async fn watch_rejects(broker: &BrokerAddr, zones: &[ZoneId], rejected: Arc<AtomicU64>) {
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(mqtt_options(broker, &format!("load-rejects-{}", unique())), 100);
    for zone in zones {
        client.subscribe(topics::rejects(zone, &"+"), rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    }
    let (subscribed_tx, mut subscribed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                    eprintln!("rejected on {}: {}", publish.topic, String::from_utf8_lossy(&publish.payload));
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("reject watcher: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    for _ in zones {
        tokio::time::timeout(PHASE_TIMEOUT, subscribed_rx.recv()).await.expect("subscribed in time");
    }
}

/// Publishes a reading of each zone's probe device (a fresh seq every 500 ms) until one of each is
/// stored: then every zone is subscribed to by its owner (a zone shows in `zones` before its
/// subscription is acknowledged, and a message in between would be lost to the senders, which do
/// not resend).
async fn probe_zones(broker: &BrokerAddr, test_db: &TestDb, probes: &[(ZoneId, SigningKey)]) {
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(mqtt_options(broker, &format!("load-probe-{}", unique())), 100);
    let polling = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    let mut waiting: Vec<&(ZoneId, SigningKey)> = probes.iter().collect();
    for seq in 1.. {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (zone, device) in &waiting {
            let payload = signed_reading(device, reading(device, zone, seq, now_ms, seq as i64, 0));
            client
                .publish(topics::readings(zone, &device_hex(device)), rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish a probe");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(mut conn) = test_db.db.get() else { continue };
        waiting.retain(|(_, device)| {
            let stored: i64 = readings::table
                .filter(readings::device_id.eq(device_hex(device)))
                .count()
                .get_result(&mut conn)
                .unwrap_or(0);
            stored == 0
        });
        if waiting.is_empty() {
            break;
        }
        assert!(started.elapsed() < PROBE_TIMEOUT, "no probe reading stored for {} zone(s)", waiting.len());
    }
    let _ = client.disconnect().await;
    let _ = polling.await;
}

/// Starts the exchange: in this process, or `processes` nodes that have split the zones.
async fn start_exchange(
    processes: usize,
    broker: &BrokerAddr,
    test_db: &TestDb,
    zones: &[ZoneId],
    probes: &[(ZoneId, SigningKey)],
) -> Exchange {
    if processes == 0 {
        let config = ExchangeConfig {
            ingest_queue_len: LOAD_INGEST_QUEUE_LEN,
            ..ExchangeConfig::new(protocol::testing::operator_key())
        };
        let options = mqtt_options(broker, &format!("exchange-{}", unique()));
        let exchange =
            service::start(config, test_db.db.clone(), Arc::new(SystemClock), Some(options)).await.expect("start");
        exchange.mqtt_subscribed().await;
        return Exchange::InProcess(Box::new(exchange));
    }
    let run = unique();
    let mut started: Vec<nodes::Node> = (0..processes)
        .map(|index| nodes::Node::start(&test_db.url, broker, &format!("load-node-{run}-{index}")))
        .collect();
    let all: BTreeSet<String> = zones.iter().map(ToString::to_string).collect();
    let shares = nodes::wait_for_split(&mut started, &all);
    eprintln!("zones split {shares:?} between {processes} exchange-node process(es)");
    probe_zones(broker, test_db, probes).await;
    Exchange::Processes(started)
}

async fn run(broker: &BrokerAddr, gateways: usize, readings_each: u64, traders: usize, orders_each: u64) {
    let processes = exchange_processes();
    let load_average = cpu::load_average();
    let test_db = if processes > 0 {
        TestDb::postgres()
            .expect("LOAD_EXCHANGE_PROCESSES needs DATABASE_URL (the nodes share zones by PostgreSQL lease)")
    } else {
        TestDb::any()
    };
    let run = unique();
    let zones: Vec<ZoneId> =
        (0..zone_count()).map(|index| ZoneId::parse(&format!("l{run}-{index}")).expect("a zone id")).collect();
    for zone in &zones {
        seed_zone(&test_db.db, zone, 900_000);
    }
    let zone_of = |index: usize| &zones[index % zones.len()];
    let devices: Vec<SigningKey> = (0..gateways).map(|index| key(1, index)).collect();
    let accounts: Vec<SigningKey> = (0..traders.max(gateways)).map(|index| key(2, index)).collect();
    for (index, account) in accounts.iter().enumerate() {
        let device = devices.get(index).cloned().unwrap_or_else(|| key(3, index));
        seed_keys(&test_db.db, zone_of(index), account, &device, 20_000);
    }
    let probes: Vec<(ZoneId, SigningKey)> =
        zones.iter().enumerate().map(|(index, zone)| (zone.clone(), key(4, index))).collect();
    for (index, (zone, device)) in probes.iter().enumerate() {
        seed_keys(&test_db.db, zone, &key(5, index), device, 20_000);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let reading_senders: Vec<Vec<(String, Vec<u8>)>> = devices
        .iter()
        .enumerate()
        .map(|(index, device)| {
            let zone = zone_of(index);
            let topic = topics::readings(zone, &device_hex(device));
            (1..=readings_each)
                .map(|seq| {
                    let ts_ms = now_ms - (readings_each - seq) as i64 * 1_000;
                    (topic.clone(), signed_reading(device, reading(device, zone, seq, ts_ms, seq as i64, 0)))
                })
                .collect()
        })
        .collect();
    let slot = SlotId::containing(TimestampMs(now_ms + 3 * 3_600_000), 900_000);
    let order_senders: Vec<Vec<(String, Vec<u8>)>> = accounts[..traders]
        .iter()
        .enumerate()
        .map(|(index, account)| {
            let zone = zone_of(index);
            let hex = protocol::AccountId::from_verifying_key(&account.verifying_key()).to_hex();
            let topic = topics::orders(zone, &hex);
            (1..=orders_each)
                .map(|nonce| {
                    // Buys below and sells above the middle: the orders rest (no self-trade, no fills).
                    let (side, price) = if nonce % 2 == 0 {
                        (Side::Buy, 100_000 + (nonce % 40) as i64 * 1_000)
                    } else {
                        (Side::Sell, 160_000 + (nonce % 40) as i64 * 1_000)
                    };
                    (topic.clone(), order(account, zone, slot, side, price, 500, nonce, now_ms))
                })
                .collect()
        })
        .collect();
    let readings_total: usize = reading_senders.iter().map(Vec::len).sum();
    let orders_total: usize = order_senders.iter().map(Vec::len).sum();
    let reading_payloads: Vec<(String, Vec<u8>)> = reading_senders.iter().flatten().cloned().collect();
    let order_payloads: Vec<(String, Vec<u8>)> = order_senders.iter().flatten().cloned().collect();

    let raw_readings = raw_rate(broker, &reading_senders).await;
    let raw_orders = raw_rate(broker, &order_senders).await;

    let mut exchange = start_exchange(processes, broker, &test_db, &zones, &probes).await;
    let rejected = Arc::new(AtomicU64::new(0));
    let window = Arc::new(tokio::sync::Semaphore::new(window()));
    if let Exchange::InProcess(handle) = &exchange {
        let mut events = handle.subscribe();
        let rejected_count = rejected.clone();
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
                    Ok(MarketEvent::ReadingAccepted { .. } | MarketEvent::OrderUpdate(_)) => {
                        accepted_window.add_permits(1)
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        accepted_window.add_permits(missed as usize)
                    }
                    Err(_) => break,
                }
            }
        });
    } else {
        watch_rejects(broker, &zones, rejected.clone()).await;
    }
    let readings_phase =
        exchange_rate(&mut exchange, broker, &test_db, reading_senders, false, &rejected, window.clone()).await;
    let orders_phase = exchange_rate(&mut exchange, broker, &test_db, order_senders, true, &rejected, window).await;
    let resting = exchange.resting_orders().await;
    assert_eq!(resting, orders_total, "every order rests in the book");
    assert_eq!(load_readings_stored(&test_db, &probes), readings_total, "zero loss of readings");
    assert_eq!(rejected.load(Ordering::Relaxed), 0, "the exchange rejected messages");
    let mode = exchange.mode();
    match exchange {
        Exchange::InProcess(handle) => handle.shutdown().await,
        Exchange::Processes(nodes) => nodes.into_iter().for_each(nodes::Node::quit),
    }

    // The reference, in the same run: the same payloads batch-verified on one thread.
    let (reading_parse_us, reading_verify_us) = cpu::verification_us(reading_payloads);
    let (order_parse_us, order_verify_us) = cpu::verification_us(order_payloads);

    let setup = format!(
        "{} / {:?} / {mode}, {} zones, load avg {load_average}",
        broker.name,
        test_db.db.backend(),
        zones.len()
    );
    println!(
        "{setup}: readings {readings_total} from {gateways} gateways: exchange {:.0}/s, raw {raw_readings:.0}/s, ratio {:.2}x",
        readings_phase.rate,
        readings_phase.rate / raw_readings
    );
    report_cpu(&setup, "readings", &readings_phase, readings_total, reading_parse_us, reading_verify_us);
    let homes = readings_phase.rate / READINGS_PER_HOME_PER_S;
    println!(
        "{setup}: homes at the default cadence (31 readings per 15 min): {homes:.0} on this machine ({:.0} per exchange process)",
        homes / processes.max(1) as f64
    );
    println!(
        "{setup}: orders {orders_total} from {traders} traders: exchange {:.0}/s, raw {raw_orders:.0}/s, ratio {:.2}x",
        orders_phase.rate,
        orders_phase.rate / raw_orders
    );
    report_cpu(&setup, "orders", &orders_phase, orders_total, order_parse_us, order_verify_us);
}

/// Prints the CPU figures of one phase: the exchange's CPU time per accepted message next to the
/// batch-verification CPU time per message and their ratio.
fn report_cpu(setup: &str, kind: &str, phase: &Phase, total: usize, parse_us: f64, verify_us: f64) {
    let Spent { wall_s, exchange_s, tool_s, broker_s, postgres_s, machine_s } = phase.spent;
    let per_message_us = |seconds: f64| seconds / total as f64 * 1e6;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "{setup}: {kind} CPU: exchange {:.1} µs/msg ({exchange_s:.2} s in {wall_s:.2} s), tool {:.1}, broker {:.1}, \
         postgres (all) {:.1} µs/msg, machine busy {:.2} of {cores} cores; batch verification {verify_us:.1} µs/msg \
         (+ parse {parse_us:.1}) on one thread; exchange / verification {:.1}x",
        per_message_us(exchange_s),
        per_message_us(tool_s),
        per_message_us(broker_s),
        per_message_us(postgres_s),
        machine_s / wall_s,
        per_message_us(exchange_s) / verify_us
    );
}

#[tokio::main]
async fn main() {
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect();
    let gateways = numbers.first().copied().unwrap_or(50) as usize;
    let readings_each = numbers.get(1).copied().unwrap_or(100);
    let traders = numbers.get(2).copied().unwrap_or(50) as usize;
    let orders_each = numbers.get(3).copied().unwrap_or(80).min(90);
    // The nodes run on one broker: `MQTT_URL`'s when set, else the embedded one.
    let brokers = match (exchange_processes(), external_broker()) {
        (0, _) => brokers(),
        (_, Some(external)) => vec![external],
        (_, None) => vec![embedded_broker()],
    };
    for broker in brokers {
        run(&broker, gateways, readings_each, traders, orders_each).await;
    }
}
