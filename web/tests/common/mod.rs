//! Test support shared by the web integration tests.
// Each test crate includes this module and uses a part of it.
#![allow(dead_code)]

use gridex_store::{Database, DbConnection};
use protocol::ZoneId;
use settlement::registry::RegistryError;
use web::application::Application;
use web::settings::{ApiKey, Role, Secret, Settings};

/// The utility's API key in [`api_keys`].
pub const UTILITY_KEY: &str = "utility-key-0123456789";
/// The observer's API key in [`api_keys`].
pub const OBSERVER_KEY: &str = "observer-key-0123456789";

/// Two API keys: `ops`, the utility of `zone` ([`UTILITY_KEY`]), and `grafana`, an observer
/// ([`OBSERVER_KEY`]).
pub fn api_keys(zone: &str) -> Vec<ApiKey> {
    vec![
        ApiKey { name: "ops".into(), role: Role::Utility, utility: Some(zone.into()), key: Secret::new(UTILITY_KEY) },
        ApiKey { name: "grafana".into(), role: Role::Observer, utility: None, key: Secret::new(OBSERVER_KEY) },
    ]
}

/// Starts gridex as `serve` wires it, on `db` and a port-0 listener, with the default exchange
/// configuration, no broker and no settlement loop (tests settle by hand).
pub async fn start_app(settings: Settings, db: &Database) -> Application {
    Application::builder(settings)
        .database(db.clone())
        .listener(std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .mqtt(None)
        .exchange_config(exchange::config::ExchangeConfig::new(protocol::testing::operator_key()))
        .without_settlement()
        .build()
        .await
        .expect("the app starts")
}

/// Registers `zone` with the test market's reward schedule (genesis an hour before `now_ms`) and
/// tariff (retail 0.30, feed-in 0.08, grid fee 0.04 per kWh, protocol fee 0.5 %), through the
/// registry as the utility API does.
pub fn seed_zone_market(
    conn: &mut DbConnection,
    zone: &ZoneId,
    name: &str,
    slot_len_ms: i64,
    now_ms: i64,
) -> Result<(), RegistryError> {
    web::registry::create_zone(conn, zone, name, slot_len_ms, now_ms)?;
    web::registry::set_reward_schedule(
        conn,
        &web::registry::RewardSchedule {
            genesis_ms: now_ms - 3_600_000,
            epoch_len_ms: 86_400_000,
            initial_emission_per_epoch: 1_000_000_000,
            halving_epochs: 365,
            max_supply: 21_000_000_000_000,
        },
    )?;
    web::registry::set_tariff(
        conn,
        zone,
        &web::public::TariffView {
            effective_from_ms: 0,
            retail_price_per_kwh: 300_000,
            feed_in_price_per_kwh: 80_000,
            grid_fee_per_kwh: 40_000,
            protocol_fee_bps: 50,
            utc_offset_minutes: 0,
            bands: Vec::new(),
        },
    )
}
