//! Time-of-use tariffs (issue 16) set the price band of a slot's book: an order priced outside the
//! band of the slot's time-of-use band is refused for a slot the band covers and accepted for a slot
//! it does not, on SQLite and (when `DATABASE_URL` is set) PostgreSQL. The band is read through
//! `gridex_store::tariff::tariff_for_slot`, the function settlement closes the slot by.

mod support;

use exchange::config::ExchangeConfig;
use gridex_store::clock::ManualClock;
use gridex_store::testing::TestDb;
use protocol::tariff::{local_day_and_minute, DaysOfWeek, SlotPrices, TouBand};
use protocol::{PricePerKwh, Reason, Side, SlotId, ZoneId};
use settlement::registry::{self, TimeOfUse};
use settlement::rules::Tariff;
use std::sync::Arc;
use support::*;

const NOW_MS: i64 = 1_790_000_000_000;
const SLOT_LEN_MS: i64 = 900_000;
/// The flat band of `seed_zone`: feed-in 50 000 … retail 300 000 µ/kWh.
const FLAT_RETAIL: i64 = 300_000;
/// The time-of-use band: feed-in 100 000 … retail 150 000 µ/kWh.
const BAND_FEED_IN: i64 = 100_000;
const BAND_RETAIL: i64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_outside_a_time_of_use_band_is_refused_only_in_the_slots_the_band_covers() {
    for test_db in TestDb::all() {
        eprintln!("backend {:?}", test_db.db.backend());
        let zone = ZoneId::parse(&format!("tou{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, SLOT_LEN_MS);
        let (trader, _) = seed_household(&test_db.db, &zone, 31, 10_000);
        let first_open_ms = NOW_MS - NOW_MS % SLOT_LEN_MS + 4 * SLOT_LEN_MS;
        let (banded, flat) = (
            SlotId::new(first_open_ms).expect("a slot"),
            SlotId::new(first_open_ms + 8 * SLOT_LEN_MS).expect("a slot"),
        );
        // A band of exactly the banded slot's local day and quarter hour (UTC+1).
        let offset = 60;
        let (day, minute) = local_day_and_minute(banded.start_ms(), offset);
        let band = TouBand {
            days: DaysOfWeek(1 << day),
            start_minute: minute,
            end_minute: minute + 15,
            prices: SlotPrices {
                retail_price_per_kwh: PricePerKwh(BAND_RETAIL),
                feed_in_price_per_kwh: PricePerKwh(BAND_FEED_IN),
                grid_fee_per_kwh: PricePerKwh(40_000),
            },
        };
        let tariff = Tariff {
            effective_from_ms: 0,
            retail_price_per_kwh: PricePerKwh(FLAT_RETAIL),
            feed_in_price_per_kwh: PricePerKwh(50_000),
            grid_fee_per_kwh: PricePerKwh(20_000),
            protocol_fee_bps: 50,
        };
        let time_of_use = TimeOfUse { utc_offset_minutes: offset, bands: vec![band] };
        test_db
            .db
            .write_blocking(|conn| Ok(registry::set_time_of_use_tariff(conn, &zone, &tariff, &time_of_use)))
            .expect("the database")
            .expect("the registry takes the band");

        let config =
            ExchangeConfig { zones: vec![zone.clone()], ..ExchangeConfig::new(protocol::testing::operator_key()) };
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let exchange = exchange::service::start(config, test_db.db.clone(), clock, None).await.expect("starts");
        let sell =
            |slot: SlotId, price: i64, nonce: u64| order(&trader, &zone, slot, Side::Sell, price, 100, nonce, NOW_MS);

        // 200 000 is inside the flat band and above the time-of-use band's retail price.
        let refused = exchange.submit_command(sell(banded, 200_000, 1)).await.expect_err("above the slot's band");
        assert_eq!(refused.reason, Reason::PriceOutOfBand, "{refused:?}");
        let refused = exchange.submit_command(sell(banded, 60_000, 2)).await.expect_err("below the slot's band");
        assert_eq!(refused.reason, Reason::PriceOutOfBand, "{refused:?}");
        exchange.submit_command(sell(banded, 120_000, 3)).await.expect("inside the slot's band");
        exchange.submit_command(sell(flat, 200_000, 4)).await.expect("inside the flat band of an uncovered slot");
        let refused = exchange.submit_command(sell(flat, 310_000, 5)).await.expect_err("above the flat retail");
        assert_eq!(refused.reason, Reason::PriceOutOfBand, "{refused:?}");
    }
}
