//! Time-of-use tariffs (issue 16) on every backend (SQLite always; PostgreSQL when DATABASE_URL is
//! set): a band settles the slots it covers at its own retail, feed-in and grid-fee prices, while the
//! other slots settle at the flat prices; the registry refuses bands that could not be applied.

mod common;

use common::*;
use gridex_store::DbConnection;
use protocol::tariff::{DaysOfWeek, SlotPrices, TouBand};
use protocol::{MicroMoney, PricePerKwh, Statement};
use settlement::queries;
use settlement::registry::{self, RegistryError, TimeOfUse};

const BAND_RETAIL: i64 = 500_000;
const BAND_FEED_IN: i64 = 120_000;
const BAND_GRID_FEE: i64 = 40_000;

fn prices(retail: i64, feed_in: i64, grid_fee: i64) -> SlotPrices {
    SlotPrices {
        retail_price_per_kwh: PricePerKwh(retail),
        feed_in_price_per_kwh: PricePerKwh(feed_in),
        grid_fee_per_kwh: PricePerKwh(grid_fee),
    }
}

/// Weekdays 00:15–00:30 UTC: slot 1 (the epoch was a Thursday), not slots 0 and 2.
fn quarter_past_midnight() -> TouBand {
    TouBand {
        days: DaysOfWeek::WEEKDAYS,
        start_minute: 15,
        end_minute: 30,
        prices: prices(BAND_RETAIL, BAND_FEED_IN, BAND_GRID_FEE),
    }
}

fn set_bands(conn: &mut DbConnection, bands: Vec<TouBand>) -> Result<(), RegistryError> {
    registry::set_time_of_use_tariff(conn, &zone(), &tariff(), &TimeOfUse { utc_offset_minutes: 0, bands })
}

fn statement(conn: &mut DbConnection, index: i64, household: &Household) -> Statement {
    queries::statement_with_proof(conn, &zone(), slot(index), &household.account)
        .expect("query")
        .expect("a statement")
        .statement
}

#[test]
fn a_time_of_use_band_settles_the_slots_it_covers_at_its_prices_and_no_others() {
    on_every_backend(|conn| {
        let (seller, buyer) = seller_and_buyer(conn);
        set_bands(conn, vec![quarter_past_midnight()]).expect("the registry takes the band");
        // The same slot three times: the seller exports 1 000 Wh and sells 600 Wh (400 Wh surplus to
        // the utility), the buyer imports 1 500 Wh and bought 600 Wh (900 Wh from the utility).
        for index in 0..3 {
            sale(conn, index, (&seller, &buyer), (1_000, 1_500), (200_000, 600));
        }
        let mut utility_before = 0;
        for index in 0..3 {
            close(conn, index).expect("closes");
            let (retail, feed_in, grid_fee) =
                if index == 1 { (BAND_RETAIL, BAND_FEED_IN, BAND_GRID_FEE) } else { (RETAIL, FEED_IN, GRID_FEE) };
            let sold = statement(conn, index, &seller);
            assert_eq!(sold.sales, MicroMoney(120_000), "slot {index}");
            assert_eq!(sold.utility_net, MicroMoney(400 * feed_in / 1_000), "slot {index}: surplus at feed-in");
            let bought = statement(conn, index, &buyer);
            assert_eq!(bought.grid_fees, MicroMoney(-600 * grid_fee / 1_000), "slot {index}: grid fee");
            assert_eq!(bought.protocol_fees, MicroMoney(-600), "slot {index}: 50 bps of 120 000");
            assert_eq!(bought.utility_net, MicroMoney(-900 * retail / 1_000), "slot {index}: shortfall at retail");
            let utility = money(conn, "utility:north");
            assert_eq!(utility - utility_before, 900 * retail / 1_000 - 400 * feed_in / 1_000 + 600 * grid_fee / 1_000);
            utility_before = utility;
        }
        // Exact amounts of the banded slot: 450 000 retail, 48 000 feed-in, 24 000 grid fee.
        assert_eq!(statement(conn, 1, &buyer).utility_net, MicroMoney(-450_000));
        assert_eq!(statement(conn, 1, &seller).utility_net, MicroMoney(48_000));
        assert_eq!(statement(conn, 1, &buyer).grid_fees, MicroMoney(-24_000));
        assert_eq!(statement(conn, 0, &buyer).utility_net, MicroMoney(-270_000));
        assert_balanced(conn);
    });
}

#[test]
fn a_weekend_band_does_not_settle_a_weekday_slot() {
    on_every_backend(|conn| {
        let (seller, buyer) = seller_and_buyer(conn);
        set_bands(conn, vec![TouBand { days: DaysOfWeek::WEEKEND, ..quarter_past_midnight() }]).expect("taken");
        meter(conn, &seller, 0, 0, 0);
        meter(conn, &buyer, 0, 0, 0);
        meter(conn, &seller, 1, 0, 0);
        meter(conn, &buyer, 1, 1_000, 0);
        close(conn, 0).expect("closes");
        close(conn, 1).expect("closes");
        assert_eq!(statement(conn, 1, &buyer).utility_net, MicroMoney(-RETAIL), "1 kWh at the flat retail");
    });
}

#[test]
fn the_registry_refuses_bands_it_could_not_apply() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let band = quarter_past_midnight();
        let overlapping = TouBand { days: DaysOfWeek(1 << 3), start_minute: 29, end_minute: 45, ..band };
        match set_bands(conn, vec![band, overlapping]) {
            Err(RegistryError::BandsOverlap { first: 0, second: 1 }) => {}
            other => panic!("overlap refused, got {other:?}"),
        }
        // Touching bands (end exclusive) and bands on other days are no overlap.
        let touching = TouBand { start_minute: 30, end_minute: 45, ..band };
        let weekend = TouBand { days: DaysOfWeek::WEEKEND, ..band };
        set_bands(conn, vec![band, touching, weekend]).expect("no overlap");

        let refused = [
            TouBand { days: DaysOfWeek(0), ..band },
            TouBand { days: DaysOfWeek(0x80), ..band },
            TouBand { end_minute: 1_441, ..band },
            TouBand { start_minute: 30, end_minute: 30, ..band },
            TouBand { prices: prices(100_000, 100_001, 0), ..band },
            TouBand { prices: prices(registry::PRICE_PER_KWH_MAX + 1, 0, 0), ..band },
        ];
        for bad in refused {
            match set_bands(conn, vec![band, bad]) {
                Err(RegistryError::InvalidBand { index: 1, .. }) => {}
                other => panic!("{bad:?} refused as band 1, got {other:?}"),
            }
        }
        let flat_feed_in_above_retail =
            settlement::rules::Tariff { feed_in_price_per_kwh: PricePerKwh(RETAIL + 1), ..tariff() };
        assert!(matches!(
            registry::set_tariff(conn, &zone(), &flat_feed_in_above_retail),
            Err(RegistryError::Invalid { field: "feed_in_price_per_kwh", .. })
        ));
        let far_offset = TimeOfUse { utc_offset_minutes: 15 * 60, bands: vec![] };
        assert!(matches!(
            registry::set_time_of_use_tariff(conn, &zone(), &tariff(), &far_offset),
            Err(RegistryError::Invalid { field: "utc_offset_minutes", .. })
        ));

        // What was refused left the last accepted version: three bands, stored in order.
        let stored = gridex_store::tariff::version_at(conn, &zone(), 0).expect("query").expect("a version");
        assert_eq!(stored.bands, vec![band, touching, weekend]);
        // Setting the version again without bands makes it flat.
        registry::set_tariff(conn, &zone(), &tariff()).expect("flat");
        let stored = gridex_store::tariff::version_at(conn, &zone(), 0).expect("query").expect("a version");
        assert!(stored.bands.is_empty());
    });
}
