//! The gateway loop: poll the device, apply the counter rules, sign, spool, and let the publisher
//! forward; optionally feed the home trading agent, and apply battery commands when the owner allowed
//! it (`[battery] control = true`, see [`run_with_battery`]).

use crate::battery::BatteryMode;
use crate::cadence::Cadence;
use crate::clock::SimClock;
use crate::config::{BatterySettings, DeviceRole, GatewaySettings, ResolvedDevice, POLL_INTERVAL_MIN_MS};
use crate::counters::{CounterTracker, CountersState, RawCounters};
use crate::modbus::{ModbusClient, ModbusError, ModbusUrl};
use crate::profile::{Profile, ProfileError};
use crate::publisher::{self, lock, PublisherConfig, PublisherStats};
use crate::spool::{Spool, SpoolError};
use crate::storage::{self, StorageError};
use crate::sunspec::{self, SunSpecError};
use ed25519_dalek::SigningKey;
use protocol::{DeviceId, MeterSerial, PowerW, Reading, Signed, TimestampMs, Wh, ZoneId};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Modbus(#[from] ModbusError),
    #[error(transparent)]
    SunSpec(#[from] SunSpecError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Publish(#[from] crate::publisher::PublishError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("cannot write gateway state {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
}

/// The gateway's persisted state next to the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayState {
    /// Highest sequence number used; the next reading gets a higher one, across restarts.
    pub last_seq: u64,
    pub counters: CountersState,
}

impl GatewayState {
    pub fn load(dir: &Path) -> Self {
        std::fs::read(dir.join(STATE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, dir: &Path) -> Result<(), GatewayError> {
        use std::io::Write;
        let path = dir.join(STATE_FILE);
        let temp = dir.join("state.json.tmp");
        let io = |source| GatewayError::State { path: path.clone(), source };
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut file = std::fs::File::create(&temp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        std::fs::rename(&temp, &path).map_err(io)
    }
}

/// What is read each poll, before the counter rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub import_wh: Option<i64>,
    pub export_wh: Option<i64>,
    pub pv_wh: Option<i64>,
    pub power_w: Option<i64>,
    pub meter_modulus_wh: Option<i64>,
    pub pv_modulus_wh: Option<i64>,
    pub serial: Option<String>,
    /// The battery behind the meter, when the device reports one.
    pub battery_soc_permille: Option<u16>,
    pub battery_capacity_wh: Option<i64>,
    /// Cumulative AC counters (only register-map profiles have them; SunSpec 124/802 do not).
    pub battery_charge_wh: Option<i64>,
    pub battery_discharge_wh: Option<i64>,
    /// Positive while charging.
    pub battery_power_w: Option<i64>,
}

impl Sample {
    /// A PV device's reading: its production (the inverter's lifetime energy, else the production
    /// meter's export counter) as export and `pv_wh`, nothing imported; no battery fields (a battery
    /// is read through its own device or the grid meter's).
    pub fn production(sample: Sample) -> Sample {
        let (produced_wh, modulus_wh) = match sample.pv_wh {
            Some(pv_wh) => (Some(pv_wh), sample.pv_modulus_wh),
            None => (sample.export_wh, sample.meter_modulus_wh),
        };
        Sample {
            import_wh: produced_wh.map(|_| 0),
            export_wh: produced_wh,
            pv_wh: produced_wh,
            power_w: sample.power_w,
            meter_modulus_wh: modulus_wh,
            pv_modulus_wh: modulus_wh,
            serial: sample.serial,
            ..Sample::default()
        }
    }
}

/// How values are found on the device.
#[derive(Debug)]
pub enum Source {
    /// SunSpec, discovered on first use (and again after a failure).
    SunSpec(Option<sunspec::Device>),
    Profile(Profile),
}

impl Source {
    pub fn from_settings(profile: Option<&str>) -> Result<Self, ProfileError> {
        Ok(match profile {
            Some(name) => Source::Profile(Profile::load(name)?),
            None => Source::SunSpec(None),
        })
    }

    /// Reads one sample of a grid meter ([`Source::read_as`]).
    pub async fn read(&mut self, client: &mut ModbusClient) -> Result<Sample, GatewayError> {
        self.read_as(client, DeviceRole::Grid).await
    }

    /// Reads one sample of a device with `role`: a PV device's production is its export (and its
    /// `pv_wh`), its import 0, whether it is an inverter (SunSpec 10x without a meter model) or a
    /// production meter; the other roles read the meter. A SunSpec device is rediscovered after any
    /// error.
    pub async fn read_as(&mut self, client: &mut ModbusClient, role: DeviceRole) -> Result<Sample, GatewayError> {
        let sample = self.read_device(client, role).await?;
        Ok(match role {
            DeviceRole::Pv => Sample::production(sample),
            DeviceRole::Grid | DeviceRole::Battery | DeviceRole::Submeter => sample,
        })
    }

    async fn read_device(&mut self, client: &mut ModbusClient, role: DeviceRole) -> Result<Sample, GatewayError> {
        match self {
            Source::Profile(profile) => {
                let values = profile.read(client).await?;
                Ok(Sample {
                    import_wh: values.import_wh,
                    export_wh: values.export_wh,
                    pv_wh: values.pv_wh,
                    power_w: values.power_w,
                    meter_modulus_wh: values.counter_modulus_wh,
                    pv_modulus_wh: None,
                    serial: values.serial,
                    battery_soc_permille: values
                        .battery_soc_permille
                        .filter(|soc| (0..=i64::from(protocol::messages::BATTERY_SOC_PERMILLE_MAX)).contains(soc))
                        .and_then(|soc| u16::try_from(soc).ok()),
                    battery_capacity_wh: values.battery_capacity_wh,
                    battery_charge_wh: values.battery_charge_wh,
                    battery_discharge_wh: values.battery_discharge_wh,
                    battery_power_w: values.battery_power_w,
                })
            }
            Source::SunSpec(device) => {
                if device.is_none() {
                    *device = Some(sunspec::discover(client).await?);
                }
                let Some(found) = device.as_ref() else { return Err(SunSpecError::NotFound.into()) };
                let result = Self::read_sunspec(client, found, role).await;
                if result.is_err() {
                    *device = None;
                }
                result
            }
        }
    }

    async fn read_sunspec(
        client: &mut ModbusClient,
        device: &sunspec::Device,
        role: DeviceRole,
    ) -> Result<Sample, GatewayError> {
        let inverter = match device.inverter() {
            Some(model) => Some(sunspec::read_inverter(client, model).await?),
            None => None,
        };
        let meter_model = match (device.meter(), inverter) {
            (Some(model), _) => model,
            // An inverter on its own unit (its meter on another) is a PV device's whole reading.
            (None, Some(inverter)) if role == DeviceRole::Pv => {
                return Ok(Sample {
                    pv_wh: inverter.energy_wh,
                    pv_modulus_wh: inverter.counter_modulus_wh,
                    power_w: inverter.power_w,
                    serial: device.serial.clone(),
                    ..Sample::default()
                })
            }
            (None, _) => return Err(SunSpecError::NoMeter.into()),
        };
        let meter = sunspec::read_meter(client, meter_model).await?;
        // A battery that cannot be read does not hold back the meter's reading.
        let battery = match storage::read_status(client, device).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(%error, "battery not read");
                None
            }
        };
        Ok(Sample {
            import_wh: meter.import_wh,
            export_wh: meter.export_wh,
            power_w: meter.power_w,
            meter_modulus_wh: meter.counter_modulus_wh,
            pv_wh: inverter.and_then(|i| i.energy_wh),
            pv_modulus_wh: inverter.and_then(|i| i.counter_modulus_wh),
            serial: device.serial.clone(),
            battery_soc_permille: battery.and_then(|b| b.soc_permille),
            battery_capacity_wh: battery.and_then(|b| b.capacity_wh),
            ..Sample::default()
        })
    }

    /// Applies a battery command through SunSpec model 124 (discovering the device first if needed):
    /// a setpoint is checked against the device's and the owner's limits before anything is written.
    /// Returns the commanded power of a setpoint. Register-map profiles cannot control a battery.
    pub async fn apply_battery(
        &mut self,
        client: &mut ModbusClient,
        mode: BatteryMode,
        settings: &BatterySettings,
    ) -> Result<Option<i64>, GatewayError> {
        let Source::SunSpec(device) = self else { return Err(StorageError::NoControl.into()) };
        if device.is_none() {
            *device = Some(sunspec::discover(client).await?);
        }
        let Some(found) = device.as_ref() else { return Err(SunSpecError::NotFound.into()) };
        Ok(storage::apply(client, found, mode, settings.power_w_max, settings.revert_s).await?)
    }
}

/// Makes a device-reported serial fit the protocol's alphabet.
pub fn sanitize_serial(text: &str) -> Option<MeterSerial> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._:-".contains(c) { c } else { '-' })
        .take(protocol::ids::METER_SERIAL_LEN_MAX)
        .collect();
    MeterSerial::parse(&cleaned).ok()
}

/// The poll-sign-spool part of the gateway, separate from I/O scheduling so tests can drive it.
#[derive(Debug)]
pub struct Poller {
    pub key: SigningKey,
    pub device: DeviceId,
    pub zone: ZoneId,
    pub serial_override: Option<MeterSerial>,
    pub tracker: CounterTracker,
    pub state: GatewayState,
    pub state_dir: PathBuf,
}

impl Poller {
    /// Applies the counter rules to a sample taken at `ts_ms`, signs the reading, appends it to the
    /// spool and saves the state ([`Poller::observe`] then [`Poller::publish`]). Returns the reading, or
    /// `None` when rejected.
    pub fn accept(
        &mut self,
        sample: &Sample,
        ts_ms: i64,
        spool: &Mutex<Spool>,
    ) -> Result<Option<Reading>, GatewayError> {
        match self.observe(sample, ts_ms)? {
            Some(reading) => self.publish(reading, spool),
            None => Ok(None),
        }
    }

    /// Applies the counter rules to a sample taken at `ts_ms` and saves the counter state. Returns the
    /// unsigned reading (its `seq` is the one it would get if published next), or `None` when the
    /// sample is rejected. Nothing is spooled: see [`Poller::publish`].
    pub fn observe(&mut self, sample: &Sample, ts_ms: i64) -> Result<Option<Reading>, GatewayError> {
        let raw = RawCounters {
            ts_ms,
            import_wh: sample.import_wh,
            export_wh: sample.export_wh,
            pv_wh: sample.pv_wh,
            meter_modulus_wh: sample.meter_modulus_wh,
            pv_modulus_wh: sample.pv_modulus_wh,
        };
        let observed = self.tracker.observe(raw);
        // The counters' state (a pending reset included) is saved at every poll, published or not.
        self.state.counters = self.tracker.state().clone();
        self.state.save(&self.state_dir)?;
        let accepted = match observed {
            Ok(accepted) => accepted,
            Err(rejection) => {
                tracing::warn!(%rejection, "reading not published");
                return Ok(None);
            }
        };
        let serial = self
            .serial_override
            .clone()
            .or_else(|| sample.serial.as_deref().and_then(sanitize_serial))
            .or_else(|| MeterSerial::parse("unknown").ok());
        let Some(meter_serial) = serial else { return Ok(None) };
        Ok(Some(Reading {
            device: self.device,
            zone: self.zone.clone(),
            meter_serial,
            seq: self.state.last_seq + 1,
            ts_ms: TimestampMs(ts_ms),
            import_wh: Wh(accepted.import_wh),
            export_wh: Wh(accepted.export_wh),
            pv_wh: accepted.pv_wh.map(Wh),
            power_w: PowerW(
                sample.power_w.unwrap_or(0).clamp(-protocol::messages::POWER_W_MAX, protocol::messages::POWER_W_MAX),
            ),
            battery_charge_wh: sample.battery_charge_wh.filter(|wh| *wh >= 0).map(Wh),
            battery_discharge_wh: sample.battery_discharge_wh.filter(|wh| *wh >= 0).map(Wh),
            battery_soc_permille: sample
                .battery_soc_permille
                .filter(|soc| *soc <= protocol::messages::BATTERY_SOC_PERMILLE_MAX),
            battery_capacity_wh: sample.battery_capacity_wh.filter(|wh| *wh > 0).map(Wh),
        }))
    }

    /// Gives an observed reading the next sequence number, signs it, appends it to the spool (from
    /// where the publisher sends it) and saves the state. Returns the reading as published, or `None`
    /// when it cannot be signed.
    pub fn publish(&mut self, mut reading: Reading, spool: &Mutex<Spool>) -> Result<Option<Reading>, GatewayError> {
        let mut spool = lock(spool);
        let seq = self.state.last_seq.max(spool.last_seq()) + 1;
        reading.seq = seq;
        let signed = match Signed::sign(reading.clone(), &self.key) {
            Ok(signed) => signed,
            Err(error) => {
                tracing::error!(%error, "reading cannot be signed; not published");
                return Ok(None);
            }
        };
        spool.append(seq, &signed.to_json())?;
        drop(spool);
        self.state.last_seq = seq;
        self.state.save(&self.state_dir)?;
        Ok(Some(reading))
    }
}

/// Handles for watching a running gateway (tests, the demo).
#[derive(Debug, Clone)]
pub struct GatewayHandle {
    pub device: DeviceId,
    pub stats: Arc<PublisherStats>,
    pub polls: Arc<PollStats>,
    /// The device's publishing schedule (its offsets; see [`crate::cadence`]).
    pub cadence: Cadence,
    /// Every device of the gateway in the order of its settings (each with `devices` empty); the
    /// fields above are the grid meter's (else the first device's), which the agent and battery use.
    pub devices: Vec<GatewayHandle>,
}

/// What the poll loop did: polls whose counters passed the rules, and how many of them were spooled
/// for publishing (see [`crate::cadence`]).
#[derive(Debug, Default)]
pub struct PollStats {
    pub accepted: AtomicU64,
    pub spooled: AtomicU64,
}

fn validate(settings: &GatewaySettings) -> Result<(ZoneId, ModbusUrl), GatewayError> {
    let zone = ZoneId::parse(&settings.zone).map_err(|e| GatewayError::Settings(format!("zone: {e}")))?;
    let url = ModbusUrl::parse(&settings.modbus.url)?;
    if settings.interval_ms < POLL_INTERVAL_MIN_MS {
        return Err(GatewayError::Settings(format!("interval_ms must be at least {POLL_INTERVAL_MIN_MS}")));
    }
    settings.validate_cadence().map_err(GatewayError::Settings)?;
    if settings.ack_timeout_ms == 0 {
        return Err(GatewayError::Settings("ack_timeout_ms must be positive".to_owned()));
    }
    if settings.nameplate_w <= 0 {
        return Err(GatewayError::Settings("nameplate_w must be positive".to_owned()));
    }
    settings.battery.validate().map_err(GatewayError::Settings)?;
    if let Some(agent) = &settings.agent {
        agent.validate()?;
        // Fail now rather than run without the agent the owner asked for.
        crate::keys::load(&agent.key)?;
    }
    Ok((zone, url))
}

/// Runs the gateway until `shutdown` completes: polls every `interval_ms`, publishes through the spool
/// at the cadence of [`crate::cadence`] (every `publish_interval_ms` and right after each slot boundary),
/// and runs the trading agent when configured. Fails early on bad settings, a missing key or an
/// unusable spool; device and broker outages are logged and retried forever.
pub async fn run(settings: GatewaySettings, shutdown: impl Future<Output = ()> + Send) -> Result<(), GatewayError> {
    run_with_handle(settings, shutdown, |_| {}).await
}

/// [`run`], calling `on_start` with a handle once the gateway is set up.
pub async fn run_with_handle(
    settings: GatewaySettings,
    shutdown: impl Future<Output = ()> + Send,
    on_start: impl FnOnce(GatewayHandle),
) -> Result<(), GatewayError> {
    run_with_battery(settings, shutdown, on_start, None).await
}

/// Battery modes waiting for the poll loop: the agent sends one when its plan changes (a few a slot).
const BATTERY_COMMANDS_CAPACITY: usize = 16;

/// [`run_with_handle`], also applying the [`BatteryMode`] commands received on `battery_commands`
/// (e.g. from the trading agent): with `[battery] control = true` each command is checked against the
/// device's and the owner's limits and written to SunSpec model 124 (a refused one is logged and
/// nothing is written), and an active setpoint is rewritten every half revert timeout;
/// `SelfConsumption` releases control. With `control = false` (the default) commands are ignored and
/// that is logged once. Without `battery_commands`, a trading agent whose `[agent.battery]` has
/// `control = true` is given the channel.
pub async fn run_with_battery(
    settings: GatewaySettings,
    shutdown: impl Future<Output = ()> + Send,
    on_start: impl FnOnce(GatewayHandle),
    mut battery_commands: Option<mpsc::Receiver<BatteryMode>>,
) -> Result<(), GatewayError> {
    let (zone, url) = validate(&settings)?;
    let resolved = settings.devices().map_err(GatewayError::Settings)?;
    let clock = settings.clock.unwrap_or_else(SimClock::real);
    let (stop_tx, stop_rx) = watch::channel(false);
    let operator = settings.mqtt.pinned_operator().map_err(GatewayError::Settings)?;
    if operator.is_none() {
        tracing::warn!(
            "no [mqtt] operator_key pinned: the exchange's answers cannot be verified, so none is believed and \
             readings stay spooled and are resent (set operator_key from GET /api/v1/operator-key)"
        );
    }
    let mut units = Vec::with_capacity(resolved.len());
    for device in &resolved {
        units.push(Unit::start(device, &settings, &zone, clock, operator, &stop_rx)?);
    }
    // The battery and the agent belong to the home's grid meter (else the only or first device).
    let primary = units.iter().position(|unit| unit.role == DeviceRole::Grid).unwrap_or(0);
    let mut client = ModbusClient::new(url, units[primary].modbus_unit, settings.modbus.retry_policy());
    let (agent_tx, agent_task) = match settings.agent.clone() {
        Some(agent) => {
            let (tx, rx) = mpsc::channel(crate::agent::READINGS_CHANNEL_CAPACITY);
            // The agent drives the battery only when both its owner (`[agent.battery] control`) and
            // the gateway (`[battery] control`) allow it, and no caller brought its own commands.
            let agent_controls = agent.battery.as_ref().is_some_and(|battery| battery.control);
            let link = if agent_controls && settings.battery.control && battery_commands.is_none() {
                let (modes, commands) = mpsc::channel(BATTERY_COMMANDS_CAPACITY);
                battery_commands = Some(commands);
                Some(crate::agent::BatteryLink { observations: None, modes })
            } else {
                if agent_controls {
                    tracing::warn!(
                        "[agent.battery] control is on but the gateway's [battery] control is off: \
                         the agent's setpoints are not written"
                    );
                }
                None
            };
            let task = tokio::spawn(crate::agent::run_with_battery(
                agent,
                zone.clone(),
                settings.mqtt.clone(),
                clock,
                rx,
                stop_rx.clone(),
                link,
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    for unit in &units {
        tracing::info!(
            device = %unit.poller.device, %zone, modbus = %client.url(), unit = unit.modbus_unit, role = ?unit.role,
            mqtt = %settings.mqtt.url, "gateway started"
        );
        tracing::info!(
            publish_interval_ms = settings.publish_interval_ms,
            interval_offset_ms = unit.cadence.interval_offset_ms(),
            boundary_offset_ms = unit.cadence.boundary_offset_ms(),
            "publishing cadence"
        );
    }
    let handles: Vec<GatewayHandle> = units.iter().map(Unit::handle).collect();
    on_start(GatewayHandle { devices: handles.clone(), ..handles[primary].clone() });

    let mut tick = tokio::time::interval(Duration::from_millis(settings.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let battery_settings = settings.battery.clone();
    let mut control_off_logged = false;
    // The setpoint in force and when it was last written (the clock's time, as the device's revert).
    let mut active_setpoint: Option<(BatteryMode, i64)> = None;
    let result = 'polling: loop {
        let command = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => None,
            command = next_command(&mut battery_commands) => match command {
                Some(mode) => Some(mode),
                None => {
                    battery_commands = None;
                    continue;
                }
            },
        };
        let refresh = active_setpoint
            .filter(|(_, written_ms)| clock.now_ms() - written_ms >= i64::from(battery_settings.revert_s) * 1_000 / 2)
            .map(|(mode, _)| mode);
        if let Some(mode) = command.or(refresh) {
            if !battery_settings.control {
                if !control_off_logged {
                    tracing::warn!(
                        "battery control is disabled ([battery] control = false): battery commands are ignored"
                    );
                    control_off_logged = true;
                }
                continue;
            }
            let unit = &mut units[primary];
            client.set_unit(unit.modbus_unit);
            let applied = tokio::select! {
                _ = &mut shutdown => break Ok(()),
                applied = unit.source.apply_battery(&mut client, mode, &battery_settings) => applied,
            };
            match applied {
                Ok(commanded_w) => {
                    tracing::info!(?mode, ?commanded_w, "battery command applied");
                    active_setpoint = commanded_w.map(|_| (mode, clock.now_ms()));
                }
                Err(error) => {
                    tracing::warn!(%error, ?mode, "battery command not applied");
                    // A refused command ends the refreshes of the one before (the device reverts by
                    // itself); a failed refresh is tried again next poll.
                    if command.is_some() {
                        active_setpoint = None;
                    }
                }
            }
            if command.is_some() {
                continue;
            }
        }
        // One poll reads every device in turn over the one connection.
        for (index, unit) in units.iter_mut().enumerate() {
            client.set_unit(unit.modbus_unit);
            let sample = tokio::select! {
                _ = &mut shutdown => break 'polling Ok(()),
                sample = unit.source.read_as(&mut client, unit.role) => sample,
            };
            let reading = match unit.poll(sample, clock.now_ms()) {
                Ok(Some(reading)) => reading,
                Ok(None) => continue,
                // Disk trouble is fatal: silently dropping readings is worse than stopping.
                Err(error) => break 'polling Err(error),
            };
            if let (Some(tx), true) = (&agent_tx, index == primary) {
                // The agent sees every accepted poll (published or not). It only needs recent
                // readings; when it lags, skipping one is harmless.
                let _ = tx.try_send(reading);
            }
        }
    };
    let _ = stop_tx.send(true);
    client.disconnect().await;
    for unit in units {
        let _ = unit.publisher.await;
    }
    if let Some(task) = agent_task {
        drop(agent_tx);
        match task.await {
            Ok(Err(error)) => tracing::error!(%error, "trading agent stopped"),
            Err(error) => tracing::error!(%error, "trading agent panicked"),
            Ok(Ok(())) => {}
        }
    }
    result
}

/// One device of the gateway: how it is read, its counter rules, spool, cadence and publisher.
struct Unit {
    modbus_unit: u8,
    role: DeviceRole,
    source: Source,
    poller: Poller,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    stats: Arc<PublisherStats>,
    polls: Arc<PollStats>,
    cadence: Cadence,
    publisher: tokio::task::JoinHandle<Result<(), crate::publisher::PublishError>>,
}

impl Unit {
    fn start(
        device: &ResolvedDevice,
        settings: &GatewaySettings,
        zone: &ZoneId,
        clock: SimClock,
        operator: Option<[u8; 32]>,
        stop_rx: &watch::Receiver<bool>,
    ) -> Result<Unit, GatewayError> {
        if device.nameplate_w <= 0 {
            return Err(GatewayError::Settings("nameplate_w must be positive".to_owned()));
        }
        let key = crate::keys::load(&device.key)?;
        let id = DeviceId::from_verifying_key(&key.verifying_key());
        let spool = Arc::new(Mutex::new(Spool::open(&device.spool_dir, settings.spool_bytes_max)?));
        let state = GatewayState::load(&device.spool_dir);
        let source = Source::from_settings(device.profile.as_deref())?;
        let serial_override = match &device.meter_serial {
            Some(text) => {
                Some(MeterSerial::parse(text).map_err(|e| GatewayError::Settings(format!("meter_serial: {e}")))?)
            }
            None => None,
        };
        let poller = Poller {
            key,
            device: id,
            zone: zone.clone(),
            serial_override,
            tracker: CounterTracker::new(device.nameplate_w, state.counters.clone()),
            state,
            state_dir: device.spool_dir.clone(),
        };
        let cadence = Cadence::new(
            &id,
            settings.publish_interval_ms,
            settings.slot_len_ms,
            settings.boundary_spread_ms,
            settings.interval_ms as f64 * clock.speed,
        );
        let (notify, stats) = (Arc::new(Notify::new()), Arc::new(PublisherStats::default()));
        let publisher_config = PublisherConfig {
            mqtt: device.mqtt.clone(),
            device: id,
            zone: zone.clone(),
            ack_timeout_ms: settings.ack_timeout_ms,
            operator,
        };
        let publisher = tokio::spawn(publisher::run(
            publisher_config,
            spool.clone(),
            notify.clone(),
            stats.clone(),
            stop_rx.clone(),
        ));
        Ok(Unit {
            modbus_unit: device.unit,
            role: device.role,
            source,
            poller,
            spool,
            notify,
            stats,
            polls: Arc::new(PollStats::default()),
            cadence,
            publisher,
        })
    }

    fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            device: self.poller.device,
            stats: self.stats.clone(),
            polls: self.polls.clone(),
            cadence: self.cadence.clone(),
            devices: Vec::new(),
        }
    }

    /// Applies the counter rules to a sample taken at `ts_ms` and spools it when the cadence says so.
    /// Returns the accepted reading (published or not), `None` when the poll failed or the counters
    /// were refused; an error only for disk trouble.
    fn poll(&mut self, sample: Result<Sample, GatewayError>, ts_ms: i64) -> Result<Option<Reading>, GatewayError> {
        let sample = match sample {
            Ok(sample) => sample,
            Err(error) => {
                tracing::warn!(%error, unit = self.modbus_unit, "poll failed");
                return Ok(None);
            }
        };
        let Some(reading) = self.poller.observe(&sample, ts_ms)? else { return Ok(None) };
        self.polls.accepted.fetch_add(1, Ordering::Relaxed);
        // Between publishes a reading is not sent: the counters are cumulative, nothing is lost.
        let Some(why) = self.cadence.due(ts_ms) else { return Ok(Some(reading)) };
        let Some(published) = self.poller.publish(reading, &self.spool)? else { return Ok(None) };
        tracing::debug!(seq = published.seq, unit = self.modbus_unit, ?why, "reading spooled for publishing");
        self.cadence.published(ts_ms);
        self.polls.spooled.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        Ok(Some(published))
    }
}

/// The next battery command, or never when there is no channel.
async fn next_command(commands: &mut Option<mpsc::Receiver<BatteryMode>>) -> Option<BatteryMode> {
    match commands.as_mut() {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(dir: &Path) -> Poller {
        let key = protocol::testing::signing_key(7);
        Poller {
            device: DeviceId::from_verifying_key(&key.verifying_key()),
            key,
            zone: protocol::testing::zone(),
            serial_override: None,
            tracker: CounterTracker::new(10_000, CountersState::default()),
            state: GatewayState::load(dir),
            state_dir: dir.to_path_buf(),
        }
    }

    fn sample(import_wh: i64, export_wh: i64) -> Sample {
        Sample {
            import_wh: Some(import_wh),
            export_wh: Some(export_wh),
            power_w: Some(100),
            meter_modulus_wh: Some(1 << 32),
            serial: Some("SN 7/α".to_owned()),
            ..Sample::default()
        }
    }

    const MINUTE_MS: i64 = 60_000;

    #[test]
    fn a_sample_with_a_battery_becomes_a_version_2_reading_and_impossible_battery_values_are_left_out() {
        use protocol::WireMessage;
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Mutex::new(Spool::open(dir.path(), crate::spool::SPOOL_BYTES_DEFAULT).expect("spool"));
        let mut poller = poller(dir.path());
        let with_battery = Sample {
            battery_soc_permille: Some(653),
            battery_capacity_wh: Some(10_000),
            battery_charge_wh: Some(321_000),
            battery_discharge_wh: Some(289_450),
            ..sample(1_000, 0)
        };
        let reading = poller.accept(&with_battery, MINUTE_MS, &spool).expect("io").expect("accepted");
        assert_eq!(reading.battery_soc_permille, Some(653));
        assert_eq!(reading.battery_capacity_wh, Some(Wh(10_000)));
        assert_eq!((reading.battery_charge_wh, reading.battery_discharge_wh), (Some(Wh(321_000)), Some(Wh(289_450))));
        assert_eq!(reading.version(), protocol::Version::V2);
        let impossible = Sample {
            battery_soc_permille: Some(1_001),
            battery_capacity_wh: Some(0),
            battery_charge_wh: Some(-1),
            ..sample(1_010, 0)
        };
        let reading = poller.accept(&impossible, 2 * MINUTE_MS, &spool).expect("io").expect("still published");
        assert!(!reading.has_battery());
        assert_eq!(reading.import_wh, Wh(1_010));
    }

    #[test]
    fn only_plausible_readings_are_spooled_and_seq_survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Mutex::new(Spool::open(dir.path(), crate::spool::SPOOL_BYTES_DEFAULT).expect("spool"));
        let mut first = poller(dir.path());
        let reading = first.accept(&sample(1_000, 0), MINUTE_MS, &spool).expect("io").expect("accepted");
        assert_eq!(reading.seq, 1);
        assert_eq!(reading.meter_serial.as_str(), "SN-7--", "the serial is made protocol-safe");
        // 10 kW for a minute allows about 180 Wh: a 50 kWh jump is rejected and not spooled.
        assert!(first.accept(&sample(51_000, 0), 2 * MINUTE_MS, &spool).expect("io").is_none());
        // A wrap of the 32-bit counter is published as a continuing count.
        let near_top = (1i64 << 32) - 10;
        assert!(first.accept(&sample(1_100, 0), 3 * MINUTE_MS, &spool).expect("io").is_some());
        drop(first);

        // Restart: state and seq continue.
        let mut second = poller(dir.path());
        let next = second.accept(&sample(1_150, 5), 4 * MINUTE_MS, &spool).expect("io").expect("accepted");
        assert_eq!(next.seq, 3);
        assert_eq!(next.import_wh, Wh(1_150));
        let records = lock(&spool).read_after(0, 10).expect("reads");
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);

        // A 32-bit wrap on a fresh device is continued, not reset.
        let other = tempfile::tempdir().expect("temp dir");
        let other_spool = Mutex::new(Spool::open(other.path(), crate::spool::SPOOL_BYTES_DEFAULT).expect("spool"));
        let mut wrapping = poller(other.path());
        wrapping.accept(&sample(near_top, 0), MINUTE_MS, &other_spool).expect("io").expect("accepted");
        let wrapped = wrapping.accept(&sample(20, 0), 2 * MINUTE_MS, &other_spool).expect("io").expect("accepted");
        assert_eq!(wrapped.import_wh, Wh((1i64 << 32) + 20));
    }
}
