//! The exchange's reads and writes: registry look-ups, the group commit of readings and order
//! commands, trades (idempotent by trade id) and the command log replayed after a crash.
//! Every function is blocking and takes a connection; the service calls them through
//! [`Database::run`](gridex_store::Database::run) / [`Database::write`](gridex_store::Database::write).

use crate::ingest::{
    AccountState, BatteryMark, BatteryMarks, Counters, DeviceState, LastReading, RefusedReading, Replacement,
    TokenBucket, ZoneInfo,
};
use diesel::prelude::*;
use gridex_store::schema::{accounts, meter_replacements, order_commands, reading_rejections, readings, trades, zones};
use gridex_store::{DbConnection, DbError};
use protocol::{AccountId, Command, DeviceId, Reading, Side, Signed, SlotId, Trade, ZoneId};
use std::collections::HashMap;

pub mod leases;
pub mod plans;

/// Runs a multi-row insert on the concrete backend: diesel's `MultiConnection` cannot batch inserts.
macro_rules! execute_batch {
    ($conn:expr, $statement:expr) => {
        match $conn {
            DbConnection::Postgres(postgres) => $statement.execute(postgres),
            DbConnection::Sqlite(sqlite) => $statement.execute(sqlite),
        }
    };
}

fn to_i64(value: u64) -> Result<i64, DbError> {
    i64::try_from(value).map_err(|_| DbError::Invalid(format!("{value} does not fit a BIGINT")))
}

fn to_u64(value: i64) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|_| DbError::Invalid(format!("{value} is negative")))
}

/// Zones in the registry (all of them, or the ones named).
pub fn load_zones(conn: &mut DbConnection, only: &[ZoneId]) -> Result<HashMap<ZoneId, ZoneInfo>, DbError> {
    let rows: Vec<(String, i64)> = zones::table.select((zones::zone_id, zones::slot_len_ms)).load(conn)?;
    let mut found = HashMap::new();
    for (zone_id, slot_len_ms) in rows {
        let Ok(zone) = ZoneId::parse(&zone_id) else { continue };
        if only.is_empty() || only.contains(&zone) {
            found.insert(zone, ZoneInfo { slot_len_ms });
        }
    }
    Ok(found)
}

/// Refused readings kept per device (the newest): enough for a household to see a day of refusals
/// at one reading a minute and a flood's latest, while a device that floods cannot grow the table.
pub const READING_REJECTIONS_PER_DEVICE_MAX: i64 = 2_000;

/// Registered devices among `ids`, each with its last accepted reading and the meter replacements
/// registered after it.
pub fn load_devices(conn: &mut DbConnection, ids: &[DeviceId]) -> Result<Vec<(DeviceId, DeviceState)>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for every device: its registration, last reading and battery marks, each an
    // index probe (a correlated subquery per column). Per-device statements made a cold cache (an
    // exchange start, a zone taken over, many new devices) cost five round trips a device.
    let rows = device_rows(conn, ids)?;
    let mut replacements = replacements_of(conn, ids)?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        let (Ok(device), Ok(zone)) = (DeviceId::parse(&row.device_id), ZoneId::parse(&row.zone_id)) else { continue };
        let last = match &row.last_payload {
            Some(payload) => Some(last_reading_of(payload)?),
            None => None,
        };
        let mark = |ts_ms: Option<i64>, wh: Option<i64>| match (ts_ms, wh) {
            (Some(ts_ms), Some(wh)) => Some(BatteryMark { ts_ms, wh }),
            _ => None,
        };
        let battery = BatteryMarks {
            charge: mark(row.charge_ts_ms, row.charge_wh),
            discharge: mark(row.discharge_ts_ms, row.discharge_wh),
        };
        let after_ms = last.as_ref().map_or(i64::MIN, |last| last.ts_ms);
        let mut state = DeviceState { zone, nameplate_w: row.nameplate_w, last, replacements: Vec::new(), battery };
        let mine = replacements.remove(&row.device_id).unwrap_or_default();
        state.set_replacements(mine.into_iter().filter(|replacement| replacement.replaced_at_ms > after_ms).collect());
        found.push((device, state));
    }
    Ok(found)
}

/// A registered device with what [`load_devices`] needs of its readings.
#[derive(diesel::QueryableByName)]
struct DeviceRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    device_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    zone_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    nameplate_w: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    last_payload: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    charge_ts_ms: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    charge_wh: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    discharge_ts_ms: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    discharge_wh: Option<i64>,
}

/// The registered devices among `ids` with their latest reading (by `seq`) and the latest reading
/// with each battery counter, in one statement on either backend.
fn device_rows(conn: &mut DbConnection, ids: &[DeviceId]) -> Result<Vec<DeviceRow>, DbError> {
    // Device ids are 64 lowercase hex digits (`DeviceId::to_hex`), so they are safe as literals; one
    // statement text for both backends, whatever the number of ids.
    let list = ids.iter().map(|id| format!("'{}'", id.to_hex())).collect::<Vec<_>>().join(",");
    let latest = |column: &str, filter: &str| {
        format!(
            "(SELECT r.{column} FROM readings r WHERE r.device_id = d.device_id{filter} ORDER BY r.seq DESC LIMIT 1)"
        )
    };
    let charge = " AND r.battery_charge_wh IS NOT NULL";
    let discharge = " AND r.battery_discharge_wh IS NOT NULL";
    let sql = format!(
        "SELECT d.device_id AS device_id, d.zone_id AS zone_id, d.nameplate_w AS nameplate_w, \
         {} AS last_payload, {} AS charge_ts_ms, {} AS charge_wh, {} AS discharge_ts_ms, {} AS discharge_wh \
         FROM devices d WHERE d.device_id IN ({list})",
        latest("payload", ""),
        latest("ts_ms", charge),
        latest("battery_charge_wh", charge),
        latest("ts_ms", discharge),
        latest("battery_discharge_wh", discharge),
    );
    let query = diesel::sql_query(sql);
    Ok(match conn {
        DbConnection::Postgres(postgres) => query.load(postgres)?,
        DbConnection::Sqlite(sqlite) => query.load(sqlite)?,
    })
}

/// Every meter replacement of `ids`, by device, oldest first.
fn replacements_of(conn: &mut DbConnection, ids: &[DeviceId]) -> Result<HashMap<String, Vec<Replacement>>, DbError> {
    let hex: Vec<String> = ids.iter().map(DeviceId::to_hex).collect();
    let rows: Vec<(String, i64, i64, i64, Option<i64>)> = meter_replacements::table
        .filter(meter_replacements::device_id.eq_any(&hex))
        .order((meter_replacements::device_id.asc(), meter_replacements::replaced_at_ms.asc()))
        .select((
            meter_replacements::device_id,
            meter_replacements::replaced_at_ms,
            meter_replacements::new_import_wh,
            meter_replacements::new_export_wh,
            meter_replacements::new_pv_wh,
        ))
        .load(conn)?;
    let mut by_device: HashMap<String, Vec<Replacement>> = HashMap::new();
    for (device_id, replaced_at_ms, import_wh, export_wh, pv_wh) in rows {
        by_device
            .entry(device_id)
            .or_default()
            .push(Replacement { replaced_at_ms, new: Counters { import_wh, export_wh, pv_wh } });
    }
    Ok(by_device)
}

/// The meter replacements of each device in `ids` (oldest first) registered after `after_ms` of
/// that device: what the exchange reloads when a reading's counters do not continue from its cache.
pub fn load_replacements(
    conn: &mut DbConnection,
    ids: &[(DeviceId, Option<i64>)],
) -> Result<Vec<(DeviceId, Vec<Replacement>)>, DbError> {
    let mut found = Vec::with_capacity(ids.len());
    for (device, after_ms) in ids {
        found.push((*device, replacements_after(conn, &device.to_hex(), *after_ms)?));
    }
    Ok(found)
}

type ReplacementRow = (i64, i64, i64, Option<i64>);

fn replacements_after(
    conn: &mut DbConnection,
    device_id: &str,
    after_ms: Option<i64>,
) -> Result<Vec<Replacement>, DbError> {
    let rows: Vec<ReplacementRow> = meter_replacements::table
        .filter(meter_replacements::device_id.eq(device_id))
        .filter(meter_replacements::replaced_at_ms.gt(after_ms.unwrap_or(i64::MIN)))
        .order(meter_replacements::replaced_at_ms.asc())
        .select((
            meter_replacements::replaced_at_ms,
            meter_replacements::new_import_wh,
            meter_replacements::new_export_wh,
            meter_replacements::new_pv_wh,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(replaced_at_ms, import_wh, export_wh, pv_wh)| Replacement {
            replaced_at_ms,
            new: Counters { import_wh, export_wh, pv_wh },
        })
        .collect())
}

/// Records refused readings (one statement), then trims each device named to its newest
/// [`READING_REJECTIONS_PER_DEVICE_MAX`] (two statements per device in the batch, not per row).
/// A refusal already recorded under the same key (a resend refused in the same millisecond) is kept once.
pub fn insert_rejections(conn: &mut DbConnection, rows: &[RefusedReading]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(rows.len());
    let mut keys = std::collections::HashSet::with_capacity(rows.len());
    for row in rows {
        let device_id = row.device.to_hex();
        let seq = to_i64(row.seq)?;
        if !keys.insert((device_id.clone(), seq, row.received_ms)) {
            continue;
        }
        values.push((
            reading_rejections::device_id.eq(device_id),
            reading_rejections::seq.eq(seq),
            reading_rejections::ts_ms.eq(row.ts_ms),
            reading_rejections::reason.eq(row.rejection.reason.code()),
            reading_rejections::message.eq(row.rejection.message.clone()),
            reading_rejections::received_ms.eq(row.received_ms),
        ));
    }
    execute_batch!(conn, diesel::insert_into(reading_rejections::table).values(values).on_conflict_do_nothing())?;
    let mut devices: Vec<String> = rows.iter().map(|row| row.device.to_hex()).collect();
    devices.sort();
    devices.dedup();
    for device_id in devices {
        trim_rejections(conn, &device_id)?;
    }
    Ok(())
}

/// Deletes a device's refusals older than its newest [`READING_REJECTIONS_PER_DEVICE_MAX`]
/// (ordered by reception, then seq).
fn trim_rejections(conn: &mut DbConnection, device_id: &str) -> Result<(), DbError> {
    let oldest_kept: Option<(i64, i64)> = reading_rejections::table
        .filter(reading_rejections::device_id.eq(device_id))
        .order((reading_rejections::received_ms.desc(), reading_rejections::seq.desc()))
        .select((reading_rejections::received_ms, reading_rejections::seq))
        .offset(READING_REJECTIONS_PER_DEVICE_MAX - 1)
        .first(conn)
        .optional()?;
    let Some((received_ms, seq)) = oldest_kept else { return Ok(()) };
    diesel::delete(
        reading_rejections::table.filter(reading_rejections::device_id.eq(device_id)).filter(
            reading_rejections::received_ms
                .lt(received_ms)
                .or(reading_rejections::received_ms.eq(received_ms).and(reading_rejections::seq.lt(seq))),
        ),
    )
    .execute(conn)?;
    Ok(())
}

fn last_reading_of(payload: &str) -> Result<LastReading, DbError> {
    let signed = Signed::<Reading>::parse_as_encoded(payload.as_bytes())
        .map_err(|error| DbError::Invalid(format!("a stored reading does not parse: {error}")))?;
    Ok(LastReading::of(&signed))
}

/// True when the stored reading `(device, seq)` has the same signed content as `signed`.
pub fn same_reading_stored(conn: &mut DbConnection, signed: &Signed<Reading>) -> Result<bool, DbError> {
    let payload: Option<String> = readings::table
        .filter(readings::device_id.eq(signed.message.device.to_hex()))
        .filter(readings::seq.eq(to_i64(signed.message.seq)?))
        .select(readings::payload)
        .first(conn)
        .optional()?;
    Ok(payload
        .and_then(|payload| Signed::<Reading>::parse_as_encoded(payload.as_bytes()).ok())
        .is_some_and(|stored| stored.signing_bytes() == signed.signing_bytes()))
}

/// Whether the command log holds this very command (the same signed bytes) under its account and
/// nonce: a resend, as opposed to a different command replaying a used nonce.
pub fn same_command_stored(conn: &mut DbConnection, command: &Command) -> Result<bool, DbError> {
    let payload: Option<String> = order_commands::table
        .filter(order_commands::account_id.eq(command.account().to_hex()))
        .filter(order_commands::nonce.eq(to_i64(command.nonce())?))
        .select(order_commands::payload)
        .first(conn)
        .optional()?;
    Ok(payload
        .and_then(|payload| Command::parse(payload.as_bytes()).ok())
        .is_some_and(|stored| stored.signing_bytes() == command.signing_bytes()))
}

/// The zone `account` is registered to: `None` for an account not registered, `Some(None)` for one
/// that may trade in any zone.
pub fn account_zone(conn: &mut DbConnection, account: &AccountId) -> Result<Option<Option<ZoneId>>, DbError> {
    let zone: Option<Option<String>> = accounts::table
        .filter(accounts::account_id.eq(account.to_hex()))
        .select(accounts::zone_id)
        .first(conn)
        .optional()?;
    Ok(zone.map(|zone| zone.and_then(|zone| ZoneId::parse(&zone).ok())))
}

/// Registered accounts among `ids`, each with its highest committed nonce.
pub fn load_accounts(conn: &mut DbConnection, ids: &[AccountId]) -> Result<Vec<(AccountId, AccountState)>, DbError> {
    let hex: Vec<String> = ids.iter().map(AccountId::to_hex).collect();
    let rows: Vec<(String, Option<String>)> = accounts::table
        .filter(accounts::account_id.eq_any(&hex))
        .select((accounts::account_id, accounts::zone_id))
        .load(conn)?;
    let mut found = Vec::with_capacity(rows.len());
    for (account_id, zone_id) in rows {
        let Ok(account) = AccountId::parse(&account_id) else { continue };
        let zone = zone_id.and_then(|zone| ZoneId::parse(&zone).ok());
        let nonce_max: Option<i64> = order_commands::table
            .filter(order_commands::account_id.eq(&account_id))
            .select(diesel::dsl::max(order_commands::nonce))
            .first(conn)?;
        found.push((
            account,
            AccountState { zone, nonce_max: nonce_max.map(to_u64).transpose()?, commands: TokenBucket::default() },
        ));
    }
    Ok(found)
}

/// `count` new command sequence numbers, ascending, for the commands of one group commit; call it
/// inside the transaction that inserts them. On PostgreSQL they come from the `order_command_seq`
/// sequence, so several exchange instances never take the same number (a number of a transaction
/// that fails is skipped). SQLite has one writer (see `gridex_store::WriterLock`) and its write
/// transactions are serialized, so the log's maximum + 1 onwards is free.
pub fn take_command_seqs(conn: &mut DbConnection, count: usize) -> Result<Vec<u64>, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Taken {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let count_i64 = i64::try_from(count).map_err(|_| DbError::Invalid("too many commands in one group".to_owned()))?;
    match conn {
        DbConnection::Postgres(pg) => {
            let taken: Vec<Taken> =
                diesel::sql_query("SELECT nextval('order_command_seq') AS seq FROM generate_series(1, $1)")
                    .bind::<diesel::sql_types::BigInt, _>(count_i64)
                    .load(pg)?;
            let mut seqs = taken.into_iter().map(|taken| to_u64(taken.seq)).collect::<Result<Vec<_>, _>>()?;
            seqs.sort_unstable();
            Ok(seqs)
        }
        DbConnection::Sqlite(_) => {
            let max: Option<i64> =
                order_commands::table.select(diesel::dsl::max(order_commands::command_seq)).first(conn)?;
            let first = max.map(to_u64).transpose()?.map_or(1, |max| max + 1);
            Ok((first..first + count as u64).collect())
        }
    }
}

/// An accepted reading as stored.
#[derive(Debug, Clone)]
pub struct ReadingRow {
    pub signed: Signed<Reading>,
    pub payload: String,
    pub received_ms: i64,
}

/// Inserts new readings in one statement.
pub fn insert_readings(conn: &mut DbConnection, rows: &[ReadingRow]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(rows.len());
    for row in rows {
        let reading = &row.signed.message;
        values.push((
            readings::device_id.eq(reading.device.to_hex()),
            readings::seq.eq(to_i64(reading.seq)?),
            readings::ts_ms.eq(reading.ts_ms.0),
            readings::import_wh.eq(reading.import_wh.0),
            readings::export_wh.eq(reading.export_wh.0),
            readings::pv_wh.eq(reading.pv_wh.map(|pv| pv.0)),
            readings::power_w.eq(reading.power_w.0),
            readings::received_ms.eq(row.received_ms),
            readings::payload.eq(&row.payload),
            readings::battery_charge_wh.eq(reading.battery_charge_wh.map(|wh| wh.0)),
            readings::battery_discharge_wh.eq(reading.battery_discharge_wh.map(|wh| wh.0)),
            readings::battery_soc_permille.eq(reading.battery_soc_permille.map(i64::from)),
            readings::battery_capacity_wh.eq(reading.battery_capacity_wh.map(|wh| wh.0)),
        ));
    }
    execute_batch!(conn, diesel::insert_into(readings::table).values(values))?;
    Ok(())
}

/// A command of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    pub command_seq: u64,
    pub zone: ZoneId,
    pub slot: SlotId,
    pub account: AccountId,
    pub nonce: u64,
    pub kind: String,
    pub payload: String,
    pub received_ms: i64,
}

/// The log's `kind` of a command. The column's CHECK (shipped in migration 000001) allows `order`,
/// `cancel`, `replace` and `close`; a `cancel_all` is logged as a `cancel`, the family it belongs to.
/// Nothing reads the column to tell commands apart: recovery parses the payload, whose `type` says
/// `cancel_all`.
pub fn log_kind(command: &Command) -> &'static str {
    match command {
        Command::CancelAll(_) => <protocol::Cancel as protocol::WireMessage>::TYPE,
        other => other.type_name(),
    }
}

/// Of `rows`, those whose (account, nonce) the log already holds, each with whether the logged
/// command is the same signed command (a resend) or another one (a replay). Several instances on
/// PostgreSQL check an account's nonces each against its own cache, so an account trading in zones
/// owned by different instances can reach two of them with one nonce: the group commit looks first
/// and refuses the second, instead of failing on the log's unique key for ever.
pub fn logged_nonces(conn: &mut DbConnection, rows: &[CommandRow]) -> Result<Vec<(usize, bool)>, DbError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let accounts: Vec<String> = rows.iter().map(|row| row.account.to_hex()).collect();
    let nonces = rows.iter().map(|row| to_i64(row.nonce)).collect::<Result<Vec<_>, _>>()?;
    let logged: Vec<(String, i64, String)> = order_commands::table
        .filter(order_commands::account_id.eq_any(&accounts))
        .filter(order_commands::nonce.eq_any(&nonces))
        .select((order_commands::account_id, order_commands::nonce, order_commands::payload))
        .load(conn)?;
    let mut found = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let same_key =
            |(account, nonce, _): &&(String, i64, String)| *account == accounts[index] && *nonce == nonces[index];
        if let Some((_, _, payload)) = logged.iter().find(same_key) {
            let same = Command::parse(payload.as_bytes())
                .ok()
                .zip(Command::parse(row.payload.as_bytes()).ok())
                .is_some_and(|(logged, new)| logged.signing_bytes() == new.signing_bytes());
            found.push((index, same));
        }
    }
    Ok(found)
}

/// Appends commands to the log in one statement.
pub fn insert_commands(conn: &mut DbConnection, rows: &[CommandRow]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(rows.len());
    for row in rows {
        values.push((
            order_commands::command_seq.eq(to_i64(row.command_seq)?),
            order_commands::zone_id.eq(row.zone.as_str()),
            order_commands::slot_start_ms.eq(row.slot.start_ms()),
            order_commands::account_id.eq(row.account.to_hex()),
            order_commands::nonce.eq(to_i64(row.nonce)?),
            order_commands::kind.eq(&row.kind),
            order_commands::payload.eq(&row.payload),
            order_commands::received_ms.eq(row.received_ms),
        ));
    }
    execute_batch!(conn, diesel::insert_into(order_commands::table).values(values))?;
    Ok(())
}

/// The commands of a zone's books for slots starting after `slot_after_ms`, in log order.
pub fn load_commands(conn: &mut DbConnection, zone: &ZoneId, slot_after_ms: i64) -> Result<Vec<CommandRow>, DbError> {
    type Row = (i64, String, i64, String, i64, String, String, i64);
    let rows: Vec<Row> = order_commands::table
        .filter(order_commands::zone_id.eq(zone.as_str()))
        .filter(order_commands::slot_start_ms.gt(slot_after_ms))
        .order(order_commands::command_seq.asc())
        .select((
            order_commands::command_seq,
            order_commands::zone_id,
            order_commands::slot_start_ms,
            order_commands::account_id,
            order_commands::nonce,
            order_commands::kind,
            order_commands::payload,
            order_commands::received_ms,
        ))
        .load(conn)?;
    let mut commands = Vec::with_capacity(rows.len());
    for (command_seq, zone_id, slot_start_ms, account_id, nonce, kind, payload, received_ms) in rows {
        commands.push(CommandRow {
            command_seq: to_u64(command_seq)?,
            zone: ZoneId::parse(&zone_id).map_err(|error| DbError::Invalid(error.to_string()))?,
            slot: SlotId::new(slot_start_ms).map_err(|error| DbError::Invalid(error.to_string()))?,
            account: AccountId::parse(&account_id).map_err(|error| DbError::Invalid(error.to_string()))?,
            nonce: to_u64(nonce)?,
            kind,
            payload,
            received_ms,
        });
    }
    Ok(commands)
}

/// Inserts the trades that are not stored yet (trade ids are derived from the command log, so a
/// replay produces the same ids). Returns how many were new.
pub fn insert_trades(conn: &mut DbConnection, batch: &[(Trade, u64)]) -> Result<usize, DbError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(batch.len());
    for (trade, _) in batch {
        ids.push(to_i64(trade.trade_id)?);
    }
    let existing: Vec<i64> = trades::table.filter(trades::trade_id.eq_any(&ids)).select(trades::trade_id).load(conn)?;
    let mut values = Vec::new();
    for ((trade, command_seq), id) in batch.iter().zip(&ids) {
        if existing.contains(id) {
            continue;
        }
        values.push((
            trades::trade_id.eq(*id),
            trades::zone_id.eq(trade.zone.as_str()),
            trades::slot_start_ms.eq(trade.slot.start_ms()),
            trades::price_per_kwh.eq(trade.price_per_kwh.0),
            trades::qty_wh.eq(trade.qty_wh.0),
            trades::buyer_id.eq(trade.buyer.to_hex()),
            trades::buy_nonce.eq(to_i64(trade.buy_nonce)?),
            trades::seller_id.eq(trade.seller.to_hex()),
            trades::sell_nonce.eq(to_i64(trade.sell_nonce)?),
            trades::aggressor.eq(match trade.aggressor {
                Side::Buy => "buy",
                Side::Sell => "sell",
            }),
            trades::ts_ms.eq(trade.ts_ms.0),
            trades::command_seq.eq(to_i64(*command_seq)?),
        ));
    }
    let inserted = values.len();
    if inserted > 0 {
        execute_batch!(conn, diesel::insert_into(trades::table).values(values))?;
    }
    Ok(inserted)
}
