//! The settlement loop: every poll interval, close each zone's due slots in order and announce them.

use crate::close::{close_slot, next_slot, SlotOutcome, SlotSettled};
use crate::registry;
use crate::{SettlementConfig, SettlementError};
use gridex_store::clock::Clock;
use gridex_store::Database;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Most slots one zone closes per poll: a catch-up after downtime proceeds in bounded steps, so
/// shutdown and the other zones are never kept waiting for long.
pub const CLOSES_PER_ZONE_PER_POLL_MAX: usize = 16;
/// Capacity of the channel of settled slots the web server subscribes to (a slow subscriber lags
/// and is told so by `broadcast`; settlement never waits for it).
pub const SETTLED_CHANNEL_CAPACITY: usize = 256;

/// Extra wait after a slot's grace period before the loop closes it: a reading received just before
/// the cutoff may still be in the exchange's group commit (milliseconds); five seconds covers that with
/// a wide margin and is invisible next to a 15-minute slot.
pub const COMMIT_MARGIN_MS: i64 = 5_000;

/// A channel for [`run`]'s announcements.
pub fn settled_channel() -> broadcast::Sender<SlotSettled> {
    broadcast::channel(SETTLED_CHANNEL_CAPACITY).0
}

/// Closes every slot that is due at `now_ms` (grace period and [`COMMIT_MARGIN_MS`] passed), zone
/// by zone and in order, each in its own transaction; returns what was closed. Only the zones of
/// `config.zones` when it names any. A zone whose next slot cannot be closed (no tariff, bad data)
/// is logged and skipped until the next poll; the other zones go on.
pub async fn close_due(
    db: &Database,
    config: &SettlementConfig,
    now_ms: i64,
) -> Result<Vec<SlotSettled>, SettlementError> {
    let zones = registry::read(db, |conn| registry::list_zones(conn).map_err(SettlementError::from)).await?;
    let mut closed = Vec::new();
    let served = |zone: &registry::Zone| config.zones.is_empty() || config.zones.contains(&zone.zone_id);
    for zone in zones.into_iter().filter(served) {
        for _ in 0..CLOSES_PER_ZONE_PER_POLL_MAX {
            let lookup = zone.clone();
            let slot = registry::read(db, move |conn| next_slot(conn, &lookup)).await?;
            if now_ms < slot.end(zone.slot_len_ms).0 + config.grace_ms + COMMIT_MARGIN_MS {
                break;
            }
            let (zone_id, slot_config) = (zone.zone_id.clone(), config.clone());
            let outcome = registry::write(db, move |conn| close_slot(conn, &zone_id, slot, &slot_config, now_ms)).await;
            match outcome {
                Ok(SlotOutcome::Settled(settled)) => closed.push(settled),
                Ok(SlotOutcome::AlreadySettled(_)) => {}
                Err(error) => {
                    tracing::warn!(zone = %zone.zone_id, slot = slot.start_ms(), %error, "cannot settle the slot yet");
                    break;
                }
            }
        }
    }
    Ok(closed)
}

/// Runs until `shutdown` completes: polls every `config.poll_interval_ms`, closes due slots with
/// [`close_due`] and sends each on `settled` (ignored when nobody listens).
pub async fn run(
    db: Database,
    clock: Arc<dyn Clock>,
    config: SettlementConfig,
    settled: broadcast::Sender<SlotSettled>,
    shutdown: impl Future<Output = ()>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(config.poll_interval_ms.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        match close_due(&db, &config, clock.now_ms()).await {
            Ok(closed) => {
                for slot in closed {
                    let _ = settled.send(slot);
                }
            }
            Err(error) => tracing::warn!(%error, "settlement poll failed"),
        }
    }
}
