//! A home battery's plan end to end (issue 15, PROTOCOL.md §4.7): the household's trading agent
//! (meter-gateway's, with a battery) plans a day of slots and publishes the plan signed by its
//! account key to a real broker (embedded rumqttd); the exchange verifies and stores it; the
//! household reads it at `GET /api/v1/me/plan`, and nobody else does.

mod common;

use ed25519_dalek::SigningKey;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::testing::TestDb;
use meter_gateway::agent::battery::{BatteryObservation, BatterySettings};
use meter_gateway::agent::{self, AgentSettings, BatteryLink, QuotingSettings};
use meter_gateway::clock::SimClock;
use meter_gateway::publisher::MqttSettings;
use protocol::{AccountId, BatteryPlan, Signed, ZoneId};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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
        key,
        price_per_kwh_sell_min: 100_000,
        price_per_kwh_buy_max: 250_000,
        surplus_share_percent: 100,
        buy_deficit: true,
        slot_len_ms: SLOT_LEN_MS,
        gate_closure_ms: 300_000,
        slots_ahead: 1,
        qty_min_wh: 10,
        forecast_window_ms: 3_600_000,
        mqtt: None,
        battery: Some(BatterySettings::default()),
        quoting: Some(QuotingSettings::with_tariffs(80_000, 300_000)),
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
    settlement::registry::write(&test_db.db, move |conn| {
        common::seed_zone_market(conn, &zone(), "Plan zone", SLOT_LEN_MS, SystemClock.now_ms())?;
        web::registry::register_account(conn, &alice_id, "Alice", &zone(), 0)?;
        web::registry::register_account(conn, &bob_id, "Bob", &zone(), 0)
    })
    .await
    .expect("seed the registry");
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

    let mqtt = MqttSettings {
        url: format!("mqtt://{}:{}", broker.host, broker.port),
        operator_key: Some(hex::encode(protocol::testing::operator_key().verifying_key().to_bytes())),
        ..Default::default()
    };
    let clock = SimClock::starting_at(SystemClock.now_ms(), 1.0);
    let (_readings_tx, readings) = mpsc::channel(8);
    let (observations_tx, observations) = mpsc::channel(8);
    let (modes, _modes_rx) = mpsc::channel(8);
    let (stop, stop_rx) = watch::channel(false);
    let link = BatteryLink { observations: Some(observations), modes };
    let running = tokio::spawn(agent::run_with_battery(
        battery_agent(key_path),
        zone(),
        mqtt,
        clock,
        readings,
        stop_rx,
        Some(link),
    ));
    observations_tx
        .send(BatteryObservation {
            ts_ms: clock.now_ms(),
            soc_permille: 600,
            capacity_wh: 10_000,
            charged_wh: 0,
            discharged_wh: 0,
            home_net_w: Some(500),
        })
        .await
        .expect("the agent listens");

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

    let _ = stop.send(true);
    running.await.expect("joins").expect("the agent ran");
    app.shutdown().await.expect("a clean shutdown");
}
