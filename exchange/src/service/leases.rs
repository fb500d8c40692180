//! The lease manager (PostgreSQL only): which zones this instance owns. Every
//! `lease_renew_interval_ms` it heartbeats, renews the leases it holds (one found taken by another
//! instance is lost: the zone is dropped at once), releases leases above its fair share
//! (⌈zones / live instances⌉; every zone it names when `market.zones` is set) and takes free or
//! expired ones up to it. Taking a zone starts its owner (which recovers the books from the command
//! log), makes the verifier forget what it cached of the zone's senders, then subscribes to the
//! zone's MQTT topics; losing or releasing one undoes that. The fencing token of each lease is
//! checked by every group commit ([`crate::store::leases::fence`]), so an instance that lost a zone
//! never commits for it again. Failover bound: [`ExchangeConfig::failover_bound_ms`].

use super::commit::{Notice, Release};
use super::error::ExchangeError;
use super::mqtt;
use super::ownership::{Ownership, TakeRequest};
use super::zones::ZoneSet;
use crate::config::ExchangeConfig;
use crate::store::{self, leases};
use gridex_store::{Database, DbError};
use protocol::ZoneId;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The lease manager's task state.
pub(super) struct LeaseManager {
    pub(super) db: Database,
    pub(super) config: ExchangeConfig,
    pub(super) ownership: Ownership,
    pub(super) zones: ZoneSet,
    pub(super) verifier: mpsc::UnboundedSender<Notice>,
    /// Set once the broker connection exists: zones are subscribed to as their leases come.
    pub(super) mqtt: Option<rumqttc::AsyncClient>,
    /// Zones the group commit found taken by another instance.
    pub(super) lost: mpsc::UnboundedReceiver<ZoneId>,
    /// Zones to take at once if free (registered while the exchange runs).
    pub(super) take: mpsc::UnboundedReceiver<TakeRequest>,
    /// Leases being released, each done once the group commit has let it go.
    pub(super) releasing: HashMap<ZoneId, oneshot::Receiver<()>>,
    /// A test hook: while `true` the manager does nothing, as if the process were paused.
    pub(super) paused: watch::Receiver<bool>,
}

impl LeaseManager {
    /// Renews and takes leases every interval. From `shutdown` on it only renews (the commits still
    /// draining store under their leases); at `stop` (everything committed) it lets every lease go,
    /// so the others take the zones on their next round rather than after the time to live.
    pub(super) async fn run(mut self, shutdown: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.lease_renew_interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let paused = *self.paused.borrow();
            tokio::select! {
                _ = ticker.tick() => {
                    if paused {
                        continue;
                    }
                    let draining = *shutdown.borrow();
                    if let Err(error) = self.round(draining).await {
                        metrics::counter!("gridex_lease_round_failures_total").increment(1);
                        tracing::error!(%error, "lease round failed; leases not renewed expire");
                    }
                }
                Some(zone) = self.lost.recv(), if !paused => self.drop_zone(&zone).await,
                Some((zones, done)) = self.take.recv() => {
                    if !paused && !*shutdown.borrow() {
                        if let Err(error) = self.take_if_free(zones).await {
                            tracing::error!(%error, "cannot take a new zone's lease");
                        }
                    }
                    let _ = done.send(());
                }
                () = async { drop(stop.wait_for(|stop| *stop).await) } => break,
            }
        }
        let instance = self.config.instance_id.clone();
        if let Err(error) = self.db.run(move |conn| leases::release_all(conn, &instance)).await {
            tracing::warn!(%error, "cannot release the leases at shutdown; they expire");
        }
    }

    /// One round: heartbeat, renew, then (unless `draining`) release the surplus and take free zones
    /// up to the fair share.
    pub(super) async fn round(&mut self, draining: bool) -> Result<(), ExchangeError> {
        while let Ok(zone) = self.lost.try_recv() {
            self.drop_zone(&zone).await;
        }
        let released: Vec<ZoneId> = self
            .releasing
            .iter_mut()
            .filter_map(|(zone, done)| {
                // Done, or the group commit is gone (shutting down): either way nothing is pending.
                let pending = matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty));
                (!pending).then(|| zone.clone())
            })
            .collect();
        for zone in released {
            self.drop_zone(&zone).await;
        }

        let (instance, ttl_ms) = (self.config.instance_id.clone(), self.config.lease_ttl_ms);
        let held = self.ownership.leases();
        let (live, lost) = self
            .db
            .run(move |conn| {
                let live = leases::heartbeat(conn, &instance, ttl_ms)?;
                let mut lost = Vec::new();
                for (zone, token) in held {
                    if !leases::renew(conn, &zone, &instance, token, ttl_ms)? {
                        lost.push(zone);
                    }
                }
                Ok::<_, DbError>((live, lost))
            })
            .await?;
        for zone in lost {
            // A lease released since the check above is not lost: it is done.
            if !self.releasing.contains_key(&zone) {
                metrics::counter!("gridex_zone_leases_lost_total").increment(1);
                tracing::warn!(%zone, "the zone's lease was taken by another instance; dropping the zone");
            }
            self.drop_zone(&zone).await;
        }
        if draining {
            return Ok(());
        }

        let candidates = self.candidates().await?;
        let share = if self.config.zones.is_empty() {
            candidates.len().div_ceil(usize::try_from(live).unwrap_or(1).max(1))
        } else {
            candidates.len()
        };
        let taking = self.ownership.taking();
        if taking.len() > share {
            for zone in &taking[share..] {
                self.release(zone).await;
            }
            return Ok(());
        }
        let wanted = share - taking.len();
        if wanted == 0 {
            return Ok(());
        }
        // Held by another instance now; a lease still under this instance's id (a restart) is free.
        let instance = self.config.instance_id.clone();
        let held_anywhere = self.db.run(move |conn| leases::held_zones(conn, &instance)).await?;
        let free: Vec<ZoneId> = candidates
            .into_iter()
            .filter(|zone| !held_anywhere.contains(zone) && !self.ownership.owns(zone))
            .take(wanted)
            .collect();
        for zone in free {
            let (instance, ttl_ms, asked) = (self.config.instance_id.clone(), self.config.lease_ttl_ms, zone.clone());
            if let Some(token) = self.db.run(move |conn| leases::acquire(conn, &asked, &instance, ttl_ms)).await? {
                self.take_zone(zone, token).await?;
            }
        }
        Ok(())
    }

    /// Takes those of `zones` this instance may serve and nobody holds (a zone registered while the
    /// exchange runs, named by its first message), without waiting for the next round.
    async fn take_if_free(&mut self, zones: Vec<ZoneId>) -> Result<(), ExchangeError> {
        for zone in zones {
            if !self.ownership.may_serve(&zone) || self.ownership.owns(&zone) {
                continue;
            }
            let (instance, ttl_ms, asked) = (self.config.instance_id.clone(), self.config.lease_ttl_ms, zone.clone());
            if let Some(token) = self.db.run(move |conn| leases::acquire(conn, &asked, &instance, ttl_ms)).await? {
                self.take_zone(zone, token).await?;
            }
        }
        Ok(())
    }

    /// The zones this instance may lease: those it names, or every zone in the registry. Sorted, so
    /// instances release and take zones in one order.
    async fn candidates(&self) -> Result<Vec<ZoneId>, ExchangeError> {
        let mut zones: Vec<ZoneId> = if self.config.zones.is_empty() {
            self.db.run(|conn| store::load_zones(conn, &[])).await?.into_keys().collect()
        } else {
            let named = self.config.zones.clone();
            // Only zones in storage: a named zone not registered yet is taken once it is.
            self.db.run(move |conn| store::load_zones(conn, &named)).await?.into_keys().collect()
        };
        zones.sort();
        zones.dedup();
        Ok(zones)
    }

    /// A lease was taken: start the zone's owner (recovering its books from the log, which holds
    /// everything the previous owner committed: its commits either ended before the lease changed
    /// hands or fail the fencing check), make the verifier forget the zone's senders, then take its
    /// messages. A failed start lets the lease go again.
    async fn take_zone(&mut self, zone: ZoneId, token: i64) -> Result<(), ExchangeError> {
        self.ownership.insert(zone.clone(), token, false);
        if let Err(error) = self.zones.get_or_start(&zone).await {
            self.ownership.remove(&zone);
            let (instance, asked) = (self.config.instance_id.clone(), zone.clone());
            let _ = self.db.run(move |conn| leases::release(conn, &asked, &instance, token)).await;
            return Err(error);
        }
        // Before the zone's messages are taken, so no message of it is checked against stale state.
        let _ = self.verifier.send(Notice::Forget(zone.clone()));
        self.ownership.insert(zone.clone(), token, true);
        metrics::counter!("gridex_zone_leases_taken_total").increment(1);
        tracing::info!(%zone, token, "took the zone's lease");
        if let Some(client) = &self.mqtt {
            for filter in mqtt::zone_filters(&zone) {
                if let Err(error) = client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await {
                    tracing::error!(%error, %zone, "cannot subscribe to the zone");
                }
            }
        }
        Ok(())
    }

    /// Stops taking `zone`'s messages and hands the release to the group commit, behind every
    /// message already verified: those still commit under the lease, then it expires.
    async fn release(&mut self, zone: &ZoneId) {
        let Some(token) = self.ownership.token(zone) else { return };
        self.ownership.stop_taking(zone);
        self.unsubscribe(zone).await;
        let (done, receiver) = oneshot::channel();
        let release = Release { zone: zone.clone(), token, done };
        if self.verifier.send(Notice::Release(release)).is_ok() {
            self.releasing.insert(zone.clone(), receiver);
            tracing::info!(%zone, "releasing the zone's lease (above this instance's fair share)");
        }
    }

    /// Forgets a zone whose lease was lost or released: unsubscribes and stops its owner.
    async fn drop_zone(&mut self, zone: &ZoneId) {
        self.ownership.remove(zone);
        self.releasing.remove(zone);
        self.unsubscribe(zone).await;
        self.zones.stop(zone).await;
    }

    async fn unsubscribe(&self, zone: &ZoneId) {
        if let Some(client) = &self.mqtt {
            for filter in mqtt::zone_filters(zone) {
                if let Err(error) = client.unsubscribe(filter).await {
                    tracing::warn!(%error, %zone, "cannot unsubscribe from the zone");
                }
            }
        }
    }
}
