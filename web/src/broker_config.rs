//! Broker credentials and ACLs generated from the registry (`gridex broker-config`,
//! `gridex broker-credentials`) and the same rules for the demo's embedded broker.
//!
//! Every participant logs in with its id as username: a device with its device id, an account with
//! its account id (64 hex digits each), the exchange with `mqtt.username` (default
//! [`EXCHANGE_USERNAME`]). Passwords are never stored: each is derived from the broker secret
//! (`mqtt.broker_secret_file`, 32 random bytes made by `gridex keygen`) as
//! `hex(HMAC-SHA256(secret, "gridex-broker-password\n" ‖ username))`, so the files can be
//! regenerated at any time and an installer asks `gridex broker-credentials ID` for a box's login.
//!
//! What each one may do (the ACL, one `user` block per participant, topics of its own zone only):
//! a device writes `gridex/v1/{zone}/readings/{device}` (and `gridex/v2/{zone}/readings/{device}`, the
//! topic of its readings with a home battery) and `gridex/v1/status/{device}` and reads its
//! `events` and `rejects`; an account writes `gridex/v1/{zone}/orders/{account}` and its battery plans
//! `gridex/v1/{zone}/plans/{account}` and reads its
//! `events` and `rejects`; everyone logged in reads the public market data (`trades`, `book`,
//! `auction`); only the exchange reads the inbound topics and writes the outbound ones (and relays
//! commands and read queries between gridex servers, each only as itself). The
//! Mosquitto configuration refuses anonymous clients and makes the client id the username
//! (`use_username_as_clientid`), so nobody can take over another's session.
//!
//! It must never write a password in clear to a file, nor print one except for
//! `gridex broker-credentials`.

use hmac::{Hmac, Mac};
use protocol::{AccountId, DeviceId, ZoneId};
use sha2::{Sha256, Sha512};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The prefix of the exchange's derived client ids (`gridex-exchange-<16 hex digits>`); never a
/// client id itself: a public, fixed id let anyone take over the exchange's persistent session.
pub const EXCHANGE_CLIENT_ID_PREFIX: &str = "gridex-exchange";
/// The exchange's broker username when `mqtt.username` is not set.
pub const EXCHANGE_USERNAME: &str = "gridex-exchange";
/// Iterations of PBKDF2-SHA512 in the password file: what `mosquitto_passwd` (2.0) writes.
pub const PBKDF2_ITERATIONS: u32 = 101;
/// Salt bytes of a password-file entry, as `mosquitto_passwd` uses.
pub const SALT_BYTES: usize = 12;
/// Domain tags of what is derived from the broker secret: one per use, so no two uses share a value.
const PASSWORD_TAG: &[u8] = b"gridex-broker-password\n";
const SALT_TAG: &[u8] = b"gridex-broker-salt\n";
const CLIENT_ID_TAG: &[u8] = b"gridex-mqtt-client-id\n";

#[derive(Debug, thiserror::Error)]
pub enum BrokerConfigError {
    #[error("cannot read the broker secret {}: {source} (create it with gridex keygen --key FILE)", path.display())]
    Secret {
        path: PathBuf,
        #[source]
        source: meter_gateway::keys::KeyError,
    },
    #[error("mqtt.broker_secret_file is not set: the broker credentials are derived from it")]
    NoSecret,
    #[error("`{0}` is not a device or account id (64 hex digits) nor an exchange username")]
    NotAParticipant(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("exchange username `{0}` is invalid: 1 to 64 characters of a-z, A-Z, 0-9, `-`, `_`, `.`")]
    BadUsername(String),
}

/// The secret the broker passwords (and the exchange's default client id) are derived from.
#[derive(Clone)]
pub struct BrokerSecret([u8; 32]);

impl std::fmt::Debug for BrokerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerSecret(***)")
    }
}

impl BrokerSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a secret file in the format of `gridex keygen` (64 hex digits).
    pub fn load(path: &Path) -> Result<Self, BrokerConfigError> {
        let key = meter_gateway::keys::load(path)
            .map_err(|source| BrokerConfigError::Secret { path: path.to_path_buf(), source })?;
        Ok(Self(key.to_bytes()))
    }

    fn mac(&self, tag: &[u8], message: &str) -> [u8; 32] {
        // HMAC takes a key of any length: a 32-byte key cannot be refused.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(tag);
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// `username`'s broker password: 64 hex digits.
    pub fn password(&self, username: &str) -> String {
        hex::encode(self.mac(PASSWORD_TAG, username))
    }

    /// An exchange client id nobody can guess without the secret, stable for `instance` (the
    /// instance's zones): `gridex-exchange-<16 hex digits>`.
    pub fn exchange_client_id(&self, instance: &str) -> String {
        let prefix = EXCHANGE_CLIENT_ID_PREFIX;
        format!("{prefix}-{}", &hex::encode(self.mac(CLIENT_ID_TAG, instance))[..16])
    }

    fn salt(&self, username: &str) -> [u8; SALT_BYTES] {
        let mut salt = [0; SALT_BYTES];
        salt.copy_from_slice(&self.mac(SALT_TAG, username)[..SALT_BYTES]);
        salt
    }

    /// The password-file line of `username` (with its derived password unless `password` is given).
    pub fn passwd_line(&self, username: &str, password: Option<&str>) -> String {
        let derived;
        let password = match password {
            Some(password) => password,
            None => {
                derived = self.password(username);
                &derived
            }
        };
        passwd_line(username, password, &self.salt(username))
    }
}

/// PBKDF2 (RFC 8018) with HMAC-SHA512, one 64-byte block: what Mosquitto's `$7$` entries hold.
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    // HMAC takes a key of any length: no password can be refused.
    let prf = <Hmac<Sha512> as Mac>::new_from_slice(password).expect("HMAC accepts any key length");
    let mut first = prf.clone();
    first.update(salt);
    first.update(&1_u32.to_be_bytes());
    let mut block: [u8; 64] = first.finalize().into_bytes().into();
    let mut output = block;
    for _ in 1..iterations {
        let mut next = prf.clone();
        next.update(&block);
        block = next.finalize().into_bytes().into();
        for (out, byte) in output.iter_mut().zip(block) {
            *out ^= byte;
        }
    }
    output
}

/// One line of a Mosquitto 2 password file: `user:$7$101$<base64 salt>$<base64 hash>`.
pub fn passwd_line(username: &str, password: &str, salt: &[u8]) -> String {
    let hash = pbkdf2_sha512(password.as_bytes(), salt, PBKDF2_ITERATIONS);
    format!("{username}:$7${PBKDF2_ITERATIONS}${}${}", base64(salt), base64(&hash))
}

/// Standard base64 with padding (RFC 4648 §4), as Mosquitto writes it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0_u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Whether `name` may be an exchange username (it lands in the ACL and password files as is).
pub fn check_username(name: &str) -> Result<(), BrokerConfigError> {
    let valid = (1..=64).contains(&name.len())
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(BrokerConfigError::BadUsername(name.to_owned()))
    }
}

/// Who may log in, from the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Participants {
    pub devices: Vec<(ZoneId, DeviceId)>,
    pub accounts: Vec<(ZoneId, AccountId)>,
}

/// Every registered device and household account, by zone.
pub fn load_participants(
    conn: &mut gridex_store::DbConnection,
) -> Result<Participants, settlement::registry::RegistryError> {
    use settlement::registry::{self, RegistryError};
    let bad = |field: &'static str, message: String| RegistryError::Invalid { field, message };
    let mut participants = Participants::default();
    for zone in registry::list_zones(conn)? {
        for (device, ..) in registry::zone_devices(conn, &zone.zone_id)? {
            let device = DeviceId::parse(&device).map_err(|error| bad("device_id", error.to_string()))?;
            participants.devices.push((zone.zone_id.clone(), device));
        }
        for account in registry::zone_accounts(conn, &zone.zone_id)? {
            let account = AccountId::parse(&account).map_err(|error| bad("account_id", error.to_string()))?;
            participants.accounts.push((zone.zone_id.clone(), account));
        }
    }
    Ok(participants)
}

/// Where the broker listens and where the installed files live (the paths the configuration names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOptions {
    pub port: u16,
    /// Address to bind; `None`: every interface.
    pub bind: Option<String>,
    /// Directory the configuration names for `passwd`, `acl` and the persistence file.
    pub install_dir: PathBuf,
    /// The user Mosquitto runs as after dropping root (`user`); `None`: Mosquitto's default
    /// (`mosquitto`). The files are written with mode 0600: that user must own them.
    pub run_as: Option<String>,
}

/// The three generated files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFiles {
    pub passwd: String,
    pub acl: String,
    pub conf: String,
}

/// An exchange's login in the generated files: its username and, when `mqtt.password` is set, that
/// password instead of the derived one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeUser {
    pub username: String,
    pub password: Option<String>,
}

const HEADER: &str = "# Generated by `gridex broker-config` from the registry; regenerate it (and reload the broker\n\
                      # with SIGHUP) after registering devices or accounts. Do not edit.\n";

/// The password file, ACL and Mosquitto configuration for `participants` and the exchanges.
pub fn render(
    secret: &BrokerSecret,
    participants: &Participants,
    exchanges: &[ExchangeUser],
    listener: &ListenerOptions,
) -> Result<BrokerFiles, BrokerConfigError> {
    let mut passwd = String::new();
    let mut acl = String::from(HEADER);
    acl.push_str("\n# Public market data, for every client that logged in.\n");
    for channel in ["trades", "book", "auction", "roots"] {
        let _ = writeln!(acl, "pattern read gridex/v1/+/{channel}");
    }
    for exchange in exchanges {
        check_username(&exchange.username)?;
        passwd.push_str(&secret.passwd_line(&exchange.username, exchange.password.as_deref()));
        passwd.push('\n');
        let _ = writeln!(
            acl,
            "\n# The exchange: reads the inbound topics, writes the outbound ones.\nuser {}",
            exchange.username
        );
        for topic in ["+/readings/+", "+/orders/+", "status/+"] {
            let _ = writeln!(acl, "topic read gridex/v1/{topic}");
        }
        let _ = writeln!(acl, "topic read {}", protocol::topics::ALL_READINGS_V2);
        let _ = writeln!(acl, "topic read {}", protocol::topics::ALL_PLANS);
        for topic in ["+/trades", "+/book", "+/auction", "+/roots", "+/events/+", "+/rejects/+"] {
            let _ = writeln!(acl, "topic write gridex/v1/{topic}");
        }
        // A web server's live feed from the broker (`market.live_feed`): every participant's events
        // (the public market data is read by every login, above).
        let _ = writeln!(acl, "topic read gridex/v1/+/events/+");
        // The command relay between gridex servers (exchange::service::relay): as a zone's owner it
        // reads every relayed command and answers any server; as a web server it relays only as
        // itself and reads only its own answers. No device or account reaches either topic.
        let _ = writeln!(acl, "topic read gridex/v1/+/relay/+/+\ntopic write gridex/v1/+/relay-replies/+");
        let user = &exchange.username;
        let _ = writeln!(acl, "topic write gridex/v1/+/relay/{user}/+\ntopic read gridex/v1/+/relay-replies/{user}");
        // The query relay (exchange::service::query), the same way: read queries (books, slots,
        // auctions, open orders) asked only as itself, answered to any server.
        let _ = writeln!(acl, "topic read gridex/v1/+/query/+/+\ntopic write gridex/v1/+/query-replies/+");
        let _ = writeln!(acl, "topic write gridex/v1/+/query/{user}/+\ntopic read gridex/v1/+/query-replies/{user}");
    }
    for (zone, device) in &participants.devices {
        let user = device.to_hex();
        passwd.push_str(&secret.passwd_line(&user, None));
        passwd.push('\n');
        let _ = writeln!(acl, "\n# device in {zone}\nuser {user}");
        for version in protocol::Version::ALL {
            let _ = writeln!(acl, "topic write {}", protocol::topics::readings_in(version, zone, &user));
        }
        let _ = writeln!(acl, "topic write {}", protocol::topics::status(&user));
        let _ = writeln!(acl, "topic read {}", protocol::topics::events(zone, &user));
        let _ = writeln!(acl, "topic read {}", protocol::topics::rejects(zone, &user));
    }
    for (zone, account) in &participants.accounts {
        let user = account.to_hex();
        passwd.push_str(&secret.passwd_line(&user, None));
        passwd.push('\n');
        let _ = writeln!(acl, "\n# account in {zone}\nuser {user}");
        let _ = writeln!(acl, "topic write {}", protocol::topics::orders(zone, &user));
        let _ = writeln!(acl, "topic write {}", protocol::topics::plans(zone, &user));
        let _ = writeln!(acl, "topic read {}", protocol::topics::events(zone, &user));
        let _ = writeln!(acl, "topic read {}", protocol::topics::rejects(zone, &user));
    }
    let dir = &listener.install_dir;
    let mut conf = String::from(HEADER);
    let listen = match &listener.bind {
        Some(bind) => format!("listener {} {bind}", listener.port),
        None => format!("listener {}", listener.port),
    };
    let _ = write!(
        conf,
        "per_listener_settings false\n\
         allow_anonymous false\n\
         password_file {passwd}\n\
         acl_file {acl}\n\
         # The exchange's session is persistent; never drop what was acknowledged (see README).\n\
         persistence true\n\
         persistence_location {dir}/\n\
         max_queued_messages 100000\n\
         max_inflight_messages 1000\n\
         {user}\
         {listen}\n\
         # The client id is the username: nobody can take over another's (the exchange's) session.\n\
         # A listener option: it must follow the listener line (before it, Mosquitto would open a\n\
         # default listener on 1883 for it).\n\
         use_username_as_clientid true\n",
        user = listener.run_as.as_ref().map(|user| format!("user {user}\n")).unwrap_or_default(),
        passwd = dir.join("passwd").display(),
        acl = dir.join("acl").display(),
        dir = dir.display(),
    );
    Ok(BrokerFiles { passwd, acl, conf })
}

impl BrokerFiles {
    /// Writes `passwd`, `acl` (mode 0600) and `mosquitto.conf` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), BrokerConfigError> {
        let error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BrokerConfigError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(error(dir))?;
        for (name, text) in [("passwd", &self.passwd), ("acl", &self.acl), ("mosquitto.conf", &self.conf)] {
            let path = dir.join(name);
            write_private(&path, text).map_err(error(&path))?;
        }
        Ok(())
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The broker secret named by `broker.secret_file`.
pub fn secret(settings: &crate::Settings) -> Result<BrokerSecret, BrokerConfigError> {
    let path = settings.broker.secret_file.as_ref().ok_or(BrokerConfigError::NoSecret)?;
    BrokerSecret::load(Path::new(path))
}

/// `gridex broker-config`: reads the registry in `db` and writes the files into `out`
/// ([`files_from_registry`]). Returns how many logins it wrote.
pub async fn generate(
    db: &gridex_store::Database,
    settings: &crate::Settings,
    more_exchanges: &[String],
    listener: &ListenerOptions,
    out: &Path,
) -> anyhow::Result<usize> {
    let (files, count) = files_from_registry(db, settings, more_exchanges, listener).await?;
    files.write(out)?;
    Ok(count)
}

/// The files for the registry in `db`, with the secret of `broker.secret_file`. The exchange users
/// are this instance's (`mqtt.username`, default [`EXCHANGE_USERNAME`], with `mqtt.password` when
/// set) and `more_exchanges` (other instances, derived passwords). Also returns how many logins
/// they hold.
pub async fn files_from_registry(
    db: &gridex_store::Database,
    settings: &crate::Settings,
    more_exchanges: &[String],
    listener: &ListenerOptions,
) -> anyhow::Result<(BrokerFiles, usize)> {
    let secret = secret(settings)?;
    let participants = settlement::registry::read(db, load_participants)
        .await
        .map_err(|error| anyhow::anyhow!("cannot read the registry: {error}"))?;
    let own = settings.mqtt.username.clone().unwrap_or_else(|| EXCHANGE_USERNAME.to_owned());
    let mut exchanges =
        vec![ExchangeUser { username: own, password: settings.mqtt.password.as_ref().map(|p| p.expose().to_owned()) }];
    for name in more_exchanges {
        if exchanges.iter().all(|exchange| &exchange.username != name) {
            exchanges.push(ExchangeUser { username: name.clone(), password: None });
        }
    }
    let files = render(&secret, &participants, &exchanges, listener)?;
    Ok((files, participants.devices.len() + participants.accounts.len() + exchanges.len()))
}

/// The username of `id` (a device or account id, or an exchange username) and its password.
pub fn credentials(secret: &BrokerSecret, id: &str) -> Result<(String, String), BrokerConfigError> {
    let username = if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id.to_ascii_lowercase()
    } else {
        check_username(id).map_err(|_| BrokerConfigError::NotAParticipant(id.to_owned()))?;
        id.to_owned()
    };
    let password = secret.password(&username);
    Ok((username, password))
}

/// The demo's embedded broker (rumqttd): a client logs in with a username of `users` and its
/// derived password, and its client id must be its username (rumqttd has no such option, so the
/// check is here). rumqttd 0.20 has no per-topic ACL: the embedded broker serves the demo and the
/// tests; production runs Mosquitto with the generated ACL.
pub fn embedded_auth(
    secret: BrokerSecret,
    users: impl IntoIterator<Item = String>,
) -> impl Fn(String, String, String) -> std::future::Ready<bool> + Send + Sync + 'static {
    let users: std::collections::HashSet<String> = users.into_iter().collect();
    move |client_id, username, password| {
        let known = users.contains(&username) && client_id == username;
        let expected = secret.password(&username);
        std::future::ready(known && constant_time_eq(expected.as_bytes(), password.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_line_is_what_mosquitto_passwd_writes() {
        // `mosquitto_passwd -c -b FILE u pw` (Mosquitto 2.0.11) wrote this line.
        let line = "u:$7$101$ayqjGRavF+Yut/3X$2/R6E/qnE4LJewqZgoRPpoQoQVHU4Hkh6ccFYgI0WgsPWLRTuF5uXXLcdDcY0ynhD7jc4H9nDHFGXPyP+9UxiA==";
        let salt: Vec<u8> = [0x6b, 0x2a, 0xa3, 0x19, 0x16, 0xaf, 0x17, 0xe6, 0x2e, 0xb7, 0xfd, 0xd7].to_vec();
        assert_eq!(base64(&salt), "ayqjGRavF+Yut/3X");
        assert_eq!(passwd_line("u", "pw", &salt), line);
    }

    #[test]
    fn base64_pads_like_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn passwords_differ_per_user_and_secret_and_are_stable() {
        let (a, b) = (BrokerSecret::new([1; 32]), BrokerSecret::new([2; 32]));
        assert_eq!(a.password("x"), a.password("x"));
        assert_ne!(a.password("x"), a.password("y"));
        assert_ne!(a.password("x"), b.password("x"));
        assert_eq!(a.password("x").len(), 64);
        assert_eq!(a.exchange_client_id(""), a.exchange_client_id(""));
        assert_ne!(a.exchange_client_id(""), b.exchange_client_id(""));
        assert_ne!(a.exchange_client_id(""), a.exchange_client_id("north"));
        assert_eq!(a.passwd_line("x", None), a.passwd_line("x", None), "regenerating changes nothing");
    }

    #[test]
    fn an_account_writes_only_its_own_battery_plans_and_the_exchange_reads_them_all() {
        let secret = BrokerSecret::new([7; 32]);
        let zone = ZoneId::parse("north").expect("valid");
        let account = AccountId([4; 32]);
        let participants = Participants { devices: vec![], accounts: vec![(zone, account)] };
        let exchange = ExchangeUser { username: EXCHANGE_USERNAME.into(), password: None };
        let listener =
            ListenerOptions { port: 1883, bind: None, install_dir: "/etc/mosquitto/gridex".into(), run_as: None };
        let files = render(&secret, &participants, &[exchange], &listener).expect("renders");
        let own = format!("topic write gridex/v1/north/plans/{}", account.to_hex());
        assert!(files.acl.contains(&own), "{}", files.acl);
        assert_eq!(files.acl.matches("/plans/").count(), 2, "its own plans and the exchange's read: {}", files.acl);
        assert!(files.acl.contains("topic read gridex/v1/+/plans/+"));
    }

    #[test]
    fn the_files_never_hold_a_password_in_clear() {
        let secret = BrokerSecret::new([7; 32]);
        let zone = ZoneId::parse("north").expect("valid");
        let device = DeviceId([3; 32]);
        let participants = Participants { devices: vec![(zone.clone(), device)], accounts: vec![] };
        let exchange = ExchangeUser { username: EXCHANGE_USERNAME.into(), password: Some("hunter2hunter2".into()) };
        let listener =
            ListenerOptions { port: 1883, bind: None, install_dir: "/etc/mosquitto/gridex".into(), run_as: None };
        let files = render(&secret, &participants, &[exchange], &listener).expect("renders");
        let all = format!("{}{}{}", files.passwd, files.acl, files.conf);
        assert!(!all.contains("hunter2") && !all.contains(&secret.password(&device.to_hex())));
        assert!(files.acl.contains(&format!("topic write gridex/v1/north/readings/{}", device.to_hex())));
        assert!(files.acl.contains(&format!("topic write gridex/v2/north/readings/{}", device.to_hex())));
        assert!(files.acl.contains("topic read gridex/v2/+/readings/+"));
        assert!(files.conf.contains("allow_anonymous false") && files.conf.contains("use_username_as_clientid true"));
        let bad = ExchangeUser { username: "a b".into(), password: None };
        assert!(render(&secret, &participants, &[bad], &listener).is_err());
    }
}
