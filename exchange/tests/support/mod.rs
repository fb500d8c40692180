//! Shared by the integration tests and the examples: an embedded MQTT broker (or the machine's
//! Mosquitto when `MQTT_URL` is set), registry rows written through `settlement::registry` (so they
//! pass its rules), signed messages, and an MQTT probe that sees what the exchange publishes.
#![allow(dead_code, unused_imports)]

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::schema::reading_rejections;
use gridex_store::testing::TestDb;
use gridex_store::{Database, DbConnection};
use protocol::{
    AccountId, DeviceId, MeterSerial, Order, PricePerKwh, Reading, ReadingAck, Reject, Side, Signed, SlotId,
    TimeInForce, TimestampMs, Wh, ZoneId,
};
use settlement::registry::{self, AccountKind, RegistryError};
use settlement::rules::Tariff;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use gridex_test_support::broker::rumqttd_config;
pub use gridex_test_support::{brokers, embedded_broker, external_broker, unique, BrokerAddr};

/// How long a test waits for an answer from the exchange before failing (not a timing assertion:
/// only a bound on a hang).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub fn mqtt_options(broker: &BrokerAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    options.set_inflight(200);
    options
}

/// Drives a publisher's event loop until it disconnects; the receiver fires once the broker has
/// acknowledged (PUBACK) `total` messages. The load tools keep their client until then: dropping it
/// earlier ends the event loop with messages still unsent.
pub fn drive_publisher(
    mut eventloop: rumqttc::EventLoop,
    total: usize,
    name: &'static str,
) -> tokio::sync::oneshot::Receiver<()> {
    let (acked_tx, acked_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut acked, mut acked_tx) = (0, Some(acked_tx));
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
                    eprintln!("{name}: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    acked_rx
}

/// Runs registry writes in one transaction, failing the test with `what` if the registry refuses.
fn registry_write(db: &Database, what: &str, work: impl FnOnce(&mut DbConnection) -> Result<(), RegistryError>) {
    db.write_blocking(|conn| Ok(work(conn)))
        .unwrap_or_else(|error| panic!("{what}: {error}"))
        .unwrap_or_else(|error| panic!("{what}: {error}"));
}

/// A zone with a tariff (feed-in 50 000, retail 300 000 µ/kWh from the epoch).
pub fn seed_zone(db: &Database, zone: &ZoneId, slot_len_ms: i64) {
    let tariff = Tariff {
        effective_from_ms: 0,
        retail_price_per_kwh: PricePerKwh(300_000),
        feed_in_price_per_kwh: PricePerKwh(50_000),
        grid_fee_per_kwh: PricePerKwh(20_000),
        protocol_fee_bps: 50,
    };
    registry_write(db, "seed a zone", |conn| {
        registry::create_zone(conn, zone, zone.as_str(), slot_len_ms, None, 0)?;
        registry::set_tariff(conn, zone, &tariff)
    });
}

/// A household account (key `seed`) in `zone`, with one device (key `seed + 100`) of `nameplate_w`.
pub fn seed_household(db: &Database, zone: &ZoneId, seed: u8, nameplate_w: i64) -> (SigningKey, SigningKey) {
    let account_key = SigningKey::from_bytes(&[seed; 32]);
    let device_key = SigningKey::from_bytes(&[seed.wrapping_add(100); 32]);
    seed_keys(db, zone, &account_key, &device_key, nameplate_w);
    (account_key, device_key)
}

/// A household account of `account_key` in `zone` with one device of `device_key` (meter `SN-1`).
pub fn seed_keys(db: &Database, zone: &ZoneId, account_key: &SigningKey, device_key: &SigningKey, nameplate_w: i64) {
    let account = AccountId::from_verifying_key(&account_key.verifying_key());
    let device = DeviceId::from_verifying_key(&device_key.verifying_key());
    let serial = MeterSerial::parse("SN-1").expect("a valid literal");
    registry_write(db, "seed a household", |conn| {
        registry::register_account(conn, &account.to_hex(), AccountKind::Household, "test household", Some(zone), 0)?;
        registry::register_device(conn, &device, &account, zone, &serial, nameplate_w, 0)?;
        Ok(())
    });
}

/// A version 1 reading of `key`'s device (meter `SN-1`, as [`seed_keys`] registers it).
pub fn reading(key: &SigningKey, zone: &ZoneId, seq: u64, ts_ms: i64, import_wh: i64, export_wh: i64) -> Reading {
    let serial = MeterSerial::parse("SN-1").expect("a valid literal");
    protocol::testing::grid_reading(key, zone.clone(), serial, seq, ts_ms, import_wh, export_wh)
}

pub fn signed_reading(key: &SigningKey, reading: Reading) -> Vec<u8> {
    Signed::sign(reading, key).expect("sign a reading").to_json()
}

#[allow(clippy::too_many_arguments)]
pub fn order(
    key: &SigningKey,
    zone: &ZoneId,
    slot: SlotId,
    side: Side,
    price: i64,
    qty_wh: i64,
    nonce: u64,
    ts_ms: i64,
) -> Vec<u8> {
    let order = Order {
        account: AccountId::from_verifying_key(&key.verifying_key()),
        zone: zone.clone(),
        slot,
        side,
        price_per_kwh: PricePerKwh(price),
        qty_wh: Wh(qty_wh),
        tif: TimeInForce::Gtc,
        post_only: false,
        nonce,
        ts_ms: TimestampMs(ts_ms),
    };
    Signed::sign(order, key).expect("sign an order").to_json()
}

pub fn device_hex(key: &SigningKey) -> String {
    DeviceId::from_verifying_key(&key.verifying_key()).to_hex()
}

/// An MQTT client that publishes for the test and records everything under `gridex/v1/{zone}/…`
/// for the zones it watches.
pub struct Probe {
    pub client: rumqttc::AsyncClient,
    inbox: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    held: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl Probe {
    pub async fn connect(broker: &BrokerAddr, zones: &[ZoneId]) -> Probe {
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(mqtt_options(broker, &format!("probe-{}", unique())), 10_000);
        let (sender, inbox) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed_rx) = mpsc::unbounded_channel();
        for zone in zones {
            for channel in ["rejects", "events"] {
                client
                    .subscribe(format!("gridex/v1/{zone}/{channel}/+"), rumqttc::QoS::AtLeastOnce)
                    .await
                    .expect("subscribe");
            }
            for channel in ["trades", "auction", "roots"] {
                client
                    .subscribe(format!("gridex/v1/{zone}/{channel}"), rumqttc::QoS::AtLeastOnce)
                    .await
                    .expect("subscribe");
            }
        }
        let expected = zones.len() * 5;
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                        if sender.send((publish.topic.clone(), publish.payload.to_vec())).is_err() {
                            break;
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        eprintln!("probe connection: {error}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        for _ in 0..expected {
            tokio::time::timeout(ANSWER_TIMEOUT, subscribed_rx.recv()).await.expect("subscribed in time");
        }
        Probe { client, inbox, held: Vec::new() }
    }

    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
    }

    /// The next message on `topic` (messages on other topics are kept for later calls).
    pub async fn next_on(&mut self, topic: &str) -> Vec<u8> {
        self.next_any(&[topic]).await.1
    }

    /// The next message on any of `topics`, with its topic.
    pub async fn next_any(&mut self, topics: &[&str]) -> (String, Vec<u8>) {
        if let Some(index) = self.held.iter().position(|(held, _)| topics.contains(&held.as_str())) {
            return self.held.remove(index);
        }
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let received = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("no message on {topics:?} in time"))
                .expect("probe connection alive");
            if topics.contains(&received.0.as_str()) {
                return received;
            }
            self.held.push(received);
        }
    }

    /// Every message received so far (waiting `quiet` for more).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<(String, Vec<u8>)> {
        let mut all = std::mem::take(&mut self.held);
        while let Ok(Some(received)) = tokio::time::timeout(quiet, self.inbox.recv()).await {
            all.push(received);
        }
        all
    }
}

/// The operator key the tests pin: the exchange in these tests signs with the public test key.
pub fn pinned_operator() -> [u8; 32] {
    protocol::testing::operator_key().verifying_key().to_bytes()
}

/// An outbound message the exchange published (PROTOCOL.md §2.1), parsed and verified against the
/// pinned operator key, as a gateway or agent receives it.
pub fn decode<T: protocol::OperatorSigned>(bytes: &[u8]) -> Result<T, protocol::ProtocolError> {
    let signed = Signed::<T>::parse(bytes)?;
    signed.verify_operator(&pinned_operator())?;
    Ok(signed.message)
}

/// The PostgreSQL test database; `None`, said on stderr with what `needs` it, when `DATABASE_URL`
/// is not set (the test then passes without running).
pub fn postgres_for(needs: &str) -> Option<TestDb> {
    let test_db = TestDb::postgres();
    if test_db.is_none() {
        eprintln!("DATABASE_URL is not set: {needs}");
    }
    test_db
}

/// Runs `scenario` once on every backend (SQLite; PostgreSQL with `DATABASE_URL`) with every broker
/// (the embedded one; Mosquitto with `MQTT_URL`), naming each pair on stderr.
pub async fn each_backend_and_broker<F, Fut>(mut scenario: F)
where
    F: FnMut(TestDb, BrokerAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for broker in brokers() {
        for test_db in TestDb::all() {
            eprintln!("backend {:?}, broker {}", test_db.db.backend(), broker.name);
            scenario(test_db, broker.clone()).await;
        }
    }
}

/// An `exchange-node` process (`binary`) on `db_url` and `broker` as `client_id`, with `args` after
/// those: its stdin, and its stdout line by line. Its log goes to ours, each line marked with the
/// node it came from (several nodes share the output).
pub fn spawn_node(
    binary: &std::path::Path,
    db_url: &str,
    broker: &BrokerAddr,
    client_id: &str,
    args: &[&str],
) -> (std::process::Child, std::process::ChildStdin, std::sync::mpsc::Receiver<String>) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary)
        .args(["--db", db_url, "--mqtt", &format!("{}:{}", broker.host, broker.port), "--client-id", client_id])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exchange-node");
    let lines = gridex_test_support::follow_output(&mut child, client_id);
    let stdin = child.stdin.take().expect("the node's stdin");
    (child, stdin, lines)
}

/// Starts the exchange of `config` on `db` and `clock`, connected to `broker` as `client_id`, and
/// waits until it has subscribed.
pub async fn start_exchange(
    config: &ExchangeConfig,
    db: &Database,
    clock: &Arc<ManualClock>,
    broker: &BrokerAddr,
    client_id: &str,
) -> ExchangeHandle {
    let options = mqtt_options(broker, client_id);
    let exchange =
        service::start(config.clone(), db.clone(), clock.clone(), Some(options)).await.expect("the exchange starts");
    tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
    exchange
}

/// Who a [`DeviceEnv`] seeds: the zone's name starts with `zone_prefix`; the household is
/// [`seed_household`]'s of `seed` with a device of `nameplate_w`; the clock stands at `now_ms`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSetup {
    pub zone_prefix: &'static str,
    pub seed: u8,
    pub nameplate_w: i64,
    pub now_ms: i64,
}

/// One household's device against a running exchange (the test files add their own methods).
pub struct DeviceEnv {
    pub test_db: TestDb,
    pub exchange: ExchangeHandle,
    pub probe: Probe,
    pub zone: ZoneId,
    pub device: SigningKey,
    pub clock: Arc<ManualClock>,
    pub client_id: String,
    pub config: ExchangeConfig,
    pub broker: BrokerAddr,
}

impl DeviceEnv {
    pub async fn start(test_db: TestDb, broker: &BrokerAddr, setup: DeviceSetup) -> DeviceEnv {
        let zone = ZoneId::parse(&format!("{}{}", setup.zone_prefix, unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, 900_000);
        let (_, device) = seed_household(&test_db.db, &zone, setup.seed, setup.nameplate_w);
        let clock = Arc::new(ManualClock::new(setup.now_ms));
        let client_id = format!("exchange-{}", unique());
        // Only this test's zone: tests share Mosquitto.
        let config =
            ExchangeConfig { zones: vec![zone.clone()], ..ExchangeConfig::new(protocol::testing::operator_key()) };
        let probe = Probe::connect(broker, std::slice::from_ref(&zone)).await;
        let exchange = start_exchange(&config, &test_db.db, &clock, broker, &client_id).await;
        DeviceEnv { test_db, exchange, probe, zone, device, clock, client_id, config, broker: broker.clone() }
    }

    /// Runs `scenario` on every backend and broker.
    pub async fn on_every_backend<F, Fut>(setup: DeviceSetup, scenario: F)
    where
        F: Fn(DeviceEnv) -> Fut,
        Fut: std::future::Future<Output = DeviceEnv>,
    {
        let scenario = &scenario;
        each_backend_and_broker(|test_db, broker| async move {
            let env = scenario(DeviceEnv::start(test_db, &broker, setup).await).await;
            env.exchange.shutdown().await;
        })
        .await;
    }

    /// Stops the exchange and starts it again on the same session and database: its directory of
    /// devices (and their marks) is rebuilt from storage.
    pub async fn restart(&mut self) {
        self.exchange.clone().shutdown().await;
        self.exchange =
            start_exchange(&self.config, &self.test_db.db, &self.clock, &self.broker, &self.client_id).await;
    }

    /// Publishes `bytes` on `topic` and returns the exchange's answer to the device: its
    /// acknowledgement or its refusal (always on the version 1 topics).
    pub async fn answer(&mut self, topic: String, bytes: Vec<u8>) -> Result<ReadingAck, Reject> {
        let device = device_hex(&self.device);
        self.probe.publish(topic, bytes).await;
        let acks = protocol::topics::events(&self.zone, &device);
        let rejects = protocol::topics::rejects(&self.zone, &device);
        let (topic, payload) = self.probe.next_any(&[&acks, &rejects]).await;
        if topic == acks {
            Ok(decode::<ReadingAck>(&payload).expect("an ack"))
        } else {
            Err(decode::<Reject>(&payload).expect("a reject"))
        }
    }

    /// Waits (with a generous deadline, not a fixed time) until the exchange has recorded `count`
    /// refusals of the device, and returns their (seq, reason) in seq order.
    pub async fn recorded_refusals(&self, count: usize) -> Vec<(i64, String)> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let rows: Vec<(i64, String)> = {
                let mut conn = self.test_db.db.get().expect("a connection");
                reading_rejections::table
                    .filter(reading_rejections::device_id.eq(device_hex(&self.device)))
                    .order(reading_rejections::seq.asc())
                    .select((reading_rejections::seq, reading_rejections::reason))
                    .load(&mut conn)
                    .expect("load refusals")
            };
            if rows.len() >= count || tokio::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
