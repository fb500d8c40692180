//! The running exchange: MQTT ingest, the verification stage, the group commit, one owner task per
//! zone with that zone's books, and the publisher. See [`start`].
//!
//! ```text
//! MQTT event loop ─try_send▶ held ─send▶ ingest queue ◀── submit_command / submit_reading (HTTP)
//!        │          (full: back-pressure) │ (full: `overloaded`, HTTP only)
//!        ▼                                ▼
//!   publisher ◀──────────── verifier (parse + batch signatures on a pool of blocking threads; then
//!        ▲                            │  keys, freshness, seq/nonces, plausibility in arrival order)
//!        │                            │ verified
//!        │                            ▼
//!        ├────── acks ───────── writer (group commit: readings + command log, one transaction)
//!        │                            │ committed commands, per zone
//!        └── trades, book, updates ── zone owners (books, gate closure, trades stored idempotently)
//! ```
//!
//! **Invariant:** a command is applied to a book, and acknowledged, only after the transaction that
//! logged it committed. The same holds towards the broker: the exchange's MQTT session is persistent
//! (`clean_session = false`) and acknowledges each inbound QoS 1 message (PUBACK) only once its fate is
//! final — stored, or refused with a reason published to the sender. A message taken but not yet
//! committed when the exchange dies is redelivered by the broker when it reconnects, and messages
//! published while it is down wait in its session. A full ingest queue is back-pressure, never a
//! reject over MQTT: the message is held (unacknowledged) until there is room, so the broker's
//! in-flight window stops further deliveries. A failed group commit is retried with a capped backoff,
//! never acknowledged nor refused; at shutdown it is abandoned unacknowledged, for redelivery.
//! **Invariant:** the MQTT event loop task never awaits anything but the event loop itself (and a
//! pause before reconnecting); everything it hands on goes through `try_send`.
//!
//! One file per stage: `mqtt.rs` (publisher, listener, forwarder), `acks.rs` (the ordered PUBACK
//! queue), `verify.rs` (the verification stage), `commit.rs` (the group commit), `zones.rs` (the zone
//! owners, each a `ZoneOwner` of `zone.rs`, which recovers its books from the command log when it
//! starts), `plans.rs` (battery plans: verified and stored beside the order path, never in a book),
//! `leases.rs` (on PostgreSQL: which zones this instance owns, by lease, and failover), `relay.rs`
//! (commands for a zone another instance owns, relayed to it), `query.rs` and `answers.rs` (read
//! queries answered by the zone's owner, here or through the broker).
//! `outlets.rs`, `ownership.rs` and the leaves `events.rs` and `error.rs` are what the stages share;
//! this file holds [`start`] and the [`ExchangeHandle`].

mod acks;
mod answers;
mod commit;
mod envelope;
pub(crate) mod error;
pub(crate) mod events;
mod leases;
mod mqtt;
pub(crate) mod outlets;
mod ownership;
mod pending;
mod plans;
mod query;
mod relay;
mod verify;
mod zones;

pub use error::ExchangeError;
pub use events::{CommandAck, FeedMessage, MarketEvent, SlotInfo};

use crate::config::{ExchangeConfig, EVENT_BROADCAST_LEN};
use crate::ingest::{Directory, Kind, Limits, Origin, Rejection, Verifier};
use crate::store;
use crate::zone::{self, ZoneMsg};
use commit::Writer;
use events::{shutting_down, Reply};
use gridex_store::clock::Clock;
use gridex_store::{Backend, Database, WriterLock};
use leases::LeaseManager;
use outlets::{reject, Outlets};
use ownership::Ownership;
use protocol::{AccountId, BookSnapshot, Reason, Signed, SlotId, ZoneId};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use verify::{Raw, VerifyStage};
use zones::ZoneSet;

/// How long shutdown waits for the last messages to reach the broker.
const MQTT_FLUSH_TIMEOUT_MS: u64 = 5_000;
/// Abandoned commits whose senders the verifier must forget, waiting to be read.
const RESYNC_QUEUE_LEN: usize = 64;
/// Batches of refused readings waiting to be recorded by the group commit; beyond this their records
/// are dropped (the refusals themselves are still answered and counted).
const REFUSED_QUEUE_LEN: usize = 64;

/// A handle on the running exchange. Cheap to clone.
#[derive(Clone)]
pub struct ExchangeHandle {
    ingest: mpsc::Sender<Raw>,
    zones: ZoneSet,
    outlets: Outlets,
    shutdown: Arc<watch::Sender<bool>>,
    /// Verifier, writer and zone owners: they finish what was accepted, then end.
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    /// Told to stop once the core tasks ended, so their last messages are still published.
    mqtt_stop: Arc<watch::Sender<bool>>,
    mqtt_tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    mqtt_ready: watch::Receiver<bool>,
    /// On SQLite, this instance is the database's one exchange until shutdown ends.
    writer_lock: Arc<std::sync::Mutex<Option<WriterLock>>>,
    /// On PostgreSQL, the lease manager: stopped after the core tasks (it lets the leases go).
    lease_task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// A test hook: pauses the lease manager, as if the process stalled.
    leases_paused: Arc<watch::Sender<bool>>,
    /// The public half of the key that signs everything published (PROTOCOL.md §2.1).
    operator: [u8; 32],
    /// The operator key itself, for [`ExchangeHandle::sign_operator`]; never handed out.
    operator_key: Arc<ed25519_dalek::SigningKey>,
    instance_id: String,
    /// The broker's market feed, when configured (`ExchangeConfig::market_feed`) and connected.
    feed: Option<broadcast::Sender<FeedMessage>>,
    /// Read queries, answered by the zone's owner wherever it runs.
    queries: answers::Queries,
}

impl std::fmt::Debug for ExchangeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeHandle").field("zones", &self.zones()).finish()
    }
}

impl ExchangeHandle {
    /// Submits a signed order, cancel, replace or cancel-all (the HTTP path): the same checks as MQTT, and the
    /// answer only once the command is committed and applied.
    pub async fn submit_command(&self, bytes: Vec<u8>) -> Result<CommandAck, Rejection> {
        let (sender, receiver) = oneshot::channel();
        self.submit(Kind::Command, bytes, Reply::Command(sender))?;
        receiver.await.map_err(|_| shutting_down())?
    }

    /// Submits a signed reading; `Ok` once it is stored.
    pub async fn submit_reading(&self, bytes: Vec<u8>) -> Result<(), Rejection> {
        let (sender, receiver) = oneshot::channel();
        self.submit(Kind::Reading, bytes, Reply::Reading(sender))?;
        receiver.await.map_err(|_| shutting_down())?
    }

    fn submit(&self, kind: Kind, bytes: Vec<u8>, reply: Reply) -> Result<(), Rejection> {
        let raw = Raw { kind, origin: Origin::Direct, bytes, reply: Some(reply), ack: None, relayed: false };
        match self.ingest.try_send(raw) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(raw)) => {
                let rejection = Rejection::new(Reason::Overloaded, "the ingest queue is full; retry later");
                reject(&self.outlets, kind, &raw.origin, None, None, rejection.clone());
                Err(rejection)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(shutting_down()),
        }
    }

    /// Waits until the exchange is connected to the broker and subscribed to its topics (returns
    /// at once without a broker). Messages published before that are not seen.
    pub async fn mqtt_subscribed(&self) {
        let mut ready = self.mqtt_ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The operator's public key: what receivers pin to verify the exchange's messages.
    pub fn operator_key(&self) -> [u8; 32] {
        self.operator
    }

    /// Signs an outbound message as the exchange's publisher does (for other outlets of the same
    /// messages, such as the web server's live feed).
    pub fn sign_operator<T: protocol::OperatorSigned>(&self, message: T) -> Result<Signed<T>, protocol::ProtocolError> {
        Signed::sign_operator(message, &self.operator_key)
    }

    /// Publishes a settled slot's root (retained, on `topics::slot_root`), as settlement signed it;
    /// refused unless the operator key of this exchange signed it.
    pub fn publish_slot_root(&self, signed: &Signed<protocol::SlotRoot>) -> Result<(), protocol::ProtocolError> {
        signed.verify_operator(&self.operator)?;
        let topic = protocol::topics::slot_root(&signed.message.zone);
        self.outlets.publish_presigned(topic, signed.to_json(), rumqttc::QoS::AtLeastOnce, true);
        Ok(())
    }

    /// Market events as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<MarketEvent> {
        self.outlets.events.subscribe()
    }

    /// The broker's market feed: every zone's trades and books and every participant's events as
    /// published by whichever instance owns the zone (unverified; see [`FeedMessage`]). `None`
    /// unless `ExchangeConfig::market_feed` is on and a broker is configured.
    pub fn subscribe_feed(&self) -> Option<broadcast::Receiver<FeedMessage>> {
        self.feed.as_ref().map(broadcast::Sender::subscribe)
    }

    async fn ask<T>(&self, zone: &ZoneId, make: impl FnOnce(oneshot::Sender<T>) -> ZoneMsg) -> Option<T> {
        let owner = self.zones.get_or_start(zone).await.ok().flatten()?;
        let (sender, receiver) = oneshot::channel();
        owner.send(make(sender)).await.ok()?;
        receiver.await.ok()
    }

    /// The top `levels` of a slot's book: its book once it has had an order (open or closed), an
    /// empty open book for an open slot without orders yet, `None` for any other slot (or a zone
    /// not in storage). Read queries are answered by the zone's owner: this instance's, or on
    /// PostgreSQL the instance holding the zone's lease, through the broker (`overloaded` when none
    /// answers within `relay_timeout_ms`).
    pub async fn book(&self, zone: &ZoneId, slot: SlotId, levels: usize) -> Result<Option<BookSnapshot>, Rejection> {
        self.queries.book(zone, slot, levels).await
    }

    /// The zone's tradable slots, earliest first (answered as [`ExchangeHandle::book`]).
    pub async fn open_slots(&self, zone: &ZoneId) -> Result<Vec<SlotInfo>, Rejection> {
        self.queries.open_slots(zone).await
    }

    /// `zone`'s recent closing auction results, oldest first (empty for a zone without one);
    /// answered as [`ExchangeHandle::book`].
    pub async fn auctions(&self, zone: &ZoneId) -> Result<Vec<protocol::AuctionResult>, Rejection> {
        self.queries.auctions(zone).await
    }

    /// The account's resting orders, by zone, with their side and placement time: in its registered
    /// zone (every zone for an account registered without one) and every zone this instance owns,
    /// each answered as [`ExchangeHandle::book`]; a zone without a live owner fails the whole list.
    pub async fn open_orders(&self, account: AccountId) -> Result<Vec<zone::OpenOrder>, Rejection> {
        self.queries.open_orders(account).await
    }

    /// Every open book's resting orders in priority order (bids best first, then asks), for tests
    /// and the crash-recovery check.
    pub async fn resting_orders(&self) -> Vec<zone::BookDump> {
        let mut dumps = Vec::new();
        for (zone, _) in self.zones.all() {
            let zone = &zone;
            dumps.extend(self.ask(zone, |reply| ZoneMsg::Dump { reply }).await.unwrap_or_default());
        }
        dumps
    }

    /// The zones served so far (a zone registered while the exchange runs joins with its first
    /// committed message, or with [`ExchangeHandle::serve_zone`]).
    pub fn zones(&self) -> Vec<ZoneId> {
        self.zones.all().into_iter().map(|(zone, _)| zone).collect()
    }

    /// Starts serving a zone registered after the exchange started (its books are recovered from
    /// the log like any other); `false` when the zone is not in storage or not served here (on
    /// PostgreSQL: another instance holds its lease).
    pub async fn serve_zone(&self, zone: &ZoneId) -> Result<bool, ExchangeError> {
        // On PostgreSQL: only if its lease is free, or this instance's already.
        self.zones.ownership().take_if_free(vec![zone.clone()]).await;
        Ok(self.zones.get_or_start(zone).await?.is_some())
    }

    /// This instance's name in the lease table ([`ExchangeConfig::instance_id`]).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Stops every task at once, as a crash would: nothing is flushed or committed any more, the
    /// leases are not let go (they expire, then other instances take the zones), messages not
    /// acknowledged stay in the broker's session. For failover tests in one process.
    pub fn kill(self) {
        let take = |tasks: &std::sync::Mutex<Vec<JoinHandle<()>>>| -> Vec<JoinHandle<()>> {
            match tasks.lock() {
                Ok(mut tasks) => tasks.drain(..).collect(),
                Err(poisoned) => poisoned.into_inner().drain(..).collect(),
            }
        };
        for task in take(&self.tasks).into_iter().chain(take(&self.mqtt_tasks)) {
            task.abort();
        }
        let lease_task = match self.lease_task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = lease_task {
            task.abort();
        }
    }

    /// A test hook: `true` pauses the lease manager (no heartbeat, no renewal, lost zones not
    /// dropped), as if the process stalled, so its leases expire while the rest keeps running.
    #[doc(hidden)]
    pub fn pause_leases(&self, paused: bool) {
        let _ = self.leases_paused.send(paused);
    }

    /// Stops taking messages, commits and applies what was accepted, and stops every task.
    pub async fn shutdown(self) {
        let take = |tasks: &std::sync::Mutex<Vec<JoinHandle<()>>>| -> Vec<JoinHandle<()>> {
            match tasks.lock() {
                Ok(mut tasks) => tasks.drain(..).collect(),
                Err(poisoned) => poisoned.into_inner().drain(..).collect(),
            }
        };
        let _ = self.shutdown.send(true);
        for task in take(&self.tasks) {
            let _ = task.await;
        }
        let _ = self.mqtt_stop.send(true);
        // Lets every lease go, now that everything taken is committed.
        let lease_task = match self.lease_task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = lease_task {
            let _ = task.await;
        }
        for mut task in take(&self.mqtt_tasks) {
            if tokio::time::timeout(Duration::from_millis(MQTT_FLUSH_TIMEOUT_MS), &mut task).await.is_err() {
                task.abort();
            }
        }
        // Nothing writes any more: the next exchange on this SQLite database may start.
        match self.writer_lock.lock() {
            Ok(mut lock) => drop(lock.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
    }
}

/// Starts the exchange: rebuilds the books of every served zone from the command log, then
/// connects to the broker (if given) and starts taking messages.
pub async fn start(
    config: ExchangeConfig,
    db: Database,
    clock: Arc<dyn Clock>,
    mqtt: Option<rumqttc::MqttOptions>,
) -> Result<ExchangeHandle, ExchangeError> {
    if !protocol::rules::slot_len_ms_within_limits(config.slot_len_ms)
        || config.gate_closure_ms < 0
        || config.horizon_ms <= 0
    {
        return Err(ExchangeError::Config("slot length 1–60 min, gate closure ≥ 0, horizon > 0".to_owned()));
    }
    if config.order_commands_per_account_per_s == 0 || config.order_commands_burst == 0 {
        return Err(ExchangeError::Config(
            "order commands per account: at least 1 per second and 1 at once".to_owned(),
        ));
    }
    if config.lease_renew_interval_ms == 0 || config.lease_ttl_ms <= config.lease_renew_interval_ms {
        return Err(ExchangeError::Config("leases: renew interval > 0 and below the time to live".to_owned()));
    }
    if !config.takes_zones && db.backend() != Backend::Postgres {
        return Err(ExchangeError::Config(
            "an instance that takes no zones (a web server) needs PostgreSQL: on SQLite one exchange owns every zone"
                .to_owned(),
        ));
    }
    let writer_lock = db.lock_single_writer("exchange")?;
    let only = config.zones.clone();
    let zones = db.run(move |conn| store::load_zones(conn, &only)).await?;
    let (events, _) = broadcast::channel(EVENT_BROADCAST_LEN);
    let (shutdown_sender, shutdown) = watch::channel(false);
    let (mqtt_stop_sender, mqtt_stop) = watch::channel(false);
    let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut mqtt_tasks = Vec::new();

    let connection = mqtt.clone().map(|options| {
        mqtt::connect(options, config.publish_queue_len, config.operator_key.clone(), mqtt_stop.clone())
    });
    let publish_tx = connection.as_ref().map(|connection| connection.publish.clone());
    // This server's name in the relay topics: its broker username (what the broker's ACL names),
    // else its instance id.
    let relay_name = mqtt
        .as_ref()
        .and_then(|options| options.credentials().map(|login| login.username))
        .unwrap_or_else(|| config.instance_id.clone());
    let outlets = Outlets { publish: publish_tx.clone(), events, clock: clock.clone() };

    // PostgreSQL takes several instances: each owns the zones whose lease it holds. SQLite takes
    // one exchange (the writer lock above), which owns every zone it serves.
    let leasing = db.backend() == Backend::Postgres;
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let (take_tx, take_rx) = mpsc::unbounded_channel();
    let ownership =
        if leasing { Ownership::leased(config.clone(), lost_tx, take_tx) } else { Ownership::fixed(config.clone()) };
    // Commands taken over HTTP for a zone another instance owns go to it through the broker.
    let relay = match (&publish_tx, leasing) {
        (Some(publish), true) => relay::Relay::new(
            &relay_name,
            publish.clone(),
            config.operator_key.verifying_key().to_bytes(),
            config.relay_timeout_ms,
        ),
        _ => relay::Relay::default(),
    };
    let zone_set = ZoneSet::new(config.clone(), db.clone(), outlets.clone(), ownership.clone(), tasks.clone());
    // Read queries for a zone another instance owns go to it through the broker too; this instance
    // answers those for the zones it owns.
    let (query_client, query_desk) = match (&publish_tx, &mqtt, leasing) {
        (Some(publish), Some(options), true) => {
            let client = query::QueryClient::new(
                relay::topic_segment(&relay_name),
                publish.clone(),
                config.operator_key.verifying_key().to_bytes(),
                config.relay_timeout_ms,
            );
            let desk = answers::Desk {
                zones: zone_set.clone(),
                key: Arc::new(config.operator_key.clone()),
                publish: publish.clone(),
                payload_bytes_max: answers::Desk::payload_bytes_max(options),
            };
            (client, Some(desk))
        }
        _ => (query::QueryClient::default(), None),
    };
    let queries = answers::Queries { zones: zone_set.clone(), client: query_client.clone(), db: db.clone() };
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    let (leases_paused, paused) = watch::channel(false);
    let mut lease_task = None;
    if leasing && !config.takes_zones {
        // A web server: it holds no lease, never counts in the fair share, and relays every
        // command to the zone's owner.
        tracing::info!("this instance takes no zones: it relays every command to the zone's owner");
    } else if leasing {
        let mut manager = LeaseManager {
            db: db.clone(),
            config: config.clone(),
            ownership: ownership.clone(),
            zones: zone_set.clone(),
            verifier: notices_tx,
            mqtt: connection.as_ref().map(|connection| connection.link.client()),
            lost: lost_rx,
            take: take_rx,
            releasing: Default::default(),
            paused,
        };
        // The first round before anything is taken: a lone instance starts with every zone.
        manager.round(false).await?;
        lease_task = Some(tokio::spawn(manager.run(shutdown.clone(), mqtt_stop.clone())));
    } else {
        for (zone, info) in &zones {
            zone_set.start_owner(zone.clone(), *info).await?;
        }
    }
    let spawn = |task: JoinHandle<()>| match tasks.lock() {
        Ok(mut tasks) => tasks.push(task),
        Err(poisoned) => poisoned.into_inner().push(task),
    };

    let (commit_tx, commit_rx) = mpsc::channel(config.commit_queue_len);
    let (resync_tx, resync_rx) = mpsc::channel(RESYNC_QUEUE_LEN);
    let (refused_tx, refused_rx) = mpsc::channel(REFUSED_QUEUE_LEN);
    let verifying = Arc::new(AtomicUsize::new(0));
    let writer = Writer {
        db: db.clone(),
        outlets: outlets.clone(),
        zones: zone_set.clone(),
        ownership: ownership.clone(),
        delay: Duration::from_millis(config.group_commit_delay_ms),
        size_max: config.group_commit_size_max.max(1),
        verifying: verifying.clone(),
        resync: resync_tx,
        refused: refused_rx,
        shutdown: shutdown.clone(),
        abandoned: false,
    };
    spawn(tokio::spawn(writer.run(commit_rx)));

    let (ingest_tx, ingest_rx) = mpsc::channel(config.ingest_queue_len);
    let mut verifier = Verifier::new(Limits::from(&config));
    verifier.directory = Directory { zones, ..Directory::default() };
    let stage = VerifyStage {
        verifier,
        db: db.clone(),
        outlets: outlets.clone(),
        batch_max: config.verify_batch_max.max(1),
        workers: config.verify_workers.max(1),
        verifying,
        commit: commit_tx,
        resync: resync_rx,
        refused: refused_tx,
        ownership: ownership.clone(),
        notices: notices_rx,
        relay: relay.clone(),
    };
    spawn(tokio::spawn(stage.run(ingest_rx, shutdown.clone())));

    let (ready_tx, mqtt_ready) = watch::channel(connection.is_none());
    let feed = (config.market_feed && connection.is_some()).then(|| broadcast::channel(events::FEED_BROADCAST_LEN).0);
    if let Some(connection) = connection {
        mqtt_tasks.push(connection.publisher);
        // An instance serving every zone subscribes with wildcards, so a zone registered later is
        // served without a restart; one serving named zones (a partition) subscribes to those; one
        // holding leases subscribes to the zones it holds, and changes them as leases come and go.
        let served = if leasing {
            mqtt::Served::Leased(Box::new(ownership.clone()))
        } else if config.zones.is_empty() {
            mqtt::Served::All
        } else {
            mqtt::Served::Zones(config.zones.clone())
        };
        // Battery plans (PROTOCOL.md §4.7) have their own stage: they never reach a book or the ledger.
        let (plans_tx, plans_rx) = mpsc::channel(plans::PLANS_QUEUE_LEN);
        let plan_stage = plans::PlanStage {
            db: db.clone(),
            outlets: outlets.clone(),
            limits: Limits::from(&config),
            buckets: Default::default(),
        };
        spawn(tokio::spawn(plan_stage.run(plans_rx, shutdown.clone())));
        let (queries_tx, queries_rx) = mpsc::channel(answers::QUERIES_QUEUE_LEN);
        if let Some(desk) = query_desk {
            spawn(tokio::spawn(desk.run(queries_rx, shutdown.clone())));
        }
        let inlets = mqtt::Inlets {
            ingest: ingest_tx.clone(),
            plans: plans_tx,
            relay,
            queries: query_client,
            asked: queries_tx,
            feed: feed.clone(),
        };
        let listener = mqtt::listen(connection.link, served, inlets, ready_tx, shutdown.clone(), mqtt_stop);
        mqtt_tasks.push(listener);
    }

    Ok(ExchangeHandle {
        operator: config.operator_key.verifying_key().to_bytes(),
        operator_key: Arc::new(config.operator_key.clone()),
        ingest: ingest_tx,
        zones: zone_set,
        outlets,
        shutdown: Arc::new(shutdown_sender),
        tasks,
        mqtt_stop: Arc::new(mqtt_stop_sender),
        mqtt_tasks: Arc::new(std::sync::Mutex::new(mqtt_tasks)),
        mqtt_ready,
        writer_lock: Arc::new(std::sync::Mutex::new(writer_lock)),
        lease_task: Arc::new(std::sync::Mutex::new(lease_task)),
        leases_paused: Arc::new(leases_paused),
        instance_id: config.instance_id.clone(),
        feed,
        queries,
    })
}
