//! The tests' MQTT brokers: one embedded rumqttd configuration for every crate, and the machine's
//! Mosquitto when `MQTT_URL` is set.

use crate::net::{free_port, wait_listening};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};
use std::collections::HashMap;
use std::net::SocketAddr;

/// The embedded broker's payload limit: room for any gridex message (signed inbound messages are at
/// most 1 KiB, outbound ones 16 KiB) and for the oversized ones tests send on purpose.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Where a broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// `rumqttd` or `mosquitto`, for test messages.
    pub name: &'static str,
    pub host: String,
    pub port: u16,
}

impl BrokerAddr {
    /// `mqtt://host:port`.
    pub fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

fn server(name: &str, port: u16, tls: Option<TlsConfig>, login: Option<(&str, &str)>) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: PAYLOAD_BYTES_MAX,
            max_inflight_count: 500,
            auth: login.map(|(user, password)| HashMap::from([(user.to_owned(), password.to_owned())])),
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

fn config(listeners: HashMap<String, ServerSettings>) -> Config {
    let router = RouterConfig {
        max_connections: 10_000,
        max_outgoing_packet_count: 1_000,
        max_segment_size: 100 * 1024 * 1024,
        max_segment_count: 10,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    Config { router, v4: Some(listeners), ..Config::default() }
}

/// The rumqttd configuration of the tests' embedded broker: one plain MQTT 3.1.1 listener on
/// `port` of loopback.
pub fn rumqttd_config(port: u16) -> Config {
    config(HashMap::from([("plain".to_owned(), server("plain", port, None, None))]))
}

/// Runs rumqttd with `config` in a thread of its own (it lives as long as the process) and waits
/// until each of `ports` accepts connections.
pub fn start(config: Config, ports: &[u16]) {
    std::thread::spawn(move || {
        if let Err(error) = Broker::new(config).start() {
            eprintln!("embedded broker stopped: {error}");
        }
    });
    for &port in ports {
        assert!(wait_listening("127.0.0.1", port), "the embedded broker does not listen on {port}");
    }
}

/// Starts an embedded rumqttd on a free loopback port.
pub fn embedded_broker() -> BrokerAddr {
    let port = free_port();
    start(rumqttd_config(port), &[port]);
    BrokerAddr { name: "rumqttd", host: "127.0.0.1".to_owned(), port }
}

/// Starts an embedded rumqttd with a plain listener and a TLS listener (certificate and key from
/// `tls`), both accepting only `login` (user, password) when given: returns (plain, TLS) ports.
pub fn embedded_broker_with_tls(tls: TlsConfig, login: Option<(&str, &str)>) -> (u16, u16) {
    let (port, tls_port) = (free_port(), free_port());
    let listeners = HashMap::from([
        ("plain".to_owned(), server("plain", port, None, login)),
        ("tls".to_owned(), server("tls", tls_port, Some(tls), login)),
    ]);
    start(config(listeners), &[port, tls_port]);
    (port, tls_port)
}

/// The machine's broker from `MQTT_URL` (`mqtt://host:port` or `host:port`), when set. Panics when
/// it is set but unreachable: a configured service that is down must fail the test.
pub fn external_broker() -> Option<BrokerAddr> {
    let url = std::env::var("MQTT_URL").ok().filter(|url| !url.is_empty())?;
    let rest = url.split("://").last().unwrap_or(&url).trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').map_or((rest, 1883), |(host, port)| (host, port.parse().unwrap_or(1883)));
    assert!(wait_listening(host, port), "MQTT_URL is set ({url}) but the broker is unreachable");
    Some(BrokerAddr { name: "mosquitto", host: host.to_owned(), port })
}

/// The embedded broker always, plus Mosquitto when `MQTT_URL` is set.
pub fn brokers() -> Vec<BrokerAddr> {
    let mut brokers = vec![embedded_broker()];
    brokers.extend(external_broker());
    brokers
}

/// Runs `scenario` once on each of [`brokers`], each time with a fresh database from `database`.
/// When `database` gives none (the service a scenario needs is not configured, e.g. several
/// processes need PostgreSQL) it says `missing` and runs nothing more. Generic over the database so
/// this crate stays free of product crates.
pub async fn on_each_broker<D, Fut>(
    database: impl Fn() -> Option<D>,
    missing: &str,
    scenario: impl Fn(D, BrokerAddr) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    for broker in brokers() {
        let Some(db) = database() else {
            eprintln!("{missing}");
            return;
        };
        eprintln!("broker {}", broker.name);
        scenario(db, broker).await;
    }
}
