//! Fixtures shared by the settlement integration tests: a zone with a tariff and reward schedule,
//! households with a device each, readings and trades written directly with diesel (the exchange
//! writes them in production).
#![allow(dead_code)]

use diesel::prelude::*;
use gridex_store::schema::{ledger_entries, readings, settlement_slots, statements, trades};
use gridex_store::testing::TestDb;
use gridex_store::DbConnection;
use protocol::testing::signing_key;
use protocol::{AccountId, DeviceId, MeterSerial, MicroMoney, MicroTokens, PricePerKwh, SlotId, Statement, ZoneId};
use settlement::queries;
use settlement::registry::{self, AccountKind};
use settlement::rewards::RewardSchedule;
use settlement::rules::Tariff;
use settlement::{close_slot, SettlementConfig, SettlementError, SlotOutcome};

pub const SLOT_LEN_MS: i64 = 900_000;
pub const GRACE_MS: i64 = 120_000;
pub const RETAIL: i64 = 300_000;
pub const FEED_IN: i64 = 80_000;
pub const GRID_FEE: i64 = 20_000;
pub const FEE_BPS: i64 = 50;
/// 96 slots a day: one million micro-GRID per slot.
pub const EMISSION_PER_DAY: i64 = 96_000_000;
pub const TOKENS_PER_SLOT: i64 = 1_000_000;

pub fn zone() -> ZoneId {
    ZoneId::parse("north").expect("valid")
}

pub fn slot(index: i64) -> SlotId {
    SlotId::new(index * SLOT_LEN_MS).expect("valid")
}

pub fn config() -> SettlementConfig {
    SettlementConfig { grace_ms: GRACE_MS, ..SettlementConfig::new(signing_key(200)) }
}

pub fn default_schedule() -> RewardSchedule {
    RewardSchedule {
        genesis_ms: 0,
        epoch_len_ms: 86_400_000,
        initial_emission_per_epoch: EMISSION_PER_DAY,
        halving_epochs: 365,
        max_supply: 21_000_000_000_000,
    }
}

pub fn tariff() -> Tariff {
    Tariff {
        effective_from_ms: 0,
        retail_price_per_kwh: PricePerKwh(RETAIL),
        feed_in_price_per_kwh: PricePerKwh(FEED_IN),
        grid_fee_per_kwh: PricePerKwh(GRID_FEE),
        protocol_fee_bps: FEE_BPS,
    }
}

/// A zone created at time 0 (so slot 0 is its first), with the default tariff and schedule.
pub fn setup(conn: &mut DbConnection, schedule: RewardSchedule) {
    registry::create_zone(conn, &zone(), "North", SLOT_LEN_MS, None, 0).expect("zone");
    registry::set_tariff(conn, &zone(), &tariff()).expect("tariff");
    registry::set_reward_schedule(conn, &schedule).expect("schedule");
}

#[derive(Debug, Clone, Copy)]
pub struct Household {
    pub account: AccountId,
    pub device: DeviceId,
}

impl Household {
    pub fn hex(&self) -> String {
        self.account.to_hex()
    }
}

/// Registers household `seed` (its account key from seed, its device key from seed + 100).
pub fn household(conn: &mut DbConnection, seed: u8) -> Household {
    let account = AccountId::from_verifying_key(&signing_key(seed).verifying_key());
    let device = DeviceId::from_verifying_key(&signing_key(seed.wrapping_add(100)).verifying_key());
    registry::register_account(
        conn,
        &account.to_hex(),
        AccountKind::Household,
        &format!("House {seed}"),
        Some(&zone()),
        0,
    )
    .expect("account");
    let serial = MeterSerial::parse(&format!("SN-{seed}")).expect("serial");
    registry::register_device(conn, &device, &account, &zone(), &serial, 5_000, 0).expect("device");
    Household { account, device }
}

/// Stores an accepted reading received `received_ms`.
pub fn reading_received(
    conn: &mut DbConnection,
    device: &DeviceId,
    ts_ms: i64,
    import_wh: i64,
    export_wh: i64,
    received_ms: i64,
) {
    diesel::insert_into(readings::table)
        .values((
            readings::device_id.eq(device.to_hex()),
            readings::seq.eq(ts_ms),
            readings::ts_ms.eq(ts_ms),
            readings::import_wh.eq(import_wh),
            readings::export_wh.eq(export_wh),
            readings::pv_wh.eq(None::<i64>),
            readings::power_w.eq(0_i64),
            readings::received_ms.eq(received_ms),
            readings::payload.eq("{}"),
        ))
        .execute(conn)
        .expect("reading");
}

pub fn reading(conn: &mut DbConnection, device: &DeviceId, ts_ms: i64, import_wh: i64, export_wh: i64) {
    reading_received(conn, device, ts_ms, import_wh, export_wh, ts_ms + 1_000);
}

/// Readings on both boundaries of slot `index` so the device metered exactly `import_wh`/`export_wh`
/// in it; counters continue from a reading already on the start boundary (the previous slot's end).
pub fn meter(conn: &mut DbConnection, household: &Household, index: i64, import_wh: i64, export_wh: i64) {
    let start = slot(index).start_ms();
    let existing: Option<(i64, i64)> = readings::table
        .filter(readings::device_id.eq(household.device.to_hex()))
        .filter(readings::ts_ms.eq(start))
        .select((readings::import_wh, readings::export_wh))
        .first(conn)
        .optional()
        .expect("query");
    let (import_base, export_base) = existing.unwrap_or_else(|| {
        reading(conn, &household.device, start, 1_000, 1_000);
        (1_000, 1_000)
    });
    reading(conn, &household.device, start + SLOT_LEN_MS, import_base + import_wh, export_base + export_wh);
}

pub fn trade(
    conn: &mut DbConnection,
    trade_id: i64,
    index: i64,
    price: i64,
    qty_wh: i64,
    buyer: &Household,
    seller: &Household,
) {
    diesel::insert_into(trades::table)
        .values((
            trades::trade_id.eq(trade_id),
            trades::zone_id.eq(zone().as_str()),
            trades::slot_start_ms.eq(slot(index).start_ms()),
            trades::price_per_kwh.eq(price),
            trades::qty_wh.eq(qty_wh),
            trades::buyer_id.eq(buyer.hex()),
            trades::buy_nonce.eq(trade_id),
            trades::seller_id.eq(seller.hex()),
            trades::sell_nonce.eq(trade_id),
            trades::aggressor.eq("buy"),
            trades::ts_ms.eq(slot(index).start_ms() - 60_000),
            trades::command_seq.eq(trade_id),
        ))
        .execute(conn)
        .expect("trade");
}

/// A zone with the default reward schedule and its first household.
pub fn one_household(conn: &mut DbConnection) -> Household {
    setup(conn, default_schedule());
    household(conn, 1)
}

/// A zone with the default reward schedule and its first two households: (seller, buyer).
pub fn seller_and_buyer(conn: &mut DbConnection) -> (Household, Household) {
    setup(conn, default_schedule());
    (household(conn, 1), household(conn, 2))
}

/// One trade in slot `index` (trade id `index + 1`, `price` µ/kWh, `qty_wh`), the seller metered
/// exporting `seller_export_wh` and the buyer importing `buyer_import_wh` over the slot.
pub fn sale(
    conn: &mut DbConnection,
    index: i64,
    (seller, buyer): (&Household, &Household),
    (seller_export_wh, buyer_import_wh): (i64, i64),
    (price, qty_wh): (i64, i64),
) {
    meter(conn, seller, index, 0, seller_export_wh);
    meter(conn, buyer, index, buyer_import_wh, 0);
    trade(conn, index + 1, index, price, qty_wh, buyer, seller);
}

/// A [`sale`] of 1 000 Wh at 0.20 per kWh in slot `index`, delivered exactly as traded.
pub fn deliver(conn: &mut DbConnection, index: i64, seller: &Household, buyer: &Household) {
    sale(conn, index, (seller, buyer), (1_000, 1_000), (200_000, 1_000));
}

/// [`seller_and_buyer`] with one [`sale`] in slot 0.
pub fn one_sale(
    conn: &mut DbConnection,
    seller_export_wh: i64,
    buyer_import_wh: i64,
    price_and_qty_wh: (i64, i64),
) -> (Household, Household) {
    let (seller, buyer) = seller_and_buyer(conn);
    sale(conn, 0, (&seller, &buyer), (seller_export_wh, buyer_import_wh), price_and_qty_wh);
    (seller, buyer)
}

/// A seller, a buyer and a consumer (households 1, 2 and 3 of a zone with the default reward
/// schedule) over slots 0 to 2, not closed yet. The seller sells the buyer 1 000 Wh in slot 0 and
/// 500 Wh in slot 1 at 0.20 per kWh, nothing in slot 2; the buyer imports 1 000, 800 and 100 Wh,
/// the consumer 500, 400 and 100 Wh; the seller's grid meter counts `seller_wh[i]`
/// (import, export) in slot `i`. Returns (seller, buyer, consumer).
pub fn three_homes_three_slots(
    conn: &mut DbConnection,
    seller_wh: [(i64, i64); 3],
) -> (Household, Household, Household) {
    let (seller, buyer) = seller_and_buyer(conn);
    let consumer = household(conn, 3);
    // Per slot: the buyer's and the consumer's import, and what the seller sold the buyer.
    let others = [(1_000, 500, Some(1_000)), (800, 400, Some(500)), (100, 100, None)];
    for (index, ((buyer_import_wh, consumer_import_wh, sold_wh), (seller_import_wh, seller_export_wh))) in
        (0_i64..).zip(others.into_iter().zip(seller_wh))
    {
        meter(conn, &seller, index, seller_import_wh, seller_export_wh);
        meter(conn, &buyer, index, buyer_import_wh, 0);
        meter(conn, &consumer, index, consumer_import_wh, 0);
        if let Some(qty_wh) = sold_wh {
            trade(conn, index + 1, index, 200_000, qty_wh, &buyer, &seller);
        }
    }
    (seller, buyer, consumer)
}

/// An account's money balance (µ).
pub fn money(conn: &mut DbConnection, account: &str) -> i64 {
    queries::balances(conn, account).expect("balances").money.0
}

/// An account's GRID balance (µGRID).
pub fn tokens(conn: &mut DbConnection, account: &str) -> i64 {
    queries::balances(conn, account).expect("balances").grid.0
}

/// Every asset sums to zero over all accounts.
pub fn assert_balanced(conn: &mut DbConnection) {
    assert_eq!(queries::asset_totals(conn).expect("totals"), (MicroMoney(0), MicroTokens(0)));
}

/// The earliest time slot `index` may close.
pub fn due(index: i64) -> i64 {
    slot(index).start_ms() + SLOT_LEN_MS + GRACE_MS
}

pub fn close(conn: &mut DbConnection, index: i64) -> Result<SlotOutcome, SettlementError> {
    close_slot(conn, &zone(), slot(index), &config(), due(index))
}

/// Closes slots `0..slots` in order, each settled by this close.
pub fn close_all(conn: &mut DbConnection, slots: i64) {
    for index in 0..slots {
        assert!(matches!(close(conn, index).expect("closes"), SlotOutcome::Settled(_)), "slot {index}");
    }
}

pub fn connection(test_db: &TestDb) -> gridex_store::PooledDb {
    test_db.db.get().expect("a connection")
}

/// Runs `test` on a connection to a fresh database of each backend: SQLite always, PostgreSQL too
/// when DATABASE_URL is set.
pub fn on_every_backend(mut test: impl FnMut(&mut DbConnection)) {
    for test_db in TestDb::all() {
        test(&mut connection(&test_db));
    }
}

pub fn count(conn: &mut DbConnection, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table}"))
        .get_result::<Count>(conn)
        .expect("count")
        .n
}

/// A ledger line: (tx id, line, account, asset, kind, amount).
pub type LedgerLine = (i64, i64, String, String, String, i64);

/// Everything a settled ledger says: its lines, the statements and the slots' Merkle roots.
pub type Ledger = (Vec<LedgerLine>, Vec<(i64, String, String)>, Vec<(i64, String)>);

/// Every ledger line, in order of transaction and line.
pub fn ledger_lines(conn: &mut DbConnection) -> Vec<LedgerLine> {
    ledger_entries::table
        .order((ledger_entries::tx_id, ledger_entries::line))
        .select((
            ledger_entries::tx_id,
            ledger_entries::line,
            ledger_entries::account_id,
            ledger_entries::asset,
            ledger_entries::kind,
            ledger_entries::amount,
        ))
        .load(conn)
        .expect("ledger lines")
}

pub fn ledger(conn: &mut DbConnection) -> Ledger {
    let statements = statements::table
        .order((statements::slot_start_ms, statements::account_id))
        .select((statements::slot_start_ms, statements::account_id, statements::statement))
        .load(conn)
        .expect("statements");
    let roots = settlement_slots::table
        .order(settlement_slots::slot_start_ms)
        .select((settlement_slots::slot_start_ms, settlement_slots::merkle_root))
        .load(conn)
        .expect("roots");
    (ledger_lines(conn), statements, roots)
}

/// The household's statement of slot `index`.
pub fn statement(conn: &mut DbConnection, index: i64, household: &Household) -> Statement {
    let json: String = statements::table
        .filter(statements::slot_start_ms.eq(slot(index).start_ms()))
        .filter(statements::account_id.eq(household.hex()))
        .select(statements::statement)
        .first(conn)
        .expect("a statement");
    protocol::decode::<Statement>(json.as_bytes()).expect("a statement")
}
