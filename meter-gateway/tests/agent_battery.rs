//! The agent's battery link through the real run loop over a real broker (embedded rumqttd): with
//! `[agent.battery]` `control = true` it sends the battery's mode on the caller's channel (a setpoint
//! that keeps a nearly empty battery above its reserve), and when nothing is heard from the exchange
//! for `no_contact_fallback_ms` it sends self-consumption instead. It publishes its plan (PROTOCOL.md
//! §4.7) on its plans topic, signed by its account key.

mod common;

use meter_gateway::battery::BatteryMode;
use meter_gateway::clock::SimClock;
use meter_gateway::keys;
use protocol::{topics, AccountId, BatteryPlan, Signed, ZoneId};
use std::time::Duration;

/// A bound on waiting for the agent (not a timing assertion).
const WAIT_MAX: Duration = Duration::from_secs(60);
const SLOT_MS: i64 = 900_000;
const ORIGIN_MS: i64 = 2_000 * SLOT_MS;
const SPEED: f64 = 60.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controlling_agent_sends_setpoints_and_falls_back_to_self_consumption_when_the_exchange_is_silent() {
    let broker = gridex_test_support::embedded_broker().port;
    let dir = tempfile::tempdir().expect("temp dir");
    keys::generate_file(&dir.path().join("account.key")).expect("a key");
    let zone = ZoneId::parse("battery").expect("zone");
    let settings = common::battery_agent_settings(dir.path().join("account.key"));
    let clock = SimClock::starting_at(ORIGIN_MS, SPEED);
    let mut agent = common::BatteryAgent::start(settings, zone, common::local_mqtt(broker), clock);
    // Just above the 10 % reserve while the home needs 1 kW: only what keeps it above the reserve.
    agent.observe(101, 1_000).await;
    let first = tokio::time::timeout(WAIT_MAX, agent.modes.recv()).await.expect("a mode").expect("open");
    let BatteryMode::Setpoint { power_w } = first else { panic!("expected a setpoint, got {first:?}") };
    assert!((-1_000..0).contains(&power_w), "a limited discharge: {power_w} W");
    // Nothing is ever heard from the exchange: self-consumption follows.
    let fallback = tokio::time::timeout(WAIT_MAX, agent.modes.recv()).await.expect("a mode").expect("open");
    assert_eq!(fallback, BatteryMode::SelfConsumption);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_agent_publishes_its_plan_signed_by_its_account() {
    let broker = gridex_test_support::embedded_broker().port;
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("account.key");
    keys::generate_file(&key_path).expect("a key");
    let account = AccountId::from_verifying_key(&keys::load(&key_path).expect("the key").verifying_key());
    let zone = ZoneId::parse("battery-plan").expect("zone");
    let (_watcher, mut plans) =
        common::subscribed("127.0.0.1", broker, "plans", topics::plans(&zone, &account), 16).await;
    let clock = SimClock::starting_at(ORIGIN_MS, SPEED);
    let settings = common::battery_agent_settings(key_path);
    let agent = common::BatteryAgent::start(settings, zone.clone(), common::local_mqtt(broker), clock);
    // Half full while the home needs 1 kW: the plan covers the home from the battery.
    agent.observe(500, 1_000).await;
    let published = tokio::time::timeout(WAIT_MAX, plans.recv()).await.expect("a plan").expect("open");
    let signed = Signed::<BatteryPlan>::parse(&published.payload).expect("a well-formed plan");
    signed.verify().expect("signed by the key it names");
    let plan = signed.message;
    assert_eq!(plan.account, account, "signed by the agent's account");
    assert_eq!(plan.zone, zone);
    assert_eq!(plan.slots.len(), protocol::plan::BATTERY_PLAN_SLOTS_MAX, "a day of slots");
    let first = plan.slots[0].slot.start().0;
    assert!(first > plan.ts_ms.0 && first <= plan.ts_ms.0 + SLOT_MS, "it starts at the next slot");
    assert!(plan.slots.iter().all(|slot| slot.slot.is_aligned(SLOT_MS)));
    assert!(plan.slots.iter().all(|slot| slot.soc_permille_end <= 500), "nothing to charge from: {plan:?}");
    agent.stop().await;
}
