//! Closing a slot of 100,000 households with trades on PostgreSQL, against a binary `COPY` of the
//! same number of ledger rows (same shapes and indexes) in the same run.
//!
//! Needs `DATABASE_URL=postgres://…` (a fresh database is created and dropped). Without it the
//! benchmark says so and exits. Override the size with `SETTLEMENT_BENCH_ACCOUNTS` and the reading
//! interval with `SETTLEMENT_BENCH_READING_INTERVAL_MS`.
//! Run: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p settlement`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{default_schedule, tariff, GRACE_MS, SLOT_LEN_MS};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use gridex_store::schema::{accounts, devices, readings, trades};
use gridex_store::testing::TestDb;
use gridex_store::DbConnection;
use protocol::{SlotId, ZoneId};
use settlement::{close_slot, registry};
use std::time::{Duration, Instant};

const ACCOUNTS_DEFAULT: usize = 100_000;
const SLOTS: i64 = 2;
/// One reading a minute per device by default (gateways can report every second; the close reads
/// only the readings around the slot boundaries, so the density changes load time, not close time).
const READING_INTERVAL_MS_DEFAULT: i64 = 60_000;

diesel::table! {
    copy_entries (tx_id, line) { tx_id -> BigInt, line -> BigInt, account_id -> Text, asset -> Text, kind -> Text, amount -> BigInt, }
}
diesel::table! {
    copy_transactions (tx_id) { tx_id -> BigInt, zone_id -> Text, slot_start_ms -> BigInt, kind -> Text, reference -> Text, created_ms -> BigInt, }
}
diesel::table! {
    copy_statements (zone_id, slot_start_ms, account_id) { zone_id -> Text, slot_start_ms -> BigInt, account_id -> Text, leaf_index -> BigInt, leaf_hash -> Text, statement -> Text, }
}

#[derive(Insertable)]
#[diesel(table_name = accounts, treat_none_as_default_value = false)]
struct AccountRow {
    account_id: String,
    kind: &'static str,
    display_name: String,
    zone_id: Option<&'static str>,
    created_ms: i64,
}

#[derive(Insertable)]
#[diesel(table_name = devices, treat_none_as_default_value = false)]
struct DeviceRow {
    device_id: String,
    account_id: String,
    zone_id: &'static str,
    meter_serial: String,
    nameplate_w: i64,
    registered_ms: i64,
}

#[derive(Insertable)]
#[diesel(table_name = readings, treat_none_as_default_value = false)]
struct ReadingRow<'a> {
    device_id: &'a str,
    seq: i64,
    ts_ms: i64,
    import_wh: i64,
    export_wh: i64,
    pv_wh: Option<i64>,
    power_w: i64,
    received_ms: i64,
    payload: &'static str,
}

#[derive(Insertable)]
#[diesel(table_name = trades, treat_none_as_default_value = false)]
struct TradeRow<'a> {
    trade_id: i64,
    zone_id: &'static str,
    slot_start_ms: i64,
    price_per_kwh: i64,
    qty_wh: i64,
    buyer_id: &'a str,
    buy_nonce: i64,
    seller_id: &'a str,
    sell_nonce: i64,
    aggressor: &'static str,
    ts_ms: i64,
    command_seq: i64,
}

#[derive(Insertable)]
#[diesel(table_name = copy_entries, treat_none_as_default_value = false)]
struct CopyEntry<'a> {
    tx_id: i64,
    line: i64,
    account_id: &'a str,
    asset: &'static str,
    kind: &'static str,
    amount: i64,
}

#[derive(Insertable)]
#[diesel(table_name = copy_transactions, treat_none_as_default_value = false)]
struct CopyTransaction<'a> {
    tx_id: i64,
    zone_id: &'static str,
    slot_start_ms: i64,
    kind: &'static str,
    reference: &'a str,
    created_ms: i64,
}

#[derive(Insertable)]
#[diesel(table_name = copy_statements, treat_none_as_default_value = false)]
struct CopyStatement<'a> {
    zone_id: &'static str,
    slot_start_ms: i64,
    account_id: &'a str,
    leaf_index: i64,
    leaf_hash: &'a str,
    statement: &'a str,
}

/// Distinct 64-hex account and device ids without deriving 200k ed25519 keys.
fn key_hex(kind: u8, index: usize) -> String {
    let mut bytes = [0u8; 32];
    bytes[0] = kind;
    bytes[24..].copy_from_slice(&(index as u64).to_be_bytes());
    hex::encode(bytes)
}

fn pg(conn: &mut DbConnection) -> &mut PgConnection {
    match conn {
        DbConnection::Postgres(pg) => pg,
        DbConnection::Sqlite(_) => unreachable!("the benchmark runs on PostgreSQL"),
    }
}

fn load(conn: &mut DbConnection, households: usize, interval_ms: i64) {
    let zone = ZoneId::parse("bench").expect("valid");
    registry::create_zone(conn, &zone, "Bench", SLOT_LEN_MS, None, 0).expect("zone");
    registry::set_tariff(conn, &zone, &tariff()).expect("tariff");
    registry::set_reward_schedule(conn, &default_schedule()).expect("schedule");
    // Households are copied in bulk rather than registered one by one through the registry: 100k
    // registrations would dominate the set-up, and the ids (`key_hex`) are not ed25519 keys, which
    // `registry::register_device` rightly refuses. Zone, tariff and schedule above go through it.
    let account_ids: Vec<String> = (0..households).map(|index| key_hex(1, index)).collect();
    let device_ids: Vec<String> = (0..households).map(|index| key_hex(2, index)).collect();
    let pg = pg(conn);
    let account_rows: Vec<AccountRow> = account_ids
        .iter()
        .enumerate()
        .map(|(index, id)| AccountRow {
            account_id: id.clone(),
            kind: "household",
            display_name: format!("House {index}"),
            zone_id: Some("bench"),
            created_ms: 0,
        })
        .collect();
    diesel::copy_from(accounts::table).from_insertable(&account_rows).execute(pg).expect("accounts");
    let device_rows: Vec<DeviceRow> = (0..households)
        .map(|index| DeviceRow {
            device_id: device_ids[index].clone(),
            account_id: account_ids[index].clone(),
            zone_id: "bench",
            meter_serial: format!("SN-{index}"),
            nameplate_w: 5_000,
            registered_ms: 0,
        })
        .collect();
    diesel::copy_from(devices::table).from_insertable(&device_rows).execute(pg).expect("devices");
    // A reading every `interval_ms` from 30 s before slot 0 to past the last slot (never on a slot
    // boundary, so every boundary is interpolated); sellers (even) export about 1 kWh a slot, buyers
    // (odd) import about 1 kWh, with deviations either way.
    let points = (SLOTS * SLOT_LEN_MS + 60_000) / interval_ms + 1;
    let mut reading_rows = Vec::with_capacity(households * points as usize);
    for (index, device) in device_ids.iter().enumerate() {
        let (mut import_wh, mut export_wh) = (0_i64, 0_i64);
        let per_slot = 1_000 + (index as i64 % 3 - 1) * 120 + (index as i64 % 5) * 20;
        for point in 0..points {
            let ts_ms = point * interval_ms - 30_000;
            reading_rows.push(ReadingRow {
                device_id: device,
                seq: point,
                ts_ms,
                import_wh,
                export_wh,
                pv_wh: None,
                power_w: 0,
                received_ms: ts_ms + 1_000,
                payload: "{}",
            });
            let step = per_slot * interval_ms / SLOT_LEN_MS;
            if index % 2 == 0 {
                export_wh += step;
            } else {
                import_wh += step;
            }
        }
    }
    diesel::copy_from(readings::table).from_insertable(&reading_rows).execute(pg).expect("readings");
    let mut trade_rows = Vec::new();
    for slot in 0..SLOTS {
        for pair in 0..households / 2 {
            let trade_id = slot * households as i64 + pair as i64 + 1;
            trade_rows.push(TradeRow {
                trade_id,
                zone_id: "bench",
                slot_start_ms: slot * SLOT_LEN_MS,
                price_per_kwh: 150_000 + (pair as i64 % 100) * 1_000,
                qty_wh: 1_000,
                buyer_id: &account_ids[2 * pair + 1],
                buy_nonce: trade_id,
                seller_id: &account_ids[2 * pair],
                sell_nonce: trade_id,
                aggressor: "buy",
                ts_ms: slot * SLOT_LEN_MS - 60_000,
                command_seq: trade_id,
            });
        }
    }
    diesel::copy_from(trades::table).from_insertable(&trade_rows).execute(pg).expect("trades");
    // Start from a settled database: statistics, visibility map and a checkpoint after the bulk load.
    pg.batch_execute("VACUUM ANALYZE").expect("vacuum analyze");
    pg.batch_execute("CHECKPOINT").expect("checkpoint");
}

/// COPYs `transactions`, `entries` and `statements` rows shaped like the ledger's into clones of the
/// ledger tables (same columns, keys and indexes) in one transaction; returns the elapsed time.
fn copy_reference(
    conn: &mut DbConnection,
    transactions: usize,
    entries: usize,
    statements: usize,
    statement_json: &str,
) -> Duration {
    let pg = pg(conn);
    pg.batch_execute(
        "DROP TABLE IF EXISTS copy_entries, copy_transactions, copy_statements;
         CREATE TABLE copy_entries (LIKE ledger_entries INCLUDING ALL);
         CREATE TABLE copy_transactions (LIKE ledger_transactions INCLUDING ALL);
         CREATE TABLE copy_statements (LIKE statements INCLUDING ALL);",
    )
    .expect("reference tables");
    let accounts: Vec<String> = (0..statements.max(1)).map(|index| key_hex(1, index)).collect();
    let references: Vec<String> = (0..transactions).map(|index| index.to_string()).collect();
    let leaf = "ab".repeat(32);
    let transaction_rows: Vec<CopyTransaction> = (0..transactions)
        .map(|index| CopyTransaction {
            tx_id: index as i64,
            zone_id: "bench",
            slot_start_ms: 0,
            kind: "trade",
            reference: &references[index],
            created_ms: 0,
        })
        .collect();
    let entry_rows: Vec<CopyEntry> = (0..entries)
        .map(|index| CopyEntry {
            tx_id: (index / 4) as i64,
            line: (index % 4) as i64,
            account_id: &accounts[index % accounts.len()],
            asset: "money",
            kind: "purchase",
            amount: index as i64,
        })
        .collect();
    let statement_rows: Vec<CopyStatement> = (0..statements)
        .map(|index| CopyStatement {
            zone_id: "bench",
            slot_start_ms: 0,
            account_id: &accounts[index],
            leaf_index: index as i64,
            leaf_hash: &leaf,
            statement: statement_json,
        })
        .collect();
    let started = Instant::now();
    pg.transaction::<_, diesel::result::Error, _>(|pg| {
        diesel::copy_from(copy_transactions::table).from_insertable(&transaction_rows).execute(pg)?;
        diesel::copy_from(copy_entries::table).from_insertable(&entry_rows).execute(pg)?;
        diesel::copy_from(copy_statements::table).from_insertable(&statement_rows).execute(pg)?;
        Ok(())
    })
    .expect("reference COPY");
    started.elapsed()
}

/// Rows in `table` (a table name, optionally with a `WHERE` clause).
fn count(conn: &mut DbConnection, table: &str) -> usize {
    usize::try_from(common::count(conn, table)).expect("a row count is not negative")
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let Some(test_db) = TestDb::postgres() else {
        println!("settlement bench: set DATABASE_URL=postgres://… to run it (it needs PostgreSQL)");
        return;
    };
    let households: usize =
        std::env::var("SETTLEMENT_BENCH_ACCOUNTS").ok().and_then(|text| text.parse().ok()).unwrap_or(ACCOUNTS_DEFAULT);
    let mut connection = test_db.db.get().expect("a connection");
    let conn: &mut DbConnection = &mut connection;
    let loading = Instant::now();
    let interval_ms: i64 = std::env::var("SETTLEMENT_BENCH_READING_INTERVAL_MS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(READING_INTERVAL_MS_DEFAULT);
    load(conn, households, interval_ms);
    println!(
        "loaded {households} households, {} trades, {} readings (one per device every {interval_ms} ms) in {:.1?}",
        households / 2 * SLOTS as usize,
        count(conn, "readings"),
        loading.elapsed()
    );
    let config = common::config();
    let zone = ZoneId::parse("bench").expect("valid");
    for slot_index in 0..SLOTS {
        let rows_before =
            count(conn, "ledger_transactions") + count(conn, "ledger_entries") + count(conn, "statements");
        let slot = SlotId::new(slot_index * SLOT_LEN_MS).expect("valid");
        let started = Instant::now();
        let outcome =
            close_slot(conn, &zone, slot, &config, slot.end(SLOT_LEN_MS).0 + GRACE_MS).expect("the slot closes");
        let close_time = started.elapsed();
        let transactions = count(conn, &format!("ledger_transactions WHERE slot_start_ms = {}", slot.start_ms()));
        let statements = count(conn, &format!("statements WHERE slot_start_ms = {}", slot.start_ms()));
        let rows = count(conn, "ledger_transactions") + count(conn, "ledger_entries") + count(conn, "statements")
            - rows_before;
        let entries = rows - transactions - statements;
        let sample: String = diesel::sql_query(format!(
            "SELECT statement AS n FROM statements WHERE slot_start_ms = {} LIMIT 1",
            slot.start_ms()
        ))
        .get_result::<Json>(conn)
        .expect("a statement")
        .n;
        let copy_time = copy_reference(conn, transactions, entries, statements, &sample);
        let close_rate = rows as f64 / close_time.as_secs_f64();
        let copy_rate = rows as f64 / copy_time.as_secs_f64();
        println!(
            "slot {slot_index}: {} statements, {} trades; wrote {rows} ledger rows ({transactions} transactions, \
             {entries} entries, {statements} statements) in {close_time:.2?} = {close_rate:.0} rows/s; \
             COPY of the same rows {copy_time:.2?} = {copy_rate:.0} rows/s; ratio {:.2}x",
            outcome.settled().statements,
            outcome.settled().totals.trades,
            close_rate / copy_rate
        );
    }
}

#[derive(QueryableByName)]
struct Json {
    #[diesel(sql_type = diesel::sql_types::Text)]
    n: String,
}
