//! Which zones this instance takes messages for and commits for: every zone it serves on SQLite (one
//! exchange owns them all), and on PostgreSQL the zones whose lease it holds, with each lease's
//! fencing token (see [`super::leases`], which changes it). A leaf: the stages read it, only the lease
//! manager and the group commit (a lost lease) change it.

use crate::config::ExchangeConfig;
use protocol::ZoneId;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// Zones to lease now if they are free (a zone registered while the exchange runs), answered once
/// the lease manager has tried.
pub(crate) type TakeRequest = (Vec<ZoneId>, oneshot::Sender<()>);

/// A lease this instance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    token: i64,
    /// `false` while the zone is being released: no new message is taken, but the commits already
    /// on their way still store under the lease.
    taking: bool,
}

/// Cheap to clone; shared by the stages.
#[derive(Clone)]
pub(crate) struct Ownership {
    /// `None`: no leases (SQLite), the configuration says what is served. `Some`: leased zones.
    held: Option<Arc<RwLock<HashMap<ZoneId, Held>>>>,
    config: ExchangeConfig,
    /// Zones the group commit found taken by another instance, for the lease manager to drop.
    lost: Option<mpsc::UnboundedSender<ZoneId>>,
    /// To the lease manager: take these zones now if nobody holds them.
    take: Option<mpsc::UnboundedSender<TakeRequest>>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership").field("leasing", &self.leasing()).finish_non_exhaustive()
    }
}

impl Ownership {
    /// Without leases: the instance owns the zones its configuration serves.
    pub(crate) fn fixed(config: ExchangeConfig) -> Self {
        Ownership { held: None, config, lost: None, take: None }
    }

    /// With leases: it owns nothing until the lease manager takes leases; zones found lost by the
    /// group commit are sent to `lost`, zones to take at once to `take`.
    pub(crate) fn leased(
        config: ExchangeConfig,
        lost: mpsc::UnboundedSender<ZoneId>,
        take: mpsc::UnboundedSender<TakeRequest>,
    ) -> Self {
        Ownership { held: Some(Arc::default()), config, lost: Some(lost), take: Some(take) }
    }

    /// Whether this instance may ever own `zone` (its configuration serves it).
    pub(crate) fn may_serve(&self, zone: &ZoneId) -> bool {
        self.config.serves(zone)
    }

    /// Asks the lease manager to take `zones` now if nobody holds them (zones registered while the
    /// exchange runs: their first message need not wait for the next round), and waits until it
    /// tried. Returns at once without leases, or once the manager has stopped.
    pub(crate) async fn take_if_free(&self, zones: Vec<ZoneId>) {
        let Some(take) = &self.take else { return };
        let (done, tried) = oneshot::channel();
        if !zones.is_empty() && take.send((zones, done)).is_ok() {
            let _ = tried.await;
        }
    }

    pub(crate) fn leasing(&self) -> bool {
        self.held.is_some()
    }

    pub(crate) fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    fn read(&self) -> Option<std::sync::RwLockReadGuard<'_, HashMap<ZoneId, Held>>> {
        self.held.as_ref().map(|held| held.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn write(&self, change: impl FnOnce(&mut HashMap<ZoneId, Held>)) {
        if let Some(held) = &self.held {
            change(&mut held.write().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }

    /// Whether this instance takes new messages for `zone` now.
    pub(crate) fn takes(&self, zone: &ZoneId) -> bool {
        match self.read() {
            None => self.config.serves(zone),
            Some(held) => held.get(zone).is_some_and(|held| held.taking),
        }
    }

    /// Whether this instance may run `zone`'s owner (it takes the zone, or is releasing it).
    pub(crate) fn owns(&self, zone: &ZoneId) -> bool {
        match self.read() {
            None => self.config.serves(zone),
            Some(held) => held.contains_key(zone),
        }
    }

    /// The fencing token `zone`'s rows are committed under; `None` when the lease is not held.
    /// Meaningless without leases.
    pub(crate) fn token(&self, zone: &ZoneId) -> Option<i64> {
        self.read().and_then(|held| held.get(zone).map(|held| held.token))
    }

    /// The leased zones this instance takes messages for, sorted.
    pub(crate) fn taking(&self) -> Vec<ZoneId> {
        let mut zones: Vec<ZoneId> = self
            .read()
            .map(|held| held.iter().filter(|(_, h)| h.taking).map(|(z, _)| z.clone()).collect())
            .unwrap_or_default();
        zones.sort();
        zones
    }

    /// Every lease held, with its token, sorted by zone.
    pub(crate) fn leases(&self) -> Vec<(ZoneId, i64)> {
        let mut leases: Vec<(ZoneId, i64)> =
            self.read().map(|held| held.iter().map(|(z, h)| (z.clone(), h.token)).collect()).unwrap_or_default();
        leases.sort();
        leases
    }

    /// A lease was taken with `token`; `taking`: the zone's messages are taken from now on.
    pub(crate) fn insert(&self, zone: ZoneId, token: i64, taking: bool) {
        self.write(|held| {
            held.insert(zone, Held { token, taking });
        });
    }

    /// Stops taking `zone`'s messages (it is being released); its lease stays held.
    pub(crate) fn stop_taking(&self, zone: &ZoneId) {
        self.write(|held| {
            if let Some(held) = held.get_mut(zone) {
                held.taking = false;
            }
        });
    }

    /// Forgets `zone`'s lease (released or lost).
    pub(crate) fn remove(&self, zone: &ZoneId) {
        self.write(|held| {
            held.remove(zone);
        });
    }

    /// The group commit found `zone`'s lease, which it held with `token`, taken by another instance:
    /// forget it now (nothing more is taken or committed for it) and tell the lease manager, which
    /// stops the zone's owner. A lease taken again since (another token) is kept.
    pub(crate) fn lost(&self, zone: &ZoneId, token: Option<i64>) {
        let mut forgotten = false;
        self.write(|held| {
            if held.get(zone).map(|held| held.token) == token {
                forgotten = held.remove(zone).is_some();
            }
        });
        if let (true, Some(lost)) = (forgotten, &self.lost) {
            let _ = lost.send(zone.clone());
        }
    }
}
