//! The quoting agent over a real broker (embedded rumqttd): after a restart it adopts the order it
//! remembers in its state file instead of placing a second one for the same slot.

mod common;

use meter_gateway::agent::{self, AgentSettings};
use meter_gateway::clock::SimClock;
use meter_gateway::keys;
use protocol::{Command, Reading, TimestampMs, Wh, ZoneId};
use rumqttc::Publish;
use std::path::Path;
use tokio::sync::{mpsc, watch};

const SLOT_MS: i64 = 900_000;
/// The clock starts at a slot boundary: the next slot's gate (5 minutes before it) is 10 simulated
/// minutes away, 10 s of real time at 60×, far more than the test needs, so one slot is traded.
const ORIGIN_MS: i64 = 2_000 * SLOT_MS;
const SPEED: f64 = 60.0;

async fn start_broker() -> u16 {
    gridex_test_support::embedded_broker().port
}

fn settings(dir: &Path) -> AgentSettings {
    AgentSettings {
        quoting: Some(common::quoting_settings(Some(dir.join("agent-state.json")))),
        ..common::agent_settings(dir.join("account.key"))
    }
}

/// Half an hour of readings up to `now_ms`, exporting `wh_per_minute`.
async fn feed(tx: &mpsc::Sender<Reading>, zone: &ZoneId, now_ms: i64, wh_per_minute: i64) {
    let device_key = protocol::testing::signing_key(4);
    for minute in 0..=30i64 {
        let mut reading = protocol::testing::sample_reading(&device_key);
        reading.zone = zone.clone();
        reading.pv_wh = None;
        reading.ts_ms = TimestampMs(now_ms - (30 - minute) * 60_000);
        reading.import_wh = Wh(5_000);
        reading.export_wh = Wh(10_000 + minute * wh_per_minute);
        tx.send(reading).await.expect("the agent listens");
    }
}

async fn next_command(orders: &mut mpsc::Receiver<Publish>) -> Command {
    Command::parse(&common::next_payload(orders, "the agent sends a command").await).expect("a command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_quoting_agent_adopts_its_remembered_order_instead_of_placing_a_second() {
    let broker = start_broker().await;
    let (_sub, mut orders) =
        common::subscribed("127.0.0.1", broker, "orders-sub", "gridex/v1/agent/orders/+".to_owned(), 16).await;
    let dir = tempfile::tempdir().expect("temp dir");
    keys::generate_file(&dir.path().join("account.key")).expect("a key");
    let mqtt = common::local_mqtt(broker);
    let zone = ZoneId::parse("agent").expect("zone");
    let clock = SimClock::starting_at(ORIGIN_MS, SPEED);

    // First run: 20 Wh a minute of surplus, so one order for the next slot.
    let (tx, rx) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let first = tokio::spawn(agent::run(settings(dir.path()), zone.clone(), mqtt.clone(), clock, rx, stop_rx));
    feed(&tx, &zone, clock.now_ms(), 20).await;
    let Command::Order(placed) = next_command(&mut orders).await else { panic!("expected an order first") };
    let _ = stop.send(true);
    first.await.expect("joins").expect("the agent ran");

    // Second run, the surplus doubled: the agent must move the order it remembers (a cancel first),
    // not place a second order for the same slot.
    let (tx, rx) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let second = tokio::spawn(agent::run(settings(dir.path()), zone.clone(), mqtt, clock, rx, stop_rx));
    feed(&tx, &zone, clock.now_ms(), 40).await;
    match next_command(&mut orders).await {
        Command::Cancel(cancel) => assert_eq!(cancel.message.order_nonce, placed.message.nonce),
        other => panic!("after a restart the agent sent {other:?} instead of cancelling its remembered order"),
    }
    let _ = stop.send(true);
    second.await.expect("joins").expect("the agent ran");
}
