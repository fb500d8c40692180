//! `gridex demo`: a whole market on this machine. An embedded MQTT broker, SQLite in the data
//! directory, one zone with a utility, tariffs and a reward schedule, N simulated homes (Modbus
//! simulator + gateway + trading agent each), the exchange, the settlement loop and the web server,
//! all on one simulated clock running `speed` times faster than real time.

use crate::application::Application;
use crate::broker_config::{BrokerSecret, EXCHANGE_USERNAME};
use crate::state::DemoHousehold;
use anyhow::Context as _;
use gridex_store::clock::Clock;
use meter_gateway::agent::AgentSettings;
use meter_gateway::battery::BatterySpec;
use meter_gateway::clock::SimClock;
use meter_gateway::config::GatewaySettings;
use meter_gateway::publisher::MqttLogin;
use meter_gateway::simulator::HomeSpec;
use protocol::{AccountId, DeviceId, MeterSerial, ZoneId};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const DEMO_ZONE: &str = "demo";
/// Homes at most: each is a Modbus server, a gateway, an agent and two MQTT connections.
pub const HOMES_MAX: usize = 200;
/// Gate closure in the demo: five simulated minutes before delivery.
pub const GATE_CLOSURE_MS: i64 = 5 * 60_000;
/// Settlement waits one simulated minute after a slot for late readings.
pub const SETTLEMENT_GRACE_MS: i64 = 60_000;
/// Simulated hour of day (UTC) at which the demo starts: mid-morning, so the sun shines and some
/// homes have surplus to sell from the first minute.
pub const START_HOUR_UTC: i64 = 9;
/// Tariff: retail 0.30, feed-in 0.08, grid fee 0.04 per kWh (micro-units), protocol fee 0.5 %.
pub const RETAIL_PER_KWH: i64 = 300_000;
pub const FEED_IN_PER_KWH: i64 = 80_000;
pub const GRID_FEE_PER_KWH: i64 = 40_000;
pub const PROTOCOL_FEE_BPS: i64 = 50;
/// Longest wait for each group of components on Ctrl-C.
const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the embedded broker to accept connections.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `gridex demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub homes: usize,
    pub speed: f64,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The homes run the quoting agent instead of today's limit agent.
    pub quoting_agents: bool,
    /// The demo zone ends each slot with a closing auction (call phase: the last ten minutes before
    /// gate closure).
    pub closing_auction: bool,
}

/// The demo zone's call phase when the closing auction is on: the whole time a home's agent quotes
/// its nearer slot.
pub const CLOSING_AUCTION_CALL_MS: i64 = 10 * 60_000;

/// The exchange's view of the simulator's clock: one clock for every component.
#[derive(Debug, Clone, Copy)]
pub struct SharedClock(pub SimClock);

impl Clock for SharedClock {
    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts rumqttd on `127.0.0.1:port` on a thread (it has no stop; it ends with the process) and
/// waits until it listens, without authentication: tests of `serve` without `MQTT_URL` use it. The
/// demo's broker is [`start_authenticated_broker`].
pub fn start_broker(port: u16) -> anyhow::Result<()> {
    start_broker_with(port, None)
}

/// The demo's broker: rumqttd as [`start_broker`], but a client must log in as one of `users`
/// with its password derived from `secret` and use its username as client id
/// ([`crate::broker_config::embedded_auth`]). rumqttd 0.20 has no per-topic ACL: a logged-in
/// client may still publish or subscribe anywhere here; production runs Mosquitto with the ACL
/// of `gridex broker-config`.
pub fn start_authenticated_broker(
    port: u16,
    secret: crate::broker_config::BrokerSecret,
    users: impl IntoIterator<Item = String>,
) -> anyhow::Result<()> {
    let mut connections = connection_settings();
    connections.set_auth_handler(crate::broker_config::embedded_auth(secret, users));
    start_broker_with(port, Some(connections))
}

fn connection_settings() -> rumqttd::ConnectionSettings {
    rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

fn start_broker_with(port: u16, connections: Option<rumqttd::ConnectionSettings>) -> anyhow::Result<()> {
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let server = rumqttd::ServerSettings {
        name: "demo".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.unwrap_or_else(connection_settings),
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 2 * HOMES_MAX + 16,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some([("demo".to_owned(), server)].into_iter().collect()),
        ..Default::default()
    };
    std::thread::Builder::new().name("mqtt-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(error) = broker.start() {
            tracing::error!(%error, "the embedded MQTT broker stopped");
        }
    })?;
    let deadline = Instant::now() + BROKER_START_TIMEOUT;
    while std::net::TcpStream::connect(listen).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the embedded MQTT broker did not start on {listen}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Today's (or yesterday's) START_HOUR_UTC, in unix ms.
fn start_of_demo_ms(now_ms: i64) -> i64 {
    let day_ms = 86_400_000;
    let start = now_ms - now_ms.rem_euclid(day_ms) + START_HOUR_UTC * 3_600_000;
    if start > now_ms {
        start - day_ms
    } else {
        start
    }
}

/// A home: its simulated site and the owner's price limits (lowest selling, highest buying price,
/// µ per kWh). Every third home has no solar panels (a pure buyer); the rest differ in size, load and
/// limits. Shared with the market report.
pub(crate) fn home(index: usize) -> (HomeSpec, i64, i64) {
    let seed = index as u64 + 1;
    let mut spec = HomeSpec::from_seed(seed);
    if index % 3 == 2 {
        spec.pv_peak_w = 0.0;
        spec.load_avg_w += 600.0;
    }
    let step = (index % 7) as i64;
    let sell_min = 100_000 + step * 10_000; // 0.10 … 0.16
    let buy_max = 260_000 - step * 10_000; // 0.26 … 0.20
    (spec, sell_min, buy_max)
}

/// Half of the solar homes (the first of every three) have a 10 kWh battery behind the meter.
pub(crate) fn battery(index: usize) -> Option<BatterySpec> {
    index.is_multiple_of(3).then_some(BatterySpec::HOME_10_KWH)
}

fn key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    meter_gateway::keys::load_or_generate(path).with_context(|| format!("key file {}", path.display()))
}

/// Runs the demo until Ctrl-C.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!((1..=HOMES_MAX).contains(&options.homes), "--homes is 1 to {HOMES_MAX}");
    anyhow::ensure!(options.speed >= 1.0 && options.speed <= 1_000.0, "--speed is 1 to 1000");
    let data_dir = &options.data_dir;
    let keys_dir = data_dir.join("keys");
    std::fs::create_dir_all(&keys_dir).with_context(|| format!("cannot create {}", keys_dir.display()))?;
    let agents_dir = data_dir.join("agents");
    std::fs::create_dir_all(&agents_dir).with_context(|| format!("cannot create {}", agents_dir.display()))?;
    // Each run is a fresh market (the simulated clock restarts); keys are kept.
    for stale in ["gridex.sqlite", "gridex.sqlite-wal", "gridex.sqlite-shm"] {
        let _ = std::fs::remove_file(data_dir.join(stale));
    }
    let _ = std::fs::remove_dir_all(data_dir.join("spool"));

    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", options.port))?;

    let sim_clock = SimClock::starting_at(start_of_demo_ms(meter_gateway::clock::wall_clock_ms()), options.speed);
    let clock: Arc<dyn Clock> = Arc::new(SharedClock(sim_clock));
    let db_path = data_dir.join("gridex.sqlite");
    let db = gridex_store::Database::open(&format!("sqlite://{}", db_path.display()), 8)?;

    let zone = ZoneId::parse(DEMO_ZONE)?;
    let now_ms = clock.now_ms();
    let mut households = Vec::new();
    let mut registrations = Vec::new();
    let mut logins = Vec::new();
    for index in 0..options.homes {
        let account_key = key(&keys_dir.join(format!("home-{index:03}-account.key")))?;
        let device_key = key(&keys_dir.join(format!("home-{index:03}-device.key")))?;
        let (spec, _, _) = home(index);
        let account = AccountId::from_verifying_key(&account_key.verifying_key());
        let name = format!("Home {:02}{}", index + 1, if spec.pv_peak_w > 0.0 { " (solar)" } else { "" });
        households.push(DemoHousehold {
            account: account.to_hex(),
            name: name.clone(),
            secret_key_hex: hex::encode(account_key.to_bytes()),
        });
        let device = DeviceId::from_verifying_key(&device_key.verifying_key());
        logins.push((device, account));
        registrations.push((account, device, name, spec));
    }
    let seed_zone = zone.clone();
    crate::registry::write(&db, move |conn| {
        crate::registry::create_zone(conn, &seed_zone, "Demo neighbourhood", 900_000, now_ms)?;
        crate::registry::set_tariff(
            conn,
            &seed_zone,
            &crate::public::TariffView {
                effective_from_ms: 0,
                retail_price_per_kwh: RETAIL_PER_KWH,
                feed_in_price_per_kwh: FEED_IN_PER_KWH,
                grid_fee_per_kwh: GRID_FEE_PER_KWH,
                protocol_fee_bps: PROTOCOL_FEE_BPS,
                utc_offset_minutes: 0,
                bands: Vec::new(),
            },
        )?;
        crate::registry::set_reward_schedule(
            conn,
            &crate::registry::RewardSchedule {
                genesis_ms: now_ms - 86_400_000,
                epoch_len_ms: 86_400_000,
                initial_emission_per_epoch: 10_000_000_000,
                halving_epochs: 365,
                max_supply: 21_000_000_000_000,
            },
        )?;
        for (account, device, name, spec) in registrations {
            crate::registry::register_account(conn, &account, &name, &seed_zone, now_ms)?;
            let device = crate::registry::NewDevice {
                device_id: device,
                account_id: account,
                zone: seed_zone.clone(),
                meter_serial: MeterSerial::parse(&spec.serial).map_err(|error| {
                    settlement::registry::RegistryError::Invalid { field: "meter_serial", message: error.to_string() }
                })?,
                nameplate_w: spec.nameplate_w,
            };
            crate::registry::register_device(conn, &device, now_ms)?;
        }
        Ok(())
    })
    .await
    .map_err(|error| anyhow::anyhow!("cannot register the demo market: {}", error.message))?;

    // The embedded broker lets in only the exchange and the registered homes, each with its
    // password derived from the demo's broker secret and its username as client id.
    let broker_secret = BrokerSecret::new(key(&data_dir.join("broker.secret"))?.to_bytes());
    let mut users = vec![EXCHANGE_USERNAME.to_owned()];
    users.extend(logins.iter().flat_map(|(device, account)| [device.to_hex(), account.to_hex()]));
    let broker_port = free_port()?;
    start_authenticated_broker(broker_port, broker_secret.clone(), users)?;
    let mqtt_url = format!("mqtt://127.0.0.1:{broker_port}");

    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };

    // The exchange, settlement and the web server: the wiring `gridex serve` uses, with the demo's
    // broker, clock, market rules and settlement pace.
    let mut mqtt = rumqttc::MqttOptions::new(EXCHANGE_USERNAME, "127.0.0.1", broker_port);
    mqtt.set_credentials(EXCHANGE_USERNAME, broker_secret.password(EXCHANGE_USERNAME));
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_max_packet_size(64 * 1024, 64 * 1024);
    mqtt.set_inflight(500);
    let closing_auctions = if options.closing_auction {
        vec![exchange::config::ClosingAuction { zone: zone.clone(), call_ms: CLOSING_AUCTION_CALL_MS }]
    } else {
        Vec::new()
    };
    let operator_key = key(&data_dir.join("operator.key"))?;
    // One operator key signs the exchange's messages and settlement's slot roots.
    let exchange_config = exchange::config::ExchangeConfig {
        gate_closure_ms: GATE_CLOSURE_MS,
        closing_auctions,
        ..exchange::config::ExchangeConfig::new(operator_key.clone())
    };
    let mut settlement_config = settlement::SettlementConfig::new(operator_key);
    settlement_config.grace_ms = SETTLEMENT_GRACE_MS;
    settlement_config.poll_interval_ms = 250;
    // The readiness probe checks the embedded broker.
    let mut settings = crate::Settings::default();
    settings.mqtt.url = Some(crate::settings::Secret::new(mqtt_url.clone()));
    settings.api_keys.push(demo_utility_key(data_dir)?);
    let app = Application::builder(settings)
        .database(db)
        .clock(clock, options.speed.round() as u32)
        .listener(listener)
        .mqtt(Some(mqtt))
        .exchange_config(exchange_config)
        .settlement(settlement_config)
        .demo_households(households)
        .build()
        .await?;
    tokio::time::timeout(Duration::from_secs(10), app.exchange().mqtt_subscribed())
        .await
        .context("the exchange did not subscribe to the embedded broker")?;

    // The homes.
    let specs: Vec<HomeSpec> = (0..options.homes)
        .map(|index| {
            let mut spec = home(index).0;
            spec.battery = battery(index);
            spec
        })
        .collect();
    let simulation =
        meter_gateway::simulator::spawn_homes("127.0.0.1:0".parse()?, &specs, sim_clock, stop_rx.clone()).await?;
    // One reading per simulated minute (at least every 100 ms of real time).
    let interval_ms = ((60_000.0 / options.speed) as u64).max(meter_gateway::config::POLL_INTERVAL_MIN_MS);
    // ... and every one of them published, as before: a publish interval not longer than the poll
    // period (in simulated time, rounded down) publishes every poll, so the live view moves each
    // simulated minute.
    let publish_interval_ms = ((interval_ms as f64 * options.speed) as u64)
        .clamp(meter_gateway::cadence::PUBLISH_INTERVAL_MS_MIN, meter_gateway::cadence::PUBLISH_INTERVAL_MS_MAX);
    let mut gateways = Vec::new();
    for (index, address) in simulation.addrs.iter().enumerate() {
        let (spec, sell_min, buy_max) = home(index);
        // With the quoting agents, a home's agent plans its battery and the gateway writes the
        // setpoints to the simulated inverter (SunSpec 124); otherwise the battery keeps the
        // inverter's own self-consumption mode.
        let controlled_battery = options.quoting_agents && battery(index).is_some();
        let mut gateway = GatewaySettings {
            zone: DEMO_ZONE.to_owned(),
            key: keys_dir.join(format!("home-{index:03}-device.key")),
            meter_serial: Some(spec.serial.clone()),
            nameplate_w: spec.nameplate_w,
            interval_ms,
            publish_interval_ms,
            spool_dir: data_dir.join("spool").join(format!("home-{index:03}")),
            agent: Some(AgentSettings {
                key: keys_dir.join(format!("home-{index:03}-account.key")),
                price_per_kwh_sell_min: sell_min,
                price_per_kwh_buy_max: buy_max,
                surplus_share_percent: 80,
                buy_deficit: true,
                slot_len_ms: 900_000,
                gate_closure_ms: GATE_CLOSURE_MS,
                slots_ahead: 2,
                qty_min_wh: 50,
                forecast_window_ms: 30 * 60_000,
                mqtt: Some(MqttLogin {
                    username: logins[index].1.to_hex(),
                    password: broker_secret.password(&logins[index].1.to_hex()),
                }),
                battery: controlled_battery
                    .then(|| meter_gateway::agent::battery::BatterySettings { control: true, ..Default::default() }),
                quoting: options.quoting_agents.then(|| meter_gateway::agent::QuotingSettings {
                    feed_in_price_per_kwh: FEED_IN_PER_KWH,
                    retail_price_per_kwh: RETAIL_PER_KWH,
                    tick_per_kwh: meter_gateway::agent::QUOTE_TICK_PER_KWH_DEFAULT,
                    grid_fee_per_kwh: GRID_FEE_PER_KWH,
                    protocol_fee_bps: PROTOCOL_FEE_BPS,
                    qty_wh_per_slot_max: None,
                    qty_wh_per_day_max: None,
                    spend_per_slot_max: None,
                    spend_per_day_max: None,
                    state_file: Some(agents_dir.join(format!("home-{index:03}.json"))),
                }),
            }),
            clock: Some(sim_clock),
            ..GatewaySettings::default()
        };
        gateway.battery.control = controlled_battery;
        gateway.modbus.url = format!("tcp://{address}");
        gateway.mqtt.url = mqtt_url.clone();
        // Pinned as a household would pin it: the key the demo's exchange signs with.
        gateway.mqtt.operator_key = Some(hex::encode(app.exchange().operator_key()));
        let device = logins[index].0.to_hex();
        gateway.mqtt.password = Some(broker_secret.password(&device));
        gateway.mqtt.username = Some(device);
        let shutdown = stopped(stop_rx.clone());
        gateways.push(tokio::spawn(async move {
            if let Err(error) = meter_gateway::gateway::run(gateway, shutdown).await {
                tracing::warn!(home = index, %error, "gateway stopped");
            }
        }));
    }

    let address = app.address();
    print_guide(address, &options, broker_port);

    tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
    println!("\nStopping the demo…");
    let _ = stop.send(true);
    let started = Instant::now();
    // Gateways flush their spools and agents cancel nothing: bounded, so Ctrl-C is prompt.
    let gateways_done = async {
        for gateway in gateways {
            let _ = gateway.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, gateways_done).await.is_err() {
        tracing::warn!("some gateways did not stop in time");
    }
    app.shutdown().await?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "demo stopped");
    println!("Stopped. Data is in {}", data_dir.display());
    Ok(())
}

/// The file in the data directory whose 64 hex digits are the demo utility's API key (made on the
/// first run, mode 0600, kept like the other keys).
pub const UTILITY_KEY_FILE: &str = "utility-api.key";

/// The demo zone's utility key: the demo zone has no utility of its own, so it belongs to the utility
/// named like it (see `crate::api_keys`). Lets the utility API be tried (and tested) against the demo.
fn demo_utility_key(data_dir: &Path) -> anyhow::Result<crate::settings::ApiKey> {
    let secret = hex::encode(key(&data_dir.join(UTILITY_KEY_FILE))?.to_bytes());
    Ok(crate::settings::ApiKey {
        name: "demo-utility".to_owned(),
        role: crate::settings::Role::Utility,
        utility: Some(DEMO_ZONE.to_owned()),
        key: crate::settings::Secret::new(secret),
    })
}

fn print_guide(address: SocketAddr, options: &DemoOptions, broker_port: u16) {
    let slot_real_s = 900.0 / options.speed;
    println!(
        "\ngridex demo is running: {homes} simulated homes, time runs {speed}× (a 15-minute slot every {slot_real_s:.0} s).\n\
         \n  Dashboard:  http://{address}/\
         \n  API:        http://{address}/api/v1/openapi.json\
         \n  Live feed:  http://{address}/api/v1/stream?zone={DEMO_ZONE}\
         \n  Metrics:    http://{address}/metrics\
         \n  MQTT:       mqtt://127.0.0.1:{broker_port} (embedded broker; logins derived from {data}/broker.secret)\
         \n\nWhat to expect: within seconds the homes' agents place orders for the next slots and trades appear;\
         \nwithin about three slots ({settle_s:.0} s) the first slot is settled with statements and GRID token rewards.\
         \nLog in as a household from the dashboard (logins: http://{address}/api/v1/demo/households).\
         \nThe utility API's key (Authorization: Bearer …) is in {data}/{UTILITY_KEY_FILE}.\
         \nData directory: {data}. Press Ctrl-C to stop.",
        homes = options.homes,
        speed = options.speed,
        data = options.data_dir.display(),
        settle_s = slot_real_s * 3.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_starts_at_nine_utc_never_in_the_future() {
        let day_ms = 86_400_000;
        for now_ms in [day_ms * 20_000 + 3_600_000, day_ms * 20_000 + 10 * 3_600_000] {
            let start = start_of_demo_ms(now_ms);
            assert!(start <= now_ms && now_ms - start < day_ms);
            assert_eq!(start.rem_euclid(day_ms), START_HOUR_UTC * 3_600_000);
        }
    }

    #[test]
    fn homes_differ_and_some_have_no_solar_panels() {
        let homes: Vec<(HomeSpec, i64, i64)> = (0..6).map(home).collect();
        assert!(homes.iter().any(|(spec, _, _)| spec.pv_peak_w == 0.0));
        assert!(homes.iter().any(|(spec, _, _)| spec.pv_peak_w > 0.0));
        for (_, sell_min, buy_max) in &homes {
            assert!((FEED_IN_PER_KWH..=RETAIL_PER_KWH).contains(sell_min));
            assert!((FEED_IN_PER_KWH..=RETAIL_PER_KWH).contains(buy_max));
        }
        assert_ne!(homes[0].1, homes[1].1);
    }

    #[test]
    fn half_of_the_solar_homes_have_a_battery_and_no_home_without_panels_has_one() {
        let solar: Vec<usize> = (0..60).filter(|index| home(*index).0.pv_peak_w > 0.0).collect();
        let with_battery = solar.iter().filter(|index| battery(**index).is_some()).count();
        assert_eq!(with_battery * 2, solar.len());
        assert!((0..60).all(|index| home(index).0.pv_peak_w > 0.0 || battery(index).is_none()));
    }
}
