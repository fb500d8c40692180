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

use crate::config::{ExchangeConfig, EVENT_BROADCAST_LEN};
use crate::ingest::{
    self, Directory, Duplicate, Kind, Limits, Origin, Parsed, RefusedReading, Rejection, Verified, Verifier, ZoneInfo,
};
use crate::store::{self, CommandRow, ReadingRow};
use crate::zone::{self, Committed, ZoneMsg};
use gridex_store::clock::Clock;
use gridex_store::{Database, DbError};
use protocol::rules::slot_len_ms_within_limits;
use protocol::topics::{self, Inbound};
use protocol::{
    AccountId, BookSnapshot, Command, OrderUpdate, ReadingAck, Reason, Reject, SlotId, TimestampMs, Trade, ZoneId,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Capacity of rumqttc's request channel (publishes waiting for the event loop).
const MQTT_REQUEST_CHANNEL_LEN: usize = 4_096;
/// Pause before polling a failed MQTT connection again (rumqttc reconnects on the next poll).
const MQTT_RECONNECT_DELAY_MS: u64 = 500;
/// Keys looked up in storage per verification batch; a flood of unknown keys costs at most this.
const KEY_LOOKUPS_PER_BATCH_MAX: usize = 256;
/// How long shutdown waits for the last messages to reach the broker.
const MQTT_FLUSH_TIMEOUT_MS: u64 = 5_000;
/// Smallest batch the verification stage splits the queue into: batch verification pays off
/// from a few dozen signatures on (~1.7× at 64), so spreading fewer over the workers is slower.
const VERIFY_BATCH_MIN: usize = 32;
/// Abandoned commits whose senders the verifier must forget, waiting to be read.
const RESYNC_QUEUE_LEN: usize = 64;
/// Batches of refused readings waiting to be recorded by the group commit; beyond this their records
/// are dropped (the refusals themselves are still answered and counted).
const REFUSED_QUEUE_LEN: usize = 64;
/// First pause before a failed group commit is tried again: long enough for a lock or a failover
/// to clear, short enough that a passing fault costs little.
const COMMIT_RETRY_DELAY_MS_MIN: u64 = 50;
/// Longest pause between attempts: a database that is down is retried every few seconds without
/// flooding the log.
const COMMIT_RETRY_DELAY_MS_MAX: u64 = 5_000;
/// Inbound MQTT messages held while the ingest queue is full. MQTT 3.1.1 has no receive maximum,
/// but brokers bound their unacknowledged deliveries (Mosquitto's `max_inflight_messages`, 20 by
/// default; rumqttd 100) and the exchange acknowledges only stored messages, so this is never
/// reached with a sane broker; beyond it the exchange reconnects and the broker redelivers.
const INBOUND_HELD_MAX: usize = 1_024;

/// A refused start.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("storage: {0}")]
    Db(#[from] DbError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The acknowledgement of a committed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAck {
    /// The command's position in the log.
    pub command_seq: u64,
    /// The state of the order(s) of the sender after the command, in event order.
    pub updates: Vec<OrderUpdate>,
    /// Trades the command caused.
    pub trades: Vec<Trade>,
}

/// Something that happened in the market, for in-process subscribers (the web server's stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarketEvent {
    Trade(Trade),
    Book(BookSnapshot),
    OrderUpdate(OrderUpdate),
    ReadingAccepted {
        zone: ZoneId,
        ack: ReadingAck,
    },
    Rejected {
        zone: Option<ZoneId>,
        sender: Option<String>,
        reject: Reject,
    },
    /// A zone's closing auction at gate closure (zones with a closing auction only).
    Auction(protocol::AuctionResult),
}

/// One open (or just closed) slot of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: SlotId,
    pub gate_closure_ms: i64,
    pub state: protocol::BookState,
    pub best_bid: Option<protocol::PricePerKwh>,
    pub best_ask: Option<protocol::PricePerKwh>,
}

/// How a caller waits for the outcome of its message.
#[derive(Debug)]
pub(crate) enum Reply {
    Reading(oneshot::Sender<Result<(), Rejection>>),
    Command(oneshot::Sender<Result<CommandAck, Rejection>>),
}

impl Reply {
    fn reject(self, rejection: Rejection) {
        // A caller that stopped waiting does not need the answer.
        match self {
            Reply::Reading(sender) => drop(sender.send(Err(rejection))),
            Reply::Command(sender) => drop(sender.send(Err(rejection))),
        }
    }
}

/// A message as it arrives, before verification.
#[derive(Debug)]
pub(crate) struct Raw {
    kind: Kind,
    origin: Origin,
    bytes: Vec<u8>,
    reply: Option<Reply>,
    ack: Option<MqttAck>,
}

/// The broker's acknowledgement (PUBACK) of one inbound MQTT message, owed once its fate is final.
/// Dropping it without [`MqttAck::done`] leaves the message (and every later one) unacknowledged:
/// the broker redelivers them to the exchange's persistent session on the next connection.
pub(crate) struct MqttAck {
    queue: Arc<std::sync::Mutex<AckQueue>>,
    epoch: u64,
    seq: u64,
}

impl std::fmt::Debug for MqttAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAck").field("seq", &self.seq).finish()
    }
}

impl MqttAck {
    /// Marks the message done; sends its PUBACK and those of the done messages after it that were
    /// waiting for it.
    fn done(self) {
        let mut queue = match self.queue.lock() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        };
        queue.done(self.epoch, self.seq);
    }
}

/// Inbound messages waiting for their PUBACK, in arrival order. MQTT 3.1.1 (§4.6) has a client send
/// PUBACKs in the order the messages arrived, and brokers such as rumqttd refuse any other order, so
/// a message finished early waits for the ones before it.
struct AckQueue {
    /// Bumped at every new connection: packet ids of an earlier connection are void (the broker
    /// redelivers those messages).
    epoch: u64,
    /// Arrival number of `pending[0]`.
    base_seq: u64,
    /// Packet id of each message not yet acknowledged, and whether its fate is final.
    pending: VecDeque<(u16, bool)>,
    /// To the task that sends the PUBACKs, in order.
    acks: mpsc::UnboundedSender<u16>,
}

impl AckQueue {
    fn take(queue: &Arc<std::sync::Mutex<Self>>, pkid: u16) -> MqttAck {
        let mut guard = match queue.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.pending.push_back((pkid, false));
        let seq = guard.base_seq + guard.pending.len() as u64 - 1;
        MqttAck { queue: queue.clone(), epoch: guard.epoch, seq }
    }

    fn done(&mut self, epoch: u64, seq: u64) {
        if epoch != self.epoch || seq < self.base_seq {
            return;
        }
        if let Some(entry) = self.pending.get_mut((seq - self.base_seq) as usize) {
            entry.1 = true;
        }
        while let Some(&(pkid, true)) = self.pending.front() {
            self.pending.pop_front();
            self.base_seq += 1;
            // The acker ends only after the listener and every MqttAck are gone.
            let _ = self.acks.send(pkid);
        }
    }

    fn reconnected(queue: &Arc<std::sync::Mutex<Self>>) {
        let mut guard = match queue.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.epoch += 1;
        guard.base_seq += guard.pending.len() as u64;
        guard.pending.clear();
    }
}

/// Sends PUBACKs in the order the queue releases them.
async fn acker(client: rumqttc::AsyncClient, mut acks: mpsc::UnboundedReceiver<u16>) {
    while let Some(pkid) = acks.recv().await {
        let mut bare = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::<u8>::new());
        bare.pkid = pkid;
        if let Err(error) = client.ack(&bare).await {
            tracing::warn!(%error, "cannot acknowledge an MQTT message; the broker redelivers it");
        }
    }
}

/// Acknowledges `ack` if there is one.
fn acknowledge(ack: Option<MqttAck>) {
    if let Some(ack) = ack {
        ack.done();
    }
}

/// A verified message waiting for the group commit.
#[derive(Debug)]
struct Pending {
    verified: Verified,
    origin: Origin,
    reply: Option<Reply>,
    ack: Option<MqttAck>,
    received_ms: i64,
}

/// An MQTT message to send.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: rumqttc::QoS,
    pub retain: bool,
}

/// What every task shares: where to publish, the event broadcast, the clock.
#[derive(Clone)]
pub(crate) struct Outlets {
    pub publish: Option<mpsc::Sender<Outbound>>,
    pub events: broadcast::Sender<MarketEvent>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Outlets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlets").finish_non_exhaustive()
    }
}

impl Outlets {
    /// Queues an MQTT message without waiting; a full queue drops it (counted), never blocks.
    pub fn publish(&self, topic: String, payload: Vec<u8>, qos: rumqttc::QoS, retain: bool) {
        if let Some(publish) = &self.publish {
            if publish.try_send(Outbound { topic, payload, qos, retain }).is_err() {
                metrics::counter!("gridex_publish_dropped_total").increment(1);
            }
        }
    }
    /// Publishes a message to the broker (QoS 1) as canonical JSON.
    pub fn publish_message<T: protocol::WireMessage>(&self, topic: String, message: &T) {
        match protocol::encode(message) {
            Ok(payload) => self.publish(topic, payload, rumqttc::QoS::AtLeastOnce, false),
            Err(error) => tracing::error!(%error, "cannot encode an outbound message"),
        }
    }
    pub fn event(&self, event: MarketEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

fn count(kind: Kind, result: &'static str) {
    match kind {
        Kind::Reading => metrics::counter!("gridex_readings_total", "result" => result).increment(1),
        Kind::Command => metrics::counter!("gridex_orders_total", "result" => result).increment(1),
    }
}

/// Refuses a message: counts it, publishes a `Reject` to the sender's reject topic, tells in-process
/// subscribers and the waiting caller.
fn reject(
    outlets: &Outlets,
    kind: Kind,
    origin: &Origin,
    parsed: Option<&Parsed>,
    reply: Option<Reply>,
    rejection: Rejection,
) {
    count(kind, rejection.reason.code());
    let mut message = rejection.message.clone();
    message.truncate(protocol::messages::REJECT_MESSAGE_LEN_MAX);
    let of = parsed.map_or_else(|| "unknown".to_owned(), |parsed| parsed.type_name().to_owned());
    let reject = Reject {
        of,
        seq: parsed.map(Parsed::seq),
        reason: rejection.reason,
        message,
        ts_ms: TimestampMs(outlets.now_ms()),
    };
    let (zone, sender) = match (origin, parsed) {
        (Origin::Mqtt { zone, sender }, _) => (ZoneId::parse(zone).ok(), Some(sender.clone())),
        (Origin::Direct, Some(parsed)) => (Some(parsed.zone().clone()), Some(parsed.sender_hex())),
        (Origin::Direct, None) => (None, None),
    };
    if let (Origin::Mqtt { .. }, Some(zone), Some(sender)) = (origin, &zone, &sender) {
        outlets.publish_message(topics::rejects(zone, sender), &reject);
    }
    outlets.event(MarketEvent::Rejected { zone, sender, reject });
    if let Some(reply) = reply {
        reply.reject(rejection);
    }
}

/// The zone owners: started at start-up for every zone in storage, and for a zone registered while
/// the exchange runs the first time a message for it is committed. One owner per zone, ever.
#[derive(Clone)]
struct ZoneSet {
    owners: Arc<std::sync::RwLock<HashMap<ZoneId, mpsc::Sender<ZoneMsg>>>>,
    /// Held while an owner starts, so two callers never start two owners of one zone.
    starting: Arc<tokio::sync::Mutex<()>>,
    config: ExchangeConfig,
    db: Database,
    outlets: Outlets,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl ZoneSet {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ZoneId, mpsc::Sender<ZoneMsg>>> {
        match self.owners.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn get(&self, zone: &ZoneId) -> Option<mpsc::Sender<ZoneMsg>> {
        self.read().get(zone).cloned()
    }

    /// Every owner, by zone.
    fn all(&self) -> Vec<(ZoneId, mpsc::Sender<ZoneMsg>)> {
        let mut all: Vec<_> = self.read().iter().map(|(zone, owner)| (zone.clone(), owner.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The zone's owner, started (its books recovered from the log) if it is not running yet.
    /// `None` for a zone that is not in storage or not served by this instance.
    async fn get_or_start(&self, zone: &ZoneId) -> Result<Option<mpsc::Sender<ZoneMsg>>, ExchangeError> {
        if let Some(owner) = self.get(zone) {
            return Ok(Some(owner));
        }
        let _starting = self.starting.lock().await;
        if let Some(owner) = self.get(zone) {
            return Ok(Some(owner));
        }
        let wanted = vec![zone.clone()];
        let found = self.db.run(move |conn| store::load_zones(conn, &wanted)).await?;
        let Some(info) = found.get(zone).filter(|_| self.config.serves(zone)) else { return Ok(None) };
        Ok(Some(self.start_owner(zone.clone(), *info).await?))
    }

    async fn start_owner(&self, zone: ZoneId, info: ZoneInfo) -> Result<mpsc::Sender<ZoneMsg>, ExchangeError> {
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
}

impl std::fmt::Debug for ExchangeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeHandle").field("zones", &self.zones()).finish()
    }
}

fn shutting_down() -> Rejection {
    Rejection::new(Reason::InternalError, "the exchange is shutting down")
}

impl ExchangeHandle {
    /// Submits a signed order, cancel or replace (the HTTP path): the same checks as MQTT, and the
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
        let raw = Raw { kind, origin: Origin::Direct, bytes, reply: Some(reply), ack: None };
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

    /// Market events as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<MarketEvent> {
        self.outlets.events.subscribe()
    }

    async fn ask<T>(&self, zone: &ZoneId, make: impl FnOnce(oneshot::Sender<T>) -> ZoneMsg) -> Option<T> {
        let owner = self.zones.get_or_start(zone).await.ok().flatten()?;
        let (sender, receiver) = oneshot::channel();
        owner.send(make(sender)).await.ok()?;
        receiver.await.ok()
    }

    /// The top `levels` of a slot's book, if the book is open.
    pub async fn book(&self, zone: &ZoneId, slot: SlotId, levels: usize) -> Option<BookSnapshot> {
        self.ask(zone, |reply| ZoneMsg::Book { slot, levels, reply }).await.flatten()
    }

    /// The zone's tradable slots, earliest first.
    pub async fn open_slots(&self, zone: &ZoneId) -> Vec<SlotInfo> {
        self.ask(zone, |reply| ZoneMsg::OpenSlots { reply }).await.unwrap_or_default()
    }

    /// The account's resting orders in every zone, with their side and placement time.
    /// `zone`'s recent closing auction results, oldest first (empty for a zone without one, or one
    /// this instance does not serve).
    pub async fn auctions(&self, zone: &ZoneId) -> Vec<protocol::AuctionResult> {
        self.ask(zone, |reply| ZoneMsg::Auctions { reply }).await.unwrap_or_default()
    }

    pub async fn open_orders(&self, account: AccountId) -> Vec<zone::OpenOrder> {
        let mut orders = Vec::new();
        for (zone, _) in self.zones.all() {
            let zone = &zone;
            orders.extend(self.ask(zone, |reply| ZoneMsg::OpenOrders { account, reply }).await.unwrap_or_default());
        }
        orders
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
    /// the log like any other); `false` when the zone is not in storage or not served here.
    pub async fn serve_zone(&self, zone: &ZoneId) -> Result<bool, ExchangeError> {
        Ok(self.zones.get_or_start(zone).await?.is_some())
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
        for mut task in take(&self.mqtt_tasks) {
            if tokio::time::timeout(Duration::from_millis(MQTT_FLUSH_TIMEOUT_MS), &mut task).await.is_err() {
                task.abort();
            }
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
    if !slot_len_ms_within_limits(config.slot_len_ms) || config.gate_closure_ms < 0 || config.horizon_ms <= 0 {
        return Err(ExchangeError::Config("slot length 1–60 min, gate closure ≥ 0, horizon > 0".to_owned()));
    }
    let only = config.zones.clone();
    let zones = db.run(move |conn| store::load_zones(conn, &only)).await?;
    let (events, _) = broadcast::channel(EVENT_BROADCAST_LEN);
    let (shutdown_sender, shutdown) = watch::channel(false);
    let (mqtt_stop_sender, mqtt_stop) = watch::channel(false);
    let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut mqtt_tasks = Vec::new();

    let (publish_tx, client_and_loop) = match mqtt {
        Some(mut options) => {
            // See the module's invariant: a persistent session, and PUBACK only once a message's fate is
            // final. The caller's client id must therefore be stable across restarts (one per exchange).
            options.set_clean_session(false);
            options.set_manual_acks(true);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, MQTT_REQUEST_CHANNEL_LEN);
            // Acknowledgements and acks are small writes: Nagle's algorithm would hold them back
            // until the broker's delayed ACK (40 ms on Linux), stalling every sender's window.
            let mut network = rumqttc::NetworkOptions::new();
            network.set_tcp_nodelay(true);
            eventloop.set_network_options(network);
            let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue_len);
            mqtt_tasks.push(tokio::spawn(publisher(client.clone(), publish_rx, mqtt_stop.clone())));
            (Some(publish_tx), Some((client, eventloop)))
        }
        None => (None, None),
    };
    let outlets = Outlets { publish: publish_tx, events, clock: clock.clone() };

    let zone_set = ZoneSet {
        owners: Arc::default(),
        starting: Arc::default(),
        config: config.clone(),
        db: db.clone(),
        outlets: outlets.clone(),
        tasks: tasks.clone(),
    };
    for (zone, info) in &zones {
        zone_set.start_owner(zone.clone(), *info).await?;
    }
    let spawn = |task: JoinHandle<()>| match tasks.lock() {
        Ok(mut tasks) => tasks.push(task),
        Err(poisoned) => poisoned.into_inner().push(task),
    };

    let next_seq = db.run(store::next_command_seq).await?;
    let (commit_tx, commit_rx) = mpsc::channel(config.commit_queue_len);
    let (resync_tx, resync_rx) = mpsc::channel(RESYNC_QUEUE_LEN);
    let (refused_tx, refused_rx) = mpsc::channel(REFUSED_QUEUE_LEN);
    let verifying = Arc::new(AtomicUsize::new(0));
    let writer = Writer {
        db: db.clone(),
        outlets: outlets.clone(),
        zones: zone_set.clone(),
        next_seq,
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
        config: config.clone(),
    };
    spawn(tokio::spawn(stage.run(ingest_rx, shutdown.clone())));

    let (ready_tx, mqtt_ready) = watch::channel(client_and_loop.is_none());
    if let Some((client, eventloop)) = client_and_loop {
        // An instance serving every zone subscribes with wildcards, so a zone registered later is
        // served without a restart; one serving named zones (a partition) subscribes to those.
        let served: Option<Vec<ZoneId>> = (!config.zones.is_empty()).then(|| config.zones.clone());
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        // Not joined: it ends once the listener and every pending MqttAck are gone.
        tokio::spawn(acker(client.clone(), acks_rx));
        let acks = Arc::new(std::sync::Mutex::new(AckQueue {
            epoch: 0,
            base_seq: 0,
            pending: VecDeque::new(),
            acks: acks_tx,
        }));
        let (held_tx, held_rx) = mpsc::channel(INBOUND_HELD_MAX);
        // Not joined: it ends with the listener or when the ingest queue closes.
        tokio::spawn(forward(held_rx, ingest_tx.clone()));
        let listener = MqttListener { client, acks, served, held: held_tx, ready: ready_tx, subacks_pending: 0 };
        mqtt_tasks.push(tokio::spawn(listener.run(eventloop, shutdown.clone(), mqtt_stop)));
    }

    Ok(ExchangeHandle {
        ingest: ingest_tx,
        zones: zone_set,
        outlets,
        shutdown: Arc::new(shutdown_sender),
        tasks,
        mqtt_stop: Arc::new(mqtt_stop_sender),
        mqtt_tasks: Arc::new(std::sync::Mutex::new(mqtt_tasks)),
        mqtt_ready,
    })
}

/// Owns the client half of the connection: the only task that awaits rumqttc's request channel.
async fn publisher(
    client: rumqttc::AsyncClient,
    mut outbound: mpsc::Receiver<Outbound>,
    mut stop: watch::Receiver<bool>,
) {
    async fn send(client: &rumqttc::AsyncClient, message: Outbound) {
        if let Err(error) = client.publish(message.topic, message.qos, message.retain, message.payload).await {
            tracing::warn!(%error, "publish failed");
        }
    }
    loop {
        tokio::select! {
            message = outbound.recv() => match message {
                Some(message) => {
                    metrics::gauge!("gridex_queue_depth", "queue" => "publish").set(outbound.len() as f64);
                    send(&client, message).await;
                }
                None => break,
            },
            () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                while let Ok(message) = outbound.try_recv() {
                    send(&client, message).await;
                }
                break;
            }
        }
    }
    let _ = client.disconnect().await;
}

/// Polls the MQTT event loop and hands inbound messages on with `try_send` only (to [`forward`]).
struct MqttListener {
    client: rumqttc::AsyncClient,
    acks: Arc<std::sync::Mutex<AckQueue>>,
    /// The zones subscribed to; `None`: every zone (wildcard subscriptions).
    served: Option<Vec<ZoneId>>,
    /// To [`forward`], which feeds the ingest queue.
    held: mpsc::Sender<Raw>,
    ready: watch::Sender<bool>,
    subacks_pending: usize,
}

impl MqttListener {
    fn subscribe(&mut self) {
        let _ = self.ready.send(false);
        let filters: Vec<String> = match &self.served {
            Some(zones) => {
                zones.iter().flat_map(|zone| [topics::readings(zone, &"+"), topics::orders(zone, &"+")]).collect()
            }
            None => vec![topics::ALL_READINGS.to_owned(), topics::ALL_ORDERS.to_owned()],
        };
        self.subacks_pending = filters.len();
        if filters.is_empty() {
            let _ = self.ready.send(true);
        }
        for filter in filters {
            // try_subscribe never waits: the request channel is drained by this very task.
            if let Err(error) = self.client.try_subscribe(filter, rumqttc::QoS::AtLeastOnce) {
                tracing::error!(%error, "cannot subscribe");
            }
        }
    }

    /// Polls until the publisher disconnected (after `mqtt_stop`); stops forwarding inbound
    /// messages at `shutdown`.
    async fn run(
        mut self,
        mut eventloop: rumqttc::EventLoop,
        shutdown: watch::Receiver<bool>,
        mqtt_stop: watch::Receiver<bool>,
    ) {
        loop {
            let event = eventloop.poll().await;
            if *shutdown.borrow() {
                match event {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Err(_) if *mqtt_stop.borrow() => break,
                    _ => continue,
                }
            }
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    AckQueue::reconnected(&self.acks);
                    self.subscribe();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                    if !self.inbound(publish) {
                        // Drop the connection; the next poll reconnects (ConnAck voids the old acks).
                        eventloop.clean();
                        tokio::time::sleep(Duration::from_millis(MQTT_RECONNECT_DELAY_MS)).await;
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    self.subacks_pending = self.subacks_pending.saturating_sub(1);
                    if self.subacks_pending == 0 {
                        let _ = self.ready.send(true);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "MQTT connection failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(MQTT_RECONNECT_DELAY_MS)).await;
                }
            }
        }
    }

    /// Hands one inbound message on. `false` when it could not be held (a broker sending more than
    /// [`INBOUND_HELD_MAX`] unacknowledged messages): it stays unacknowledged, and so does every
    /// later one, so the caller reconnects and the broker redelivers them.
    fn inbound(&self, publish: rumqttc::Publish) -> bool {
        let ack = (publish.qos != rumqttc::QoS::AtMostOnce).then(|| AckQueue::take(&self.acks, publish.pkid));
        let topic = publish.topic.as_str();
        let (kind, zone, sender) = match topics::parse_inbound(topic) {
            Some(Inbound::Readings { zone, device }) => (Kind::Reading, zone, device),
            Some(Inbound::Orders { zone, account }) => (Kind::Command, zone, account),
            None => {
                acknowledge(ack);
                return true;
            }
        };
        let origin = Origin::Mqtt { zone: zone.to_owned(), sender: sender.to_owned() };
        let raw = Raw { kind, origin, bytes: publish.payload.to_vec(), reply: None, ack };
        match self.held.try_send(raw) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("gridex_inbound_held_overflow_total").increment(1);
                tracing::warn!("more unacknowledged MQTT messages than the exchange holds; reconnecting");
                false
            }
            // Shutting down: unacknowledged, so the broker redelivers it to the next session.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

/// Moves inbound MQTT messages into the ingest queue, waiting while it is full: back-pressure,
/// never `overloaded`. While it waits the exchange acknowledges nothing new, so the broker stops
/// sending once its in-flight window is full; the event loop keeps being polled (pings, PUBACKs).
async fn forward(mut held: mpsc::Receiver<Raw>, ingest: mpsc::Sender<Raw>) {
    while let Some(raw) = held.recv().await {
        metrics::gauge!("gridex_queue_depth", "queue" => "mqtt_held").set(held.len() as f64);
        // Closed: shutting down; the message stays unacknowledged and is redelivered.
        if ingest.send(raw).await.is_err() {
            break;
        }
    }
}

/// A batch after the stateless checks (strict parse, topic, signatures), done on a blocking thread.
#[derive(Debug)]
struct Prepared {
    batch: Vec<Raw>,
    parsed: Vec<Result<Parsed, Rejection>>,
    signatures: Vec<Option<Rejection>>,
}

/// Parses and batch-verifies the signatures of `batch`: pure CPU work, run off the async workers.
fn prepare(batch: Vec<Raw>) -> Prepared {
    prepare_with(batch, ingest::parse, ingest::verify_signatures)
}

/// [`prepare`] with its two steps given. Both are meant never to panic (they are fuzzed), but a
/// panic here would lose the whole batch, and with it the PUBACKs every later message waits for
/// (they go out in arrival order): the exchange would stall until it reconnected, and the broker
/// would then redeliver the poison message first. So a panic costs only the message that caused
/// it: it is refused as `internal_error` (and acknowledged, never retried), the others go on.
fn prepare_with(
    batch: Vec<Raw>,
    parse: impl Fn(Kind, &Origin, &[u8]) -> Result<Parsed, Rejection>,
    verify: impl Fn(&[Result<Parsed, Rejection>]) -> Vec<Option<Rejection>>,
) -> Prepared {
    let mut parsed: Vec<Result<Parsed, Rejection>> =
        batch.iter().map(|raw| guarded(|| parse(raw.kind, &raw.origin, &raw.bytes)).unwrap_or_else(Err)).collect();
    let signatures = match guarded(|| verify(&parsed)) {
        Ok(signatures) => signatures,
        // One message at a time, to find the one that panics.
        Err(_) => parsed
            .iter_mut()
            .map(|item| match guarded(|| verify(std::slice::from_ref(item))) {
                Ok(mut verdict) => verdict.pop().flatten(),
                Err(rejection) => {
                    *item = Err(rejection);
                    None
                }
            })
            .collect(),
    };
    Prepared { batch, parsed, signatures }
}

/// Runs `step`, turning a panic into an `internal_error` rejection.
fn guarded<T>(step: impl FnOnce() -> T) -> Result<T, Rejection> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|_| {
        tracing::error!("a message made verification panic; it is refused as internal_error");
        Rejection::new(Reason::InternalError, "the exchange failed on this message; it was not accepted")
    })
}

/// The verification stage's task. The stateless, CPU-heavy part (parse, signatures) runs on up to
/// `workers` blocking threads at once, one batch each; the stateful checks (registered keys,
/// freshness, seq, nonces, plausibility) run here, batch by batch in the order the batches were
/// taken from the ingest queue, so every sender's messages are checked in arrival order.
struct VerifyStage {
    verifier: Verifier,
    db: Database,
    outlets: Outlets,
    batch_max: usize,
    workers: usize,
    /// Messages taken from the ingest queue and not yet handed to the commit (or refused).
    verifying: Arc<AtomicUsize>,
    commit: mpsc::Sender<Pending>,
    resync: mpsc::Receiver<(Vec<protocol::DeviceId>, Vec<AccountId>)>,
    /// Refused readings with a valid signature, for the group commit to record.
    refused: mpsc::Sender<Vec<RefusedReading>>,
    /// Which zones this instance serves ([`ExchangeConfig::serves`]).
    config: ExchangeConfig,
}

/// A batch on a blocking thread, with its number of messages.
type InFlight = (usize, JoinHandle<Prepared>);

impl VerifyStage {
    async fn run(mut self, mut ingest: mpsc::Receiver<Raw>, mut shutdown: watch::Receiver<bool>) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(self.workers);
        let mut taking = true;
        while taking || !in_flight.is_empty() {
            tokio::select! {
                biased;
                // Only the oldest batch is awaited: batches finish in the order they were taken.
                prepared = oldest(&mut in_flight), if !in_flight.is_empty() => {
                    let taken = in_flight.pop_front().map_or(0, |(messages, _)| messages);
                    self.finish(prepared).await;
                    self.verifying.fetch_sub(taken, Ordering::Relaxed);
                }
                raw = ingest.recv(), if taking && in_flight.len() < self.workers => match raw {
                    Some(first) => self.dispatch(first, &mut ingest, &mut in_flight),
                    None => taking = false,
                },
                _ = shutdown.changed(), if taking => taking = false,
            }
        }
        // Drain what was queued before the stop, so nothing already taken is silently lost.
        ingest.close();
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Ok(raw) = ingest.try_recv() {
            batch.push(raw);
            if batch.len() == self.batch_max {
                self.finish(Some(prepare(std::mem::take(&mut batch)))).await;
            }
        }
        if !batch.is_empty() {
            self.finish(Some(prepare(batch))).await;
        }
    }

    /// Takes `first` and what else is queued, split over the free workers (no batch smaller
    /// than [`VERIFY_BATCH_MIN`] unless that is all there is), and starts them.
    fn dispatch(&self, first: Raw, ingest: &mut mpsc::Receiver<Raw>, in_flight: &mut VecDeque<InFlight>) {
        let free = self.workers - in_flight.len();
        let queued = ingest.len() + 1;
        let share = queued.div_ceil(free).clamp(VERIFY_BATCH_MIN.min(self.batch_max), self.batch_max);
        let mut next = Some(first);
        while in_flight.len() < self.workers {
            let mut batch = Vec::with_capacity(share);
            batch.extend(next.take());
            while batch.len() < share {
                match ingest.try_recv() {
                    Ok(raw) => batch.push(raw),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.verifying.fetch_add(batch.len(), Ordering::Relaxed);
            in_flight.push_back((batch.len(), tokio::task::spawn_blocking(move || prepare(batch))));
        }
        metrics::gauge!("gridex_queue_depth", "queue" => "ingest").set(ingest.len() as f64);
    }

    /// The stateful checks of one prepared batch, then hands the accepted messages to the commit.
    async fn finish(&mut self, prepared: Option<Prepared>) {
        let Some(Prepared { batch, parsed, signatures }) = prepared else { return };
        while let Ok((devices, accounts)) = self.resync.try_recv() {
            self.verifier.directory.forget(&devices, &accounts);
        }
        let now_ms = self.outlets.now_ms();
        self.load_missing(&parsed).await;
        let kept: Vec<Option<Parsed>> = parsed.iter().map(|item| item.as_ref().ok().cloned()).collect();
        let signature_valid: Vec<bool> = signatures.iter().map(Option::is_none).collect();
        let results = self.verifier.check_signed(parsed, signatures, now_ms);
        let mut refused = Vec::new();
        for (((raw, result), parsed), signature_valid) in batch.into_iter().zip(results).zip(kept).zip(signature_valid)
        {
            match result {
                Ok(verified) => {
                    let pending =
                        Pending { verified, origin: raw.origin, reply: raw.reply, ack: raw.ack, received_ms: now_ms };
                    if let Err(mpsc::error::SendError(pending)) = self.commit.send(pending).await {
                        if let Some(reply) = pending.reply {
                            reply.reject(shutting_down());
                        }
                    }
                }
                Err(rejection) => {
                    refused.extend(ingest::refused_reading(parsed.as_ref(), signature_valid, &rejection, now_ms));
                    reject(&self.outlets, raw.kind, &raw.origin, parsed.as_ref(), raw.reply, rejection);
                    acknowledge(raw.ack);
                }
            }
        }
        if !refused.is_empty() && self.refused.try_send(refused).is_err() {
            tracing::warn!("the refused readings queue is full; their records are dropped");
        }
        metrics::gauge!("gridex_queue_depth", "queue" => "commit")
            .set((self.commit.max_capacity() - self.commit.capacity()) as f64);
    }

    async fn load_missing(&mut self, parsed: &[Result<Parsed, Rejection>]) {
        self.load_missing_zones(parsed).await;
        self.reload_replacements(parsed).await;
        let (mut devices, mut accounts) = self.verifier.directory.missing(parsed);
        if devices.is_empty() && accounts.is_empty() {
            return;
        }
        devices.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        accounts.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        let loaded = self
            .db
            .run(move |conn| Ok((store::load_devices(conn, &devices)?, store::load_accounts(conn, &accounts)?)))
            .await;
        match loaded {
            Ok((devices, accounts)) => {
                self.verifier.directory.devices.extend(devices);
                self.verifier.directory.accounts.extend(accounts);
            }
            // The keys stay unknown; their messages are refused as `unknown_key` this time.
            Err(error) => tracing::error!(%error, "cannot look keys up"),
        }
    }
}

impl VerifyStage {
    /// Reloads the meter replacements of the cached devices whose readings in the batch their cache
    /// would refuse for their counters ([`Directory::stale_replacements`]): the utility may have
    /// registered one since, possibly from another process.
    async fn reload_replacements(&mut self, parsed: &[Result<Parsed, Rejection>]) {
        let mut stale = self.verifier.directory.stale_replacements(parsed);
        if stale.is_empty() {
            return;
        }
        stale.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        let devices = &self.verifier.directory.devices;
        let ids: Vec<_> = stale
            .into_iter()
            .map(|id| (id, devices.get(&id).and_then(|device| device.last.as_ref()).map(|last| last.ts_ms)))
            .collect();
        match self.db.run(move |conn| store::load_replacements(conn, &ids)).await {
            Ok(found) => {
                for (id, replacements) in found {
                    if let Some(device) = self.verifier.directory.devices.get_mut(&id) {
                        device.set_replacements(replacements);
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot look meter replacements up"),
        }
    }

    /// Zones named by the batch that the verifier does not know yet: a zone registered while the
    /// exchange runs is looked up in storage (once per batch at most).
    async fn load_missing_zones(&mut self, parsed: &[Result<Parsed, Rejection>]) {
        let mut missing: Vec<ZoneId> = Vec::new();
        for item in parsed.iter().flatten() {
            let zone = item.zone();
            let served = self.config.serves(zone);
            if served && !self.verifier.directory.zones.contains_key(zone) && !missing.contains(zone) {
                missing.push(zone.clone());
            }
        }
        if missing.is_empty() {
            return;
        }
        missing.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        match self.db.run(move |conn| store::load_zones(conn, &missing)).await {
            Ok(found) => self.verifier.directory.zones.extend(found),
            Err(error) => tracing::error!(%error, "cannot look zones up"),
        }
    }
}

/// Waits for the oldest batch in flight (never resolves when there is none). A batch whose thread
/// panicked is lost: its callers are told the exchange is shutting down (their replies drop).
async fn oldest(in_flight: &mut VecDeque<InFlight>) -> Option<Prepared> {
    let Some((_, handle)) = in_flight.front_mut() else { return std::future::pending().await };
    match handle.await {
        Ok(prepared) => Some(prepared),
        Err(error) => {
            tracing::error!(%error, "a verification batch failed");
            None
        }
    }
}

/// The group commit.
struct Writer {
    db: Database,
    outlets: Outlets,
    zones: ZoneSet,
    next_seq: u64,
    delay: Duration,
    size_max: usize,
    /// The verification stage's count of messages on their way: while it is zero, waiting for
    /// more would only delay the commit (and, since PUBACK follows the commit, the broker's next
    /// messages), so the group is committed at once.
    verifying: Arc<AtomicUsize>,
    resync: mpsc::Sender<(Vec<protocol::DeviceId>, Vec<AccountId>)>,
    /// Refused readings to record, from the verification stage.
    refused: mpsc::Receiver<Vec<RefusedReading>>,
    /// Ends the retries of a failing commit.
    shutdown: watch::Receiver<bool>,
    /// Set when a group was given up at shutdown: no later group may be stored before it.
    abandoned: bool,
}

/// The rows one group commit writes and the resends it looks up, shared by its attempts.
#[derive(Debug, Default)]
struct GroupRows {
    readings: Vec<ReadingRow>,
    commands: Vec<CommandRow>,
    /// Readings older than their device's last accepted one: (index in the group, reading).
    to_check: Vec<(usize, protocol::Signed<protocol::Reading>)>,
    /// Commands whose nonce was seen: (index in the group, command).
    seen: Vec<(usize, Command)>,
    /// Refused readings to record (signature valid, so the device sent them).
    refused: Vec<RefusedReading>,
}

/// What the transaction found for each pending message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stored,
    Duplicate,
    Replayed,
}

impl Writer {
    async fn run(mut self, mut pending: mpsc::Receiver<Pending>) {
        loop {
            // A group starts with a message to commit or with refused readings to record.
            let (mut group, mut refused) = tokio::select! {
                first = pending.recv() => match first {
                    Some(first) => (vec![first], Vec::new()),
                    None => break,
                },
                Some(refused) = self.refused.recv() => (Vec::new(), refused),
            };
            let deadline = tokio::time::Instant::now() + self.delay;
            while group.len() < self.size_max {
                match pending.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) if self.verifying.load(Ordering::Relaxed) == 0 => break,
                    Err(_) => match tokio::time::timeout_at(deadline, pending.recv()).await {
                        Ok(Some(item)) => group.push(item),
                        _ => break,
                    },
                }
            }
            while let Ok(more) = self.refused.try_recv() {
                refused.extend(more);
            }
            self.commit(group, refused).await;
        }
        // The verification stage has stopped: record the refusals it sent last.
        let mut refused = Vec::new();
        while let Ok(more) = self.refused.try_recv() {
            refused.extend(more);
        }
        if !refused.is_empty() {
            self.commit(Vec::new(), refused).await;
        }
        for (_, owner) in self.zones.all() {
            let _ = owner.send(ZoneMsg::Stop).await;
        }
    }

    async fn commit(&mut self, group: Vec<Pending>, refused: Vec<RefusedReading>) {
        let first_seq = self.next_seq;
        let mut rows = GroupRows { refused, ..GroupRows::default() };
        let mut seq = first_seq;
        for (index, item) in group.iter().enumerate() {
            match &item.verified {
                Verified::Reading { signed, payload, duplicate: Duplicate::No } => rows.readings.push(ReadingRow {
                    signed: signed.clone(),
                    payload: payload.clone(),
                    received_ms: item.received_ms,
                }),
                Verified::Reading { signed, duplicate: Duplicate::CheckStorage, .. } => {
                    rows.to_check.push((index, signed.clone()))
                }
                Verified::Reading { duplicate: Duplicate::OfLast, .. } => {}
                Verified::CommandSeen { command, .. } => rows.seen.push((index, command.clone())),
                Verified::Command { command, slot, payload } => {
                    rows.commands.push(CommandRow {
                        command_seq: seq,
                        zone: command.zone().clone(),
                        slot: *slot,
                        account: command.account(),
                        nonce: command.nonce(),
                        kind: command.type_name().to_owned(),
                        payload: payload.clone(),
                        received_ms: item.received_ms,
                    });
                    seq += 1;
                }
            }
        }
        // A zone's owner recovers its books from the log when it starts, so a zone's first commands
        // must be committed after that, or they would be applied twice.
        let mut zones: Vec<&ZoneId> = rows.commands.iter().map(|row| &row.zone).collect();
        zones.dedup();
        for zone in zones {
            if let Err(error) = self.zones.get_or_start(zone).await {
                tracing::error!(%zone, %error, "cannot start the zone's owner");
            }
        }
        match self.commit_until_stored(Arc::new(rows)).await {
            Some((commands, checked)) => {
                self.next_seq = seq;
                let mut outcomes = vec![Outcome::Stored; group.len()];
                for (index, same) in checked {
                    outcomes[index] = if same { Outcome::Duplicate } else { Outcome::Replayed };
                }
                self.after_commit(group, outcomes, commands).await;
            }
            None => self.abandon(group),
        }
    }

    /// Runs the group's transaction until it commits, retrying a failure after a capped backoff:
    /// a failed commit is never an answer to the senders (their messages are valid), and later groups
    /// wait, so what is stored stays in arrival order and the verifier's high-water marks (which
    /// assumed this group stored) stay true. `None` once the exchange is stopping while the commit
    /// still fails, or after an earlier group was abandoned.
    async fn commit_until_stored(&mut self, rows: Arc<GroupRows>) -> Option<(Vec<CommandRow>, Vec<(usize, bool)>)> {
        let mut delay_ms = COMMIT_RETRY_DELAY_MS_MIN;
        while !self.abandoned {
            let started = std::time::Instant::now();
            let attempt = rows.clone();
            let result = self
                .db
                .write(move |conn| {
                    store::insert_readings(conn, &attempt.readings)?;
                    store::insert_commands(conn, &attempt.commands)?;
                    store::insert_rejections(conn, &attempt.refused)?;
                    let mut checked = Vec::with_capacity(attempt.to_check.len() + attempt.seen.len());
                    for (index, signed) in &attempt.to_check {
                        checked.push((*index, store::same_reading_stored(conn, signed)?));
                    }
                    for (index, command) in &attempt.seen {
                        checked.push((*index, store::same_command_stored(conn, command)?));
                    }
                    Ok(checked)
                })
                .await;
            metrics::histogram!("gridex_group_commit_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(checked) => {
                    let commands =
                        Arc::try_unwrap(rows).map_or_else(|shared| shared.commands.clone(), |own| own.commands);
                    return Some((commands, checked));
                }
                Err(error) => {
                    metrics::counter!("gridex_group_commit_failures_total").increment(1);
                    tracing::error!(%error, retry_in_ms = delay_ms, "group commit failed; retrying");
                }
            }
            if *self.shutdown.borrow() {
                self.abandoned = true;
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                _ = self.shutdown.changed() => {}
            }
            delay_ms = (delay_ms * 2).min(COMMIT_RETRY_DELAY_MS_MAX);
        }
        None
    }

    /// The exchange stops while storage fails: the group is not stored and not answered over MQTT.
    /// Its messages (and every later one: PUBACKs go in arrival order) stay unacknowledged, so the
    /// broker redelivers them to the exchange's session; an HTTP caller is told to retry.
    fn abandon(&self, group: Vec<Pending>) {
        let mut devices = Vec::new();
        let mut accounts = Vec::new();
        for item in group {
            match &item.verified {
                Verified::Reading { signed, .. } => devices.push(signed.message.device),
                Verified::Command { command, .. } | Verified::CommandSeen { command, .. } => {
                    accounts.push(command.account())
                }
            }
            if let Some(reply) = item.reply {
                reply.reject(Rejection::new(Reason::InternalError, "storing the message failed; retry"));
            }
            // `item.ack` is dropped undone: no PUBACK.
        }
        // The verifier advanced these senders' high-water marks; make it reload them from storage.
        if self.resync.try_send((devices, accounts)).is_err() {
            tracing::error!("the resync queue is full");
        }
    }

    async fn after_commit(&self, group: Vec<Pending>, outcomes: Vec<Outcome>, commands: Vec<CommandRow>) {
        let mut commands = commands.into_iter();
        let mut per_zone: HashMap<ZoneId, Vec<Committed>> = HashMap::new();
        for (item, outcome) in group.into_iter().zip(outcomes) {
            // Committed (or found to be a replay): final, so the broker may forget it.
            acknowledge(item.ack);
            match item.verified {
                Verified::Reading { signed, payload, .. } => {
                    if outcome == Outcome::Replayed {
                        let rejection =
                            Rejection::new(Reason::Replayed, "a different reading with this seq was stored");
                        let parsed = Parsed::Reading(signed, payload);
                        reject(&self.outlets, Kind::Reading, &item.origin, Some(&parsed), item.reply, rejection);
                        continue;
                    }
                    count(Kind::Reading, if outcome == Outcome::Duplicate { "duplicate" } else { "accepted" });
                    let reading = signed.message;
                    let ack = ReadingAck { device: reading.device, seq: reading.seq, ts_ms: reading.ts_ms };
                    self.outlets.publish_message(topics::events(&reading.zone, &reading.device), &ack);
                    self.outlets.event(MarketEvent::ReadingAccepted { zone: reading.zone, ack });
                    if let Some(Reply::Reading(reply)) = item.reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                Verified::CommandSeen { command, payload } => {
                    let rejection = if outcome == Outcome::Duplicate {
                        Rejection::new(Reason::Duplicate, "this command was accepted before; it is not applied again")
                    } else {
                        Rejection::new(Reason::Replayed, "the nonce is not greater than the last accepted one")
                    };
                    let parsed = Parsed::Command(command, payload);
                    reject(&self.outlets, Kind::Command, &item.origin, Some(&parsed), item.reply, rejection);
                }
                Verified::Command { command, .. } => {
                    let Some(row) = commands.next() else { continue };
                    let committed = Committed { row, command, reply: item.reply.and_then(Reply::into_command) };
                    per_zone.entry(committed.row.zone.clone()).or_default().push(committed);
                }
            }
        }
        for (zone, batch) in per_zone {
            let owner = match self.zones.get_or_start(&zone).await {
                Ok(Some(owner)) => owner,
                // Verified against a zone in storage, so this is a storage failure: the command is
                // in the log and the zone's books pick it up when its owner recovers.
                Ok(None) | Err(_) => {
                    tracing::error!(%zone, "cannot start the zone's owner; its commands wait in the log");
                    for committed in batch {
                        if let Some(reply) = committed.reply {
                            let _ = reply.send(Err(Rejection::new(Reason::InternalError, "the zone is unavailable")));
                        }
                    }
                    continue;
                }
            };
            if let Err(mpsc::error::SendError(ZoneMsg::Apply(batch))) = owner.send(ZoneMsg::Apply(batch)).await {
                for committed in batch {
                    if let Some(reply) = committed.reply {
                        let _ = reply.send(Err(shutting_down()));
                    }
                }
            }
        }
    }
}

impl Reply {
    fn into_command(self) -> Option<oneshot::Sender<Result<CommandAck, Rejection>>> {
        match self {
            Reply::Command(sender) => Some(sender),
            Reply::Reading(_) => None,
        }
    }
}

/// Parses a logged command again (the payload was verified before it was logged).
pub(crate) fn parse_logged(payload: &str) -> Result<Command, Rejection> {
    Command::parse(payload.as_bytes()).map_err(Rejection::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (Arc<std::sync::Mutex<AckQueue>>, mpsc::UnboundedReceiver<u16>) {
        let (acks, receiver) = mpsc::unbounded_channel();
        let queue = AckQueue { epoch: 0, base_seq: 0, pending: VecDeque::new(), acks };
        (Arc::new(std::sync::Mutex::new(queue)), receiver)
    }

    fn released(receiver: &mut mpsc::UnboundedReceiver<u16>) -> Vec<u16> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[test]
    fn pubacks_leave_in_arrival_order_whatever_order_messages_finish_in() {
        let (queue, mut receiver) = queue();
        let (a, b, c) = (AckQueue::take(&queue, 7), AckQueue::take(&queue, 8), AckQueue::take(&queue, 9));
        c.done();
        assert_eq!(released(&mut receiver), Vec::<u16>::new(), "9 waits for 7 and 8");
        a.done();
        assert_eq!(released(&mut receiver), vec![7]);
        b.done();
        assert_eq!(released(&mut receiver), vec![8, 9]);
        let d = AckQueue::take(&queue, 10);
        d.done();
        assert_eq!(released(&mut receiver), vec![10]);
    }

    #[test]
    fn a_reconnection_voids_the_pending_acks_of_the_old_connection() {
        let (queue, mut receiver) = queue();
        let (old_first, old_second) = (AckQueue::take(&queue, 1), AckQueue::take(&queue, 2));
        old_second.done();
        AckQueue::reconnected(&queue);
        // The broker redelivers 1 and 2 on the new connection; the old handles are void.
        let (new_first, new_second) = (AckQueue::take(&queue, 1), AckQueue::take(&queue, 2));
        old_first.done();
        assert_eq!(released(&mut receiver), Vec::<u16>::new());
        new_first.done();
        new_second.done();
        assert_eq!(released(&mut receiver), vec![1, 2]);
    }

    fn raw_reading(seed: u8, seq: u64) -> Raw {
        let key = protocol::testing::signing_key(seed);
        let reading = protocol::Reading { seq, ..protocol::testing::sample_reading(&key) };
        let bytes = protocol::Signed::sign(reading, &key).expect("signs").to_json();
        Raw { kind: Kind::Reading, origin: Origin::Direct, bytes, reply: None, ack: None }
    }

    /// The poison message: the second of three messages makes a step panic.
    #[test]
    fn a_message_that_makes_verification_panic_is_refused_alone_and_the_batch_goes_on() {
        // Message 3 is forged: its verdict shows that verification still ran on the others.
        let batch = || {
            let mut batch: Vec<Raw> = (1..=3).map(|seq| raw_reading(seq as u8, seq)).collect();
            let forged = String::from_utf8_lossy(&batch[2].bytes).replace("\"seq\":3", "\"seq\":4");
            batch[2].bytes = forged.into_bytes();
            batch
        };
        let verdicts = |prepared: &Prepared| -> Vec<Option<Reason>> {
            prepared.signatures.iter().map(|verdict| verdict.as_ref().map(|r| r.reason)).collect()
        };
        let is_poison = |item: &Result<Parsed, Rejection>| matches!(item, Ok(Parsed::Reading(signed, _)) if signed.message.seq == 2);

        let parse_panics = |kind: Kind, origin: &Origin, bytes: &[u8]| {
            let parsed = ingest::parse(kind, origin, bytes);
            assert!(!is_poison(&parsed), "a bug in parsing");
            parsed
        };
        let prepared = prepare_with(batch(), parse_panics, ingest::verify_signatures);
        let reasons: Vec<_> = prepared.parsed.iter().map(|item| item.as_ref().err().map(|r| r.reason)).collect();
        assert_eq!(reasons, vec![None, Some(Reason::InternalError), None]);
        assert_eq!(verdicts(&prepared), vec![None, None, Some(Reason::BadSignature)]);

        let verify_panics = |parsed: &[Result<Parsed, Rejection>]| {
            assert!(!parsed.iter().any(is_poison), "a bug in verification");
            ingest::verify_signatures(parsed)
        };
        let prepared = prepare_with(batch(), ingest::parse, verify_panics);
        let reasons: Vec<_> = prepared.parsed.iter().map(|item| item.as_ref().err().map(|r| r.reason)).collect();
        assert_eq!(reasons, vec![None, Some(Reason::InternalError), None], "only the poison message is refused");
        assert_eq!(verdicts(&prepared), vec![None, None, Some(Reason::BadSignature)], "the others were verified");
        assert_eq!(prepared.batch.len(), 3, "every message is kept, so each one's fate is answered");
    }

    #[test]
    fn a_message_never_finished_holds_back_every_later_puback() {
        let (queue, mut receiver) = queue();
        let (lost, later) = (AckQueue::take(&queue, 3), AckQueue::take(&queue, 4));
        drop(lost);
        later.done();
        assert_eq!(released(&mut receiver), Vec::<u16>::new(), "4 waits: the broker will redeliver both");
    }
}
