//! The registry's validation, the queries behind the web API, and the settlement loop.

mod common;

use common::*;
use gridex_store::clock::{Clock, ManualClock};
use gridex_store::testing::TestDb;
use protocol::{AccountId, DeviceId, MeterSerial, PricePerKwh, Wh, ZoneId};
use settlement::registry::{self, AccountKind, RegistryError};
use settlement::rules::Tariff;
use settlement::{queries, service};
use std::sync::Arc;

#[test]
fn the_registry_refuses_invalid_input_with_typed_errors() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let other = ZoneId::parse("south").expect("valid");
        assert!(matches!(
            registry::create_zone(conn, &other, "South", 7_000, None, 0),
            Err(RegistryError::Invalid { field: "slot_len_ms", .. })
        ));
        assert!(matches!(
            registry::create_zone(conn, &zone(), "Again", SLOT_LEN_MS, None, 0),
            Err(RegistryError::ZoneExists(_))
        ));
        let bad_fee = Tariff { protocol_fee_bps: 10_001, ..tariff() };
        assert!(matches!(
            registry::set_tariff(conn, &zone(), &bad_fee),
            Err(RegistryError::Invalid { field: "protocol_fee_bps", .. })
        ));
        let negative = Tariff { retail_price_per_kwh: PricePerKwh(-1), ..tariff() };
        assert!(registry::set_tariff(conn, &zone(), &negative).is_err());
        assert!(matches!(registry::set_tariff(conn, &other, &tariff()), Err(RegistryError::UnknownZone(_))));
        assert!(matches!(
            registry::register_account(conn, "not-a-key", AccountKind::Household, "X", None, 0),
            Err(RegistryError::Invalid { field: "account_id", .. })
        ));
        let house = household(conn, 1);
        assert!(matches!(
            registry::register_account(conn, &house.hex(), AccountKind::Household, "X", None, 0),
            Err(RegistryError::AccountExists(_))
        ));
        let serial = MeterSerial::parse("SN-9").expect("valid");
        let stranger = AccountId::from_verifying_key(&protocol::testing::signing_key(77).verifying_key());
        let device = DeviceId::from_verifying_key(&protocol::testing::signing_key(78).verifying_key());
        assert!(matches!(
            registry::register_device(conn, &device, &stranger, &zone(), &serial, 5_000, 0),
            Err(RegistryError::UnknownAccount(_))
        ));
        assert!(matches!(
            registry::register_device(conn, &device, &house.account, &zone(), &serial, 0, 0),
            Err(RegistryError::Invalid { field: "nameplate_w", .. })
        ));
        assert!(matches!(
            registry::register_device(conn, &house.device, &house.account, &zone(), &serial, 5_000, 0),
            Err(RegistryError::DeviceExists(_))
        ));
        assert!(registry::account(conn, "issuer").expect("q").is_some());
        assert!(registry::account(conn, "utility:north").expect("q").is_some());
    });
}

#[test]
fn the_tariff_in_force_is_the_latest_effective_one_and_settled_slots_cannot_be_repriced() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let later =
            Tariff { effective_from_ms: 3 * SLOT_LEN_MS, retail_price_per_kwh: PricePerKwh(350_000), ..tariff() };
        registry::set_tariff(conn, &zone(), &later).expect("tariff");
        assert_eq!(registry::tariff_at(conn, &zone(), 3 * SLOT_LEN_MS - 1).expect("q"), Some(tariff()));
        assert_eq!(registry::tariff_at(conn, &zone(), 3 * SLOT_LEN_MS).expect("q"), Some(later));
        assert_eq!(registry::tariff_at(conn, &zone(), -1).expect("q"), None);
        assert_eq!(registry::tariffs(conn, &zone()).expect("q").len(), 2);
        close(conn, 0).expect("closes");
        let repricing = Tariff { effective_from_ms: 0, ..tariff() };
        assert!(matches!(registry::set_tariff(conn, &zone(), &repricing), Err(RegistryError::TariffInThePast { .. })));
    });
}

#[test]
fn stored_leaves_are_the_protocol_leaf_hashes_of_the_stored_statements() {
    let test_db = TestDb::sqlite();
    let conn = &mut *connection(&test_db);
    setup(conn, default_schedule());
    let households: Vec<Household> = (1..=5).map(|seed| household(conn, seed)).collect();
    for (index, house) in households.iter().enumerate() {
        meter(conn, house, 0, 100 * index as i64, 50);
    }
    close(conn, 0).expect("closes");
    let report = queries::slot_report(conn, &zone(), slot(0)).expect("q").expect("settled");
    let leaves: Vec<_> =
        report.statements.iter().map(|statement| protocol::merkle::leaf_hash(statement).expect("hash")).collect();
    assert_eq!(hex::encode(protocol::merkle::root(&leaves)), report.root);
    let mut accounts: Vec<_> = report.statements.iter().map(|statement| statement.account).collect();
    let sorted = {
        let mut sorted = accounts.clone();
        sorted.sort();
        sorted
    };
    assert_eq!(accounts, sorted, "leaves are ordered by account id");
    accounts.dedup();
    assert_eq!(accounts.len(), 5);
}

#[test]
fn price_history_zone_stats_and_token_supply_summarise_settled_slots() {
    on_every_backend(|conn| {
        let (seller, buyer) = one_sale(conn, 1_000, 1_500, (200_000, 400));
        trade(conn, 2, 0, 250_000, 300, &buyer, &seller);
        trade(conn, 3, 0, 180_000, 300, &buyer, &seller);
        trade(conn, 4, 1, 210_000, 100, &buyer, &seller);
        close(conn, 0).expect("closes");

        let bars = queries::price_history(conn, &zone(), 0, 2 * SLOT_LEN_MS).expect("q");
        assert_eq!(bars.len(), 2);
        assert_eq!(
            (bars[0].open, bars[0].high, bars[0].low, bars[0].close),
            (PricePerKwh(200_000), PricePerKwh(250_000), PricePerKwh(180_000), PricePerKwh(180_000))
        );
        assert_eq!((bars[0].volume_wh, bars[0].trades), (Wh(1_000), 3));
        assert_eq!(bars[1].volume_wh, Wh(100));

        let stats = queries::zone_stats(conn, &zone(), 0, i64::MAX).expect("q");
        assert_eq!(stats.p2p_wh, Wh(1_000));
        assert_eq!(stats.utility_supplied_wh, Wh(500));
        assert_eq!(stats.self_sufficiency_bps, 6_666);
        assert_eq!(stats.settled_slots, 1);
        assert_eq!(stats.last_settled_slot, Some(slot(0)));
        // All-retail: buyer 1500 Wh × 0.30 = 450000, seller −1000 Wh × 0.08 = −80000.
        // Paid: buyer 200000×0.4+250000×0.3+180000×0.3 = 209000 + grid 20000 + fee 1045 + 500 Wh retail
        // 150000 = 380045; seller received 209000. Savings = 450000 − 380045 + (−80000 + 209000).
        assert_eq!(stats.household_savings.0, 450_000 - 380_045 - 80_000 + 209_000);

        let supply = queries::token_supply(conn, due(0)).expect("q");
        assert_eq!(supply.supply.0, TOKENS_PER_SLOT);
        assert_eq!(supply.max_supply.0, default_schedule().max_supply);
        assert_eq!(supply.next_halving_epoch, 365);

        let statements = queries::statements(conn, &buyer.account, 10).expect("q");
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].bought_wh, Wh(1_000));
        assert!(queries::statement_with_proof(conn, &zone(), slot(1), &buyer.account).expect("q").is_none());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_closes_due_slots_in_order_and_announces_them() {
    let test_db = TestDb::any();
    {
        let conn = &mut *connection(&test_db);
        let (seller, buyer) = seller_and_buyer(conn);
        for index in 0..3 {
            deliver(conn, index, &seller, &buyer);
        }
    }
    let clock = Arc::new(ManualClock::new(due(1) + service::COMMIT_MARGIN_MS));
    let sender = service::settled_channel();
    let mut settled = sender.subscribe();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = settlement::SettlementConfig { poll_interval_ms: 10, ..config() };
    let task =
        tokio::spawn(settlement::run(test_db.db.clone(), clock.clone() as Arc<dyn Clock>, config, sender, async {
            let _ = stopped.await;
        }));
    assert_eq!(settled.recv().await.expect("slot 0").slot, slot(0));
    assert_eq!(settled.recv().await.expect("slot 1").slot, slot(1));
    clock.set(due(2) + service::COMMIT_MARGIN_MS);
    let third = settled.recv().await.expect("slot 2");
    assert_eq!(third.slot, slot(2));
    assert_eq!(third.totals.traded_wh, protocol::Wh(1_000));
    let _ = stop.send(());
    task.await.expect("the loop stops");
    let conn = &mut *connection(&test_db);
    assert_eq!(count(conn, "settlement_slots"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_due_waits_for_the_grace_period_and_commit_margin_then_closes_in_order() {
    let test_db = TestDb::sqlite();
    {
        let conn = &mut *connection(&test_db);
        setup(conn, default_schedule());
    }
    let margin = service::COMMIT_MARGIN_MS;
    let closed = service::close_due(&test_db.db, &config(), due(0) + margin - 1).await.expect("polls");
    assert!(closed.is_empty());
    let closed = service::close_due(&test_db.db, &config(), due(2) + margin).await.expect("polls");
    let slots: Vec<_> = closed.iter().map(|settled| settled.slot).collect();
    assert_eq!(slots, vec![slot(0), slot(1), slot(2)]);
    let conn = &mut *connection(&test_db);
    let listed: Vec<_> = queries::settled_slots(conn, &zone(), 10).expect("q").iter().map(|s| s.slot).collect();
    assert_eq!(listed, vec![slot(2), slot(1), slot(0)]);
}

#[test]
fn ledger_entries_cannot_be_changed_or_deleted() {
    on_every_backend(|conn| {
        let (seller, _buyer) = one_sale(conn, 1_000, 1_000, (200_000, 1_000));
        close(conn, 0).expect("closes");
        use diesel::connection::SimpleConnection;
        assert!(conn.batch_execute("UPDATE ledger_entries SET amount = amount + 1").is_err());
        assert!(conn.batch_execute("DELETE FROM ledger_entries").is_err());
        assert!(conn.batch_execute("DELETE FROM ledger_transactions").is_err());
        assert_eq!(queries::balances(conn, &seller.hex()).expect("q").money.0, 200_000);
    });
}

/// An instance that settles a named set of zones leaves the other zones' slots to their own
/// instance; an instance with no list settles every zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_due_settles_only_the_zones_it_is_given() {
    let test_db = TestDb::sqlite();
    let other = ZoneId::parse("east").expect("valid");
    {
        let conn = &mut *connection(&test_db);
        setup(conn, default_schedule());
        registry::create_zone(conn, &other, "East", SLOT_LEN_MS, None, 0).expect("a second zone");
        registry::set_tariff(conn, &other, &tariff()).expect("its tariff");
    }
    let now_ms = due(0) + service::COMMIT_MARGIN_MS;
    let only_other = settlement::SettlementConfig { zones: vec![other.clone()], ..config() };
    let closed = service::close_due(&test_db.db, &only_other, now_ms).await.expect("polls");
    let zones: Vec<_> = closed.iter().map(|settled| settled.zone.clone()).collect();
    assert_eq!(zones, vec![other.clone()]);
    {
        let conn = &mut *connection(&test_db);
        assert!(queries::settled_slots(conn, &zone(), 10).expect("q").is_empty(), "the first zone is not settled");
    }
    let closed = service::close_due(&test_db.db, &config(), now_ms).await.expect("polls");
    let zones: Vec<_> = closed.iter().map(|settled| settled.zone.clone()).collect();
    assert_eq!(zones, vec![zone()], "every zone by default; the other one is already settled");
}
