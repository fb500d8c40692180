//! Home batteries over real Modbus TCP (tokio-modbus's server is the simulator): SunSpec storage
//! models 124 and 802, checked setpoint writes, the gateway's battery commands, and the Huawei
//! SUN2000 + LUNA2000 register-map profile from a register dump.

mod common;

use common::{client, serve, serve_bank, Served};
use meter_gateway::battery::{BatteryMode, BatterySpec};
use meter_gateway::clock::SimClock;
use meter_gateway::config::{BatterySettings, GatewaySettings};
use meter_gateway::gateway::{self, Source};
use meter_gateway::modbus::ModbusError;
use meter_gateway::profile::Profile;
use meter_gateway::simulator::{self, Home, HomeSpec, RegisterBank};
use meter_gateway::storage::{self, Limit, StorageError};
use meter_gateway::{keys, sunspec};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_modbus::ExceptionCode;

/// Generous: the machine is busy; conditions are polled, never timed.
const WAIT: Duration = Duration::from_secs(30);

/// A clock that stands still (a billionth of real speed), so tests move the home's time themselves.
fn frozen_at_midnight() -> SimClock {
    SimClock::starting_at(0, 1e-9)
}

fn battery_home(battery: BatterySpec) -> HomeSpec {
    HomeSpec { battery: Some(battery), ..HomeSpec::from_seed(5) }
}

async fn serve_home(spec: HomeSpec) -> Served {
    serve(simulator::home_service(spec, frozen_at_midnight()).0).await
}

impl Served {
    fn home(&self) -> std::sync::MutexGuard<'_, Home> {
        self.home.as_ref().expect("a home").lock().expect("home lock")
    }
    fn writes(&self) -> Vec<(u16, Vec<u16>)> {
        self.bank.lock().expect("bank lock").writes.clone()
    }
    fn mode(&self) -> BatteryMode {
        self.home().battery().expect("a battery").mode
    }
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_home_with_a_battery_is_discovered_with_models_124_and_802_that_show_its_battery() {
    let spec = BatterySpec { charge_w_max: 5_000, discharge_w_max: 4_000, ..BatterySpec::HOME_10_KWH };
    let served = serve_home(battery_home(spec)).await;
    // Cycle the battery a little so its state of charge is not a round number.
    served.home().advance(7 * 3_600_000 + 123_000);
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    assert!(device.meter().is_some() && device.inverter().is_some(), "the same unit keeps its meter and inverter");
    let basic_model = device.storage_basic().expect("model 124");
    let battery_model = device.lithium_ion().expect("model 802");
    assert_eq!((basic_model.len, battery_model.len), (storage::S124_LEN, storage::S802_LEN));

    let status = storage::read_status(&mut client, &device).await.expect("reads").expect("a battery");
    let (soc, battery_w) = {
        let home = served.home();
        (home.battery().expect("battery").soc_permille(), home.state().battery_w)
    };
    assert!(soc > 0 && soc < 1000 && soc != 500, "the battery moved: {soc}");
    assert_eq!(status.soc_permille, Some(u16::try_from(soc).expect("per mille")), "SoC at 0.1 % resolution");
    assert_eq!(status.capacity_wh, Some(10_000));
    let basic = status.basic.expect("124");
    assert_eq!(basic.w_cha_max_w, Some(5_000));
    assert_eq!(basic.cha_state_permille, Some(soc));
    assert_eq!(basic.stor_ctl_mod, Some(0), "nobody controls it yet");
    assert_eq!(basic.in_out_w_rte_sf, Some(-2));
    let battery = status.battery.expect("802");
    assert_eq!((battery.w_cha_rte_max_w, battery.w_dis_cha_rte_max_w), (Some(5_000), Some(4_000)));
    assert_eq!(battery.wh_rtg_wh, Some(10_000));
    assert_eq!(battery.ah_rtg_ah, Some(200));
    assert_eq!(battery.soc_permille, Some(soc));
    assert_eq!(battery.w, Some(battery_w));
    let expected_status = match battery_w {
        w if w > 0 => storage::CHA_ST_CHARGING,
        w if w < 0 => storage::CHA_ST_DISCHARGING,
        _ => storage::CHA_ST_HOLDING,
    };
    assert_eq!((battery.cha_st, basic.cha_st), (Some(expected_status), Some(expected_status)));
    assert_eq!(battery.state, Some(storage::STATE_CONNECTED));

    // What the gateway publishes: SoC and capacity; SunSpec has no battery energy counters.
    let sample = Source::SunSpec(None).read(&mut client).await.expect("a sample");
    assert_eq!(sample.battery_soc_permille, Some(u16::try_from(soc).expect("per mille")));
    assert_eq!(sample.battery_capacity_wh, Some(10_000));
    assert_eq!((sample.battery_charge_wh, sample.battery_discharge_wh), (None, None));
    assert_eq!(sample.import_wh, Some(served.home().state().import_wh()));
}

#[tokio::test]
async fn a_home_without_a_battery_has_no_storage_models_and_no_battery_in_its_sample() {
    let served = serve_home(HomeSpec::from_seed(5)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    assert_eq!(device.models.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 103, 203]);
    assert_eq!(storage::read_status(&mut client, &device).await.expect("reads"), None);
    let sample = Source::SunSpec(None).read(&mut client).await.expect("a sample");
    assert_eq!((sample.battery_soc_permille, sample.battery_capacity_wh), (None, None));
    assert!(matches!(storage::release(&mut client, &device).await, Err(StorageError::NoControl)));
}

#[tokio::test]
async fn a_setpoint_written_over_modbus_drives_the_simulated_battery_and_the_meter_follows() {
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let before = served.home().state();

    let plan = storage::write_setpoint(&mut client, &device, 3_000, None, 600).await.expect("written");
    assert_eq!((plan.in_w_rte, plan.out_w_rte, plan.commanded_w), (6_000, -6_000, 3_000));
    assert_eq!(served.mode(), BatteryMode::Setpoint { power_w: 3_000 });
    let basic = storage::read_basic(&mut client, device.storage_basic().expect("124")).await.expect("reads");
    assert_eq!(basic.stor_ctl_mod, Some(storage::STOR_CTL_CHARGE | storage::STOR_CTL_DISCHARGE));
    assert_eq!((basic.in_w_rte, basic.out_w_rte, basic.rvrt_tms_s), (Some(6_000), Some(-6_000), Some(600)));

    // Ten minutes after midnight: no sun, so the meter imports the load and the 3 kW charge.
    served.home().advance(600_000);
    let after = served.home().state();
    let charged_mwh = after.battery.expect("b").charged_mwh - before.battery.expect("b").charged_mwh;
    assert_eq!(charged_mwh, 500_000, "3 kW for ten minutes");
    assert_eq!(after.import_mwh - before.import_mwh, (after.load_mwh - before.load_mwh) + charged_mwh);
    let meter = sunspec::read_meter(&mut client, device.meter().expect("meter")).await.expect("reads");
    assert_eq!(meter.import_wh, Some(after.import_wh()));
    assert_eq!(meter.power_w, Some(after.net_w().round() as i64));
    assert!(meter.power_w.expect("power") > 3_000, "the grid meter sees the charge");

    // A discharge setpoint turns the meter to export; releasing returns to self-consumption.
    storage::apply(&mut client, &device, BatteryMode::Setpoint { power_w: -4_000 }, None, 600).await.expect("written");
    assert_eq!(served.mode(), BatteryMode::Setpoint { power_w: -4_000 });
    served.home().advance(1_200_000);
    let meter = sunspec::read_meter(&mut client, device.meter().expect("meter")).await.expect("reads");
    assert!(meter.power_w.expect("power") < 0, "exports while discharging at 4 kW: {:?}", meter.power_w);
    storage::apply(&mut client, &device, BatteryMode::SelfConsumption, None, 600).await.expect("released");
    assert_eq!(served.mode(), BatteryMode::SelfConsumption);
    assert_eq!(served.home().storage_control().stor_ctl_mod, 0);
}

#[tokio::test]
async fn a_setpoint_reverts_by_itself_when_the_gateway_goes_silent() {
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    storage::write_setpoint(&mut client, &device, 2_000, None, 60).await.expect("written");
    served.home().advance(59_000);
    assert_eq!(served.mode(), BatteryMode::Setpoint { power_w: 2_000 });
    served.home().advance(61_000);
    assert_eq!(served.mode(), BatteryMode::SelfConsumption, "the inverter's own mode after InOutWRte_RvrtTms");
    let basic = storage::read_basic(&mut client, device.storage_basic().expect("124")).await.expect("reads");
    assert_eq!(basic.stor_ctl_mod, Some(0));
}

#[tokio::test]
async fn a_setpoint_beyond_the_devices_or_the_owners_limits_is_refused_and_nothing_reaches_the_device() {
    let spec = BatterySpec { charge_w_max: 5_000, discharge_w_max: 3_000, ..BatterySpec::HOME_10_KWH };
    let served = serve_home(battery_home(spec)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let model = device.storage_basic().expect("124");
    let registers_before = client.read(meter_gateway::modbus::Function::Holding, model.start, model.len).await;

    let refused = |result: Result<storage::SetpointPlan, StorageError>, want: Limit| match result {
        Err(StorageError::AboveLimit { limit, .. }) => assert_eq!(limit, want),
        other => panic!("expected a refusal by {want:?}, got {other:?}"),
    };
    refused(storage::write_setpoint(&mut client, &device, 5_001, None, 60).await, Limit::WChaMax);
    refused(storage::write_setpoint(&mut client, &device, -3_001, None, 60).await, Limit::WDisChaRteMax);
    refused(storage::write_setpoint(&mut client, &device, 2_500, Some(2_000), 60).await, Limit::Owner);
    assert!(matches!(storage::write_setpoint(&mut client, &device, 1_000, None, 0).await, Err(StorageError::NoRevert)));

    assert_eq!(served.writes(), Vec::<(u16, Vec<u16>)>::new(), "no write request reached the device");
    assert_eq!(served.mode(), BatteryMode::SelfConsumption);
    let registers_after = client.read(meter_gateway::modbus::Function::Holding, model.start, model.len).await;
    assert_eq!(registers_before.expect("reads"), registers_after.expect("reads"));
    // Within the limits it goes through, which shows the refusals were the limits'.
    storage::write_setpoint(&mut client, &device, -3_000, Some(3_000), 60).await.expect("written");
    assert_eq!(served.mode(), BatteryMode::Setpoint { power_w: -3_000 });
}

#[tokio::test]
async fn the_simulated_device_refuses_writes_outside_the_storage_controls() {
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let basic = device.storage_basic().expect("124");
    let exception = |result: Result<(), ModbusError>| match result {
        Err(ModbusError::Exception(code)) => code,
        other => panic!("expected an exception, got {other:?}"),
    };
    let meter = device.meter().expect("meter");
    assert_eq!(exception(client.write(meter.start, &[0]).await), ExceptionCode::IllegalDataAddress);
    assert_eq!(exception(client.write(basic.start, &[1]).await), ExceptionCode::IllegalDataAddress, "WChaMax");
    assert_eq!(
        exception(client.write(basic.start + storage::S124_STOR_CTL_MOD, &[4]).await),
        ExceptionCode::IllegalDataValue
    );
    assert_eq!(
        exception(client.write(basic.start + storage::S124_IN_W_RTE, &[10_001]).await),
        ExceptionCode::IllegalDataValue,
        "more than 100 %"
    );
    assert_eq!(served.mode(), BatteryMode::SelfConsumption);
    assert_eq!(served.home().storage_control(), simulator::StorageControl::default());
    assert_eq!(served.writes().len(), 4, "each request reached the device and was refused");
}

fn storage_bank(basic: Vec<u16>, battery: Vec<u16>) -> RegisterBank {
    let mut bank = RegisterBank::default();
    bank.set_sunspec(
        40000,
        &[
            (1, simulator::common_model("Acme", "Hybrid", "1", "SN1")),
            (203, simulator::meter_model(-500, 1_000, 2_000)),
            (storage::MODEL_STORAGE_BASIC, basic),
            (storage::MODEL_LITHIUM_ION, battery),
        ],
    );
    bank
}

#[tokio::test]
async fn a_storage_model_shorter_than_its_definition_is_refused_and_the_meter_still_read() {
    let spec = BatterySpec::HOME_10_KWH;
    let mut basic = simulator::storage_basic_model(&spec, 500, 0, &simulator::StorageControl::default());
    basic.truncate(20);
    let mut battery = simulator::lithium_ion_model(&spec, 500, 0);
    battery.truncate(40);
    let served = serve_bank(storage_bank(basic, battery)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let basic = device.storage_basic().expect("124");
    assert!(matches!(
        storage::read_basic(&mut client, basic).await,
        Err(StorageError::ShortModel { id: 124, len: 20, needed: 24 })
    ));
    assert!(matches!(
        storage::read_lithium_ion(&mut client, device.lithium_ion().expect("802")).await,
        Err(StorageError::ShortModel { id: 802, len: 40, needed: 62 })
    ));
    assert!(matches!(
        storage::write_setpoint(&mut client, &device, 1_000, None, 60).await,
        Err(StorageError::ShortModel { .. })
    ));
    assert!(matches!(storage::release(&mut client, &device).await, Err(StorageError::ShortModel { .. })));
    assert!(served.writes().is_empty(), "nothing written to a model that is too short");
    let sample = Source::SunSpec(None).read(&mut client).await.expect("the meter is still read");
    assert_eq!((sample.import_wh, sample.export_wh, sample.power_w), (Some(1_000), Some(2_000), Some(-500)));
    assert_eq!(sample.battery_soc_permille, None);
}

#[tokio::test]
async fn not_implemented_storage_values_read_as_absent() {
    let spec = BatterySpec::HOME_10_KWH;
    let mut basic = simulator::storage_basic_model(&spec, 420, 0, &simulator::StorageControl::default());
    basic[usize::from(storage::S124_CHA_STATE)] = sunspec::NI_UINT16;
    basic[usize::from(storage::S124_IN_OUT_W_RTE_SF)] = sunspec::NI_SUNSSF;
    let mut battery = simulator::lithium_ion_model(&spec, 420, 0);
    battery[usize::from(storage::S802_SOC)] = sunspec::NI_UINT16;
    battery[usize::from(storage::S802_WH_RTG_SF)] = sunspec::NI_SUNSSF;
    battery[usize::from(storage::S802_W)] = sunspec::NI_INT16;
    let served = serve_bank(storage_bank(basic, battery)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let status = storage::read_status(&mut client, &device).await.expect("reads").expect("a battery");
    assert_eq!(status.soc_permille, None, "neither SoC nor ChaState is implemented");
    assert_eq!(status.capacity_wh, None, "WHRtg without its scale factor is missing");
    let (basic, battery) = (status.basic.expect("124"), status.battery.expect("802"));
    assert_eq!(basic.in_out_w_rte_sf, None);
    assert_eq!((basic.va_cha_max_va, basic.stor_aval_mah, basic.in_bat_mv), (None, None, None));
    assert_eq!(battery.w, None);
    assert_eq!(battery.w_cha_rte_max_w, Some(5_000), "implemented values next to them still read");
    // Without InOutWRte_SF a setpoint cannot be expressed: refused, nothing written.
    assert!(matches!(
        storage::write_setpoint(&mut client, &device, 1_000, None, 60).await,
        Err(StorageError::Unknown("InOutWRte_SF"))
    ));
    assert!(served.writes().is_empty());
}

/// Loads a register dump: lines of `ADDRESS WORD...` (hex words), `#` comments.
fn load_dump(text: &str) -> RegisterBank {
    let mut bank = RegisterBank::default();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let addr: u16 = fields.next().expect("address").parse().expect("decimal address");
        let words: Vec<u16> =
            fields.map(|word| u16::from_str_radix(word.trim_start_matches("0x"), 16).expect("hex word")).collect();
        bank.set_holding(addr, &words);
    }
    bank
}

#[tokio::test]
async fn the_huawei_sun2000_profile_reads_grid_pv_and_battery_from_a_register_dump() {
    let dump = include_str!("fixtures/huawei-sun2000-luna2000.dump");
    let served = serve_bank(load_dump(dump)).await;
    let mut client = client(served.addr);
    let profile = Profile::load("sun2000").expect("shipped");
    assert_eq!(profile.name, "huawei-sun2000-luna2000");
    let values = profile.read(&mut client).await.expect("reads");
    assert_eq!(values.power_w, Some(2_000), "Huawei's -2000 W (from the grid) is an import");
    assert_eq!(values.import_wh, Some(5_678_900));
    assert_eq!(values.export_wh, Some(1_234_560));
    assert_eq!(values.pv_wh, Some(9_876_540));
    assert_eq!(values.battery_soc_permille, Some(653));
    assert_eq!(values.battery_capacity_wh, Some(10_000));
    assert_eq!(values.battery_power_w, Some(1_500));
    assert_eq!(values.battery_charge_wh, Some(321_000));
    assert_eq!(values.battery_discharge_wh, Some(289_450));

    let sample = Source::Profile(profile).read(&mut client).await.expect("a sample");
    assert_eq!(sample.battery_soc_permille, Some(653));
    assert_eq!((sample.battery_charge_wh, sample.battery_discharge_wh), (Some(321_000), Some(289_450)));
    assert_eq!(sample.battery_capacity_wh, Some(10_000));
    let mut source = Source::Profile(Profile::load("sun2000").expect("shipped"));
    let control = BatterySettings { control: true, ..BatterySettings::default() };
    let refused = source.apply_battery(&mut client, BatteryMode::Setpoint { power_w: 100 }, &control).await;
    assert!(matches!(refused, Err(gateway::GatewayError::Storage(StorageError::NoControl))));
    assert!(served.writes().is_empty());
}

// ---- the gateway loop: battery commands on a channel ----

fn gateway_settings(dir: &std::path::Path, addr: SocketAddr, control: bool) -> GatewaySettings {
    let key = dir.join("device.key");
    keys::load_or_generate(&key).expect("key");
    let mut settings = GatewaySettings {
        key,
        interval_ms: 200,
        spool_dir: dir.join("spool"),
        clock: Some(frozen_at_midnight()),
        battery: BatterySettings { control, power_w_max: Some(4_000), revert_s: 600 },
        ..GatewaySettings::default()
    };
    settings.modbus.url = format!("tcp://{addr}");
    // No broker: the battery does not depend on publishing (readings wait in the spool).
    settings.mqtt.url = "mqtt://127.0.0.1:9".to_owned();
    settings
}

fn spawn_gateway(
    settings: GatewaySettings,
    commands: mpsc::Receiver<BatteryMode>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<Result<(), gateway::GatewayError>>) {
    let (stop, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.changed().await;
    };
    (stop, tokio::spawn(gateway::run_with_battery(settings, shutdown, |_| {}, Some(commands))))
}

#[tokio::test]
async fn a_gateway_with_battery_control_applies_commands_from_its_channel_within_the_owners_limit() {
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (tx, rx) = mpsc::channel(1);
    let (stop, task) = spawn_gateway(gateway_settings(dir.path(), served.addr, true), rx);

    tx.send(BatteryMode::Setpoint { power_w: -2_000 }).await.expect("sent");
    wait_for("the discharge setpoint", || served.mode() == BatteryMode::Setpoint { power_w: -2_000 }).await;
    // Above the owner's 4 kW: refused by the gateway, the battery keeps its setpoint.
    let writes = served.writes().len();
    tx.send(BatteryMode::Setpoint { power_w: 4_500 }).await.expect("sent");
    tx.send(BatteryMode::SelfConsumption).await.expect("sent");
    wait_for("the release", || served.mode() == BatteryMode::SelfConsumption).await;
    assert_eq!(served.writes().len(), writes + 1, "only the release was written, not the refused setpoint");

    let _ = stop.send(true);
    task.await.expect("joins").expect("the gateway stops cleanly");
}

#[tokio::test]
async fn a_gateway_rewrites_an_active_setpoint_before_the_device_reverts_it() {
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = gateway_settings(dir.path(), served.addr, true);
    // A one-second revert on the real clock: the gateway must rewrite every half second.
    settings.battery.revert_s = 1;
    settings.clock = Some(SimClock::real());
    let (tx, rx) = mpsc::channel(1);
    let (stop, task) = spawn_gateway(settings, rx);
    tx.send(BatteryMode::Setpoint { power_w: 1_500 }).await.expect("sent");
    wait_for("the setpoint written three times", || served.writes().len() >= 6).await;
    let writes = served.writes();
    assert!(writes.chunks(2).all(|pair| pair == &writes[0..2]), "the same setpoint each time: {writes:?}");
    assert_eq!(served.mode(), BatteryMode::Setpoint { power_w: 1_500 });
    let _ = stop.send(true);
    task.await.expect("joins").expect("the gateway stops cleanly");
}

#[tokio::test]
async fn a_gateway_without_battery_control_ignores_commands_and_writes_nothing() {
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (tx, rx) = mpsc::channel(1);
    let (stop, task) = spawn_gateway(gateway_settings(dir.path(), served.addr, false), rx);

    tx.send(BatteryMode::Setpoint { power_w: 3_000 }).await.expect("sent");
    // With a channel of one, this send waits until the gateway took the first command; once the
    // channel is empty again it took the second too, so it has finished handling the first.
    tx.send(BatteryMode::Setpoint { power_w: 1_000 }).await.expect("sent");
    wait_for("both commands taken", || tx.capacity() == tx.max_capacity()).await;

    assert!(served.writes().is_empty(), "nothing was written");
    assert_eq!(served.mode(), BatteryMode::SelfConsumption);
    let _ = stop.send(true);
    task.await.expect("joins").expect("the gateway stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_publishes_its_homes_battery_in_signed_version_2_readings() {
    use protocol::{topics, DeviceId, Reading, Signed, Version, ZoneId};
    let broker = gridex_test_support::embedded_broker();
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    served.home().advance(3 * 3_600_000 + 7_000);
    let soc = served.home().battery().expect("battery").soc_permille();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = gateway_settings(dir.path(), served.addr, false);
    settings.mqtt = common::local_mqtt(broker.port);
    let device = DeviceId::from_verifying_key(&keys::load(&settings.key).expect("key").verifying_key());
    let zone = ZoneId::parse(&settings.zone).expect("zone");

    let topic = topics::readings_in(Version::V2, &zone, &device);
    let (_client, mut publishes) = common::subscribed(&broker.host, broker.port, "battery-sub", topic, 64).await;

    let (_commands, rx) = mpsc::channel(1);
    let (stop, task) = spawn_gateway(settings, rx);
    let publish = tokio::time::timeout(WAIT, publishes.recv()).await.expect("a reading in time").expect("a reading");
    let signed = Signed::<Reading>::parse_on(&publish.payload, Version::V2).expect("a v2 reading");
    signed.verify().expect("signed by the device key");
    let reading = signed.message;
    assert_eq!(reading.device, device);
    assert_eq!(reading.battery_soc_permille, Some(u16::try_from(soc).expect("per mille")));
    assert_eq!(reading.battery_capacity_wh, Some(protocol::Wh(10_000)));
    assert_eq!(
        (reading.battery_charge_wh, reading.battery_discharge_wh),
        (None, None),
        "SunSpec has no battery counters"
    );
    assert_eq!(reading.import_wh, protocol::Wh(served.home().state().import_wh()));
    let _ = stop.send(true);
    task.await.expect("joins").expect("the gateway stops cleanly");
}

/// The whole loop in one gateway process: its own trading agent, with `[agent.battery] control`,
/// plans the battery from the readings the gateway takes, and the gateway writes the agent's modes
/// to the inverter (SunSpec 124). With no exchange on the broker, the agent soon falls back to
/// self-consumption, which the gateway writes too. (Before the agent was given the gateway's battery
/// channel, nothing the agent decided ever reached the inverter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_own_trading_agent_drives_the_battery_through_the_gateway() {
    let broker = gridex_test_support::embedded_broker();
    let served = serve_home(battery_home(BatterySpec::HOME_10_KWH)).await;
    // Just above the agent's reserve, at night: whatever it plans, it is not the inverter's default.
    if let Some(battery) = served.home().battery_mut() {
        *battery = meter_gateway::battery::Battery::new(BatterySpec::HOME_10_KWH, 105);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = gateway_settings(dir.path(), served.addr, true);
    // Sixty times real time, so the agent plans (and misses the exchange) within seconds.
    settings.clock = Some(SimClock::starting_at(3_600_000, 60.0));
    settings.mqtt = common::local_mqtt(broker.port);
    let account_key = dir.path().join("account.key");
    keys::load_or_generate(&account_key).expect("account key");
    // The battery fallback after two simulated minutes: two seconds here.
    settings.agent = Some(common::battery_agent_settings(account_key));
    let (stop, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.changed().await;
    };
    // No channel from the caller: the gateway hands its own to the agent.
    let task = tokio::spawn(gateway::run_with_battery(settings, shutdown, |_| {}, None));
    wait_for("the agent's mode written to the inverter", || !served.writes().is_empty()).await;
    wait_for("self-consumption after the exchange stayed silent", || served.mode() == BatteryMode::SelfConsumption)
        .await;
    let _ = stop.send(true);
    task.await.expect("joins").expect("the gateway stops cleanly");
}
