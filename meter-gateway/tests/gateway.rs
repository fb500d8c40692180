//! End-to-end tests: the simulator served over Modbus TCP/RTU, the gateway (in-process and as the real
//! binary), an embedded rumqttd broker (and the machine's Mosquitto when `MQTT_URL` is set), and a
//! subscriber that verifies what arrives.

mod common;

use gridex_test_support::Proxy;
use meter_gateway::clock::SimClock;
use meter_gateway::config::GatewaySettings;
use meter_gateway::gateway::{self, GatewayState};
use meter_gateway::modbus::{Function, ModbusClient, ModbusError, ModbusUrl, RetryPolicy};
use meter_gateway::profile::Profile;
use meter_gateway::publisher::MqttSettings;
use meter_gateway::simulator::{self, Behaviour, HomeSpec, RegisterBank, Simulation};
use meter_gateway::{keys, sunspec};
use protocol::Reading;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_modbus::ExceptionCode;

/// Upper bound on any wait in these tests; they normally finish far sooner.
const WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_MS: u64 = 100;

/// Starts an embedded rumqttd on a free port and waits until it accepts connections.
async fn start_broker() -> u16 {
    gridex_test_support::embedded_broker().port
}

/// One received reading: its seq, the parsed reading and the raw signed payload.
type Received = (u64, Reading, Vec<u8>);

/// A subscriber that collects (seq, reading, raw payload) of verified readings.
struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    _task: JoinHandle<()>,
}

impl Subscriber {
    async fn start(host: &str, port: u16, filter: &str) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = common::acking_exchange(host, port, "test-sub", filter, move |publish, reading| {
            let topic = protocol::topics::readings(&reading.zone, &reading.device);
            assert_eq!(publish.topic, topic, "published on the device's readings topic");
            sink.lock().expect("lock").push((reading.seq, reading, publish.payload.to_vec()));
        })
        .await;
        Self { received, _task: task }
    }

    fn snapshot(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    async fn wait_for(&self, what: &str, condition: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + WAIT_MAX;
        while !condition(&self.snapshot()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {} readings", self.snapshot().len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Home {
    sim: Simulation,
    _stop: watch::Sender<bool>,
}

async fn start_home(seed: u64) -> Home {
    let (stop, stop_rx) = watch::channel(false);
    let clock = SimClock::sped_up(60.0);
    let sim =
        simulator::spawn_homes("127.0.0.1:0".parse().expect("addr"), &[HomeSpec::from_seed(seed)], clock, stop_rx)
            .await
            .expect("simulator starts");
    Home { sim, _stop: stop }
}

fn settings(dir: &Path, modbus_url: String, mqtt_url: String, zone: &str, clock: SimClock) -> GatewaySettings {
    let key = dir.join("device.key");
    keys::load_or_generate(&key).expect("key");
    let mut settings = GatewaySettings {
        zone: zone.to_owned(),
        key,
        interval_ms: POLL_MS,
        // These tests count readings per poll: publish every poll (not longer than the poll period).
        publish_interval_ms: POLL_MS,
        spool_dir: dir.join("spool"),
        clock: Some(clock),
        ..GatewaySettings::default()
    };
    settings.modbus.url = modbus_url;
    settings.modbus.timeout_ms = 500;
    settings.mqtt =
        MqttSettings { url: mqtt_url, operator_key: Some(common::pinned_operator()), ..MqttSettings::default() };
    settings
}

/// Runs a gateway in-process until the returned sender is dropped or sent to.
fn spawn_gateway(settings: GatewaySettings) -> (watch::Sender<bool>, JoinHandle<Result<(), gateway::GatewayError>>) {
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(gateway::run(settings, async move {
        let _ = stop_rx.changed().await;
    }));
    (stop, task)
}

fn assert_counters_follow_the_simulator(
    readings: &[Received],
    before: simulator::HomeState,
    after: simulator::HomeState,
    serial: &str,
) {
    assert!(!readings.is_empty());
    let mut last: Option<&Reading> = None;
    for (_, reading, _) in readings {
        assert_eq!(reading.meter_serial.as_str(), serial);
        // The gateway reads whole Wh (meters truncate); the simulator's counters bracket every reading.
        assert!(reading.import_wh.0 >= before.import_wh() && reading.import_wh.0 <= after.import_wh());
        assert!(reading.export_wh.0 >= before.export_wh() && reading.export_wh.0 <= after.export_wh());
        let pv = reading.pv_wh.expect("the inverter's lifetime energy").0;
        assert!(pv >= before.pv_wh() && pv <= after.pv_wh());
        if let Some(last) = last {
            assert!(reading.seq > last.seq && reading.ts_ms > last.ts_ms);
            assert!(reading.import_wh >= last.import_wh && reading.export_wh >= last.export_wh);
        }
        last = Some(reading);
    }
}

async fn readings_flow_from_the_simulator_into(host: &str, port: u16, zone: &str) {
    let home = start_home(11).await;
    let subscriber = Subscriber::start(host, port, &format!("gridex/v1/{zone}/readings/+")).await;
    let before = home.sim.state(0).expect("home");
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = settings(
        dir.path(),
        format!("tcp://{}", home.sim.addrs[0]),
        format!("mqtt://{host}:{port}"),
        zone,
        home.sim.clock,
    );
    let (stop, task) = spawn_gateway(settings);
    subscriber.wait_for("10 readings", |r| r.len() >= 10).await;
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
    let after = home.sim.state(0).expect("home");
    assert_counters_follow_the_simulator(&subscriber.snapshot(), before, after, "SIM-00000011");
    clear_retained_status(host, port, &dir.path().join("device.key")).await;
}

/// Removes the gateway's retained status so runs against a shared broker leave nothing behind.
async fn clear_retained_status(host: &str, port: u16, key: &Path) {
    let device = protocol::DeviceId::from_verifying_key(&keys::load(key).expect("key").verifying_key());
    let mut options = MqttOptions::new(format!("cleanup-{}", gridex_test_support::free_port()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    client.publish(protocol::topics::status(&device), QoS::AtLeastOnce, true, Vec::new()).await.expect("queued");
    let _ = tokio::time::timeout(WAIT_MAX, async {
        loop {
            if matches!(eventloop.poll().await, Ok(Event::Incoming(Packet::PubAck(_))) | Err(_)) {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn readings_from_the_simulator_over_tcp_arrive_signed_with_its_counters() {
    let port = start_broker().await;
    readings_flow_from_the_simulator_into("127.0.0.1", port, "tcp-embedded").await;
}

#[tokio::test]
async fn readings_from_the_simulator_arrive_through_the_machines_mosquitto() {
    let Ok(url) = std::env::var("MQTT_URL") else {
        eprintln!("MQTT_URL is not set: skipping the Mosquitto test (the embedded broker test ran)");
        return;
    };
    let (host, port, _) = meter_gateway::publisher::parse_url(&url).expect("MQTT_URL is mqtt://host:port");
    // A unique zone keeps concurrent runs apart on a shared broker.
    let zone = format!("mosq-{}", gridex_test_support::free_port());
    readings_flow_from_the_simulator_into(&host, port, &zone).await;
}

#[tokio::test]
async fn readings_over_rtu_through_a_virtual_serial_pair_arrive() {
    let socat_present = std::process::Command::new("socat").arg("-V").output().is_ok();
    if !socat_present {
        assert!(std::env::var_os("GRIDEX_REQUIRE_TOOLS").is_none(), "GRIDEX_REQUIRE_TOOLS is set but socat is missing");
        eprintln!(
            "SKIPPED: socat is not installed, so the RTU test has no virtual serial pair (apt-get install socat)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (device_end, gateway_end) = (dir.path().join("device"), dir.path().join("gateway"));
    let mut socat = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", device_end.display()))
        .arg(format!("pty,raw,echo=0,link={}", gateway_end.display()))
        .spawn()
        .expect("socat starts");
    let deadline = Instant::now() + WAIT_MAX;
    while !(device_end.exists() && gateway_end.exists()) {
        assert!(Instant::now() < deadline, "socat made no ptys");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clock = SimClock::sped_up(60.0);
    let (service, home) = simulator::home_service(HomeSpec::from_seed(5), clock);
    let before = home.lock().expect("lock").state();
    let (stop_sim, stop_rx) = watch::channel(false);
    let device_path = device_end.display().to_string();
    let sim = tokio::spawn(async move { simulator::serve_rtu(&device_path, 19_200, service, stop_rx).await });

    let port = start_broker().await;
    let subscriber = Subscriber::start("127.0.0.1", port, "gridex/v1/rtu/readings/+").await;
    let mut settings = settings(
        dir.path(),
        format!("rtu://{}?baud=19200&parity=none&stop_bits=1", gateway_end.display()),
        format!("mqtt://127.0.0.1:{port}"),
        "rtu",
        clock,
    );
    settings.interval_ms = 200;
    let (stop, task) = spawn_gateway(settings);
    subscriber.wait_for("5 readings over RTU", |r| r.len() >= 5).await;
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
    let after = {
        let mut after_home = home.lock().expect("lock");
        after_home.advance(clock.now_ms());
        after_home.state()
    };
    assert_counters_follow_the_simulator(&subscriber.snapshot(), before, after, "SIM-00000005");
    let _ = stop_sim.send(true);
    let _ = sim.await;
    let _ = socat.kill();
    let _ = socat.wait();
}

fn check_complete_and_ordered(received: &[Received], last_seq: u64) -> usize {
    // The accepted stream: what a receiver keeps when it drops any seq it has already seen.
    let mut accepted: Vec<u64> = Vec::new();
    let mut payloads: BTreeMap<u64, &[u8]> = BTreeMap::new();
    for (seq, _, payload) in received {
        if let Some(earlier) = payloads.insert(*seq, payload) {
            assert_eq!(earlier, &payload[..], "a resent seq carries the very same signed reading");
        }
        if accepted.last().is_none_or(|last| seq > last) {
            accepted.push(*seq);
        }
    }
    assert_eq!(accepted, (1..=last_seq).collect::<Vec<_>>(), "every reading arrives, in order");
    received.len() - accepted.len()
}

#[tokio::test]
async fn a_broker_outage_loses_nothing_and_replays_in_order() {
    let broker = start_broker().await;
    let mut proxy = Proxy::start(broker).await;
    let home = start_home(21).await;
    let subscriber = Subscriber::start("127.0.0.1", broker, "gridex/v1/outage/readings/+").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let first = settings(
        dir.path(),
        format!("tcp://{}", home.sim.addrs[0]),
        format!("mqtt://127.0.0.1:{}", proxy.port),
        "outage",
        home.sim.clock,
    );
    let spool_dir = first.spool_dir.clone();
    let (stop, task) = spawn_gateway(first);
    subscriber.wait_for("readings before the outage", |r| r.len() >= 5).await;

    proxy.down();
    let seen_before = subscriber.snapshot().len();
    // Keep polling through the outage until at least 15 more readings are spooled.
    let deadline = Instant::now() + WAIT_MAX;
    while GatewayState::load(&spool_dir).last_seq < seen_before as u64 + 15 {
        assert!(Instant::now() < deadline, "gateway stopped polling during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = subscriber.snapshot().len();
    assert!(during <= seen_before + 2, "nothing gets through a dead broker (at most what was in flight)");

    proxy.up().await;
    // The same gateway reconnects by itself and replays the outage's readings, then carries on.
    let taken_during_outage = GatewayState::load(&spool_dir).last_seq;
    subscriber
        .wait_for("the readings taken during the outage", |r| {
            r.iter().any(|(seq, _, _)| *seq > taken_during_outage + 3)
        })
        .await;
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
    let received = subscriber.snapshot();
    let last_seq = received.iter().map(|r| r.0).max().unwrap_or(0);
    let duplicates = check_complete_and_ordered(&received, last_seq);
    eprintln!("outage: {last_seq} readings, {duplicates} resent duplicates");
}

fn spawn_binary(args: &[String]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_meter-gateway"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts")
}

#[tokio::test]
async fn a_gateway_killed_with_sigkill_and_restarted_loses_nothing() {
    let broker = start_broker().await;
    let home = start_home(31).await;
    let subscriber = Subscriber::start("127.0.0.1", broker, "gridex/v1/sigkill/readings/+").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("device.key");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meter-gateway"))
        .args(["keygen", "--key"])
        .arg(&key)
        .output()
        .expect("keygen runs");
    assert!(status.status.success());
    let device_id = String::from_utf8(status.stdout).expect("utf-8").trim().to_owned();
    assert_eq!(device_id.len(), 64);
    let spool: PathBuf = dir.path().join("spool");
    let args: Vec<String> = [
        "run",
        "--modbus",
        &format!("tcp://{}", home.sim.addrs[0]),
        "--mqtt",
        &format!("mqtt://127.0.0.1:{broker}"),
        "--operator-key",
        &common::pinned_operator(),
        "--zone",
        "sigkill",
        "--key",
        &key.display().to_string(),
        "--interval-ms",
        "100",
        "--publish-interval-ms",
        "100",
        "--spool",
        &spool.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let mut first = spawn_binary(&args);
    subscriber.wait_for("readings from the first run", |r| r.len() >= 10).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let killed_at = GatewayState::load(&spool).last_seq;

    let mut second = spawn_binary(&args);
    subscriber
        .wait_for("readings from the restarted gateway", |r| r.iter().any(|(seq, _, _)| *seq >= killed_at + 10))
        .await;
    std::process::Command::new("kill").args(["-TERM", &second.id().to_string()]).status().expect("kill runs");
    let exit = second.wait().expect("exits");
    assert!(exit.success(), "a graceful stop exits cleanly: {exit:?}");

    let acked: u64 =
        std::fs::read_to_string(spool.join("acked")).expect("acked cursor").trim().parse().expect("number");
    let last_seq = GatewayState::load(&spool).last_seq;
    subscriber.wait_for("everything acknowledged", |r| r.iter().any(|(seq, _, _)| *seq >= acked)).await;
    let received = subscriber.snapshot();
    assert!(received.iter().all(|(_, reading, _)| reading.device.to_hex() == device_id));
    // Everything up to the acknowledged cursor arrived, in order; what follows is still spooled.
    let upto_acked: Vec<_> = received.iter().filter(|(seq, _, _)| *seq <= acked).cloned().collect();
    let duplicates = check_complete_and_ordered(&upto_acked, acked);
    // Only what was in flight (unacknowledged) at the kill can be sent twice.
    assert!(duplicates <= meter_gateway::publisher::WINDOW, "{duplicates} duplicates");
    let mut reopened = meter_gateway::spool::Spool::open(&spool, u64::MAX).expect("spool opens");
    let pending: Vec<u64> = reopened.read_after(acked, 10_000).expect("reads").iter().map(|r| r.0).collect();
    assert_eq!(pending, ((acked + 1)..=last_seq).collect::<Vec<_>>(), "unacknowledged readings are kept");
}

// ---- devices: sentinels, scale factors, exceptions, silence, chunking, profiles ----

fn client(addr: SocketAddr) -> ModbusClient {
    ModbusClient::new(
        ModbusUrl::parse(&format!("tcp://{addr}")).expect("url"),
        1,
        RetryPolicy { timeout_ms: 300, attempts: 2, backoff_initial_ms: 10 },
    )
}

#[tokio::test]
async fn sentinels_are_missing_and_scale_factors_apply_on_a_real_modbus_device() {
    let mut meter = simulator::meter_model(0, 0, 0);
    meter[usize::from(sunspec::MTR_W)] = 1234;
    meter[usize::from(sunspec::MTR_W_SF)] = (-1i16) as u16; // 123.4 W -> 123
    meter[usize::from(sunspec::MTR_TOT_WH_IMP)..usize::from(sunspec::MTR_TOT_WH_IMP) + 2].copy_from_slice(&[0, 4_321]);
    meter[usize::from(sunspec::MTR_TOT_WH_EXP)..usize::from(sunspec::MTR_TOT_WH_EXP) + 2].copy_from_slice(&[0, 0]); // acc32 NI
    meter[usize::from(sunspec::MTR_TOT_WH_SF)] = 2; // counters in hundreds of Wh
    let mut inverter = simulator::inverter_model(0, 1, 4);
    inverter[usize::from(sunspec::INV_W)] = sunspec::NI_INT16;
    inverter[usize::from(sunspec::INV_WH_SF)] = sunspec::NI_SUNSSF;
    let common = simulator::common_model("Acme", "M1", "", "");
    let mut bank = RegisterBank::default();
    bank.set_sunspec(40000, &[(1, common), (101, inverter), (201, meter)]);
    let served = common::serve_bank(bank).await;
    let addr = served.addr;
    let mut client = client(addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    assert_eq!(device.base, 40000);
    assert_eq!(device.manufacturer.as_deref(), Some("Acme"));
    assert_eq!(device.serial, None, "an all-NUL serial is not implemented");
    let meter = sunspec::read_meter(&mut client, device.meter().expect("meter")).await.expect("reads");
    assert_eq!(meter.power_w, Some(123));
    assert_eq!(meter.import_wh, Some(432_100));
    assert_eq!(meter.export_wh, None, "an acc32 of 0 is not implemented, not zero");
    let inverter = sunspec::read_inverter(&mut client, device.inverter().expect("inverter")).await.expect("reads");
    assert_eq!(inverter.power_w, None);
    assert_eq!(inverter.energy_wh, None, "a value without its scale factor is missing");
    assert_eq!(inverter.operating_state, Some(4));
}

#[tokio::test]
async fn discovery_finds_the_marker_at_one_based_and_low_addresses() {
    for base in [40001u16, 50000, 0, 1] {
        let mut bank = RegisterBank::default();
        bank.set_sunspec(base, &[(203, simulator::meter_model(5, 10, 20))]);
        let served = common::serve_bank(bank).await;
        let addr = served.addr;
        let device = sunspec::discover(&mut client(addr)).await.expect("discovers");
        assert_eq!(device.base, base);
        assert_eq!(device.meter().map(|m| m.id), Some(203));
    }
}

#[tokio::test]
async fn a_device_answering_with_exceptions_reports_them_without_retrying_forever() {
    let bank = RegisterBank { behaviour: Behaviour::Exception(ExceptionCode::ServerDeviceBusy), ..Default::default() };
    let served = common::serve_bank(bank).await;
    let addr = served.addr;
    let mut client = client(addr);
    let error = client.read(Function::Holding, 40000, 2).await.expect_err("an exception");
    assert!(matches!(error, ModbusError::Exception(ExceptionCode::ServerDeviceBusy)), "{error}");
    assert!(matches!(sunspec::discover(&mut client).await, Err(sunspec::SunSpecError::NotFound)));
}

#[tokio::test]
async fn a_device_that_does_not_answer_times_out_and_the_client_recovers_when_it_does() {
    let mut bank = RegisterBank { behaviour: Behaviour::Silent, ..Default::default() };
    bank.set_holding(100, &[7, 8]);
    let served = common::serve_bank(bank).await;
    let (addr, bank) = (served.addr, served.bank.clone());
    let mut client = client(addr);
    let error = client.read(Function::Holding, 100, 2).await.expect_err("no answer");
    assert!(matches!(error, ModbusError::Timeout(_)), "{error}");
    bank.lock().expect("lock").behaviour = Behaviour::Normal;
    assert_eq!(client.read(Function::Holding, 100, 2).await.expect("answers now"), vec![7, 8]);
}

#[tokio::test]
async fn a_read_of_300_registers_is_split_into_requests_the_device_accepts() {
    let mut bank = RegisterBank::default();
    let words: Vec<u16> = (0..300).collect();
    bank.set_input(1000, &words);
    let served = common::serve_bank(bank).await;
    let addr = served.addr;
    // The simulated device refuses more than 125 per request, as the specification requires.
    assert_eq!(client(addr).read(Function::Input, 1000, 300).await.expect("reads"), words);
}

#[tokio::test]
async fn the_sdm630_profile_reads_float_registers_from_a_device() {
    let profile = Profile::load("sdm630").expect("shipped");
    let float = |value: f32| [(value.to_bits() >> 16) as u16, value.to_bits() as u16];
    let mut bank = RegisterBank::default();
    bank.set_input(0x0048, &float(1234.567));
    bank.set_input(0x004A, &float(89.5));
    bank.set_input(0x0034, &float(-1500.0));
    bank.set_holding(0xFC00, &[0x0001, 0xE240]); // 123456
    let served = common::serve_bank(bank).await;
    let addr = served.addr;
    let values = profile.read(&mut client(addr)).await.expect("reads");
    assert_eq!(values.import_wh, Some(1_234_567));
    assert_eq!(values.export_wh, Some(89_500));
    assert_eq!(values.power_w, Some(-1_500));
    assert_eq!(values.serial.as_deref(), Some("123456"));
}

#[tokio::test]
async fn the_agent_publishes_orders_signed_with_the_account_key() {
    use meter_gateway::agent::{self, AgentSettings};
    let broker = start_broker().await;
    let (_sub, mut orders) =
        common::subscribed("127.0.0.1", broker, "orders-sub", "gridex/v1/agent/orders/+".to_owned(), 16).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let account_key = keys::generate_file(&dir.path().join("account.key")).expect("key");
    let settings =
        AgentSettings { price_per_kwh_buy_max: 300_000, ..common::agent_settings(dir.path().join("account.key")) };
    let clock = SimClock::starting_at(1_800_000_000_000, 600.0);
    let (tx, rx) = mpsc::channel(16);
    let (stop, stop_rx) = watch::channel(false);
    let mqtt = common::local_mqtt(broker);
    let zone = protocol::ZoneId::parse("agent").expect("zone");
    let task = tokio::spawn(agent::run(settings, zone.clone(), mqtt, clock, rx, stop_rx));
    let device_key = protocol::testing::signing_key(4);
    let now = clock.now_ms();
    for minute in 0..=10i64 {
        let mut reading = protocol::testing::sample_reading(&device_key);
        reading.zone = zone.clone();
        reading.ts_ms = protocol::TimestampMs(now - (10 - minute) * 60_000);
        reading.export_wh = protocol::Wh(1_000 + minute * 50);
        tx.send(reading).await.expect("agent listens");
    }
    let payload = common::next_payload(&mut orders, "an order arrives").await;
    let command = protocol::Command::parse(&payload).expect("a command");
    command.verify().expect("verifies");
    assert_eq!(command.account().0, account_key.verifying_key().to_bytes());
    let protocol::Command::Order(order) = command else { panic!("expected an order") };
    assert_eq!(order.message.side, protocol::Side::Sell);
    assert_eq!(order.message.price_per_kwh.0, 100_000);
    let _ = stop.send(true);
    task.await.expect("joins").expect("agent ran");
}

/// Collects status payloads (`online` flags) seen on `gridex/v1/status/+`, retained ones included.
async fn status_watcher(port: u16) -> (Arc<Mutex<Vec<(bool, bool)>>>, JoinHandle<()>) {
    let mut options = MqttOptions::new(format!("status-sub-{}", gridex_test_support::free_port()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe("gridex/v1/status/+", QoS::AtLeastOnce).await.expect("subscribes");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let status: protocol::Status = protocol::decode(&publish.payload).expect("a status message");
                    sink.lock().expect("lock").push((status.online, publish.retain));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (seen, task)
}

#[tokio::test]
async fn the_gateway_keeps_a_retained_online_status_and_goes_offline_when_stopped() {
    let broker = start_broker().await;
    let home = start_home(41).await;
    let subscriber = Subscriber::start("127.0.0.1", broker, "gridex/v1/status-test/readings/+").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = settings(
        dir.path(),
        format!("tcp://{}", home.sim.addrs[0]),
        format!("mqtt://127.0.0.1:{broker}"),
        "status-test",
        home.sim.clock,
    );
    let (stop, task) = spawn_gateway(settings);
    subscriber.wait_for("a reading", |r| !r.is_empty()).await;
    // Subscribing after the gateway connected still shows it online: the status is retained.
    let (seen, watcher) = status_watcher(broker).await;
    let deadline = Instant::now() + WAIT_MAX;
    while !seen.lock().expect("lock").contains(&(true, true)) {
        assert!(Instant::now() < deadline, "no retained online status: {:?}", seen.lock().expect("lock"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
    while !seen.lock().expect("lock").iter().any(|(online, _)| !online) {
        assert!(Instant::now() < deadline, "no offline status after stopping");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
}

#[tokio::test]
async fn a_gateway_with_an_agent_trades_its_homes_forecast_with_the_account_key() {
    let broker = start_broker().await;
    let home = start_home(51).await;
    let (_sub, mut orders) =
        common::subscribed("127.0.0.1", broker, "gw-orders-sub", "gridex/v1/with-agent/orders/+".to_owned(), 16).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let account_key = keys::generate_file(&dir.path().join("account.key")).expect("key");
    let mut settings = settings(
        dir.path(),
        format!("tcp://{}", home.sim.addrs[0]),
        format!("mqtt://127.0.0.1:{broker}"),
        "with-agent",
        home.sim.clock,
    );
    settings.agent = Some(meter_gateway::agent::AgentSettings {
        price_per_kwh_buy_max: 300_000,
        slots_ahead: 2,
        qty_min_wh: 1,
        ..common::agent_settings(dir.path().join("account.key"))
    });
    let (stop, task) = spawn_gateway(settings);
    let payload = common::next_payload(&mut orders, "an order for the home's forecast").await;
    let command = protocol::Command::parse(&payload).expect("a command");
    command.verify().expect("verifies");
    assert_eq!(command.account().0, account_key.verifying_key().to_bytes(), "signed with the ACCOUNT key");
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
}

#[tokio::test]
async fn readings_travel_over_mqtts_checked_against_a_ca_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(certificates) = gridex_test_support::certs::make(dir.path()) else { return };
    let tls = rumqttd::TlsConfig::Rustls {
        capath: None,
        certpath: certificates.server_cert.display().to_string(),
        keypath: certificates.server_key.display().to_string(),
    };
    let (plain_port, tls_port) = gridex_test_support::broker::embedded_broker_with_tls(tls, None);
    let home = start_home(61).await;
    let subscriber = Subscriber::start("127.0.0.1", plain_port, "gridex/v1/tls/readings/+").await;
    let mut settings = settings(
        dir.path(),
        format!("tcp://{}", home.sim.addrs[0]),
        format!("mqtts://localhost:{tls_port}"),
        "tls",
        home.sim.clock,
    );
    settings.mqtt.ca_file = Some(certificates.ca);
    let (stop, task) = spawn_gateway(settings);
    subscriber.wait_for("readings sent over TLS", |r| r.len() >= 3).await;
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
}
