//! Gateway settings: a TOML file (see `examples/gateway.toml`), with command-line overrides applied by
//! the binary. Every field has a default except the key path and zone, which have demo defaults.

use crate::agent::AgentSettings;
use crate::cadence::{
    BOUNDARY_SPREAD_MS_DEFAULT, BOUNDARY_SPREAD_MS_MAX, PUBLISH_INTERVAL_MS_DEFAULT, PUBLISH_INTERVAL_MS_MAX,
    PUBLISH_INTERVAL_MS_MIN,
};
use crate::clock::SimClock;
use crate::modbus::{RetryPolicy, ATTEMPTS_DEFAULT, REQUEST_TIMEOUT_MS_DEFAULT};
use crate::publisher::{MqttLogin, MqttSettings, ACK_TIMEOUT_MS_DEFAULT};
use crate::spool::SPOOL_BYTES_DEFAULT;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default poll interval: one reading per second.
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Fastest poll accepted: meters update their registers at most a few times a second.
pub const POLL_INTERVAL_MIN_MS: u64 = 100;
/// Default nameplate: a 3 × 63 A three-phase connection is about 43 kW; 30 kW covers most homes.
pub const NAMEPLATE_W_DEFAULT: i64 = 30_000;
/// Largest config file read.
pub const CONFIG_BYTES_MAX: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid settings in {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Where the meter is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusSettings {
    /// `tcp://HOST:PORT` or `rtu:///dev/ttyUSB0?baud=9600&parity=none&stop_bits=1`.
    pub url: String,
    pub unit: u8,
    /// A shipped profile name (`sdm630`, `em24`) or a path; none means SunSpec discovery.
    pub profile: Option<String>,
    pub timeout_ms: u64,
    pub attempts: u32,
}

impl Default for ModbusSettings {
    fn default() -> Self {
        Self {
            url: "tcp://127.0.0.1:1502".to_owned(),
            unit: 1,
            profile: None,
            timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            attempts: ATTEMPTS_DEFAULT,
        }
    }
}

impl ModbusSettings {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { timeout_ms: self.timeout_ms, attempts: self.attempts, ..RetryPolicy::default() }
    }
}

/// Most devices one gateway reads: a grid meter, a PV inverter or two, a battery and a few
/// sub-meters; every poll reads them all in turn over one connection, so the bound also bounds a
/// poll's length (a few requests per device).
pub const DEVICES_MAX: usize = 8;

/// What a device meters; here it decides how a reading is formed (`protocol::DeviceRole`).
pub use protocol::DeviceRole;

/// One Modbus device on the gateway's connection (`[[devices]]`), with its own key, spool and
/// broker login. Without `[[devices]]` the gateway reads one device from the top-level `key`,
/// `[modbus] unit`/`profile`, `meter_serial`, `nameplate_w` and `spool_dir` ([`GatewaySettings::devices`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// The Modbus unit (slave) id, e.g. 1 for an inverter and 240 for its meter.
    pub unit: u8,
    /// A shipped profile name or a path; none means SunSpec discovery on this unit.
    #[serde(default)]
    pub profile: Option<String>,
    /// This device's key (its readings are signed with it, and it is registered with it).
    pub key: PathBuf,
    #[serde(default)]
    pub role: DeviceRole,
    #[serde(default)]
    pub meter_serial: Option<String>,
    /// Defaults to the top-level `nameplate_w`.
    #[serde(default)]
    pub nameplate_w: Option<i64>,
    /// Defaults to `unit-<unit>` under the top-level `spool_dir`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// This device's broker login; required when `[mqtt]` has a login (each device logs in as
    /// itself), else the device connects as `[mqtt]` does with a client id of its own key.
    #[serde(default)]
    pub mqtt: Option<MqttLogin>,
}

/// A device as the gateway runs it: [`DeviceSettings`] with the defaults of the top-level settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    pub unit: u8,
    pub profile: Option<String>,
    pub key: PathBuf,
    pub role: DeviceRole,
    pub meter_serial: Option<String>,
    pub nameplate_w: i64,
    pub spool_dir: PathBuf,
    pub mqtt: MqttSettings,
}

/// The home battery: whether the gateway may control it (opt-in) and the owner's limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatterySettings {
    /// When false (the default) the gateway only reads the battery and ignores battery commands.
    pub control: bool,
    /// The owner's limit on a commanded charge or discharge power, below the device's own limits.
    pub power_w_max: Option<i64>,
    /// Revert timeout written with each setpoint: the inverter returns to its own mode this long after
    /// the gateway's last write (the gateway rewrites an active setpoint every half of it).
    pub revert_s: u16,
}

impl Default for BatterySettings {
    fn default() -> Self {
        Self { control: false, power_w_max: None, revert_s: crate::storage::REVERT_S_DEFAULT }
    }
}

impl BatterySettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.power_w_max.is_some_and(|w| w <= 0) {
            return Err("battery.power_w_max must be positive".to_owned());
        }
        if self.revert_s == 0 {
            return Err("battery.revert_s must be at least 1 (0 would hold a setpoint forever)".to_owned());
        }
        Ok(())
    }
}

/// Everything `gateway::run` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    pub zone: String,
    /// The device key file (see `keys`); readings are signed with it.
    pub key: PathBuf,
    /// Overrides the serial the device reports (required when it reports none).
    pub meter_serial: Option<String>,
    /// Largest power the site can import, export or produce; bounds plausible counter rises.
    pub nameplate_w: i64,
    /// Poll period (real milliseconds): the device is read and its counters checked this often.
    pub interval_ms: u64,
    /// Publish interval (clock milliseconds, 100..=300 000): a reading is signed, spooled and
    /// published at the first poll at or after each interval mark (offset per device), and right
    /// after every slot boundary; see [`crate::cadence`]. Not longer than the poll period: every poll.
    pub publish_interval_ms: u64,
    /// The zone's slot length: a reading is published at the first poll after each of its boundaries.
    pub slot_len_ms: i64,
    /// The boundary readings of a zone's homes are spread over this long after the boundary (each
    /// device at its own offset, 0..=60 000 ms); see [`crate::cadence`].
    pub boundary_spread_ms: u64,
    /// Directory of the spool and the gateway's state (last seq, counter offsets).
    pub spool_dir: PathBuf,
    pub spool_bytes_max: u64,
    /// How long a published reading waits for the exchange's `reading_ack` (or a final reject)
    /// before it is published again; it stays in the spool until one of them arrives.
    pub ack_timeout_ms: u64,
    pub modbus: ModbusSettings,
    pub mqtt: MqttSettings,
    /// Several devices on the `[modbus]` connection, read in one poll (see [`DeviceSettings`]);
    /// empty: the one device of the top-level settings.
    pub devices: Vec<DeviceSettings>,
    /// The home trading agent, when present.
    pub agent: Option<AgentSettings>,
    /// The home battery (read when the device has one; controlled only when `control = true`).
    pub battery: BatterySettings,
    /// The clock that stamps readings; `None` is the real clock. Not read from files: the demo passes
    /// its shared simulated clock. Readings whose time is not after the last accepted one are rejected,
    /// so a demo that restarts with an earlier simulated time should use a fresh `spool_dir`.
    #[serde(skip)]
    pub clock: Option<SimClock>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            zone: "demo".to_owned(),
            key: PathBuf::from("device.key"),
            meter_serial: None,
            nameplate_w: NAMEPLATE_W_DEFAULT,
            interval_ms: POLL_INTERVAL_MS_DEFAULT,
            publish_interval_ms: PUBLISH_INTERVAL_MS_DEFAULT,
            slot_len_ms: protocol::market::SLOT_LEN_MS_DEFAULT,
            boundary_spread_ms: BOUNDARY_SPREAD_MS_DEFAULT,
            spool_dir: PathBuf::from("spool"),
            spool_bytes_max: SPOOL_BYTES_DEFAULT,
            ack_timeout_ms: ACK_TIMEOUT_MS_DEFAULT,
            modbus: ModbusSettings::default(),
            mqtt: MqttSettings::default(),
            devices: Vec::new(),
            agent: None,
            battery: BatterySettings::default(),
            clock: None,
        }
    }
}

impl GatewaySettings {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|error| ConfigError::Invalid { path: path.to_path_buf(), reason: error.to_string() })
    }

    /// Checks the cadence settings (publish interval, slot length, boundary spread).
    pub fn validate_cadence(&self) -> Result<(), String> {
        if !(PUBLISH_INTERVAL_MS_MIN..=PUBLISH_INTERVAL_MS_MAX).contains(&self.publish_interval_ms) {
            return Err(format!(
                "publish_interval_ms must be within {PUBLISH_INTERVAL_MS_MIN}..={PUBLISH_INTERVAL_MS_MAX}"
            ));
        }
        if self.slot_len_ms < 1_000 {
            return Err("slot_len_ms must be at least 1000 (the zone's slot length)".to_owned());
        }
        if self.boundary_spread_ms > BOUNDARY_SPREAD_MS_MAX {
            return Err(format!("boundary_spread_ms must be at most {BOUNDARY_SPREAD_MS_MAX}"));
        }
        Ok(())
    }

    /// The devices to read, each with its spool directory, nameplate and broker settings resolved:
    /// `[[devices]]`, or the one device of the top-level settings (the configuration before
    /// several devices existed keeps its meaning). The first grid meter (else the first device) is
    /// the one the battery settings and the trading agent act on.
    pub fn devices(&self) -> Result<Vec<ResolvedDevice>, String> {
        if self.devices.is_empty() {
            return Ok(vec![ResolvedDevice {
                unit: self.modbus.unit,
                profile: self.modbus.profile.clone(),
                key: self.key.clone(),
                role: DeviceRole::Grid,
                meter_serial: self.meter_serial.clone(),
                nameplate_w: self.nameplate_w,
                spool_dir: self.spool_dir.clone(),
                mqtt: self.mqtt.clone(),
            }]);
        }
        if self.devices.len() > DEVICES_MAX {
            return Err(format!("at most {DEVICES_MAX} [[devices]]"));
        }
        let mut resolved: Vec<ResolvedDevice> = Vec::with_capacity(self.devices.len());
        for (index, device) in self.devices.iter().enumerate() {
            let mqtt = match (&device.mqtt, &self.mqtt.username) {
                (Some(login), _) => MqttSettings {
                    username: Some(login.username.clone()),
                    password: Some(login.password.clone()),
                    client_id: None,
                    ..self.mqtt.clone()
                },
                (None, Some(_)) => {
                    return Err(format!(
                        "devices[{index}] needs its own mqtt login: [mqtt] has one, and each device logs in as itself"
                    ))
                }
                (None, None) => MqttSettings { client_id: None, ..self.mqtt.clone() },
            };
            let next = ResolvedDevice {
                unit: device.unit,
                profile: device.profile.clone(),
                key: device.key.clone(),
                role: device.role,
                meter_serial: device.meter_serial.clone(),
                nameplate_w: device.nameplate_w.unwrap_or(self.nameplate_w),
                spool_dir: device
                    .spool_dir
                    .clone()
                    .unwrap_or_else(|| self.spool_dir.join(format!("unit-{}", device.unit))),
                mqtt,
            };
            if resolved.iter().any(|other| other.key == next.key || other.spool_dir == next.spool_dir) {
                return Err(format!("devices[{index}] shares a key or a spool_dir with another device"));
            }
            resolved.push(next);
        }
        Ok(resolved)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io { path: path.to_path_buf(), source };
        if std::fs::metadata(path).map_err(io)?.len() > CONFIG_BYTES_MAX {
            return Err(ConfigError::Invalid { path: path.to_path_buf(), reason: "file too large".to_owned() });
        }
        Self::parse(path, &std::fs::read_to_string(path).map_err(io)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../examples/gateway.toml");
        let settings = GatewaySettings::parse(Path::new("examples/gateway.toml"), text).expect("parses");
        assert_eq!(settings.zone, "north");
        assert!(settings.agent.is_some());
        assert!(!settings.battery.control, "battery control is opt-in");
        assert_eq!(settings.battery.revert_s, crate::storage::REVERT_S_DEFAULT);
    }

    #[test]
    fn battery_control_is_off_unless_the_owner_turns_it_on() {
        let settings = GatewaySettings::parse(Path::new("x"), "").expect("parses");
        assert_eq!(settings.battery, BatterySettings::default());
        assert!(!settings.battery.control);
        let text = "[battery]\ncontrol = true\npower_w_max = 3000\nrevert_s = 120\n";
        let settings = GatewaySettings::parse(Path::new("x"), text).expect("parses");
        assert_eq!(settings.battery, BatterySettings { control: true, power_w_max: Some(3_000), revert_s: 120 });
        assert!(BatterySettings { revert_s: 0, ..BatterySettings::default() }.validate().is_err());
        assert!(BatterySettings { power_w_max: Some(0), ..BatterySettings::default() }.validate().is_err());
    }

    #[test]
    fn a_publish_interval_outside_its_bounds_is_refused() {
        let settings = |text: &str| GatewaySettings::parse(Path::new("x"), text).expect("parses");
        assert_eq!(settings("publish_interval_ms = 60000").validate_cadence(), Ok(()));
        assert!(settings("publish_interval_ms = 99").validate_cadence().is_err());
        assert!(settings("publish_interval_ms = 300001").validate_cadence().is_err());
        assert!(settings("boundary_spread_ms = 60001").validate_cadence().is_err());
        assert!(settings("slot_len_ms = 0").validate_cadence().is_err());
        assert_eq!(PUBLISH_INTERVAL_MS_MIN, POLL_INTERVAL_MIN_MS, "the shortest publish interval is the shortest poll");
    }

    #[test]
    fn the_single_device_settings_are_a_one_element_device_list() {
        let text = "key = \"meter.key\"\nspool_dir = \"spool\"\nnameplate_w = 9000\n[modbus]\nunit = 7\nprofile = \"sdm630\"\n";
        let settings = GatewaySettings::parse(Path::new("x"), text).expect("parses");
        let devices = settings.devices().expect("valid");
        assert_eq!(devices.len(), 1);
        let device = &devices[0];
        assert_eq!((device.unit, device.profile.as_deref(), device.role), (7, Some("sdm630"), DeviceRole::Grid));
        assert_eq!((device.key.as_path(), device.spool_dir.as_path()), (Path::new("meter.key"), Path::new("spool")));
        assert_eq!(device.nameplate_w, 9_000);
    }

    #[test]
    fn several_devices_each_get_their_own_spool_and_must_log_in_as_themselves() {
        let text = "spool_dir = \"spool\"\n\
                    [[devices]]\nunit = 1\nkey = \"inverter.key\"\nrole = \"pv\"\n\
                    [[devices]]\nunit = 240\nkey = \"meter.key\"\nprofile = \"sdm630\"\n";
        let settings = GatewaySettings::parse(Path::new("x"), text).expect("parses");
        let devices = settings.devices().expect("valid");
        let units: Vec<(u8, DeviceRole, &Path)> =
            devices.iter().map(|device| (device.unit, device.role, device.spool_dir.as_path())).collect();
        assert_eq!(
            units,
            vec![(1, DeviceRole::Pv, Path::new("spool/unit-1")), (240, DeviceRole::Grid, Path::new("spool/unit-240"))]
        );
        let mut with_login = settings.clone();
        with_login.mqtt.username = Some("device".to_owned());
        assert!(with_login.devices().is_err(), "a shared login would make one device publish as another");
        let mut same_key = settings.clone();
        same_key.devices[1].key = PathBuf::from("inverter.key");
        assert!(same_key.devices().is_err());
        assert!(
            GatewaySettings::parse(Path::new("x"), "[[devices]]\nunit = 1\nkey = \"k\"\nrole = \"meter\"\n").is_err()
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let settings = GatewaySettings::parse(Path::new("x"), "").expect("parses");
        assert_eq!(settings.interval_ms, POLL_INTERVAL_MS_DEFAULT);
        assert_eq!(settings.publish_interval_ms, PUBLISH_INTERVAL_MS_DEFAULT);
        assert_eq!(settings.slot_len_ms, protocol::market::SLOT_LEN_MS_DEFAULT);
        assert_eq!(settings.validate_cadence(), Ok(()));
        assert!(GatewaySettings::parse(Path::new("x"), "nonsense = 1").is_err());
    }
}
