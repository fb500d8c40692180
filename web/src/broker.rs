//! The exchange's connection to an external MQTT broker (`gridex serve`): `mqtt://HOST[:1883]` or
//! `mqtts://HOST[:8883]`, optional username and password, and for TLS the CA file to trust
//! (`mqtt.ca_file`; the system's roots without it).
//!
//! The options are built by `meter_gateway::publisher::mqtt_options`, which the gateways use for the
//! same brokers: one URL grammar, and TLS through rustls with an explicit ring provider (the
//! workspace links two rustls providers, so the process-wide default would panic). This module adds
//! the exchange's own limits and keeps secrets out of error messages.

use crate::settings::{MqttSettings, Secret, Settings};
use meter_gateway::publisher::{self, PublishError};
use rumqttc::MqttOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::broker_config::EXCHANGE_CLIENT_ID_PREFIX;
/// Keep-alive of the exchange's connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet in and out: a signed order or reading is under 1 KiB, a book snapshot of
/// many levels a few KiB; 64 KiB leaves room and caps what a client can make us buffer.
pub const PACKET_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Only the reason: the URL itself is a secret setting and may hold credentials.
    #[error("the MQTT URL is invalid: {0}")]
    BadUrl(String),
    #[error("mqtt.password is set without mqtt.username")]
    PasswordWithoutUsername,
    #[error("mqtt.ca_file is only used with mqtts:// URLs")]
    CaFileWithoutTls,
    #[error(transparent)]
    Credentials(#[from] crate::broker_config::BrokerConfigError),
    /// Not a `#[source]`: the gateway's message already includes its cause, and `{:#}` would repeat it.
    #[error("{0}")]
    Tls(PublishError),
}

/// Where the broker is: host, port and whether TLS is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

fn parse_url(url: &str) -> Result<BrokerAddress, BrokerError> {
    match publisher::parse_url(url) {
        Ok((host, port, tls)) => Ok(BrokerAddress { host, port, tls }),
        Err(PublishError::BadUrl { reason, .. }) => Err(BrokerError::BadUrl(reason)),
        Err(other) => Err(BrokerError::Tls(other)),
    }
}

/// The broker's address, or `None` when no broker is configured.
pub fn address(settings: &MqttSettings) -> Result<Option<BrokerAddress>, BrokerError> {
    settings.url.as_ref().map(|url| parse_url(url.expose())).transpose()
}

/// The exchange's MQTT options, or `None` when no broker is configured. Reads the CA file.
pub fn mqtt_options(settings: &MqttSettings) -> Result<Option<MqttOptions>, BrokerError> {
    let Some(url) = &settings.url else { return Ok(None) };
    let address = parse_url(url.expose())?;
    if settings.password.is_some() && settings.username.is_none() {
        return Err(BrokerError::PasswordWithoutUsername);
    }
    if settings.ca_file.is_some() && !address.tls {
        return Err(BrokerError::CaFileWithoutTls);
    }
    // Without a configured id and login (see `login`), a random id: no one can guess it, but the
    // session does not survive a restart.
    let client_id = match (&settings.client_id, &settings.username) {
        (Some(client_id), _) => client_id.clone(),
        (None, Some(username)) => username.clone(),
        (None, None) => format!("{EXCHANGE_CLIENT_ID_PREFIX}-{:016x}", rand::random::<u64>()),
    };
    let client_id = client_id.as_str();
    let gateway_settings = publisher::MqttSettings {
        url: url.expose().to_owned(),
        username: settings.username.clone(),
        password: settings.password.as_ref().map(|password| password.expose().to_owned()),
        ca_file: settings.ca_file.as_ref().map(PathBuf::from),
        client_id: Some(client_id.to_owned()),
        operator_key: None,
    };
    let mut options = publisher::mqtt_options(&gateway_settings, client_id, None).map_err(|error| match error {
        PublishError::BadUrl { reason, .. } => BrokerError::BadUrl(reason),
        other => BrokerError::Tls(other),
    })?;
    options.set_keep_alive(KEEP_ALIVE);
    options.set_max_packet_size(PACKET_BYTES_MAX, PACKET_BYTES_MAX);
    Ok(Some(options))
}

/// The exchange's broker login as `serve` uses it: `mqtt.*` completed from the broker secret
/// (`broker.secret_file`): the username defaults to [`crate::broker_config::EXCHANGE_USERNAME`]
/// and the password to its derived one. Without `mqtt.client_id`, the client id is derived from the
/// broker secret (else the operator key), the username, `market.zones` and `market.instance_id`
/// (when set): stable across restarts, one per instance, not guessable (a broker that binds client ids to usernames, as the generated
/// Mosquitto configuration does, replaces it by the username anyway). When neither key can be
/// read, [`mqtt_options`] falls back to the username, or a random id (with a warning).
pub fn login(settings: &Settings) -> Result<MqttSettings, BrokerError> {
    use crate::broker_config::{BrokerSecret, EXCHANGE_USERNAME};
    let mut mqtt = settings.mqtt.clone();
    let secret = settings.broker.secret_file.as_ref().map(|path| BrokerSecret::load(Path::new(path))).transpose()?;
    if let Some(secret) = &secret {
        let username = mqtt.username.get_or_insert_with(|| EXCHANGE_USERNAME.to_owned()).clone();
        crate::broker_config::check_username(&username)?;
        if mqtt.password.is_none() {
            mqtt.password = Some(Secret::new(secret.password(&username)));
        }
    }
    if mqtt.client_id.is_none() && mqtt.url.is_some() {
        let key = secret.or_else(|| {
            let path = Path::new(&settings.market.operator_key_path);
            match meter_gateway::keys::load(path) {
                Ok(key) => Some(BrokerSecret::new(key.to_bytes())),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "no mqtt.client_id, no broker secret and no operator key to derive one from: the \
                         exchange's client id is its username or random"
                    );
                    None
                }
            }
        });
        let zones: Vec<&str> = settings.market.zones.iter().map(protocol::ZoneId::as_str).collect();
        let mut instance = format!("{}/{}", mqtt.username.as_deref().unwrap_or(""), zones.join(","));
        // Two servers sharing all zones (leases) differ by their instance id; without one the id
        // stays what it was (an empty instance id is random per start, no session would survive).
        if !settings.market.instance_id.is_empty() {
            instance = format!("{instance}/{}", settings.market.instance_id);
        }
        mqtt.client_id = key.map(|key| key.exchange_client_id(&instance));
    }
    Ok(mqtt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::Transport;

    fn settings(url: &str) -> MqttSettings {
        MqttSettings { url: Some(Secret::new(url)), ..MqttSettings::default() }
    }

    #[test]
    fn a_plain_url_gives_host_and_port_with_the_default_port_1883() {
        let options = mqtt_options(&settings("mqtt://broker.local")).expect("valid").expect("configured");
        assert_eq!(options.broker_address(), ("broker.local".to_owned(), 1883));
        assert!(matches!(options.transport(), Transport::Tcp));
        assert_eq!(options.keep_alive(), KEEP_ALIVE);
        // No public default: an id nobody can guess (issue 12, session takeover).
        assert!(options.client_id().starts_with(EXCHANGE_CLIENT_ID_PREFIX), "{}", options.client_id());
        assert_ne!(options.client_id(), EXCHANGE_CLIENT_ID_PREFIX);
        let named = MqttSettings { client_id: Some("exchange-north".to_owned()), ..settings("mqtt://broker.local") };
        assert_eq!(mqtt_options(&named).expect("valid").expect("configured").client_id(), "exchange-north");
        assert!(options.credentials().is_none());
        let address = address(&settings("mqtt://127.0.0.1:1884")).expect("valid");
        assert_eq!(address, Some(BrokerAddress { host: "127.0.0.1".into(), port: 1884, tls: false }));
    }

    #[test]
    fn the_exchange_logs_in_with_its_derived_password_and_never_uses_a_public_client_id() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (secret_file, operator_key) = (dir.path().join("broker.secret"), dir.path().join("operator.key"));
        meter_gateway::keys::generate_file(&secret_file).expect("a secret");
        meter_gateway::keys::generate_file(&operator_key).expect("a key");
        let mut settings = Settings::default();
        settings.mqtt.url = Some(Secret::new("mqtt://broker"));
        settings.market.operator_key_path = operator_key.display().to_string();
        // Without a login: an id derived from the operator key, stable, one per set of zones.
        let anonymous = login(&settings).expect("valid");
        let id = anonymous.client_id.clone().expect("a derived id");
        assert!(id.starts_with("gridex-exchange-") && id.len() == "gridex-exchange-".len() + 16, "{id}");
        assert_eq!(login(&settings).expect("valid").client_id, Some(id.clone()));
        settings.market.zones = vec![protocol::ZoneId::parse("north").expect("valid")];
        assert_ne!(login(&settings).expect("valid").client_id, Some(id.clone()));
        // Two servers sharing every zone by lease: their instance ids tell their sessions apart.
        settings.market.zones.clear();
        settings.market.instance_id = "web-a".to_owned();
        let web_a = login(&settings).expect("valid").client_id;
        settings.market.instance_id = "web-b".to_owned();
        let web_b = login(&settings).expect("valid").client_id;
        assert!(web_a != web_b && web_a != Some(id.clone()) && web_b != Some(id), "{web_a:?} {web_b:?}");
        settings.market.instance_id.clear();
        settings.market.zones = vec![protocol::ZoneId::parse("north").expect("valid")];
        // With the broker secret: the exchange's username and its derived password, and a client id
        // derived from the secret (the generated Mosquitto configuration replaces it by the username).
        settings.broker.secret_file = Some(secret_file.display().to_string());
        let mqtt = login(&settings).expect("valid");
        let secret = crate::broker_config::BrokerSecret::load(&secret_file).expect("loads");
        assert_eq!(mqtt.username.as_deref(), Some(crate::broker_config::EXCHANGE_USERNAME));
        assert_eq!(mqtt.password.as_ref().map(Secret::expose), Some(secret.password("gridex-exchange").as_str()));
        let options = mqtt_options(&mqtt).expect("valid").expect("configured");
        assert!(options.client_id().starts_with("gridex-exchange-"), "{}", options.client_id());
        assert_eq!(mqtt.client_id.as_deref(), Some(secret.exchange_client_id("gridex-exchange/north").as_str()));
    }

    #[test]
    fn no_url_is_no_broker() {
        assert!(mqtt_options(&MqttSettings::default()).expect("valid").is_none());
        assert_eq!(address(&MqttSettings::default()).expect("valid"), None);
    }

    #[test]
    fn mqtts_uses_tls_trusting_the_ca_file_and_logs_in() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, include_bytes!("../../meter-gateway/tests/fixtures/test-ca.pem")).expect("write");
        let settings = MqttSettings {
            url: Some(Secret::new("mqtts://broker.example")),
            username: Some("exchange".into()),
            password: Some(Secret::new("hunter2")),
            ca_file: Some(ca.display().to_string()),
            client_id: None,
        };
        let options = mqtt_options(&settings).expect("valid").expect("configured");
        assert_eq!(options.broker_address(), ("broker.example".to_owned(), 8883));
        assert!(matches!(options.transport(), Transport::Tls(_)));
        let login = options.credentials().expect("credentials");
        assert_eq!((login.username.as_str(), login.password.as_str()), ("exchange", "hunter2"));
        assert_eq!(address(&settings).expect("valid").map(|address| address.tls), Some(true));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("missing.pem");
        let mut settings = settings("mqtts://broker:8884");
        settings.ca_file = Some(missing.display().to_string());
        let error = mqtt_options(&settings).expect_err("no such file").to_string();
        assert!(error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"not a certificate\n").expect("write");
        settings.ca_file = Some(empty.display().to_string());
        assert!(matches!(mqtt_options(&settings), Err(BrokerError::Tls(PublishError::CaCertificates { .. }))));
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_repeating_the_url() {
        let error = mqtt_options(&settings("mqtts://exchange:hunter2@broker")).expect_err("refused").to_string();
        assert!(error.contains("username and password"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = address(&settings("mqtt://u:hunter2@broker")).expect_err("refused").to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn malformed_settings_are_refused() {
        for url in ["http://broker", "mqtt://", "mqtt://broker:99999", "broker:1883"] {
            assert!(matches!(mqtt_options(&settings(url)), Err(BrokerError::BadUrl(_))), "{url}");
        }
        let mut lonely_password = settings("mqtt://broker");
        lonely_password.password = Some(Secret::new("pw"));
        assert!(matches!(mqtt_options(&lonely_password), Err(BrokerError::PasswordWithoutUsername)));
        let mut plain_with_ca = settings("mqtt://broker");
        plain_with_ca.ca_file = Some("/etc/ssl/ca.pem".into());
        assert!(matches!(mqtt_options(&plain_with_ca), Err(BrokerError::CaFileWithoutTls)));
    }
}
