//! Read-only queries behind the web API: balances, statements with Merkle proofs, slot reports,
//! token supply, zone statistics and price history. All return JSON-able structs.

use crate::close::sum_amount;
use crate::registry;
use crate::rewards::RewardSchedule;
use crate::rules::{Asset, SlotTotals, ISSUER_ACCOUNT};
use crate::SettlementError;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use gridex_store::schema::trades;
use gridex_store::schema::{gap_settlements, ledger_entries, settlement_slots, statements};
use gridex_store::{DbConnection, DbError};
use protocol::merkle::{self, ProofStep};
use protocol::{AccountId, MicroMoney, MicroTokens, PricePerKwh, SlotId, Statement, Wh, ZoneId};
use serde::Serialize;

/// Most statements one request returns: a day of 15-minute slots in ten zones.
pub const STATEMENTS_LIMIT_MAX: i64 = 1_000;
/// Most price bars one request returns: a year of 15-minute slots.
pub const PRICE_BARS_MAX: usize = 35_040;

/// An account's balances from its ledger entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The JSON has these fields only: `additionalProperties: false` in the OpenAPI document.
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Balances {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub account: String,
    /// Micro-units of money.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub money: MicroMoney,
    /// Micro-GRID tokens.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub grid: MicroTokens,
}

fn asset_sum(conn: &mut DbConnection, account: Option<&str>, asset: Asset) -> Result<i64, SettlementError> {
    let mut query = ledger_entries::table.filter(ledger_entries::asset.eq(asset.as_str())).into_boxed();
    if let Some(account) = account {
        query = query.filter(ledger_entries::account_id.eq(account.to_owned()));
    }
    Ok(query.select(sum_amount()).first(conn)?)
}

/// An account's balances, derived from its ledger entries.
pub fn balances(conn: &mut DbConnection, account: &str) -> Result<Balances, SettlementError> {
    Ok(Balances {
        account: account.to_owned(),
        money: MicroMoney(asset_sum(conn, Some(account), Asset::Money)?),
        grid: MicroTokens(asset_sum(conn, Some(account), Asset::Grid)?),
    })
}

/// Every account with entries and its balances (for audits and tests).
pub fn all_balances(conn: &mut DbConnection) -> Result<Vec<Balances>, SettlementError> {
    let rows: Vec<(String, String, i64)> = ledger_entries::table
        .group_by((ledger_entries::account_id, ledger_entries::asset))
        .select((ledger_entries::account_id, ledger_entries::asset, sum_amount()))
        .order((ledger_entries::account_id, ledger_entries::asset))
        .load(conn)?;
    let mut balances: Vec<Balances> = Vec::new();
    for (account, asset, amount) in rows {
        if balances.last().is_none_or(|last| last.account != account) {
            balances.push(Balances { account: account.clone(), money: MicroMoney(0), grid: MicroTokens(0) });
        }
        if let Some(last) = balances.last_mut() {
            match asset.as_str() {
                "money" => last.money = MicroMoney(amount),
                _ => last.grid = MicroTokens(amount),
            }
        }
    }
    Ok(balances)
}

/// The sum of each asset over all accounts: always zero in a balanced ledger.
pub fn asset_totals(conn: &mut DbConnection) -> Result<(MicroMoney, MicroTokens), SettlementError> {
    Ok((MicroMoney(asset_sum(conn, None, Asset::Money)?), MicroTokens(asset_sum(conn, None, Asset::Grid)?)))
}

fn parse_statement(json: &str) -> Result<Statement, SettlementError> {
    protocol::decode::<Statement>(json.as_bytes())
        .map_err(|error| SettlementError::InvalidData(format!("stored statement: {error}")))
}

/// The account's latest statements, newest first (at most [`STATEMENTS_LIMIT_MAX`]).
pub fn statements(conn: &mut DbConnection, account: &AccountId, limit: i64) -> Result<Vec<Statement>, SettlementError> {
    statements_page(conn, account, None, limit)
}

/// The account's statements newest first, by `(slot_start_ms desc, zone_id asc)` (unique per
/// account: the table's key is zone, slot and account), after the statement `after` (keyset
/// paging: the previous page's last `(slot_start_ms, zone_id)`), at most `limit` (and at most
/// [`STATEMENTS_LIMIT_MAX`]).
pub fn statements_page(
    conn: &mut DbConnection,
    account: &AccountId,
    after: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<Statement>, SettlementError> {
    let mut query = statements::table.filter(statements::account_id.eq(account.to_hex())).into_boxed();
    if let Some((slot_start_ms, zone)) = after {
        query = query.filter(
            statements::slot_start_ms
                .lt(slot_start_ms)
                .or(statements::slot_start_ms.eq(slot_start_ms).and(statements::zone_id.gt(zone.to_owned()))),
        );
    }
    let rows: Vec<String> = query
        .order((statements::slot_start_ms.desc(), statements::zone_id))
        .limit(limit.clamp(0, STATEMENTS_LIMIT_MAX))
        .select(statements::statement)
        .load(conn)?;
    rows.iter().map(|json| parse_statement(json)).collect()
}

/// A statement with everything needed to check it offline: the inclusion proof, the root, and the
/// operator's signed root (`signed_root` is the protocol `slot_root` message, verifiable with
/// `Signed::<SlotRoot>::parse(..).verify()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementProof {
    pub statement: Statement,
    pub leaf_index: u64,
    pub proof: Vec<ProofStep>,
    pub root: String,
    pub root_signature: String,
    pub operator: String,
    pub signed_root: String,
}

struct SlotHeader {
    slot_len_ms: i64,
    root: String,
    root_signature: String,
    operator: String,
    signed_root: String,
    closed_ms: i64,
}

fn slot_header(conn: &mut DbConnection, zone: &ZoneId, slot: SlotId) -> Result<Option<SlotHeader>, SettlementError> {
    let row: Option<(i64, String, String, String, String, i64)> = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone.as_str()))
        .filter(settlement_slots::slot_start_ms.eq(slot.start_ms()))
        .select((
            settlement_slots::slot_len_ms,
            settlement_slots::merkle_root,
            settlement_slots::root_signature,
            settlement_slots::operator,
            settlement_slots::signed_root,
            settlement_slots::closed_ms,
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|(slot_len_ms, root, root_signature, operator, signed_root, closed_ms)| SlotHeader {
        slot_len_ms,
        root,
        root_signature,
        operator,
        signed_root,
        closed_ms,
    }))
}

/// The operator's signed root of a settled slot (the protocol `slot_root` message as sent), if the
/// slot is settled.
pub fn signed_root(conn: &mut DbConnection, zone: &ZoneId, slot: SlotId) -> Result<Option<String>, SettlementError> {
    Ok(slot_header(conn, zone, slot)?.map(|header| header.signed_root))
}

/// The account's statement for a settled slot with its Merkle proof; `None` if the slot is not
/// settled or has no statement for the account.
pub fn statement_with_proof(
    conn: &mut DbConnection,
    zone: &ZoneId,
    slot: SlotId,
    account: &AccountId,
) -> Result<Option<StatementProof>, SettlementError> {
    let Some(header) = slot_header(conn, zone, slot)? else {
        return Ok(None);
    };
    let row: Option<(i64, String)> = statements::table
        .filter(statements::zone_id.eq(zone.as_str()))
        .filter(statements::slot_start_ms.eq(slot.start_ms()))
        .filter(statements::account_id.eq(account.to_hex()))
        .select((statements::leaf_index, statements::statement))
        .first(conn)
        .optional()?;
    let Some((leaf_index, json)) = row else {
        return Ok(None);
    };
    let leaf_rows: Vec<String> = statements::table
        .filter(statements::zone_id.eq(zone.as_str()))
        .filter(statements::slot_start_ms.eq(slot.start_ms()))
        .order(statements::leaf_index)
        .select(statements::leaf_hash)
        .load(conn)?;
    let mut leaves = Vec::with_capacity(leaf_rows.len());
    for text in &leaf_rows {
        let mut leaf = [0u8; 32];
        hex::decode_to_slice(text, &mut leaf).map_err(|_| SettlementError::InvalidData("leaf hash".to_owned()))?;
        leaves.push(leaf);
    }
    let index = usize::try_from(leaf_index).map_err(|_| SettlementError::InvalidData("leaf index".to_owned()))?;
    let proof = merkle::proof(&leaves, index).ok_or_else(|| SettlementError::InvalidData("leaf index".to_owned()))?;
    Ok(Some(StatementProof {
        statement: parse_statement(&json)?,
        leaf_index: leaf_index as u64,
        proof,
        root: header.root,
        root_signature: header.root_signature,
        operator: header.operator,
        signed_root: header.signed_root,
    }))
}

/// Everything about a settled slot (the web renders it as JSON or CSV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    pub zone: ZoneId,
    pub slot: SlotId,
    pub slot_len_ms: i64,
    pub closed_ms: i64,
    pub root: String,
    pub root_signature: String,
    pub operator: String,
    pub totals: SlotTotals,
    /// In Merkle leaf order (account id).
    pub statements: Vec<Statement>,
    /// Gap energy settled in this slot's close, by account id: separate lines next to the statements
    /// (a statement covers the slot only; its Merkle leaf and the signed root are unchanged).
    pub gaps: Vec<GapLine>,
}

/// A household's gap energy settled late, in the close of `slot` (table `gap_settlements`; its
/// ledger transaction has kind `gap`). See `rules`, "Gaps".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The JSON has these fields only: `additionalProperties: false` in the OpenAPI document.
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct GapLine {
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$"))]
    pub zone: ZoneId,
    /// The slot whose close settled the gap; the gap is `[gap_start_ms, slot)`.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub slot: SlotId,
    pub account: String,
    pub gap_start_ms: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub import_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub export_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub bought_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub retail_price_per_kwh: PricePerKwh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub feed_in_price_per_kwh: PricePerKwh,
    /// Paid by the household (negative).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub charged: MicroMoney,
    /// Paid to the household.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub credited: MicroMoney,
    pub tx_id: i64,
}

/// One `gap_settlements` row as stored.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = gap_settlements)]
struct GapRow {
    zone_id: String,
    slot_start_ms: i64,
    account_id: String,
    gap_start_ms: i64,
    import_wh: i64,
    export_wh: i64,
    bought_wh: i64,
    retail_price_per_kwh: i64,
    feed_in_price_per_kwh: i64,
    charged: i64,
    credited: i64,
    tx_id: i64,
}

fn gap_line(row: GapRow) -> Result<GapLine, SettlementError> {
    Ok(GapLine {
        zone: ZoneId::parse(&row.zone_id).map_err(|error| SettlementError::InvalidData(error.to_string()))?,
        slot: SlotId::new(row.slot_start_ms).map_err(|error| SettlementError::InvalidData(error.to_string()))?,
        account: row.account_id,
        gap_start_ms: row.gap_start_ms,
        import_wh: Wh(row.import_wh),
        export_wh: Wh(row.export_wh),
        bought_wh: Wh(row.bought_wh),
        retail_price_per_kwh: PricePerKwh(row.retail_price_per_kwh),
        feed_in_price_per_kwh: PricePerKwh(row.feed_in_price_per_kwh),
        charged: MicroMoney(-row.charged),
        credited: MicroMoney(row.credited),
        tx_id: row.tx_id,
    })
}

/// The account's latest gap lines, newest first (at most [`STATEMENTS_LIMIT_MAX`]).
pub fn gap_lines(conn: &mut DbConnection, account: &AccountId, limit: i64) -> Result<Vec<GapLine>, SettlementError> {
    let rows: Vec<GapRow> = gap_settlements::table
        .filter(gap_settlements::account_id.eq(account.to_hex()))
        .order((gap_settlements::slot_start_ms.desc(), gap_settlements::zone_id))
        .limit(limit.clamp(0, STATEMENTS_LIMIT_MAX))
        .select(GapRow::as_select())
        .load(conn)?;
    rows.into_iter().map(gap_line).collect()
}

/// The report of a settled slot; `None` if it is not settled.
pub fn slot_report(
    conn: &mut DbConnection,
    zone: &ZoneId,
    slot: SlotId,
) -> Result<Option<SlotReport>, SettlementError> {
    let Some(header) = slot_header(conn, zone, slot)? else {
        return Ok(None);
    };
    let Some(settled) = crate::close::load_settled(conn, zone, slot)? else {
        return Ok(None);
    };
    let rows: Vec<String> = statements::table
        .filter(statements::zone_id.eq(zone.as_str()))
        .filter(statements::slot_start_ms.eq(slot.start_ms()))
        .order(statements::leaf_index)
        .select(statements::statement)
        .load(conn)?;
    let gap_rows: Vec<GapRow> = gap_settlements::table
        .filter(gap_settlements::zone_id.eq(zone.as_str()))
        .filter(gap_settlements::slot_start_ms.eq(slot.start_ms()))
        .order(gap_settlements::account_id)
        .select(GapRow::as_select())
        .load(conn)?;
    Ok(Some(SlotReport {
        zone: zone.clone(),
        slot,
        slot_len_ms: header.slot_len_ms,
        closed_ms: header.closed_ms,
        root: header.root,
        root_signature: header.root_signature,
        operator: header.operator,
        totals: settled.totals,
        statements: rows.iter().map(|json| parse_statement(json)).collect::<Result<_, _>>()?,
        gaps: gap_rows.into_iter().map(gap_line).collect::<Result<_, _>>()?,
    }))
}

/// GRID in circulation and the schedule at `now_ms` (all micro-GRID; the emission is shared by all zones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenSupply {
    pub supply: MicroTokens,
    pub max_supply: MicroTokens,
    pub epoch: i64,
    pub emission_per_epoch: MicroTokens,
    pub next_halving_epoch: i64,
    pub schedule: Option<RewardSchedule>,
}

pub fn token_supply(conn: &mut DbConnection, now_ms: i64) -> Result<TokenSupply, SettlementError> {
    let issuer = asset_sum_for_issuer(conn)?;
    let schedule = registry::reward_schedule(conn)?;
    let epoch = schedule.and_then(|schedule| schedule.epoch_of(now_ms)).unwrap_or(0);
    Ok(TokenSupply {
        supply: MicroTokens(-issuer),
        max_supply: MicroTokens(schedule.map_or(0, |schedule| schedule.max_supply)),
        epoch,
        emission_per_epoch: MicroTokens(schedule.map_or(0, |schedule| schedule.emission_for_epoch(epoch))),
        next_halving_epoch: schedule.map_or(0, |schedule| schedule.next_halving_epoch(epoch)),
        schedule,
    })
}

fn asset_sum_for_issuer(conn: &mut DbConnection) -> Result<i64, SettlementError> {
    asset_sum(conn, Some(ISSUER_ACCOUNT), Asset::Grid)
}

/// A zone's settled energy and money over `[from_ms, to_ms)` of slot starts.
///
/// `self_sufficiency_bps` = meter-verified peer-to-peer energy ÷ (that + energy supplied by the
/// utility), in basis points: the share of the zone's purchased consumption that came from neighbours.
/// `household_savings` = what households would have paid at retail / been paid at feed-in for all
/// metered energy, minus what they actually paid (micro-units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The JSON has these fields only: `additionalProperties: false` in the OpenAPI document.
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct ZoneStats {
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$"))]
    pub zone: ZoneId,
    /// Share of the zone's consumption met by its own households, in basis points.
    pub self_sufficiency_bps: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub p2p_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub traded_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub utility_supplied_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub utility_absorbed_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub household_savings: MicroMoney,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub tokens_emitted: MicroTokens,
    pub settled_slots: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub last_settled_slot: Option<SlotId>,
}

fn sum_column(name: &'static str) -> diesel::expression::SqlLiteral<BigInt> {
    diesel::dsl::sql::<BigInt>(&format!("CAST(COALESCE(SUM({name}), 0) AS BIGINT)"))
}

pub fn zone_stats(
    conn: &mut DbConnection,
    zone: &ZoneId,
    from_ms: i64,
    to_ms: i64,
) -> Result<ZoneStats, SettlementError> {
    let (p2p, traded, supplied, absorbed, savings, tokens, count): (i64, i64, i64, i64, i64, i64, i64) =
        settlement_slots::table
            .filter(settlement_slots::zone_id.eq(zone.as_str()))
            .filter(settlement_slots::slot_start_ms.ge(from_ms))
            .filter(settlement_slots::slot_start_ms.lt(to_ms))
            .select((
                sum_column("delivered_p2p_wh"),
                sum_column("traded_wh"),
                sum_column("utility_supplied_wh"),
                sum_column("utility_absorbed_wh"),
                sum_column("household_savings"),
                sum_column("tokens_emitted"),
                diesel::dsl::sql::<BigInt>("CAST(COUNT(*) AS BIGINT)"),
            ))
            .first(conn)?;
    let last: Option<i64> = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone.as_str()))
        .select(diesel::dsl::max(settlement_slots::slot_start_ms))
        .first(conn)?;
    let denominator = i128::from(p2p) + i128::from(supplied);
    let self_sufficiency_bps =
        if denominator == 0 { 0 } else { i64::try_from(i128::from(p2p) * 10_000 / denominator).unwrap_or(0) };
    Ok(ZoneStats {
        zone: zone.clone(),
        self_sufficiency_bps,
        p2p_wh: Wh(p2p),
        traded_wh: Wh(traded),
        utility_supplied_wh: Wh(supplied),
        utility_absorbed_wh: Wh(absorbed),
        household_savings: MicroMoney(savings),
        tokens_emitted: MicroTokens(tokens),
        settled_slots: count,
        last_settled_slot: last.and_then(|start| SlotId::new(start).ok()),
    })
}

/// One slot's trades: first, highest, lowest and last price (micro-units per kWh) and volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceBar {
    pub slot: SlotId,
    pub open: PricePerKwh,
    pub high: PricePerKwh,
    pub low: PricePerKwh,
    pub close: PricePerKwh,
    pub volume_wh: Wh,
    pub trades: u64,
}

/// Price bars per delivery slot with trades, for slots starting in `[from_ms, to_ms)`, oldest first
/// (at most [`PRICE_BARS_MAX`]). Open/close follow trade id (execution) order.
pub fn price_history(
    conn: &mut DbConnection,
    zone: &ZoneId,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<PriceBar>, SettlementError> {
    let rows: Vec<(i64, i64, i64)> = trades::table
        .filter(trades::zone_id.eq(zone.as_str()))
        .filter(trades::slot_start_ms.ge(from_ms))
        .filter(trades::slot_start_ms.lt(to_ms))
        .order((trades::slot_start_ms, trades::trade_id))
        .select((trades::slot_start_ms, trades::price_per_kwh, trades::qty_wh))
        .load(conn)?;
    let mut bars: Vec<PriceBar> = Vec::new();
    for (slot_ms, price, qty) in rows {
        let price = PricePerKwh(price);
        match bars.last_mut() {
            Some(bar) if bar.slot.start_ms() == slot_ms => {
                bar.high = bar.high.max(price);
                bar.low = bar.low.min(price);
                bar.close = price;
                bar.volume_wh += Wh(qty);
                bar.trades += 1;
            }
            _ => {
                if bars.len() == PRICE_BARS_MAX {
                    break;
                }
                let slot = SlotId::new(slot_ms).map_err(|error| SettlementError::InvalidData(error.to_string()))?;
                bars.push(PriceBar {
                    slot,
                    open: price,
                    high: price,
                    low: price,
                    close: price,
                    volume_wh: Wh(qty),
                    trades: 1,
                });
            }
        }
    }
    Ok(bars)
}

/// Most settled slots one request lists: a day of 15-minute slots.
pub const SETTLED_SLOTS_LIMIT_MAX: i64 = 96;

/// The zone's latest settled slots, newest first (at most [`SETTLED_SLOTS_LIMIT_MAX`]).
pub fn settled_slots(
    conn: &mut DbConnection,
    zone: &ZoneId,
    limit: i64,
) -> Result<Vec<crate::close::SlotSettled>, SettlementError> {
    let starts: Vec<i64> = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone.as_str()))
        .order(settlement_slots::slot_start_ms.desc())
        .limit(limit.clamp(0, SETTLED_SLOTS_LIMIT_MAX))
        .select(settlement_slots::slot_start_ms)
        .load(conn)?;
    let mut settled = Vec::with_capacity(starts.len());
    for start in starts {
        let slot = SlotId::new(start).map_err(|error| SettlementError::InvalidData(error.to_string()))?;
        settled.extend(crate::close::load_settled(conn, zone, slot)?);
    }
    Ok(settled)
}

/// A settled slot in delivery order: closed_ms, zone, slot_start_ms, merkle_root, statements.
pub type SettledSlotRow = (i64, String, i64, String, i64);

/// Settled slots strictly after `after` in `(closed_ms, zone, slot_start_ms)` order, oldest first
/// and at most `limit`; with `newest_only`, only the newest one (after `after`) instead.
pub fn settled_slots_after(
    conn: &mut DbConnection,
    after: Option<(i64, String, i64)>,
    newest_only: bool,
    limit: i64,
) -> Result<Vec<SettledSlotRow>, DbError> {
    use settlement_slots::dsl as s;
    let mut query = s::settlement_slots
        .select((s::closed_ms, s::zone_id, s::slot_start_ms, s::merkle_root, s::statements))
        .into_boxed();
    if let Some((closed_ms, zone_id, slot_ms)) = after {
        query = query.filter(
            s::closed_ms
                .gt(closed_ms)
                .or(s::closed_ms.eq(closed_ms).and(s::zone_id.gt(zone_id.clone())))
                .or(s::closed_ms.eq(closed_ms).and(s::zone_id.eq(zone_id)).and(s::slot_start_ms.gt(slot_ms))),
        );
    }
    Ok(if newest_only {
        query.order((s::closed_ms.desc(), s::zone_id.desc(), s::slot_start_ms.desc())).limit(1).load(conn)?
    } else {
        query.order((s::closed_ms.asc(), s::zone_id.asc(), s::slot_start_ms.asc())).limit(limit).load(conn)?
    })
}
