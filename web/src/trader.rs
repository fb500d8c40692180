//! Trader endpoints: order entry and the trader's own orders, readings, statements and balances.
//! Every handler authenticates the request signature first and only ever reads the signer's data.

use crate::error::ApiError;
use crate::paging::{invalid_cursor, with_next_page, CursorKind, CursorReader, CursorWriter};
use crate::public::{range, RangeQuery};
use crate::state::AppState;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use exchange::queries::ReadingRow;
use futures_util_shim::read_body;
use gridex_store::DbError;
use protocol::{AccountId, Command};
use serde::Serialize;
use settlement::registry::{self, AccountKind};

/// Longest readings range for one request: a week of 1-minute readings is about 10k rows per device.
pub const READINGS_RANGE_MS_MAX: i64 = 7 * 24 * 3_600_000;
/// Rows of one page of readings (`/me/readings`, the export); the rest follow by cursor.
pub const READINGS_ROWS_MAX: i64 = 50_000;
/// Refused readings returned by one readings request at most (newest first): a screenful to see
/// why meter data is missing, not a second copy of a flood.
pub const REFUSED_READINGS_ROWS_MAX: i64 = 500;

/// Verifies the request signature against the real clock and that the account is a registered household.
pub async fn authenticate(state: &AppState, request: &HttpRequest, body: &[u8]) -> Result<AccountId, ApiError> {
    // Request signatures are checked against wall-clock time, not the (possibly simulated) market
    // clock: the signer is a person's browser or program, which only knows real time.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let signed = crate::auth::verify_signed(request, body, now_ms)?;
    let account = signed.account;
    let id = account.to_hex();
    let kind = registry::read(&state.db, move |conn| registry::account(conn, &id))
        .await
        .map_err(ApiError::from)?
        .map(|account| account.kind);
    match kind {
        // Remembered only once the signer is a registered household, so strangers' keys cannot
        // fill the memory of used requests.
        Some(AccountKind::Household) => state.used_signatures.accept_once(&signed, now_ms).map(|()| account),
        Some(_) => Err(ApiError::forbidden("forbidden", "only household accounts trade")),
        None => Err(ApiError::unauthorized("unknown_key", "the account is not registered")),
    }
}

pub async fn submit_order(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: Bytes = read_body(payload, state.json_body_bytes_max).await?;
    let account = authenticate(&state, &request, &body).await?;
    let command = Command::parse(&body).map_err(|error| {
        crate::metrics::count_order_rejected(error.reason.code());
        ApiError::from_reason(error.reason, error.detail)
    })?;
    if command.account() != account {
        crate::metrics::count_order_rejected("account_mismatch");
        return Err(ApiError::forbidden("forbidden", "the order is signed for another account than the request"));
    }
    let is_new_order = matches!(command, Command::Order(_));
    let mut reply = state.market.submit_command(body.to_vec()).await?;
    if matches!(command, Command::CancelAll(_)) {
        reply = reply.of_cancel_all();
    }
    // Committed and matched before the answer: a new order is created (201), a cancel, replace or
    // cancel-all changed existing ones (200).
    Ok(if is_new_order { HttpResponse::Created().json(reply) } else { HttpResponse::Ok().json(reply) })
}

pub async fn my_orders(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let account = authenticate(&state, &request, b"").await?;
    Ok(HttpResponse::Ok().json(state.market.open_orders(account).await?))
}

/// One reading as interval data: the counters and the energy since the device's previous reading.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct IntervalReading {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub device: String,
    pub seq: i64,
    pub ts_ms: i64,
    pub import_wh: i64,
    pub export_wh: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pv_wh: Option<i64>,
    pub power_w: i64,
    /// Energy imported since the previous reading in the range (0 for the first).
    pub interval_import_wh: i64,
    pub interval_export_wh: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_pv_wh: Option<i64>,
    /// A home battery's counters and state (version 2 readings only; PROTOCOL.md §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_charge_wh: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_discharge_wh: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_soc_permille: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_capacity_wh: Option<i64>,
    /// Energy into and out of the battery since the previous reading in the range that had the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_battery_charge_wh: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_battery_discharge_wh: Option<i64>,
}

/// A reading the exchange refused although its device signed it, with the reason (PROTOCOL.md §7).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RefusedReading {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub device: String,
    pub seq: i64,
    pub ts_ms: i64,
    /// Always `"refused"`: tells these entries from accepted readings.
    #[schema(pattern = "^refused$")]
    pub status: String,
    pub reason: String,
    pub message: String,
    pub received_ms: i64,
}

/// One entry of `/me/readings`: an accepted reading as interval data, or a refused one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ReadingEntry {
    Accepted(IntervalReading),
    Refused(RefusedReading),
}

/// The refusals of `device_ids` received within `[from, to)`, newest first.
pub fn load_refused(
    conn: &mut gridex_store::DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RefusedReading>, DbError> {
    let rows = exchange::queries::reading_rejections(conn, device_ids, from_ms, to_ms, REFUSED_READINGS_ROWS_MAX)?;
    Ok(rows
        .into_iter()
        .map(|(device, seq, ts_ms, reason, message, received_ms)| RefusedReading {
            device,
            seq,
            ts_ms,
            status: "refused".to_owned(),
            reason,
            message,
            received_ms,
        })
        .collect())
}

/// Rows sorted by (device, ts) into interval data.
pub fn intervals(rows: Vec<ReadingRow>) -> Vec<IntervalReading> {
    let mut out: Vec<IntervalReading> = Vec::with_capacity(rows.len());
    // Per device, the latest battery counters seen in the range (a reading may lack them).
    let mut battery_before: (Option<i64>, Option<i64>) = (None, None);
    for row in rows {
        let previous = out.last().filter(|previous| previous.device == row.device);
        if previous.is_none() {
            battery_before = (None, None);
        }
        let (interval_import_wh, interval_export_wh, interval_pv_wh) = match previous {
            Some(p) => (
                row.import_wh - p.import_wh,
                row.export_wh - p.export_wh,
                row.pv_wh.zip(p.pv_wh).map(|(now, before)| now - before),
            ),
            None => (0, 0, row.pv_wh.map(|_| 0)),
        };
        let since = |now: Option<i64>, before: Option<i64>| now.map(|now| before.map_or(0, |before| now - before));
        let interval_battery_charge_wh = since(row.battery_charge_wh, battery_before.0);
        let interval_battery_discharge_wh = since(row.battery_discharge_wh, battery_before.1);
        battery_before = (row.battery_charge_wh.or(battery_before.0), row.battery_discharge_wh.or(battery_before.1));
        out.push(IntervalReading {
            device: row.device,
            seq: row.seq,
            ts_ms: row.ts_ms,
            import_wh: row.import_wh,
            export_wh: row.export_wh,
            pv_wh: row.pv_wh,
            power_w: row.power_w,
            interval_import_wh,
            interval_export_wh,
            interval_pv_wh,
            battery_charge_wh: row.battery_charge_wh,
            battery_discharge_wh: row.battery_discharge_wh,
            battery_soc_permille: row.battery_soc_permille,
            battery_capacity_wh: row.battery_capacity_wh,
            interval_battery_charge_wh,
            interval_battery_discharge_wh,
        });
    }
    out
}

/// Where the next page of readings starts: after this reading, by the primary key
/// `(device, seq)`. Keyset pagination, so a page is stable under concurrent inserts: no row is
/// returned twice and none already stored is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsCursor {
    pub device: String,
    pub seq: i64,
}

impl ReadingsCursor {
    /// Opaque to clients: they pass it back as `cursor=` unchanged (`crate::paging`'s scheme).
    pub fn encode(&self) -> String {
        CursorWriter::new(CursorKind::Readings).text(&self.device).int(self.seq).finish()
    }

    pub fn parse(text: &str) -> Result<ReadingsCursor, ApiError> {
        let mut reader = CursorReader::open(CursorKind::Readings, text)?;
        let device = protocol::DeviceId::parse(&reader.text()?).map_err(|_| invalid_cursor())?;
        let seq = reader.int()?;
        reader.end()?;
        if seq < 0 {
            return Err(invalid_cursor());
        }
        Ok(ReadingsCursor { device: device.to_hex(), seq })
    }
}

/// One page of readings as interval data, and the cursor of the next page if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsPage {
    pub rows: Vec<IntervalReading>,
    pub next: Option<ReadingsCursor>,
}

/// A page of at most [`READINGS_ROWS_MAX`] readings of `device_ids` within `[from, to)`, ordered by
/// `(device, seq)`, after `after`.
pub fn load_readings_page(
    conn: &mut gridex_store::DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    after: Option<&ReadingsCursor>,
) -> Result<ReadingsPage, DbError> {
    // The cursor's own reading is loaded too: it is the previous reading of the page's first row,
    // whose interval energy is computed from it; it is not returned again. One more row tells
    // whether there is a next page, one more the cursor's own reading.
    let from_key = after.map(|after| (after.device.as_str(), after.seq));
    let rows =
        exchange::queries::readings_by_device(conn, device_ids, from_ms, to_ms, from_key, READINGS_ROWS_MAX + 2)?;
    let mut rows = intervals(rows);
    if let (Some(after), Some(first)) = (after, rows.first()) {
        if first.device == after.device && first.seq == after.seq {
            rows.remove(0);
        }
    }
    let page_len = usize::try_from(READINGS_ROWS_MAX).unwrap_or(usize::MAX);
    let next = if rows.len() > page_len {
        rows.truncate(page_len);
        rows.last().map(|last| ReadingsCursor { device: last.device.clone(), seq: last.seq })
    } else {
        None
    };
    Ok(ReadingsPage { rows, next })
}

/// `/me/readings` query: the range and, for the pages after the first, the cursor.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub cursor: Option<String>,
}

pub async fn my_readings(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<ReadingsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = authenticate(&state, &request, b"").await?;
    let query = query.into_inner();
    let after = query.cursor.as_deref().map(ReadingsCursor::parse).transpose()?;
    let range_query = RangeQuery { from_ms: query.from_ms, to_ms: query.to_ms };
    let (from_ms, to_ms) = range(&range_query, state.now_ms(), READINGS_RANGE_MS_MAX)?;
    let id = account.to_hex();
    let (page, refused) = state
        .db
        .run(move |conn| {
            let device_ids = registry::device_ids_of_account(conn, &id)?;
            // Refused readings come once, on the first page.
            let refused =
                if after.is_none() { load_refused(conn, device_ids.clone(), from_ms, to_ms)? } else { Vec::new() };
            Ok((load_readings_page(conn, device_ids, from_ms, to_ms, after.as_ref())?, refused))
        })
        .await?;
    // Accepted readings first (by device and seq), then the refused ones received in the range.
    let next = page.next.clone();
    let entries: Vec<ReadingEntry> = page
        .rows
        .into_iter()
        .map(ReadingEntry::Accepted)
        .chain(refused.into_iter().map(ReadingEntry::Refused))
        .collect();
    Ok(with_next_page(HttpResponse::Ok(), &request, next.map(|next| next.encode())).json(entries))
}

/// Reads at most `limit_bytes` of a request body; larger bodies are refused with 413.
mod futures_util_shim {
    use crate::error::ApiError;
    use actix_web::http::StatusCode;
    use actix_web::web::{self, Bytes, BytesMut};
    use tokio_stream::StreamExt as _;

    pub async fn read_body(mut payload: web::Payload, limit_bytes: usize) -> Result<Bytes, ApiError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| ApiError::bad_request("bad_body", error.to_string()))?;
            if body.len() + chunk.len() > limit_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body exceeds {limit_bytes} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

pub use futures_util_shim::read_body as read_limited_body;
