//! The gateway's side of "nothing acknowledged is lost": a reading leaves the spool on the
//! exchange's answer (`reading_ack` or a final reject), not on the broker's PUBACK, and one left
//! unanswered is published again. The real spool and publisher against an embedded rumqttd (and the
//! machine's Mosquitto when `MQTT_URL` is set); a small MQTT client stands in for the exchange (this
//! crate never depends on it; `exchange/tests/spool_until_ack.rs` runs the real one).

mod common;

use ed25519_dalek::SigningKey;
use meter_gateway::counters::{CounterTracker, CountersState};
use meter_gateway::gateway::{GatewayState, Poller, Sample};
use meter_gateway::publisher::{self, MqttSettings, PublisherConfig, PublisherStats};
use meter_gateway::spool::{Spool, SPOOL_BYTES_DEFAULT};
use protocol::testing::operator_key;
use protocol::{topics, DeviceId, Reading, ReadingAck, Reason, Reject, Signed, TimestampMs, ZoneId};
use rumqttc::QoS;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Readings the test takes.
const READINGS: u64 = 6;
/// The reading the stand-in exchange refuses for good.
const REFUSED_SEQ: u64 = 2;
/// The reading it leaves unanswered the first time it arrives.
const IGNORED_SEQ: u64 = 4;
/// Short, so the resend comes quickly.
const ACK_TIMEOUT_MS: u64 = 200;
const WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The embedded broker, plus the machine's Mosquitto when `MQTT_URL` is set.
fn brokers() -> Vec<(String, u16)> {
    gridex_test_support::brokers().into_iter().map(|broker| (broker.host, broker.port)).collect()
}

/// Stands in for the exchange: answers each reading it receives with a `reading_ack`, except that it
/// refuses [`REFUSED_SEQ`] as `timestamp_too_old` and ignores the first copy of [`IGNORED_SEQ`].
/// Returns how often each seq arrived.
async fn stand_in_exchange(host: &str, port: u16, zone: &ZoneId, device: DeviceId) -> Arc<Mutex<HashMap<u64, u32>>> {
    let (client, mut publishes) =
        common::subscribed(host, port, "stand-in", topics::readings(zone, &device), 256).await;
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let seen = arrivals.clone();
    let zone = zone.clone();
    tokio::spawn(async move {
        while let Some(publish) = publishes.recv().await {
            let Ok(signed) = Signed::<Reading>::parse(&publish.payload) else { continue };
            let seq = signed.message.seq;
            let copies = {
                let mut seen = seen.lock().expect("lock");
                let copies = seen.entry(seq).or_insert(0);
                *copies += 1;
                *copies
            };
            let (topic, answer) = if seq == REFUSED_SEQ {
                let reject = Reject {
                    of: "reading".to_owned(),
                    seq: Some(seq),
                    reason: Reason::TimestampTooOld,
                    message: "refused for good".to_owned(),
                    ts_ms: TimestampMs(0),
                };
                (
                    topics::rejects(&zone, &device),
                    Signed::sign_operator(reject, &operator_key()).expect("signs").to_json(),
                )
            } else if seq == IGNORED_SEQ && copies == 1 {
                continue;
            } else {
                let ack = ReadingAck { device, seq, ts_ms: signed.message.ts_ms };
                (topics::events(&zone, &device), Signed::sign_operator(ack, &operator_key()).expect("signs").to_json())
            };
            let _ = client.try_publish(topic, QoS::AtLeastOnce, false, answer);
        }
    });
    arrivals
}

fn poller(key: &SigningKey, zone: &ZoneId, dir: &std::path::Path) -> Poller {
    Poller {
        key: key.clone(),
        device: DeviceId::from_verifying_key(&key.verifying_key()),
        zone: zone.clone(),
        serial_override: None,
        tracker: CounterTracker::new(10_000, CountersState::default()),
        state: GatewayState::load(dir),
        state_dir: dir.to_path_buf(),
    }
}

/// The attack: a reading the exchange never answered (lost after the broker's PUBACK). The spool
/// used to let it go on the PUBACK, so it was never sent again. Now it stays until its answer, is
/// published again after the timeout, and a reading refused for good does not hold the spool up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_reading_is_published_again_until_the_exchange_answers() {
    for (host, port) in brokers() {
        let zone = ZoneId::parse(&format!("spool{}", gridex_test_support::free_port())).expect("a zone id");
        let key = SigningKey::from_bytes(&[port as u8; 32]);
        let device = DeviceId::from_verifying_key(&key.verifying_key());
        let arrivals = stand_in_exchange(&host, port, &zone, device).await;
        let dir = tempfile::tempdir().expect("a spool directory");
        let spool = Arc::new(Mutex::new(Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).expect("the spool opens")));
        let config = PublisherConfig {
            mqtt: MqttSettings { url: format!("mqtt://{host}:{port}"), ..MqttSettings::default() },
            device,
            zone: zone.clone(),
            ack_timeout_ms: ACK_TIMEOUT_MS,
            operator: Some(operator_key().verifying_key().to_bytes()),
        };
        let (notify, stats) = (Arc::new(Notify::new()), Arc::new(PublisherStats::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(publisher::run(config, spool.clone(), notify.clone(), stats, stop_rx));

        let mut poller = poller(&key, &zone, dir.path());
        for seq in 1..=READINGS {
            let sample = Sample { import_wh: Some(seq as i64), export_wh: Some(0), ..Sample::default() };
            let ts_ms = 1_790_000_000_000 + seq as i64 * 1_000;
            poller.accept(&sample, ts_ms, &spool).expect("spooled").expect("plausible");
            notify.notify_one();
        }
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while arrivals.lock().expect("lock").get(&IGNORED_SEQ).copied().unwrap_or(0) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the unanswered reading was not published again");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        while spool.lock().expect("lock").acked_seq() < READINGS {
            assert!(tokio::time::Instant::now() < deadline, "the spool kept answered readings");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let _ = stop.send(true);
        task.await.expect("joins").expect("the publisher ran cleanly");
        // Reading 2 was only ever refused, so the cursor passed it on the reject alone.
        let mut spool = spool.lock().expect("lock");
        let acked = spool.acked_seq();
        assert!(spool.read_after(acked, 1).expect("reads").is_empty(), "the spool ends empty");
    }
}
