//! Public endpoints: zones and tariffs, books, trades, price history, zone statistics, tokens.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use diesel::prelude::*;
use gridex_store::schema::{tariffs, trades, zones};
use gridex_store::DbError;
use protocol::{AccountId, PricePerKwh, Side, SlotId, TimestampMs, Trade, Wh, ZoneId};
use serde::{Deserialize, Serialize};

/// Trades returned by one `GET /trades` at most.
pub const TRADES_LIMIT_MAX: i64 = 500;
pub const TRADES_LIMIT_DEFAULT: i64 = 50;
/// Longest price-history range: a week of 15-minute slots is 672 candles.
pub const PRICE_RANGE_MS_MAX: i64 = 7 * 24 * 3_600_000;
/// Trades aggregated for one price-history request at most, to bound memory and time.
pub const PRICE_TRADES_MAX: i64 = 200_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TariffView {
    pub effective_from_ms: i64,
    pub retail_price_per_kwh: i64,
    pub feed_in_price_per_kwh: i64,
    pub grid_fee_per_kwh: i64,
    pub protocol_fee_bps: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ZoneView {
    pub zone_id: String,
    pub name: String,
    pub slot_len_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tariff: Option<TariffView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Candle {
    pub slot: i64,
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume_wh: i64,
    pub trades: i64,
}

pub fn parse_zone(text: &str) -> Result<ZoneId, ApiError> {
    ZoneId::parse(text).map_err(|error| ApiError::bad_request("invalid_zone", error.to_string()))
}

type TariffRow = (i64, i64, i64, i64, i64);

fn tariff_view((effective_from_ms, retail, feed_in, grid_fee, bps): TariffRow) -> TariffView {
    TariffView {
        effective_from_ms,
        retail_price_per_kwh: retail,
        feed_in_price_per_kwh: feed_in,
        grid_fee_per_kwh: grid_fee,
        protocol_fee_bps: bps,
    }
}

fn tariff_columns() -> (
    tariffs::effective_from_ms,
    tariffs::retail_price_per_kwh,
    tariffs::feed_in_price_per_kwh,
    tariffs::grid_fee_per_kwh,
    tariffs::protocol_fee_bps,
) {
    (
        tariffs::effective_from_ms,
        tariffs::retail_price_per_kwh,
        tariffs::feed_in_price_per_kwh,
        tariffs::grid_fee_per_kwh,
        tariffs::protocol_fee_bps,
    )
}

/// 404 unless the zone is registered; returns its slot length.
pub async fn require_zone(state: &AppState, zone: &ZoneId) -> Result<i64, ApiError> {
    let id = zone.as_str().to_owned();
    let found: Option<i64> = state
        .db
        .run(move |conn| zones::table.find(id).select(zones::slot_len_ms).first(conn).optional().map_err(DbError::from))
        .await?;
    found.ok_or_else(|| ApiError::not_found("unknown_zone", "no such zone"))
}

pub async fn list_zones(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now_ms = state.now_ms();
    let views = state
        .db
        .run(move |conn| {
            let rows: Vec<(String, String, i64)> = zones::table
                .select((zones::zone_id, zones::name, zones::slot_len_ms))
                .order(zones::zone_id)
                .load(conn)?;
            let mut views = Vec::with_capacity(rows.len());
            for (zone_id, name, slot_len_ms) in rows {
                let tariff: Option<TariffRow> = tariffs::table
                    .filter(tariffs::zone_id.eq(&zone_id))
                    .filter(tariffs::effective_from_ms.le(now_ms))
                    .order(tariffs::effective_from_ms.desc())
                    .select(tariff_columns())
                    .first(conn)
                    .optional()?;
                views.push(ZoneView { zone_id, name, slot_len_ms, tariff: tariff.map(tariff_view) });
            }
            Ok::<_, DbError>(views)
        })
        .await?;
    Ok(HttpResponse::Ok().json(views))
}

pub async fn zone_tariffs(state: web::Data<AppState>, zone: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    require_zone(&state, &zone).await?;
    let id = zone.as_str().to_owned();
    let rows: Vec<TariffRow> = state
        .db
        .run(move |conn| {
            tariffs::table
                .filter(tariffs::zone_id.eq(id))
                .order(tariffs::effective_from_ms.asc())
                .select(tariff_columns())
                .load(conn)
                .map_err(DbError::from)
        })
        .await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(tariff_view).collect::<Vec<_>>()))
}

pub async fn zone_slots(state: web::Data<AppState>, zone: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    require_zone(&state, &zone).await?;
    Ok(HttpResponse::Ok().json(state.market.open_slots(&zone).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookQuery {
    pub slot: i64,
    pub levels: Option<usize>,
}

pub async fn zone_book(
    state: web::Data<AppState>,
    zone: web::Path<String>,
    query: web::Query<BookQuery>,
) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    let slot_len_ms = require_zone(&state, &zone).await?;
    let slot = SlotId::new(query.slot).map_err(|error| ApiError::bad_request("invalid_slot", error.to_string()))?;
    if !slot.is_aligned(slot_len_ms) {
        return Err(ApiError::bad_request("slot_misaligned", "the slot is not a multiple of the zone's slot length"));
    }
    let levels =
        query.levels.unwrap_or(protocol::messages::BOOK_LEVELS_MAX).clamp(1, protocol::messages::BOOK_LEVELS_MAX);
    let book = state.market.book(&zone, slot, levels).await?;
    let book = book.ok_or_else(|| ApiError::not_found("book_not_found", "no open book for this slot"))?;
    Ok(HttpResponse::Ok().json(book))
}

/// The zone's recent closing auction results (uniform price, volume and trades per slot), oldest
/// first; empty for a zone that trades continuously up to gate closure.
pub async fn zone_auctions(state: web::Data<AppState>, zone: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    require_zone(&state, &zone).await?;
    Ok(HttpResponse::Ok().json(state.market.auctions(&zone).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradesQuery {
    pub limit: Option<i64>,
}

type TradeRow = (i64, String, i64, i64, i64, String, i64, String, i64, String, i64);

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

pub async fn zone_trades(
    state: web::Data<AppState>,
    zone: web::Path<String>,
    query: web::Query<TradesQuery>,
) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    require_zone(&state, &zone).await?;
    let limit = query.limit.unwrap_or(TRADES_LIMIT_DEFAULT);
    if !(1..=TRADES_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit is 1..={TRADES_LIMIT_MAX}")));
    }
    let id = zone.as_str().to_owned();
    let trades = state
        .db
        .run(move |conn| {
            let rows: Vec<TradeRow> = trades::table
                .filter(trades::zone_id.eq(id))
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
            rows.into_iter().map(trade_from_row).collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(HttpResponse::Ok().json(trades))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// `[from, to)`, defaulting to the last day (or the span ending at `to`), bounded by `span_max_ms`.
pub fn range(query: &RangeQuery, now_ms: i64, span_max_ms: i64) -> Result<(i64, i64), ApiError> {
    let to_ms = query.to_ms.unwrap_or(now_ms + 24 * 3_600_000);
    let from_ms = query.from_ms.unwrap_or(to_ms.saturating_sub(2 * 24 * 3_600_000));
    if from_ms > to_ms || from_ms < 0 {
        return Err(ApiError::bad_request("invalid_query", "from_ms must be ≥ 0 and ≤ to_ms"));
    }
    if to_ms - from_ms > span_max_ms {
        return Err(ApiError::bad_request("range_too_long", format!("the range may span at most {span_max_ms} ms")));
    }
    Ok((from_ms, to_ms))
}

/// Open/high/low/close per slot from trades in trade-id order.
pub fn candles(rows: &[(i64, i64, i64)]) -> Vec<Candle> {
    let mut out: Vec<Candle> = Vec::new();
    for &(slot, price, qty) in rows {
        match out.last_mut() {
            Some(candle) if candle.slot == slot => {
                candle.high = candle.high.max(price);
                candle.low = candle.low.min(price);
                candle.close = price;
                candle.volume_wh += qty;
                candle.trades += 1;
            }
            _ => {
                out.push(Candle { slot, open: price, high: price, low: price, close: price, volume_wh: qty, trades: 1 })
            }
        }
    }
    out
}

pub async fn zone_prices(
    state: web::Data<AppState>,
    zone: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    require_zone(&state, &zone).await?;
    let (from_ms, to_ms) = range(&query, state.now_ms(), PRICE_RANGE_MS_MAX)?;
    let id = zone.as_str().to_owned();
    let rows: Vec<(i64, i64, i64)> = state
        .db
        .run(move |conn| {
            trades::table
                .filter(trades::zone_id.eq(id))
                .filter(trades::slot_start_ms.ge(from_ms))
                .filter(trades::slot_start_ms.lt(to_ms))
                .order((trades::slot_start_ms.asc(), trades::trade_id.asc()))
                .limit(PRICE_TRADES_MAX)
                .select((trades::slot_start_ms, trades::price_per_kwh, trades::qty_wh))
                .load(conn)
                .map_err(DbError::from)
        })
        .await?;
    Ok(HttpResponse::Ok().json(candles(&rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candles_take_the_first_and_last_trade_of_each_slot() {
        let rows = [(0, 10, 1), (0, 30, 2), (0, 20, 3), (900, 5, 4)];
        let out = candles(&rows);
        assert_eq!(out[0], Candle { slot: 0, open: 10, high: 30, low: 10, close: 20, volume_wh: 6, trades: 3 });
        assert_eq!(out[1].open, 5);
    }
}
