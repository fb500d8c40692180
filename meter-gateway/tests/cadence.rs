//! The gateway's publishing cadence end to end: the simulator served over Modbus TCP, the gateway
//! in-process on a sped-up clock, an embedded rumqttd broker and a subscriber that verifies and
//! acknowledges what arrives (standing in for the exchange). The schedule's arithmetic is tested
//! exactly in `cadence`'s unit tests; these check that the loop follows it through real components.

mod common;

use gridex_test_support::Proxy;
use meter_gateway::cadence::{Cadence, PUBLISH_INTERVAL_MS_MAX};
use meter_gateway::clock::SimClock;
use meter_gateway::config::GatewaySettings;
use meter_gateway::gateway::{self, GatewayHandle, GatewayState};
use meter_gateway::keys;
use meter_gateway::simulator::{self, HomeSpec, Simulation};
use protocol::market::SLOT_LEN_MS_DEFAULT;
use protocol::{DeviceId, Reading};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Upper bound on any wait in these tests; they normally finish far sooner.
const WAIT_MAX: Duration = Duration::from_secs(120);
const POLL_MS: u64 = 100;
const SLOT_MS: i64 = SLOT_LEN_MS_DEFAULT;

/// Verified readings in arrival order (resends included).
type Received = Arc<Mutex<Vec<Reading>>>;

/// Subscribes to `filter`, verifies each reading and answers it with the operator's `reading_ack`.
async fn subscribe(port: u16, filter: &str) -> (Received, JoinHandle<()>) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let task = common::acking_exchange("127.0.0.1", port, "cadence-sub", filter, move |_, reading| {
        sink.lock().expect("lock").push(reading);
    })
    .await;
    (received, task)
}

/// The distinct readings of `device` received so far, in seq order.
fn readings_of(received: &Received, device: DeviceId) -> Vec<Reading> {
    let mut readings: Vec<Reading> =
        received.lock().expect("lock").iter().filter(|reading| reading.device == device).cloned().collect();
    readings.sort_by_key(|reading| reading.seq);
    readings.dedup_by_key(|reading| reading.seq);
    readings
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first key seed (from 1) whose device's schedule satisfies `fits`.
fn key_seed(publish_interval_ms: u64, fits: impl Fn(&Cadence) -> bool) -> u8 {
    (1..=u8::MAX)
        .find(|seed| {
            let key = protocol::testing::signing_key(*seed);
            let device = DeviceId::from_verifying_key(&key.verifying_key());
            fits(&Cadence::new(&device, publish_interval_ms, SLOT_MS, 10_000, 0.0))
        })
        .expect("some test key fits")
}

struct Gateway {
    handle: GatewayHandle,
    spool_dir: std::path::PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), gateway::GatewayError>>,
}

impl Gateway {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("joins").expect("gateway ran cleanly");
    }
}

/// Starts a gateway with the test key `seed` polling `sim`'s home every `POLL_MS` and publishing
/// every `publish_interval_ms` (clock time) to `mqtt_port`.
async fn start_gateway(dir: &Path, seed: u8, sim: &Simulation, mqtt_port: u16, publish_interval_ms: u64) -> Gateway {
    let key = dir.join("device.key");
    keys::save(&key, &protocol::testing::signing_key(seed)).expect("key saved");
    let mut settings = GatewaySettings {
        zone: "cadence".to_owned(),
        key,
        interval_ms: POLL_MS,
        publish_interval_ms,
        spool_dir: dir.join("spool"),
        clock: Some(sim.clock),
        ..GatewaySettings::default()
    };
    settings.modbus.url = format!("tcp://{}", sim.addrs[0]);
    settings.modbus.timeout_ms = 500;
    settings.mqtt = common::local_mqtt(mqtt_port);
    let spool_dir = settings.spool_dir.clone();
    let (stop, mut stop_rx) = watch::channel(false);
    let (started, handle) = oneshot::channel();
    let task = tokio::spawn(gateway::run_with_handle(
        settings,
        async move {
            let _ = stop_rx.changed().await;
        },
        move |handle| {
            let _ = started.send(handle);
        },
    ));
    let handle = handle.await.expect("the gateway starts");
    Gateway { handle, spool_dir, stop, task }
}

async fn start_home(seed: u64, clock: SimClock) -> (Simulation, watch::Sender<bool>) {
    let (stop, stop_rx) = watch::channel(false);
    let sim =
        simulator::spawn_homes("127.0.0.1:0".parse().expect("addr"), &[HomeSpec::from_seed(seed)], clock, stop_rx)
            .await
            .expect("simulator starts");
    (sim, stop)
}

/// Every reading after the first was published for a reason: one of the device's interval or
/// boundary marks lies after the previous reading and at or before it.
fn assert_each_publish_follows_a_mark(readings: &[Reading], cadence: &Cadence) {
    for pair in readings.windows(2) {
        let (previous, current) = (pair[0].ts_ms.0, pair[1].ts_ms.0);
        let mark = cadence.next_interval_mark(previous).min(cadence.next_boundary_mark(previous));
        assert!(mark <= current, "seq {} at {current} was published without a mark since {previous}", pair[1].seq);
    }
}

#[tokio::test]
async fn the_gateway_publishes_at_its_interval_not_every_poll() {
    let port = gridex_test_support::embedded_broker().port;
    // 60× with polls every 100 ms: a poll every 6 simulated seconds, a publish every 30 (the default);
    // the clock starts a minute into a slot, so no boundary falls within the next 14 minutes.
    let clock = SimClock::starting_at(1_800_000 * SLOT_MS + 60_000, 60.0);
    let (sim, _sim_stop) = start_home(71, clock).await;
    let (received, _subscriber) = subscribe(port, "gridex/v1/cadence/readings/+").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = start_gateway(dir.path(), 7, &sim, port, 30_000).await;
    let (device, polls, cadence) =
        (gateway.handle.device, gateway.handle.polls.clone(), gateway.handle.cadence.clone());
    wait_until("40 accepted polls", || polls.accepted.load(Ordering::Relaxed) >= 40).await;
    gateway.stop().await;

    let spooled = polls.spooled.load(Ordering::Relaxed);
    let accepted = polls.accepted.load(Ordering::Relaxed);
    assert!(spooled >= 2, "a first reading and at least one interval publish");
    assert!(spooled < accepted, "{spooled} of {accepted} polls published: not every poll");
    // Everything spooled arrives (the spool's guarantee is unchanged), and only for a reason.
    wait_until("every spooled reading", || readings_of(&received, device).len() as u64 == spooled).await;
    let readings = readings_of(&received, device);
    assert_eq!(readings.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=spooled).collect::<Vec<_>>());
    assert_each_publish_follows_a_mark(&readings, &cadence);
    // Counters are cumulative: what was skipped between publishes is in the next reading.
    for pair in readings.windows(2) {
        assert!(pair[1].import_wh >= pair[0].import_wh && pair[1].export_wh >= pair[0].export_wh);
    }
}

#[tokio::test]
async fn a_reading_is_published_right_after_each_slot_boundary() {
    let port = gridex_test_support::embedded_broker().port;
    // 100×: a poll every 10 simulated seconds, a slot every 9 real seconds; interval marks every
    // 5 minutes (the longest interval), 100–200 s after each boundary for this key, so the first
    // reading after a boundary (plus the device's offset, under 10 s) before that mark is the
    // boundary reading.
    let interval_ms = PUBLISH_INTERVAL_MS_MAX;
    let seed = key_seed(interval_ms, |cadence| (100_000..200_000).contains(&cadence.interval_offset_ms()));
    let first_boundary = 1_800_000 * SLOT_MS;
    // Ten simulated minutes (6 real seconds) before the first boundary: time to start everything.
    let clock = SimClock::starting_at(first_boundary - 600_000, 100.0);
    let (sim, _sim_stop) = start_home(72, clock).await;
    let (received, _subscriber) = subscribe(port, "gridex/v1/cadence/readings/+").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = start_gateway(dir.path(), seed, &sim, port, interval_ms).await;
    let (device, cadence) = (gateway.handle.device, gateway.handle.cadence.clone());
    let boundaries = [first_boundary, first_boundary + SLOT_MS, first_boundary + 2 * SLOT_MS];
    let last_mark = cadence.next_boundary_mark(boundaries[2] - 1);
    wait_until("a reading after the third boundary", || {
        readings_of(&received, device).iter().any(|reading| reading.ts_ms.0 >= last_mark)
    })
    .await;
    gateway.stop().await;

    let readings = readings_of(&received, device);
    assert!(readings[0].ts_ms.0 < first_boundary, "the first reading is published at once");
    for boundary in boundaries {
        let mark = cadence.next_boundary_mark(boundary - 1);
        assert!((0..10_000).contains(&(mark - boundary)), "the device's boundary offset is under 10 s");
        let after = readings.iter().find(|reading| reading.ts_ms.0 >= mark).expect("a reading after the boundary");
        assert!(
            after.ts_ms.0 < cadence.next_interval_mark(mark),
            "the reading after boundary {boundary} was published for the boundary, not the next interval mark"
        );
        let before = readings.iter().rev().find(|reading| reading.ts_ms.0 < mark).expect("a reading before");
        assert!(before.ts_ms.0 < after.ts_ms.0);
    }
    assert_each_publish_follows_a_mark(&readings, &cadence);
}

#[tokio::test]
async fn publishes_of_different_devices_are_spread_by_their_offsets() {
    let port = gridex_test_support::embedded_broker().port;
    let interval_ms = 60_000;
    // Two keys whose interval offsets are far apart (the schedule spreads devices over the interval).
    let early = key_seed(interval_ms, |cadence| cadence.interval_offset_ms() < 20_000);
    let late = key_seed(interval_ms, |cadence| cadence.interval_offset_ms() >= 40_000);
    let clock = SimClock::starting_at(1_800_000 * SLOT_MS + 60_000, 60.0);
    let (received, _subscriber) = subscribe(port, "gridex/v1/cadence/readings/+").await;
    let mut gateways = Vec::new();
    let mut sims = Vec::new();
    let dirs = [tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir")];
    for (index, seed) in [early, late].into_iter().enumerate() {
        let (sim, stop) = start_home(80 + index as u64, clock).await;
        gateways.push(start_gateway(dirs[index].path(), seed, &sim, port, interval_ms).await);
        sims.push((sim, stop));
    }
    let devices: Vec<(DeviceId, Cadence)> =
        gateways.iter().map(|gateway| (gateway.handle.device, gateway.handle.cadence.clone())).collect();
    wait_until("five readings from each device", || {
        devices.iter().all(|(device, _)| readings_of(&received, *device).len() >= 5)
    })
    .await;
    for gateway in gateways {
        gateway.stop().await;
    }
    let offsets: Vec<i64> = devices.iter().map(|(_, cadence)| cadence.interval_offset_ms()).collect();
    assert!(offsets[1] - offsets[0] > 20_000, "{offsets:?}");
    for (device, cadence) in &devices {
        let readings = readings_of(&received, *device);
        assert_each_publish_follows_a_mark(&readings, cadence);
        // Each interval publish is the device's own: at or after its own mark, and so a different
        // time of the minute for the two devices.
        for pair in readings.windows(2) {
            if cadence.next_boundary_mark(pair[0].ts_ms.0) <= pair[1].ts_ms.0 {
                continue; // published for a slot boundary (only on a very slow run)
            }
            let mark = cadence.next_interval_mark(pair[0].ts_ms.0);
            assert!(pair[1].ts_ms.0 >= mark);
            assert_eq!(mark.rem_euclid(interval_ms as i64), cadence.interval_offset_ms());
        }
    }
}

#[tokio::test]
async fn a_broker_outage_across_a_slot_boundary_still_delivers_the_boundary_reading() {
    let broker = gridex_test_support::embedded_broker().port;
    let mut proxy = Proxy::start(broker).await;
    // Interval marks far from the boundary (as above), so the second reading is the boundary one.
    let interval_ms = PUBLISH_INTERVAL_MS_MAX;
    let seed = key_seed(interval_ms, |cadence| (100_000..200_000).contains(&cadence.interval_offset_ms()));
    let boundary = 1_800_000 * SLOT_MS;
    // 10×: 9 real seconds before the boundary for the first reading to get through, and 10 after
    // it before the next interval mark.
    let clock = SimClock::starting_at(boundary - 90_000, 10.0);
    let (sim, _sim_stop) = start_home(73, clock).await;
    let (received, _subscriber) = subscribe(broker, "gridex/v1/cadence/readings/+").await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The gateway reaches the broker only through the proxy.
    let gateway = start_gateway(dir.path(), seed, &sim, proxy.port, interval_ms).await;
    let (device, cadence) = (gateway.handle.device, gateway.handle.cadence.clone());
    wait_until("the first reading", || !readings_of(&received, device).is_empty()).await;
    let first = readings_of(&received, device)[0].clone();
    assert!(first.ts_ms.0 < boundary);

    proxy.down();
    // The boundary passes while the broker is unreachable: its reading is spooled (seq 2).
    wait_until("the boundary reading spooled", || GatewayState::load(&gateway.spool_dir).last_seq >= 2).await;
    assert!(readings_of(&received, device).iter().all(|reading| reading.seq == 1), "nothing got through");

    proxy.up().await;
    wait_until("the boundary reading after reconnecting", || {
        readings_of(&received, device).iter().any(|reading| reading.seq == 2)
    })
    .await;
    gateway.stop().await;
    let readings = readings_of(&received, device);
    let boundary_reading = &readings[1];
    let mark = cadence.next_boundary_mark(boundary - 1);
    assert!(boundary_reading.ts_ms.0 >= mark, "taken at the first poll at or after the boundary mark");
    assert!(boundary_reading.ts_ms.0 < cadence.next_interval_mark(mark), "published for the boundary");
    assert!(boundary_reading.import_wh >= first.import_wh && boundary_reading.export_wh >= first.export_wh);
}
