//! Property tests over random trades and readings (SQLite; a modest number of cases so they run in
//! seconds): the ledger balances, payments add up, and energy is conserved.

mod common;

use common::*;
use gridex_store::testing::TestDb;
use proptest::prelude::*;
use protocol::{MicroMoney, MicroTokens, Wh};
use settlement::queries;

#[derive(Debug, Clone)]
struct TradeCase {
    buyer: usize,
    seller: usize,
    price: i64,
    qty_wh: i64,
}

/// A household's readings: offsets before the start and after the end, and counter increments, or
/// no readings after the start at all ("no data").
#[derive(Debug, Clone)]
enum MeterCase {
    Data { before_ms: i64, after_ms: i64, imports: [i64; 2], exports: [i64; 2] },
    NoData,
}

fn trade_case(households: usize) -> impl Strategy<Value = TradeCase> {
    (0..households, 1..households, 1..500_000_i64, 1..5_000_i64).prop_map(move |(buyer, step, price, qty_wh)| {
        TradeCase { buyer, seller: (buyer + step) % households, price, qty_wh }
    })
}

fn meter_case() -> impl Strategy<Value = MeterCase> {
    prop_oneof![
        4 => (0..300_000_i64, 0..300_000_i64, [0..4_000_i64, 0..4_000_i64], [0..4_000_i64, 0..4_000_i64])
            .prop_map(|(before_ms, after_ms, imports, exports)| MeterCase::Data { before_ms, after_ms, imports, exports }),
        1 => Just(MeterCase::NoData),
    ]
}

fn case() -> impl Strategy<Value = (Vec<MeterCase>, Vec<TradeCase>)> {
    (2..7_usize).prop_flat_map(|households| {
        (prop::collection::vec(meter_case(), households), prop::collection::vec(trade_case(households), 0..10))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_balances_payments_add_up_and_energy_is_conserved((meters, trades) in case()) {
        let test_db = TestDb::sqlite();
        let conn = &mut *connection(&test_db);
        setup(conn, default_schedule());
        let households: Vec<Household> = (0..meters.len()).map(|index| household(conn, index as u8 + 1)).collect();
        for (household, meter) in households.iter().zip(&meters) {
            match meter {
                MeterCase::Data { before_ms, after_ms, imports, exports } => {
                    let end = SLOT_LEN_MS;
                    reading(conn, &household.device, -before_ms, 0, 0);
                    reading(conn, &household.device, end / 2, imports[0], exports[0]);
                    reading(conn, &household.device, end + after_ms, imports[0] + imports[1], exports[0] + exports[1]);
                }
                MeterCase::NoData => reading(conn, &household.device, -1, 0, 0),
            }
        }
        for (index, trade_case) in trades.iter().enumerate() {
            let (buyer, seller) = (&households[trade_case.buyer], &households[trade_case.seller]);
            trade(conn, index as i64 + 1, 0, trade_case.price, trade_case.qty_wh, buyer, seller);
        }
        let settled = close(conn, 0).expect("closes");
        let totals = settled.settled().totals;
        let report = queries::slot_report(conn, &zone(), slot(0)).expect("query").expect("settled");

        // Every asset sums to zero over all accounts.
        prop_assert_eq!(queries::asset_totals(conn).expect("totals"), (MicroMoney(0), MicroTokens(0)));

        // Buyers' payments = sellers' receipts + grid fees + protocol fees.
        let paid: i64 = report.statements.iter().map(|s| -(s.purchases.0 + s.grid_fees.0 + s.protocol_fees.0)).sum();
        let received: i64 = report.statements.iter().map(|s| s.sales.0).sum();
        prop_assert_eq!(MicroMoney(paid), MicroMoney(received) + totals.grid_fees + totals.protocol_fees);
        prop_assert_eq!(queries::balances(conn, "treasury").expect("q").money, totals.protocol_fees);
        prop_assert_eq!(
            queries::balances(conn, "utility:north").expect("q").money,
            totals.grid_fees + totals.utility_supplied_value - totals.utility_absorbed_value
        );

        // Metered net export = traded net sales (zero over the zone) + absorbed − supplied.
        let metered_net_export: i64 =
            report.statements.iter().map(|s| s.metered_export_wh.0 - s.metered_import_wh.0).sum();
        let traded_net_sales: i64 = report.statements.iter().map(|s| s.sold_wh.0 - s.bought_wh.0).sum();
        prop_assert_eq!(traded_net_sales, 0);
        prop_assert_eq!(Wh(metered_net_export), Wh(traded_net_sales) + totals.utility_absorbed_wh - totals.utility_supplied_wh);

        // Each household's balance is its statement; minted + carried = the slot's pool.
        for statement in &report.statements {
            let balances = queries::balances(conn, &statement.account.to_hex()).expect("q");
            prop_assert_eq!(balances.money, statement.net);
            prop_assert_eq!(balances.grid, statement.tokens_earned);
            prop_assert_eq!(statement.imbalance_wh.0,
                statement.metered_export_wh.0 - statement.metered_import_wh.0 - (statement.sold_wh.0 - statement.bought_wh.0));
        }
        prop_assert_eq!(totals.tokens_emitted + totals.tokens_carry, MicroTokens(TOKENS_PER_SLOT));
    }
}
