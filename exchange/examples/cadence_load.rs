//! Arrival-rate load at the gateways' default cadence (meter-gateway's `cadence`): HOMES registered
//! devices each publish a signed reading every INTERVAL_S seconds at their own offset, and once right
//! after a slot boundary in the middle of the run at an offset below SPREAD_S, paced in real time
//! (not a flood), through a real broker into the exchange (this process, its real pipeline and
//! database). It checks zero loss and no rejects, and reports the backlog (published, not yet stored)
//! and how long after the last publish everything was stored. Then, in the same run and process, a
//! flood of readings as fast as a window of 500 allows gives the reference: the readings/s this
//! machine stores now.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test MQTT_URL=mqtt://127.0.0.1:18830 \
//!   cargo run --release -p exchange --example cadence_load -- [HOMES] [SECONDS] [INTERVAL_S] [SPREAD_S] [SENDERS]
//! ```
//! Defaults: 100 000 homes, 60 s, 30 s, 10 s, 50 MQTT connections (each carries the readings of
//! HOMES / SENDERS homes). Run Mosquitto with `examples/mosquitto-load.conf` (its default queue limit
//! drops messages, see BENCHMARKS.md); without `MQTT_URL` the embedded rumqttd is used.

#[path = "../tests/support/mod.rs"]
mod support;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, MarketEvent};
use gridex_store::clock::SystemClock;
use gridex_store::schema::readings;
use gridex_store::testing::TestDb;
use protocol::{topics, AccountId, DeviceId, MeterSerial, Reason, ZoneId};
use settlement::registry::{self, AccountKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Large enough that the exchange's ingest queue never sheds load in this run.
const INGEST_QUEUE_LEN: usize = 65_536;
/// Devices registered per database transaction.
const REGISTER_BATCH: usize = 1_000;
/// Readings of the reference flood, and their senders.
const FLOOD_DEVICES: usize = 500;
const FLOOD_EACH: u64 = 60;
/// Messages outstanding at once during the flood (as `load`).
const FLOOD_WINDOW: usize = 500;
/// Longest wait for the backlog to clear before the run counts as failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

fn key(kind: u8, index: usize) -> SigningKey {
    let mut seed = [kind; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// `bytes` of the device id as a number below `modulus`: the gateway's per-device offset.
fn offset_ms(device: &DeviceId, bytes: std::ops::Range<usize>, modulus: u64) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&device.as_bytes()[bytes]);
    (u64::from_le_bytes(word) % modulus) as i64
}

fn register(db: &gridex_store::Database, zone: &ZoneId, devices: &[SigningKey], first_index: usize) {
    let serial = MeterSerial::parse("SN-1").expect("a valid literal");
    for (chunk_index, chunk) in devices.chunks(REGISTER_BATCH).enumerate() {
        db.write_blocking(|conn| {
            for (index, device_key) in chunk.iter().enumerate() {
                let account_key = key(2, first_index + chunk_index * REGISTER_BATCH + index);
                let account = AccountId::from_verifying_key(&account_key.verifying_key());
                let device = DeviceId::from_verifying_key(&device_key.verifying_key());
                registry::register_account(conn, &account.to_hex(), AccountKind::Household, "load", Some(zone), 0)
                    .expect("account registered");
                registry::register_device(conn, &device, &account, zone, &serial, 20_000, 0)
                    .expect("device registered");
            }
            Ok(())
        })
        .expect("registry written");
    }
}

fn stored(test_db: &TestDb) -> i64 {
    let Ok(mut conn) = test_db.db.get() else { return 0 };
    readings::table.count().get_result(&mut conn).unwrap_or(0)
}

/// One connection's schedule: (ms after the start, topic, payload), in time order.
type Schedule = Vec<(i64, String, Vec<u8>)>;

/// Publishes each sender's schedule at its times over its own connection. Returns the latest any
/// publish left after its planned time (ms): how well the senders kept the pace.
async fn publish_paced(broker: &BrokerAddr, schedules: Vec<Schedule>, start: Instant, sent: Arc<AtomicU64>) -> i64 {
    let mut tasks = Vec::new();
    for schedule in schedules {
        let mut options = mqtt_options(broker, &format!("cadence-{}", unique()));
        options.set_inflight(1_000);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let acked_rx = drive_publisher(eventloop, schedule.len(), "publisher");
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut late_ms_max = 0i64;
            for (at_ms, topic, payload) in schedule {
                let due = start + Duration::from_millis(at_ms as u64);
                tokio::time::sleep_until(due.into()).await;
                late_ms_max = late_ms_max.max(due.elapsed().as_millis() as i64);
                client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
                sent.fetch_add(1, Ordering::Relaxed);
            }
            let _ = acked_rx.await;
            let _ = client.disconnect().await;
            late_ms_max
        }));
    }
    let mut late_ms_max = 0;
    for task in tasks {
        late_ms_max = late_ms_max.max(task.await.expect("sender"));
    }
    late_ms_max
}

#[tokio::main]
async fn main() {
    // The exchange's warnings (a lost broker link, shed load) on stderr; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect();
    let homes = numbers.first().copied().unwrap_or(100_000) as usize;
    let seconds = numbers.get(1).copied().unwrap_or(60) as i64;
    let interval_ms = numbers.get(2).copied().unwrap_or(30) * 1_000;
    let spread_ms = numbers.get(3).copied().unwrap_or(10) * 1_000;
    let senders = (numbers.get(4).copied().unwrap_or(50) as usize).max(1);
    let broker = external_broker().unwrap_or_else(embedded_broker);

    let test_db = TestDb::any();
    let zone = ZoneId::parse(&format!("c{}", unique())).expect("a zone id");
    seed_zone(&test_db.db, &zone, 900_000);
    let registering = Instant::now();
    let devices: Vec<SigningKey> = (0..homes).map(|index| key(1, index)).collect();
    register(&test_db.db, &zone, &devices, 0);
    let flood_devices: Vec<SigningKey> = (0..FLOOD_DEVICES).map(|index| key(3, index)).collect();
    register(&test_db.db, &zone, &flood_devices, homes);
    eprintln!("registered {} devices in {:.0} s", homes + FLOOD_DEVICES, registering.elapsed().as_secs_f64());

    // The schedule: interval publishes at each home's offset, and one boundary reading each at the
    // middle of the run plus the home's boundary offset. Signed before anything is timed.
    let signing = Instant::now();
    let boundary_ms = seconds * 1_000 / 2;
    // Time to sign everything (well over 10 000 readings/s in a release build) and start the exchange.
    let lead_ms = 10_000 + (homes as i64 * (seconds * 1_000 / interval_ms as i64 + 1)) / 10;
    let start_wall_ms = chrono::Utc::now().timestamp_millis() + lead_ms;
    let mut schedules: Vec<Schedule> = vec![Vec::new(); senders];
    let (mut interval_total, mut boundary_total) = (0u64, 0u64);
    for (index, device_key) in devices.iter().enumerate() {
        let device = DeviceId::from_verifying_key(&device_key.verifying_key());
        let topic = topics::readings(&zone, &device.to_hex());
        let mut times: Vec<(i64, bool)> = (0..)
            .map(|k| offset_ms(&device, 0..8, interval_ms) + k * interval_ms as i64)
            .take_while(|at| *at < seconds * 1_000)
            .map(|at| (at, false))
            .collect();
        times.push((boundary_ms + offset_ms(&device, 8..16, spread_ms.max(1)), true));
        times.sort();
        // A boundary reading that falls on an interval reading's millisecond goes a millisecond later:
        // a gateway's readings have strictly increasing timestamps (the exchange refuses the second).
        for next in 1..times.len() {
            if times[next].0 <= times[next - 1].0 {
                times[next].0 = times[next - 1].0 + 1;
            }
        }
        for (seq, (at_ms, boundary)) in times.into_iter().enumerate() {
            let seq = seq as u64 + 1;
            let payload =
                signed_reading(device_key, reading(device_key, &zone, seq, start_wall_ms + at_ms, seq as i64, 0));
            schedules[index % senders].push((at_ms, topic.clone(), payload));
            if boundary {
                boundary_total += 1;
            } else {
                interval_total += 1;
            }
        }
    }
    for schedule in &mut schedules {
        schedule.sort_by_key(|(at, _, _)| *at);
    }
    let total = interval_total + boundary_total;
    eprintln!("signed {total} readings in {:.0} s", signing.elapsed().as_secs_f64());

    let config =
        ExchangeConfig { ingest_queue_len: INGEST_QUEUE_LEN, ..ExchangeConfig::new(protocol::testing::operator_key()) };
    let exchange = service::start(
        config,
        test_db.db.clone(),
        Arc::new(SystemClock),
        Some(mqtt_options(&broker, &format!("exchange-{}", unique()))),
    )
    .await
    .expect("start");
    exchange.mqtt_subscribed().await;
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let redelivered = Arc::new(AtomicU64::new(0));
    let flood_window = Arc::new(tokio::sync::Semaphore::new(FLOOD_WINDOW));
    {
        let (accepted, rejected, redelivered, flood_window) =
            (accepted.clone(), rejected.clone(), redelivered.clone(), flood_window.clone());
        let mut events = exchange.subscribe();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    // The broker redelivers what the exchange had not acknowledged when its link
                    // dropped (a held-queue overflow reconnects): a copy of a reading already
                    // stored is refused as such. Not a loss (the stored count says), but counted.
                    Ok(MarketEvent::Rejected { reject, .. })
                        if matches!(
                            reject.reason,
                            Reason::Duplicate | Reason::Replayed | Reason::TimestampNotIncreasing
                        ) =>
                    {
                        redelivered.fetch_add(1, Ordering::Relaxed);
                        flood_window.add_permits(1);
                    }
                    Ok(MarketEvent::Rejected { reject, .. }) => {
                        eprintln!("rejected: {reject:?}");
                        rejected.fetch_add(1, Ordering::Relaxed);
                        flood_window.add_permits(1);
                    }
                    Ok(MarketEvent::ReadingAccepted { .. }) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        flood_window.add_permits(1);
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        accepted.fetch_add(missed, Ordering::Relaxed);
                        flood_window.add_permits(missed as usize);
                    }
                    Err(_) => break,
                }
            }
        });
    }

    // The paced phase, with the backlog sampled every 100 ms.
    let wait_ms = start_wall_ms - chrono::Utc::now().timestamp_millis();
    assert!(wait_ms > 0, "signing took longer than planned; lead_ms too short");
    let start = Instant::now() + Duration::from_millis(wait_ms as u64);
    let sent = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sent, accepted) = (sent.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut backlog_max = (0u64, 0i64);
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tick += 1;
                let backlog = sent.load(Ordering::Relaxed).saturating_sub(accepted.load(Ordering::Relaxed));
                if tick.is_multiple_of(50) {
                    eprintln!(
                        "{:>4} s: sent {}, accepted {}, backlog {backlog}",
                        tick / 10,
                        sent.load(Ordering::Relaxed),
                        accepted.load(Ordering::Relaxed)
                    );
                }
                if backlog > backlog_max.0 {
                    backlog_max = (backlog, start.elapsed().as_millis() as i64);
                }
                if sent.load(Ordering::Relaxed) >= total && accepted.load(Ordering::Relaxed) >= total {
                    return backlog_max;
                }
            }
        })
    };
    let late_ms_max = publish_paced(&broker, schedules, start, sent.clone()).await;
    let last_publish = Instant::now();
    // The accepted events say when to look; the database has the final word (a count of a large
    // table is not cheap, so it is not polled).
    while accepted.load(Ordering::Relaxed) < total || (stored(&test_db) as u64) < total {
        assert!(last_publish.elapsed() < DRAIN_TIMEOUT, "only {} of {total} stored", stored(&test_db));
        assert_eq!(rejected.load(Ordering::Relaxed), 0, "the exchange rejected readings");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_ms = last_publish.elapsed().as_millis();
    let (backlog_max, backlog_at_ms) = sampler.await.expect("sampler");
    assert_eq!(stored(&test_db) as u64, total, "zero loss");
    assert_eq!(rejected.load(Ordering::Relaxed), 0, "no rejects");

    let steady = homes as f64 / (interval_ms as f64 / 1_000.0);
    let burst = steady + homes as f64 / (spread_ms.max(1) as f64 / 1_000.0);
    println!(
        "{} / {:?}: {homes} homes, every {} s + boundary spread over {} s, {seconds} s: {total} readings \
         ({interval_total} interval, {boundary_total} boundary), zero loss, no rejects",
        broker.name,
        test_db.db.backend(),
        interval_ms / 1_000,
        spread_ms / 1_000
    );
    println!(
        "  arrival {steady:.0}/s steady, {burst:.0}/s for {} s after the boundary; \
         senders at most {late_ms_max} ms behind schedule",
        spread_ms / 1_000,
    );
    println!(
        "  backlog (published, not yet stored) at most {backlog_max} readings, {:.1} s after the boundary; \
         everything stored {drain_ms} ms after the last publish",
        (backlog_at_ms - boundary_ms) as f64 / 1_000.0
    );
    // The reference, in the same process: a flood of readings, a window of 500 outstanding.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let flood: Vec<Schedule> = flood_devices
        .iter()
        .map(|device_key| {
            let topic = topics::readings(&zone, &device_hex(device_key));
            (1..=FLOOD_EACH)
                .map(|seq| {
                    let ts_ms = now_ms - (FLOOD_EACH - seq) as i64 * 1_000;
                    (
                        0,
                        topic.clone(),
                        signed_reading(device_key, reading(device_key, &zone, seq, ts_ms, seq as i64, 0)),
                    )
                })
                .collect()
        })
        .collect();
    let flood_total = FLOOD_DEVICES as u64 * FLOOD_EACH;
    let before = stored(&test_db) as u64;
    let accepted_before = accepted.load(Ordering::Relaxed);
    let flood_started = Instant::now();
    let mut tasks = Vec::new();
    for schedule in flood {
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(mqtt_options(&broker, &format!("flood-{}", unique())), 1_000);
        tokio::spawn(
            async move { while !matches!(eventloop.poll().await, Err(rumqttc::ConnectionError::RequestsDone)) {} },
        );
        let window = flood_window.clone();
        tasks.push(tokio::spawn(async move {
            for (_, topic, payload) in schedule {
                window.acquire().await.expect("window").forget();
                client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("flood sender"));
    }
    while accepted.load(Ordering::Relaxed) < accepted_before + flood_total
        || (stored(&test_db) as u64) < before + flood_total
    {
        assert!(
            flood_started.elapsed() < DRAIN_TIMEOUT,
            "flood not stored: {} of {flood_total} accepted, {} stored, {} refused as copies",
            accepted.load(Ordering::Relaxed) - accepted_before,
            stored(&test_db) as u64 - before,
            redelivered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flood_rate = flood_total as f64 / flood_started.elapsed().as_secs_f64();
    assert_eq!(rejected.load(Ordering::Relaxed), 0, "no rejects");
    for client in clients {
        let _ = client.disconnect().await;
    }
    exchange.shutdown().await;

    println!(
        "  reference (same process, flood of {flood_total} at window {FLOOD_WINDOW}): {flood_rate:.0} readings/s; \
         steady arrival {:.2}x it, after the boundary {:.2}x",
        steady / flood_rate,
        burst / flood_rate
    );
    println!(
        "  copies redelivered by the broker after a reconnect and refused as already stored: {}",
        redelivered.load(Ordering::Relaxed)
    );
}
