//! `POST /api/v1/zones/{zone}/reconcile`: the utility's own meter data (CSV) against gridex's
//! metered energy per device and slot, answered as a JSON report. Nothing is stored.
//!
//! The body is CSV (RFC 4180) with exactly this header and one row per device and slot:
//!
//! ```text
//! device_id,slot_start,import_wh,export_wh
//! 8a…(64 hex),2026-12-04T10:15:00Z,1200,0
//! 8a…(64 hex),1764843300000,900,35
//! ```
//!
//! A UTF-8 byte order mark before the header is ignored. `slot_start` is RFC 3339 or integer unix milliseconds, aligned to the zone's slot length;
//! `import_wh`/`export_wh` are non-negative integers. The last line ends with a line break (so a
//! cut-off upload is told apart from a complete one). A row that breaks a rule, and a repeated
//! (device, slot), is a 400 `invalid_csv` naming its line.
//!
//! gridex's side is `settlement::intervals` over the slots from the earliest to the latest
//! `slot_start` of the body, for every device of the zone. The report lists the (device, slot)
//! pairs where both have a value and they differ, those only the utility has (`unknown_device`: not
//! a device of the zone; `no_data`: gridex has no metered value), those only gridex has, and totals
//! over everything each side has. Differences are utility − gridex.

use crate::error::ApiError;
use crate::espi::checked_range;
use crate::state::AppState;
use crate::trader::read_limited_body;
use crate::utility::{authorize, own_zone};
use actix_web::{web, HttpRequest, HttpResponse};
use protocol::{DeviceId, ZoneId};
use serde::{Deserialize, Serialize};
use settlement::intervals::{device_intervals, DeviceIntervals, SlotRange};
use std::collections::{BTreeMap, BTreeSet};

/// Largest CSV body: 8 MiB, about 80 000 rows of 100 bytes (a week of 15-minute slots of some 120
/// devices); a larger zone is reconciled in parts.
pub const RECONCILE_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most data rows of one body (below the body limit for rows of the shortest form).
pub const RECONCILE_ROWS_MAX: usize = 100_000;
/// The header a body must start with.
pub const HEADER: [&str; 4] = ["device_id", "slot_start", "import_wh", "export_wh"];

/// One row of the utility's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtilityRow {
    pub line: u64,
    pub device_id: String,
    pub slot_start_ms: i64,
    pub import_wh: i64,
    pub export_wh: i64,
}

/// Why a body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("the CSV has a header but no rows")]
    NoRows,
    #[error("the CSV has more than {RECONCILE_ROWS_MAX} rows")]
    TooManyRows,
}

fn at(line: u64, message: impl Into<String>) -> CsvError {
    CsvError::Line { line, message: message.into() }
}

/// `slot_start`: integer unix ms or RFC 3339.
fn parse_slot_start(text: &str) -> Option<i64> {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text.parse().ok();
    }
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

fn parse_wh(line: u64, name: &str, text: &str) -> Result<i64, CsvError> {
    match text.parse::<i64>() {
        Ok(wh) if wh >= 0 => Ok(wh),
        _ => Err(at(line, format!("{name} must be a non-negative integer of Wh, not `{text}`"))),
    }
}

fn parse_row(line: u64, record: &csv::StringRecord, slot_len_ms: i64) -> Result<UtilityRow, CsvError> {
    if record.len() != HEADER.len() {
        return Err(at(line, format!("expected {} fields, found {}", HEADER.len(), record.len())));
    }
    let field = |index: usize| record.get(index).unwrap_or_default().trim();
    let device_id =
        DeviceId::parse(field(0)).map_err(|error| at(line, format!("device_id `{}`: {error}", field(0))))?.to_hex();
    let slot_start_ms = parse_slot_start(field(1))
        .ok_or_else(|| at(line, format!("slot_start `{}` is neither RFC 3339 nor unix ms", field(1))))?;
    if slot_start_ms < 0 || slot_start_ms % slot_len_ms != 0 {
        return Err(at(line, format!("slot_start {slot_start_ms} ms is not the start of a {slot_len_ms} ms slot")));
    }
    let import_wh = parse_wh(line, "import_wh", field(2))?;
    let export_wh = parse_wh(line, "export_wh", field(3))?;
    Ok(UtilityRow { line, device_id, slot_start_ms, import_wh, export_wh })
}

/// The rows of `body`, every one checked; the first refusal names its line.
pub fn parse_csv(body: &[u8], slot_len_ms: i64) -> Result<Vec<UtilityRow>, CsvError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(body);
    let mut rows = Vec::new();
    let mut seen: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut last_line = 0;
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|error| {
            let line = error.position().map_or(last_line + 1, csv::Position::line);
            at(line, error.to_string())
        })?;
        let line = record.position().map_or(last_line + 1, csv::Position::line);
        last_line = line;
        if index == 0 {
            // A spreadsheet's UTF-8 export may start with a byte order mark.
            let header: Vec<&str> = record.iter().map(|name| name.trim_start_matches('\u{feff}').trim()).collect();
            if header != HEADER {
                return Err(at(line, format!("the header must be `{}`", HEADER.join(","))));
            }
            continue;
        }
        if rows.len() == RECONCILE_ROWS_MAX {
            return Err(CsvError::TooManyRows);
        }
        let row = parse_row(line, &record, slot_len_ms)?;
        if let Some(first) = seen.insert((row.device_id.clone(), row.slot_start_ms), line) {
            return Err(at(line, format!("device and slot_start repeat line {first}")));
        }
        rows.push(row);
    }
    if last_line == 0 {
        return Err(at(1, format!("the header must be `{}`", HEADER.join(","))));
    }
    if !body.ends_with(b"\n") {
        return Err(at(last_line, "the last line does not end with a line break: the upload looks cut off"));
    }
    if rows.is_empty() {
        return Err(CsvError::NoRows);
    }
    Ok(rows)
}

/// A (device, slot) both sides have, with different values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Difference {
    pub device_id: String,
    pub slot_start_ms: i64,
    pub gridex_import_wh: i64,
    pub gridex_export_wh: i64,
    pub utility_import_wh: i64,
    pub utility_export_wh: i64,
    /// utility − gridex.
    pub import_difference_wh: i64,
    /// utility − gridex.
    pub export_difference_wh: i64,
}

/// A (device, slot) only one side has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OneSided {
    pub device_id: String,
    pub slot_start_ms: i64,
    pub import_wh: i64,
    pub export_wh: i64,
    /// For the utility's rows: `unknown_device` (not a device of the zone) or `no_data` (gridex has
    /// no metered value for the slot); absent for gridex's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The row's line in the body (utility's rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

/// Sums over everything each side has in the range; differences are utility − gridex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Totals {
    pub gridex_import_wh: i64,
    pub gridex_export_wh: i64,
    pub utility_import_wh: i64,
    pub utility_export_wh: i64,
    pub import_difference_wh: i64,
    pub export_difference_wh: i64,
}

/// The reconciliation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReconcileReport {
    pub zone: String,
    pub slot_len_ms: i64,
    /// The first slot's start and the last slot's end.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Rows of the body.
    pub utility_rows: usize,
    /// (device, slot) pairs both sides have, equal or not.
    pub compared: usize,
    pub matching: usize,
    pub differences: Vec<Difference>,
    pub utility_only: Vec<OneSided>,
    pub gridex_only: Vec<OneSided>,
    pub totals: Totals,
}

/// Compares `rows` with gridex's `intervals` (every device of the zone) over `range`. Pure.
pub fn reconcile(
    zone: &ZoneId,
    rows: &[UtilityRow],
    range: SlotRange,
    intervals: &BTreeMap<String, DeviceIntervals>,
) -> ReconcileReport {
    let mut report = ReconcileReport {
        zone: zone.to_string(),
        slot_len_ms: range.slot_len_ms,
        from_ms: range.first_ms,
        to_ms: range.end_ms(),
        utility_rows: rows.len(),
        compared: 0,
        matching: 0,
        differences: Vec::new(),
        utility_only: Vec::new(),
        gridex_only: Vec::new(),
        totals: Totals::default(),
    };
    let mut reported: BTreeSet<(&str, i64)> = BTreeSet::new();
    for row in rows {
        report.totals.utility_import_wh += row.import_wh;
        report.totals.utility_export_wh += row.export_wh;
        reported.insert((row.device_id.as_str(), row.slot_start_ms));
        let index = (row.slot_start_ms - range.first_ms) / range.slot_len_ms;
        let gridex = intervals
            .get(&row.device_id)
            .map(|slots| usize::try_from(index).ok().and_then(|index| slots.get(index)).copied().flatten());
        let one_sided = |reason: &str| OneSided {
            device_id: row.device_id.clone(),
            slot_start_ms: row.slot_start_ms,
            import_wh: row.import_wh,
            export_wh: row.export_wh,
            reason: Some(reason.to_owned()),
            line: Some(row.line),
        };
        match gridex {
            None => report.utility_only.push(one_sided("unknown_device")),
            Some(None) => report.utility_only.push(one_sided("no_data")),
            Some(Some(energy)) => {
                report.compared += 1;
                if (energy.import_wh, energy.export_wh) == (row.import_wh, row.export_wh) {
                    report.matching += 1;
                } else {
                    report.differences.push(Difference {
                        device_id: row.device_id.clone(),
                        slot_start_ms: row.slot_start_ms,
                        gridex_import_wh: energy.import_wh,
                        gridex_export_wh: energy.export_wh,
                        utility_import_wh: row.import_wh,
                        utility_export_wh: row.export_wh,
                        import_difference_wh: row.import_wh - energy.import_wh,
                        export_difference_wh: row.export_wh - energy.export_wh,
                    });
                }
            }
        }
    }
    for (device_id, slots) in intervals {
        for (index, energy) in (0_i64..).zip(slots) {
            let Some(energy) = energy else { continue };
            report.totals.gridex_import_wh += energy.import_wh;
            report.totals.gridex_export_wh += energy.export_wh;
            let slot_start_ms = range.start_ms(index);
            if !reported.contains(&(device_id.as_str(), slot_start_ms)) {
                report.gridex_only.push(OneSided {
                    device_id: device_id.clone(),
                    slot_start_ms,
                    import_wh: energy.import_wh,
                    export_wh: energy.export_wh,
                    reason: None,
                    line: None,
                });
            }
        }
    }
    let by_key = |a: &Difference, b: &Difference| (&a.device_id, a.slot_start_ms).cmp(&(&b.device_id, b.slot_start_ms));
    report.differences.sort_by(by_key);
    report.utility_only.sort_by(|a, b| (&a.device_id, a.slot_start_ms).cmp(&(&b.device_id, b.slot_start_ms)));
    report.totals.import_difference_wh = report.totals.utility_import_wh - report.totals.gridex_import_wh;
    report.totals.export_difference_wh = report.totals.utility_export_wh - report.totals.gridex_export_wh;
    report
}

/// `POST /api/v1/zones/{zone}/reconcile` with the CSV body.
pub async fn reconcile_zone(
    state: web::Data<AppState>,
    request: HttpRequest,
    zone: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let (zone, slot_len_ms) = own_zone(&state, &caller, &zone).await?;
    let body = read_limited_body(payload, RECONCILE_BODY_BYTES_MAX).await?;
    let rows =
        parse_csv(&body, slot_len_ms).map_err(|error| ApiError::bad_request("invalid_csv", error.to_string()))?;
    // Not empty: `parse_csv` refuses a body without rows.
    let first_ms = rows.iter().map(|row| row.slot_start_ms).min().unwrap_or_default();
    let last_ms = rows.iter().map(|row| row.slot_start_ms).max().unwrap_or_default();
    let listed = zone.clone();
    let device_ids =
        settlement::registry::read(&state.db, move |conn| settlement::registry::device_ids_in_zone(conn, &listed))
            .await
            .map_err(ApiError::from)?;
    let range = checked_range(first_ms, last_ms.saturating_add(slot_len_ms), slot_len_ms, device_ids.len())?;
    let gap_ms_max = settlement::READING_GAP_MS_MAX_DEFAULT;
    let intervals = state.db.run(move |conn| device_intervals(conn, &device_ids, range, gap_ms_max)).await?;
    let report = reconcile(&zone, &rows, range, &intervals);
    tracing::info!(
        %zone,
        by = caller.by,
        rows = report.utility_rows,
        differences = report.differences.len(),
        "meter data reconciled"
    );
    Ok(HttpResponse::Ok().json(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use settlement::metering::MeteredEnergy;

    const SLOT: i64 = 900_000;

    fn device(seed: u8) -> String {
        DeviceId::from_verifying_key(&protocol::testing::signing_key(seed).verifying_key()).to_hex()
    }

    #[test]
    fn a_body_with_rfc3339_and_millisecond_slots_parses() {
        let body = format!(
            "device_id,slot_start,import_wh,export_wh\n{0},1970-01-01T00:15:00Z,5,0\n{0},1800000,6,1\n",
            device(1)
        );
        let rows = parse_csv(body.as_bytes(), SLOT).expect("valid");
        let with_bom = format!("\u{feff}{body}");
        assert_eq!(
            parse_csv(with_bom.as_bytes(), SLOT),
            Ok(rows.clone()),
            "a byte order mark is not part of the header"
        );
        assert_eq!(
            rows.iter().map(|row| (row.line, row.slot_start_ms)).collect::<Vec<_>>(),
            vec![(2, SLOT), (3, 2 * SLOT)]
        );
    }

    #[test]
    fn each_broken_row_is_refused_with_its_line() {
        let ok = format!("{},0,1,1", device(1));
        let cases = [
            ("device_id,slot,import_wh,export_wh\n".to_owned(), 1),
            (format!("device_id,slot_start,import_wh,export_wh\n{ok}\nnot-a-device,0,1,1\n"), 3),
            (format!("device_id,slot_start,import_wh,export_wh\n{},12,1,1\n", device(2)), 2),
            (format!("device_id,slot_start,import_wh,export_wh\n{},0,-1,1\n", device(2)), 2),
            (format!("device_id,slot_start,import_wh,export_wh\n{},0,1\n", device(2)), 2),
            (format!("device_id,slot_start,import_wh,export_wh\n{ok}\n{ok}\n"), 3),
            (format!("device_id,slot_start,import_wh,export_wh\n{ok}\n{},900000,1", device(2)), 3),
            (format!("device_id,slot_start,import_wh,export_wh\n{ok}\n{},900000,1,1", device(2)), 3),
        ];
        for (body, line) in cases {
            match parse_csv(body.as_bytes(), SLOT) {
                Err(CsvError::Line { line: found, .. }) => assert_eq!(found, line, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(parse_csv(b"device_id,slot_start,import_wh,export_wh\n", SLOT), Err(CsvError::NoRows));
    }

    #[test]
    fn the_report_lists_differences_and_what_only_one_side_has() {
        let zone = ZoneId::parse("z").expect("valid");
        let range = SlotRange { first_ms: 0, slot_len_ms: SLOT, count: 2 };
        let (a, b, stranger) = (device(1), device(2), device(3));
        let energy = |import_wh, export_wh| Some(MeteredEnergy { import_wh, export_wh });
        let intervals =
            BTreeMap::from([(a.clone(), vec![energy(10, 0), energy(20, 5)]), (b.clone(), vec![energy(7, 0), None])]);
        let row = |line, device: &String, slot: i64, import_wh, export_wh| UtilityRow {
            line,
            device_id: device.clone(),
            slot_start_ms: slot * SLOT,
            import_wh,
            export_wh,
        };
        let rows = [row(2, &a, 0, 10, 0), row(3, &a, 1, 22, 5), row(4, &b, 1, 3, 0), row(5, &stranger, 0, 1, 1)];
        let report = reconcile(&zone, &rows, range, &intervals);
        assert_eq!((report.compared, report.matching), (2, 1));
        assert_eq!(report.differences.len(), 1);
        assert_eq!((report.differences[0].import_difference_wh, report.differences[0].export_difference_wh), (2, 0));
        let reasons: Vec<_> = report.utility_only.iter().map(|one| (one.line, one.reason.clone())).collect();
        let expected = [(Some(4), "no_data"), (Some(5), "unknown_device")];
        let mut expected: Vec<_> = expected.iter().map(|(line, reason)| (*line, Some((*reason).to_owned()))).collect();
        expected.sort_by_key(|(line, _)| *line);
        let mut reasons = reasons;
        reasons.sort_by_key(|(line, _)| *line);
        assert_eq!(reasons, expected);
        assert_eq!(
            report.gridex_only.iter().map(|one| (one.device_id.clone(), one.import_wh)).collect::<Vec<_>>(),
            vec![(b, 7)]
        );
        assert_eq!(
            report.totals,
            Totals {
                gridex_import_wh: 37,
                gridex_export_wh: 5,
                utility_import_wh: 36,
                utility_export_wh: 6,
                import_difference_wh: -1,
                export_difference_wh: 1
            }
        );
    }
}
