//! Home battery endpoints (issue 15): a household's battery per slot and what it earned
//! (`GET /api/v1/me/battery`, signed by the household) and a zone's storage
//! (`GET /api/v1/zones/{zone}/storage`, the zone's utility). Both are answered by
//! `settlement::battery`, read-only: a battery is never part of the ledger. The household's battery
//! plan (`GET /api/v1/me/plan`, PROTOCOL.md §4.7) is the latest one its agent signed and the
//! exchange stored, read through `exchange::queries`.

use crate::error::ApiError;
use crate::public::{range_within, RangeQuery};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use settlement::battery::{household_battery, zone_storage, STORAGE_SLOTS_MAX};
use settlement::READING_GAP_MS_MAX_DEFAULT;

/// Longest `/me/battery` range: a week, as `/me/readings` (at most `BATTERY_SLOTS_MAX` slots).
pub const BATTERY_RANGE_MS_MAX: i64 = 7 * 24 * 3_600_000;
/// `/me/battery` without `from_ms`: the last day.
pub const BATTERY_RANGE_MS_DEFAULT: i64 = 24 * 3_600_000;
/// Slots of `/zones/{zone}/storage` without `slots`: the last six hours of 15-minute slots.
pub const STORAGE_SLOTS_DEFAULT: i64 = 24;

/// The signer's battery per slot of the range (default: the last day up to now), at most
/// [`settlement::battery::BATTERY_SLOTS_MAX`] slots (the latest), with its latest state and what it earned.
pub async fn my_battery(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = crate::trader::authenticate(&state, &request, b"").await?;
    let (from_ms, to_ms) = range_within(&query, state.now_ms(), BATTERY_RANGE_MS_DEFAULT, BATTERY_RANGE_MS_MAX)?;
    let battery = settlement::registry::read(&state.db, move |conn| {
        household_battery(conn, &account, from_ms, to_ms, READING_GAP_MS_MAX_DEFAULT)
    })
    .await
    .map_err(ApiError::internal)?;
    let battery = battery.ok_or_else(|| ApiError::not_found("unknown_zone", "the household has no zone"))?;
    Ok(HttpResponse::Ok().json(battery))
}

/// The signer's latest battery plan as its agent signed it (`plan`: the `battery_plan` message with
/// `sig`, so the household can check it) and when the exchange received it; 404 `no_plan` before
/// its agent sent one.
pub async fn my_plan(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let account = crate::trader::authenticate(&state, &request, b"").await?;
    let stored =
        settlement::registry::read(&state.db, move |conn| exchange::queries::latest_battery_plan(conn, &account))
            .await
            .map_err(ApiError::internal)?;
    let stored = stored.ok_or_else(|| {
        ApiError::not_found("no_plan", "no battery plan received from this account's trading agent yet")
    })?;
    let plan: serde_json::Value = serde_json::from_str(&stored.payload).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "received_ms": stored.received_ms, "plan": plan })))
}

/// `/zones/{zone}/storage` query: how many of the latest complete slots.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageQuery {
    pub slots: Option<i64>,
}

/// The zone's home batteries now and its charge and discharge in its latest `slots` complete slots
/// (default [`STORAGE_SLOTS_DEFAULT`], at most [`STORAGE_SLOTS_MAX`]). The zone's utility only.
pub async fn zone_storage_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    zone: web::Path<String>,
    query: web::Query<StorageQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = crate::utility::authorize(&state, &request).await?;
    let (zone, _) = crate::utility::own_zone(&state, &caller, &zone).await?;
    let slots = query.slots.unwrap_or(STORAGE_SLOTS_DEFAULT);
    if !(1..=STORAGE_SLOTS_MAX).contains(&slots) {
        let message = format!("slots is 1..={STORAGE_SLOTS_MAX}");
        return Err(ApiError::bad_request("invalid_query", message));
    }
    let now_ms = state.now_ms();
    let storage = settlement::registry::read(&state.db, move |conn| {
        zone_storage(conn, &zone, now_ms, slots, READING_GAP_MS_MAX_DEFAULT)
    })
    .await
    .map_err(ApiError::internal)?;
    let storage = storage.ok_or_else(|| ApiError::not_found("unknown_zone", "no such zone"))?;
    Ok(HttpResponse::Ok().json(storage))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_week_of_battery_slots_fits_the_range() {
        // 15-minute slots over the longest range: exactly the settlement's cap, so no slot is dropped.
        assert_eq!(super::BATTERY_RANGE_MS_MAX / 900_000, settlement::battery::BATTERY_SLOTS_MAX);
    }
}
