//! A gateway's reading leaves its spool only once the exchange answered it, so a broker that loses
//! what it queued loses nothing for good. The real gateway publisher and spool (`meter-gateway`), a
//! broker the test kills and starts again without persistence (embedded rumqttd in a child process;
//! a Mosquitto of its own with `persistence false` when `MQTT_URL` is set), and the real exchange on
//! SQLite (and PostgreSQL with `DATABASE_URL`).

mod support;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::schema::readings;
use gridex_store::testing::TestDb;
use gridex_store::Database;
use meter_gateway::counters::{CounterTracker, CountersState};
use meter_gateway::gateway::{GatewayState, Poller, Sample};
use meter_gateway::publisher::{self, MqttSettings, PublisherConfig, PublisherStats};
use meter_gateway::spool::{Spool, SPOOL_BYTES_DEFAULT};
use protocol::{DeviceId, ZoneId};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::sync::{watch, Notify};

/// The exchange's clock: a fixed instant; readings are stamped in the hour before it.
const NOW_MS: i64 = 1_790_000_000_000;
/// 10 kW allows 2.7 Wh a second: readings one second and one Wh apart are plausible.
const NAMEPLATE_W: i64 = 10_000;
/// Readings taken before the broker restarts, and again after.
const READINGS_EACH_SIDE: u64 = 10;
/// The gateway publishes an unanswered reading again after this (short, so the test is quick).
const ACK_TIMEOUT_MS: u64 = 200;
/// Bound on any wait (a hang, not a timing).
const WAIT_MAX: Duration = Duration::from_secs(90);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Tells the re-executed test binary to serve rumqttd on this port.
const RUMQTTD_PORT_ENV: &str = "GRIDEX_TEST_RUMQTTD_PORT";

fn wait_listening(port: u16) {
    assert!(gridex_test_support::wait_listening("127.0.0.1", port), "the broker does not listen on {port}");
}

/// A broker without persistence in a process of its own, so killing it loses what it held.
struct Broker {
    kind: &'static str,
    port: u16,
    child: Child,
    /// Mosquitto's configuration file (kept for restarts).
    _config: Option<tempfile::TempDir>,
}

impl Broker {
    fn rumqttd() -> Broker {
        let port = gridex_test_support::free_port();
        Broker { kind: "rumqttd", port, child: Self::spawn_rumqttd(port), _config: None }
    }

    fn spawn_rumqttd(port: u16) -> Child {
        let child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "rumqttd_child_process", "--ignored", "--test-threads", "1"])
            .env(RUMQTTD_PORT_ENV, port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("the broker process starts");
        wait_listening(port);
        child
    }

    fn mosquitto() -> Broker {
        let port = gridex_test_support::free_port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n"),
        )
        .expect("the configuration is written");
        let child = Self::spawn_mosquitto(&config, port);
        Broker { kind: "mosquitto", port, child, _config: Some(dir) }
    }

    fn spawn_mosquitto(config: &Path, port: u16) -> Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        wait_listening(port);
        child
    }

    fn addr(&self) -> BrokerAddr {
        BrokerAddr { name: self.kind, host: "127.0.0.1".to_owned(), port: self.port }
    }

    fn kill(&mut self) {
        self.child.kill().expect("the broker is killed");
        let _ = self.child.wait();
    }

    /// Kills the broker (everything it queued is gone) and starts a fresh one on the same port.
    fn restart(&mut self) {
        self.kill();
        self.child = match &self._config {
            Some(dir) => Self::spawn_mosquitto(&dir.path().join("mosquitto.conf"), self.port),
            None => Self::spawn_rumqttd(self.port),
        };
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: the body of the child process serving rumqttd for
/// `a_broker_restart_without_persistence_loses_no_reading` (rumqttd cannot be stopped in-process,
/// so the test kills this process). Without the port variable it does nothing.
#[test]
#[ignore = "run by a_broker_restart_without_persistence_loses_no_reading as its broker process"]
fn rumqttd_child_process() {
    let Some(port) = std::env::var(RUMQTTD_PORT_ENV).ok().and_then(|port| port.parse::<u16>().ok()) else { return };
    let config = rumqttd_config(port);
    let _ = rumqttd::Broker::new(config).start();
}

/// The gateway's real spool and publisher, fed by its real poll-sign-spool step.
struct Gateway {
    poller: Poller,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), publisher::PublishError>>,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl Gateway {
    fn start(key: &SigningKey, zone: &ZoneId, broker: &BrokerAddr) -> Gateway {
        let temp = tempfile::tempdir().expect("a spool directory");
        let dir = temp.path().to_path_buf();
        let spool = Arc::new(Mutex::new(Spool::open(&dir, SPOOL_BYTES_DEFAULT).expect("the spool opens")));
        let device = DeviceId::from_verifying_key(&key.verifying_key());
        let poller = Poller {
            key: key.clone(),
            device,
            zone: zone.clone(),
            serial_override: None,
            tracker: CounterTracker::new(NAMEPLATE_W, CountersState::default()),
            state: GatewayState::load(&dir),
            state_dir: dir.clone(),
        };
        let config = PublisherConfig {
            mqtt: MqttSettings { url: format!("mqtt://{}:{}", broker.host, broker.port), ..MqttSettings::default() },
            operator: Some(pinned_operator()),
            device,
            zone: zone.clone(),
            ack_timeout_ms: ACK_TIMEOUT_MS,
        };
        let notify = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(PublisherStats::default());
        let task = tokio::spawn(publisher::run(config, spool.clone(), notify.clone(), stats, stop_rx));
        Gateway { poller, spool, notify, stop, task, dir, _temp: temp }
    }

    /// Takes reading `seq` (one second and one Wh after the previous one) into the spool.
    fn take(&mut self, seq: u64) {
        let sample = Sample {
            import_wh: Some(seq as i64),
            export_wh: Some(0),
            power_w: Some(0),
            serial: Some("SN-1".to_owned()),
            ..Sample::default()
        };
        let ts_ms = NOW_MS - 3_600_000 + seq as i64 * 1_000;
        let reading = self.poller.accept(&sample, ts_ms, &self.spool).expect("spooled").expect("plausible");
        assert_eq!(reading.seq, seq);
        self.notify.notify_one();
    }

    /// Through which seq the spool let its readings go (its `acked` cursor).
    fn released_through(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("acked")).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
    }

    async fn stop(self) -> (PathBuf, tempfile::TempDir) {
        let _ = self.stop.send(true);
        self.task.await.expect("the publisher joins").expect("the publisher ran cleanly");
        (self.dir, self._temp)
    }
}

/// Records the seqs the broker routes on the device's readings topic.
async fn watch_readings(broker: &BrokerAddr, zone: &ZoneId, device: &str) -> Arc<Mutex<BTreeSet<u64>>> {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_options(broker, &format!("watch-{}", unique())), 64);
    client.subscribe(protocol::topics::readings(zone, &device), rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let sink = seen.clone();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        // Ends when the broker is killed: the watcher is needed only before that.
        while let Ok(event) = eventloop.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) => {
                    if let Ok(signed) = protocol::Signed::<protocol::Reading>::parse(&publish.payload) {
                        sink.lock().expect("lock").insert(signed.message.seq);
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(ANSWER_TIMEOUT, subscribed).await.expect("subscribed in time").expect("subscribed");
    seen
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn stored_seqs(db: &Database, device: &str) -> Vec<i64> {
    let mut conn = db.get().expect("a connection");
    readings::table
        .filter(readings::device_id.eq(device))
        .select(readings::seq)
        .order(readings::seq)
        .load(&mut conn)
        .expect("load readings")
}

async fn start_exchange(db: &Database, broker: &BrokerAddr, zone: &ZoneId, client_id: &str) -> ExchangeHandle {
    let config = ExchangeConfig { zones: vec![zone.clone()], ..ExchangeConfig::new(protocol::testing::operator_key()) };
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let exchange = service::start(config, db.clone(), clock, Some(mqtt_options(broker, client_id)))
        .await
        .expect("the exchange starts");
    tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
    exchange
}

/// The attack: a fault in the broker. It acknowledged the gateway's readings (PUBACK) and queued them
/// for the exchange, which was down; then it restarted without persistence and lost them. The
/// gateway used to delete a reading from its spool on the broker's PUBACK, so those readings were
/// gone for good. Now it keeps each until the exchange's `reading_ack`, publishes again after every
/// reconnect and timeout, and the restarted exchange stores every reading once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_without_persistence_loses_no_reading() {
    let mut brokers: Vec<fn() -> Broker> = vec![Broker::rumqttd];
    if std::env::var("MQTT_URL").is_ok_and(|url| !url.is_empty()) {
        brokers.push(Broker::mosquitto);
    }
    for start_broker in brokers {
        for test_db in TestDb::all() {
            let mut broker = start_broker();
            eprintln!("backend {:?}, broker {}", test_db.db.backend(), broker.kind);
            let db = &test_db.db;
            let zone = ZoneId::parse(&format!("s{}", unique())).expect("a zone id");
            seed_zone(db, &zone, 900_000);
            let (_, device_key) = seed_household(db, &zone, 1, NAMEPLATE_W);
            let device = device_hex(&device_key);
            let client_id = format!("exchange-{}", unique());

            // The exchange has a persistent session at the broker, then goes down.
            start_exchange(db, &broker.addr(), &zone, &client_id).await.shutdown().await;
            let seen = watch_readings(&broker.addr(), &zone, &device).await;
            let mut gateway = Gateway::start(&device_key, &zone, &broker.addr());
            for seq in 1..=READINGS_EACH_SIDE {
                gateway.take(seq);
            }
            // The broker has them all (and queued them for the exchange's session).
            wait_for("the broker to route the readings", || {
                seen.lock().expect("lock").len() as u64 == READINGS_EACH_SIDE
            })
            .await;

            broker.restart();
            for seq in READINGS_EACH_SIDE + 1..=2 * READINGS_EACH_SIDE {
                gateway.take(seq);
            }
            let exchange = start_exchange(db, &broker.addr(), &zone, &client_id).await;
            let all = 2 * READINGS_EACH_SIDE;
            wait_for("every reading stored", || stored_seqs(db, &device).len() as u64 >= all).await;
            wait_for("the spool to let every reading go", || gateway.released_through() == all).await;

            let expected: Vec<i64> = (1..=all as i64).collect();
            assert_eq!(stored_seqs(db, &device), expected, "every reading stored exactly once");
            let (dir, _temp) = gateway.stop().await;
            let mut spool = Spool::open(&dir, SPOOL_BYTES_DEFAULT).expect("the spool opens");
            assert_eq!(spool.acked_seq(), all);
            assert!(spool.read_after(spool.acked_seq(), 1).expect("reads").is_empty(), "the spool ends empty");
            exchange.shutdown().await;
            broker.kill();
        }
    }
}
