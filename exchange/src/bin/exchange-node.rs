//! A standalone exchange process for the crash-recovery test and the load tool: runs the service
//! against a database and a broker until stdin says `quit` (or the process is killed).
//!
//! ```text
//! exchange-node --db sqlite://data/gridex.sqlite --mqtt 127.0.0.1:1883
//! ```
//! Prints `ready` once subscribed. On stdin, `dump` prints `dump <json>`: every open book's resting
//! orders in priority order; `zones` prints `zones <z1> <z2> …` (the zones it owns now); `quit` shuts
//! down cleanly. On PostgreSQL several nodes share the zones by lease (`--instance-id`, default the
//! client id, so a restarted node takes its zones back at once; `--lease-ttl-ms`,
//! `--lease-renew-interval-ms`): kill one with SIGKILL or stop it with SIGSTOP and the others take
//! its zones within the failover bound.

use anyhow::{bail, Context};
use exchange::config::ExchangeConfig;
use exchange::service;
use gridex_store::clock::SystemClock;
use gridex_store::Database;
use protocol::{Side, ZoneId};
use std::io::Write;
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

/// Connections in the pool: the writer, the zone owners and key look-ups.
const POOL_SIZE: u32 = 8;

#[derive(serde::Serialize)]
struct BookJson {
    zone: String,
    slot: i64,
    /// `[account, nonce, side, price, open_qty, filled_qty]` in priority order.
    orders: Vec<(String, u64, &'static str, i64, i64, i64)>,
}

/// The command line.
struct Args {
    db: String,
    mqtt: String,
    client_id: String,
    zones: Vec<ZoneId>,
    instance_id: Option<String>,
    lease_ttl_ms: Option<u64>,
    lease_renew_interval_ms: Option<u64>,
}

fn args() -> anyhow::Result<Args> {
    let mut db = None;
    let mut mqtt = None;
    let mut client_id = "gridex-exchange-node".to_owned();
    let mut zones = Vec::new();
    let (mut instance_id, mut lease_ttl_ms, mut lease_renew_interval_ms) = (None, None, None);
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>, name: &str| -> anyhow::Result<u64> {
        value.with_context(|| format!("{name} needs a value"))?.parse().with_context(|| format!("{name} is a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => db = args.next(),
            "--mqtt" => mqtt = args.next(),
            "--client-id" => client_id = args.next().context("--client-id needs a value")?,
            "--zone" => zones.push(ZoneId::parse(&args.next().context("--zone needs a value")?)?),
            "--instance-id" => instance_id = Some(args.next().context("--instance-id needs a value")?),
            "--lease-ttl-ms" => lease_ttl_ms = Some(number(args.next(), "--lease-ttl-ms")?),
            "--lease-renew-interval-ms" => {
                lease_renew_interval_ms = Some(number(args.next(), "--lease-renew-interval-ms")?)
            }
            other => bail!(
                "unknown argument {other}; usage: exchange-node --db URL --mqtt HOST:PORT [--client-id ID] [--zone Z]… \
                 [--instance-id ID] [--lease-ttl-ms MS] [--lease-renew-interval-ms MS]"
            ),
        }
    }
    Ok(Args {
        db: db.context("--db URL is required")?,
        mqtt: mqtt.context("--mqtt HOST:PORT is required")?,
        client_id,
        zones,
        instance_id,
        lease_ttl_ms,
        lease_renew_interval_ms,
    })
}

#[tokio::main]
async fn main() {
    // Warnings and errors on stderr (stdout carries the protocol above); `RUST_LOG` for more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(error) = run().await {
        eprintln!("exchange-node: {error:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let Args { db: db_url, mqtt, client_id, zones, instance_id, lease_ttl_ms, lease_renew_interval_ms } = args()?;
    let (host, port) = mqtt.rsplit_once(':').context("--mqtt is HOST:PORT")?;
    let port: u16 = port.parse().context("--mqtt port")?;
    let db = Database::open(&db_url, POOL_SIZE).context("open the database")?;
    // Stable across restarts: the exchange's MQTT session is persistent (see `service`).
    let mut options = rumqttc::MqttOptions::new(client_id.clone(), host, port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    options.set_inflight(500);
    let defaults = ExchangeConfig::new(protocol::testing::operator_key());
    let config = ExchangeConfig {
        zones,
        // Like its MQTT session, its leases outlive a restart under the same name.
        instance_id: instance_id.unwrap_or(client_id),
        lease_ttl_ms: lease_ttl_ms.unwrap_or(defaults.lease_ttl_ms),
        lease_renew_interval_ms: lease_renew_interval_ms.unwrap_or(defaults.lease_renew_interval_ms),
        // Its senders are the crash test's and the load tool's few accounts, which send as fast as
        // they can by design: no per-account rate limit, so every command they send is applied.
        order_commands_per_account_per_s: u32::MAX,
        order_commands_burst: u32::MAX,
        // A test tool: it signs with the public test operator key (seed 9), which its tests pin.
        ..defaults
    };
    let exchange =
        service::start(config, db, Arc::new(SystemClock), Some(options)).await.context("start the exchange")?;
    exchange.mqtt_subscribed().await;
    println!("ready");
    std::io::stdout().flush()?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "dump" => {
                let books: Vec<BookJson> = exchange
                    .resting_orders()
                    .await
                    .into_iter()
                    .map(|dump| BookJson {
                        zone: dump.zone.to_string(),
                        slot: dump.slot.start_ms(),
                        orders: dump
                            .orders
                            .iter()
                            .map(|order| {
                                let side = if order.side == Side::Buy { "buy" } else { "sell" };
                                (
                                    order.account.to_hex(),
                                    order.nonce,
                                    side,
                                    order.price.0,
                                    order.open_qty.0,
                                    order.filled_qty.0,
                                )
                            })
                            .collect(),
                    })
                    .collect();
                println!("dump {}", serde_json::to_string(&books)?);
                std::io::stdout().flush()?;
            }
            "zones" => {
                let zones: Vec<String> = exchange.zones().iter().map(ToString::to_string).collect();
                println!("zones {}", zones.join(" "));
                std::io::stdout().flush()?;
            }
            "quit" => break,
            _ => {}
        }
    }
    exchange.shutdown().await;
    println!("bye");
    Ok(())
}
