//! Closing slots on every backend (SQLite always; PostgreSQL when DATABASE_URL is set).

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use gridex_store::testing::TestDb;
use gridex_store::{Backend, DbConnection};
use protocol::merkle::verify_inclusion;
use protocol::{MicroMoney, MicroTokens, Signed, SlotRoot, Statement, Wh};
use settlement::queries;
use settlement::rewards::RewardSchedule;
use settlement::{SettlementError, SlotOutcome};

fn statement(conn: &mut DbConnection, index: i64, household: &Household) -> Statement {
    let proof = queries::statement_with_proof(conn, &zone(), slot(index), &household.account)
        .expect("query")
        .expect("a statement");
    assert!(verify_inclusion(&proof.statement, &proof.proof, &proof.root), "the proof verifies");
    let signed = Signed::<SlotRoot>::parse(proof.signed_root.as_bytes()).expect("a slot_root message");
    signed.verify().expect("the operator's signature verifies");
    assert_eq!(signed.message.root, proof.root);
    assert_eq!(hex::encode(signed.signature), proof.root_signature);
    assert_eq!(signed.message.operator.to_hex(), proof.operator);
    proof.statement
}

#[test]
fn a_simple_sale_pays_the_seller_the_utility_and_the_treasury() {
    on_every_backend(|conn| {
        let (seller, buyer) = one_sale(conn, 1_000, 1_000, (200_000, 1_000));

        let outcome = close(conn, 0).expect("closes");
        assert!(matches!(outcome, SlotOutcome::Settled(_)));
        assert_eq!(money(conn, &seller.hex()), 200_000);
        assert_eq!(money(conn, &buyer.hex()), -(200_000 + 20_000 + 1_000));
        assert_eq!(money(conn, "utility:north"), 20_000);
        assert_eq!(money(conn, "treasury"), 1_000);
        assert_eq!(tokens(conn, &seller.hex()), TOKENS_PER_SLOT);
        assert_eq!(tokens(conn, "issuer"), -TOKENS_PER_SLOT);
        assert_balanced(conn);

        let seller_statement = statement(conn, 0, &seller);
        assert_eq!(seller_statement.sold_wh, Wh(1_000));
        assert_eq!(seller_statement.imbalance_wh, Wh(0));
        assert_eq!(seller_statement.net, MicroMoney(200_000));
        let buyer_statement = statement(conn, 0, &buyer);
        assert_eq!(buyer_statement.net, MicroMoney(-221_000));
        assert!(!buyer_statement.no_data);
        let report = queries::slot_report(conn, &zone(), slot(0)).expect("query").expect("settled");
        assert_eq!(report.totals.traded_wh, Wh(1_000));
        assert_eq!(report.totals.delivered_p2p_wh, Wh(1_000));
        assert_eq!(report.statements.len(), 2);
    });
}

#[test]
fn a_seller_who_delivers_part_buys_the_rest_at_retail_and_earns_tokens_for_what_it_delivered() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let (partial, full, buyer) = (household(conn, 1), household(conn, 2), household(conn, 3));
        meter(conn, &partial, 0, 0, 600);
        meter(conn, &full, 0, 0, 1_000);
        meter(conn, &buyer, 0, 2_000, 0);
        trade(conn, 1, 0, 200_000, 1_000, &buyer, &partial);
        trade(conn, 2, 0, 200_000, 1_000, &buyer, &full);
        close(conn, 0).expect("closes");

        let short = statement(conn, 0, &partial);
        assert_eq!(short.imbalance_wh, Wh(-400));
        assert_eq!(short.utility_net, MicroMoney(-120_000), "400 Wh at retail");
        assert_eq!(money(conn, &partial.hex()), 200_000 - 120_000);
        // Tokens in proportion to delivered energy: 600 : 1000 of one million.
        assert_eq!(tokens(conn, &partial.hex()), 375_000);
        assert_eq!(tokens(conn, &full.hex()), 625_000);
        assert_eq!(statement(conn, 0, &buyer).imbalance_wh, Wh(0));
        assert_balanced(conn);
    });
}

#[test]
fn a_seller_who_delivers_more_than_it_sold_sells_the_surplus_at_feed_in() {
    on_every_backend(|conn| {
        let (seller, _buyer) = one_sale(conn, 1_500, 1_000, (200_000, 1_000));
        close(conn, 0).expect("closes");

        let surplus = statement(conn, 0, &seller);
        assert_eq!(surplus.imbalance_wh, Wh(500));
        assert_eq!(surplus.utility_net, MicroMoney(40_000), "500 Wh at feed-in");
        assert_eq!(money(conn, &seller.hex()), 240_000);
        assert_eq!(money(conn, "utility:north"), 20_000 - 40_000);
        assert_eq!(tokens(conn, &seller.hex()), TOKENS_PER_SLOT, "only delivered p2p energy earns, all of it here");
        let report = queries::slot_report(conn, &zone(), slot(0)).expect("query").expect("settled");
        assert_eq!(report.totals.utility_absorbed_wh, Wh(500));
        assert_eq!(report.totals.delivered_p2p_wh, Wh(1_000));
        assert_balanced(conn);
    });
}

#[test]
fn a_buyer_who_used_less_than_it_bought_sells_the_rest_to_the_utility() {
    on_every_backend(|conn| {
        let (_seller, buyer) = one_sale(conn, 1_000, 700, (200_000, 1_000));
        close(conn, 0).expect("closes");

        let buyer_statement = statement(conn, 0, &buyer);
        assert_eq!(buyer_statement.imbalance_wh, Wh(300));
        assert_eq!(buyer_statement.utility_net, MicroMoney(24_000));
        assert_eq!(money(conn, &buyer.hex()), -221_000 + 24_000);
        assert_balanced(conn);
    });
}

#[test]
fn a_seller_without_readings_is_flagged_and_settled_conservatively() {
    on_every_backend(|conn| {
        let (seller, buyer) = seller_and_buyer(conn);
        // Only a reading at the start: nothing brackets the end of the slot.
        reading(conn, &seller.device, 0, 0, 0);
        meter(conn, &buyer, 0, 1_000, 0);
        trade(conn, 1, 0, 200_000, 1_000, &buyer, &seller);
        close(conn, 0).expect("closes");

        let flagged = statement(conn, 0, &seller);
        assert!(flagged.no_data);
        assert_eq!(flagged.metered_export_wh, Wh(0), "no credit for unmetered export");
        assert_eq!(flagged.imbalance_wh, Wh(-1_000), "everything sold is bought back at retail");
        assert_eq!(flagged.tokens_earned, MicroTokens(0));
        assert_eq!(money(conn, &seller.hex()), 200_000 - 300_000);
        let report = queries::slot_report(conn, &zone(), slot(0)).expect("query").expect("settled");
        assert_eq!(report.totals.no_data_accounts, 1);
        assert_eq!(report.totals.tokens_carry, MicroTokens(TOKENS_PER_SLOT), "undistributed tokens are carried");
        assert_balanced(conn);
    });
}

#[test]
fn counters_between_readings_are_interpolated_at_the_boundaries() {
    on_every_backend(|conn| {
        let seller = one_household(conn);
        // 3 Wh exported per minute, readings 10 minutes apart straddling both boundaries.
        reading(conn, &seller.device, -300_000, 0, 0);
        reading(conn, &seller.device, 300_000, 0, 1_000);
        reading(conn, &seller.device, 1_000_000, 0, 2_001);
        close(conn, 0).expect("closes");
        let metered = statement(conn, 0, &seller);
        // At 0: 1000 × 300/600 = 500. At 900 s: 1000 + 1001 × 600/700 = 1858.0 → 1858.
        assert_eq!(metered.metered_export_wh, Wh(1_858 - 500));
        assert_eq!(metered.imbalance_wh, Wh(1_358));
    });
}

#[test]
fn fees_and_values_round_down_and_every_micro_unit_is_accounted_for() {
    on_every_backend(|conn| {
        let (seller, buyer) = one_sale(conn, 333, 333, (123_457, 333));
        close(conn, 0).expect("closes");
        // 123457 × 333 / 1000 = 41111.181 → 41111; 20000 × 0.333 = 6660; 41111 × 50 bps = 205.55 → 205.
        assert_eq!(money(conn, &seller.hex()), 41_111);
        assert_eq!(money(conn, "utility:north"), 6_660);
        assert_eq!(money(conn, "treasury"), 205);
        assert_eq!(money(conn, &buyer.hex()), -(41_111 + 6_660 + 205));
        let buyer_statement = statement(conn, 0, &buyer);
        assert_eq!(buyer_statement.grid_fees, MicroMoney(-6_660));
        assert_eq!(buyer_statement.protocol_fees, MicroMoney(-205));
        assert_balanced(conn);
    });
}

#[test]
fn emission_halves_at_the_epoch_boundary() {
    on_every_backend(|conn| {
        // Epochs of two slots, halving every epoch: 500k per slot in epoch 0, 250k in epoch 1.
        let schedule = RewardSchedule {
            epoch_len_ms: 2 * SLOT_LEN_MS,
            initial_emission_per_epoch: 1_000_000,
            halving_epochs: 1,
            ..default_schedule()
        };
        setup(conn, schedule);
        let (seller, buyer) = (household(conn, 1), household(conn, 2));
        let mut earned = Vec::new();
        for index in 0..4 {
            deliver(conn, index, &seller, &buyer);
            close(conn, index).expect("closes");
            earned.push(statement(conn, index, &seller).tokens_earned.0);
        }
        assert_eq!(earned, vec![500_000, 500_000, 250_000, 250_000]);
        let supply = queries::token_supply(conn, due(3)).expect("supply");
        assert_eq!(supply.supply, MicroTokens(1_500_000));
        assert_eq!(supply.emission_per_epoch, MicroTokens(250_000));
        assert_balanced(conn);
    });
}

#[test]
fn no_more_than_the_maximum_supply_is_ever_minted() {
    on_every_backend(|conn| {
        setup(conn, RewardSchedule { max_supply: 1_500_000, ..default_schedule() });
        let (seller, buyer) = (household(conn, 1), household(conn, 2));
        let mut earned = Vec::new();
        for index in 0..3 {
            deliver(conn, index, &seller, &buyer);
            close(conn, index).expect("closes");
            earned.push(statement(conn, index, &seller).tokens_earned.0);
        }
        assert_eq!(earned, vec![1_000_000, 500_000, 0]);
        assert_eq!(queries::token_supply(conn, due(2)).expect("supply").supply, MicroTokens(1_500_000));
        assert_balanced(conn);
    });
}

#[test]
fn closing_a_slot_again_changes_nothing() {
    on_every_backend(|conn| {
        let (seller, buyer) = seller_and_buyer(conn);
        deliver(conn, 0, &seller, &buyer);
        let first = close(conn, 0).expect("closes");
        let entries = count(conn, "ledger_entries");
        let balances = queries::all_balances(conn).expect("balances");
        let again = close(conn, 0).expect("closes again");
        assert!(matches!(again, SlotOutcome::AlreadySettled(_)));
        assert_eq!(again.settled(), first.settled());
        assert_eq!(count(conn, "ledger_entries"), entries);
        assert_eq!(count(conn, "statements"), 2);
        assert_eq!(queries::all_balances(conn).expect("balances"), balances);
    });
}

fn inject_failure(conn: &mut DbConnection, backend: Backend) {
    let sql = match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER inject_failure BEFORE INSERT ON settlement_slots \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'injected failure'; END; $$; \
             CREATE TRIGGER inject_failure BEFORE INSERT ON settlement_slots \
             FOR EACH ROW EXECUTE FUNCTION inject_failure();"
        }
    };
    conn.batch_execute(sql).expect("trigger created");
}

#[test]
fn a_crash_in_the_middle_of_a_close_leaves_nothing_and_the_close_then_succeeds() {
    for test_db in TestDb::all() {
        let conn = &mut *connection(&test_db);
        let (seller, buyer) = seller_and_buyer(conn);
        deliver(conn, 0, &seller, &buyer);
        // The slot record is written last, after the ledger, statements and reward epoch: failing it
        // fails the close after most of its writes.
        inject_failure(conn, test_db.db.backend());
        let error = close(conn, 0).expect_err("the injected failure aborts the close");
        assert!(matches!(error, SettlementError::Db(_)), "{error}");
        for table in ["ledger_transactions", "ledger_entries", "statements", "reward_epochs", "settlement_slots"] {
            assert_eq!(count(conn, table), 0, "{table} is empty after the failed close");
        }
        conn.batch_execute("DROP TRIGGER inject_failure ON settlement_slots")
            .or_else(|_| conn.batch_execute("DROP TRIGGER inject_failure"))
            .expect("trigger dropped");
        assert!(matches!(close(conn, 0).expect("closes"), SlotOutcome::Settled(_)));
        assert_eq!(money(conn, &seller.hex()), 200_000);
        assert_balanced(conn);
    }
}

#[test]
fn slots_close_in_order_and_only_after_the_grace_period() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let error = settlement::close_slot(conn, &zone(), slot(0), &config(), due(0) - 1).expect_err("not due");
        assert!(matches!(error, SettlementError::NotDue { due_ms, .. } if due_ms == due(0)));
        let error = close(conn, 1).expect_err("slot 0 first");
        assert!(matches!(error, SettlementError::OutOfOrder { expected_ms: 0, .. }));
        let error = settlement::close_slot(conn, &zone(), protocol::SlotId::new(1).expect("valid"), &config(), due(0))
            .expect_err("misaligned");
        assert!(matches!(error, SettlementError::Misaligned { .. }));
        close(conn, 0).expect("slot 0");
        close(conn, 1).expect("then slot 1");
    });
}

#[test]
fn late_readings_count_until_the_grace_period_ends_and_not_after() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let (on_time, too_late) = (household(conn, 1), household(conn, 2));
        for household in [&on_time, &too_late] {
            reading(conn, &household.device, 0, 0, 0);
        }
        reading_received(conn, &on_time.device, SLOT_LEN_MS, 0, 500, due(0));
        reading_received(conn, &too_late.device, SLOT_LEN_MS, 0, 500, due(0) + 1);
        close(conn, 0).expect("closes");
        assert_eq!(statement(conn, 0, &on_time).metered_export_wh, Wh(500));
        assert!(statement(conn, 0, &too_late).no_data);
    });
}

#[test]
fn undistributed_tokens_and_rounding_remainders_are_carried_to_the_next_slot() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let sellers: Vec<Household> = (1..=3).map(|seed| household(conn, seed)).collect();
        let buyer = household(conn, 9);
        // Slot 0: nobody trades, so the whole budget is carried.
        for seller in &sellers {
            meter(conn, seller, 0, 0, 0);
        }
        meter(conn, &buyer, 0, 0, 0);
        close(conn, 0).expect("closes");
        // Slot 1: three equal sellers share 2,000,000: 666,666 each and 2 carried.
        for (index, seller) in sellers.iter().enumerate() {
            meter(conn, seller, 1, 0, 100);
            trade(conn, index as i64 + 1, 1, 200_000, 100, &buyer, seller);
        }
        meter(conn, &buyer, 1, 300, 0);
        let settled = close(conn, 1).expect("closes");
        for seller in &sellers {
            assert_eq!(statement(conn, 1, seller).tokens_earned, MicroTokens(666_666));
        }
        assert_eq!(settled.settled().totals.tokens_carry, MicroTokens(2));
        // Slot 2: one seller gets the budget plus the carried 2.
        meter(conn, &sellers[0], 2, 0, 100);
        meter(conn, &buyer, 2, 100, 0);
        trade(conn, 10, 2, 200_000, 100, &buyer, &sellers[0]);
        close(conn, 2).expect("closes");
        assert_eq!(statement(conn, 2, &sellers[0]).tokens_earned, MicroTokens(TOKENS_PER_SLOT + 2));
        assert_eq!(queries::token_supply(conn, due(2)).expect("q").supply, MicroTokens(3 * TOKENS_PER_SLOT));
        assert_balanced(conn);
    });
}

#[test]
fn zones_share_each_slots_emission_equally() {
    on_every_backend(|conn| {
        setup(conn, default_schedule());
        let south = protocol::ZoneId::parse("south").expect("valid");
        settlement::registry::create_zone(conn, &south, "South", SLOT_LEN_MS, None, 0).expect("zone");
        settlement::registry::set_tariff(conn, &south, &tariff()).expect("tariff");
        let (seller, buyer) = (household(conn, 1), household(conn, 2));
        deliver(conn, 0, &seller, &buyer);
        close(conn, 0).expect("closes");
        assert_eq!(statement(conn, 0, &seller).tokens_earned, MicroTokens(TOKENS_PER_SLOT / 2));
        // South had no sellers: its half is carried in south, not given to north.
        let south_slot = settlement::close_slot(conn, &south, slot(0), &config(), due(0)).expect("closes");
        assert_eq!(south_slot.settled().totals.tokens_carry, MicroTokens(TOKENS_PER_SLOT / 2));
        assert_eq!(queries::token_supply(conn, due(0)).expect("q").supply, MicroTokens(TOKENS_PER_SLOT / 2));
    });
}

#[test]
fn two_closers_racing_for_the_same_slot_settle_it_once() {
    for test_db in TestDb::all() {
        {
            let conn = &mut *connection(&test_db);
            let (seller, buyer) = seller_and_buyer(conn);
            deliver(conn, 0, &seller, &buyer);
        }
        let barrier = std::sync::Barrier::new(2);
        let outcomes: Vec<SlotOutcome> = std::thread::scope(|scope| {
            let closers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        // The same path the loop takes: one write transaction (serialized on SQLite).
                        test_db
                            .db
                            .write_blocking(|conn| {
                                close(conn, 0).map_err(|error| gridex_store::DbError::Invalid(error.to_string()))
                            })
                            .expect("closes")
                    })
                })
                .collect();
            closers.into_iter().map(|closer| closer.join().expect("no panic")).collect()
        });
        let settled = outcomes.iter().filter(|outcome| matches!(outcome, SlotOutcome::Settled(_))).count();
        assert_eq!(settled, 1, "{:?}", test_db.db.backend());
        let conn = &mut *connection(&test_db);
        assert_eq!(count(conn, "statements"), 2);
        assert_balanced(conn);
    }
}

#[test]
fn dense_readings_meter_the_same_as_interpolating_over_all_of_them() {
    on_every_backend(|conn| {
        let house = one_household(conn);
        // A reading every 7 s with uneven increments; some arrive after the cutoff and must not count.
        let mut samples = Vec::new();
        let (mut import_wh, mut export_wh) = (0_i64, 0_i64);
        let mut ts_ms = -200_000;
        while ts_ms < SLOT_LEN_MS + 200_000 {
            let late = ts_ms > SLOT_LEN_MS - 30_000 && ts_ms % 3 == 0;
            let received_ms = if late { due(0) + 1 } else { ts_ms + 500 };
            reading_received(conn, &house.device, ts_ms, import_wh, export_wh, received_ms);
            if !late {
                samples.push(settlement::metering::CounterSample { ts_ms, import_wh, export_wh });
            }
            import_wh += (ts_ms / 7_000).rem_euclid(13) + 1;
            export_wh += (ts_ms / 7_000).rem_euclid(5) * 2;
            ts_ms += 7_000;
        }
        let expected = settlement::metering::metered_energy(&samples, 0, SLOT_LEN_MS, config().reading_gap_ms_max)
            .expect("bracketed");
        close(conn, 0).expect("closes");
        let metered = statement(conn, 0, &house);
        assert_eq!(
            (metered.metered_import_wh.0, metered.metered_export_wh.0),
            (expected.import_wh, expected.export_wh)
        );
        assert!(expected.import_wh > 0 && expected.export_wh > 0);
    });
}

#[test]
fn a_correction_is_a_new_balanced_transaction_and_a_refused_one_writes_nothing() {
    use settlement::correction::{post_correction, Correction, CorrectionError, CorrectionLine};
    use settlement::rules::Asset;
    on_every_backend(|conn| {
        let (seller, buyer) = one_sale(conn, 1_000, 1_000, (200_000, 1_000));
        let line = |account: &str, asset, amount| CorrectionLine { account: account.to_owned(), asset, amount };
        // The utility refunds the buyer's grid fee (a goodwill credit) for slot 0.
        let refund = Correction {
            zone: zone(),
            slot: slot(0),
            reference: "ticket 4711: grid fee refunded".to_owned(),
            lines: vec![line(&buyer.hex(), Asset::Money, 20_000), line("utility:north", Asset::Money, -20_000)],
        };
        let not_settled = post_correction(conn, &refund, due(0));
        assert!(
            matches!(not_settled, Err(SettlementError::Correction(CorrectionError::NotSettled { .. }))),
            "{not_settled:?}"
        );
        close(conn, 0).expect("closes");
        let (entries, transactions) = (count(conn, "ledger_entries"), count(conn, "ledger_transactions"));
        let buyer_before = money(conn, &buyer.hex());

        let refused = [
            (Correction { lines: vec![line(&buyer.hex(), Asset::Money, 20_000)], ..refund.clone() }, "one line"),
            (
                Correction {
                    lines: vec![line(&buyer.hex(), Asset::Money, 20_000), line("utility:north", Asset::Money, -19_999)],
                    ..refund.clone()
                },
                "unbalanced",
            ),
            (
                Correction {
                    lines: vec![line(&buyer.hex(), Asset::Money, 20_000), line("utility:north", Asset::Grid, -20_000)],
                    ..refund.clone()
                },
                "assets mixed",
            ),
            (
                Correction {
                    lines: vec![line("nobody", Asset::Money, 20_000), line("utility:north", Asset::Money, -20_000)],
                    ..refund.clone()
                },
                "unknown account",
            ),
            (Correction { reference: "  ".to_owned(), ..refund.clone() }, "no reference"),
            (Correction { slot: slot(1), ..refund.clone() }, "slot not settled"),
        ];
        for (correction, what) in refused {
            let result = post_correction(conn, &correction, due(0));
            assert!(matches!(result, Err(SettlementError::Correction(_))), "{what}: {result:?}");
        }
        assert_eq!(count(conn, "ledger_entries"), entries, "a refused correction writes nothing");
        assert_eq!(count(conn, "ledger_transactions"), transactions);

        let tx_id = post_correction(conn, &refund, due(0) + 1).expect("posts");
        assert_eq!(money(conn, &buyer.hex()), buyer_before + 20_000);
        assert_eq!(money(conn, "utility:north"), 0);
        assert_eq!(count(conn, "ledger_entries"), entries + 2);
        assert_balanced(conn);
        // The settled statement is not rewritten, and the ledger keeps handing out fresh ids.
        assert_eq!(statement(conn, 0, &buyer).grid_fees, MicroMoney(-20_000));
        meter(conn, &seller, 1, 0, 2_000);
        meter(conn, &buyer, 1, 2_000, 0);
        close(conn, 1).expect("the next slot closes after a correction");
        let next = post_correction(conn, &refund, due(1)).expect("posts again");
        assert!(next > tx_id, "transaction ids increase: {tx_id} then {next}");
        assert_balanced(conn);
    });
}
