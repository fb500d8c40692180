//! A burst the broker delivers faster than the exchange verifies, beyond what the exchange holds
//! unacknowledged (`INBOUND_HELD_MAX`): a neighbour's gateways replaying their spools at once, or a
//! broker that does not bound its in-flight window (Mosquitto's count can run ahead of
//! `max_inflight_messages`; here it is unbounded). The exchange must store every reading. It used to
//! reconnect on such an overflow; the broker then redelivered every unacknowledged message while
//! the first copies were still queued, the hold overflowed again at once, and storing stopped.
//!
//! Needs a Mosquitto binary (the broker with an unbounded window): runs when `MQTT_URL` is set (CI),
//! on SQLite and, with `DATABASE_URL`, PostgreSQL.

mod support;

use diesel::prelude::*;
use exchange::config::ExchangeConfig;
use gridex_store::clock::ManualClock;
use gridex_store::schema::readings;
use gridex_store::testing::TestDb;
use protocol::{topics, ZoneId};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const NOW_MS: i64 = 1_790_000_000_000;
const NAMEPLATE_W: i64 = 10_000;
/// Devices publishing at once, and readings each: together about twice the 1 024 messages held.
const DEVICES: u8 = 4;
const READINGS_EACH: u64 = 500;
/// Bound on the wait for every reading (a hang, not a timing; a debug build verifies some 2 000/s).
const STORED_WITHIN: Duration = Duration::from_secs(120);

/// A Mosquitto of this test's own without an in-flight limit: it delivers the whole burst.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let port = gridex_test_support::free_port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nmax_inflight_messages 0\n"
            ),
        )
        .expect("the configuration is written");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (MQTT_URL is set, so the machine has Mosquitto)");
        assert!(gridex_test_support::wait_listening("127.0.0.1", port), "mosquitto does not listen on {port}");
        Mosquitto { child, port, _dir: dir }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Readings stored (each test database is fresh).
fn stored(test_db: &TestDb) -> i64 {
    let mut conn = test_db.db.get().expect("a connection");
    readings::table.count().get_result(&mut conn).expect("count readings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_what_the_exchange_holds_is_all_stored_without_a_reconnect_storm() {
    if std::env::var("MQTT_URL").is_err() {
        eprintln!("skipping: needs Mosquitto (set MQTT_URL, as CI does)");
        return;
    }
    let mosquitto = Mosquitto::start();
    let broker = BrokerAddr { name: "mosquitto", host: "127.0.0.1".to_owned(), port: mosquitto.port };
    for test_db in TestDb::all() {
        eprintln!("backend {:?}", test_db.db.backend());
        let zone = ZoneId::parse(&format!("burst{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, 900_000);
        let devices: Vec<_> =
            (0..DEVICES).map(|seed| seed_household(&test_db.db, &zone, 40 + seed, NAMEPLATE_W).1).collect();
        // A small ingest queue: the hold in front of it fills within the burst.
        let config = ExchangeConfig {
            ingest_queue_len: 4,
            zones: vec![zone.clone()],
            ..ExchangeConfig::new(protocol::testing::operator_key())
        };
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let exchange = start_exchange(&config, &test_db.db, &clock, &broker, &format!("exchange-{}", unique())).await;
        let probe = Probe::connect(&broker, std::slice::from_ref(&zone)).await;
        for seq in 1..=READINGS_EACH {
            for device in &devices {
                let ts_ms = NOW_MS - 2_000_000 + seq as i64 * 1_000;
                let bytes = signed_reading(device, reading(device, &zone, seq, ts_ms, seq as i64, 0));
                probe.publish(topics::readings(&zone, &device_hex(device)), bytes).await;
            }
        }
        let total = i64::from(DEVICES) * READINGS_EACH as i64;
        let deadline = tokio::time::Instant::now() + STORED_WITHIN;
        let mut count = 0;
        while count < total {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {count} of {total} readings stored within {STORED_WITHIN:?}: the exchange stopped taking the burst"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            count = stored(&test_db);
        }
        assert_eq!(count, total, "every reading once");
        exchange.shutdown().await;
    }
}
