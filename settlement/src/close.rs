//! Closing a slot: read what was traded and metered, apply [`crate::rules`], write the ledger,
//! statements and slot record, and sign the Merkle root, in **one database transaction**.
//!
//! Exactly once: the `settlement_slots` row is the proof that a slot is closed and is written last in
//! the same transaction as everything else, so a crash leaves either nothing or the whole slot; a
//! second close finds the row and changes nothing. Every close first updates the single
//! `ledger_head` row, which serializes closers (a row lock on PostgreSQL, the write lock on SQLite)
//! and allocates transaction ids. Slots of a zone close in order, each only after its grace period.
//!
//! The same transaction settles the gaps of households whose data resumed and moves the metering
//! cursors (see [`crate::gaps`]).
//!
//! Writes are set-based: PostgreSQL gets each table in one binary `COPY`, SQLite multi-row `INSERT`s
//! of [`SQLITE_INSERT_ROWS_MAX`] rows.

use crate::gaps::{self, DeviceMeter, SlotContext};
use crate::metering::{counters_at, metered_energy, CounterSample};
use crate::registry;
use crate::rewards::{capped_pool, zone_share, RewardSchedule};
use crate::rules::{self, AccountMeter, Asset, SlotInput, SlotTotals, Tariff, TradeInput, TxDraft, ISSUER_ACCOUNT};
use crate::{SettlementConfig, SettlementError};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use gridex_store::schema::trades;
use gridex_store::schema::{
    ledger_entries, ledger_head, ledger_transactions, reward_epochs, settlement_slots, statements,
};
use gridex_store::DbConnection;
use protocol::{AccountId, MicroMoney, MicroTokens, PricePerKwh, Signed, SlotId, SlotRoot, TimestampMs, Wh, ZoneId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Rows per multi-row INSERT on SQLite: 1000 rows of at most 8 columns stay far below SQLite's
/// 32766 bound parameters, and larger statements gain nothing measurable.
pub const SQLITE_INSERT_ROWS_MAX: usize = 1_000;

/// Largest trade quantity settlement accepts: 10 MWh in one slot is far beyond any household or
/// small business, and keeps every sum of values far from overflowing i64.
pub const TRADE_QTY_WH_MAX: i64 = 10_000_000;
/// Largest energy one device may meter in one slot before it is treated as "no data" (a broken or
/// forged counter): 10 MWh, i.e. 40 MW for 15 minutes.
pub const METERED_WH_PER_SLOT_MAX: i64 = 10_000_000;

/// What a settled slot announces (the web server forwards it as the `settlement` SSE event and to
/// webhooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotSettled {
    pub zone: ZoneId,
    pub slot: SlotId,
    /// Merkle root of the statements, hex.
    pub root: String,
    pub statements: u64,
    pub totals: SlotTotals,
    pub closed_ms: i64,
    /// The zone's slot length: the slot ends at `slot + slot_len_ms`.
    pub slot_len_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Closed now.
    Settled(SlotSettled),
    /// Was closed before; nothing changed.
    AlreadySettled(SlotSettled),
}

impl SlotOutcome {
    pub fn settled(&self) -> &SlotSettled {
        match self {
            SlotOutcome::Settled(settled) | SlotOutcome::AlreadySettled(settled) => settled,
        }
    }
}

/// `COALESCE(SUM(amount), 0)` as a BIGINT on both backends (PostgreSQL's SUM of BIGINT is NUMERIC).
pub(crate) fn sum_amount() -> diesel::expression::SqlLiteral<BigInt> {
    diesel::dsl::sql::<BigInt>("CAST(COALESCE(SUM(amount), 0) AS BIGINT)")
}

/// Closes `slot` of `zone` exactly once (see the module docs). `now_ms` decides whether the grace
/// period has passed and stamps the signed root.
pub fn close_slot(
    conn: &mut DbConnection,
    zone: &ZoneId,
    slot: SlotId,
    config: &SettlementConfig,
    now_ms: i64,
) -> Result<SlotOutcome, SettlementError> {
    conn.transaction(|conn| close_in_transaction(conn, zone, slot, config, now_ms))
}

/// The next slot of `zone` to close: after the last settled one, or the one containing the zone's
/// creation time.
pub fn next_slot(conn: &mut DbConnection, zone: &registry::Zone) -> Result<SlotId, SettlementError> {
    let last: Option<i64> = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone.zone_id.as_str()))
        .select(diesel::dsl::max(settlement_slots::slot_start_ms))
        .first(conn)?;
    let start_ms = match last {
        Some(last) => last + zone.slot_len_ms,
        None => SlotId::containing(TimestampMs(zone.created_ms), zone.slot_len_ms).start_ms(),
    };
    SlotId::new(start_ms).map_err(|error| SettlementError::InvalidData(error.to_string()))
}

/// Locks the ledger head (serializing every writer of the ledger: a row lock on PostgreSQL, the
/// write lock on SQLite) and returns the next free transaction id. Call inside a transaction.
pub(crate) fn ledger_head_lock(conn: &mut DbConnection) -> Result<i64, SettlementError> {
    diesel::update(ledger_head::table).set(ledger_head::next_tx_id.eq(ledger_head::next_tx_id)).execute(conn)?;
    Ok(ledger_head::table.select(ledger_head::next_tx_id).first(conn)?)
}

/// Hands out transaction ids up to `next_tx_id` (exclusive), in the transaction that took the lock.
pub(crate) fn ledger_head_advance(conn: &mut DbConnection, next_tx_id: i64) -> Result<(), SettlementError> {
    diesel::update(ledger_head::table).set(ledger_head::next_tx_id.eq(next_tx_id)).execute(conn)?;
    Ok(())
}

fn close_in_transaction(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    slot: SlotId,
    config: &SettlementConfig,
    now_ms: i64,
) -> Result<SlotOutcome, SettlementError> {
    // Serialize with every other closer before reading anything.
    let first_tx_id = ledger_head_lock(conn)?;

    let zone = registry::zone(conn, zone_id)?.ok_or_else(|| SettlementError::UnknownZone(zone_id.to_string()))?;
    let slot_len_ms = zone.slot_len_ms;
    if !slot.is_aligned(slot_len_ms) {
        return Err(SettlementError::Misaligned { slot_ms: slot.start_ms(), slot_len_ms });
    }
    if let Some(settled) = load_settled(conn, zone_id, slot)? {
        return Ok(SlotOutcome::AlreadySettled(settled));
    }
    let end_ms = slot.end(slot_len_ms).0;
    let due_ms = end_ms + config.grace_ms;
    if now_ms < due_ms {
        return Err(SettlementError::NotDue { slot_ms: slot.start_ms(), due_ms });
    }
    let expected = next_slot(conn, &zone)?;
    if expected != slot {
        return Err(SettlementError::OutOfOrder { slot_ms: slot.start_ms(), expected_ms: expected.start_ms() });
    }
    // The slot's prices by the one rule the exchange's price band follows too (time-of-use bands).
    let tariff = gridex_store::tariff::tariff_for_slot(conn, zone_id, slot.start_ms())?
        .map(Tariff::from)
        .ok_or_else(|| SettlementError::NoTariff { zone: zone_id.to_string(), at_ms: slot.start_ms() })?;

    let (meters, devices) = load_meters(conn, zone_id, slot.start_ms(), end_ms, due_ms, config.reading_gap_ms_max)?;
    let trades = load_trades(conn, zone_id, slot)?;
    let schedule = registry::reward_schedule(conn)?;
    let carry_in: i64 = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone_id.as_str()))
        .filter(settlement_slots::slot_start_ms.eq(slot.start_ms() - slot_len_ms))
        .select(settlement_slots::tokens_carry)
        .first(conn)
        .optional()?
        .unwrap_or(0);
    let reward_pool = match schedule {
        Some(schedule) => {
            let issuer_balance: i64 = ledger_entries::table
                .filter(ledger_entries::account_id.eq(ISSUER_ACCOUNT))
                .filter(ledger_entries::asset.eq(Asset::Grid.as_str()))
                .select(sum_amount())
                .first(conn)?;
            let (rank, zones) = reward_rank(conn, zone_id, slot)?;
            let budget = zone_share(schedule.budget(slot.start_ms(), end_ms), rank, zones);
            capped_pool(budget, carry_in, -issuer_balance, schedule.max_supply)
        }
        None => carry_in,
    };

    let input = SlotInput {
        zone: zone_id.clone(),
        slot,
        tariff,
        utility_account: zone.utility_account.clone(),
        trades,
        meters,
        reward_pool,
    };
    let settlement = rules::settle(&input);
    let gap_plan = gaps::plan(conn, &SlotContext { zone: &zone, slot, cutoff_ms: due_ms }, &devices, &input.meters)?;
    let transactions: Vec<&TxDraft> =
        settlement.transactions.iter().chain(gap_plan.settlements.iter().map(|gap| &gap.tx)).collect();

    // Statements as canonical JSON and their Merkle leaves (account id order, as `rules` returns them).
    let (statement_json, leaves) = encode_statements(&settlement.statements)?;
    let root = hex::encode(protocol::merkle::root(&leaves));
    let slot_root = SlotRoot {
        zone: zone_id.clone(),
        slot,
        root: root.clone(),
        statements: settlement.statements.len() as u64,
        operator: AccountId::from_verifying_key(&config.operator_key.verifying_key()),
        ts_ms: TimestampMs(now_ms),
    };
    let signed_root =
        Signed::sign(slot_root, &config.operator_key).map_err(|error| SettlementError::Signing(error.to_string()))?;

    // Writes: ledger, statements, reward epoch, head, and the slot record last.
    let transaction_rows: Vec<TransactionRow> = transactions
        .iter()
        .enumerate()
        .map(|(index, tx)| TransactionRow {
            tx_id: first_tx_id + index as i64,
            zone_id: zone_id.as_str(),
            slot_start_ms: slot.start_ms(),
            kind: tx.kind.as_str(),
            reference: &tx.reference,
            created_ms: now_ms,
        })
        .collect();
    let entry_rows: Vec<EntryRow> = transactions
        .iter()
        .enumerate()
        .flat_map(|(index, tx)| {
            tx.entries.iter().enumerate().map(move |(line, entry)| EntryRow {
                tx_id: first_tx_id + index as i64,
                line: line as i64,
                account_id: &entry.account,
                asset: entry.asset.as_str(),
                kind: entry.kind.as_str(),
                amount: entry.amount,
            })
        })
        .collect();
    let account_hex: Vec<String> = settlement.statements.iter().map(|statement| statement.account.to_hex()).collect();
    let leaf_hex: Vec<String> = leaves.iter().map(hex::encode).collect();
    let statement_rows: Vec<StatementRow> = (0..settlement.statements.len())
        .map(|index| StatementRow {
            zone_id: zone_id.as_str(),
            slot_start_ms: slot.start_ms(),
            account_id: &account_hex[index],
            leaf_index: index as i64,
            leaf_hash: &leaf_hex[index],
            statement: &statement_json[index],
        })
        .collect();
    bulk_insert(conn, Table::Transactions(&transaction_rows))?;
    bulk_insert(conn, Table::Entries(&entry_rows))?;
    bulk_insert(conn, Table::Statements(&statement_rows))?;
    gaps::write(conn, zone_id, slot, &gap_plan, first_tx_id + settlement.transactions.len() as i64)?;
    if let Some(schedule) = schedule {
        let (rank, zones) = reward_rank(conn, zone_id, slot)?;
        record_emission(conn, zone_id, &schedule, slot.start_ms(), settlement.totals.tokens_emitted.0, (rank, zones))?;
    }
    let next_tx_id = first_tx_id + transaction_rows.len() as i64;
    ledger_head_advance(conn, next_tx_id)?;
    let totals = settlement.totals;
    let signed_json =
        String::from_utf8(signed_root.to_json()).map_err(|error| SettlementError::InvalidData(error.to_string()))?;
    let slot_row = SlotRow {
        zone_id: zone_id.as_str(),
        slot_start_ms: slot.start_ms(),
        slot_len_ms,
        status: "settled",
        totals: TotalsColumns::from(totals),
        first_tx_id,
        next_tx_id,
        entries: entry_rows.len() as i64,
        merkle_root: &root,
        root_signature: &hex::encode(signed_root.signature),
        operator: &slot_root_operator(config),
        signed_root: &signed_json,
        closed_ms: now_ms,
    };
    diesel::insert_into(settlement_slots::table).values(&slot_row).execute(conn)?;
    tracing::info!(
        zone = %zone_id, slot = slot.start_ms(), statements = totals.statements, trades = totals.trades,
        entries = entry_rows.len(), root = %root, "slot settled"
    );
    Ok(SlotOutcome::Settled(SlotSettled {
        zone: zone_id.clone(),
        slot,
        root,
        statements: totals.statements as u64,
        totals,
        closed_ms: now_ms,
        slot_len_ms,
    }))
}

/// Most threads used to encode and hash statements: the work is pure CPU and splits evenly; beyond
/// four the gain on a slot of 100,000 statements is below a tenth of a second.
const ENCODE_THREADS_MAX: usize = 4;
/// Below this many statements one thread is faster than starting others.
const ENCODE_PARALLEL_MIN: usize = 4_096;

type Encoded = (Vec<String>, Vec<[u8; 32]>);

/// Canonical JSON and Merkle leaf of each statement, in order, on up to [`ENCODE_THREADS_MAX`] threads.
fn encode_statements(statements: &[protocol::Statement]) -> Result<Encoded, SettlementError> {
    fn encode_chunk(chunk: &[protocol::Statement]) -> Result<Encoded, SettlementError> {
        let mut json = Vec::with_capacity(chunk.len());
        let mut leaves = Vec::with_capacity(chunk.len());
        for statement in chunk {
            let bytes = protocol::encode(statement).map_err(|error| SettlementError::InvalidData(error.to_string()))?;
            // Same as `protocol::merkle::leaf_hash`, without encoding twice (a test checks they agree).
            let mut hasher = Sha256::new();
            hasher.update([0u8]);
            hasher.update(&bytes);
            leaves.push(<[u8; 32]>::from(hasher.finalize()));
            json.push(String::from_utf8(bytes).map_err(|error| SettlementError::InvalidData(error.to_string()))?);
        }
        Ok((json, leaves))
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, ENCODE_THREADS_MAX);
    if threads == 1 || statements.len() < ENCODE_PARALLEL_MIN {
        return encode_chunk(statements);
    }
    let chunk_len = statements.len().div_ceil(threads);
    let parts: Vec<Result<Encoded, SettlementError>> = std::thread::scope(|scope| {
        let workers: Vec<_> =
            statements.chunks(chunk_len).map(|chunk| scope.spawn(move || encode_chunk(chunk))).collect();
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| Err(SettlementError::InvalidData("statement encoder panicked".into())))
            })
            .collect()
    });
    let (mut json, mut leaves) = (Vec::with_capacity(statements.len()), Vec::with_capacity(statements.len()));
    for part in parts {
        let (part_json, part_leaves) = part?;
        json.extend(part_json);
        leaves.extend(part_leaves);
    }
    Ok((json, leaves))
}

fn slot_root_operator(config: &SettlementConfig) -> String {
    hex::encode(config.operator_key.verifying_key().to_bytes())
}

/// One device with the readings that bracket the slot's boundaries (`sb`/`sa`: the last reading at or
/// before / first at or after the start; `eb`/`ea`: the same for the end), each within the gap and
/// received by the cutoff.
#[derive(QueryableByName)]
struct BracketRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    device_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    account_id: String,
    #[diesel(sql_type = BigInt)]
    registered_ms: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    sb_ts: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    sb_import: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    sb_export: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    sa_ts: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    sa_import: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    sa_export: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    eb_ts: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    eb_import: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    eb_export: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    ea_ts: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    ea_import: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    ea_export: Option<i64>,
}

impl BracketRow {
    /// The distinct bracketing readings, oldest first.
    fn samples(&self) -> Vec<CounterSample> {
        let brackets = [
            (self.sb_ts, self.sb_import, self.sb_export),
            (self.sa_ts, self.sa_import, self.sa_export),
            (self.eb_ts, self.eb_import, self.eb_export),
            (self.ea_ts, self.ea_import, self.ea_export),
        ];
        let mut samples: Vec<CounterSample> = brackets
            .into_iter()
            .filter_map(|bracket| match bracket {
                (Some(ts_ms), Some(import_wh), Some(export_wh)) => Some(CounterSample { ts_ms, import_wh, export_wh }),
                _ => None,
            })
            .collect();
        samples.sort_by_key(|sample| sample.ts_ms);
        samples.dedup_by_key(|sample| sample.ts_ms);
        samples
    }
}

/// One bracket probe per (boundary, side): `(boundary parameter, comparison, order)`.
const BRACKETS: [(&str, &str, &str, &str); 4] =
    [("sb", "1", "<=", "DESC"), ("sa", "1", ">=", "ASC"), ("eb", "2", "<=", "DESC"), ("ea", "2", ">=", "ASC")];

/// The bracketing readings of every grid meter of the zone (only grid meters are settled: PV,
/// battery and sub-meters are behind one, their energy is in its counters), with four index probes per device instead
/// of reading every reading in the slot (gateways report every second). Parameters: 1 start, 2 end,
/// 3 zone, 4 cutoff, 5 gap. PostgreSQL uses LATERAL joins; SQLite, which has none, finds each
/// bracket's rowid with a correlated subquery and joins it back.
fn bracket_sql(backend: gridex_store::Backend) -> String {
    let mut columns = String::new();
    let mut joins = String::new();
    for (name, boundary, comparison, order) in BRACKETS {
        let window = if comparison == "<=" {
            format!("r.ts_ms <= {{p}}{boundary} AND r.ts_ms >= {{p}}{boundary} - {{p}}5")
        } else {
            format!("r.ts_ms >= {{p}}{boundary} AND r.ts_ms <= {{p}}{boundary} + {{p}}5")
        };
        let probe = format!(
            "FROM readings r WHERE r.device_id = d.device_id AND {window} AND r.received_ms <= {{p}}4 \
             ORDER BY r.ts_ms {order} LIMIT 1"
        );
        columns.push_str(&format!(
            ", {name}.ts_ms AS {name}_ts, {name}.import_wh AS {name}_import, {name}.export_wh AS {name}_export"
        ));
        match backend {
            gridex_store::Backend::Postgres => joins.push_str(&format!(
                " LEFT JOIN LATERAL (SELECT r.ts_ms, r.import_wh, r.export_wh {probe}) {name} ON true"
            )),
            gridex_store::Backend::Sqlite => {
                joins.push_str(&format!(" LEFT JOIN readings {name} ON {name}.rowid = (SELECT r.rowid {probe})"))
            }
        }
    }
    let placeholder = match backend {
        gridex_store::Backend::Postgres => "$",
        gridex_store::Backend::Sqlite => "?",
    };
    format!(
        "SELECT d.device_id, d.account_id, d.registered_ms{columns} FROM devices d{joins} \
         WHERE d.zone_id = {{p}}3 AND d.registered_ms < {{p}}2 AND d.role = '{grid}' ORDER BY d.device_id",
        grid = registry::DeviceRole::Grid.as_str()
    )
    .replace("{p}", placeholder)
}

fn load_brackets(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    start_ms: i64,
    end_ms: i64,
    cutoff_ms: i64,
    gap_ms_max: i64,
) -> Result<Vec<BracketRow>, SettlementError> {
    use diesel::sql_types::Text;
    macro_rules! run {
        ($connection:expr, $backend:expr) => {
            diesel::sql_query(bracket_sql($backend))
                .bind::<BigInt, _>(start_ms)
                .bind::<BigInt, _>(end_ms)
                .bind::<Text, _>(zone_id.as_str())
                .bind::<BigInt, _>(cutoff_ms)
                .bind::<BigInt, _>(gap_ms_max)
                .load::<BracketRow>($connection)?
        };
    }
    Ok(match conn {
        DbConnection::Postgres(pg) => run!(pg, gridex_store::Backend::Postgres),
        DbConnection::Sqlite(sqlite) => run!(sqlite, gridex_store::Backend::Sqlite),
    })
}

type Meters = (BTreeMap<AccountId, AccountMeter>, Vec<DeviceMeter>);

/// Household grid meters of the zone over `[start_ms, end_ms)`, from readings received by
/// `cutoff_ms`, and each grid meter's counters at the slot start (other roles are not settled).
fn load_meters(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    start_ms: i64,
    end_ms: i64,
    cutoff_ms: i64,
    gap_ms_max: i64,
) -> Result<Meters, SettlementError> {
    let rows = load_brackets(conn, zone_id, start_ms, end_ms, cutoff_ms, gap_ms_max)?;
    let mut meters: BTreeMap<AccountId, AccountMeter> = BTreeMap::new();
    let mut devices = Vec::with_capacity(rows.len());
    for row in rows {
        let account = AccountId::parse(&row.account_id).map_err(|_| {
            SettlementError::InvalidData(format!("device {} belongs to `{}`", row.device_id, row.account_id))
        })?;
        let samples = row.samples();
        let energy = metered_energy(&samples, start_ms, end_ms, gap_ms_max).filter(|energy| {
            energy.import_wh <= METERED_WH_PER_SLOT_MAX && energy.export_wh <= METERED_WH_PER_SLOT_MAX
        });
        let meter = meters.entry(account).or_default();
        match energy {
            Some(energy) => {
                meter.import_wh += energy.import_wh;
                meter.export_wh += energy.export_wh;
            }
            None => meter.no_data = true,
        }
        devices.push(DeviceMeter {
            device_id: row.device_id,
            account,
            registered_ms: row.registered_ms,
            start: counters_at(&samples, start_ms, gap_ms_max),
        });
    }
    Ok((meters, devices))
}

fn load_trades(conn: &mut DbConnection, zone_id: &ZoneId, slot: SlotId) -> Result<Vec<TradeInput>, SettlementError> {
    let rows: Vec<(i64, i64, i64, String, String)> = trades::table
        .filter(trades::zone_id.eq(zone_id.as_str()))
        .filter(trades::slot_start_ms.eq(slot.start_ms()))
        .order(trades::trade_id)
        .select((trades::trade_id, trades::price_per_kwh, trades::qty_wh, trades::buyer_id, trades::seller_id))
        .load(conn)?;
    rows.into_iter()
        .map(|(trade_id, price, qty, buyer, seller)| {
            let parse = |text: &str| {
                AccountId::parse(text)
                    .map_err(|_| SettlementError::InvalidData(format!("trade {trade_id} names account `{text}`")))
            };
            if !(1..=registry::PRICE_PER_KWH_MAX).contains(&price) || !(1..=TRADE_QTY_WH_MAX).contains(&qty) {
                return Err(SettlementError::InvalidData(format!("trade {trade_id} has price {price}, qty {qty}")));
            }
            Ok(TradeInput {
                trade_id,
                price_per_kwh: PricePerKwh(price),
                qty_wh: Wh(qty),
                buyer: parse(&buyer)?,
                seller: parse(&seller)?,
            })
        })
        .collect()
}

/// The zone's rank among the zones sharing rewards in `slot` (those whose first slot starts at or
/// before it, by zone id), and how many they are.
fn reward_rank(conn: &mut DbConnection, zone_id: &ZoneId, slot: SlotId) -> Result<(usize, usize), SettlementError> {
    let sharing: Vec<ZoneId> = registry::list_zones(conn)?
        .into_iter()
        .filter(|zone| SlotId::containing(TimestampMs(zone.created_ms), zone.slot_len_ms) <= slot)
        .map(|zone| zone.zone_id)
        .collect();
    let rank = sharing
        .iter()
        .position(|zone| zone == zone_id)
        .ok_or_else(|| SettlementError::InvalidData(format!("zone {zone_id} has not started at slot {slot}")))?;
    Ok((rank, sharing.len()))
}

fn record_emission(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    schedule: &RewardSchedule,
    slot_start_ms: i64,
    minted: i64,
    (rank, zones): (usize, usize),
) -> Result<(), SettlementError> {
    let Some(epoch) = schedule.epoch_of(slot_start_ms) else {
        return Ok(());
    };
    let emitted: Option<i64> = reward_epochs::table
        .filter(reward_epochs::zone_id.eq(zone_id.as_str()))
        .filter(reward_epochs::epoch.eq(epoch))
        .select(reward_epochs::emitted)
        .first(conn)
        .optional()?;
    match emitted {
        Some(emitted) => {
            diesel::update(
                reward_epochs::table
                    .filter(reward_epochs::zone_id.eq(zone_id.as_str()))
                    .filter(reward_epochs::epoch.eq(epoch)),
            )
            .set(reward_epochs::emitted.eq(emitted + minted))
            .execute(conn)?;
        }
        None => {
            diesel::insert_into(reward_epochs::table)
                .values((
                    reward_epochs::zone_id.eq(zone_id.as_str()),
                    reward_epochs::epoch.eq(epoch),
                    reward_epochs::scheduled.eq(zone_share(schedule.emission_for_epoch(epoch), rank, zones)),
                    reward_epochs::emitted.eq(minted),
                ))
                .execute(conn)?;
        }
    }
    Ok(())
}

/// The stored columns of [`SlotTotals`], shared by the insert of a settled slot and its reads.
#[derive(Insertable, Queryable, Selectable)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(table_name = settlement_slots)]
struct TotalsColumns {
    statements: i64,
    trades: i64,
    traded_wh: i64,
    traded_value: i64,
    delivered_p2p_wh: i64,
    metered_import_wh: i64,
    metered_export_wh: i64,
    utility_supplied_wh: i64,
    utility_absorbed_wh: i64,
    utility_supplied_value: i64,
    utility_absorbed_value: i64,
    grid_fees: i64,
    protocol_fees: i64,
    household_savings: i64,
    tokens_emitted: i64,
    tokens_carry: i64,
    no_data_accounts: i64,
}

impl From<SlotTotals> for TotalsColumns {
    fn from(totals: SlotTotals) -> Self {
        Self {
            statements: totals.statements,
            trades: totals.trades,
            traded_wh: totals.traded_wh.0,
            traded_value: totals.traded_value.0,
            delivered_p2p_wh: totals.delivered_p2p_wh.0,
            metered_import_wh: totals.metered_import_wh.0,
            metered_export_wh: totals.metered_export_wh.0,
            utility_supplied_wh: totals.utility_supplied_wh.0,
            utility_absorbed_wh: totals.utility_absorbed_wh.0,
            utility_supplied_value: totals.utility_supplied_value.0,
            utility_absorbed_value: totals.utility_absorbed_value.0,
            grid_fees: totals.grid_fees.0,
            protocol_fees: totals.protocol_fees.0,
            household_savings: totals.household_savings.0,
            tokens_emitted: totals.tokens_emitted.0,
            tokens_carry: totals.tokens_carry.0,
            no_data_accounts: totals.no_data_accounts,
        }
    }
}

impl From<TotalsColumns> for SlotTotals {
    fn from(row: TotalsColumns) -> Self {
        Self {
            statements: row.statements,
            trades: row.trades,
            traded_wh: Wh(row.traded_wh),
            traded_value: MicroMoney(row.traded_value),
            delivered_p2p_wh: Wh(row.delivered_p2p_wh),
            metered_import_wh: Wh(row.metered_import_wh),
            metered_export_wh: Wh(row.metered_export_wh),
            utility_supplied_wh: Wh(row.utility_supplied_wh),
            utility_absorbed_wh: Wh(row.utility_absorbed_wh),
            utility_supplied_value: MicroMoney(row.utility_supplied_value),
            utility_absorbed_value: MicroMoney(row.utility_absorbed_value),
            grid_fees: MicroMoney(row.grid_fees),
            protocol_fees: MicroMoney(row.protocol_fees),
            household_savings: MicroMoney(row.household_savings),
            tokens_emitted: MicroTokens(row.tokens_emitted),
            tokens_carry: MicroTokens(row.tokens_carry),
            no_data_accounts: row.no_data_accounts,
        }
    }
}

/// A settled slot's announcement as stored.
#[derive(Queryable, Selectable)]
#[diesel(table_name = settlement_slots)]
struct SettledRow {
    closed_ms: i64,
    merkle_root: String,
    slot_len_ms: i64,
    #[diesel(embed)]
    totals: TotalsColumns,
}

/// The announcement of an already settled slot.
pub fn load_settled(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    slot: SlotId,
) -> Result<Option<SlotSettled>, SettlementError> {
    let row: Option<SettledRow> = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone_id.as_str()))
        .filter(settlement_slots::slot_start_ms.eq(slot.start_ms()))
        .select(SettledRow::as_select())
        .first(conn)
        .optional()?;
    Ok(row.map(|row| {
        let totals = SlotTotals::from(row.totals);
        SlotSettled {
            zone: zone_id.clone(),
            slot,
            root: row.merkle_root,
            statements: totals.statements as u64,
            totals,
            closed_ms: row.closed_ms,
            slot_len_ms: row.slot_len_ms,
        }
    }))
}

#[derive(Insertable)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(table_name = ledger_transactions)]
struct TransactionRow<'a> {
    tx_id: i64,
    zone_id: &'a str,
    slot_start_ms: i64,
    kind: &'static str,
    reference: &'a str,
    created_ms: i64,
}

#[derive(Insertable)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(table_name = ledger_entries)]
struct EntryRow<'a> {
    tx_id: i64,
    line: i64,
    account_id: &'a str,
    asset: &'static str,
    kind: &'static str,
    amount: i64,
}

#[derive(Insertable)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(table_name = statements)]
struct StatementRow<'a> {
    zone_id: &'a str,
    slot_start_ms: i64,
    account_id: &'a str,
    leaf_index: i64,
    leaf_hash: &'a str,
    statement: &'a str,
}

#[derive(Insertable)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(table_name = settlement_slots)]
struct SlotRow<'a> {
    zone_id: &'a str,
    slot_start_ms: i64,
    slot_len_ms: i64,
    status: &'static str,
    #[diesel(embed)]
    totals: TotalsColumns,
    first_tx_id: i64,
    next_tx_id: i64,
    entries: i64,
    merkle_root: &'a str,
    root_signature: &'a str,
    operator: &'a str,
    signed_root: &'a str,
    closed_ms: i64,
}

enum Table<'r, 'a> {
    Transactions(&'r [TransactionRow<'a>]),
    Entries(&'r [EntryRow<'a>]),
    Statements(&'r [StatementRow<'a>]),
}

macro_rules! insert_all {
    ($conn:expr, $table:expr, $rows:expr) => {{
        match $conn {
            DbConnection::Postgres(pg) => {
                diesel::copy_from($table).from_insertable($rows).execute(pg)?;
            }
            DbConnection::Sqlite(sqlite) => {
                for chunk in $rows.chunks(SQLITE_INSERT_ROWS_MAX) {
                    diesel::insert_into($table).values(chunk).execute(sqlite)?;
                }
            }
        }
    }};
}

/// Writes all rows of one table: one binary COPY on PostgreSQL, chunked multi-row INSERTs on SQLite.
fn bulk_insert(conn: &mut DbConnection, rows: Table<'_, '_>) -> Result<(), SettlementError> {
    match rows {
        Table::Transactions(rows) if !rows.is_empty() => insert_all!(conn, ledger_transactions::table, rows),
        Table::Entries(rows) if !rows.is_empty() => insert_all!(conn, ledger_entries::table, rows),
        Table::Statements(rows) if !rows.is_empty() => insert_all!(conn, statements::table, rows),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_encoded_in_parallel_match_the_protocol_leaf_hashes_in_order() {
        let statements: Vec<protocol::Statement> = (0..ENCODE_PARALLEL_MIN + 1001)
            .map(|index| {
                let mut statement = protocol::testing::sample_statement((index % 251) as u8);
                statement.bought_wh = Wh(index as i64);
                statement
            })
            .collect();
        let (json, leaves) = encode_statements(&statements).expect("encodes");
        assert_eq!(json.len(), statements.len());
        for (index, statement) in statements.iter().enumerate() {
            assert_eq!(leaves[index], protocol::merkle::leaf_hash(statement).expect("hash"), "leaf {index}");
            assert_eq!(json[index].as_bytes(), protocol::encode(statement).expect("encode").as_slice());
        }
    }
}
