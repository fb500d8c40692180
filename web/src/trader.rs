//! Trader endpoints: order entry and the trader's own orders, readings, statements and balances.
//! Every handler authenticates the request signature first and only ever reads the signer's data.

use crate::error::ApiError;
use crate::public::{range, RangeQuery};
use crate::state::AppState;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use diesel::prelude::*;
use exchange::db::DbError;
use exchange::schema::{accounts, devices, reading_rejections, readings};
use futures_util_shim::read_body;
use protocol::{AccountId, Command};
use serde::Serialize;

/// Longest readings range for one request: a week of 1-minute readings is about 10k rows per device.
pub const READINGS_RANGE_MS_MAX: i64 = 7 * 24 * 3_600_000;
/// Rows returned by one readings request at most.
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
    let kind: Option<String> = state
        .db
        .run(move |conn| accounts::table.find(id).select(accounts::kind).first(conn).optional().map_err(DbError::from))
        .await?;
    match kind.as_deref() {
        // Remembered only once the signer is a registered household, so strangers' keys cannot
        // fill the memory of used requests.
        Some("household") => state.used_signatures.accept_once(&signed, now_ms).map(|()| account),
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
    let ack = state.market.submit_command(body.to_vec()).await?;
    Ok(HttpResponse::Accepted().json(ack))
}

pub async fn my_orders(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let account = authenticate(&state, &request, b"").await?;
    Ok(HttpResponse::Ok().json(state.market.open_orders(account).await?))
}

/// One reading as interval data: the counters and the energy since the device's previous reading.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct IntervalReading {
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
}

pub type ReadingRow = (String, i64, i64, i64, i64, Option<i64>, i64);

/// A reading the exchange refused although its device signed it, with the reason (PROTOCOL.md §7).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RefusedReading {
    pub device: String,
    pub seq: i64,
    pub ts_ms: i64,
    /// Always `"refused"`: tells these entries from accepted readings.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub received_ms: i64,
}

/// One entry of `/me/readings`: an accepted reading as interval data, or a refused one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ReadingEntry {
    Accepted(IntervalReading),
    Refused(RefusedReading),
}

/// The refusals of `device_ids` received within `[from, to)`, newest first.
pub fn load_refused(
    conn: &mut exchange::db::DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RefusedReading>, DbError> {
    let rows: Vec<(String, i64, i64, String, String, i64)> = reading_rejections::table
        .filter(reading_rejections::device_id.eq_any(device_ids))
        .filter(reading_rejections::received_ms.ge(from_ms))
        .filter(reading_rejections::received_ms.lt(to_ms))
        .order((reading_rejections::received_ms.desc(), reading_rejections::seq.desc()))
        .limit(REFUSED_READINGS_ROWS_MAX)
        .select((
            reading_rejections::device_id,
            reading_rejections::seq,
            reading_rejections::ts_ms,
            reading_rejections::reason,
            reading_rejections::message,
            reading_rejections::received_ms,
        ))
        .load(conn)?;
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
    for (device, seq, ts_ms, import_wh, export_wh, pv_wh, power_w) in rows {
        let previous = out.last().filter(|previous| previous.device == device);
        let (interval_import_wh, interval_export_wh, interval_pv_wh) = match previous {
            Some(p) => {
                (import_wh - p.import_wh, export_wh - p.export_wh, pv_wh.zip(p.pv_wh).map(|(now, before)| now - before))
            }
            None => (0, 0, pv_wh.map(|_| 0)),
        };
        out.push(IntervalReading {
            device,
            seq,
            ts_ms,
            import_wh,
            export_wh,
            pv_wh,
            power_w,
            interval_import_wh,
            interval_export_wh,
            interval_pv_wh,
        });
    }
    out
}

/// Readings of `devices_of_account` or `zone`/`device` selection within `[from, to)`.
pub fn load_readings(
    conn: &mut exchange::db::DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<ReadingRow>, DbError> {
    readings::table
        .filter(readings::device_id.eq_any(device_ids))
        .filter(readings::ts_ms.ge(from_ms))
        .filter(readings::ts_ms.lt(to_ms))
        .order((readings::device_id.asc(), readings::ts_ms.asc(), readings::seq.asc()))
        .limit(READINGS_ROWS_MAX)
        .select((
            readings::device_id,
            readings::seq,
            readings::ts_ms,
            readings::import_wh,
            readings::export_wh,
            readings::pv_wh,
            readings::power_w,
        ))
        .load(conn)
        .map_err(DbError::from)
}

pub async fn my_readings(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = authenticate(&state, &request, b"").await?;
    let (from_ms, to_ms) = range(&query, state.now_ms(), READINGS_RANGE_MS_MAX)?;
    let id = account.to_hex();
    let (rows, refused) = state
        .db
        .run(move |conn| {
            let device_ids: Vec<String> =
                devices::table.filter(devices::account_id.eq(id)).select(devices::device_id).load(conn)?;
            Ok((
                load_readings(conn, device_ids.clone(), from_ms, to_ms)?,
                load_refused(conn, device_ids, from_ms, to_ms)?,
            ))
        })
        .await?;
    // Accepted readings first (by device and time), then the refused ones received in the range.
    let entries: Vec<ReadingEntry> = intervals(rows)
        .into_iter()
        .map(ReadingEntry::Accepted)
        .chain(refused.into_iter().map(ReadingEntry::Refused))
        .collect();
    Ok(HttpResponse::Ok().json(entries))
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
