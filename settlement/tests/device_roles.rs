//! Device roles (issue 16): a household's grid meter is the only device settlement bills and
//! credits; a PV meter behind it counts for reports only, so a home with a grid meter and a PV meter
//! settles exactly like the same home with the grid meter only (its production is not export a
//! second time, and a PV meter without data does not make the home "no data"). SQLite always,
//! PostgreSQL when DATABASE_URL is set.

mod common;

use common::*;
use diesel::prelude::*;
use gridex_store::schema::{readings, settlement_slots};
use gridex_store::testing::TestDb;
use gridex_store::DbConnection;
use protocol::testing::signing_key;
use protocol::{DeviceId, MeterSerial, Wh};
use settlement::battery;
use settlement::registry::{self, DeviceRole, NewDevice, RegistryError};
use settlement::READING_GAP_MS_MAX_DEFAULT;

/// Amounts summed per (ledger kind, asset, account kind) where the account kind is `household`,
/// `utility`, `treasury` or `issuer`: what the brief compares, on top of the exact ledger lines.
fn amounts_per_account_kind(conn: &mut DbConnection) -> Vec<(String, String, String, i64)> {
    let mut sums = std::collections::BTreeMap::new();
    for (_, _, account, asset, kind, amount) in ledger(conn).0 {
        let account_kind = registry::account(conn, &account).expect("query").expect("registered").kind;
        *sums.entry((kind, asset, account_kind.as_str().to_owned())).or_insert(0_i64) += amount;
    }
    sums.into_iter().map(|((kind, asset, account_kind), amount)| (kind, asset, account_kind, amount)).collect()
}

fn pv_device() -> DeviceId {
    DeviceId::from_verifying_key(&signing_key(150).verifying_key())
}

/// Registers the seller's PV meter (an inverter behind its grid meter).
fn register_pv(conn: &mut DbConnection, seller: &Household) {
    let serial = MeterSerial::parse("INV-1").expect("serial");
    let new = NewDevice {
        device_id: &pv_device(),
        account_id: &seller.account,
        zone_id: &zone(),
        meter_serial: &serial,
        nameplate_w: 10_000,
        role: DeviceRole::Pv,
    };
    let device = registry::register_device_with_role(conn, &new, 0).expect("a PV meter");
    assert_eq!(device.role, DeviceRole::Pv);
}

/// A production reading of the PV meter: its energy out is both `export_wh` and `pv_wh`.
fn production(conn: &mut DbConnection, ts_ms: i64, produced_wh: i64) {
    diesel::insert_into(readings::table)
        .values((
            readings::device_id.eq(pv_device().to_hex()),
            readings::seq.eq(ts_ms),
            readings::ts_ms.eq(ts_ms),
            readings::import_wh.eq(0_i64),
            readings::export_wh.eq(produced_wh),
            readings::pv_wh.eq(Some(produced_wh)),
            readings::power_w.eq(0_i64),
            readings::received_ms.eq(ts_ms + 1_000),
            readings::payload.eq("{}"),
        ))
        .execute(conn)
        .expect("reading");
}

/// Three slots of a zone with a seller, a buyer and a consumer, settled; with `pv_meter` the seller
/// also has a PV meter that produced far more than its grid meter exported (the house used the
/// rest), and that stopped reporting after slot 0. Returns the seller.
fn settle(conn: &mut DbConnection, pv_meter: bool) -> Household {
    // Slot 0: the seller sold 1 000 Wh and exported 600 Wh through its grid meter (2 500 produced).
    // Slot 1: the seller sold 500 Wh and exported 700 Wh; its PV meter has no data from here on.
    // Slot 2: no trade; the seller imported 200 Wh.
    let (seller, _, _) = three_homes_three_slots(conn, [(0, 600), (0, 700), (200, 0)]);
    if pv_meter {
        register_pv(conn, &seller);
        production(conn, slot(0).start_ms(), 50_000);
        production(conn, slot(1).start_ms(), 52_500);
    }
    close_all(conn, 3);
    assert_balanced(conn);
    seller
}

#[test]
fn a_home_with_a_grid_meter_and_a_pv_meter_settles_exactly_like_a_home_with_the_grid_meter_only() {
    for (grid_only, with_pv) in TestDb::all().into_iter().zip(TestDb::all()) {
        let (plain, plain_sums) = {
            let conn = &mut *connection(&grid_only);
            settle(conn, false);
            (ledger(conn), amounts_per_account_kind(conn))
        };
        let conn = &mut *connection(&with_pv);
        let seller = settle(conn, true);
        assert_eq!(amounts_per_account_kind(conn), plain_sums, "the same amounts per account kind");
        assert_eq!(ledger(conn), plain, "the same ledger lines, statements and roots");
        // The comparison is not between equals by accident: the PV meter is registered with its
        // production, and the seller's statements show the grid meter's export only.
        let pv_readings: i64 = readings::table
            .filter(readings::device_id.eq(pv_device().to_hex()))
            .count()
            .get_result(conn)
            .expect("count");
        assert_eq!(pv_readings, 2);
        let statement = statement(conn, 0, &seller);
        assert_eq!(statement.metered_export_wh, Wh(600), "the grid meter's export, not the 2 500 Wh produced");
        let no_data: Vec<i64> = settlement_slots::table
            .order(settlement_slots::slot_start_ms)
            .select(settlement_slots::no_data_accounts)
            .load(conn)
            .expect("slots");
        assert_eq!(no_data, vec![0, 0, 0], "a silent PV meter does not make its home `no data`");
    }
}

#[test]
fn a_pv_meter_does_not_change_the_price_a_household_battery_is_valued_at() {
    // Slot 2 of `settle`: the seller imported 200 Wh and traded nothing, so it faced retail; its PV
    // meter's counters (behind the grid meter) must not turn that into a net export at feed-in.
    on_every_backend(|conn| {
        let seller = settle(conn, true);
        production(conn, slot(2).start_ms(), 60_000);
        production(conn, slot(3).start_ms(), 70_000);
        diesel::update(readings::table.filter(readings::device_id.eq(seller.device.to_hex())))
            .set((readings::battery_soc_permille.eq(Some(500_i64)), readings::battery_capacity_wh.eq(Some(10_000_i64))))
            .execute(conn)
            .expect("battery state");
        let report =
            battery::household_battery(conn, &seller.account, 0, slot(3).start_ms(), READING_GAP_MS_MAX_DEFAULT)
                .expect("query")
                .expect("a household");
        let last = report.slots.last().expect("slot 2");
        assert_eq!(last.slot, slot(2));
        assert_eq!(last.price_basis, Some(battery::PriceBasis::Retail));
    });
}

#[test]
fn an_account_has_at_most_one_grid_meter_and_devices_registered_without_a_role_are_grid_meters() {
    on_every_backend(|conn| {
        let (seller, _) = seller_and_buyer(conn);
        assert_eq!(registry::device_role(conn, &seller.device).expect("query"), Some(DeviceRole::Grid));
        let second = DeviceId::from_verifying_key(&signing_key(151).verifying_key());
        let serial = MeterSerial::parse("SN-second").expect("serial");
        let refused = registry::register_device(conn, &second, &seller.account, &zone(), &serial, 5_000, 0);
        assert!(
            matches!(refused, Err(RegistryError::Invalid { field: "role", .. })),
            "a second grid meter would bill the home twice: {refused:?}"
        );
        register_pv(conn, &seller);
        let listing = registry::zone_devices(conn, &zone()).expect("devices");
        let roles: Vec<(&str, &str)> =
            listing.iter().map(|(device, _, _, _, role)| (device.as_str(), role.as_str())).collect();
        assert!(roles.contains(&(pv_device().to_hex().as_str(), "pv")), "{roles:?}");
        assert!(roles.contains(&(seller.device.to_hex().as_str(), "grid")), "{roles:?}");
        assert_eq!(DeviceRole::parse("submeter"), Some(DeviceRole::Submeter));
        assert_eq!(DeviceRole::parse("meter"), None);
    });
}
