//! MQTT publishing of spooled readings with rumqttc: QoS 1, in spool order, each reading removed from
//! the spool only once the exchange answered it (its `reading_ack` on the device's events topic, or a
//! final reject on its rejects topic), never on the broker's PUBACK: a broker that restarts without
//! persistence loses what it queued. Unanswered readings are published again after
//! [`PublisherConfig::ack_timeout_ms`] (doubling while unanswered) and on every reconnect; the
//! exchange answers a resend of a stored reading with its `reading_ack` again. Retained
//! online/offline status with a last will.
//!
//! Each connection is a fresh rumqttc client and event loop. The event loop is polled by its own task,
//! which forwards only what the publisher needs (connected, subscribed, published with packet id,
//! PUBACK, the exchange's answers, down) over a bounded channel. At most [`WINDOW`] readings are
//! unanswered and at most [`WINDOW`] publishes lack their PUBACK, so neither that channel nor
//! rumqttc's request channel can fill up (the known stall when one task both publishes and polls).
//! After a disconnect everything not answered is sent again from the spool, in order.

use crate::spool::Spool;
use protocol::{topics, DeviceId, Reading, ReadingAck, Reason, Reject, Status, ZoneId};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Readings published and not yet answered by the exchange, and (separately) reading publishes not
/// yet acknowledged by the broker. Well under rumqttc's in-flight limit (100) and request channel.
pub const WINDOW: usize = 32;
/// rumqttc request channel: the window plus status messages, two subscriptions and a disconnect.
pub const REQUEST_CHANNEL_CAPACITY: usize = WINDOW * 2;
/// Events forwarded from the poll task: at most two per outstanding publish, one answer per
/// unanswered reading (twice, counting answers to resends), plus a few more.
pub const EVENT_CHANNEL_CAPACITY: usize = WINDOW * 4 + 16;
/// Default wait for the exchange's answer to a reading before it is published again: the exchange
/// answers within milliseconds when it runs, so this only matters when it or the broker lost it.
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The wait doubles while nothing is answered, up to this: an exchange down for hours gets one
/// copy of the window every ten minutes from each gateway, not a flood.
pub const ACK_TIMEOUT_MAX_MS: u64 = 10 * 60 * 1000;
/// Shortest interval at which overdue answers are looked for (tests use short timeouts).
pub const ACK_CHECK_INTERVAL_MIN_MS: u64 = 20;
/// Delay before reconnecting after a failed connection; doubled up to the maximum.
pub const RECONNECT_DELAY_INITIAL_MS: u64 = 200;
pub const RECONNECT_DELAY_MAX_MS: u64 = 5_000;
/// MQTT keep-alive: the broker publishes the last will after 1.5 × this without traffic.
pub const KEEP_ALIVE_S: u64 = 15;
/// Largest CA file we read.
pub const CA_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// How often the publisher looks at the spool even without a notification.
pub const SPOOL_CHECK_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("bad mqtt url `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot read CA file {path}: {source}")]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("CA file {path} holds no usable PEM certificate: {reason}")]
    CaCertificates { path: PathBuf, reason: String },
    #[error("no trusted root certificates: {0}")]
    NoRoots(String),
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// How to reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA certificates for `mqtts://`; without it the system's roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Defaults to the username when set (brokers configured by `gridex broker-config` make the
    /// client id the username anyway), else `gridex-<first 16 hex digits of the key>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The operator's public key (64 hex, from `GET /api/v1/operator-key`), pinned: the exchange's
    /// answers and market data are believed only when it signed them (PROTOCOL.md §2.1).
    #[serde(default)]
    pub operator_key: Option<String>,
}

impl MqttSettings {
    /// The pinned operator key, if one is set; an error when it is set but malformed.
    pub fn pinned_operator(&self) -> Result<Option<[u8; 32]>, String> {
        self.operator_key.as_deref().map(crate::operator::parse_pinned).transpose()
    }
}

/// A broker login of its own, e.g. the trading agent's (`[agent.mqtt]`): it logs in as its
/// account, the gateway as its device.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for MqttLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLogin").field("username", &self.username).field("password", &"***").finish()
    }
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".to_owned(),
            username: None,
            password: None,
            ca_file: None,
            client_id: None,
            operator_key: None,
        }
    }
}

/// Host, port and whether TLS is used, from an `mqtt://` or `mqtts://` URL.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), PublishError> {
    let bad = |reason: &str| PublishError::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, true, 8883)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (rest, false, 1883)
    } else {
        return Err(bad("scheme must be mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err(bad("give username and password as settings, not in the url"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(|_| bad("port is a number 1-65535"))?),
        None => (rest, default_port),
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    Ok((host.to_owned(), port, tls))
}

/// rumqttc options for `settings`, with an optional last will.
pub fn mqtt_options(
    settings: &MqttSettings,
    client_id: &str,
    last_will: Option<LastWill>,
) -> Result<MqttOptions, PublishError> {
    let (host, port, tls) = parse_url(&settings.url)?;
    let client_id =
        settings.client_id.clone().or_else(|| settings.username.clone()).unwrap_or_else(|| client_id.to_owned());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(KEEP_ALIVE_S));
    options.set_clean_session(true);
    options.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    if let (Some(username), password) = (&settings.username, &settings.password) {
        options.set_credentials(username.clone(), password.clone().unwrap_or_default());
    }
    if let Some(will) = last_will {
        options.set_last_will(will);
    }
    if tls {
        let transport = match &settings.ca_file {
            Some(path) => {
                let io = |source| PublishError::CaFile { path: path.clone(), source };
                if std::fs::metadata(path).map_err(io)?.len() > CA_FILE_BYTES_MAX {
                    return Err(PublishError::CaFile {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large"),
                    });
                }
                let ca = std::fs::read(path).map_err(io)?;
                let roots = roots_from_pem(&ca)
                    .map_err(|reason| PublishError::CaCertificates { path: path.clone(), reason })?;
                Transport::tls_with_config(TlsConfiguration::Rustls(tls_client_config(roots)?))
            }
            None => Transport::tls_with_config(TlsConfiguration::Rustls(tls_client_config(native_roots()?)?)),
        };
        options.set_transport(transport);
    }
    Ok(options)
}

/// A rustls client configuration with an explicit crypto provider (ring).
///
/// Chosen explicitly rather than by rustls' process-wide default: when a build links both the `ring` and the
/// `aws-lc-rs` providers (feature unification in a workspace does this), the implicit choice panics.
fn tls_client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, PublishError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Parses every certificate of a PEM bundle into a root store; an empty or malformed bundle is an error.
fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no CERTIFICATE block".to_owned());
    }
    Ok(roots)
}

/// The operating system's trusted roots.
fn native_roots() -> Result<rustls::RootCertStore, PublishError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = found.errors.first().map_or_else(|| "the system has none".to_owned(), ToString::to_string);
        return Err(PublishError::NoRoots(reason));
    }
    Ok(roots)
}

/// The retained status payload (unsigned; the protocol's `status` message).
pub fn status_payload(device: DeviceId, online: bool) -> Vec<u8> {
    protocol::encode(&Status { device, online }).unwrap_or_default()
}

#[derive(Debug)]
enum LoopEvent {
    Connected,
    Subscribed,
    Published(u16),
    Acked(u16),
    /// A message on one of the topics the publisher subscribed to (the exchange's answers).
    Message(String, Vec<u8>),
    Down(String),
}

/// Polls an event loop until it fails, forwarding what the publisher needs.
fn spawn_poll_task(mut eventloop: rumqttc::EventLoop, events: mpsc::Sender<LoopEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => LoopEvent::Connected,
                Ok(Event::Incoming(Packet::SubAck(_))) => LoopEvent::Subscribed,
                Ok(Event::Incoming(Packet::PubAck(ack))) => LoopEvent::Acked(ack.pkid),
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    LoopEvent::Message(publish.topic, publish.payload.to_vec())
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LoopEvent::Published(pkid),
                Ok(_) => continue,
                Err(error) => {
                    let _ = events.send(LoopEvent::Down(error.to_string())).await;
                    return;
                }
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    })
}

/// Counters a caller can watch (tests, the demo's status page).
#[derive(Debug, Default)]
pub struct PublisherStats {
    pub connections: std::sync::atomic::AtomicU64,
    /// Readings published, resends included.
    pub published: std::sync::atomic::AtomicU64,
    /// Readings the exchange answered (stored, or refused for good) and the spool let go.
    pub acked: std::sync::atomic::AtomicU64,
    /// Readings published again because their answer did not come in time.
    pub resent: std::sync::atomic::AtomicU64,
}

/// What the publisher task needs.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub mqtt: MqttSettings,
    pub device: DeviceId,
    pub zone: ZoneId,
    /// How long a published reading waits for the exchange's answer before it is published again.
    pub ack_timeout_ms: u64,
    /// The pinned operator key. Without one no answer can be verified, so none is believed: every
    /// reading stays spooled and is published again after `ack_timeout_ms` (the exchange stores a
    /// resent reading once), until the spool's last-resort limit.
    pub operator: Option<[u8; 32]>,
}

/// One publish waiting for its packet id (FIFO, in publish order).
#[derive(Debug, Clone, Copy)]
enum Tag {
    Reading,
    Status,
}

/// Outcome of one connection.
enum SessionEnd {
    Shutdown,
    Down,
}

/// Publishes spooled readings until `shutdown` fires; reconnects forever.
pub async fn run(
    config: PublisherConfig,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    stats: Arc<PublisherStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), PublishError> {
    let client_id = format!("gridex-{}", &config.device.to_hex()[..16]);
    let status_topic = topics::status(&config.device);
    // Validate the url once so a typo is reported instead of retried forever.
    mqtt_options(&config.mqtt, &client_id, None)?;
    let mut delay_ms = RECONNECT_DELAY_INITIAL_MS;
    loop {
        let will = LastWill::new(&status_topic, status_payload(config.device, false), QoS::AtLeastOnce, true);
        let options = mqtt_options(&config.mqtt, &client_id, Some(will))?;
        match session(&config, options, &spool, &notify, &stats, &mut shutdown).await {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Down => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        delay_ms = (delay_ms * 2).min(RECONNECT_DELAY_MAX_MS);
        if stats.connections.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            // A connection that worked once is retried briskly.
            delay_ms = delay_ms.min(1_000);
        }
    }
}

/// A published reading the exchange has not answered yet.
#[derive(Debug)]
struct Unanswered {
    seq: u64,
    payload: Vec<u8>,
    answered: bool,
}

/// How the exchange answered a reading, read from its events or rejects topic.
/// Only a message the pinned operator signed is an answer (a forged ack would drop a reading).
fn answer_of(config: &PublisherConfig, topic: &str, payload: &[u8]) -> Option<u64> {
    let pinned = config.operator.as_ref()?;
    if topic == topics::events(&config.zone, &config.device) {
        let ack: ReadingAck = crate::operator::verified(pinned, topic, payload)?;
        return (ack.device == config.device).then_some(ack.seq);
    }
    if topic == topics::rejects(&config.zone, &config.device) {
        let reject: Reject = crate::operator::verified(pinned, topic, payload)?;
        if reject.of != <Reading as protocol::WireMessage>::TYPE {
            return None;
        }
        // `overloaded` says "retry later": the reading stays and is sent again. Every other reason is
        // final (the exchange never refuses a valid reading for a fault of its own over MQTT; it
        // holds it unacknowledged instead), and a final reject must not hold the spool up forever.
        if reject.reason == Reason::Overloaded {
            return None;
        }
        tracing::warn!(seq = ?reject.seq, reason = %reject.reason, message = %reject.message, "the exchange refused a reading");
        return reject.seq;
    }
    None
}

/// The topic of a spooled reading: that of its version (PROTOCOL.md §9), so a reading with a battery
/// goes on `gridex/v2/{zone}/readings/{device}` and every other one on the version 1 topic as before.
fn reading_topic(config: &PublisherConfig, payload: &[u8]) -> String {
    topics::readings_in(Reading::version_of_encoded(payload), &config.zone, &config.device)
}

/// One connection's state: what was published and not answered, in spool order.
struct Session<'a> {
    config: &'a PublisherConfig,
    client: AsyncClient,
    spool: &'a Arc<Mutex<Spool>>,
    stats: &'a Arc<PublisherStats>,
    waiting_for_pkid: VecDeque<Tag>,
    /// Reading publishes the broker has not acknowledged yet (by packet id).
    reading_pkids: HashSet<u16>,
    /// Reading publishes handed to rumqttc without the broker's PUBACK: at most [`WINDOW`].
    unpubacked: usize,
    unanswered: VecDeque<Unanswered>,
    last_sent: u64,
    /// When the oldest unanswered reading was (re)published, and how long its answer may take.
    sent_at: tokio::time::Instant,
    timeout_ms: u64,
}

impl Session<'_> {
    async fn publish_reading(&mut self, payload: Vec<u8>) -> Result<(), rumqttc::ClientError> {
        self.client.publish(reading_topic(self.config, &payload), QoS::AtLeastOnce, false, payload).await?;
        self.waiting_for_pkid.push_back(Tag::Reading);
        self.unpubacked += 1;
        self.stats.published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Publishes spooled readings after the last one sent while the window has room.
    async fn fill(&mut self) -> Result<(), rumqttc::ClientError> {
        while self.unanswered.len() < WINDOW && self.unpubacked < WINDOW {
            let room = WINDOW - self.unanswered.len().max(self.unpubacked);
            let batch = match lock(self.spool).read_after(self.last_sent, room) {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "cannot read the spool");
                    return Ok(());
                }
            };
            if batch.is_empty() {
                return Ok(());
            }
            for (seq, payload) in batch {
                if self.unanswered.is_empty() {
                    self.sent_at = tokio::time::Instant::now();
                }
                self.publish_reading(payload.clone()).await?;
                self.unanswered.push_back(Unanswered { seq, payload, answered: false });
                self.last_sent = seq;
            }
        }
        Ok(())
    }

    fn pubacked(&mut self, pkid: u16) {
        if self.reading_pkids.remove(&pkid) {
            self.unpubacked = self.unpubacked.saturating_sub(1);
        }
    }

    fn published(&mut self, pkid: u16) {
        if let Some(Tag::Reading) = self.waiting_for_pkid.pop_front() {
            self.reading_pkids.insert(pkid);
        }
    }

    /// The exchange answered `seq`: the answered readings at the front leave the spool.
    fn answered(&mut self, seq: u64) {
        let Some(entry) = self.unanswered.iter_mut().find(|entry| entry.seq == seq) else { return };
        entry.answered = true;
        let mut through = None;
        while self.unanswered.front().is_some_and(|entry| entry.answered) {
            through = self.unanswered.pop_front().map(|entry| entry.seq);
            self.stats.acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(through) = through {
            self.sent_at = tokio::time::Instant::now();
            self.timeout_ms = self.config.ack_timeout_ms;
            if let Err(error) = lock(self.spool).ack_through(through) {
                tracing::error!(%error, "cannot record an acknowledgement");
            }
        }
    }

    /// Publishes the unanswered readings again once their answer is overdue (and the broker has
    /// acknowledged the earlier publishes, so the window stays bounded). The timeout doubles while
    /// nothing is answered, so an exchange that is down for long is not flooded with copies.
    async fn resend_overdue(&mut self) -> Result<(), rumqttc::ClientError> {
        let overdue = self.sent_at.elapsed() >= Duration::from_millis(self.timeout_ms);
        if !overdue || self.unpubacked > 0 || self.unanswered.iter().all(|entry| entry.answered) {
            return Ok(());
        }
        let again: Vec<Vec<u8>> =
            self.unanswered.iter().filter(|entry| !entry.answered).map(|entry| entry.payload.clone()).collect();
        tracing::info!(
            readings = again.len(),
            timeout_ms = self.timeout_ms,
            "no answer from the exchange; publishing again"
        );
        for payload in again {
            self.publish_reading(payload).await?;
            self.stats.resent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.sent_at = tokio::time::Instant::now();
        // Never below the configured timeout, even when that is above the usual cap.
        self.timeout_ms = self.timeout_ms.saturating_mul(2).min(ACK_TIMEOUT_MAX_MS.max(self.config.ack_timeout_ms));
        Ok(())
    }
}

/// Waits for the broker's CONNACK and the SUBACKs of the answer topics.
async fn connected(
    events: &mut mpsc::Receiver<LoopEvent>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    client: &AsyncClient,
    config: &PublisherConfig,
) -> Option<SessionEnd> {
    let mut subacks_pending = None;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(LoopEvent::Connected) => {
                    // The exchange answers on the device's events and rejects topics.
                    for topic in [topics::events(&config.zone, &config.device), topics::rejects(&config.zone, &config.device)] {
                        if client.subscribe(topic, QoS::AtLeastOnce).await.is_err() {
                            return Some(SessionEnd::Down);
                        }
                    }
                    subacks_pending = Some(2);
                }
                Some(LoopEvent::Subscribed) => {
                    if let Some(pending) = subacks_pending.as_mut() {
                        *pending -= 1;
                        if *pending == 0 {
                            return None;
                        }
                    }
                }
                Some(LoopEvent::Down(error)) => {
                    tracing::warn!(%error, "mqtt connection failed");
                    return Some(SessionEnd::Down);
                }
                None => return Some(SessionEnd::Down),
                Some(_) => {}
            },
            _ = shutdown.changed() => return Some(SessionEnd::Shutdown),
        }
    }
}

async fn session(
    config: &PublisherConfig,
    options: MqttOptions,
    spool: &Arc<Mutex<Spool>>,
    notify: &Arc<Notify>,
    stats: &Arc<PublisherStats>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> SessionEnd {
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let (events_tx, mut events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let _poller = AbortOnDrop(spawn_poll_task(eventloop, events_tx));
    let status_topic = topics::status(&config.device);
    if let Some(end) = connected(&mut events, shutdown, &client, config).await {
        return end;
    }
    stats.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(url = %config.mqtt.url, "mqtt connected");

    // Everything unanswered is published again on every connection, from the spool.
    let last_sent = lock(spool).acked_seq();
    let mut session = Session {
        config,
        client: client.clone(),
        spool,
        stats,
        waiting_for_pkid: VecDeque::new(),
        reading_pkids: HashSet::new(),
        unpubacked: 0,
        unanswered: VecDeque::new(),
        last_sent,
        sent_at: tokio::time::Instant::now(),
        timeout_ms: config.ack_timeout_ms,
    };
    if client.publish(&status_topic, QoS::AtLeastOnce, true, status_payload(config.device, true)).await.is_err() {
        return SessionEnd::Down;
    }
    session.waiting_for_pkid.push_back(Tag::Status);

    let check_ms = config.ack_timeout_ms.clamp(ACK_CHECK_INTERVAL_MIN_MS, SPOOL_CHECK_INTERVAL_MS);
    let mut check = tokio::time::interval(Duration::from_millis(check_ms));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if session.fill().await.is_err() {
            return SessionEnd::Down;
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(LoopEvent::Published(pkid)) => session.published(pkid),
                Some(LoopEvent::Acked(pkid)) => session.pubacked(pkid),
                Some(LoopEvent::Message(topic, payload)) => {
                    if let Some(seq) = answer_of(config, &topic, &payload) {
                        session.answered(seq);
                    }
                }
                Some(LoopEvent::Connected | LoopEvent::Subscribed) => {}
                Some(LoopEvent::Down(error)) => {
                    tracing::warn!(%error, unanswered = session.unanswered.len(), "mqtt connection lost");
                    return SessionEnd::Down;
                }
                None => return SessionEnd::Down,
            },
            _ = notify.notified() => {}
            _ = check.tick() => {
                if session.resend_overdue().await.is_err() {
                    return SessionEnd::Down;
                }
            }
            _ = shutdown.changed() => {
                let offline = status_payload(config.device, false);
                let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, offline);
                let _ = client.try_disconnect();
                // Give the poll task a moment to write the status and DISCONNECT.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while let Some(event) = events.recv().await {
                        if matches!(event, LoopEvent::Down(_)) { break; }
                    }
                }).await;
                return SessionEnd::Shutdown;
            }
        }
    }
}

/// Locks the spool; a panic while holding the lock cannot leave it half-written (every write is one
/// append or rename), so a poisoned lock is taken over.
pub(crate) fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Aborts a task when dropped, so a session's poll task never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_makes_the_username_the_client_id_unless_one_is_set() {
        // Brokers set up by `gridex broker-config` make the client id the username anyway.
        let anonymous = MqttSettings::default();
        assert_eq!(mqtt_options(&anonymous, "gridex-ab", None).expect("valid").client_id(), "gridex-ab");
        let login = MqttSettings { username: Some("ab".repeat(32)), password: Some("pw".into()), ..anonymous };
        assert_eq!(mqtt_options(&login, "gridex-ab", None).expect("valid").client_id(), "ab".repeat(32));
        let named = MqttSettings { client_id: Some("box-7".into()), ..login };
        assert_eq!(mqtt_options(&named, "gridex-ab", None).expect("valid").client_id(), "box-7");
        assert!(!format!("{:?}", MqttLogin { username: "u".into(), password: "hunter2".into() }).contains("hunter2"));
    }

    #[test]
    fn mqtt_urls_name_host_port_and_tls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1884").expect("valid"), ("127.0.0.1".to_owned(), 1884, false));
        assert_eq!(parse_url("mqtt://broker").expect("valid"), ("broker".to_owned(), 1883, false));
        assert_eq!(parse_url("mqtts://broker.example").expect("valid"), ("broker.example".to_owned(), 8883, true));
        assert!(parse_url("http://broker").is_err());
        assert!(parse_url("mqtt://user:pw@broker").is_err(), "credentials belong in settings, not urls");
        assert!(parse_url("mqtt://:1883").is_err());
    }

    #[test]
    fn tls_with_a_ca_file_reads_it_and_a_missing_one_is_an_error() {
        let missing = MqttSettings {
            url: "mqtts://broker".to_owned(),
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..MqttSettings::default()
        };
        assert!(matches!(mqtt_options(&missing, "id", None), Err(PublishError::CaFile { .. })));
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").expect("writes");
        let empty =
            MqttSettings { url: "mqtts://broker".to_owned(), ca_file: Some(ca.clone()), ..MqttSettings::default() };
        assert!(matches!(mqtt_options(&empty, "id", None), Err(PublishError::CaCertificates { .. })));
        std::fs::write(&ca, include_bytes!("../tests/fixtures/test-ca.pem")).expect("writes");
        let settings = MqttSettings {
            url: "mqtts://broker:8884".to_owned(),
            username: Some("home".to_owned()),
            password: Some("secret".to_owned()),
            ca_file: Some(ca),
            client_id: None,
            operator_key: None,
        };
        let options = mqtt_options(&settings, "gridex-x", None).expect("builds");
        assert_eq!(options.broker_address(), ("broker".to_owned(), 8884));
        assert!(matches!(options.transport(), Transport::Tls(_)));
        assert_eq!(options.credentials().map(|login| login.username), Some("home".to_owned()));
    }

    #[test]
    fn a_reading_is_answered_by_its_ack_or_a_final_reject_but_not_by_overloaded() {
        let device = DeviceId::from_verifying_key(&protocol::testing::signing_key(1).verifying_key());
        let zone = protocol::testing::zone();
        let operator = protocol::testing::operator_key();
        let config = PublisherConfig {
            mqtt: MqttSettings::default(),
            device,
            zone: zone.clone(),
            ack_timeout_ms: 1,
            operator: Some(operator.verifying_key().to_bytes()),
        };
        let sign = |message| protocol::Signed::sign_operator(message, &operator).expect("signs").to_json();
        let ack = sign(ReadingAck { device, seq: 7, ts_ms: protocol::TimestampMs(0) });
        assert_eq!(answer_of(&config, &topics::events(&zone, &device), &ack), Some(7));
        assert_eq!(answer_of(&config, &topics::rejects(&zone, &device), &ack), None, "an ack on the wrong topic");
        let reject = |reason, of: &str| {
            let reject = Reject {
                of: of.to_owned(),
                seq: Some(8),
                reason,
                message: String::new(),
                ts_ms: protocol::TimestampMs(0),
            };
            protocol::Signed::sign_operator(reject, &operator).expect("signs").to_json()
        };
        let rejects = topics::rejects(&zone, &device);
        assert_eq!(answer_of(&config, &rejects, &reject(Reason::TimestampTooOld, "reading")), Some(8));
        assert_eq!(answer_of(&config, &rejects, &reject(Reason::Overloaded, "reading")), None, "retry later");
        assert_eq!(answer_of(&config, &rejects, &reject(Reason::TimestampTooOld, "order")), None);
    }

    #[test]
    fn a_forged_or_unverifiable_ack_answers_nothing() {
        let device = DeviceId::from_verifying_key(&protocol::testing::signing_key(1).verifying_key());
        let zone = protocol::testing::zone();
        let operator = protocol::testing::operator_key();
        let mut config = PublisherConfig {
            mqtt: MqttSettings::default(),
            device,
            zone: zone.clone(),
            ack_timeout_ms: 1,
            operator: Some(operator.verifying_key().to_bytes()),
        };
        let events = topics::events(&zone, &device);
        let ack = ReadingAck { device, seq: 7, ts_ms: protocol::TimestampMs(0) };
        let forged = protocol::Signed::sign_operator(ack.clone(), &protocol::testing::signing_key(5)).expect("signs");
        assert_eq!(answer_of(&config, &events, &forged.to_json()), None, "a neighbour's ack");
        assert_eq!(answer_of(&config, &events, &protocol::encode(&ack).expect("encodes")), None, "unsigned");
        let genuine = protocol::Signed::sign_operator(ack, &operator).expect("signs").to_json();
        assert_eq!(answer_of(&config, &events, &genuine), Some(7));
        config.operator = None;
        assert_eq!(answer_of(&config, &events, &genuine), None, "nothing is believed without a pinned key");
    }

    #[test]
    fn the_status_payload_is_the_protocols_status_message() {
        let device = DeviceId::from_verifying_key(&protocol::testing::signing_key(1).verifying_key());
        let status: Status = protocol::decode(&status_payload(device, true)).expect("decodes");
        assert_eq!(status, Status { device, online: true });
    }
}
