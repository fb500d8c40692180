//! Reads of the exchange's tables (`readings`, `reading_rejections`, `trades`, `battery_plans`) behind the web API, so
//! the web layer never runs its own SQL on them. Blocking: call inside `Database::run`.

use diesel::prelude::*;
use gridex_store::schema::{reading_rejections, readings, trades};
use gridex_store::{DbConnection, DbError};
use protocol::{AccountId, PricePerKwh, Side, SlotId, TimestampMs, Trade, Wh, ZoneId};
use std::collections::HashMap;

/// An account's latest battery plan (PROTOCOL.md §4.7) as stored, with when the exchange received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    pub plan: protocol::BatteryPlan,
    pub received_ms: i64,
    /// The signed message as the account sent it (canonical JSON with `sig`), for proof.
    pub payload: String,
}

/// The account's latest stored battery plan, if it sent one.
pub fn latest_battery_plan(conn: &mut DbConnection, account: &AccountId) -> Result<Option<StoredPlan>, DbError> {
    use gridex_store::schema::battery_plans;
    let row: Option<(String, i64)> = battery_plans::table
        .filter(battery_plans::account_id.eq(account.to_hex()))
        .select((battery_plans::payload, battery_plans::received_ms))
        .first(conn)
        .optional()?;
    let Some((payload, received_ms)) = row else { return Ok(None) };
    let signed = protocol::Signed::<protocol::BatteryPlan>::parse(payload.as_bytes())
        .map_err(|error| DbError::Invalid(format!("a stored battery plan does not parse: {error}")))?;
    Ok(Some(StoredPlan { plan: signed.message, received_ms, payload }))
}

/// A stored trade's columns, in [`Trade`]'s order.
pub type TradeRow = (i64, String, i64, i64, i64, String, i64, String, i64, String, i64);

/// The trade a stored row describes; a row that does not parse is invalid data, not a panic.
pub fn trade_from_row(row: TradeRow) -> Result<Trade, DbError> {
    let (trade_id, zone, slot, price, qty, buyer, buy_nonce, seller, sell_nonce, aggressor, ts_ms) = row;
    let bad = |what: &str| DbError::Invalid(format!("trade {trade_id} has an invalid {what}"));
    Ok(Trade {
        trade_id: u64::try_from(trade_id).map_err(|_| bad("id"))?,
        zone: ZoneId::parse(&zone).map_err(|_| bad("zone"))?,
        slot: SlotId::new(slot).map_err(|_| bad("slot"))?,
        price_per_kwh: PricePerKwh(price),
        qty_wh: Wh(qty),
        buyer: AccountId::parse(&buyer).map_err(|_| bad("buyer"))?,
        seller: AccountId::parse(&seller).map_err(|_| bad("seller"))?,
        buy_nonce: u64::try_from(buy_nonce).map_err(|_| bad("nonce"))?,
        sell_nonce: u64::try_from(sell_nonce).map_err(|_| bad("nonce"))?,
        aggressor: if aggressor == "buy" { Side::Buy } else { Side::Sell },
        ts_ms: TimestampMs(ts_ms),
    })
}

/// The zone's trades newest first (by trade id, unique and the primary key), only those of the slot
/// starting at `slot_start_ms` when given, only those older than the trade `before_trade_id` when
/// given (keyset paging: the previous page's last trade), at most `limit`.
pub fn trades_page(
    conn: &mut DbConnection,
    zone: &ZoneId,
    slot_start_ms: Option<i64>,
    before_trade_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Trade>, DbError> {
    let mut query = trades::table.filter(trades::zone_id.eq(zone.as_str())).into_boxed();
    if let Some(slot_start_ms) = slot_start_ms {
        query = query.filter(trades::slot_start_ms.eq(slot_start_ms));
    }
    if let Some(before) = before_trade_id {
        query = query.filter(trades::trade_id.lt(before));
    }
    let rows: Vec<TradeRow> = query
        .order(trades::trade_id.desc())
        .limit(limit)
        .select((
            trades::trade_id,
            trades::zone_id,
            trades::slot_start_ms,
            trades::price_per_kwh,
            trades::qty_wh,
            trades::buyer_id,
            trades::buy_nonce,
            trades::seller_id,
            trades::sell_nonce,
            trades::aggressor,
            trades::ts_ms,
        ))
        .load(conn)?;
    rows.into_iter().map(trade_from_row).collect()
}

/// One slot's trades summed up: open (its first trade's price by trade id), high, low, close (its
/// last trade's), volume and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPrices {
    pub slot_start_ms: i64,
    pub open_per_kwh: i64,
    pub high_per_kwh: i64,
    pub low_per_kwh: i64,
    pub close_per_kwh: i64,
    pub volume_wh: i64,
    pub trades: i64,
}

/// Trade ids looked up in one statement at most when reading open and close prices (well under
/// SQLite's and PostgreSQL's bind-parameter limits).
const PRICE_IDS_PER_QUERY_MAX: usize = 1_000;

/// Every trade of the zone in slots within `[from, to)` summed up per slot, by slot: the database
/// aggregates, so the answer holds one row per slot however many trades there are.
pub fn slot_prices(
    conn: &mut DbConnection,
    zone: &ZoneId,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<SlotPrices>, DbError> {
    use diesel::dsl::{count_star, max, min, sql};
    use diesel::sql_types::BigInt;
    type Group = (i64, Option<i64>, Option<i64>, i64, i64, Option<i64>, Option<i64>);
    let groups: Vec<Group> = trades::table
        .filter(trades::zone_id.eq(zone.as_str()))
        .filter(trades::slot_start_ms.ge(from_ms))
        .filter(trades::slot_start_ms.lt(to_ms))
        .group_by(trades::slot_start_ms)
        .order(trades::slot_start_ms.asc())
        .select((
            trades::slot_start_ms,
            max(trades::price_per_kwh),
            min(trades::price_per_kwh),
            // PostgreSQL's SUM of BIGINT is NUMERIC; the cast makes it BIGINT on both backends.
            sql::<BigInt>("CAST(SUM(qty_wh) AS BIGINT)"),
            count_star(),
            min(trades::trade_id),
            max(trades::trade_id),
        ))
        .load(conn)?;
    let mut ids: Vec<i64> = groups.iter().flat_map(|group| [group.5, group.6]).flatten().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut price_of: HashMap<i64, i64> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(PRICE_IDS_PER_QUERY_MAX) {
        let rows: Vec<(i64, i64)> = trades::table
            .filter(trades::trade_id.eq_any(chunk))
            .select((trades::trade_id, trades::price_per_kwh))
            .load(conn)?;
        price_of.extend(rows);
    }
    let price = |id: Option<i64>| {
        id.and_then(|id| price_of.get(&id).copied())
            .ok_or_else(|| DbError::Invalid("a slot's first or last trade vanished while read".to_owned()))
    };
    groups
        .into_iter()
        .map(|(slot_start_ms, high, low, volume_wh, trades, first, last)| {
            Ok(SlotPrices {
                slot_start_ms,
                open_per_kwh: price(first)?,
                high_per_kwh: high.unwrap_or_default(),
                low_per_kwh: low.unwrap_or_default(),
                close_per_kwh: price(last)?,
                volume_wh,
                trades,
            })
        })
        .collect()
}

/// An accepted reading's columns; the `battery_*` ones only for a version 2 reading (a home battery).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct ReadingRow {
    pub device: String,
    pub seq: i64,
    pub ts_ms: i64,
    pub import_wh: i64,
    pub export_wh: i64,
    pub pv_wh: Option<i64>,
    pub power_w: i64,
    pub battery_charge_wh: Option<i64>,
    pub battery_discharge_wh: Option<i64>,
    pub battery_soc_permille: Option<i64>,
    pub battery_capacity_wh: Option<i64>,
}

/// Readings of `device_ids` taken within `[from, to)`, ordered by `(device, seq)`, from the reading
/// `(device, seq)` of `from_key` on (itself included), at most `limit`.
pub fn readings_by_device(
    conn: &mut DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    from_key: Option<(&str, i64)>,
    limit: i64,
) -> Result<Vec<ReadingRow>, DbError> {
    let mut query = readings::table
        .filter(readings::device_id.eq_any(device_ids))
        .filter(readings::ts_ms.ge(from_ms))
        .filter(readings::ts_ms.lt(to_ms))
        .into_boxed();
    if let Some((device, seq)) = from_key {
        query = query.filter(
            readings::device_id
                .gt(device.to_owned())
                .or(readings::device_id.eq(device.to_owned()).and(readings::seq.ge(seq))),
        );
    }
    Ok(query
        .order((readings::device_id.asc(), readings::seq.asc()))
        .limit(limit)
        .select((
            readings::device_id,
            readings::seq,
            readings::ts_ms,
            readings::import_wh,
            readings::export_wh,
            readings::pv_wh,
            readings::power_w,
            readings::battery_charge_wh,
            readings::battery_discharge_wh,
            readings::battery_soc_permille,
            readings::battery_capacity_wh,
        ))
        .load(conn)?)
}

/// A refused reading as recorded: device, seq, ts_ms, reason, message, received_ms.
pub type RejectionRow = (String, i64, i64, String, String, i64);

/// The refusals of `device_ids` received within `[from, to)`, newest first, at most `limit`.
pub fn reading_rejections(
    conn: &mut DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    limit: i64,
) -> Result<Vec<RejectionRow>, DbError> {
    Ok(reading_rejections::table
        .filter(reading_rejections::device_id.eq_any(device_ids))
        .filter(reading_rejections::received_ms.ge(from_ms))
        .filter(reading_rejections::received_ms.lt(to_ms))
        .order((reading_rejections::received_ms.desc(), reading_rejections::seq.desc()))
        .limit(limit)
        .select((
            reading_rejections::device_id,
            reading_rejections::seq,
            reading_rejections::ts_ms,
            reading_rejections::reason,
            reading_rejections::message,
            reading_rejections::received_ms,
        ))
        .load(conn)?)
}

/// When each of `device_ids` last had a reading received at or before `until_ms` (devices without
/// one are absent).
pub fn last_received_ms(
    conn: &mut DbConnection,
    device_ids: &[String],
    until_ms: i64,
) -> Result<HashMap<String, Option<i64>>, DbError> {
    let last: Vec<(String, Option<i64>)> = readings::table
        .filter(readings::device_id.eq_any(device_ids))
        .filter(readings::received_ms.le(until_ms))
        .group_by(readings::device_id)
        .select((readings::device_id, diesel::dsl::max(readings::received_ms)))
        .load(conn)?;
    Ok(last.into_iter().collect())
}
