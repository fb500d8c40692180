//! Public endpoints: zones and tariffs, books, trades, price history, zone statistics, tokens.

use crate::error::ApiError;
use crate::paging::{cut_page, invalid_cursor, page_len, with_next_page, CursorKind, CursorReader, CursorWriter};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use protocol::tariff::{DaysOfWeek, SlotPrices, TariffVersion, TouBand};
use protocol::{PricePerKwh, SlotId, ZoneId};
use serde::{Deserialize, Serialize};
use settlement::registry::{self, RegistryError};

/// Trades of one `GET /trades` page at most (`limit`): a screenful of the tape, a few hundred
/// kilobytes of JSON; the rest follow by cursor.
pub const TRADES_LIMIT_MAX: i64 = 500;
/// Trades of one page when the request names no `limit`.
pub const TRADES_LIMIT_DEFAULT: i64 = 50;
/// Longest price-history range: a week of 15-minute slots is 672 candles.
pub const PRICE_RANGE_MS_MAX: i64 = 7 * 24 * 3_600_000;

/// A tariff version: its flat prices (the default) and optional time-of-use bands (PROTOCOL.md,
/// "Tariffs"). A body without `bands` and `utc_offset_minutes` sets a flat tariff, as before.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Tariff)]
pub struct TariffView {
    pub effective_from_ms: i64,
    pub retail_price_per_kwh: i64,
    pub feed_in_price_per_kwh: i64,
    pub grid_fee_per_kwh: i64,
    pub protocol_fee_bps: i64,
    /// Local time of the bands: this fixed offset from UTC in minutes (−720 … 840, no daylight saving).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = -720, maximum = 840)]
    pub utc_offset_minutes: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bands: Vec<TariffBandView>,
}

/// A time-of-use band: local `[start_minute, end_minute)` on `days` (bitmask, Monday = 1 … Sunday = 64)
/// with its own prices; a slot whose start it covers trades and settles at them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TariffBand)]
pub struct TariffBandView {
    /// Days of the week as a bitmask: Monday = 1, Tuesday = 2, … Sunday = 64.
    #[schema(minimum = 1, maximum = 127)]
    pub days: u8,
    #[schema(minimum = 0, maximum = 1439)]
    pub start_minute: u16,
    /// Excluded; 1440 is midnight.
    #[schema(minimum = 1, maximum = 1440)]
    pub end_minute: u16,
    pub retail_price_per_kwh: i64,
    pub feed_in_price_per_kwh: i64,
    pub grid_fee_per_kwh: i64,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

impl TariffBandView {
    pub fn band(&self) -> TouBand {
        TouBand {
            days: DaysOfWeek(self.days),
            start_minute: self.start_minute,
            end_minute: self.end_minute,
            prices: SlotPrices {
                retail_price_per_kwh: PricePerKwh(self.retail_price_per_kwh),
                feed_in_price_per_kwh: PricePerKwh(self.feed_in_price_per_kwh),
                grid_fee_per_kwh: PricePerKwh(self.grid_fee_per_kwh),
            },
        }
    }

    fn of(band: &TouBand) -> TariffBandView {
        TariffBandView {
            days: band.days.0,
            start_minute: band.start_minute,
            end_minute: band.end_minute,
            retail_price_per_kwh: band.prices.retail_price_per_kwh.0,
            feed_in_price_per_kwh: band.prices.feed_in_price_per_kwh.0,
            grid_fee_per_kwh: band.prices.grid_fee_per_kwh.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Zone)]
pub struct ZoneView {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub zone_id: String,
    pub name: String,
    pub slot_len_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tariff: Option<TariffView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
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

fn tariff_view(version: TariffVersion) -> TariffView {
    TariffView {
        effective_from_ms: version.effective_from_ms,
        retail_price_per_kwh: version.flat.retail_price_per_kwh.0,
        feed_in_price_per_kwh: version.flat.feed_in_price_per_kwh.0,
        grid_fee_per_kwh: version.flat.grid_fee_per_kwh.0,
        protocol_fee_bps: version.protocol_fee_bps,
        utc_offset_minutes: version.utc_offset_minutes,
        bands: version.bands.iter().map(TariffBandView::of).collect(),
    }
}

/// 404 unless the zone is registered; returns its slot length.
pub async fn require_zone(state: &AppState, zone: &ZoneId) -> Result<i64, ApiError> {
    let zone = zone.clone();
    let found = registry::read(&state.db, move |conn| registry::zone(conn, &zone)).await.map_err(ApiError::from)?;
    found.map(|zone| zone.slot_len_ms).ok_or_else(|| ApiError::not_found("unknown_zone", "no such zone"))
}

/// The registered zone a path names, with its slot length: 400 `invalid_zone` for a malformed id
/// ([`parse_zone`]), 404 `unknown_zone` for one not registered ([`require_zone`]).
pub async fn known_zone(state: &AppState, text: &str) -> Result<(ZoneId, i64), ApiError> {
    let zone = parse_zone(text)?;
    let slot_len_ms = require_zone(state, &zone).await?;
    Ok((zone, slot_len_ms))
}

/// `/zones` and `/zones/{zone}/tariffs` query: the page length and, after the first page, the cursor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Zones of one `/zones` page at most (`limit`); each carries its tariff in force, one lookup each.
pub const ZONES_LIMIT_MAX: i64 = 500;
/// Zones of one page when the request names no `limit`.
pub const ZONES_LIMIT_DEFAULT: i64 = 100;
/// Tariffs of one `/zones/{zone}/tariffs` page at most (`limit`).
pub const TARIFFS_LIMIT_MAX: i64 = 1_000;
/// Tariffs of one page when the request names no `limit`.
pub const TARIFFS_LIMIT_DEFAULT: i64 = 100;

fn zones_cursor(zone: &str) -> String {
    CursorWriter::new(CursorKind::Zones).text(zone).finish()
}

fn parse_zones_cursor(text: &str) -> Result<ZoneId, ApiError> {
    let mut reader = CursorReader::open(CursorKind::Zones, text)?;
    let zone = ZoneId::parse(&reader.text()?).map_err(|_| invalid_cursor())?;
    reader.end()?;
    Ok(zone)
}

fn tariffs_cursor(effective_from_ms: i64) -> String {
    CursorWriter::new(CursorKind::Tariffs).int(effective_from_ms).finish()
}

fn parse_tariffs_cursor(text: &str) -> Result<i64, ApiError> {
    let mut reader = CursorReader::open(CursorKind::Tariffs, text)?;
    let effective_from_ms = reader.int()?;
    reader.end()?;
    Ok(effective_from_ms)
}

/// Zones by id with their tariff in force, one page at a time (keyset on the zone id).
pub async fn list_zones(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = page_len(query.limit, ZONES_LIMIT_DEFAULT, ZONES_LIMIT_MAX)?;
    let after = query.cursor.as_deref().map(parse_zones_cursor).transpose()?;
    let now_ms = state.now_ms();
    let mut views = registry::read(&state.db, move |conn| {
        let zones = registry::zones_page(conn, after.as_ref(), limit + 1)?;
        let mut views = Vec::with_capacity(zones.len());
        for zone in zones {
            let tariff = gridex_store::tariff::version_at(conn, &zone.zone_id, now_ms)?;
            views.push(ZoneView {
                zone_id: zone.zone_id.as_str().to_owned(),
                name: zone.name,
                slot_len_ms: zone.slot_len_ms,
                tariff: tariff.map(tariff_view),
            });
        }
        Ok::<_, RegistryError>(views)
    })
    .await
    .map_err(ApiError::from)?;
    let more = cut_page(&mut views, limit);
    let next = views.last().filter(|_| more).map(|last| zones_cursor(&last.zone_id));
    Ok(with_next_page(HttpResponse::Ok(), &request, next).json(views))
}

/// The zone's tariffs oldest first, one page at a time (keyset on the effective time).
pub async fn zone_tariffs(
    state: web::Data<AppState>,
    request: HttpRequest,
    zone: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let zone = parse_zone(&zone)?;
    let query = query.into_inner();
    let limit = page_len(query.limit, TARIFFS_LIMIT_DEFAULT, TARIFFS_LIMIT_MAX)?;
    let after = query.cursor.as_deref().map(parse_tariffs_cursor).transpose()?;
    require_zone(&state, &zone).await?;
    let tariffs = registry::read(&state.db, move |conn| {
        Ok::<_, RegistryError>(gridex_store::tariff::versions_page(conn, &zone, after, limit + 1)?)
    })
    .await
    .map_err(ApiError::from)?;
    let mut views: Vec<TariffView> = tariffs.into_iter().map(tariff_view).collect();
    let more = cut_page(&mut views, limit);
    let next = views.last().filter(|_| more).map(|last| tariffs_cursor(last.effective_from_ms));
    Ok(with_next_page(HttpResponse::Ok(), &request, next).json(views))
}

pub async fn zone_slots(state: web::Data<AppState>, zone: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (zone, _) = known_zone(&state, &zone).await?;
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
    let (zone, slot_len_ms) = known_zone(&state, &zone).await?;
    let slot = parse_aligned_slot(query.slot, slot_len_ms)?;
    let levels =
        query.levels.unwrap_or(protocol::messages::BOOK_LEVELS_MAX).clamp(1, protocol::messages::BOOK_LEVELS_MAX);
    let book = state.market.book(&zone, slot, levels).await?;
    let book = book.ok_or_else(|| {
        ApiError::not_found(
            "book_not_found",
            "no book for this slot: its gate has closed and it had no orders, or it is beyond the horizon",
        )
    })?;
    Ok(HttpResponse::Ok().json(book))
}

/// The zone's recent closing auction results (uniform price, volume and trades per slot), oldest
/// first; empty for a zone that trades continuously up to gate closure.
pub async fn zone_auctions(state: web::Data<AppState>, zone: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (zone, _) = known_zone(&state, &zone).await?;
    Ok(HttpResponse::Ok().json(state.market.auctions(&zone).await?))
}

/// `/zones/{zone}/trades` query: the page length, an optional slot (its start in ms) and, for the
/// pages after the first, the cursor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradesQuery {
    pub limit: Option<i64>,
    pub slot: Option<i64>,
    pub cursor: Option<String>,
}

/// Where the next page of trades starts: before this trade (pages go newest first by trade id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradesCursor {
    pub trade_id: i64,
}

impl TradesCursor {
    pub fn encode(self) -> String {
        CursorWriter::new(CursorKind::Trades).int(self.trade_id).finish()
    }

    pub fn parse(text: &str) -> Result<TradesCursor, ApiError> {
        let mut reader = CursorReader::open(CursorKind::Trades, text)?;
        let trade_id = reader.int()?;
        reader.end()?;
        Ok(TradesCursor { trade_id })
    }
}

/// The slot starting at `start_ms`, refused unless it is one of the zone's slots.
pub fn parse_aligned_slot(start_ms: i64, slot_len_ms: i64) -> Result<SlotId, ApiError> {
    let slot = SlotId::new(start_ms).map_err(|error| ApiError::bad_request("invalid_slot", error.to_string()))?;
    if !slot.is_aligned(slot_len_ms) {
        return Err(ApiError::bad_request("slot_misaligned", "the slot is not a multiple of the zone's slot length"));
    }
    Ok(slot)
}

/// The zone's trades, newest first, one page at a time (keyset on the trade id), optionally of one slot.
pub async fn zone_trades(
    state: web::Data<AppState>,
    request: HttpRequest,
    zone: web::Path<String>,
    query: web::Query<TradesQuery>,
) -> Result<HttpResponse, ApiError> {
    let (zone, slot_len_ms) = known_zone(&state, &zone).await?;
    let query = query.into_inner();
    let limit = page_len(query.limit, TRADES_LIMIT_DEFAULT, TRADES_LIMIT_MAX)?;
    let slot = query.slot.map(|start_ms| parse_aligned_slot(start_ms, slot_len_ms)).transpose()?;
    let after = query.cursor.as_deref().map(TradesCursor::parse).transpose()?;
    let mut trades = state
        .db
        .run(move |conn| {
            let slot_start_ms = slot.map(SlotId::start_ms);
            let before = after.map(|after| after.trade_id);
            exchange::queries::trades_page(conn, &zone, slot_start_ms, before, limit + 1)
        })
        .await?;
    let more = cut_page(&mut trades, limit);
    let next = trades.last().filter(|_| more).map(|last| TradesCursor { trade_id: to_i64_id(last.trade_id) }.encode());
    Ok(with_next_page(HttpResponse::Ok(), &request, next).json(trades))
}

/// A stored trade id back as the column's type (stored from an `i64`, so always in range).
fn to_i64_id(trade_id: u64) -> i64 {
    i64::try_from(trade_id).unwrap_or(i64::MAX)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// `[from, to)`, defaulting to the last day (or the span ending at `to`), bounded by `span_max_ms`.
pub fn range(query: &RangeQuery, now_ms: i64, span_max_ms: i64) -> Result<(i64, i64), ApiError> {
    range_within(query, now_ms + 24 * 3_600_000, 2 * 24 * 3_600_000, span_max_ms)
}

/// `[from, to)`: `to` defaults to `to_default_ms` and `from` to `span_default_ms` before `to`;
/// 400 `invalid_query` unless 0 ≤ from ≤ to, 400 `range_too_long` beyond `span_max_ms`.
pub fn range_within(
    query: &RangeQuery,
    to_default_ms: i64,
    span_default_ms: i64,
    span_max_ms: i64,
) -> Result<(i64, i64), ApiError> {
    let to_ms = query.to_ms.unwrap_or(to_default_ms);
    let from_ms = query.from_ms.unwrap_or(to_ms.saturating_sub(span_default_ms));
    if from_ms > to_ms || from_ms < 0 {
        return Err(ApiError::bad_request("invalid_query", "from_ms must be ≥ 0 and ≤ to_ms"));
    }
    if to_ms - from_ms > span_max_ms {
        return Err(ApiError::bad_request("range_too_long", format!("the range may span at most {span_max_ms} ms")));
    }
    Ok((from_ms, to_ms))
}

/// Open/high/low/close per slot from trades in trade-id order: the fold that
/// `exchange::queries::slot_prices` has the database do (kept as its plain statement).
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

/// One candle per slot of the range (at most 7 days), every trade counted: bounded by construction,
/// so not paged.
pub async fn zone_prices(
    state: web::Data<AppState>,
    zone: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let (zone, _) = known_zone(&state, &zone).await?;
    let (from_ms, to_ms) = range(&query, state.now_ms(), PRICE_RANGE_MS_MAX)?;
    let slots = state.db.run(move |conn| exchange::queries::slot_prices(conn, &zone, from_ms, to_ms)).await?;
    let candles: Vec<Candle> = slots
        .into_iter()
        .map(|slot| Candle {
            slot: slot.slot_start_ms,
            open: slot.open_per_kwh,
            high: slot.high_per_kwh,
            low: slot.low_per_kwh,
            close: slot.close_per_kwh,
            volume_wh: slot.volume_wh,
            trades: slot.trades,
        })
        .collect();
    Ok(HttpResponse::Ok().json(candles))
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
