//! MQTT publishing of spooled readings with rumqttc: QoS 1, in spool order, each reading acknowledged
//! in the spool only after the broker's PUBACK; retained online/offline status with a last will.
//!
//! Each connection is a fresh rumqttc client and event loop. The event loop is polled by its own task,
//! which forwards only what the publisher needs (connected, published with packet id, PUBACK, down)
//! over a bounded channel. At most [`WINDOW`] publishes are outstanding, so neither that channel nor
//! rumqttc's request channel can fill up (the known stall when one task both publishes and polls).
//! After a disconnect everything not acknowledged is sent again from the spool, in order.

use crate::spool::Spool;
use protocol::{topics, DeviceId, Status, ZoneId};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Publishes outstanding at once. Well under rumqttc's in-flight limit (100) and request channel.
pub const WINDOW: usize = 32;
/// rumqttc request channel: the window plus status messages and a disconnect.
pub const REQUEST_CHANNEL_CAPACITY: usize = WINDOW * 2;
/// Events forwarded from the poll task: at most two per outstanding publish plus a few more.
pub const EVENT_CHANNEL_CAPACITY: usize = WINDOW * 4 + 16;
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
    /// Defaults to `gridex-<first 16 hex digits of the key>`.
    #[serde(default)]
    pub client_id: Option<String>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self { url: "mqtt://127.0.0.1:1883".to_owned(), username: None, password: None, ca_file: None, client_id: None }
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
    let mut options = MqttOptions::new(settings.client_id.clone().unwrap_or_else(|| client_id.to_owned()), host, port);
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
    Published(u16),
    Acked(u16),
    Down(String),
}

/// Polls an event loop until it fails, forwarding what the publisher needs.
fn spawn_poll_task(mut eventloop: rumqttc::EventLoop, events: mpsc::Sender<LoopEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => LoopEvent::Connected,
                Ok(Event::Incoming(Packet::PubAck(ack))) => LoopEvent::Acked(ack.pkid),
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
    pub published: std::sync::atomic::AtomicU64,
    pub acked: std::sync::atomic::AtomicU64,
}

/// What the publisher task needs.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub mqtt: MqttSettings,
    pub device: DeviceId,
    pub zone: ZoneId,
}

/// One publish waiting for its packet id (FIFO, in publish order).
#[derive(Debug, Clone, Copy)]
enum Tag {
    Reading(u64),
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

async fn session(
    config: &PublisherConfig,
    options: MqttOptions,
    spool: &Arc<Mutex<Spool>>,
    notify: &Arc<Notify>,
    stats: &Arc<PublisherStats>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> SessionEnd {
    use std::sync::atomic::Ordering::Relaxed;
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let (events_tx, mut events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let _poller = AbortOnDrop(spawn_poll_task(eventloop, events_tx));
    let topic = topics::readings(&config.zone, &config.device);
    let status_topic = topics::status(&config.device);

    // Wait for the broker to accept the connection.
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(LoopEvent::Connected) => break,
                Some(LoopEvent::Down(error)) => {
                    tracing::warn!(%error, "mqtt connection failed");
                    return SessionEnd::Down;
                }
                None => return SessionEnd::Down,
                Some(_) => {}
            },
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        }
    }
    stats.connections.fetch_add(1, Relaxed);
    tracing::info!(url = %config.mqtt.url, "mqtt connected");

    let mut waiting_for_pkid: VecDeque<Tag> = VecDeque::new();
    let mut pkid_to_seq: HashMap<u16, u64> = HashMap::new();
    // Outstanding readings in publish order, with whether they were acknowledged.
    let mut outstanding: VecDeque<(u64, bool)> = VecDeque::new();
    let mut last_sent = lock(spool).acked_seq();

    if client.publish(&status_topic, QoS::AtLeastOnce, true, status_payload(config.device, true)).await.is_err() {
        return SessionEnd::Down;
    }
    waiting_for_pkid.push_back(Tag::Status);

    let mut check = tokio::time::interval(Duration::from_millis(SPOOL_CHECK_INTERVAL_MS));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Fill the window from the spool.
        while outstanding.len() < WINDOW {
            let batch = match lock(spool).read_after(last_sent, WINDOW - outstanding.len()) {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "cannot read the spool");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for (seq, payload) in batch {
                if client.publish(&topic, QoS::AtLeastOnce, false, payload).await.is_err() {
                    return SessionEnd::Down;
                }
                waiting_for_pkid.push_back(Tag::Reading(seq));
                outstanding.push_back((seq, false));
                last_sent = seq;
                stats.published.fetch_add(1, Relaxed);
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(LoopEvent::Published(pkid)) => {
                    if let Some(Tag::Reading(seq)) = waiting_for_pkid.pop_front() {
                        pkid_to_seq.insert(pkid, seq);
                    }
                }
                Some(LoopEvent::Acked(pkid)) => {
                    if let Some(seq) = pkid_to_seq.remove(&pkid) {
                        if let Some(entry) = outstanding.iter_mut().find(|(s, _)| *s == seq) {
                            entry.1 = true;
                        }
                        let mut through = None;
                        while outstanding.front().is_some_and(|(_, acked)| *acked) {
                            through = outstanding.pop_front().map(|(s, _)| s);
                            stats.acked.fetch_add(1, Relaxed);
                        }
                        if let Some(through) = through {
                            if let Err(error) = lock(spool).ack_through(through) {
                                tracing::error!(%error, "cannot record an acknowledgement");
                            }
                        }
                    }
                }
                Some(LoopEvent::Connected) => {}
                Some(LoopEvent::Down(error)) => {
                    tracing::warn!(%error, unacknowledged = outstanding.len(), "mqtt connection lost");
                    return SessionEnd::Down;
                }
                None => return SessionEnd::Down,
            },
            _ = notify.notified() => {}
            _ = check.tick() => {}
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
        };
        let options = mqtt_options(&settings, "gridex-x", None).expect("builds");
        assert_eq!(options.broker_address(), ("broker".to_owned(), 8884));
        assert!(matches!(options.transport(), Transport::Tls(_)));
        assert_eq!(options.credentials().map(|login| login.username), Some("home".to_owned()));
    }

    #[test]
    fn the_status_payload_is_the_protocols_status_message() {
        let device = DeviceId::from_verifying_key(&protocol::testing::signing_key(1).verifying_key());
        let status: Status = protocol::decode(&status_payload(device, true)).expect("decodes");
        assert_eq!(status, Status { device, online: true });
    }
}
