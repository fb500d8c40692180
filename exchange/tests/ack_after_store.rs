//! Nothing the exchange acknowledges to the broker is lost: a PUBACK goes out only once a message is
//! stored or refused for good. A failed group commit is retried (and, if the exchange stops while it
//! fails, left unacknowledged for the broker to redeliver); a full ingest queue holds messages back
//! instead of refusing them. Real brokers (embedded rumqttd; Mosquitto with `MQTT_URL`) and real
//! databases (SQLite; PostgreSQL with `DATABASE_URL`), with the faults injected in the database.

mod support;

use support::decode;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::schema::{order_commands, readings};
use gridex_store::{Backend, Database, DbError};
use protocol::{topics, AccountId, Reason, Reject, Side, SlotId, ZoneId};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// The exchange's clock: a fixed instant.
const NOW_MS: i64 = 1_790_000_000_000;
/// 10 kW allows 2.7 Wh a second: readings one second and one Wh apart are plausible.
const NAMEPLATE_W: i64 = 10_000;
/// Bound on waiting for storage to catch up (a hang, not a timing).
const STORED_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The exchange's failed group commits (`gridex_group_commit_failures_total`), so a test knows a
/// commit really failed before it clears the fault.
static COMMIT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// A recorder that keeps only the commit failure counter.
#[derive(Debug)]
struct FailureRecorder(Arc<Counting>);

#[derive(Debug)]
struct Counting;

impl metrics::CounterFn for Counting {
    fn increment(&self, value: u64) {
        COMMIT_FAILURES.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        COMMIT_FAILURES.fetch_max(value, Ordering::Relaxed);
    }
}

impl metrics::Recorder for FailureRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "gridex_group_commit_failures_total" {
            metrics::Counter::from_arc(self.0.clone())
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn count_commit_failures() {
    // Another test of this binary may have installed it already.
    let _ = metrics::set_global_recorder(FailureRecorder(Arc::new(Counting)));
}

fn commit_failures() -> u64 {
    COMMIT_FAILURES.load(Ordering::Relaxed)
}

/// Makes every insert into `readings` and `order_commands` fail (a real failure of the commit,
/// raised by the database), or clears that fault.
fn set_fault(db: &Database, on: bool) {
    let sql = match (db.backend(), on) {
        (Backend::Sqlite, true) => {
            "CREATE TRIGGER fault_readings BEFORE INSERT ON readings BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
             CREATE TRIGGER fault_commands BEFORE INSERT ON order_commands BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
        }
        (Backend::Sqlite, false) => "DROP TRIGGER fault_readings; DROP TRIGGER fault_commands;",
        (Backend::Postgres, true) => {
            "CREATE FUNCTION injected_fault() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER fault_readings BEFORE INSERT ON readings FOR EACH ROW EXECUTE FUNCTION injected_fault();
             CREATE TRIGGER fault_commands BEFORE INSERT ON order_commands FOR EACH ROW EXECUTE FUNCTION injected_fault();"
        }
        (Backend::Postgres, false) => {
            "DROP TRIGGER fault_readings ON readings; DROP TRIGGER fault_commands ON order_commands;
             DROP FUNCTION injected_fault();"
        }
    };
    db.write_blocking(|conn| conn.batch_execute(sql).map_err(DbError::Query)).expect("the fault is set");
}

/// One test's market: a zone, devices and accounts, and the exchange's stable client id.
struct Market {
    zone: ZoneId,
    devices: Vec<SigningKey>,
    accounts: Vec<SigningKey>,
    client_id: String,
    config: ExchangeConfig,
}

impl Market {
    fn seed(db: &Database, households: u8, config: ExchangeConfig) -> Market {
        let zone = ZoneId::parse(&format!("a{}", unique())).expect("a zone id");
        seed_zone(db, &zone, 900_000);
        let (accounts, devices) = (1..=households).map(|seed| seed_household(db, &zone, seed, NAMEPLATE_W)).unzip();
        // Only this test's zone: tests share Mosquitto.
        let config = ExchangeConfig { zones: vec![zone.clone()], ..config };
        Market { zone, devices, accounts, client_id: format!("exchange-{}", unique()), config }
    }

    async fn start(&self, db: &Database, broker: &BrokerAddr) -> ExchangeHandle {
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let options = mqtt_options(broker, &self.client_id);
        let exchange =
            service::start(self.config.clone(), db.clone(), clock, Some(options)).await.expect("the exchange starts");
        tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
        exchange
    }

    fn slot(&self) -> SlotId {
        SlotId::new(NOW_MS - NOW_MS % 900_000 + 4 * 900_000).expect("a slot")
    }

    /// Publishes reading `seq` of device `index` (one second and one Wh after the previous one).
    async fn publish_reading(&self, probe: &Probe, index: usize, seq: u64) {
        let key = &self.devices[index];
        let ts_ms = NOW_MS - 3_600_000 + seq as i64 * 1_000;
        let bytes = signed_reading(key, reading(key, &self.zone, seq, ts_ms, seq as i64, 0));
        probe.publish(topics::readings(&self.zone, &device_hex(key)), bytes).await;
    }

    /// Publishes order `nonce` of account `index`: buys at 100 000 and sells at 200 000 never cross.
    async fn publish_order(&self, probe: &Probe, index: usize, nonce: u64) {
        let key = &self.accounts[index];
        let (side, price) = if index.is_multiple_of(2) { (Side::Buy, 100_000) } else { (Side::Sell, 200_000) };
        let bytes = order(key, &self.zone, self.slot(), side, price, 100, nonce, NOW_MS);
        let account = AccountId::from_verifying_key(&key.verifying_key());
        probe.publish(topics::orders(&self.zone, &account), bytes).await;
    }
}

/// (sender, seq or nonce) of each stored row.
type Rows = Vec<(String, i64)>;

/// Stored (device, seq) readings and (account, nonce) commands: `Vec`s, so a duplicate would show.
fn stored(db: &Database) -> (Rows, Rows) {
    let mut conn = db.get().expect("a connection");
    let readings = readings::table
        .select((readings::device_id, readings::seq))
        .load::<(String, i64)>(&mut conn)
        .expect("load readings");
    let commands = order_commands::table
        .select((order_commands::account_id, order_commands::nonce))
        .load::<(String, i64)>(&mut conn)
        .expect("load commands");
    (readings, commands)
}

/// Waits until storage holds `readings` readings and `commands` commands (or fails the test).
async fn wait_stored(db: &Database, readings: usize, commands: usize) -> (Rows, Rows) {
    let deadline = tokio::time::Instant::now() + STORED_TIMEOUT;
    loop {
        let now = stored(db);
        if now.0.len() >= readings && now.1.len() >= commands {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {readings} readings and {} of {commands} commands were stored",
            now.0.len(),
            now.1.len()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every (sender, seq) from 1 to `count` for each sender, exactly once.
fn exactly_once(rows: &[(String, i64)], senders: &[String], count: i64) {
    let unique: BTreeSet<&(String, i64)> = rows.iter().collect();
    assert_eq!(unique.len(), rows.len(), "a message was stored twice");
    let expected: BTreeSet<(String, i64)> =
        senders.iter().flat_map(|sender| (1..=count).map(move |seq| (sender.clone(), seq))).collect();
    let got: BTreeSet<(String, i64)> = rows.iter().cloned().collect();
    assert_eq!(got, expected);
}

/// The rejects seen by the probe, for the zone's senders.
async fn rejects_seen(probe: &mut Probe, seen: &mut Vec<Reject>) {
    for (topic, payload) in probe.drain(Duration::from_millis(1)).await {
        if topic.contains("/rejects/") {
            seen.push(decode::<Reject>(&payload).expect("a reject"));
        }
    }
}

/// Waits until a commit failed since `before` (or, on code that answers a failed commit, its
/// `internal_error` reject arrived).
async fn wait_commit_failed(probe: &mut Probe, before: u64, seen: &mut Vec<Reject>) {
    let deadline = tokio::time::Instant::now() + STORED_TIMEOUT;
    while commit_failures() <= before && !seen.iter().any(|reject| reject.reason == Reason::InternalError) {
        assert!(tokio::time::Instant::now() < deadline, "no commit was attempted");
        rejects_seen(probe, seen).await;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The attack: a database commit that fails. The exchange used to refuse the group as
/// `internal_error` and PUBACK it, so the broker forgot valid readings and orders that were never
/// stored. Now the commit is retried while the fault lasts, and an exchange stopped during the fault
/// leaves the messages unacknowledged, so the broker redelivers them to its next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_not_acknowledged() {
    count_commit_failures();
    const READINGS: u64 = 10;
    const ORDERS: u64 = 5;
    each_backend_and_broker(|test_db, broker| async move {
        let db = &test_db.db;
        let market = Market::seed(db, 2, ExchangeConfig::new(protocol::testing::operator_key()));
        let exchange = market.start(db, &broker).await;
        let mut probe = Probe::connect(&broker, std::slice::from_ref(&market.zone)).await;
        let mut rejects = Vec::new();

        // The fault clears while the exchange runs: the retried commit stores everything.
        set_fault(db, true);
        let before = commit_failures();
        for seq in 1..=READINGS {
            market.publish_reading(&probe, 0, seq).await;
        }
        for nonce in 1..=ORDERS {
            market.publish_order(&probe, 0, nonce).await;
        }
        wait_commit_failed(&mut probe, before, &mut rejects).await;
        set_fault(db, false);
        let (readings, commands) = wait_stored(db, READINGS as usize, ORDERS as usize).await;
        exactly_once(&readings, &[device_hex(&market.devices[0])], READINGS as i64);
        let account = AccountId::from_verifying_key(&market.accounts[0].verifying_key()).to_hex();
        exactly_once(&commands, std::slice::from_ref(&account), ORDERS as i64);

        // The exchange stops during the fault: nothing was acknowledged, so the broker
        // redelivers to the restarted exchange and everything is stored once.
        set_fault(db, true);
        let before = commit_failures();
        for seq in READINGS + 1..=2 * READINGS {
            market.publish_reading(&probe, 0, seq).await;
        }
        for nonce in ORDERS + 1..=2 * ORDERS {
            market.publish_order(&probe, 0, nonce).await;
        }
        wait_commit_failed(&mut probe, before, &mut rejects).await;
        exchange.shutdown().await;
        set_fault(db, false);
        let exchange = market.start(db, &broker).await;
        let (readings, commands) = wait_stored(db, 2 * READINGS as usize, 2 * ORDERS as usize).await;
        exactly_once(&readings, &[device_hex(&market.devices[0])], 2 * READINGS as i64);
        exactly_once(&commands, &[account], 2 * ORDERS as i64);
        rejects_seen(&mut probe, &mut rejects).await;
        assert!(rejects.is_empty(), "valid messages were refused: {rejects:?}");
        exchange.shutdown().await;
    })
    .await;
}

/// The attack: a flood. The exchange used to refuse what did not fit its ingest queue as
/// `overloaded` and PUBACK it, so a gateway's valid readings were refused for load. Now a full
/// queue holds the broker back (no PUBACK, so its in-flight window closes) and nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ingest_queue_applies_back_pressure() {
    const READINGS: u64 = 100;
    const ORDERS: u64 = 50;
    const HOUSEHOLDS: u8 = 3;
    let config = ExchangeConfig {
        ingest_queue_len: 1,
        commit_queue_len: 1,
        verify_batch_max: 2,
        verify_workers: 1,
        group_commit_size_max: 2,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    let config = &config;
    each_backend_and_broker(|test_db, broker| async move {
        let db = &test_db.db;
        let market = Market::seed(db, HOUSEHOLDS, config.clone());
        let exchange = market.start(db, &broker).await;
        let mut probe = Probe::connect(&broker, std::slice::from_ref(&market.zone)).await;
        for seq in 1..=READINGS {
            for index in 0..usize::from(HOUSEHOLDS) {
                market.publish_reading(&probe, index, seq).await;
            }
        }
        for nonce in 1..=ORDERS {
            for index in 0..usize::from(HOUSEHOLDS) {
                market.publish_order(&probe, index, nonce).await;
            }
        }
        let households = usize::from(HOUSEHOLDS);
        let (readings, commands) = wait_stored(db, households * READINGS as usize, households * ORDERS as usize).await;
        let devices: Vec<String> = market.devices.iter().map(device_hex).collect();
        let accounts: Vec<String> =
            market.accounts.iter().map(|key| AccountId::from_verifying_key(&key.verifying_key()).to_hex()).collect();
        exactly_once(&readings, &devices, READINGS as i64);
        exactly_once(&commands, &accounts, ORDERS as i64);
        let mut rejects = Vec::new();
        rejects_seen(&mut probe, &mut rejects).await;
        assert!(rejects.is_empty(), "valid messages were refused: {rejects:?}");
        exchange.shutdown().await;
    })
    .await;
}
