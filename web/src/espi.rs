//! `GET /api/v1/export/espi`: a zone's interval data as a Green Button (NAESB REQ.21 ESPI) Atom
//! feed, next to the CSV export of raw readings (`utility::export_readings`).
//!
//! Per device of the zone (or the one `device` named): a `UsagePoint` entry, then for each flow
//! direction a `MeterReading`, its `ReadingType` and one `IntervalBlock`. Forward
//! (`flowDirection` 1) is the energy the home imported from the grid, reverse (19) what it exported;
//! each is a separate MeterReading with its own ReadingType: `uom` 72 (Wh), `powerOfTenMultiplier`
//! 0, `kind` 12 (energy), `accumulationBehaviour` 4 (delta data, the energy of each interval),
//! `intervalLength` the zone's slot length in seconds. An `IntervalReading` per slot with data holds
//! `timePeriod` (start in epoch seconds, duration in seconds) and `value`, integer Wh, computed by
//! the settlement rule (`settlement::intervals`); a slot without data ("no data") has no
//! IntervalReading. Link `href`s name the resources in ESPI's URI pattern; gridex serves only this
//! feed. Ids are name-based UUIDs, so an export of the same range names the same resources.
//!
//! The XML is written by `quick_xml`'s writer, which escapes every text and attribute value.

use crate::error::ApiError;
use crate::public::parse_zone;
use crate::state::AppState;
use crate::utility::{authorize, require_own_zone};
use actix_web::{web, HttpRequest, HttpResponse};
use protocol::{DeviceId, ZoneId};
use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;
use serde::Deserialize;
use settlement::intervals::{device_intervals, DeviceIntervals, SlotRange, INTERVAL_SLOTS_MAX};
use settlement::metering::MeteredEnergy;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;

/// The ESPI namespace, declared on each resource inside an entry's `content`.
pub const ESPI_NS: &str = "http://naesb.org/espi";
/// The Atom namespace of the feed.
pub const ATOM_NS: &str = "http://www.w3.org/2005/Atom";
/// Most device-slots (devices × slots) one export or reconciliation computes: a week of 15-minute
/// slots for 150 devices, about 30 MB of XML at the most; a larger zone is exported in shorter
/// ranges or device by device.
pub const DEVICE_SLOTS_MAX: i64 = 150 * INTERVAL_SLOTS_MAX;

/// `/export/espi` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EspiQuery {
    pub zone: String,
    /// One device of the zone only.
    pub device: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// A flow direction of ESPI's `ReadingType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Delivered to the home: its import.
    Forward,
    /// Received from the home: its export.
    Reverse,
}

impl Flow {
    pub const ALL: [Flow; 2] = [Flow::Forward, Flow::Reverse];

    /// ESPI `FlowDirectionKind`.
    pub fn code(self) -> u16 {
        match self {
            Flow::Forward => 1,
            Flow::Reverse => 19,
        }
    }

    /// The MeterReading's number under its UsagePoint.
    fn number(self) -> u8 {
        match self {
            Flow::Forward => 1,
            Flow::Reverse => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flow::Forward => "import (forward)",
            Flow::Reverse => "export (reverse)",
        }
    }

    fn energy_wh(self, energy: &MeteredEnergy) -> i64 {
        match self {
            Flow::Forward => energy.import_wh,
            Flow::Reverse => energy.export_wh,
        }
    }
}

/// What a feed covers: a zone's slot range and the devices' interval data over it.
#[derive(Debug)]
pub struct Feed<'a> {
    pub zone: &'a ZoneId,
    pub range: SlotRange,
    pub updated_ms: i64,
    pub devices: &'a BTreeMap<String, DeviceIntervals>,
}

type XmlWriter = Writer<Vec<u8>>;

/// A name-based UUID URN: SHA-256 of `gridex/espi/` and the resource's href, as UUID version 8.
fn urn(href: &str) -> String {
    let digest = Sha256::digest(format!("gridex/espi/{href}").as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!("urn:uuid:{}", uuid::Builder::from_custom_bytes(bytes).into_uuid().hyphenated())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn text(writer: &mut XmlWriter, name: &str, value: &str) -> io::Result<()> {
    writer.create_element(name).write_text_content(BytesText::new(value))?;
    Ok(())
}

/// An Atom entry: id, links, title, the ESPI resource as content, published and updated.
fn entry(
    writer: &mut XmlWriter,
    href: &str,
    links: &[(&str, String)],
    title: &str,
    updated: &str,
    content: impl FnOnce(&mut XmlWriter) -> io::Result<()>,
) -> io::Result<()> {
    writer.create_element("entry").write_inner_content(|writer| {
        text(writer, "id", &urn(href))?;
        writer.create_element("link").with_attribute(("rel", "self")).with_attribute(("href", href)).write_empty()?;
        for (rel, link) in links {
            writer
                .create_element("link")
                .with_attribute(("rel", *rel))
                .with_attribute(("href", link.as_str()))
                .write_empty()?;
        }
        text(writer, "title", title)?;
        writer.create_element("content").write_inner_content(content)?;
        text(writer, "published", updated)?;
        text(writer, "updated", updated)
    })?;
    Ok(())
}

/// The ESPI resource `name` in its namespace, its children written by `inner`.
fn resource(
    writer: &mut XmlWriter,
    name: &str,
    inner: impl FnOnce(&mut XmlWriter) -> io::Result<()>,
) -> io::Result<()> {
    writer.create_element(name).with_attribute(("xmlns", ESPI_NS)).write_inner_content(inner)?;
    Ok(())
}

fn interval(writer: &mut XmlWriter, name: &str, start_s: i64, duration_s: i64) -> io::Result<()> {
    writer.create_element(name).write_inner_content(|writer| {
        text(writer, "duration", &duration_s.to_string())?;
        text(writer, "start", &start_s.to_string())
    })?;
    Ok(())
}

fn reading_type(writer: &mut XmlWriter, flow: Flow, slot_len_s: i64) -> io::Result<()> {
    resource(writer, "ReadingType", |writer| {
        // Element order is the schema's sequence.
        for (name, value) in [
            ("accumulationBehaviour", "4".to_owned()),
            ("commodity", "1".to_owned()),
            ("dataQualifier", "12".to_owned()),
            ("flowDirection", flow.code().to_string()),
            ("intervalLength", slot_len_s.to_string()),
            ("kind", "12".to_owned()),
            ("phase", "769".to_owned()),
            ("powerOfTenMultiplier", "0".to_owned()),
            ("timeAttribute", "0".to_owned()),
            ("uom", "72".to_owned()),
        ] {
            text(writer, name, &value)?;
        }
        Ok(())
    })
}

fn interval_block(
    writer: &mut XmlWriter,
    flow: Flow,
    range: SlotRange,
    slot_len_s: i64,
    intervals: &DeviceIntervals,
) -> io::Result<()> {
    resource(writer, "IntervalBlock", |writer| {
        interval(writer, "interval", range.first_ms / 1_000, range.count * slot_len_s)?;
        for (index, energy) in (0_i64..).zip(intervals) {
            let Some(energy) = energy else { continue };
            writer.create_element("IntervalReading").write_inner_content(|writer| {
                interval(writer, "timePeriod", range.start_ms(index) / 1_000, slot_len_s)?;
                text(writer, "value", &flow.energy_wh(energy).to_string())
            })?;
        }
        Ok(())
    })
}

fn device_entries(
    writer: &mut XmlWriter,
    feed: &Feed<'_>,
    device: &str,
    intervals: &DeviceIntervals,
    updated: &str,
) -> io::Result<()> {
    let slot_len_s = feed.range.slot_len_ms / 1_000;
    let usage_point = format!("/espi/1_1/resource/Subscription/{}/UsagePoint/{device}", feed.zone);
    let readings = format!("{usage_point}/MeterReading");
    entry(writer, &usage_point, &[("related", readings.clone())], &format!("Meter {device}"), updated, |writer| {
        resource(writer, "UsagePoint", |writer| {
            writer.create_element("ServiceCategory").write_inner_content(|writer| text(writer, "kind", "0"))?;
            Ok(())
        })
    })?;
    for flow in Flow::ALL {
        let meter_reading = format!("{readings}/{}", flow.number());
        let reading_type_href = format!("/espi/1_1/resource/ReadingType/{device}-{}-{}", flow.number(), slot_len_s);
        let block = format!("{meter_reading}/IntervalBlock/{}", feed.range.first_ms / 1_000);
        let links = [
            ("up", readings.clone()),
            ("related", reading_type_href.clone()),
            ("related", format!("{meter_reading}/IntervalBlock")),
        ];
        let title = format!("{} energy of {device}", flow.name());
        entry(writer, &meter_reading, &links, &title, updated, |writer| resource(writer, "MeterReading", |_| Ok(())))?;
        entry(writer, &reading_type_href, &[], &format!("Wh, {} s", slot_len_s), updated, |writer| {
            reading_type(writer, flow, slot_len_s)
        })?;
        let up = [("up", format!("{meter_reading}/IntervalBlock"))];
        entry(writer, &block, &up, &title, updated, |writer| {
            interval_block(writer, flow, feed.range, slot_len_s, intervals)
        })?;
    }
    Ok(())
}

/// The feed as XML.
pub fn feed_xml(feed: &Feed<'_>) -> io::Result<String> {
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let updated = rfc3339(feed.updated_ms);
    let self_href =
        format!("/api/v1/export/espi?zone={}&from_ms={}&to_ms={}", feed.zone, feed.range.first_ms, feed.range.end_ms());
    writer.create_element("feed").with_attribute(("xmlns", ATOM_NS)).write_inner_content(|writer| {
        let devices: Vec<&str> = feed.devices.keys().map(String::as_str).collect();
        text(writer, "id", &urn(&format!("{self_href}&devices={}", devices.join(","))))?;
        text(writer, "title", &format!("gridex interval data, zone {}", feed.zone))?;
        text(writer, "updated", &updated)?;
        writer
            .create_element("link")
            .with_attribute(("rel", "self"))
            .with_attribute(("href", self_href.as_str()))
            .write_empty()?;
        for (device, intervals) in feed.devices {
            device_entries(writer, feed, device, intervals, &updated)?;
        }
        Ok(())
    })?;
    String::from_utf8(writer.into_inner()).map_err(io::Error::other)
}

/// The zone's slots of `[from_ms, to_ms)` for `devices` devices, within the limits.
pub fn checked_range(from_ms: i64, to_ms: i64, slot_len_ms: i64, devices: usize) -> Result<SlotRange, ApiError> {
    let range = SlotRange::covering(from_ms, to_ms, slot_len_ms).ok_or_else(|| {
        ApiError::bad_request("range_too_long", format!("the range may cover at most {INTERVAL_SLOTS_MAX} slots"))
    })?;
    let device_slots = range.count.saturating_mul(i64::try_from(devices).unwrap_or(i64::MAX));
    if device_slots > DEVICE_SLOTS_MAX {
        let message = format!(
            "{devices} devices × {} slots exceeds {DEVICE_SLOTS_MAX} device-slots; ask for a shorter range or one device",
            range.count
        );
        return Err(ApiError::bad_request("range_too_long", message));
    }
    Ok(range)
}

/// `GET /api/v1/export/espi?zone=…[&device=…]&from_ms=…&to_ms=…`.
pub async fn export_espi(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<EspiQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &request).await?;
    let query = query.into_inner();
    let zone = parse_zone(&query.zone)?;
    let device = query
        .device
        .as_deref()
        .map(|device| {
            DeviceId::parse(device).map_err(|error| ApiError::bad_request("invalid_query", error.to_string()))
        })
        .transpose()?;
    let range_query = crate::public::RangeQuery { from_ms: query.from_ms, to_ms: query.to_ms };
    let (from_ms, to_ms) = crate::public::range(&range_query, state.now_ms(), crate::utility::EXPORT_RANGE_MS_MAX)?;
    let slot_len_ms = require_own_zone(&state, &caller, &zone).await?;
    if slot_len_ms % 1_000 != 0 {
        return Err(ApiError::bad_request("unsupported_slot_length", "ESPI intervals are whole seconds"));
    }
    let listed = zone.clone();
    let mut device_ids =
        settlement::registry::read(&state.db, move |conn| settlement::registry::device_ids_in_zone(conn, &listed))
            .await
            .map_err(ApiError::from)?;
    if let Some(device) = device {
        let device = device.to_hex();
        if !device_ids.contains(&device) {
            // Another zone's device answers as an unknown one.
            return Err(ApiError::not_found("unknown_device", "no such device in this zone"));
        }
        device_ids = vec![device];
    }
    let range = checked_range(from_ms, to_ms, slot_len_ms, device_ids.len())?;
    let gap_ms_max = settlement::READING_GAP_MS_MAX_DEFAULT;
    let devices = state.db.run(move |conn| device_intervals(conn, &device_ids, range, gap_ms_max)).await?;
    let feed = Feed { zone: &zone, range, updated_ms: state.now_ms(), devices: &devices };
    let xml = feed_xml(&feed).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().content_type("application/atom+xml; charset=utf-8").body(xml))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_slots_without_data_have_no_reading() {
        let zone = ZoneId::parse("z-1").expect("valid");
        let mut devices = BTreeMap::new();
        devices.insert("<dev&\"ice>".to_owned(), vec![Some(MeteredEnergy { import_wh: 7, export_wh: 3 }), None]);
        let range = SlotRange { first_ms: 900_000, slot_len_ms: 900_000, count: 2 };
        let xml = feed_xml(&Feed { zone: &zone, range, updated_ms: 0, devices: &devices }).expect("writes");
        assert!(!xml.contains("<dev&"), "an unescaped value: {xml}");
        assert!(xml.contains("&lt;dev&amp;"), "{xml}");
        assert_eq!(xml.matches("<IntervalReading>").count(), 2, "one slot with data × two directions: {xml}");
        assert!(xml.contains("<timePeriod><duration>900</duration><start>900</start></timePeriod><value>7</value>"));
        assert!(xml.contains("<timePeriod><duration>900</duration><start>900</start></timePeriod><value>3</value>"));
        assert!(xml.contains("<flowDirection>1</flowDirection>") && xml.contains("<flowDirection>19</flowDirection>"));
    }

    #[test]
    fn the_same_resource_has_the_same_id() {
        assert_eq!(urn("/a"), urn("/a"));
        assert_ne!(urn("/a"), urn("/b"));
        assert!(urn("/a").starts_with("urn:uuid:") && urn("/a").len() == "urn:uuid:".len() + 36);
    }
}
