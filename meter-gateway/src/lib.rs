//! The meter gateway: reads a household's grid meter and inverter over Modbus (TCP or RTU, SunSpec or a
//! TOML register profile), turns their counters into signed [`protocol::Reading`]s, and publishes them
//! over MQTT without ever losing one; optionally runs the home trading agent; and simulates homes.
//!
//! It owns: Modbus transport ([`modbus`]), SunSpec discovery and decoding ([`sunspec`]), register
//! profiles ([`profile`]), SunSpec storage models and battery setpoint writes ([`storage`]), the counter sign convention and plausibility rules ([`counters`]), the
//! on-disk store-and-forward spool ([`spool`]), when a polled reading is published ([`cadence`]), MQTT publishing ([`publisher`]), the trading agent
//! ([`agent`]), the simulator ([`simulator`]), settings ([`config`]), key files ([`keys`]) and the
//! check of the exchange's messages against the pinned operator key ([`operator`]).
//! It must never depend on `exchange` or `settlement`, never publish a reading that is not first in the
//! spool, never drop a spooled reading before the exchange answered it (its `reading_ack` or a final reject;
//! the broker's PUBACK is not enough; except the counted last-resort drop of a full spool), never act on a
//! message from the exchange that does not verify against the pinned operator key, and never sign orders
//! with the device key or readings with the account key.
//!
//! **Sign convention** (see [`counters`]): `import_wh`, `export_wh` and `pv_wh` are separate,
//! non-negative, monotonic counters; `power_w` is positive when importing.
//!
//! **Key files** (see [`keys`]): 64 lowercase hex digits, the 32-byte ed25519 seed, and a newline;
//! mode 0600. The public key is the device id (readings) or the account id (orders).
//!
//! # Library API for running homes in-process (the web demo)
//!
//! - [`clock::SimClock`]: `SimClock::starting_at(origin_sim_ms, speed)`, `now_ms()`; share one value
//!   between the simulator, the gateways and the exchange.
//! - [`simulator::spawn_homes`]`(listen_base, &[HomeSpec], clock, shutdown_rx) -> io::Result<Simulation>`:
//!   one Modbus TCP server per home on consecutive ports (or free ports when the base port is 0);
//!   `Simulation::addrs` says where, `Simulation::state(i)` reads a home's counters.
//! - [`gateway::run`]`(GatewaySettings, shutdown_future) -> Result<(), GatewayError>`: one gateway; set
//!   `settings.clock = Some(clock)` so readings carry simulated time, `settings.agent = Some(..)` to trade.
//! - [`gateway::run_with_battery`]`(settings, shutdown, on_start, Some(mpsc::Receiver<BatteryMode>))`:
//!   a gateway that applies [`battery::BatteryMode`] commands when `settings.battery.control` is true.
//! - [`agent::run`]`(AgentSettings, zone, mqtt, clock, readings_rx, shutdown_rx)`: the agent alone.
//! - [`keys::load_or_generate`]`(path)`: key files for the homes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use meter_gateway::{clock::SimClock, config::GatewaySettings, gateway, keys, simulator::{self, HomeSpec}};
//! let clock = SimClock::sped_up(60.0);
//! let (stop, stop_rx) = tokio::sync::watch::channel(false);
//! let homes = [HomeSpec::from_seed(1), HomeSpec::from_seed(2)];
//! let sim = simulator::spawn_homes("127.0.0.1:0".parse()?, &homes, clock, stop_rx).await?;
//! keys::load_or_generate("/tmp/home0.key".as_ref())?;
//! let mut settings = GatewaySettings { key: "/tmp/home0.key".into(), spool_dir: "/tmp/home0-spool".into(), ..Default::default() };
//! settings.modbus.url = format!("tcp://{}", sim.addrs[0]);
//! settings.clock = Some(clock);
//! let mut stopped = stop.subscribe();
//! gateway::run(settings, async move { let _ = stopped.changed().await; }).await?;
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod agent;
pub mod battery;
pub mod cadence;
pub mod clock;
pub mod config;
pub mod counters;
pub mod gateway;
pub mod keys;
pub mod modbus;
pub mod operator;
pub mod profile;
pub mod publisher;
pub mod simulator;
pub mod spool;
pub mod storage;
pub mod sunspec;

pub use clock::SimClock;
pub use config::GatewaySettings;
