//! Home batteries are behind the grid meter (issue 15): settlement pays and rewards only what the
//! grid meter's import and export counters say. The same households settle to the same ledger lines
//! whether or not their readings carry battery counters, so a battery's discharge never counts as
//! export, as peer-to-peer delivery or for GRID. And what a battery earned, per slot, at the price its
//! household faced (`settlement::battery`). SQLite always, PostgreSQL when DATABASE_URL is set.

mod common;

use common::*;
use diesel::prelude::*;
use gridex_store::schema::readings;
use gridex_store::testing::TestDb;
use gridex_store::DbConnection;
use protocol::{MicroMoney, PricePerKwh, Wh};
use settlement::battery::{self, PriceBasis};
use settlement::READING_GAP_MS_MAX_DEFAULT;

/// Gives the household's readings at `ts_ms` battery counters, as a version 2 reading has them.
fn battery_at(conn: &mut DbConnection, household: &Household, ts_ms: i64, counters: (i64, i64, i64)) {
    let (charge_wh, discharge_wh, soc_permille) = counters;
    diesel::update(
        readings::table.filter(readings::device_id.eq(household.device.to_hex())).filter(readings::ts_ms.eq(ts_ms)),
    )
    .set((
        readings::battery_charge_wh.eq(Some(charge_wh)),
        readings::battery_discharge_wh.eq(Some(discharge_wh)),
        readings::battery_soc_permille.eq(Some(soc_permille)),
        readings::battery_capacity_wh.eq(Some(10_000_i64)),
    ))
    .execute(conn)
    .expect("one reading");
}

/// Three slots of a zone with a seller (PV and a battery), a buyer and a consumer (a battery too),
/// settled; with `batteries` the readings carry the battery counters, without they do not.
/// Returns the seller and the consumer.
fn settle(conn: &mut DbConnection, batteries: bool) -> (Household, Household) {
    // Slot 0: the seller sold 1 000 Wh but exported only 600 Wh through the grid meter, while its
    // battery discharged 2 000 Wh into the house. The consumer imported 500 Wh, its battery gave 700.
    // Slot 1: the seller sold 500 Wh and exported nothing, its battery charging 1 500 Wh from PV.
    // Slot 2: no trade; the seller exported 300 Wh while its battery charged 1 000 Wh.
    let (seller, _, consumer) = three_homes_three_slots(conn, [(0, 600), (0, 0), (0, 300)]);
    if batteries {
        let slot_ms = |index: i64| slot(index).start_ms();
        battery_at(conn, &seller, slot_ms(0), (10_000, 20_000, 500));
        battery_at(conn, &seller, slot_ms(1), (10_000, 22_000, 300));
        battery_at(conn, &seller, slot_ms(2), (11_500, 22_000, 450));
        battery_at(conn, &seller, slot_ms(3), (12_500, 22_000, 550));
        battery_at(conn, &consumer, slot_ms(0), (0, 5_000, 900));
        battery_at(conn, &consumer, slot_ms(1), (0, 5_700, 830));
    }
    close_all(conn, 3);
    assert_balanced(conn);
    (seller, consumer)
}

#[test]
fn a_household_with_battery_counters_settles_exactly_as_without_them() {
    for (without, with) in TestDb::all().into_iter().zip(TestDb::all()) {
        let plain = {
            let conn = &mut *connection(&without);
            settle(conn, false);
            ledger(conn)
        };
        let conn = &mut *connection(&with);
        let (seller, _) = settle(conn, true);
        assert_eq!(ledger(conn), plain, "the same ledger lines, statements and roots");
        // The readings really carried the battery (the comparison above is not between equals by
        // accident).
        let discharged: Vec<Option<i64>> = readings::table
            .filter(readings::device_id.eq(seller.device.to_hex()))
            .order(readings::ts_ms)
            .select(readings::battery_discharge_wh)
            .load(conn)
            .expect("readings");
        assert_eq!(discharged, vec![Some(20_000), Some(22_000), Some(22_000), Some(22_000)]);
    }
}

#[test]
fn battery_discharge_never_counts_as_export_or_for_grid_rewards() {
    on_every_backend(|conn| {
        let (seller, _) = settle(conn, true);
        let first = statement(conn, 0, &seller);
        assert_eq!(first.metered_export_wh, Wh(600), "the grid meter's export, not the 2 000 Wh discharged");
        assert_eq!(first.imbalance_wh, Wh(-400), "sold 1 000, delivered 600: 400 bought back at retail");
        // GRID for the 600 Wh delivered peer to peer: the whole slot's emission, as the only deliverer.
        assert_eq!(first.tokens_earned.0, TOKENS_PER_SLOT);
        let second = statement(conn, 1, &seller);
        assert_eq!(second.metered_export_wh, Wh(0));
        assert_eq!(second.tokens_earned.0, 0, "nothing delivered through the grid earns nothing");
        assert_eq!(tokens(conn, &seller.hex()), TOKENS_PER_SLOT);
    });
}

#[test]
fn what_a_battery_earned_is_valued_at_the_price_its_household_faced_in_each_slot() {
    on_every_backend(|conn| {
        let (seller, consumer) = settle(conn, true);
        let report =
            battery::household_battery(conn, &seller.account, 0, slot(3).start_ms(), READING_GAP_MS_MAX_DEFAULT)
                .expect("query")
                .expect("a household");
        let rows: Vec<_> = report
            .slots
            .iter()
            .map(|row| (row.charge_wh, row.discharge_wh, row.soc_permille, row.price_basis, row.earned))
            .collect();
        assert_eq!(
            rows,
            vec![
                // Its own trade's price (200 000 µ/kWh) on 2 000 Wh discharged.
                (Some(Wh(0)), Some(Wh(2_000)), Some(300), Some(PriceBasis::P2p), Some(MicroMoney(400_000))),
                // Charged 1 500 Wh in a slot it sold at 200 000.
                (Some(Wh(1_500)), Some(Wh(0)), Some(450), Some(PriceBasis::P2p), Some(MicroMoney(-300_000))),
                // No trade, net export: the 1 000 Wh charged could have been fed in at 80 000.
                (Some(Wh(1_000)), Some(Wh(0)), Some(550), Some(PriceBasis::FeedIn), Some(MicroMoney(-80_000))),
            ]
        );
        assert_eq!(report.slots[0].price_per_kwh, Some(PricePerKwh(200_000)));
        assert_eq!(report.earned, MicroMoney(20_000));
        assert_eq!((report.charge_wh, report.discharge_wh), (Wh(2_500), Wh(2_000)));
        let now = report.now.expect("a battery");
        assert_eq!((now.soc_permille, now.stored_wh), (Some(550), Some(Wh(5_500))));

        // The consumer imported in slot 0 and traded nothing: its battery's 700 Wh saved retail.
        let consumer = battery::household_battery(conn, &consumer.account, 0, slot(3).start_ms(), 900_000)
            .expect("query")
            .expect("a household");
        assert_eq!(consumer.slots[0].price_basis, Some(PriceBasis::Retail));
        assert_eq!(consumer.slots[0].earned, Some(MicroMoney(RETAIL * 700 / 1_000)));
        // Its battery stopped reporting after slot 1: slot 1's end has no counters, so no energy.
        assert_eq!(consumer.slots[1].discharge_wh, None);

        // The zone's storage: two batteries, their capacity and what they hold at their last reading.
        let now_ms = slot(3).start_ms() + 60_000;
        let storage = battery::zone_storage(conn, &zone(), now_ms, 3, 900_000).expect("query").expect("the zone");
        assert_eq!((storage.batteries, storage.capacity_wh, storage.stored_wh), (2, Wh(20_000), Wh(13_800)));
        assert_eq!(storage.soc_permille, Some(690));
        let energy: Vec<(Wh, Wh, u64)> =
            storage.slots.iter().map(|slot| (slot.charge_wh, slot.discharge_wh, slot.batteries)).collect();
        assert_eq!(energy, vec![(Wh(0), Wh(2_700), 2), (Wh(1_500), Wh(0), 1), (Wh(1_000), Wh(0), 1)]);
        // An hour after the consumer's battery last reported, it no longer counts.
        let later = slot(1).start_ms() + battery::STORAGE_RECENT_MS + 1;
        let storage = battery::zone_storage(conn, &zone(), later, 1, 900_000).expect("query").expect("the zone");
        assert_eq!((storage.batteries, storage.capacity_wh, storage.stored_wh), (1, Wh(10_000), Wh(5_500)));
    });
}
