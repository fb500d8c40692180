//! The zone set: one owner task per zone ([`crate::zone::ZoneOwner`]), started at start-up for
//! every served zone and later for a zone registered while the exchange runs. Starting an owner
//! recovers its books from the command log. On PostgreSQL an owner runs only while this instance
//! holds the zone's lease ([`super::ownership`]); the lease manager starts and stops them.

use super::error::ExchangeError;
use super::outlets::Outlets;
use super::ownership::Ownership;
use crate::config::ExchangeConfig;
use crate::ingest::ZoneInfo;
use crate::store;
use crate::zone::{self, ZoneMsg};
use gridex_store::Database;
use protocol::ZoneId;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where a zone's owner runs, as [`ZoneSet::find`] sees it.
#[derive(Debug)]
pub(super) enum Found {
    Here(mpsc::Sender<ZoneMsg>),
    /// In storage, owned by another instance (or by none right now).
    Elsewhere,
    /// Not in storage.
    Unknown,
}

/// The zone owners: started at start-up for every zone in storage, and for a zone registered while
/// the exchange runs the first time a message for it is committed. One owner per zone while this
/// instance owns the zone (on PostgreSQL: while it holds the zone's lease).
#[derive(Clone)]
pub(super) struct ZoneSet {
    owners: Arc<std::sync::RwLock<HashMap<ZoneId, mpsc::Sender<ZoneMsg>>>>,
    /// Held while an owner starts, so two callers never start two owners of one zone.
    starting: Arc<tokio::sync::Mutex<()>>,
    /// Zones found in storage while another instance owned them (zones are never deleted), so a
    /// relayed read query costs no lookup; bounded by the registered zones.
    seen: Arc<std::sync::RwLock<std::collections::HashSet<ZoneId>>>,
    config: ExchangeConfig,
    db: Database,
    outlets: Outlets,
    ownership: Ownership,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl ZoneSet {
    /// An empty set; the owners it starts are pushed onto `tasks` (joined at shutdown).
    pub(super) fn new(
        config: ExchangeConfig,
        db: Database,
        outlets: Outlets,
        ownership: Ownership,
        tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    ) -> Self {
        ZoneSet {
            owners: Arc::default(),
            starting: Arc::default(),
            seen: Arc::default(),
            config,
            db,
            outlets,
            ownership,
            tasks,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ZoneId, mpsc::Sender<ZoneMsg>>> {
        match self.owners.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn elsewhere_seen(&self, zone: &ZoneId) -> bool {
        self.seen.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(zone)
    }

    fn remember_elsewhere(&self, zone: &ZoneId) {
        self.seen.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(zone.clone());
    }

    /// Which zones this instance owns.
    pub(super) fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub(super) fn get(&self, zone: &ZoneId) -> Option<mpsc::Sender<ZoneMsg>> {
        self.read().get(zone).cloned()
    }

    /// Every owner, by zone.
    pub(super) fn all(&self) -> Vec<(ZoneId, mpsc::Sender<ZoneMsg>)> {
        let mut all: Vec<_> = self.read().iter().map(|(zone, owner)| (zone.clone(), owner.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The zone's owner, started (its books recovered from the log) if it is not running yet.
    /// `None` for a zone that is not in storage or not owned by this instance.
    pub(super) async fn get_or_start(&self, zone: &ZoneId) -> Result<Option<mpsc::Sender<ZoneMsg>>, ExchangeError> {
        match self.find(zone).await? {
            Found::Here(owner) => Ok(Some(owner)),
            Found::Elsewhere | Found::Unknown => Ok(None),
        }
    }

    /// Where `zone`'s owner runs: here (started if it is not running yet), at another instance
    /// (the zone is in storage, this instance does not own it), or nowhere (not in storage).
    pub(super) async fn find(&self, zone: &ZoneId) -> Result<Found, ExchangeError> {
        if let Some(owner) = self.get(zone) {
            return Ok(Found::Here(owner));
        }
        if !self.ownership.owns(zone) {
            // Neither the start lock nor (once the zone was seen in storage) a database round trip:
            // a web server asks this for every read query it relays.
            if self.elsewhere_seen(zone) {
                return Ok(Found::Elsewhere);
            }
            let wanted = vec![zone.clone()];
            let found = self.db.run(move |conn| store::load_zones(conn, &wanted)).await?;
            if !found.contains_key(zone) {
                return Ok(Found::Unknown);
            }
            self.remember_elsewhere(zone);
            return Ok(Found::Elsewhere);
        }
        let _starting = self.starting.lock().await;
        if let Some(owner) = self.get(zone) {
            return Ok(Found::Here(owner));
        }
        let wanted = vec![zone.clone()];
        let found = self.db.run(move |conn| store::load_zones(conn, &wanted)).await?;
        let Some(info) = found.get(zone) else { return Ok(Found::Unknown) };
        if !self.ownership.owns(zone) {
            return Ok(Found::Elsewhere);
        }
        Ok(Found::Here(self.start_owner(zone.clone(), *info).await?))
    }

    /// Stops `zone`'s owner (its lease was released or lost): it applies what it was sent, then ends.
    pub(super) async fn stop(&self, zone: &ZoneId) {
        let _starting = self.starting.lock().await;
        let owner = match self.owners.write() {
            Ok(mut owners) => owners.remove(zone),
            Err(poisoned) => poisoned.into_inner().remove(zone),
        };
        if let Some(owner) = owner {
            let _ = owner.send(ZoneMsg::Stop).await;
        }
    }

    pub(super) async fn start_owner(
        &self,
        zone: ZoneId,
        info: ZoneInfo,
    ) -> Result<mpsc::Sender<ZoneMsg>, ExchangeError> {
        let (sender, receiver) = mpsc::channel(self.config.zone_queue_len);
        let owner = zone::ZoneOwner::recover(
            zone.clone(),
            info.slot_len_ms,
            &self.config,
            self.db.clone(),
            self.outlets.clone(),
        )
        .await?;
        let task = tokio::spawn(owner.run(receiver));
        match self.tasks.lock() {
            Ok(mut tasks) => tasks.push(task),
            Err(poisoned) => poisoned.into_inner().push(task),
        }
        match self.owners.write() {
            Ok(mut owners) => owners.insert(zone, sender.clone()),
            Err(poisoned) => poisoned.into_inner().insert(zone, sender.clone()),
        };
        Ok(sender)
    }
}
