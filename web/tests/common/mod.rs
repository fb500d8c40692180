//! Test support shared by the web integration tests.

use gridex_store::DbConnection;
use protocol::ZoneId;
use settlement::registry::RegistryError;

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
        },
    )
}
