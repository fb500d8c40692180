//! Endpoints answered from the settlement ledger: statements with proofs, balances, zone statistics,
//! token supply and settlement reports. The ledger belongs to `settlement`; these handlers only call
//! its query functions.

use crate::error::ApiError;
use crate::live::{LiveEvent, SlotSettled};
use crate::paging::{cut_page, invalid_cursor, page_len, with_next_page, CursorKind, CursorReader, CursorWriter};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use gridex_store::DbConnection;
use protocol::{SlotId, ZoneId};
use serde::Deserialize;
use settlement::{queries, SettlementError};
use std::fmt::Write as _;
use tokio::sync::broadcast;

/// Statements of one page at most (`limit`; under settlement's own cap of one query); the rest
/// follow by cursor.
pub const STATEMENTS_LIMIT_MAX: i64 = 500;
/// Statements of one page when the request names no `limit`: a day of 15-minute slots.
pub const STATEMENTS_LIMIT_DEFAULT: i64 = 100;

fn settlement_error(error: SettlementError) -> ApiError {
    match error {
        SettlementError::UnknownZone(_) => ApiError::not_found("unknown_zone", "no such zone"),
        SettlementError::Registry(inner) => ApiError::from(inner),
        other => ApiError::internal(other),
    }
}

async fn query<T, F>(state: &AppState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConnection) -> Result<T, SettlementError> + Send + 'static,
{
    settlement::registry::read(&state.db, work).await.map_err(settlement_error)
}

fn parse_slot(start_ms: i64) -> Result<SlotId, ApiError> {
    SlotId::new(start_ms).map_err(|error| ApiError::bad_request("invalid_slot", error.to_string()))
}

/// `/me/statements` query: the page length and, for the pages after the first, the cursor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementsQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Where the next page of statements starts: after this `(slot, zone)` (pages go newest slot first,
/// zones by id within a slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementsCursor {
    pub slot_start_ms: i64,
    pub zone: ZoneId,
}

impl StatementsCursor {
    pub fn encode(&self) -> String {
        CursorWriter::new(CursorKind::Statements).int(self.slot_start_ms).text(self.zone.as_str()).finish()
    }

    pub fn parse(text: &str) -> Result<StatementsCursor, ApiError> {
        let mut reader = CursorReader::open(CursorKind::Statements, text)?;
        let slot_start_ms = reader.int()?;
        let zone = ZoneId::parse(&reader.text()?).map_err(|_| invalid_cursor())?;
        reader.end()?;
        Ok(StatementsCursor { slot_start_ms, zone })
    }
}

/// The signer's statements, newest slot first, one page at a time (keyset on `(slot, zone)`).
pub async fn my_statements(
    state: web::Data<AppState>,
    request: HttpRequest,
    params: web::Query<StatementsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = crate::trader::authenticate(&state, &request, b"").await?;
    let params = params.into_inner();
    let limit = page_len(params.limit, STATEMENTS_LIMIT_DEFAULT, STATEMENTS_LIMIT_MAX)?;
    let after = params.cursor.as_deref().map(StatementsCursor::parse).transpose()?;
    let mut statements = query(&state, move |conn| {
        let after = after.as_ref().map(|after| (after.slot_start_ms, after.zone.as_str()));
        queries::statements_page(conn, &account, after, limit + 1)
    })
    .await?;
    let more = cut_page(&mut statements, limit);
    let next = statements
        .last()
        .filter(|_| more)
        .map(|last| StatementsCursor { slot_start_ms: last.slot.start_ms(), zone: last.zone.clone() }.encode());
    Ok(with_next_page(HttpResponse::Ok(), &request, next).json(statements))
}

pub async fn my_statement(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    let account = crate::trader::authenticate(&state, &request, b"").await?;
    let (zone, slot) = path.into_inner();
    let (zone, slot) = (crate::public::parse_zone(&zone)?, parse_slot(slot)?);
    let proof = query(&state, move |conn| queries::statement_with_proof(conn, &zone, slot, &account)).await?;
    let proof =
        proof.ok_or_else(|| ApiError::not_found("statement_not_found", "no statement of yours for this slot"))?;
    Ok(HttpResponse::Ok().json(proof))
}

pub async fn my_balances(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let account = crate::trader::authenticate(&state, &request, b"").await?;
    let balances = query(&state, move |conn| queries::balances(conn, &account.to_hex())).await?;
    Ok(HttpResponse::Ok().json(balances))
}

pub async fn zone_stats(state: web::Data<AppState>, zone: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (zone, _) = crate::public::known_zone(&state, &zone).await?;
    let stats =
        query(&state, move |conn| queries::zone_stats(conn, &zone, 0, protocol::units::MAX_SAFE_INTEGER)).await?;
    Ok(HttpResponse::Ok().json(stats))
}

/// A settled slot's root as the operator signed it: the protocol `slot_root` message, to verify
/// against the pinned operator key (PROTOCOL.md §2.1).
pub async fn slot_root(state: web::Data<AppState>, path: web::Path<(String, i64)>) -> Result<HttpResponse, ApiError> {
    let (zone, slot) = path.into_inner();
    let (zone, slot) = (crate::public::parse_zone(&zone)?, parse_slot(slot)?);
    let signed = query(&state, move |conn| queries::signed_root(conn, &zone, slot)).await?;
    let signed = signed.ok_or_else(|| ApiError::not_found("slot_not_settled", "the slot is not settled"))?;
    Ok(HttpResponse::Ok().content_type("application/json").body(signed))
}

pub async fn tokens(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now_ms = state.now_ms();
    let supply = query(&state, move |conn| queries::token_supply(conn, now_ms)).await?;
    Ok(HttpResponse::Ok().json(supply))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    pub format: Option<String>,
}

pub async fn slot_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, i64)>,
    format: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = crate::utility::authorize(&state, &request).await?;
    let csv = match format.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_query", "format is json or csv")),
    };
    let (zone, slot) = path.into_inner();
    let (zone, slot) = (crate::public::parse_zone(&zone)?, parse_slot(slot)?);
    crate::utility::require_own_zone(&state, &caller, &zone).await?;
    let id = zone.clone();
    let report = query(&state, move |conn| queries::slot_report(conn, &id, slot)).await?;
    let report = report.ok_or_else(|| ApiError::not_found("slot_not_settled", "the slot is not settled"))?;
    if !csv {
        let at_ms = slot.start_ms().saturating_add(report.slot_len_ms);
        let silent_devices = crate::utility::silent_at(&state, &zone, at_ms).await?;
        return Ok(HttpResponse::Ok().json(crate::utility::ReportWithSilent { report: &report, silent_devices }));
    }
    Ok(HttpResponse::Ok().content_type("text/csv; charset=utf-8").body(report_csv(&report)))
}

/// One line per statement, money in micro-units and energy in Wh.
pub fn report_csv(report: &queries::SlotReport) -> String {
    let mut csv = String::from(
        "zone,slot,account,metered_import_wh,metered_export_wh,bought_wh,sold_wh,imbalance_wh,purchases,sales,\
         grid_fees,protocol_fees,utility_net,net,tokens_earned,no_data\n",
    );
    for s in &report.statements {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.zone,
            s.slot,
            s.account,
            s.metered_import_wh.0,
            s.metered_export_wh.0,
            s.bought_wh.0,
            s.sold_wh.0,
            s.imbalance_wh.0,
            s.purchases.0,
            s.sales.0,
            s.grid_fees.0,
            s.protocol_fees.0,
            s.utility_net.0,
            s.net.0,
            s.tokens_earned.0,
            s.no_data
        );
    }
    csv
}

/// Forwards settlement's settled-slot announcements to the live feed (and so to webhooks), and
/// records each slot's settlement latency.
/// Ends when settlement drops its sender (its loop stopped).
/// Publishes a settled slot's signed root on MQTT (retained) through the exchange, if one runs here.
async fn publish_slot_root(state: &AppState, zone: ZoneId, slot: SlotId) {
    let Some(exchange) = state.market.handle() else { return };
    let signed = match query(state, move |conn| queries::signed_root(conn, &zone, slot)).await {
        Ok(Some(signed)) => signed,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(?error, "cannot read a settled slot's root to publish it");
            return;
        }
    };
    let published = protocol::Signed::<protocol::SlotRoot>::parse(signed.as_bytes())
        .and_then(|root| exchange.publish_slot_root(&root));
    if let Err(error) = published {
        tracing::error!(%error, "a settled slot's root is not the exchange's operator's: not published");
    }
}

pub fn spawn_settled_forwarder(
    state: &AppState,
    mut settled: broadcast::Receiver<settlement::SlotSettled>,
) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            match settled.recv().await {
                Ok(slot) => {
                    crate::metrics::record_settlement_latency(
                        slot.slot.start_ms().saturating_add(slot.slot_len_ms),
                        slot.closed_ms,
                    );
                    publish_slot_root(&state, slot.zone.clone(), slot.slot).await;
                    state.publish(LiveEvent::Settlement(SlotSettled {
                        zone: slot.zone,
                        slot: slot.slot,
                        root: slot.root,
                        statements: slot.statements,
                    }));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the live feed lagged behind settlement");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}
