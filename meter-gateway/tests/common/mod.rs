//! Shared by the integration tests: the agent settings they run with, a battery agent running
//! over a broker, and an MQTT subscriber that is subscribed before the test gets it. The web tests
//! include it too (its agent publishes the plans they read).
#![allow(dead_code)]

use meter_gateway::agent::battery::{BatteryObservation, BatterySettings};
use meter_gateway::agent::{self, AgentError, AgentSettings, BatteryLink, QuotingSettings};
use meter_gateway::battery::BatteryMode;
use meter_gateway::clock::SimClock;
use meter_gateway::modbus::{ModbusClient, ModbusUrl, RetryPolicy};
use meter_gateway::publisher::MqttSettings;
use meter_gateway::simulator::{self, DeviceService, Home, RegisterBank};
use protocol::{Reading, ReadingAck, Signed, ZoneId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A simulated Modbus TCP device (tokio-modbus's server) on a loopback port, served until this is
/// dropped.
pub struct Served {
    pub addr: SocketAddr,
    /// The simulated home behind it, if any.
    pub home: Option<Arc<Mutex<Home>>>,
    /// Its registers, with the writes it received.
    pub bank: Arc<Mutex<RegisterBank>>,
    _stop: watch::Sender<bool>,
}

/// Serves `service` on a free loopback port.
pub async fn serve(service: DeviceService) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = watch::channel(false);
    let (home, bank) = (service.home.clone(), service.bank.clone());
    tokio::spawn(simulator::serve_tcp(listener, service, stop_rx));
    Served { addr, home, bank, _stop: stop }
}

/// Serves the registers of `bank` alone (no home behind them), on the real clock.
pub async fn serve_bank(bank: RegisterBank) -> Served {
    serve(DeviceService { bank: Arc::new(Mutex::new(bank)), home: None, clock: SimClock::real() }).await
}

/// A Modbus client of unit 1 at `addr`: a second for each answer, two attempts.
pub fn client(addr: SocketAddr) -> ModbusClient {
    ModbusClient::new(
        ModbusUrl::parse(&format!("tcp://{addr}")).expect("url"),
        1,
        RetryPolicy { timeout_ms: 1_000, attempts: 2, backoff_initial_ms: 10 },
    )
}

/// A bound on waiting for the broker's subscription acknowledgement (not a timing assertion).
const SUBSCRIBED_WAIT_MAX: Duration = Duration::from_secs(60);

/// The agent of the account key at `key`: sells from 0.10, buys up to 0.25, all of the surplus and
/// the deficit, one 15-minute slot ahead with the gate 5 minutes before it, orders of 10 Wh or
/// more, forecasts from the last hour; the limit strategy, no battery.
pub fn agent_settings(key: PathBuf) -> AgentSettings {
    AgentSettings {
        key,
        price_per_kwh_sell_min: 100_000,
        price_per_kwh_buy_max: 250_000,
        surplus_share_percent: 100,
        buy_deficit: true,
        slot_len_ms: 900_000,
        gate_closure_ms: 300_000,
        slots_ahead: 1,
        qty_min_wh: 10,
        forecast_window_ms: 3_600_000,
        mqtt: None,
        battery: None,
        quoting: None,
    }
}

/// The quoting strategy in a zone of feed-in 0.08 and retail 0.30 (default tick, no fees, no caps).
pub fn quoting_settings(state_file: Option<PathBuf>) -> QuotingSettings {
    QuotingSettings { state_file, ..QuotingSettings::with_tariffs(80_000, 300_000) }
}

/// [`agent_settings`] quoting (without a state file) and controlling the home battery, falling back
/// to self-consumption after two simulated minutes without the exchange.
pub fn battery_agent_settings(key: PathBuf) -> AgentSettings {
    AgentSettings {
        battery: Some(BatterySettings { control: true, no_contact_fallback_ms: 120_000, ..BatterySettings::default() }),
        quoting: Some(quoting_settings(None)),
        ..agent_settings(key)
    }
}

/// The operator key the tests pin, hex-encoded (the stand-in exchange signs with the public test
/// key).
pub fn pinned_operator() -> String {
    hex::encode(protocol::testing::operator_key().verifying_key().to_bytes())
}

/// The connection to a broker on this machine's `port`, pinning the tests' operator key.
pub fn local_mqtt(port: u16) -> MqttSettings {
    MqttSettings {
        url: format!("mqtt://127.0.0.1:{port}"),
        operator_key: Some(pinned_operator()),
        ..Default::default()
    }
}

/// A client of `host:port` (its id starts with `client_prefix`) subscribed to `topic`: returns once
/// the broker has acknowledged the subscription, with the client (to publish) and what arrives on
/// the topic. The connection is polled for as long as the broker keeps it.
pub async fn subscribed(
    host: &str,
    port: u16,
    client_prefix: &str,
    topic: String,
    capacity: usize,
) -> (AsyncClient, mpsc::Receiver<Publish>) {
    let mut options = MqttOptions::new(format!("{client_prefix}-{}", gridex_test_support::free_port()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    client.subscribe(topic, QoS::AtLeastOnce).await.expect("subscribe");
    let (publish_tx, publishes) = mpsc::channel(capacity);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let _ = publish_tx.send(publish).await;
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(SUBSCRIBED_WAIT_MAX, subscribed).await.expect("subscribed in time").expect("subscribed");
    (client, publishes)
}

/// Stands in for the exchange on `host:port` (its client id starts with `client_prefix`): subscribes
/// to `filter` and returns once the broker has acknowledged that, then parses and verifies each
/// signed reading that arrives, answers it with the operator's `reading_ack` on the device's events
/// topic (the gateway keeps a reading until it is answered) and hands it to `seen` with the message
/// it came in. It polls its connection until the test ends.
pub async fn acking_exchange(
    host: &str,
    port: u16,
    client_prefix: &str,
    filter: &str,
    mut seen: impl FnMut(&Publish, Reading) + Send + 'static,
) -> JoinHandle<()> {
    let mut options = MqttOptions::new(format!("{client_prefix}-{}", gridex_test_support::free_port()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    // Room for one answer per reading between polls (try_publish never waits).
    let (client, mut eventloop) = AsyncClient::new(options, 1_024);
    client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe queued");
    // Wait for the SUBACK so no reading published after this returns is missed.
    let subscribing = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(error) => panic!("subscriber cannot connect to {host}:{port}: {error}"),
            }
        }
    };
    tokio::time::timeout(SUBSCRIBED_WAIT_MAX, subscribing).await.expect("subscribed in time");
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let signed = Signed::<Reading>::parse(&publish.payload).expect("a well-formed signed reading");
                    signed.verify().expect("the signature verifies");
                    let reading = signed.message;
                    let ack = ReadingAck { device: reading.device, seq: reading.seq, ts_ms: reading.ts_ms };
                    let answer = Signed::sign_operator(ack, &protocol::testing::operator_key()).expect("signs");
                    let events = protocol::topics::events(&reading.zone, &reading.device);
                    let _ = client.try_publish(events, QoS::AtLeastOnce, false, answer.to_json());
                    seen(&publish, reading);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
}

/// The payload of the next message a [`subscribed`] client receives; panics saying `what` was
/// awaited when none arrives within a minute (a hang guard, not a timing assertion).
pub async fn next_payload(publishes: &mut mpsc::Receiver<Publish>, what: &str) -> Vec<u8> {
    let publish = tokio::time::timeout(SUBSCRIBED_WAIT_MAX, publishes.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .expect("the subscription runs");
    publish.payload.to_vec()
}

/// The agent's run loop with a battery link (`agent::run_with_battery`), running on its own task:
/// the test tells it what the battery reports and reads the modes it sends.
pub struct BatteryAgent {
    clock: SimClock,
    observations: mpsc::Sender<BatteryObservation>,
    /// The battery modes the agent sends.
    pub modes: mpsc::Receiver<BatteryMode>,
    /// Kept open: the agent runs until told to stop, not until its readings end.
    _readings: mpsc::Sender<protocol::Reading>,
    stop: watch::Sender<bool>,
    running: JoinHandle<Result<(), AgentError>>,
}

impl BatteryAgent {
    /// Starts the agent of `settings` trading in `zone` over `mqtt`, on `clock`.
    pub fn start(settings: AgentSettings, zone: ZoneId, mqtt: MqttSettings, clock: SimClock) -> Self {
        let (readings_tx, readings) = mpsc::channel(8);
        let (observations, observations_rx) = mpsc::channel(8);
        let (modes_tx, modes) = mpsc::channel(8);
        let (stop, stop_rx) = watch::channel(false);
        let link = BatteryLink { observations: Some(observations_rx), modes: modes_tx };
        let running = tokio::spawn(agent::run_with_battery(settings, zone, mqtt, clock, readings, stop_rx, Some(link)));
        Self { clock, observations, modes, _readings: readings_tx, stop, running }
    }

    /// The battery reports, now, `soc_permille` of its 10 kWh (nothing charged or discharged yet)
    /// while the home needs `home_net_w`.
    pub async fn observe(&self, soc_permille: i64, home_net_w: i64) {
        let observation = BatteryObservation {
            ts_ms: self.clock.now_ms(),
            soc_permille,
            capacity_wh: 10_000,
            charged_wh: 0,
            discharged_wh: 0,
            home_net_w: Some(home_net_w),
        };
        self.observations.send(observation).await.expect("the agent listens");
    }

    /// Stops the agent and asserts that its run loop ended without an error.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.running.await.expect("joins").expect("the agent ran");
    }
}
