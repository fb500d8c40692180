//! SunSpec over real Modbus TCP (tokio-modbus's server is the simulator): models too short for the
//! points read are refused, and the float models (113 inverter, 213 meter) read end to end.

mod common;

use common::{client, serve, serve_bank};
use meter_gateway::clock::SimClock;
use meter_gateway::gateway::{GatewayError, Source};
use meter_gateway::simulator::{self, HomeSpec, RegisterBank};
use meter_gateway::sunspec::{self, FloatRefusal, SunSpecError};
use tokio::sync::watch;

fn common() -> (u16, Vec<u16>) {
    (1, simulator::common_model("Acme", "Meter", "1", "SN1"))
}

/// A vendor model after the meter whose registers would read as plausible meter data.
fn lure() -> (u16, Vec<u16>) {
    (64_001, vec![0x0001; 80])
}

#[tokio::test]
async fn a_truncated_meter_model_is_not_read_into_the_next_model() {
    let mut meter = simulator::meter_model(-500, 1_000, 2_000);
    meter.truncate(40); // TotWhExp (36–37) fits, TotWhImp (44–45) and TotWh_SF (52) do not
    let mut bank = RegisterBank::default();
    bank.set_sunspec(40_000, &[common(), (203, meter), lure()]);
    let served = serve_bank(bank).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("the chain itself is sound");
    let meter = device.meter().expect("203");
    assert_eq!((meter.id, meter.len), (203, 40));
    let refused = sunspec::read_meter(&mut client, meter).await;
    assert!(
        matches!(refused, Err(SunSpecError::ShortModel { id: 203, len: 40, point: "TotWhImp", needed: 46 })),
        "{refused:?}"
    );
    let message = refused.expect_err("refused").to_string();
    assert!(message.contains("203") && message.contains("40") && message.contains("TotWhImp"), "{message}");
    let sample = Source::SunSpec(None).read(&mut client).await;
    assert!(
        matches!(sample, Err(GatewayError::SunSpec(SunSpecError::ShortModel { id: 203, .. }))),
        "the gateway publishes nothing from it: {sample:?}"
    );
}

#[tokio::test]
async fn truncated_inverter_float_and_common_models_are_refused_naming_the_point() {
    let mut inverter = simulator::inverter_model(1_200, 5_000, 4);
    inverter.truncate(36); // St (36) missing
    let mut float_meter = simulator::meter_float_model(100.0, 1_000.0, 2_000.0);
    float_meter.truncate(60); // TotWhExp (58–59) fits, TotWhImp (66–67) does not
    let mut float_inverter = simulator::inverter_float_model(100.0, 1_000.0, 4);
    float_inverter.truncate(31); // WH (30–31) cut in half
    let mut bank = RegisterBank::default();
    bank.set_sunspec(40_000, &[common(), (103, inverter), (213, float_meter), (113, float_inverter), lure()]);
    let served = serve_bank(bank).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let by_id = |id: u16| device.models.iter().copied().find(|model| model.id == id).expect("model present");
    assert!(matches!(
        sunspec::read_inverter(&mut client, by_id(103)).await,
        Err(SunSpecError::ShortModel { id: 103, len: 36, point: "St", needed: 37 })
    ));
    assert!(matches!(
        sunspec::read_meter(&mut client, by_id(213)).await,
        Err(SunSpecError::ShortModel { id: 213, len: 60, point: "TotWhImp", needed: 68 })
    ));
    assert!(matches!(
        sunspec::read_inverter(&mut client, by_id(113)).await,
        Err(SunSpecError::ShortModel { id: 113, len: 31, point: "WH", needed: 32 })
    ));

    let mut short_common = simulator::common_model("Acme", "Meter", "1", "SN1");
    short_common.truncate(50); // the serial (48–63) does not fit
    let mut bank = RegisterBank::default();
    bank.set_sunspec(40_000, &[(1, short_common), (203, simulator::meter_model(0, 1, 1))]);
    let served = serve_bank(bank).await;
    let mut client = self::client(served.addr);
    assert!(matches!(
        sunspec::discover(&mut client).await,
        Err(SunSpecError::ShortModel { id: 1, len: 50, point: "SN", needed: 64 })
    ));
}

#[tokio::test]
async fn a_simulated_home_with_float_models_reads_end_to_end_over_modbus_tcp() {
    // A clock that stands still, so the registers and the home's state agree.
    let clock = SimClock::starting_at(12 * 3_600_000, 1e-9);
    let spec = HomeSpec { float_models: true, ..HomeSpec::from_seed(9) };
    let (service, home) = simulator::home_service(spec, clock);
    let served = serve(service).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let ids: Vec<(u16, u16)> = device.models.iter().map(|model| (model.id, model.len)).collect();
    assert_eq!(ids, vec![(1, 66), (113, 60), (213, 124)]);
    assert_eq!(device.serial.as_deref(), Some("SIM-00000009"));

    let state = home.lock().expect("home").state();
    let meter = sunspec::read_meter(&mut client, device.meter().expect("213")).await.expect("reads");
    // Counters are whole Wh below 2^24 here, so float32 carries them exactly.
    assert!(state.import_wh() < 1 << 24 && state.export_wh() < 1 << 24 && state.pv_wh() < 1 << 24);
    assert_eq!(meter.import_wh, Some(state.import_wh()));
    assert_eq!(meter.export_wh, Some(state.export_wh()));
    assert_eq!(meter.power_w, Some(state.net_w().round() as i64));
    assert_eq!(meter.counter_modulus_wh, None);
    let inverter = sunspec::read_inverter(&mut client, device.inverter().expect("113")).await.expect("reads");
    assert_eq!(inverter.energy_wh, Some(state.pv_wh()));
    assert_eq!(inverter.power_w, Some(state.pv_w.round() as i64));
    assert_eq!(inverter.operating_state, Some(if state.pv_w > 0.0 { 4 } else { 2 }));

    let sample = Source::SunSpec(None).read(&mut client).await.expect("the gateway's read path");
    assert_eq!((sample.import_wh, sample.export_wh), (Some(state.import_wh()), Some(state.export_wh())));
    assert_eq!(sample.pv_wh, Some(state.pv_wh()));
    assert_eq!(sample.power_w, Some(state.net_w().round() as i64));
    assert_eq!((sample.meter_modulus_wh, sample.pv_modulus_wh), (None, None));
}

fn float_meter_bank(power_w: f32, import_wh: [u16; 2], export_wh: f32) -> RegisterBank {
    let mut meter = simulator::meter_float_model(power_w, 0.0, export_wh);
    let imp = usize::from(sunspec::MTRF_TOT_WH_IMP);
    meter[imp..imp + 2].copy_from_slice(&import_wh);
    let mut bank = RegisterBank::default();
    bank.set_sunspec(40_000, &[common(), (213, meter)]);
    bank
}

#[tokio::test]
async fn float_values_that_are_not_counts_are_refused_and_not_implemented_ones_are_absent() {
    let cases = [
        (simulator::float_words(-12.0), FloatRefusal::Negative),
        (simulator::float_words(f32::INFINITY), FloatRefusal::Infinite),
        ([0x7FC0, 0x0001], FloatRefusal::NotANumber),
        (simulator::float_words(1.0e17), FloatRefusal::OutOfRange),
    ];
    for (words, expected) in cases {
        let served = serve_bank(float_meter_bank(-250.0, words, 10.0)).await;
        let mut client = client(served.addr);
        let device = sunspec::discover(&mut client).await.expect("discovers");
        let refused = sunspec::read_meter(&mut client, device.meter().expect("213")).await;
        match refused {
            Err(SunSpecError::BadFloat { id: 213, point: "TotWhImp", refusal, .. }) => assert_eq!(refusal, expected),
            other => panic!("expected a refusal of {expected:?}, got {other:?}"),
        }
    }

    let served = serve_bank(float_meter_bank(-250.4, [0x7FC0, 0x0000], 10.5)).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let meter = sunspec::read_meter(&mut client, device.meter().expect("213")).await.expect("reads");
    assert_eq!(meter.import_wh, None, "0x7FC00000 is not implemented");
    assert_eq!(meter.export_wh, Some(11), "10.5 rounds half away from zero");
    assert_eq!(meter.power_w, Some(-250), "exporting");
}

#[tokio::test]
async fn a_float_home_with_a_battery_takes_setpoints_on_its_storage_model() {
    use meter_gateway::battery::{BatteryMode, BatterySpec};
    use meter_gateway::storage;
    let clock = SimClock::starting_at(0, 1e-9);
    let spec = HomeSpec { float_models: true, battery: Some(BatterySpec::HOME_10_KWH), ..HomeSpec::from_seed(5) };
    let (service, home) = simulator::home_service(spec, clock);
    let served = serve(service).await;
    let mut client = client(served.addr);
    let device = sunspec::discover(&mut client).await.expect("discovers");
    let basic = device.storage_basic().expect("124");
    assert_eq!(basic.start, simulator::SIM_STORAGE_BASIC_START_FLOAT, "after the longer float models");
    storage::write_setpoint(&mut client, &device, 3_000, None, 600).await.expect("written");
    let mode = home.lock().expect("home").battery().expect("a battery").mode;
    assert_eq!(mode, BatteryMode::Setpoint { power_w: 3_000 });
    let meter = sunspec::read_meter(&mut client, device.meter().expect("213")).await.expect("reads");
    let state = home.lock().expect("home").state();
    assert_eq!(meter.import_wh, Some(state.import_wh()));
}

#[tokio::test]
async fn a_gateway_publishes_signed_readings_from_a_home_with_float_models() {
    use meter_gateway::{config::GatewaySettings, gateway, keys};
    use protocol::{Reading, Signed};
    let broker = gridex_test_support::embedded_broker().port;
    let (stop_sim, stop_sim_rx) = watch::channel(false);
    let clock = SimClock::sped_up(60.0);
    let spec = HomeSpec { float_models: true, ..HomeSpec::from_seed(21) };
    let sim = simulator::spawn_homes("127.0.0.1:0".parse().expect("addr"), &[spec], clock, stop_sim_rx)
        .await
        .expect("simulator starts");
    let zone = "float-models";
    let (_client, mut publishes) =
        common::subscribed("127.0.0.1", broker, "float-sub", format!("gridex/v1/{zone}/readings/+"), 64).await;
    let before = sim.state(0).expect("home");
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("device.key");
    keys::load_or_generate(&key).expect("key");
    let mut settings = GatewaySettings {
        zone: zone.to_owned(),
        key,
        interval_ms: 100,
        spool_dir: dir.path().join("spool"),
        clock: Some(clock),
        ..GatewaySettings::default()
    };
    settings.modbus.url = format!("tcp://{}", sim.addrs[0]);
    settings.mqtt = common::local_mqtt(broker);
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(gateway::run(settings, async move {
        let _ = stop_rx.changed().await;
    }));
    let mut readings: Vec<Reading> = Vec::new();
    while readings.len() < 3 {
        let publish = tokio::time::timeout(std::time::Duration::from_secs(60), publishes.recv())
            .await
            .expect("a reading in time")
            .expect("subscribed");
        let signed = Signed::<Reading>::parse(&publish.payload).expect("a signed reading");
        signed.verify().expect("verifies");
        readings.push(signed.message);
    }
    let _ = stop.send(true);
    task.await.expect("joins").expect("gateway ran cleanly");
    let after = sim.state(0).expect("home");
    for reading in &readings {
        assert_eq!(reading.meter_serial.as_str(), "SIM-00000021");
        // Below 2^24 Wh, float32 counters are exact: each reading lies between the home's states.
        assert!((before.import_wh()..=after.import_wh()).contains(&reading.import_wh.0));
        assert!((before.export_wh()..=after.export_wh()).contains(&reading.export_wh.0));
        let pv = reading.pv_wh.expect("the float inverter's lifetime energy").0;
        assert!((before.pv_wh()..=after.pv_wh()).contains(&pv));
    }
    drop(stop_sim);
}
