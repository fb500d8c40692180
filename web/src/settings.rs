//! Settings of the `gridex` binary: a TOML file, then `GRIDEX_…` environment overrides
//! (`DATABASE_URL` and `MQTT_URL` are honoured too), with defaults that need no file at all.
//! Secrets (API keys, database passwords) are wrapped in [`Secret`], which never prints its value.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Largest JSON request body. Our biggest request (a signed order) is about 500 bytes and utility
/// registrations are smaller; 16 KiB leaves ample room while capping what a client can make us buffer.
pub const JSON_BODY_BYTES_MAX: usize = 16 * 1024;

/// A value that must never be logged. `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registers zones, tariffs, accounts and devices; reads reports and exports; manages webhooks.
    Utility,
    /// Reads operational endpoints only; refused by utility endpoints.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Utility => "utility",
            Role::Observer => "observer",
        }
    }
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "utility" => Some(Role::Utility),
            "observer" => Some(Role::Observer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    pub role: Role,
    /// The utility whose zones the key acts on ([`UtilityName`]); required for
    /// the utility role (a key without one is refused at start), optional for observers.
    #[serde(default)]
    pub utility: Option<String>,
    pub key: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    pub port: u16,
    pub json_body_bytes_max: usize,
    /// Live-feed (SSE) streams one client address may hold open at once; the next answers 429.
    /// Behind a reverse proxy every client has the proxy's address: raise it there, or cap at the proxy.
    pub sse_streams_per_client_max: usize,
    /// PEM certificate chain (the server's certificate first) to serve HTTPS; needs
    /// `tls_key_file`. Without both, gridex serves plain HTTP (behind a TLS-terminating proxy).
    pub tls_cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`'s certificate.
    pub tls_key_file: Option<String>,
    /// With HTTPS: every response carries `Strict-Transport-Security` (one year),
    /// so browsers refuse plain HTTP to this host afterwards. Ignored (with a warning) without HTTPS.
    pub hsts: bool,
}

/// A dashboard holds one live stream per open tab; 16 covers a household's tabs and devices behind
/// one address while one client can no longer take the server's whole stream budget
/// (`sse::STREAMS_MAX`).
pub const SSE_STREAMS_PER_CLIENT_MAX: usize = 16;

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".to_owned(),
            port: 8080,
            json_body_bytes_max: JSON_BODY_BYTES_MAX,
            sse_streams_per_client_max: SSE_STREAMS_PER_CLIENT_MAX,
            tls_cert_file: None,
            tls_key_file: None,
            hsts: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…`, `sqlite://PATH` or a bare path. May contain a password, hence a secret.
    pub url: Secret,
    pub pool_size: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: Secret::new("sqlite://./data/gridex.sqlite"), pool_size: 8 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://HOST[:1883]` (plain) or `mqtts://HOST[:8883]` (TLS); none runs without a broker.
    /// Credentials go in `username` and `password`, never in the URL.
    pub url: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts://` only); without
    /// it the system's trusted roots are used.
    pub ca_file: Option<String>,
    /// The exchange's MQTT client id. Its session on the broker is persistent: messages published
    /// while the exchange is down wait there. Keep it stable across restarts, and give every
    /// exchange instance (one per set of zones) its own. A secret: whoever connects with it takes
    /// the session over on a broker that does not bind client ids to usernames. Default: derived
    /// from the broker secret (else the operator key), the username and `market.zones`
    /// (`gridex-exchange-<16 hex digits>`), stable and not guessable; the generated Mosquitto
    /// configuration replaces it by the username anyway (`web::broker::login`).
    pub client_id: Option<String>,
}

/// The broker's credentials: what `gridex broker-config` and the exchange's login derive from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Path of the broker secret (64 hex digits, made by `gridex keygen --key FILE`): every broker
    /// password is derived from it (`web::broker_config`). With it, the exchange logs in as
    /// `mqtt.username` (default `gridex-exchange`) with its derived password unless `mqtt.password`
    /// is set. Keep it as secret as the operator key.
    pub secret_file: Option<String>,
}

/// Webhook deliveries are retried until acknowledged (or the registration is deleted): the wait
/// after the n-th failure is `backoff_initial_ms × 2^(n-1)`, at most `backoff_max_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// One attempt's limit, connection to answer.
    pub timeout_ms: u64,
    /// Loopback, private, link-local and other non-public networks webhooks may still be delivered
    /// to, as addresses or `address/prefix` (e.g. `["10.20.0.0/16"]`). Empty (the default): public
    /// addresses only.
    pub allowed_private_networks: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            backoff_initial_ms: 1_000,
            backoff_max_ms: 600_000,
            timeout_ms: 10_000,
            allowed_private_networks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketSettings {
    pub gate_closure_ms: i64,
    pub horizon_ms: i64,
    pub settlement_grace_ms: i64,
    /// Path of the operator's signing key (created by `gridex keygen`).
    pub operator_key_path: String,
    /// The zones this instance trades (its exchange) and settles; empty (the default): every zone,
    /// including zones registered while it runs. Zones are the unit of partitioning: instances with disjoint lists
    /// share the broker and the database (each with its own `mqtt.client_id`). On PostgreSQL an
    /// instance trades only the zones whose lease it holds: of these, or its fair share of all.
    pub zones: Vec<protocol::ZoneId>,
    /// A device that has sent no reading for longer than this is reported as silent to its utility.
    pub silent_device_ms: i64,
    /// New order commands (orders, cancels, replaces) one account may send per second, sustained,
    /// over MQTT and HTTP together (at least 1); more are refused `rate_limited` (HTTP 429).
    pub order_commands_per_account_per_s: u32,
    /// And at once, before the sustained rate applies (at least 1).
    pub order_commands_burst: u32,
    /// This instance's name in the exchange's zone leases (PostgreSQL; README, Production): unique
    /// among the instances sharing the database and stable across restarts, so a restarted instance
    /// takes its zones back at once. Empty (the default): `mqtt.client_id` if set, else the host
    /// name, process id and a random suffix (a restarted instance then waits `lease_ttl_ms`).
    pub instance_id: String,
    /// How long a zone's lease lasts without renewal: a dead instance's zones move to a live one
    /// within `lease_ttl_ms + lease_renew_interval_ms` (plus replaying their open books).
    pub lease_ttl_ms: u64,
    /// How often an instance renews its leases and takes free ones (below `lease_ttl_ms`).
    pub lease_renew_interval_ms: u64,
    /// How long an order taken over HTTP for a zone another instance owns waits for that owner's
    /// answer through the broker (PostgreSQL); then the answer is 503 "no live owner; retry".
    pub relay_timeout_ms: u64,
    /// Where the live feed (SSE) takes the market's trades, books and order updates from: `broker`
    /// (every zone, whichever instance owns it), `exchange` (this process's own exchange: the zones it
    /// owns), or `auto` (the default): `broker` on PostgreSQL with a broker, where instances may share
    /// the zones, else `exchange`.
    pub live_feed: crate::live_feed::LiveFeedSource,
    /// `false`: a web server only (PostgreSQL with a broker): it owns no zone and settles nothing,
    /// relays every order to the zone's owner and shows every zone's live feed from the broker.
    /// Default `true`: this instance also trades (its share of the zones) and settles.
    pub trade: bool,
}

/// A gateway publishes every minute or so and spools while offline: an hour without a reading means
/// it (or its meter) needs a look, and settles later than its neighbours at best.
pub const SILENT_DEVICE_MS_DEFAULT: i64 = 3_600_000;

impl Default for MarketSettings {
    fn default() -> Self {
        Self {
            gate_closure_ms: exchange::config::GATE_CLOSURE_MS_DEFAULT,
            horizon_ms: exchange::config::HORIZON_MS_DEFAULT,
            settlement_grace_ms: settlement::GRACE_MS_DEFAULT,
            operator_key_path: "./data/operator.key".to_owned(),
            zones: Vec::new(),
            silent_device_ms: SILENT_DEVICE_MS_DEFAULT,
            order_commands_per_account_per_s: exchange::config::ORDER_COMMANDS_PER_ACCOUNT_PER_S_DEFAULT,
            order_commands_burst: exchange::config::ORDER_COMMANDS_BURST_DEFAULT,
            instance_id: String::new(),
            lease_ttl_ms: exchange::config::LEASE_TTL_MS_DEFAULT,
            lease_renew_interval_ms: exchange::config::LEASE_RENEW_INTERVAL_MS_DEFAULT,
            relay_timeout_ms: exchange::config::RELAY_TIMEOUT_MS_DEFAULT,
            live_feed: crate::live_feed::LiveFeedSource::Auto,
            trade: true,
        }
    }
}

/// All settings of the binary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub mqtt: MqttSettings,
    pub broker: BrokerSettings,
    pub api_keys: Vec<ApiKey>,
    pub webhooks: WebhookSettings,
    pub market: MarketSettings,
    pub display: DisplaySettings,
}

/// How the dashboard shows money and numbers. Only the display: the ledger, the API and the wire
/// stay in integer micro-units of the settlement currency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DisplaySettings {
    /// ISO 4217 code of the settlement currency: three capital letters.
    pub currency: String,
    /// The symbol shown with amounts; empty: the code's usual symbol (€, $, £, ¥, kr…) or the code.
    pub currency_symbol: String,
    /// BCP 47 language tag for digit grouping and the decimal separator (`de-DE`: 1.234,5678).
    pub locale: String,
}

impl Default for DisplaySettings {
    fn default() -> Self {
        Self { currency: "EUR".to_owned(), currency_symbol: String::new(), locale: "en-US".to_owned() }
    }
}

/// Longest currency symbol shown (`CHF`, `R$`, `zł`).
pub const CURRENCY_SYMBOL_LEN_MAX: usize = 8;
/// Longest locale tag accepted (BCP 47 tags in use are far shorter).
pub const LOCALE_LEN_MAX: usize = 35;

impl DisplaySettings {
    /// The symbol shown: the configured one, else the code's usual symbol, else the code.
    pub fn symbol(&self) -> String {
        if !self.currency_symbol.is_empty() {
            return self.currency_symbol.clone();
        }
        match self.currency.as_str() {
            "EUR" => "€",
            "USD" | "AUD" | "CAD" | "NZD" | "MXN" => "$",
            "GBP" => "£",
            "JPY" | "CNY" => "¥",
            "INR" => "₹",
            "SEK" | "NOK" | "DKK" => "kr",
            "PLN" => "zł",
            "BRL" => "R$",
            "ZAR" => "R",
            code => code,
        }
        .to_owned()
    }

    /// Refuses a code that is not three capital letters, a symbol that is empty after trimming,
    /// too long or holds markup or control characters, and a locale that is not a BCP 47 tag.
    pub fn check(&self) -> Result<(), String> {
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(format!(
                "display.currency {:?} is not an ISO 4217 code (three capital letters)",
                self.currency
            ));
        }
        let symbol = &self.currency_symbol;
        if symbol.chars().count() > CURRENCY_SYMBOL_LEN_MAX
            || symbol.chars().any(|ch| ch.is_control() || "<>&\"'`".contains(ch))
            || (!symbol.is_empty() && symbol.trim().is_empty())
        {
            return Err(format!(
                "display.currency_symbol is 1–{CURRENCY_SYMBOL_LEN_MAX} printable characters without markup"
            ));
        }
        let mut subtags = self.locale.split('-');
        let language = subtags.next().unwrap_or_default();
        let valid = self.locale.len() <= LOCALE_LEN_MAX
            && (2..=3).contains(&language.len())
            && language.bytes().all(|b| b.is_ascii_alphabetic())
            && subtags.all(|tag| (1..=8).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !valid {
            return Err(format!(
                "display.locale {:?} is not a BCP 47 language tag such as en-US or de-DE",
                self.locale
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Only toml's message and the byte offset: its full error quotes the offending line, which may
    /// hold a secret.
    #[error("invalid settings in {path} at byte {offset}: {message}")]
    Parse { path: String, offset: usize, message: String },
    #[error("invalid environment variable {name}: {message}")]
    Env { name: String, message: String },
    /// Names the key, never shows it.
    #[error("API key `{name}` is refused: {reason}")]
    WeakApiKey { name: String, reason: KeySettingError },
    #[error("invalid webhooks.allowed_private_networks: {0}")]
    AllowList(String),
    #[error(transparent)]
    Tls(#[from] TlsFilesIncomplete),
    #[error("{0}")]
    Display(String),
}

/// Only one of `http.tls_cert_file` and `http.tls_key_file` is set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.{given} is set but http.{missing} is not: HTTPS needs both (or neither, for plain HTTP)")]
pub struct TlsFilesIncomplete {
    pub given: &'static str,
    pub missing: &'static str,
}

impl HttpSettings {
    /// The certificate and key files to serve HTTPS with: `None` for plain HTTP, an error when only
    /// one of the two is set. Reads no file (the server does, at start).
    pub fn tls_files(&self) -> Result<Option<(&Path, &Path)>, TlsFilesIncomplete> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((Path::new(cert), Path::new(key)))),
            (Some(_), None) => Err(TlsFilesIncomplete { given: "tls_cert_file", missing: "tls_key_file" }),
            (None, Some(_)) => Err(TlsFilesIncomplete { given: "tls_key_file", missing: "tls_cert_file" }),
        }
    }
}

/// Longest utility name: `utility:` and the name fit the registry's 64-character account ids.
pub const UTILITY_NAME_LEN_MAX: usize = 56;

/// A utility's name: 1 to [`UTILITY_NAME_LEN_MAX`] of `a-z`, `0-9`, `-` and `_` (the alphabet of
/// zone ids, so every zone id names a utility too). Its registry account is `utility:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UtilityName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a utility name is 1 to {UTILITY_NAME_LEN_MAX} characters of a-z, 0-9, - and _")]
pub struct BadUtilityName;

impl UtilityName {
    pub fn parse(text: &str) -> Result<UtilityName, BadUtilityName> {
        let valid = !text.is_empty()
            && text.len() <= UTILITY_NAME_LEN_MAX
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(UtilityName(text.to_owned()))
        } else {
            Err(BadUtilityName)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The registry account whose zones are this utility's.
    pub fn account(&self) -> String {
        format!("utility:{}", self.0)
    }
}

impl fmt::Display for UtilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key from the settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySettingError {
    #[error(transparent)]
    Weak(#[from] ApiKeyWeakness),
    #[error("it names no utility; add `utility = \"<name>\"` (the utility whose zones it may act on; see README, Upgrading)")]
    NoUtility,
    #[error(transparent)]
    BadUtility(#[from] BadUtilityName),
}

/// Checks a key from the settings: strong enough, and a valid utility (required for the utility role).
pub fn check_configured(key: &ApiKey) -> Result<(), KeySettingError> {
    check_api_key(key.key.expose())?;
    match &key.utility {
        Some(utility) => UtilityName::parse(utility).map(|_| ()).map_err(KeySettingError::from),
        None if key.role == Role::Utility => Err(KeySettingError::NoUtility),
        None => Ok(()),
    }
}

/// Why an API key is too easy to guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyWeakness {
    #[error("it is shorter than {API_KEY_LEN_MIN} characters")]
    TooShort,
    #[error("it has too few distinct characters or an estimated strength below {API_KEY_ENTROPY_BITS_MIN} bits; generate one with `openssl rand -hex 32`")]
    LowEntropy,
    #[error("it is the placeholder of the example settings")]
    Placeholder,
}

/// Checks one key, whatever its source (TOML file, environment, a future API): at least
/// [`API_KEY_LEN_MIN`] characters, [`API_KEY_DISTINCT_CHARS_MIN`] distinct ones and
/// [`API_KEY_ENTROPY_BITS_MIN`] bits by the estimate of [`estimated_entropy_bits`], and not the
/// example's placeholder. A rough check: it catches accidents (empty, short, repeated or
/// tiny-alphabet keys), not a determined weak choice; generate keys at random.
pub fn check_api_key(key: &str) -> Result<(), ApiKeyWeakness> {
    if key.chars().count() < API_KEY_LEN_MIN {
        return Err(ApiKeyWeakness::TooShort);
    }
    if key.starts_with(API_KEY_PLACEHOLDER_PREFIX) {
        return Err(ApiKeyWeakness::Placeholder);
    }
    let distinct = key.chars().collect::<std::collections::HashSet<char>>().len();
    if distinct < API_KEY_DISTINCT_CHARS_MIN || estimated_entropy_bits(key) < API_KEY_ENTROPY_BITS_MIN {
        return Err(ApiKeyWeakness::LowEntropy);
    }
    Ok(())
}

/// Length × the Shannon entropy of the key's character frequencies: a rough upper estimate that
/// still catches repetition (`aaaa…`, `abab…`) and tiny alphabets; a random key scores close to
/// its real strength.
pub fn estimated_entropy_bits(key: &str) -> u32 {
    let mut counts = std::collections::HashMap::<char, u32>::new();
    for ch in key.chars() {
        *counts.entry(ch).or_default() += 1;
    }
    let len = f64::from(u32::try_from(key.chars().count()).unwrap_or(u32::MAX));
    let per_char: f64 = counts
        .values()
        .map(|&count| {
            let p = f64::from(count) / len;
            -p * p.log2()
        })
        .sum();
    // A bit estimate of a key at most a few hundred characters long; truncation is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bits = (per_char * len).floor() as u32;
    bits
}

impl Settings {
    /// Reads `path` (when given) and applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut settings = match path {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::Read { path: shown.clone(), source })?;
                toml::from_str(&text).map_err(|error: toml::de::Error| SettingsError::Parse {
                    path: shown,
                    offset: error.span().map_or(0, |span| span.start),
                    message: error.message().to_owned(),
                })?
            }
            None => Settings::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings the server must not start with: a weak API key or a utility key without a
    /// utility (named, never shown), a
    /// malformed webhook allow list, or a TLS certificate without its key (or the reverse). The TLS
    /// files themselves are read when the server starts.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for key in &self.api_keys {
            check_configured(key).map_err(|reason| SettingsError::WeakApiKey { name: key.name.clone(), reason })?;
        }
        crate::webhook_targets::TargetPolicy::new(&self.webhooks.allowed_private_networks)
            .map_err(SettingsError::AllowList)?;
        self.http.tls_files()?;
        self.display.check().map_err(SettingsError::Display)?;
        Ok(())
    }

    /// Applies overrides from `lookup` (the environment, or a map in tests). `GRIDEX_DATABASE_URL`
    /// wins over `DATABASE_URL`, `GRIDEX_MQTT_URL` over `MQTT_URL`. `GRIDEX_API_KEYS` is a comma
    /// separated list of `name:role:utility:key` (`utility` may be empty for an observer); the
    /// older `name:role:key` parses without a utility, so a utility key in it is refused at start.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), SettingsError> {
        self.apply_sectioned_env(&lookup)?;
        let first = |names: &[&'static str]| names.iter().find_map(|name| lookup(name).map(|value| (*name, value)));
        if let Some((_, url)) = first(&["GRIDEX_DATABASE_URL", "DATABASE_URL"]) {
            self.database.url = Secret::new(url);
        }
        if let Some((_, url)) = first(&["GRIDEX_MQTT__URL", "GRIDEX_MQTT_URL", "MQTT_URL"]) {
            self.mqtt.url = Some(Secret::new(url));
        }
        if let Some((_, username)) = first(&["GRIDEX_MQTT__USERNAME", "GRIDEX_MQTT_USERNAME"]) {
            self.mqtt.username = Some(username);
        }
        if let Some((_, password)) = first(&["GRIDEX_MQTT__PASSWORD", "GRIDEX_MQTT_PASSWORD"]) {
            self.mqtt.password = Some(Secret::new(password));
        }
        if let Some((_, path)) = first(&["GRIDEX_MQTT__CA_FILE", "GRIDEX_MQTT_CA_FILE"]) {
            self.mqtt.ca_file = Some(path);
        }
        if let Some((_, client_id)) = first(&["GRIDEX_MQTT__CLIENT_ID", "GRIDEX_MQTT_CLIENT_ID"]) {
            self.mqtt.client_id = Some(client_id);
        }
        if let Some((_, path)) = first(&["GRIDEX_BROKER__SECRET_FILE", "GRIDEX_BROKER_SECRET_FILE"]) {
            self.broker.secret_file = Some(path);
        }
        if let Some((_, bind)) = first(&["GRIDEX_HTTP_BIND"]) {
            self.http.bind = bind;
        }
        if let Some((_, path)) = first(&["GRIDEX_HTTP__TLS_CERT_FILE", "GRIDEX_HTTP_TLS_CERT_FILE"]) {
            self.http.tls_cert_file = Some(path);
        }
        if let Some((_, path)) = first(&["GRIDEX_HTTP__TLS_KEY_FILE", "GRIDEX_HTTP_TLS_KEY_FILE"]) {
            self.http.tls_key_file = Some(path);
        }
        if let Some((name, port)) = first(&["GRIDEX_HTTP_PORT", "GRIDEX_PORT"]) {
            self.http.port =
                port.parse().map_err(|_| SettingsError::Env { name: name.to_owned(), message: "not a port".into() })?;
        }
        if let Some((_, path)) = first(&["GRIDEX_OPERATOR_KEY_PATH"]) {
            self.market.operator_key_path = path;
        }
        if let Some((name, list)) = first(&["GRIDEX_API_KEYS"]) {
            self.api_keys =
                parse_api_keys(&list).map_err(|message| SettingsError::Env { name: name.to_owned(), message })?;
        }
        Ok(())
    }
}

impl Settings {
    /// `GRIDEX_<SECTION>__<KEY>` for every scalar setting, e.g. `GRIDEX_HTTP__PORT=9000`,
    /// `GRIDEX_WEBHOOKS__BACKOFF_MAX_MS=60000`. The value is read as the type the setting has.
    fn apply_sectioned_env(&mut self, lookup: &impl Fn(&str) -> Option<String>) -> Result<(), SettingsError> {
        let env_error = |name: &str, message: String| SettingsError::Env { name: name.to_owned(), message };
        let mut tree = toml::Value::try_from(&*self).map_err(|error| env_error("GRIDEX_*", error.to_string()))?;
        let mut changed = false;
        if let Some(sections) = tree.as_table_mut() {
            for (section, table) in sections.iter_mut() {
                let Some(table) = table.as_table_mut() else { continue };
                for (key, value) in table.iter_mut() {
                    let name = format!("GRIDEX_{}__{}", section.to_uppercase(), key.to_uppercase());
                    let Some(text) = lookup(&name) else { continue };
                    *value = match value {
                        toml::Value::Integer(_) => toml::Value::Integer(
                            text.parse().map_err(|_| env_error(&name, "expected an integer".to_owned()))?,
                        ),
                        toml::Value::Boolean(_) => toml::Value::Boolean(
                            text.parse().map_err(|_| env_error(&name, "expected true or false".to_owned()))?,
                        ),
                        _ => toml::Value::String(text),
                    };
                    changed = true;
                }
            }
        }
        if changed {
            *self = tree.try_into().map_err(|error: toml::de::Error| env_error("GRIDEX_*", error.to_string()))?;
        }
        Ok(())
    }
}

fn parse_api_keys(list: &str) -> Result<Vec<ApiKey>, String> {
    list.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.trim().splitn(4, ':').collect();
            let (name, role, utility, key) = match parts[..] {
                [name, role, utility, key] => (name, role, (!utility.is_empty()).then_some(utility), key),
                [name, role, key] => (name, role, None, key),
                _ => return Err("each entry is name:role:utility:key".to_owned()),
            };
            let role = Role::parse(role).ok_or_else(|| format!("unknown role `{role}` (utility or observer)"))?;
            check_api_key(key).map_err(|reason| format!("API key `{name}` is refused: {reason}"))?;
            Ok(ApiKey { name: name.to_owned(), role, utility: utility.map(str::to_owned), key: Secret::new(key) })
        })
        .collect()
}

/// Shortest accepted API key: 16 characters keep guessing out of reach even for short keys.
pub const API_KEY_LEN_MIN: usize = 16;
/// Fewest estimated bits ([`estimated_entropy_bits`]) of an accepted key: 48 bits at a million
/// online guesses a second is months of guessing, and a key of 16 random characters from a
/// 62-letter alphabet or 20 hex digits clears it, while `aaaa…` or `abab…` of any length does not.
pub const API_KEY_ENTROPY_BITS_MIN: u32 = 48;
/// Fewest distinct characters of an accepted key: the frequency estimate alone lets a long
/// `abab…` through; a random key of 16 characters from any usual alphabet has well over 8.
pub const API_KEY_DISTINCT_CHARS_MIN: usize = 8;
/// The example settings' placeholder key (`replace-me-with-a-long-random-key`) and its kin.
const API_KEY_PLACEHOLDER_PREFIX: &str = "replace-me";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_need_no_file_and_the_environment_overrides_them() {
        let env: HashMap<&str, &str> = [
            ("DATABASE_URL", "postgres://u:pw@h/db"),
            ("MQTT_URL", "mqtt://127.0.0.1:1883"),
            ("GRIDEX_HTTP__PORT", "9000"),
            ("GRIDEX_WEBHOOKS__BACKOFF_MAX_MS", "60000"),
            ("GRIDEX_API_KEYS", "ops:utility:0123456789abcdef0123"),
        ]
        .into();
        let mut settings = Settings::default();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!(settings.http.port, 9000);
        assert_eq!(settings.webhooks.backoff_max_ms, 60_000);
        assert_eq!(settings.database.url.expose(), "postgres://u:pw@h/db");
        assert_eq!(settings.api_keys[0].role, Role::Utility);
    }

    #[test]
    fn empty_short_repetitive_and_placeholder_keys_are_weak_and_random_ones_are_not() {
        assert_eq!(check_api_key(""), Err(ApiKeyWeakness::TooShort));
        assert_eq!(check_api_key("short-key"), Err(ApiKeyWeakness::TooShort));
        assert_eq!(check_api_key(&"a".repeat(64)), Err(ApiKeyWeakness::LowEntropy));
        assert_eq!(check_api_key(&"ab".repeat(32)), Err(ApiKeyWeakness::LowEntropy));
        assert_eq!(check_api_key("replace-me-with-a-long-random-key"), Err(ApiKeyWeakness::Placeholder));
        assert_eq!(check_api_key("Xk3pQ9vLm2Tz7RwB"), Ok(()), "16 distinct characters: 64 bits");
        assert_eq!(check_api_key("9f86d081884c7d659a2feaa0c55ad015"), Ok(()), "32 hex digits");
    }

    #[test]
    fn a_weak_key_from_the_environment_is_refused_by_name_without_showing_it() {
        let env: HashMap<&str, &str> = [("GRIDEX_API_KEYS", "ops:utility:aaaaaaaaaaaaaaaaaaaaaaaa")].into();
        let error = Settings::default().apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect_err("weak");
        let shown = error.to_string();
        assert!(shown.contains("`ops`") && !shown.contains("aaaaaaaa"), "{shown}");
    }

    #[test]
    fn a_utility_key_names_its_utility_and_one_without_is_refused_with_an_upgrade_hint() {
        let env: HashMap<&str, &str> =
            [("GRIDEX_API_KEYS", "ops:utility:north:0123456789abcdef0123,graf:observer::abcdef0123456789abcd")].into();
        let mut settings = Settings::default();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!(settings.api_keys[0].utility.as_deref(), Some("north"));
        assert_eq!(settings.api_keys[0].key.expose(), "0123456789abcdef0123");
        assert_eq!((settings.api_keys[1].role, settings.api_keys[1].utility.as_deref()), (Role::Observer, None));
        settings.validate().expect("valid keys");

        let old = "[[api_keys]]\nname = \"ops\"\nrole = \"utility\"\nkey = \"0123456789abcdef0123\"\n";
        let settings: Settings = toml::from_str(old).expect("parses");
        let shown = settings.validate().expect_err("no utility").to_string();
        assert!(shown.contains("`ops`") && shown.contains("utility = ") && shown.contains("Upgrading"), "{shown}");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        // A weak key from the environment in the new format is refused too.
        let env: HashMap<&str, &str> = [("GRIDEX_API_KEYS", "ops:utility:north:aaaaaaaaaaaaaaaaaaaaaaaa")].into();
        let error = Settings::default().apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect_err("weak");
        assert!(error.to_string().contains("`ops`") && !error.to_string().contains("aaaaaaaa"));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let mut settings = Settings::default();
        settings.database.url = Secret::new("postgres://u:hunter2@h/db");
        settings.api_keys.push(ApiKey {
            name: "ops".into(),
            role: Role::Utility,
            utility: Some("acme".into()),
            key: Secret::new("topsecretkey12345"),
        });
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("topsecretkey12345"), "{shown}");
    }

    #[test]
    fn a_settings_error_does_not_quote_the_line_with_a_secret() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("gridex.toml");
        std::fs::write(&path, "[database]\nurl = \"postgres://u:hunter2@h/db\" garbage\n").expect("write");
        let error = Settings::load(Some(&path)).expect_err("invalid TOML").to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../examples/gridex.toml");
        let settings: Settings = toml::from_str(text).expect("the example parses");
        assert_eq!(settings.api_keys.len(), 1);
    }

    #[test]
    fn the_broker_login_and_ca_file_come_from_the_environment_and_the_password_stays_hidden() {
        let env: HashMap<&str, &str> = [
            ("MQTT_URL", "mqtts://broker.example:8884"),
            ("GRIDEX_MQTT_USERNAME", "exchange"),
            ("GRIDEX_MQTT_PASSWORD", "hunter2"),
            ("GRIDEX_MQTT__CA_FILE", "/etc/gridex/broker-ca.pem"),
        ]
        .into();
        let mut settings = Settings::default();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!(settings.mqtt.url.as_ref().map(Secret::expose), Some("mqtts://broker.example:8884"));
        assert_eq!(settings.mqtt.username.as_deref(), Some("exchange"));
        assert_eq!(settings.mqtt.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert_eq!(settings.mqtt.ca_file.as_deref(), Some("/etc/gridex/broker-ca.pem"));
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn an_instance_serves_the_zones_it_names_and_a_malformed_zone_is_refused() {
        let settings: Settings = toml::from_str("[market]\nzones = [\"north\", \"south-2\"]\n").expect("parses");
        let names: Vec<&str> = settings.market.zones.iter().map(protocol::ZoneId::as_str).collect();
        assert_eq!(names, ["north", "south-2"]);
        assert!(Settings::default().market.zones.is_empty(), "every zone by default");
        assert!(toml::from_str::<Settings>("[market]\nzones = [\"North Side\"]\n").is_err());
    }

    #[test]
    fn the_tls_files_come_from_toml_or_the_environment_and_one_without_the_other_is_refused() {
        let text =
            "[http]\ntls_cert_file = \"/etc/gridex/cert.pem\"\ntls_key_file = \"/etc/gridex/key.pem\"\nhsts = true\n";
        let settings: Settings = toml::from_str(text).expect("parses");
        assert_eq!(settings.http.tls_cert_file.as_deref(), Some("/etc/gridex/cert.pem"));
        assert!(settings.http.hsts);
        settings.validate().expect("both files are named");

        let env: HashMap<&str, &str> = [("GRIDEX_HTTP__TLS_CERT_FILE", "/run/cert.pem")].into();
        let mut settings = Settings::default();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!(settings.http.tls_cert_file.as_deref(), Some("/run/cert.pem"));
        let shown = settings.validate().expect_err("no key file").to_string();
        assert!(shown.contains("http.tls_key_file"), "{shown}");
        let env: HashMap<&str, &str> = [("GRIDEX_HTTP_TLS_KEY_FILE", "/run/key.pem")].into();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!(settings.http.tls_key_file.as_deref(), Some("/run/key.pem"));
        settings.validate().expect("both files are named");
    }

    #[test]
    fn the_order_rate_limit_defaults_to_the_exchanges_and_the_example_and_environment_set_it() {
        let example: Settings = toml::from_str(include_str!("../examples/gridex.toml")).expect("the example parses");
        let defaults = MarketSettings::default();
        assert_eq!(
            defaults.order_commands_per_account_per_s,
            exchange::config::ORDER_COMMANDS_PER_ACCOUNT_PER_S_DEFAULT
        );
        assert_eq!(defaults.order_commands_burst, exchange::config::ORDER_COMMANDS_BURST_DEFAULT);
        let example_limit = (example.market.order_commands_per_account_per_s, example.market.order_commands_burst);
        assert_eq!(example_limit, (defaults.order_commands_per_account_per_s, defaults.order_commands_burst));
        let env: HashMap<&str, &str> = [("GRIDEX_MARKET__ORDER_COMMANDS_BURST", "7")].into();
        let mut settings = Settings::default();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!(settings.market.order_commands_burst, 7);
    }

    #[test]
    fn the_lease_settings_default_to_the_exchanges_and_the_environment_names_the_instance() {
        let defaults = MarketSettings::default();
        assert_eq!(defaults.lease_ttl_ms, exchange::config::LEASE_TTL_MS_DEFAULT);
        assert_eq!(defaults.lease_renew_interval_ms, exchange::config::LEASE_RENEW_INTERVAL_MS_DEFAULT);
        assert_eq!(defaults.relay_timeout_ms, exchange::config::RELAY_TIMEOUT_MS_DEFAULT);
        assert!(defaults.instance_id.is_empty(), "derived at start unless set");
        let env: HashMap<&str, &str> =
            [("GRIDEX_MARKET__INSTANCE_ID", "ex-b"), ("GRIDEX_MARKET__LEASE_TTL_MS", "9000")].into();
        let mut settings = Settings::default();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned())).expect("valid env");
        assert_eq!((settings.market.instance_id.as_str(), settings.market.lease_ttl_ms), ("ex-b", 9_000));
    }

    #[test]
    fn the_broker_settings_parse_from_toml() {
        let text = "[mqtt]\nurl = \"mqtts://broker:8883\"\nusername = \"x\"\npassword = \"y\"\nca_file = \"ca.pem\"\n";
        let settings: Settings = toml::from_str(text).expect("parses");
        assert_eq!(settings.mqtt.ca_file.as_deref(), Some("ca.pem"));
        assert!(toml::from_str::<Settings>("[mqtt]\ncafile = \"x\"\n").is_err(), "unknown keys are refused");
    }
}
