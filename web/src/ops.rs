//! Operational endpoints: liveness, readiness, Prometheus metrics, the clock, and the demo's
//! household logins. (The OpenAPI document is served by `routes`, which it is generated from.)

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::time::Duration;

/// How long the readiness probe waits for the broker's TCP handshake.
pub const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
}

/// `GET /readyz`: 200 when ready, 503 (same body) when not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(pattern = "^(ready|not_ready)$")]
    pub status: &'static str,
    pub database: bool,
    /// `reachable`, `unreachable` or `not_configured`.
    #[schema(pattern = "^(reachable|unreachable|not_configured)$")]
    pub broker: &'static str,
    pub exchange: bool,
}

/// `GET /api/v1/clock`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MarketClock {
    /// The market's time, unix ms (simulated in the demo).
    pub now_ms: i64,
    /// How many times faster than real time the market clock runs (1 outside the demo).
    pub speed: u32,
}

/// `GET /api/v1/operator-key`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OperatorKey {
    /// The operator's ed25519 public key, 64 hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub operator: String,
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = state.db.clone();
    let database = tokio::task::spawn_blocking(move || db.ping()).await.unwrap_or(false);
    let broker = match &state.broker_address {
        None => None,
        Some((host, port)) => Some(matches!(
            tokio::time::timeout(BROKER_PROBE_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), *port))).await,
            Ok(Ok(_))
        )),
    };
    let ready = database && broker != Some(false);
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        database,
        broker: broker.map_or("not_configured", |up| if up { "reachable" } else { "unreachable" }),
        exchange: state.market.is_connected(),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let handle = crate::metrics::install().ok_or_else(|| ApiError::unavailable("no metrics recorder"))?;
    crate::metrics::set_queue_depth("live_feed", state.live.len());
    match state.webhooks.pending().await {
        Ok(pending) => crate::metrics::set_queue_depth("webhook_outbox", usize::try_from(pending).unwrap_or(0)),
        Err(error) => tracing::warn!(%error, "cannot count the webhook outbox"),
    }
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(handle.render()))
}

/// The market clock: in the demo it runs faster than real time, and orders must carry its time.
pub async fn clock(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(MarketClock { now_ms: state.now_ms(), speed: state.clock_speed })
}

/// The operator's public key, which signs every message the exchange publishes and every slot root
/// (PROTOCOL.md §2.1). Gateways, agents and the dashboard pin it once, out of band; none of them
/// verifies a message against a key taken from this response at the time it verifies.
pub async fn operator_key(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let exchange =
        state.market.handle().ok_or_else(|| ApiError::unavailable("the exchange is not running in this process"))?;
    Ok(HttpResponse::Ok().json(OperatorKey { operator: hex::encode(exchange.operator_key()) }))
}

pub async fn demo_households(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let households =
        state.demo_households.clone().ok_or_else(|| ApiError::not_found("not_found", "not in demo mode"))?;
    Ok(HttpResponse::Ok().json(&*households))
}
