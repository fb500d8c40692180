//! The publisher sends each spooled reading on the topic of its version (PROTOCOL.md §9): a reading
//! with a home battery on `gridex/v2/{zone}/readings/{device}`, every other one on the version 1
//! topic exactly as before. The real spool and publisher against an embedded rumqttd (and the
//! machine's Mosquitto when `MQTT_URL` is set); a small MQTT client stands in for the exchange.

use meter_gateway::publisher::{self, MqttSettings, PublisherConfig, PublisherStats};
use meter_gateway::spool::{Spool, SPOOL_BYTES_DEFAULT};
use protocol::testing::{operator_key, sample_battery_reading, sample_reading};
use protocol::{topics, DeviceId, Reading, ReadingAck, Signed, Version, ZoneId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

const WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Subscribes to the device's readings topics of both versions and acknowledges what it receives;
/// returns `(topic, seq)` of every arrival that parses on the topic's version.
async fn stand_in_exchange(host: &str, port: u16, zone: &ZoneId, device: DeviceId) -> Arc<Mutex<Vec<(String, u64)>>> {
    let mut options = MqttOptions::new(format!("stand-in-{}", gridex_test_support::free_port()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    for version in Version::ALL {
        client.subscribe(topics::readings_in(version, zone, &device), QoS::AtLeastOnce).await.expect("subscribe");
    }
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let (zone, mut subscribed_tx, mut subacks) = (zone.clone(), Some(subscribed_tx), 0);
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    subacks += 1;
                    if subacks == Version::ALL.len() {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let Some(topics::Inbound::Readings { version, .. }) = topics::parse_inbound(&publish.topic) else {
                        continue;
                    };
                    let Ok(signed) = Signed::<Reading>::parse_on(&publish.payload, version) else { continue };
                    seen.lock().expect("lock").push((publish.topic.clone(), signed.message.seq));
                    let ack = ReadingAck { device, seq: signed.message.seq, ts_ms: signed.message.ts_ms };
                    let ack = Signed::sign_operator(ack, &operator_key()).expect("signs").to_json();
                    let _ = client.try_publish(topics::events(&zone, &device), QoS::AtLeastOnce, false, ack);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT_MAX, subscribed).await.expect("subscribed in time").expect("subscribed");
    arrivals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_reading_is_published_on_the_v2_topic_and_a_plain_one_on_the_v1_topic() {
    for broker in gridex_test_support::brokers() {
        let (host, port) = (broker.host, broker.port);
        let zone = ZoneId::parse(&format!("versions{}", gridex_test_support::free_port())).expect("a zone id");
        let key = protocol::testing::signing_key(port as u8);
        let device = DeviceId::from_verifying_key(&key.verifying_key());
        let arrivals = stand_in_exchange(&host, port, &zone, device).await;

        let dir = tempfile::tempdir().expect("a spool directory");
        let spool = Arc::new(Mutex::new(Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).expect("the spool opens")));
        let plain = Reading { seq: 1, zone: zone.clone(), ..sample_reading(&key) };
        let battery = Reading {
            seq: 2,
            zone: zone.clone(),
            ts_ms: protocol::TimestampMs(plain.ts_ms.0 + 1_000),
            ..sample_battery_reading(&key)
        };
        for reading in [plain, battery] {
            let seq = reading.seq;
            let bytes = Signed::sign(reading, &key).expect("signs").to_json();
            spool.lock().expect("lock").append(seq, &bytes).expect("spooled");
        }
        let config = PublisherConfig {
            mqtt: MqttSettings { url: format!("mqtt://{host}:{port}"), ..MqttSettings::default() },
            device,
            zone: zone.clone(),
            ack_timeout_ms: 30_000,
            operator: Some(operator_key().verifying_key().to_bytes()),
        };
        let (notify, stats) = (Arc::new(Notify::new()), Arc::new(PublisherStats::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(publisher::run(config, spool.clone(), notify.clone(), stats, stop_rx));
        notify.notify_one();

        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while spool.lock().expect("lock").acked_seq() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the readings were not answered");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let _ = stop.send(true);
        task.await.expect("joins").expect("the publisher ran cleanly");
        let arrivals = arrivals.lock().expect("lock").clone();
        assert_eq!(
            arrivals,
            vec![
                (topics::readings_in(Version::V1, &zone, &device), 1),
                (topics::readings_in(Version::V2, &zone, &device), 2),
            ],
            "each reading once, on its version's topic"
        );
    }
}
