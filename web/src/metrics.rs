//! The Prometheus recorder (installed once per process), its histogram buckets, and HTTP request
//! metrics.
//!
//! What `/metrics` shows, and who records it:
//! - `gridex_readings_total{result}` and `gridex_orders_total{result}`: `accepted` (readings also
//!   `duplicate`) or the protocol reason code of a rejection; recorded by the exchange, plus the
//!   order rejections the web layer decides before the exchange sees the order.
//! - `gridex_matching_seconds`, `gridex_group_commit_seconds` (exchange) and
//!   `gridex_settlement_latency_seconds` (here: from a slot's end to its settlement, on the market
//!   clock) as histograms.
//! - `gridex_queue_depth{queue}`: the exchange's `ingest`, `commit` and `publish` queues, and this
//!   server's `live_feed` backlog and `webhook_outbox` (pending deliveries).
//! - `gridex_http_requests_total`, `gridex_http_request_seconds`, `gridex_sse_streams`,
//!   `gridex_webhook_deliveries_total{result}`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets. Without it they would pile up in
/// memory between scrapes (or forever, with no scraper).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Buckets of in-process work measured in seconds: matching a batch and committing a group take
/// microseconds to tens of milliseconds; HTTP requests up to seconds.
const FAST_SECONDS_BUCKETS: &[f64] =
    &[0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Buckets of settlement latency: a slot is closed after its grace period (minutes in production)
/// plus the settlement poll; an hour is already an incident.
const SETTLEMENT_SECONDS_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0];

/// Installs the global recorder the first time; later calls return the same handle. `None` when
/// another recorder was installed first (then `/metrics` answers 503).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match builder().and_then(PrometheusBuilder::install_recorder) {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "the Prometheus recorder is not installed");
                None
            }
        })
        .clone()
}

fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let fast = |builder: PrometheusBuilder, name: &str| {
        builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), FAST_SECONDS_BUCKETS)
    };
    let builder = fast(PrometheusBuilder::new(), "gridex_matching_seconds")?;
    let builder = fast(builder, "gridex_group_commit_seconds")?;
    let builder = fast(builder, "gridex_http_request_seconds")?;
    builder.set_buckets_for_metric(
        Matcher::Full("gridex_settlement_latency_seconds".to_owned()),
        SETTLEMENT_SECONDS_BUCKETS,
    )
}

/// Folds histogram samples into buckets every [`UPKEEP_INTERVAL`] until the runtime stops.
pub fn spawn_upkeep() -> Option<tokio::task::JoinHandle<()>> {
    let handle = install()?;
    Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            handle.run_upkeep();
        }
    }))
}

/// Records how long after its end a slot was settled (market-clock seconds; 0 if the clocks
/// disagree and the close looks early).
pub fn record_settlement_latency(slot_end_ms: i64, closed_ms: i64) {
    let latency_ms = closed_ms.saturating_sub(slot_end_ms).max(0);
    // Milliseconds to seconds for display; precision loss above 2^53 ms is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("gridex_settlement_latency_seconds").record(latency_ms as f64 / 1000.0);
}

/// Counts an order refused by this server before it reached the exchange, with the same metric and
/// labels as the exchange's own rejections.
pub fn count_order_rejected(result: &'static str) {
    metrics::counter!("gridex_orders_total", "result" => result).increment(1);
}

/// Sets a queue depth gauge.
pub fn set_queue_depth(queue: &'static str, depth: usize) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("gridex_queue_depth", "queue" => queue).set(depth as f64);
}

/// The `method` label: one of the standard methods, or `other`. A client chooses the method
/// string freely; labelling by it would let anyone add series (and memory) without bound.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// Counts every request by method ([`method_label`]), route pattern (never the raw path: that too
/// is the client's choice; `unmatched` when no route matched) and status, and times it.
pub async fn track(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let response = next.call(request).await?;
    let status = response.status().as_u16().to_string();
    metrics::counter!("gridex_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("gridex_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}
