//! Home batteries in readings (issue 15, PROTOCOL.md §4.1, §9), through the real path: version 2
//! readings signed with the home's device key, published to a real broker (embedded rumqttd, and
//! Mosquitto when `MQTT_URL` is set), verified and stored by the exchange (SQLite, and PostgreSQL
//! when `DATABASE_URL` is set). A reading with a battery travels on `gridex/v2/…/readings/…` under
//! the v2 domain tag; each way of putting it in the wrong version is refused with a reason, and the
//! battery counters obey the same plausibility as the grid counters.

mod support;

use diesel::prelude::*;
use ed25519_dalek::{Signer, SigningKey};
use gridex_store::schema::readings;
use protocol::{topics, Reading, ReadingAck, Reason, Reject, Version, Wh, WireMessage};
use serde_json::Value;
use support::*;

const NOW_MS: i64 = 1_790_000_000_000;
/// 3.6 kW allows 60 Wh in a minute, plus 5 % and 2 Wh.
const NAMEPLATE_W: i64 = 3_600;
const MINUTE_MS: i64 = 60_000;

/// The battery of a reading: (charge, discharge, soc, capacity).
type Battery = (i64, i64, u16, i64);

/// What is stored of a reading: seq and its four battery columns.
type StoredBattery = (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

const SETUP: DeviceSetup = DeviceSetup { zone_prefix: "b", seed: 21, nameplate_w: NAMEPLATE_W, now_ms: NOW_MS };

impl DeviceEnv {
    /// A reading of the household's device, with a battery when `battery` is given.
    fn reading(&self, seq: u64, ts_ms: i64, import_wh: i64, battery: Option<Battery>) -> Reading {
        let plain = reading(&self.device, &self.zone, seq, ts_ms, import_wh, 0);
        match battery {
            None => plain,
            Some((charge_wh, discharge_wh, soc_permille, capacity_wh)) => Reading {
                battery_charge_wh: Some(Wh(charge_wh)),
                battery_discharge_wh: Some(Wh(discharge_wh)),
                battery_soc_permille: Some(soc_permille),
                battery_capacity_wh: Some(Wh(capacity_wh)),
                ..plain
            },
        }
    }

    /// Publishes `bytes` on the device's readings topic of `version` and returns the exchange's
    /// answer (rejects and acks are always on the version 1 topics).
    async fn send_on(&mut self, version: Version, bytes: Vec<u8>) -> Result<ReadingAck, Reject> {
        let device = device_hex(&self.device);
        self.answer(topics::readings_in(version, &self.zone, &device), bytes).await
    }

    /// Signs `reading` as the protocol says and publishes it on the topic of its version.
    async fn send(&mut self, reading: Reading) -> Result<ReadingAck, Reject> {
        let topic_version = reading.version();
        self.send_on(topic_version, signed_reading(&self.device, reading)).await
    }

    async fn accepted(&mut self, reading: Reading) {
        let seq = reading.seq;
        if let Err(reject) = self.send(reading).await {
            panic!("reading {seq} was refused: {} ({})", reject.reason, reject.message);
        }
    }

    fn stored(&self) -> Vec<StoredBattery> {
        let mut conn = self.test_db.db.get().expect("a connection");
        readings::table
            .filter(readings::device_id.eq(device_hex(&self.device)))
            .order(readings::seq.asc())
            .select((
                readings::seq,
                readings::battery_charge_wh,
                readings::battery_discharge_wh,
                readings::battery_soc_permille,
                readings::battery_capacity_wh,
            ))
            .load(&mut conn)
            .expect("load readings")
    }
}

/// `reading` signed under the version 1 domain tag whatever its fields, as a gateway that added the
/// battery fields without moving to version 2 would sign it.
fn signed_under_v1_tag(key: &SigningKey, reading: &Reading) -> Vec<u8> {
    let Value::Object(mut object) = serde_json::to_value(reading).expect("serializes") else {
        panic!("a reading is an object")
    };
    object.insert("type".to_owned(), Value::String(Reading::TYPE.to_owned()));
    let signed_bytes = protocol::wire::signing_bytes(Reading::TYPE, &object).expect("restricted values");
    let sig: String = key.sign(&signed_bytes).to_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    object.insert("sig".to_owned(), Value::String(sig));
    protocol::canonical::canonical_bytes(&Value::Object(object)).expect("canonical")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_reading_on_the_v2_topic_is_stored_with_its_battery_and_acknowledged() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        let first = env.reading(1, NOW_MS - 2 * MINUTE_MS, 1_000, Some((5_000, 4_000, 640, 10_000)));
        let ack = env.send(first).await.expect("acknowledged");
        assert_eq!(ack.seq, 1);
        // A reading without the battery (it did not answer this time) goes on the v1 topic as ever.
        env.accepted(env.reading(2, NOW_MS - MINUTE_MS, 1_010, None)).await;
        env.accepted(env.reading(3, NOW_MS, 1_020, Some((5_030, 4_000, 655, 10_000)))).await;
        assert_eq!(
            env.stored(),
            vec![
                (1, Some(5_000), Some(4_000), Some(640), Some(10_000)),
                (2, None, None, None, None),
                (3, Some(5_030), Some(4_000), Some(655), Some(10_000)),
            ]
        );
        // A resend of the stored v2 reading is acknowledged again (the exchange re-reads its payload).
        env.restart().await;
        let again = env.reading(3, NOW_MS, 1_020, Some((5_030, 4_000, 655, 10_000)));
        assert_eq!(env.send(again).await.expect("acknowledged again").seq, 3);
        env
    })
    .await;
}

/// A gateway that adds the battery fields to a version 1 reading: refused with a reason, on either
/// topic, and so is a reading without a battery on the version 2 topic (one reading, one encoding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_in_the_wrong_version_is_refused_with_a_reason() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        let with_battery = env.reading(1, NOW_MS - MINUTE_MS, 1_000, Some((5_000, 4_000, 640, 10_000)));
        let v1_tagged = signed_under_v1_tag(&env.device, &with_battery);
        let refused = env.send_on(Version::V1, v1_tagged.clone()).await.expect_err("refused on v1");
        assert_eq!(refused.reason, Reason::UnknownField, "{}", refused.message);
        let refused = env.send_on(Version::V2, v1_tagged).await.expect_err("refused on v2");
        assert_eq!(refused.reason, Reason::BadSignature, "the v2 tag is not what the device signed");
        // A correctly signed v2 reading on the v1 topic: the v1 parser knows no battery field.
        let v2_signed = signed_reading(&env.device, with_battery);
        let refused = env.send_on(Version::V1, v2_signed).await.expect_err("refused");
        assert_eq!(refused.reason, Reason::UnknownField);
        // A reading without a battery on the v2 topic.
        let plain = signed_reading(&env.device, env.reading(1, NOW_MS - MINUTE_MS, 1_000, None));
        let refused = env.send_on(Version::V2, plain).await.expect_err("refused");
        assert_eq!(refused.reason, Reason::MissingField);
        assert!(env.stored().is_empty(), "nothing stored");
        // The same seq sent correctly is then accepted: none of the refusals used it up.
        env.accepted(env.reading(1, NOW_MS - MINUTE_MS, 1_000, Some((5_000, 4_000, 640, 10_000)))).await;
        env
    })
    .await;
}

/// The attack: a household rolls its battery's charge counter back (to make its battery look as if
/// it had charged less, or to hide a swap of the battery), with a reading without the battery in
/// between and a restart of the exchange, so the rule must hold from what storage says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_counter_rolled_back_is_refused() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        env.accepted(env.reading(1, NOW_MS - 3 * MINUTE_MS, 1_000, Some((5_000, 4_000, 640, 10_000)))).await;
        env.accepted(env.reading(2, NOW_MS - 2 * MINUTE_MS, 1_010, None)).await;
        env.restart().await;
        let rolled_back = env.reading(3, NOW_MS - MINUTE_MS, 1_020, Some((10, 4_000, 640, 10_000)));
        let refused = env.send(rolled_back).await.expect_err("refused");
        assert_eq!(refused.reason, Reason::CounterWentBackwards, "{}", refused.message);
        // Charging beyond the nameplate (3.6 kW for two minutes since the last battery reading).
        let too_much = env.reading(4, NOW_MS - MINUTE_MS, 1_020, Some((5_200, 4_000, 700, 10_000)));
        assert_eq!(env.send(too_much).await.expect_err("refused").reason, Reason::ImplausibleEnergy);
        assert_eq!(
            env.recorded_refusals(2).await,
            vec![(3, "counter_went_backwards".to_owned()), (4, "implausible_energy".to_owned())]
        );
        env.accepted(env.reading(5, NOW_MS, 1_030, Some((5_100, 4_010, 700, 10_000)))).await;
        assert_eq!(env.stored().iter().map(|row| row.0).collect::<Vec<_>>(), vec![1, 2, 5]);
        env
    })
    .await;
}
