//! The MQTT stage: the connection's client half (the publisher), the event loop (the listener,
//! which hands inbound messages on with `try_send` only), the PUBACK sender and the forwarder that
//! feeds the ingest queue with back-pressure. See the invariants in [`super`].

use super::acks::{acker, acknowledge, AckQueue};
use super::answers::RawQuery;
use super::events::Reply;
use super::events::{FeedMessage, Outbound};
use super::ownership::Ownership;
use super::plans::RawPlan;
use super::query::QueryClient;
use super::relay::Relay;
use super::verify::Raw;
use crate::ingest::{Kind, Origin};
use protocol::topics::{self, Inbound};
use protocol::{Version, ZoneId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// Capacity of rumqttc's request channel (publishes waiting for the event loop).
const MQTT_REQUEST_CHANNEL_LEN: usize = 4_096;
/// Pause before polling a failed MQTT connection again (rumqttc reconnects on the next poll).
const MQTT_RECONNECT_DELAY_MS: u64 = 500;
/// Inbound MQTT messages held while the ingest queue is full. MQTT 3.1.1 has no receive maximum,
/// but brokers bound their unacknowledged deliveries (Mosquitto's `max_inflight_messages`, 20 by
/// default; rumqttd 100) and the exchange acknowledges only stored messages, so this is rarely
/// reached; Mosquitto's count can run ahead of its window under a burst, and then the listener waits
/// for room before it reads on (the broker keeps the rest queued).
const INBOUND_HELD_MAX: usize = 1_024;

/// The connection to the broker, before it is listened to.
pub(super) struct Connection {
    /// Feeds the publisher task.
    pub publish: mpsc::Sender<Outbound>,
    pub publisher: JoinHandle<()>,
    /// What the listener polls.
    pub link: Link,
}

/// The client and its event loop, for [`listen`].
pub(super) struct Link {
    client: rumqttc::AsyncClient,
    eventloop: rumqttc::EventLoop,
}

impl Link {
    /// A handle on the client, for the lease manager's subscriptions (requests never wait: the
    /// listener drains the request channel).
    pub(super) fn client(&self) -> rumqttc::AsyncClient {
        self.client.clone()
    }
}

/// What the listener subscribes to.
#[derive(Debug)]
pub(super) enum Served {
    /// Every zone (wildcard subscriptions), so a zone registered later is served without a restart.
    All,
    /// The zones named by `market.zones` (a partition without leases).
    Zones(Vec<ZoneId>),
    /// The zones whose lease this instance holds (PostgreSQL): subscribed at each connection; the
    /// lease manager subscribes and unsubscribes as leases come and go.
    Leased(Box<Ownership>),
}

/// The topic filters of one zone's inbound messages (readings, orders and battery plans from every
/// sender, and the commands other gridex servers relay to the zone's owner).
pub(super) fn zone_filters(zone: &ZoneId) -> Vec<String> {
    vec![
        topics::readings(zone, &"+"),
        topics::readings_in(Version::V2, zone, &"+"),
        topics::orders(zone, &"+"),
        topics::plans(zone, &"+"),
        topics::relay_filter(zone),
        topics::query_filter(zone),
    ]
}

/// Every zone's inbound topics (readings of both versions, orders, battery plans): an instance
/// serving all zones.
const ALL_ZONES_FILTERS: [&str; 4] =
    [topics::ALL_READINGS, topics::ALL_READINGS_V2, topics::ALL_ORDERS, topics::ALL_PLANS];

/// Makes the client and its event loop and starts the publisher (which ends at `mqtt_stop`).
pub(super) fn connect(
    mut options: rumqttc::MqttOptions,
    publish_queue_len: usize,
    operator_key: ed25519_dalek::SigningKey,
    mqtt_stop: watch::Receiver<bool>,
) -> Connection {
    // See the service's invariant: a persistent session, and PUBACK only once a message's fate is
    // final. The caller's client id must therefore be stable across restarts (one per exchange).
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, MQTT_REQUEST_CHANNEL_LEN);
    // Acknowledgements and acks are small writes: Nagle's algorithm would hold them back
    // until the broker's delayed ACK (40 ms on Linux), stalling every sender's window.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (publish, publish_rx) = mpsc::channel(publish_queue_len);
    let publisher = tokio::spawn(publisher(client.clone(), publish_rx, operator_key, mqtt_stop));
    Connection { publish, publisher, link: Link { client, eventloop } }
}

/// Where the listener hands inbound messages: battery plans to `plans` (the plan stage), commands
/// relayed here and relay answers to `relay`, everything else to `ingest`.
pub(super) struct Inlets {
    pub ingest: mpsc::Sender<Raw>,
    pub plans: mpsc::Sender<RawPlan>,
    pub relay: Relay,
    /// Read queries relayed to other instances (answers on this server's answer topic).
    pub queries: QueryClient,
    /// Read queries other servers relayed here, to the owner's desk (`answers.rs`).
    pub asked: mpsc::Sender<RawQuery>,
    /// The market feed's subscribers (`ExchangeConfig::market_feed`), else `None`.
    pub feed: Option<broadcast::Sender<FeedMessage>>,
}

/// Starts taking inbound messages into `inlets`: the listener (returned, to be joined), the PUBACK
/// sender and the forwarder. `served`: what to subscribe to.
pub(super) fn listen(
    link: Link,
    served: Served,
    inlets: Inlets,
    ready: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
    mqtt_stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let Link { client, eventloop } = link;
    let Inlets { ingest, plans, relay, queries, asked, feed } = inlets;
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    // Not joined: it ends once the listener and every pending MqttAck are gone.
    tokio::spawn(acker(client.clone(), acks_rx));
    let acks = AckQueue::new(acks_tx);
    let (held_tx, held_rx) = mpsc::channel(INBOUND_HELD_MAX);
    // Not joined: it ends with the listener or when the ingest queue closes.
    tokio::spawn(forward(held_rx, ingest));
    let listener = MqttListener {
        client,
        acks,
        served,
        held: held_tx,
        plans,
        relay,
        queries,
        asked,
        feed,
        ready,
        subacks_pending: 0,
    };
    tokio::spawn(listener.run(eventloop, shutdown, mqtt_stop))
}

/// Owns the client half of the connection: the only task that awaits rumqttc's request channel.
/// It signs every message with the operator's key (about 30 µs each) here rather than in the zone
/// owners, which only queue them.
async fn publisher(
    client: rumqttc::AsyncClient,
    mut outbound: mpsc::Receiver<Outbound>,
    operator_key: ed25519_dalek::SigningKey,
    mut stop: watch::Receiver<bool>,
) {
    async fn send(client: &rumqttc::AsyncClient, key: &ed25519_dalek::SigningKey, message: Outbound) {
        let payload = match (message.sign)(key) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, topic = %message.topic, "cannot sign an outbound message");
                return;
            }
        };
        if let Err(error) = client.publish(message.topic, message.qos, message.retain, payload).await {
            tracing::warn!(%error, "publish failed");
        }
    }
    loop {
        tokio::select! {
            message = outbound.recv() => match message {
                Some(message) => {
                    metrics::gauge!("gridex_queue_depth", "queue" => "publish").set(outbound.len() as f64);
                    send(&client, &operator_key, message).await;
                }
                None => break,
            },
            () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                while let Ok(message) = outbound.try_recv() {
                    send(&client, &operator_key, message).await;
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
    acks: Arc<Mutex<AckQueue>>,
    /// What is subscribed to.
    served: Served,
    /// To [`forward`], which feeds the ingest queue.
    held: mpsc::Sender<Raw>,
    /// To the battery plan stage (`plans.rs`).
    plans: mpsc::Sender<RawPlan>,
    /// Relays commands to other instances (answers on this server's reply topic) and answers the
    /// commands relayed here.
    relay: Relay,
    /// Relays read queries to other instances (answers on this server's answer topic).
    queries: QueryClient,
    /// Read queries relayed here, for the owner's desk.
    asked: mpsc::Sender<RawQuery>,
    /// Where the market feed's messages go, when subscribed to.
    feed: Option<broadcast::Sender<FeedMessage>>,
    ready: watch::Sender<bool>,
    subacks_pending: usize,
}

impl MqttListener {
    fn subscribe(&mut self) {
        let _ = self.ready.send(false);
        let mut filters: Vec<String> = match &self.served {
            Served::Zones(zones) => zones.iter().flat_map(zone_filters).collect(),
            Served::Leased(ownership) => ownership.taking().iter().flat_map(zone_filters).collect(),
            Served::All => ALL_ZONES_FILTERS.iter().map(|filter| (*filter).to_owned()).collect(),
        };
        filters.extend(self.relay.name().map(topics::relay_replies_filter));
        filters.extend(self.queries.name().map(topics::query_replies_filter));
        if let Served::Leased(_) = &self.served {
            // A persistent session keeps the subscriptions of an earlier run without leases.
            for filter in ALL_ZONES_FILTERS {
                if let Err(error) = self.client.try_unsubscribe(filter) {
                    tracing::warn!(%error, "cannot unsubscribe");
                }
            }
        }
        // The market feed at QoS 0: a live view, never queued for this session nor acknowledged.
        let feed: &[&str] = if self.feed.is_some() { &topics::MARKET_FEED_FILTERS } else { &[] };
        self.subacks_pending = filters.len() + feed.len();
        for filter in feed {
            if let Err(error) = self.client.try_subscribe(*filter, rumqttc::QoS::AtMostOnce) {
                tracing::error!(%error, "cannot subscribe");
            }
        }
        if self.subacks_pending == 0 {
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
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => match self.inbound(publish) {
                    Handed::On => {}
                    // The broker sent more than the exchange holds (Mosquitto's in-flight count can
                    // run ahead of `max_inflight_messages`): read nothing more until there is room,
                    // so the broker keeps the rest queued (TCP back-pressure). Not a reconnect: that
                    // makes the broker redeliver every unacknowledged message while the first copies
                    // are still queued here, the hold overflows again at once, and the exchange
                    // never catches up (measured: a reconnect every 0.5 s, storing stopped).
                    Handed::Wait(raw) => {
                        metrics::counter!("gridex_inbound_held_overflow_total").increment(1);
                        // Closed: shutting down; unacknowledged, so the broker redelivers it.
                        let _ = self.held.send(raw).await;
                    }
                    Handed::WaitPlan(raw) => {
                        metrics::counter!("gridex_inbound_held_overflow_total").increment(1);
                        let _ = self.plans.send(raw).await;
                    }
                },
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

    /// Hands one inbound message on, or back when it cannot be held now (a broker sending more
    /// than [`INBOUND_HELD_MAX`] unacknowledged messages): the caller waits for room.
    fn inbound(&self, publish: rumqttc::Publish) -> Handed {
        let ack = (publish.qos != rumqttc::QoS::AtMostOnce).then(|| AckQueue::take(&self.acks, publish.pkid));
        let topic = publish.topic.as_str();
        if let Some((zone, instance, request)) = topics::parse_relay(topic) {
            return self.relayed(zone, instance, request, publish.payload.to_vec(), ack);
        }
        if topics::parse_relay_replies(topic).is_some() {
            self.relay.answer(&publish.payload);
            acknowledge(ack);
            return Handed::On;
        }
        if let Some((zone, instance, request)) = topics::parse_query(topic) {
            // Verified and answered by the desk, off the event loop; dropped when it is full (a
            // query has no effect: its caller times out and retries).
            let raw = RawQuery {
                zone: zone.to_owned(),
                instance: instance.to_owned(),
                request: request.to_owned(),
                payload: publish.payload.clone(),
            };
            if self.asked.try_send(raw).is_err() {
                metrics::counter!("gridex_relayed_queries_dropped_total").increment(1);
            }
            acknowledge(ack);
            return Handed::On;
        }
        if topics::parse_query_replies(topic).is_some() {
            self.queries.answer(&publish.payload);
            acknowledge(ack);
            return Handed::On;
        }
        if let (Some(feed), Some(_)) = (&self.feed, topics::parse_outbound(topic)) {
            // No subscriber is fine; the reader verifies what it uses.
            let _ = feed.send(FeedMessage { topic: publish.topic.clone(), payload: publish.payload.clone() });
            acknowledge(ack);
            return Handed::On;
        }
        let (kind, version, zone, sender) = match topics::parse_inbound(topic) {
            Some(Inbound::Readings { version, zone, device }) => (Kind::Reading, version, zone, device),
            Some(Inbound::Orders { zone, account }) => (Kind::Command, Version::V1, zone, account),
            Some(Inbound::Plans { zone, account }) => {
                let (zone, account) = (zone.to_owned(), account.to_owned());
                return self.plan(RawPlan { zone, account, bytes: publish.payload.to_vec(), ack });
            }
            None => {
                acknowledge(ack);
                return Handed::On;
            }
        };
        if let Served::Leased(ownership) = &self.served {
            // Left in the session from an earlier lease, or sent before an unsubscription took
            // effect: final here (the sender resends; the zone's owner receives it).
            if !ZoneId::parse(zone).is_ok_and(|zone| ownership.takes(&zone)) {
                metrics::counter!("gridex_not_owned_messages_total").increment(1);
                acknowledge(ack);
                return Handed::On;
            }
        }
        let origin = Origin::Mqtt { version, zone: zone.to_owned(), sender: sender.to_owned() };
        let raw = Raw { kind, origin, bytes: publish.payload.to_vec(), reply: None, ack, relayed: false };
        match self.held.try_send(raw) {
            Ok(()) => Handed::On,
            Err(mpsc::error::TrySendError::Full(raw)) => Handed::Wait(raw),
            // Shutting down: unacknowledged, so the broker redelivers it to the next session.
            Err(mpsc::error::TrySendError::Closed(_)) => Handed::On,
        }
    }

    /// A command another gridex server relayed (`topics::relay`): taken like a command over HTTP
    /// (its zone, sender and signature come from the signed bytes, checked as always; not owning
    /// the zone refuses it `zone moved`), acknowledged once committed or refused, and answered on
    /// the relaying server's reply topic. Same return as [`Self::inbound`].
    fn relayed(
        &self,
        zone: &str,
        instance: &str,
        request: &str,
        bytes: Vec<u8>,
        ack: Option<super::acks::MqttAck>,
    ) -> Handed {
        let (Ok(zone), Some(_)) = (ZoneId::parse(zone), self.relay.name()) else {
            acknowledge(ack);
            return Handed::On;
        };
        let (answer, outcome) = tokio::sync::oneshot::channel();
        let raw = Raw {
            kind: Kind::Command,
            origin: Origin::Direct,
            bytes,
            reply: Some(Reply::Command(answer)),
            ack,
            relayed: true,
        };
        // Answered once the command's outcome is known (nothing is sent if it is dropped).
        self.relay.reply_later(zone, instance.to_owned(), request.to_owned(), outcome);
        match self.held.try_send(raw) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Handed::On,
            Err(mpsc::error::TrySendError::Full(raw)) => Handed::Wait(raw),
        }
    }
}

impl MqttListener {
    /// Hands a battery plan to the plan stage, as [`MqttListener::inbound`] does other messages.
    fn plan(&self, raw: RawPlan) -> Handed {
        if let Served::Leased(ownership) = &self.served {
            if !ZoneId::parse(&raw.zone).is_ok_and(|zone| ownership.takes(&zone)) {
                metrics::counter!("gridex_not_owned_messages_total").increment(1);
                acknowledge(raw.ack);
                return Handed::On;
            }
        }
        match self.plans.try_send(raw) {
            // Closed: shutting down; unacknowledged, so the broker redelivers it to the next session.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Handed::On,
            Err(mpsc::error::TrySendError::Full(raw)) => Handed::WaitPlan(raw),
        }
    }
}

/// What became of an inbound message in [`MqttListener::inbound`].
enum Handed {
    /// Handed on, or final here.
    On,
    /// The hold is full: the listener waits for room before it reads the next message.
    Wait(Raw),
    /// The battery plan stage's queue is full: the same.
    WaitPlan(RawPlan),
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
