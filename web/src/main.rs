//! `gridex`: parse the command line, build the application from settings, run until stopped.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gridex_store::clock::{Clock as _, SystemClock};
use std::path::PathBuf;
use std::time::Duration;
use web::settings::Settings;

#[derive(Debug, Parser)]
#[command(name = "gridex", version, about = "Peer-to-peer energy market: server, API, dashboard and demo")]
struct Cli {
    /// Settings file (TOML); environment variables GRIDEX_… override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A whole market on this machine: broker, simulated homes, exchange, settlement, dashboard.
    Demo {
        #[arg(long, default_value_t = 20)]
        homes: usize,
        /// How much faster than real time the market runs (60: a 15-minute slot every 15 s).
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "./data/demo")]
        data_dir: PathBuf,
        /// With --report: days to simulate (faster than real time, fixed seeds).
        #[arg(long, default_value_t = 7)]
        days: i64,
        /// Instead of serving the demo, simulate every agent variant and write the market report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The homes run the new quoting agent instead of today's limit agent.
        #[arg(long)]
        quoting_agents: bool,
        /// The demo zone ends each slot with a closing auction.
        #[arg(long)]
        closing_auction: bool,
    },
    /// Production: PostgreSQL (DATABASE_URL), an external broker (MQTT_URL), no simulators.
    Serve,
    /// Applies database migrations and exits.
    Migrate,
    /// Creates an ed25519 key file and prints its public key (the account or device id).
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Writes the broker's files from the registry: `passwd`, `acl` and `mosquitto.conf` (Mosquitto
    /// 2). Needs `broker.secret_file`. Run it again, and reload the broker (SIGHUP), after
    /// registering devices or accounts.
    BrokerConfig {
        /// Directory to write the files into.
        #[arg(long)]
        out: PathBuf,
        /// Where the files will be installed (the paths `mosquitto.conf` names); default: --out.
        #[arg(long)]
        install_dir: Option<PathBuf>,
        /// The broker's listener port.
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// The listener's address (default: every interface).
        #[arg(long)]
        bind: Option<String>,
        /// The user Mosquitto runs as (`user` in mosquitto.conf; Mosquitto's default: `mosquitto`).
        /// The files are mode 0600: give them to that user (chown).
        #[arg(long)]
        run_as: Option<String>,
        /// More exchange usernames (one per exchange instance); this instance's `mqtt.username`
        /// (default `gridex-exchange`) is always included.
        #[arg(long = "exchange-user")]
        exchange_users: Vec<String>,
    },
    /// Prints the broker username and password of a device or account (its id) or of an exchange
    /// username, for the installer of that box. Needs `broker.secret_file`.
    BrokerCredentials {
        /// Device id, account id (64 hex digits) or exchange username.
        id: String,
    },
    /// Zones.
    Zone {
        #[command(subcommand)]
        command: ZoneCommand,
    },
    /// Tariffs.
    Tariff {
        #[command(subcommand)]
        command: TariffCommand,
    },
    /// Household accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Metering devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Utility API keys in the database: created, listed and revoked while the server runs.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Creates a random key for a utility and prints it once; only its hash is stored.
    Create {
        /// The utility whose zones the key acts on (zones of account `utility:NAME`).
        #[arg(long)]
        utility: String,
        /// `utility` (the utility API) or `observer`.
        #[arg(long, default_value = "utility")]
        role: String,
        /// Limits the key to these zones of the utility (comma separated); default: all of its
        /// zones, also those created later.
        #[arg(long, value_delimiter = ',')]
        zones: Option<Vec<String>>,
    },
    /// Revokes a key by its id; the running server refuses it from the next request on.
    Revoke { key_id: String },
    /// Lists the stored keys: id, utility, role, created and revoked times (never the keys).
    List,
}

#[derive(Debug, Subcommand)]
enum ZoneCommand {
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 900_000)]
        slot_len_ms: i64,
        /// The utility the zone belongs to (default: the utility named like the zone).
        #[arg(long)]
        utility: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TariffCommand {
    /// Prices in micro-units per kWh.
    Set {
        #[arg(long)]
        zone: String,
        #[arg(long)]
        effective_from_ms: Option<i64>,
        #[arg(long)]
        retail: i64,
        #[arg(long)]
        feed_in: i64,
        #[arg(long)]
        grid_fee: i64,
        #[arg(long, default_value_t = 0)]
        protocol_fee_bps: i64,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    Add {
        /// The account's public key (64 hex digits).
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        zone: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    Add {
        /// The device's public key (64 hex digits).
        #[arg(long)]
        id: String,
        #[arg(long)]
        account: String,
        #[arg(long)]
        zone: String,
        #[arg(long)]
        serial: String,
        #[arg(long)]
        nameplate_w: i64,
        /// What the device meters: grid (the household's connection meter, settled), pv, battery or
        /// submeter (behind the grid meter: reports only).
        #[arg(long, default_value = "grid")]
        role: String,
    },
    /// Registers a meter replacement: the device's readings then continue from the new meter's counters.
    Replace {
        #[arg(long)]
        id: String,
        /// When the meters were swapped (unix ms); after the device's last accepted reading.
        #[arg(long)]
        replaced_at_ms: i64,
        #[arg(long)]
        old_import_wh: i64,
        #[arg(long)]
        old_export_wh: i64,
        #[arg(long)]
        old_pv_wh: Option<i64>,
        #[arg(long, default_value_t = 0)]
        new_import_wh: i64,
        #[arg(long, default_value_t = 0)]
        new_export_wh: i64,
        #[arg(long)]
        new_pv_wh: Option<i64>,
        #[arg(long)]
        new_serial: String,
        /// The utility's reference for the swap (a work order).
        #[arg(long)]
        reference: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,web=info,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR")))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(run(cli)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
    // The embedded broker's thread cannot be stopped; do not wait for stray blocking tasks either.
    runtime.shutdown_timeout(Duration::from_secs(2));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = || Settings::load(cli.config.as_deref()).context("cannot load the settings");
    let now_ms = SystemClock.now_ms();
    match cli.command {
        Command::Demo { homes, days, report: Some(dir), .. } => {
            let options = web::report::ReportOptions { homes, days, dir };
            let summaries = tokio::task::spawn_blocking(move || web::report::run(&options)).await??;
            for summary in summaries {
                println!("{}: savings {}", summary.variant, web::report::euros(summary.household_savings));
            }
            Ok(())
        }
        Command::Demo { homes, speed, port, data_dir, quoting_agents, closing_auction, .. } => {
            let options = web::demo::DemoOptions { homes, speed, port, data_dir, quoting_agents, closing_auction };
            web::demo::run(options).await
        }
        Command::Serve => serve(settings()?).await,
        Command::Migrate => {
            web::application::open_database(&settings()?)?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keygen { key } => {
            anyhow::ensure!(!key.exists(), "{} exists already; not overwriting a key", key.display());
            let signing =
                meter_gateway::keys::generate_file(&key).with_context(|| format!("cannot write {}", key.display()))?;
            println!("{}", hex::encode(signing.verifying_key().to_bytes()));
            Ok(())
        }
        Command::BrokerConfig { out, install_dir, port, bind, run_as, exchange_users } => {
            let settings = settings()?;
            let install_dir = match install_dir {
                Some(dir) => dir,
                None => std::path::absolute(&out).with_context(|| format!("cannot resolve {}", out.display()))?,
            };
            let listener = web::broker_config::ListenerOptions { port, bind, install_dir, run_as };
            let db = web::application::open_database(&settings)?;
            let count = web::broker_config::generate(&db, &settings, &exchange_users, &listener, &out).await?;
            println!("wrote passwd, acl and mosquitto.conf to {} ({count} participants)", out.display());
            Ok(())
        }
        Command::BrokerCredentials { id } => {
            let settings = settings()?;
            let (username, password) = web::broker_config::credentials(&web::broker_config::secret(&settings)?, &id)?;
            println!("username = \"{username}\"\npassword = \"{password}\"");
            Ok(())
        }
        Command::Zone { command: ZoneCommand::Create { id, name, slot_len_ms, utility: None } } => {
            let zone = protocol::ZoneId::parse(&id)?;
            admin(&settings()?, move |conn| web::registry::create_zone(conn, &zone, &name, slot_len_ms, now_ms)).await
        }
        Command::Zone { command: ZoneCommand::Create { id, name, slot_len_ms, utility: Some(utility) } } => {
            let (zone, utility) = (protocol::ZoneId::parse(&id)?, web::settings::UtilityName::parse(&utility)?);
            admin(&settings()?, move |conn| {
                web::registry::create_utility_zone(conn, &zone, &name, slot_len_ms, &utility, now_ms)
            })
            .await
        }
        Command::ApiKey { command } => api_key(&settings()?, command, now_ms).await,
        Command::Tariff {
            command: TariffCommand::Set { zone, effective_from_ms, retail, feed_in, grid_fee, protocol_fee_bps },
        } => {
            let zone = protocol::ZoneId::parse(&zone)?;
            let tariff = web::public::TariffView {
                effective_from_ms: effective_from_ms.unwrap_or(now_ms),
                retail_price_per_kwh: retail,
                feed_in_price_per_kwh: feed_in,
                grid_fee_per_kwh: grid_fee,
                protocol_fee_bps,
                utc_offset_minutes: 0,
                bands: Vec::new(),
            };
            admin(&settings()?, move |conn| web::registry::set_tariff(conn, &zone, &tariff)).await
        }
        Command::Account { command: AccountCommand::Add { id, name, zone } } => {
            let (account, zone) = (protocol::AccountId::parse(&id)?, protocol::ZoneId::parse(&zone)?);
            admin(&settings()?, move |conn| web::registry::register_account(conn, &account, &name, &zone, now_ms)).await
        }
        Command::Device { command: DeviceCommand::Add { id, account, zone, serial, nameplate_w, role } } => {
            let device = web::registry::NewDevice {
                device_id: protocol::DeviceId::parse(&id)?,
                account_id: protocol::AccountId::parse(&account)?,
                zone: protocol::ZoneId::parse(&zone)?,
                meter_serial: protocol::MeterSerial::parse(&serial)?,
                nameplate_w,
            };
            let role = settlement::registry::DeviceRole::parse(&role)
                .ok_or_else(|| anyhow::anyhow!("--role must be grid, pv, battery or submeter"))?;
            admin(&settings()?, move |conn| web::registry::register_device_with_role(conn, &device, role, now_ms)).await
        }
        Command::Device { command: replace @ DeviceCommand::Replace { .. } } => {
            let replacement = replacement(replace)?;
            admin(&settings()?, move |conn| {
                settlement::registry::register_meter_replacement(conn, &replacement, now_ms).map(|_| ())
            })
            .await
        }
    }
}

fn replacement(command: DeviceCommand) -> anyhow::Result<settlement::registry::MeterReplacement> {
    use settlement::registry::MeterCounters;
    let DeviceCommand::Replace {
        id,
        replaced_at_ms,
        old_import_wh,
        old_export_wh,
        old_pv_wh,
        new_import_wh,
        new_export_wh,
        new_pv_wh,
        new_serial,
        reference,
    } = command
    else {
        anyhow::bail!("not a replacement");
    };
    let new = web::utility::NewReplacement {
        replaced_at_ms,
        old: MeterCounters { import_wh: old_import_wh, export_wh: old_export_wh, pv_wh: old_pv_wh },
        new: MeterCounters { import_wh: new_import_wh, export_wh: new_export_wh, pv_wh: new_pv_wh },
        new_meter_serial: protocol::MeterSerial::parse(&new_serial)?,
        reference,
    };
    Ok(new.of(protocol::DeviceId::parse(&id)?))
}

async fn admin<F>(settings: &Settings, work: F) -> anyhow::Result<()>
where
    F: FnOnce(&mut gridex_store::DbConnection) -> Result<(), settlement::registry::RegistryError> + Send + 'static,
{
    let db = web::application::open_database(settings)?;
    web::registry::write(&db, work).await.map_err(|error| anyhow::anyhow!("{}", error.message))?;
    println!("done");
    Ok(())
}

async fn api_key(settings: &Settings, command: ApiKeyCommand, now_ms: i64) -> anyhow::Result<()> {
    use web::api_keys;
    let db = web::application::open_database(settings)?;
    match command {
        ApiKeyCommand::Create { utility, role, zones } => {
            let utility = web::settings::UtilityName::parse(&utility)?;
            let role = web::settings::Role::parse(&role).context("--role is utility or observer")?;
            let zones = zones
                .map(|zones| zones.iter().map(|zone| protocol::ZoneId::parse(zone)).collect::<Result<Vec<_>, _>>())
                .transpose()?;
            for zone in zones.iter().flatten() {
                let (id, account) = (zone.clone(), utility.account());
                let found = db.run(move |conn| Ok(settlement::registry::zone(conn, &id).ok().flatten())).await?;
                anyhow::ensure!(
                    found.is_some_and(|found| found.utility_account == account),
                    "zone {zone} is not a zone of utility {utility}"
                );
            }
            let created =
                db.write(move |conn| api_keys::create(conn, &utility, role, zones.as_deref(), now_ms)).await?;
            eprintln!("key {} created; it is shown once, store it now:", created.key_id);
            println!("{}", created.key.expose());
        }
        ApiKeyCommand::Revoke { key_id } => {
            let id = key_id.clone();
            let revoked = db.write(move |conn| api_keys::revoke(conn, &id, now_ms)).await?;
            anyhow::ensure!(revoked, "no unrevoked key {key_id}");
            println!("key {key_id} revoked");
        }
        ApiKeyCommand::List => {
            println!("key_id\tutility\trole\tzones\tcreated_ms\trevoked_ms");
            for key in db.run(api_keys::list).await? {
                let revoked = key.revoked_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "-".to_owned());
                let zones = key.zones.unwrap_or_else(|| "*".to_owned());
                println!("{}\t{}\t{}\t{zones}\t{}\t{revoked}", key.key_id, key.utility, key.role, key.created_ms);
            }
        }
    }
    Ok(())
}

/// Colours in the log only on a terminal, and never when `NO_COLOR` is set to anything but empty
/// (<https://no-color.org>): a log file or journal gets plain text.
fn colour_logs(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = web::Application::build(settings).await?;
    // On stdout whatever the log filter: the one line a person (or a supervisor) waits for.
    println!("gridex serving on {}", app.url());
    tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
    app.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::colour_logs;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, None));
        assert!(colour_logs(true, Some("".into())), "an empty NO_COLOR does not count (no-color.org)");
        assert!(!colour_logs(true, Some("1".into())));
        assert!(!colour_logs(false, None), "a log file or pipe gets no escape codes");
    }
}
