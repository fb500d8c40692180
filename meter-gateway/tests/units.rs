//! Several Modbus units in one poll (issue 16): the common layout of an inverter on unit 1 and its
//! grid meter on unit 240 behind one Modbus TCP address, served by tokio-modbus's own server, read
//! by one gateway over one connection; each device's readings are signed with its own key and
//! arrive at an embedded broker.

mod common;

use meter_gateway::clock::SimClock;
use meter_gateway::config::{DeviceRole, DeviceSettings, GatewaySettings};
use meter_gateway::gateway::{self, GatewayHandle};
use meter_gateway::keys;
use meter_gateway::simulator::{self, DeviceService, RegisterBank};
use protocol::{DeviceId, Reading, Signed};
use std::collections::{BTreeMap, HashMap};
use std::future::{ready, Ready};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

/// Upper bound on any wait in these tests; they normally finish far sooner.
const WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_MS: u64 = 100;
const INVERTER_UNIT: u8 = 1;
const METER_UNIT: u8 = 240;

/// Devices behind one Modbus TCP address, each answering on its unit id (a unit nobody has
/// answers "gateway target device failed to respond", as a Modbus TCP gateway does).
#[derive(Clone)]
struct Units {
    devices: Arc<HashMap<u8, DeviceService>>,
}

impl Service for Units {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(match self.devices.get(&request.slave) {
            Some(device) => device.answer(&request.request),
            None => Err(ExceptionCode::GatewayTargetDevice),
        })
    }
}

fn device(bank: RegisterBank) -> DeviceService {
    DeviceService { bank: Arc::new(Mutex::new(bank)), home: None, clock: SimClock::real() }
}

/// Serves an inverter (SunSpec 1 + 103, 5 000 Wh produced) on unit 1 and a meter (SunSpec 1 + 203,
/// 1 200 Wh imported, 3 400 Wh exported) on unit 240; counts the TCP connections it accepts.
async fn serve_inverter_and_meter() -> (String, Arc<AtomicUsize>, watch::Sender<bool>) {
    let mut inverter = RegisterBank::default();
    inverter.set_sunspec(
        40000,
        &[
            (1, simulator::common_model("Acme", "Inverter", "1", "INV-1")),
            (103, simulator::inverter_model(2_000, 5_000, 4)),
        ],
    );
    let mut meter = RegisterBank::default();
    meter.set_sunspec(
        40000,
        &[
            (1, simulator::common_model("Acme", "Meter", "1", "MTR-240")),
            (203, simulator::meter_model(-800, 1_200, 3_400)),
        ],
    );
    let units =
        Units { devices: Arc::new(HashMap::from([(INVERTER_UNIT, device(inverter)), (METER_UNIT, device(meter))])) };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let (stop, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, _addr| {
            counted.fetch_add(1, Ordering::SeqCst);
            let units = units.clone();
            async move { Ok(Some((units, stream))) }
        };
        let abort = async move {
            let _ = stop_rx.changed().await;
        };
        let _ = server.serve_until(&on_connected, |_| {}, abort).await;
    });
    (format!("tcp://{addr}"), connections, stop)
}

fn settings(dir: &Path, modbus_url: String, mqtt_port: u16) -> GatewaySettings {
    let device = |unit: u8, name: &str, role: DeviceRole| {
        let key = dir.join(name);
        keys::load_or_generate(&key).expect("key");
        DeviceSettings {
            unit,
            profile: None,
            key,
            role,
            meter_serial: None,
            nameplate_w: None,
            spool_dir: None,
            mqtt: None,
        }
    };
    let mut settings = GatewaySettings {
        zone: "north".to_owned(),
        interval_ms: POLL_MS,
        publish_interval_ms: POLL_MS,
        spool_dir: dir.join("spool"),
        devices: vec![
            device(INVERTER_UNIT, "inverter.key", DeviceRole::Pv),
            device(METER_UNIT, "meter.key", DeviceRole::Grid),
        ],
        mqtt: common::local_mqtt(mqtt_port),
        ..GatewaySettings::default()
    };
    settings.modbus.url = modbus_url;
    settings.modbus.timeout_ms = 500;
    settings
}

fn device_id(dir: &Path, name: &str) -> DeviceId {
    DeviceId::from_verifying_key(&keys::load(&dir.join(name)).expect("key").verifying_key())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inverter_on_unit_1_and_a_meter_on_unit_240_are_read_in_one_poll_and_both_publish_signed_readings() {
    let broker = gridex_test_support::embedded_broker();
    let (_client, mut publishes) =
        common::subscribed(&broker.host, broker.port, "units-sub", "gridex/v1/north/readings/+".to_owned(), 256).await;
    let (modbus_url, connections, _modbus) = serve_inverter_and_meter().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = settings(dir.path(), modbus_url, broker.port);
    let (inverter, meter) = (device_id(dir.path(), "inverter.key"), device_id(dir.path(), "meter.key"));
    let (stop, mut stop_rx) = watch::channel(false);
    let handle: Arc<Mutex<Option<GatewayHandle>>> = Arc::default();
    let started = handle.clone();
    let task = tokio::spawn(gateway::run_with_handle(
        settings,
        async move {
            let _ = stop_rx.changed().await;
        },
        move |handle| *started.lock().expect("lock") = Some(handle),
    ));

    // The first verified reading of each device.
    let mut first: BTreeMap<DeviceId, Reading> = BTreeMap::new();
    tokio::time::timeout(WAIT_MAX, async {
        while first.len() < 2 {
            let publish = publishes.recv().await.expect("the subscriber runs");
            let signed = Signed::<Reading>::parse(&publish.payload).expect("a well-formed signed reading");
            signed.verify().expect("signed by the device's own key");
            assert_eq!(publish.topic, protocol::topics::readings(&signed.message.zone, &signed.message.device));
            first.entry(signed.message.device).or_insert(signed.message);
        }
    })
    .await
    .expect("both devices publish");
    let _ = stop.send(true);
    task.await.expect("joins").expect("the gateway ran cleanly");

    let from_inverter = &first[&inverter];
    assert_eq!(from_inverter.meter_serial.as_str(), "INV-1");
    assert_eq!(
        (from_inverter.import_wh.0, from_inverter.export_wh.0, from_inverter.pv_wh.map(|wh| wh.0)),
        (0, 5_000, Some(5_000)),
        "a PV inverter reports its production, nothing imported"
    );
    let from_meter = &first[&meter];
    assert_eq!(from_meter.meter_serial.as_str(), "MTR-240");
    assert_eq!(
        (from_meter.import_wh.0, from_meter.export_wh.0, from_meter.pv_wh),
        (1_200, 3_400, None),
        "the grid meter on unit 240 reports the home's import and export"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1, "both units are read over one connection");

    let handle = handle.lock().expect("lock").clone().expect("started");
    assert_eq!(handle.device, meter, "the grid meter is the gateway's primary device");
    let devices: Vec<DeviceId> = handle.devices.iter().map(|device| device.device).collect();
    assert_eq!(devices, vec![inverter, meter]);
}
