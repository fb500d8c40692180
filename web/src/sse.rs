//! The live feed as Server-Sent Events: `GET /api/v1/stream?zone=Z`.
//!
//! Public events: `book`, `trade`, `settlement`. `order_update` events are private: they are sent
//! only on a stream opened with a trader's signed request headers, and only for that trader.

use crate::error::ApiError;
use crate::live::LiveEvent;
use crate::sse_clients::{ClientSlot, ClientStreams};
use crate::state::AppState;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use protocol::{AccountId, ZoneId};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

/// Open streams at most; each holds a task and a buffer.
pub const STREAMS_MAX: usize = 1_000;
/// Frames buffered per client before the client is considered too slow and dropped.
pub const CLIENT_BUFFER_FRAMES: usize = 256;
/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub zone: String,
}

struct StreamSlot;
impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("gridex_sse_streams").decrement(1.0);
    }
}

pub fn frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

pub async fn stream(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let zone = ZoneId::parse(&query.zone).map_err(|error| ApiError::bad_request("invalid_zone", error.to_string()))?;
    crate::public::require_zone(&state, &zone).await?;
    // Optional trader authentication: only then are the trader's own order updates included.
    let account: Option<AccountId> = if request.headers().contains_key(crate::auth::HEADER_SIGNATURE) {
        Some(crate::trader::authenticate(&state, &request, b"").await?)
    } else {
        None
    };
    // Clients are told apart by their address (a connection without one shares a single budget).
    let client = request.peer_addr().map_or(IpAddr::from([0, 0, 0, 0]), |address| address.ip());
    let client_slot = ClientStreams::take(&state.sse_clients, client)?;
    if OPEN_STREAMS.fetch_add(1, Ordering::SeqCst) >= STREAMS_MAX {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::unavailable("too many live streams are open"));
    }
    metrics::gauge!("gridex_sse_streams").increment(1.0);
    let slot = (StreamSlot, client_slot);
    let events = state.live.subscribe();
    let (sender, receiver) = mpsc::channel::<Bytes>(CLIENT_BUFFER_FRAMES);
    tokio::spawn(forward(events, sender, zone, account, slot));
    let body = ReceiverStream::new(receiver).map(Ok::<Bytes, actix_web::Error>);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

async fn forward(
    mut events: broadcast::Receiver<LiveEvent>,
    sender: mpsc::Sender<Bytes>,
    zone: ZoneId,
    account: Option<AccountId>,
    _slot: (StreamSlot, ClientSlot),
) {
    if sender.send(Bytes::from_static(b": connected\n\n")).await.is_err() {
        return;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    keepalive.tick().await;
    loop {
        let frame = tokio::select! {
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            _ = sender.closed() => return,
            event = events.recv() => match event {
                Ok(event) if event.zone() != &zone => continue,
                Ok(LiveEvent::OrderUpdate(update)) if Some(update.message.account) != account => continue,
                Ok(event) => frame(event.name(), &event.to_json()),
                Err(broadcast::error::RecvError::Lagged(missed)) => frame("lagged", &format!("{{\"missed\":{missed}}}")),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        // A client that does not keep up is dropped rather than buffered without bound.
        if sender.try_send(frame).is_err() {
            return;
        }
    }
}
