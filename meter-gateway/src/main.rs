//! `meter-gateway`: keygen, probe, run, simulate.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meter_gateway::clock::SimClock;
use meter_gateway::config::GatewaySettings;
use meter_gateway::modbus::{ModbusClient, ModbusUrl};
use meter_gateway::simulator::{self, HomeSpec};
use meter_gateway::{gateway, keys, profile::Profile, sunspec};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "meter-gateway",
    version,
    about = "Reads meters over Modbus/SunSpec and publishes signed readings over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new ed25519 key (64 hex digits, mode 0600) and print its public id.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        key: PathBuf,
    },
    /// Show what a device offers: SunSpec models, manufacturer, serial, current values.
    Probe {
        /// tcp://HOST:PORT or rtu:///dev/ttyUSB0?baud=9600&parity=none&stop_bits=1
        #[arg(long)]
        modbus: String,
        /// Modbus unit (slave) id.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// Read through a register profile (shipped name such as sdm72, sdm120, b23, iem3155; or a path)
        /// instead of SunSpec.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Poll the meter and publish signed readings.
    Run {
        /// TOML settings (see examples/gateway.toml); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// tcp://HOST:PORT or rtu:///dev/ttyUSB0?baud=9600&parity=none&stop_bits=1
        #[arg(long)]
        modbus: Option<String>,
        /// Modbus unit (slave) id.
        #[arg(long)]
        unit: Option<u8>,
        /// Register profile: shipped name (sdm630, sdm72, sdm120, b23, iem3155, em24, sun2000) or a TOML
        /// path; default SunSpec discovery.
        #[arg(long)]
        profile: Option<String>,
        /// mqtt://HOST[:PORT] or mqtts://HOST[:PORT].
        #[arg(long)]
        mqtt: Option<String>,
        /// The operator's public key to pin (64 hex, `GET /api/v1/operator-key`); `[mqtt] operator_key`.
        #[arg(long)]
        operator_key: Option<String>,
        /// Grid zone id ([a-z0-9-], 1-32 characters).
        #[arg(long)]
        zone: Option<String>,
        /// Device key file (meter-gateway keygen); signs the readings.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Poll period in milliseconds (at least 100).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Publish interval in milliseconds (100..=300000, default 30000); a reading is also published
        /// right after every slot boundary. At or below the poll period every poll is published.
        #[arg(long)]
        publish_interval_ms: Option<u64>,
        /// Spool directory (readings waiting for the exchange's answer, last seq, counter state).
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Largest power of the site in W; bounds plausible counter rises.
        #[arg(long)]
        nameplate_w: Option<i64>,
    },
    /// Serve simulated SunSpec homes over Modbus TCP (and one over RTU with --rtu).
    Simulate {
        /// Address of the first home; further homes use the following ports (port 0: free ports).
        #[arg(long, default_value = "127.0.0.1:1502")]
        listen: SocketAddr,
        /// Number of homes.
        #[arg(long, default_value_t = 1)]
        homes: usize,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Seed of the first home; home i uses seed + i (size and weather follow the seed).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also serve the first home over Modbus RTU on this serial device.
        #[arg(long)]
        rtu: Option<String>,
        /// Baud rate of the RTU line.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// Serve the SunSpec float models (113 inverter, 213 meter) instead of 103 and 203.
        #[arg(long)]
        float_models: bool,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tokio_modbus=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = real_main(Cli::parse()).await {
        eprintln!("meter-gateway: {error:#}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { key } => {
            let signing = keys::generate_file(&key)?;
            println!("{}", hex::encode(signing.verifying_key().to_bytes()));
            Ok(())
        }
        Command::Probe { modbus, unit, profile } => probe(&modbus, unit, profile.as_deref()).await,
        Command::Run {
            config,
            modbus,
            unit,
            profile,
            mqtt,
            operator_key,
            zone,
            key,
            interval_ms,
            publish_interval_ms,
            spool,
            nameplate_w,
        } => {
            let mut settings = match &config {
                Some(path) => GatewaySettings::load(path)?,
                None => GatewaySettings::default(),
            };
            if !settings.devices.is_empty() && (unit.is_some() || profile.is_some() || key.is_some()) {
                bail!("--unit, --profile and --key name one device: with [[devices]] set them per device");
            }
            if let Some(url) = modbus {
                settings.modbus.url = url;
            }
            if let Some(unit) = unit {
                settings.modbus.unit = unit;
            }
            if profile.is_some() {
                settings.modbus.profile = profile;
            }
            if let Some(url) = mqtt {
                settings.mqtt.url = url;
            }
            if operator_key.is_some() {
                settings.mqtt.operator_key = operator_key;
            }
            if let Some(zone) = zone {
                settings.zone = zone;
            }
            if let Some(key) = key {
                settings.key = key;
            }
            if let Some(interval_ms) = interval_ms {
                settings.interval_ms = interval_ms;
            }
            if let Some(publish_interval_ms) = publish_interval_ms {
                settings.publish_interval_ms = publish_interval_ms;
            }
            if let Some(spool) = spool {
                settings.spool_dir = spool;
            }
            if let Some(nameplate_w) = nameplate_w {
                settings.nameplate_w = nameplate_w;
            }
            gateway::run(settings, shutdown_signal()).await.context("gateway stopped")
        }
        Command::Simulate { listen, homes, speed, seed, rtu, baud, float_models } => {
            if homes == 0 {
                bail!("--homes must be at least 1");
            }
            let clock = SimClock::sped_up(speed);
            let specs: Vec<HomeSpec> =
                (0..homes as u64).map(|i| HomeSpec { float_models, ..HomeSpec::from_seed(seed + i) }).collect();
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let simulation = simulator::spawn_homes(listen, &specs, clock, stop_rx.clone()).await?;
            for (spec, addr) in specs.iter().zip(&simulation.addrs) {
                println!(
                    "home seed={} serial={} pv_peak_w={:.0} modbus=tcp://{addr}",
                    spec.seed, spec.serial, spec.pv_peak_w
                );
            }
            if let Some(path) = rtu {
                let (service, _) = simulator::home_service(specs[0].clone(), clock);
                println!("home seed={} also on rtu://{path}?baud={baud}", specs[0].seed);
                tokio::spawn(async move {
                    if let Err(error) = simulator::serve_rtu(&path, baud, service, stop_rx).await {
                        eprintln!("meter-gateway: rtu simulator stopped: {error}");
                    }
                });
            }
            shutdown_signal().await;
            let _ = stop.send(true);
            Ok(())
        }
    }
}

async fn probe(url: &str, unit: u8, profile: Option<&str>) -> Result<()> {
    let url = ModbusUrl::parse(url)?;
    println!("device: {url} unit {unit}");
    let mut client = ModbusClient::new(url, unit, Default::default());
    if let Some(name) = profile {
        let profile = Profile::load(name)?;
        let values = profile.read(&mut client).await.context("reading through the profile")?;
        println!(
            "profile: {} ({} {})",
            profile.name,
            profile.manufacturer.unwrap_or_default(),
            profile.model.unwrap_or_default()
        );
        println!("{values:#?}");
        return Ok(());
    }
    let device = sunspec::discover(&mut client).await.context("SunSpec discovery")?;
    println!("SunSpec base address: {}", device.base);
    println!("manufacturer: {}", device.manufacturer.as_deref().unwrap_or("(not implemented)"));
    println!("model: {}", device.model.as_deref().unwrap_or("(not implemented)"));
    println!("version: {}", device.version.as_deref().unwrap_or("(not implemented)"));
    println!("serial: {}", device.serial.as_deref().unwrap_or("(not implemented)"));
    for model in &device.models {
        println!("model {:>5} at {} ({} registers)", model.id, model.start, model.len);
    }
    if let Some(meter) = device.meter() {
        println!("meter {}: {:?}", meter.id, sunspec::read_meter(&mut client, meter).await?);
    }
    if let Some(inverter) = device.inverter() {
        println!("inverter {}: {:?}", inverter.id, sunspec::read_inverter(&mut client, inverter).await?);
    }
    Ok(())
}
