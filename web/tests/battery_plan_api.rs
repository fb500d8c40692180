//! A home battery's plan end to end (issue 15, PROTOCOL.md §4.7): the household's trading agent
//! (meter-gateway's, with a battery) plans a day of slots and publishes the plan signed by its
//! account key to a real broker (embedded rumqttd); the exchange verifies and stores it; the
//! household reads it at `GET /api/v1/me/plan`, and nobody else does.

#[path = "../../meter-gateway/tests/common/mod.rs"]
mod agent_common;
mod common;

use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use meter_gateway::agent::battery::BatterySettings;
use meter_gateway::agent::AgentSettings;
use meter_gateway::clock::SimClock;
use protocol::{AccountId, BatteryPlan, Signed, ZoneId};
use serde_json::Value;
use std::time::Duration;
use web::application::Application;
use web::settings::Settings;

const ZONE: &str = "plan-zone";
const SLOT_LEN_MS: i64 = 900_000;
/// A bound on waiting for the agent's plan to be stored (not a timing assertion).
const WAIT_MAX: Duration = Duration::from_secs(60);

fn zone() -> ZoneId {
    ZoneId::parse(ZONE).expect("valid zone")
}

async fn trader_get(app: &Application, key: &SigningKey, path: &str) -> (u16, Value) {
    let request = common::signed(&reqwest::Client::new(), &app.url(), key, ("GET", path, b""), SystemClock.now_ms());
    common::json_answer(request).await
}

/// The quoting agent of the account key at `key`, with a battery it does not control.
fn battery_agent(key: std::path::PathBuf) -> AgentSettings {
    AgentSettings {
        slot_len_ms: SLOT_LEN_MS,
        battery: Some(BatterySettings::default()),
        quoting: Some(agent_common::quoting_settings(None)),
        ..agent_common::agent_settings(key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_sees_the_plan_its_battery_agent_published() {
    let test_db = TestDb::any();
    let broker = gridex_test_support::embedded_broker();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("account.key");
    let alice = meter_gateway::keys::generate_file(&key_path).expect("a key");
    let bob = protocol::testing::signing_key(72);
    let (alice_id, bob_id) =
        (AccountId::from_verifying_key(&alice.verifying_key()), AccountId::from_verifying_key(&bob.verifying_key()));
    let homes = [(alice_id, "Alice"), (bob_id, "Bob")];
    common::seed_market_with_homes(&test_db.db, &zone(), "Plan zone", SLOT_LEN_MS, &homes).await;
    let mut options = rumqttc::MqttOptions::new("plan-exchange", broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let config = exchange::config::ExchangeConfig::new(protocol::testing::operator_key());
    let app = common::app_builder(Settings::default(), test_db.db.clone(), config)
        .mqtt(Some(options))
        .build()
        .await
        .expect("the app starts");
    tokio::time::timeout(WAIT_MAX, app.exchange().mqtt_subscribed()).await.expect("subscribed in time");

    let (status, none) = trader_get(&app, &alice, "/api/v1/me/plan").await;
    assert_eq!((status, none["error"].clone()), (404, Value::from("no_plan")), "before the agent sent one");

    // The embedded broker listens on loopback.
    let mqtt = agent_common::local_mqtt(broker.port);
    let clock = SimClock::starting_at(SystemClock.now_ms(), 1.0);
    let agent = agent_common::BatteryAgent::start(battery_agent(key_path), zone(), mqtt, clock);
    agent.observe(600, 500).await;

    // The plan is stored once the exchange has it: wait for the API to show it (bounded).
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let body = loop {
        let (status, body) = trader_get(&app, &alice, "/api/v1/me/plan").await;
        if status == 200 {
            break body;
        }
        assert_eq!(status, 404, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "the agent's plan was never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bytes = serde_json::to_vec(&body["plan"]).expect("json");
    let signed = Signed::<BatteryPlan>::parse(&bytes).expect("the plan as the agent signed it");
    signed.verify().expect("Alice's agent signed it");
    assert_eq!(signed.message.account, alice_id);
    assert_eq!(signed.message.slots.len(), protocol::plan::BATTERY_PLAN_SLOTS_MAX);
    assert!(body["received_ms"].as_i64().is_some_and(|ms| ms >= signed.message.ts_ms.0 - 60_000), "{body}");

    // Bob's agent sent nothing: he sees no plan, not Alice's; unsigned requests are refused.
    let (status, _) = trader_get(&app, &bob, "/api/v1/me/plan").await;
    assert_eq!(status, 404);
    let unsigned = reqwest::get(format!("{}/api/v1/me/plan", app.url())).await.expect("request");
    assert_eq!(unsigned.status().as_u16(), 401);

    agent.stop().await;
    app.shutdown().await.expect("a clean shutdown");
}
