//! Utility endpoints (API key with the utility role): registry writes, reports, exports, webhooks.
//!
//! A key acts only on its utility's zones (`crate::api_keys`: a zone whose utility account is
//! `utility:<utility>`), their accounts, devices, tariffs, reports, exports and silent devices, and
//! on its utility's webhooks. Anything else answers exactly as if it did not exist (404
//! `unknown_zone`, `unknown_device`, `unknown_webhook`), so a key cannot learn what other
//! utilities have. One exception cannot be hidden: creating a zone whose id another utility holds
//! answers 409 `zone_exists`, as zone ids are public (`GET /api/v1/zones`).

use crate::error::ApiError;
use crate::paging::{cut_page, invalid_cursor, page_len, with_next_page, CursorKind, CursorReader, CursorWriter};
use crate::public::{parse_zone, range, RangeQuery, TariffView};
use crate::registry::DeviceRegistration;
use crate::settings::Role;
use crate::settings::UtilityName;
use crate::state::AppState;
use crate::trader::read_limited_body;
use crate::webhooks::WebhookError;
use actix_web::{web, HttpRequest, HttpResponse};
use protocol::{AccountId, DeviceId, MeterSerial, ZoneId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use settlement::registry::{MeterCounters, MeterReplacement};
use std::fmt::Write as _;

/// Longest readings export: 31 days.
pub const EXPORT_RANGE_MS_MAX: i64 = 31 * 24 * 3_600_000;

/// A utility's request: which key (for audit logs) and the utility it acts for.
#[derive(Debug, Clone)]
pub struct UtilityCaller {
    pub by: String,
    pub utility: UtilityName,
    /// The zones the key is limited to (`gridex api-key create --zones`); `None`: all the utility's.
    pub zones: Option<Vec<ZoneId>>,
}

impl UtilityCaller {
    /// Whether the key may act on `zone`, a zone of account `utility_account`.
    pub fn may_act_on(&self, zone: &ZoneId, utility_account: &str) -> bool {
        utility_account == self.utility.account() && self.zones.as_ref().is_none_or(|zones| zones.contains(zone))
    }
}

/// Requires a utility API key; returns who called.
pub async fn authorize(state: &AppState, request: &HttpRequest) -> Result<UtilityCaller, ApiError> {
    let caller = crate::auth::require_role(request, &state.api_keys, Role::Utility).await?;
    // A utility key always names a utility (`ApiKeys::new` drops those that do not).
    let utility =
        caller.utility.ok_or_else(|| ApiError::forbidden("forbidden", "this API key does not name a utility"))?;
    Ok(UtilityCaller { by: caller.key, utility, zones: caller.zones })
}

/// The answer for a zone that is not the caller's: the same as for an unknown zone.
fn unknown_zone() -> ApiError {
    ApiError::not_found("unknown_zone", "no such zone")
}

/// Requires `zone` to exist and be one the caller may act on (its utility's, within the key's
/// zones); 404 `unknown_zone` otherwise.
pub async fn require_own_zone(state: &AppState, caller: &UtilityCaller, zone: &ZoneId) -> Result<i64, ApiError> {
    let id = zone.clone();
    let found = settlement::registry::read(&state.db, move |conn| settlement::registry::zone(conn, &id))
        .await
        .map_err(ApiError::from)?;
    match found {
        Some(found) if caller.may_act_on(zone, &found.utility_account) => Ok(found.slot_len_ms),
        _ => Err(unknown_zone()),
    }
}

/// The zone a path names, which must be one the caller may act on ([`require_own_zone`]), with its
/// slot length; 400 `invalid_zone` for a malformed id.
pub async fn own_zone(state: &AppState, caller: &UtilityCaller, text: &str) -> Result<(ZoneId, i64), ApiError> {
    let zone = parse_zone(text)?;
    let slot_len_ms = require_own_zone(state, caller, &zone).await?;
    Ok((zone, slot_len_ms))
}

/// Whether `device` is registered in one of the zones the caller may act on.
fn device_is_callers(
    conn: &mut gridex_store::DbConnection,
    caller: &UtilityCaller,
    device: &DeviceId,
) -> Result<bool, settlement::registry::RegistryError> {
    let device = device.to_hex();
    for zone in settlement::registry::list_zones(conn)? {
        if caller.may_act_on(&zone.zone_id, &zone.utility_account)
            && settlement::registry::device_ids_in_zone(conn, &zone.zone_id)?.contains(&device)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn json_body<T: DeserializeOwned>(state: &AppState, payload: web::Payload) -> Result<T, ApiError> {
    let body = read_limited_body(payload, state.json_body_bytes_max).await?;
    serde_json::from_slice(&body).map_err(|error| {
        let code = if error.is_syntax() || error.is_eof() { "malformed_json" } else { "invalid_body" };
        ApiError::bad_request(code, error.to_string())
    })
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    #[schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$")]
    pub zone_id: ZoneId,
    /// 1 to 64 printable characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub name: String,
    /// The delivery slot length: 1 minute to 1 hour, dividing a day evenly; 15 minutes when absent.
    #[serde(default = "default_slot_len_ms")]
    #[schema(minimum = 60_000, maximum = 3_600_000, default = 900_000)]
    pub slot_len_ms: i64,
}

fn default_slot_len_ms() -> i64 {
    900_000
}

pub async fn create_zone(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    if caller.zones.is_some() {
        // 404 cannot fit a zone that does not exist yet.
        return Err(ApiError::forbidden("forbidden", "this API key is limited to some zones and cannot create one"));
    }
    let zone: NewZone = json_body(&state, payload).await?;
    let now_ms = state.now_ms();
    let (id, name, slot_len_ms) = (zone.zone_id.clone(), zone.name.clone(), zone.slot_len_ms);
    let utility = caller.utility.clone();
    crate::registry::write(&state.db, move |conn| {
        crate::registry::create_utility_zone(conn, &id, &name, slot_len_ms, &utility, now_ms)
    })
    .await?;
    tracing::info!(zone = %zone.zone_id, by = caller.by, utility = %caller.utility, "zone created");
    Ok(HttpResponse::Created().json(zone))
}

pub async fn set_tariff(
    state: web::Data<AppState>,
    request: HttpRequest,
    zone: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let by = caller.by.clone();
    let zone = parse_zone(&zone)?;
    let tariff: TariffView = json_body(&state, payload).await?;
    require_own_zone(&state, &caller, &zone).await?;
    let (id, stored) = (zone.clone(), tariff.clone());
    crate::registry::write(&state.db, move |conn| crate::registry::set_tariff(conn, &id, &stored)).await?;
    tracing::info!(%zone, by, effective_from_ms = tariff.effective_from_ms, "tariff set");
    Ok(HttpResponse::Ok().json(tariff))
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub account_id: AccountId,
    /// 1 to 64 printable characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub display_name: String,
    #[schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$")]
    pub zone: ZoneId,
}

/// A registration in one of the caller's zones: reads the JSON body, requires its zone (`zone_of`)
/// to be one the caller may act on, and runs `register` with the market clock's now in one registry
/// transaction. Returns who called and the body, for the audit log and the answer.
async fn register_in_own_zone<T>(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    zone_of: fn(&T) -> &ZoneId,
    register: fn(&mut gridex_store::DbConnection, &T, i64) -> Result<(), settlement::registry::RegistryError>,
) -> Result<(UtilityCaller, T), ApiError>
where
    T: DeserializeOwned + Clone + Send + 'static,
{
    let caller = authorize(state, request).await?;
    let body: T = json_body(state, payload).await?;
    require_own_zone(state, &caller, zone_of(&body)).await?;
    let now_ms = state.now_ms();
    let stored = body.clone();
    crate::registry::write(&state.db, move |conn| register(conn, &stored, now_ms)).await?;
    Ok((caller, body))
}

pub async fn register_account(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (caller, account) = register_in_own_zone(
        &state,
        &request,
        payload,
        |account: &NewAccount| &account.zone,
        |conn, account, now_ms| {
            crate::registry::register_account(conn, &account.account_id, &account.display_name, &account.zone, now_ms)
        },
    )
    .await?;
    tracing::info!(account = %account.account_id, by = caller.by, "account registered");
    Ok(HttpResponse::Created().json(account))
}

pub async fn register_device(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (caller, device) = register_in_own_zone(
        &state,
        &request,
        payload,
        |device: &DeviceRegistration| &device.zone,
        |conn, device, now_ms| crate::registry::register_device_with_role(conn, &device.device(), device.role, now_ms),
    )
    .await?;
    tracing::info!(device = %device.device_id, role = %device.role, by = caller.by, "device registered");
    Ok(HttpResponse::Created().json(device))
}

/// A meter replacement as the utility registers it (the device is named by the path).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReplacement {
    pub replaced_at_ms: i64,
    /// The old meter's final counters.
    #[schema(value_type = crate::openapi::wire::MeterCounters)]
    pub old: MeterCounters,
    /// The new meter's initial counters.
    #[schema(value_type = crate::openapi::wire::MeterCounters)]
    pub new: MeterCounters,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub new_meter_serial: MeterSerial,
    /// The utility's reference (a work order): 1 to 64 printable characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub reference: String,
}

impl NewReplacement {
    pub fn of(self, device_id: DeviceId) -> MeterReplacement {
        MeterReplacement {
            device_id,
            replaced_at_ms: self.replaced_at_ms,
            old: self.old,
            new: self.new,
            new_meter_serial: self.new_meter_serial,
            reference: self.reference,
            registered_ms: 0,
        }
    }
}

fn parse_device(text: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(text).map_err(|error| ApiError::bad_request("invalid_device", error.to_string()))
}

/// Registers a meter replacement: the exchange then accepts the device's readings from the new
/// meter's initial counters on (see `settlement::registry::register_meter_replacement`).
pub async fn register_replacement(
    state: web::Data<AppState>,
    request: HttpRequest,
    device: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let by = caller.by.clone();
    let device_id = parse_device(&device)?;
    let replacement = json_body::<NewReplacement>(&state, payload).await?.of(device_id);
    let now_ms = state.now_ms();
    let checked = caller.clone();
    let stored = crate::registry::write(&state.db, move |conn| {
        // Another utility's device answers as an unknown one.
        if !device_is_callers(conn, &checked, &replacement.device_id)? {
            return Err(settlement::registry::RegistryError::UnknownDevice(replacement.device_id.to_hex()));
        }
        settlement::registry::register_meter_replacement(conn, &replacement, now_ms)
    })
    .await?;
    tracing::info!(device = %device_id, by, replaced_at_ms = stored.replaced_at_ms, "meter replacement registered");
    Ok(HttpResponse::Created().json(stored))
}

/// A device of the zone that has sent no reading for longer than the configured limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SilentDevice {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub device_id: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub account_id: String,
    pub meter_serial: String,
    /// What the device meters (`grid`, `pv`, `battery`, `submeter`).
    pub role: String,
    /// When the exchange received its last reading; absent when it never sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_received_ms: Option<i64>,
    /// Since the last reading, or since registration for a device that never sent one.
    pub silent_for_ms: i64,
}

/// The zone's devices silent for longer than `silent_ms` at `now_ms` (readings received up to then
/// count; devices registered later are not listed), longest silent first.
pub fn silent_devices(
    conn: &mut gridex_store::DbConnection,
    zone: &ZoneId,
    now_ms: i64,
    silent_ms: i64,
) -> Result<Vec<SilentDevice>, gridex_store::DbError> {
    let registered = settlement::registry::zone_devices(conn, zone)?;
    let ids: Vec<String> = registered.iter().map(|(id, ..)| id.clone()).collect();
    let last = exchange::queries::last_received_ms(conn, &ids, now_ms)?;
    let mut silent: Vec<SilentDevice> = registered
        .into_iter()
        .filter_map(|(device_id, account_id, meter_serial, registered_ms, role)| {
            let last_received_ms = last.get(&device_id).copied().flatten();
            let silent_for_ms = now_ms.saturating_sub(last_received_ms.unwrap_or(registered_ms));
            (silent_for_ms > silent_ms).then_some(SilentDevice {
                device_id,
                account_id,
                meter_serial,
                role,
                last_received_ms,
                silent_for_ms,
            })
        })
        .collect();
    silent.sort_by(|a, b| b.silent_for_ms.cmp(&a.silent_for_ms).then_with(|| a.device_id.cmp(&b.device_id)));
    Ok(silent)
}

/// A settlement report with the zone's devices that were silent at the end of its slot.
#[derive(Debug, Serialize)]
pub struct ReportWithSilent<'a, T: Serialize> {
    #[serde(flatten)]
    pub report: &'a T,
    pub silent_devices: Vec<SilentDevice>,
}

/// The devices of `zone` silent at `at_ms` by the configured limit (for the slot report).
pub async fn silent_at(state: &AppState, zone: &ZoneId, at_ms: i64) -> Result<Vec<SilentDevice>, ApiError> {
    let (zone, silent_ms) = (zone.clone(), state.silent_device_ms);
    Ok(state.db.run(move |conn| silent_devices(conn, &zone, at_ms, silent_ms)).await?)
}

/// Silent devices of one page at most (`limit`).
pub const SILENT_DEVICES_LIMIT_MAX: i64 = 1_000;
/// Silent devices of one page when the request names no `limit`.
pub const SILENT_DEVICES_LIMIT_DEFAULT: i64 = 500;

/// Where the next page of silent devices starts: after this device in the list's order (longest
/// silent first, then by id), told by when its silence began, which does not move with the clock
/// as the silence's length does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentCursor {
    pub silent_since_ms: i64,
    pub device_id: String,
}

impl SilentCursor {
    pub fn encode(&self) -> String {
        CursorWriter::new(CursorKind::SilentDevices).int(self.silent_since_ms).text(&self.device_id).finish()
    }

    pub fn parse(text: &str) -> Result<SilentCursor, ApiError> {
        let mut reader = CursorReader::open(CursorKind::SilentDevices, text)?;
        let silent_since_ms = reader.int()?;
        let device = DeviceId::parse(&reader.text()?).map_err(|_| invalid_cursor())?;
        reader.end()?;
        Ok(SilentCursor { silent_since_ms, device_id: device.to_hex() })
    }

    fn of(device: &SilentDevice, now_ms: i64) -> SilentCursor {
        SilentCursor {
            silent_since_ms: now_ms.saturating_sub(device.silent_for_ms),
            device_id: device.device_id.clone(),
        }
    }
}

/// `/zones/{zone}/devices/silent` query: the page length and, after the first page, the cursor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilentQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The devices of `silent` (in [`silent_devices`]' order) after `after`, at most `limit`, and the
/// next page's cursor if more follow.
pub fn silent_page(
    silent: Vec<SilentDevice>,
    now_ms: i64,
    after: Option<&SilentCursor>,
    limit: i64,
) -> (Vec<SilentDevice>, Option<SilentCursor>) {
    let key = |cursor: &SilentCursor| (cursor.silent_since_ms, cursor.device_id.clone());
    let mut page: Vec<SilentDevice> = silent
        .into_iter()
        .filter(|device| after.is_none_or(|after| key(&SilentCursor::of(device, now_ms)) > key(after)))
        .take(usize::try_from(limit).unwrap_or(usize::MAX).saturating_add(1))
        .collect();
    let more = cut_page(&mut page, limit);
    let next = page.last().filter(|_| more).map(|last| SilentCursor::of(last, now_ms));
    (page, next)
}

/// The zone's devices silent for longer than the configured limit now, longest silent first, one
/// page at a time (keyset on when their silence began and their id).
pub async fn zone_silent_devices(
    state: web::Data<AppState>,
    request: HttpRequest,
    zone: web::Path<String>,
    query: web::Query<SilentQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let zone = parse_zone(&zone)?;
    let query = query.into_inner();
    let limit = page_len(query.limit, SILENT_DEVICES_LIMIT_DEFAULT, SILENT_DEVICES_LIMIT_MAX)?;
    let after = query.cursor.as_deref().map(SilentCursor::parse).transpose()?;
    require_own_zone(&state, &caller, &zone).await?;
    let now_ms = state.now_ms();
    let (page, next) = silent_page(silent_at(&state, &zone, now_ms).await?, now_ms, after.as_ref(), limit);
    Ok(with_next_page(HttpResponse::Ok(), &request, next.map(|next| next.encode())).json(page))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    pub zone: Option<String>,
    pub device: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// The next page's cursor, from the previous page's `X-Next-Cursor`.
    pub cursor: Option<String>,
}

pub async fn export_readings(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let query = query.into_inner();
    let (from_ms, to_ms) =
        range(&RangeQuery { from_ms: query.from_ms, to_ms: query.to_ms }, state.now_ms(), EXPORT_RANGE_MS_MAX)?;
    let selection = match (query.zone, query.device) {
        (Some(zone), None) => Selection::Zone(parse_zone(&zone)?),
        (None, Some(device)) => Selection::Device(
            DeviceId::parse(&device).map_err(|error| ApiError::bad_request("invalid_query", error.to_string()))?,
        ),
        _ => return Err(ApiError::bad_request("invalid_query", "give exactly one of zone or device")),
    };
    let after = query.cursor.as_deref().map(crate::trader::ReadingsCursor::parse).transpose()?;
    match &selection {
        Selection::Zone(zone) => {
            require_own_zone(&state, &caller, zone).await?;
        }
        Selection::Device(device) => {
            let (checked, device) = (caller.clone(), *device);
            let own = settlement::registry::read(&state.db, move |conn| device_is_callers(conn, &checked, &device))
                .await
                .map_err(ApiError::from)?;
            if !own {
                // Another utility's device answers as an unknown one: no readings.
                return Err(settlement::registry::RegistryError::UnknownDevice(device.to_hex()).into());
            }
        }
    }
    let page = state
        .db
        .run(move |conn| {
            let device_ids: Vec<String> = match selection {
                Selection::Zone(zone) => settlement::registry::device_ids_in_zone(conn, &zone)?,
                Selection::Device(device) => vec![device.to_hex()],
            };
            crate::trader::load_readings_page(conn, device_ids, from_ms, to_ms, after.as_ref())
        })
        .await?;
    let mut csv =
        String::from("device,seq,ts_ms,import_wh,export_wh,pv_wh,power_w,interval_import_wh,interval_export_wh\n");
    for row in page.rows {
        let pv = row.pv_wh.map(|pv| pv.to_string()).unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{}",
            row.device,
            row.seq,
            row.ts_ms,
            row.import_wh,
            row.export_wh,
            pv,
            row.power_w,
            row.interval_import_wh,
            row.interval_export_wh
        );
    }
    Ok(with_next_page(HttpResponse::Ok(), &request, page.next.map(|next| next.encode()))
        .content_type("text/csv; charset=utf-8")
        .body(csv))
}

enum Selection {
    Zone(ZoneId),
    Device(DeviceId),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// http:// or https://, at most 2048 characters, on a public address.
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    pub id: String,
    pub url: String,
    /// The HMAC-SHA256 key of the deliveries' X-Gridex-Signature; shown only in this response.
    pub secret: String,
}

pub async fn create_webhook(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let by = caller.by.clone();
    let new: NewWebhook = json_body(&state, payload).await?;
    // `registered_by` is the utility: it owns the registration and hears of its own zones only.
    let (hook, secret) =
        state.webhooks.register(&new.url, caller.utility.as_str()).await.map_err(|error| match error {
            WebhookError::BadUrl => ApiError::bad_request("invalid_value", error.to_string()),
            WebhookError::TooMany => ApiError::conflict("too_many_webhooks", error.to_string()),
            WebhookError::RefusedTarget(_) => ApiError::bad_request("refused_target", error.to_string()),
            WebhookError::Db(error) => ApiError::internal(error),
        })?;
    tracing::info!(webhook = %hook.id, by, "webhook registered");
    Ok(HttpResponse::Created().json(WebhookCreated { id: hook.id, url: hook.url, secret }))
}

pub async fn list_webhooks(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    Ok(HttpResponse::Ok().json(state.webhooks.list_registered_by(caller.utility.as_str()).await?))
}

/// Deletes a registration; its pending deliveries are dropped with it.
pub async fn delete_webhook(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let by = caller.by.clone();
    if !state.webhooks.delete_registered_by(&id, caller.utility.as_str()).await? {
        return Err(ApiError::not_found("unknown_webhook", "no such webhook"));
    }
    tracing::info!(webhook = %id, by, "webhook deleted");
    Ok(HttpResponse::NoContent().finish())
}
