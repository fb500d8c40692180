//! Attacks of a household on its own meter readings (issue 11), through the real path: readings
//! signed with the home's own device key, published to a real broker (embedded rumqttd, and
//! Mosquitto when `MQTT_URL` is set), verified and stored by the exchange (SQLite, and PostgreSQL
//! when `DATABASE_URL` is set). Each test failed on the exchange before the fix.

mod support;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use gridex_store::schema::{devices, reading_rejections, readings};
use gridex_store::testing::TestDb;
use protocol::{topics, DeviceId, MeterSerial, ReadingAck, Reason, Reject, ZoneId};
use settlement::registry::{self, MeterCounters, MeterReplacement, RegistryError};
use support::*;

/// The exchange's clock: a fixed instant.
const NOW_MS: i64 = 1_790_000_000_000;
/// 10 kW allows 166 Wh in a minute (plus the tolerance), 10 000 Wh in an hour.
const NAMEPLATE_W: i64 = 10_000;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 3_600_000;

/// The household whose device attacks its own readings.
const SETUP: DeviceSetup = DeviceSetup { zone_prefix: "m", seed: 11, nameplate_w: NAMEPLATE_W, now_ms: NOW_MS };

impl DeviceEnv {
    /// Publishes a reading signed by the household's device and returns the exchange's answer:
    /// its acknowledgement or its refusal.
    async fn send(&mut self, seq: u64, ts_ms: i64, import_wh: i64, export_wh: i64) -> Result<ReadingAck, Reject> {
        let device = device_hex(&self.device);
        let bytes = signed_reading(&self.device, reading(&self.device, &self.zone, seq, ts_ms, import_wh, export_wh));
        self.answer(topics::readings(&self.zone, &device), bytes).await
    }

    async fn refused(&mut self, seq: u64, ts_ms: i64, import_wh: i64, export_wh: i64) -> Reason {
        match self.send(seq, ts_ms, import_wh, export_wh).await {
            Ok(ack) => panic!("reading {} was acknowledged, expected a refusal", ack.seq),
            Err(reject) => reject.reason,
        }
    }

    async fn accepted(&mut self, seq: u64, ts_ms: i64, import_wh: i64, export_wh: i64) {
        if let Err(reject) = self.send(seq, ts_ms, import_wh, export_wh).await {
            panic!("reading {seq} was refused: {} ({})", reject.reason, reject.message);
        }
    }

    /// (seq, export) of the stored readings, in seq order.
    fn stored(&self) -> Vec<(i64, i64)> {
        let mut conn = self.test_db.db.get().expect("a connection");
        readings::table
            .filter(readings::device_id.eq(device_hex(&self.device)))
            .order(readings::seq.asc())
            .select((readings::seq, readings::export_wh))
            .load(&mut conn)
            .expect("load readings")
    }
}

/// The drill: a reading with the last counters backdated six days (a new seq), then one at the
/// current time claiming 500 000 Wh of export. Before the fix both were acknowledged and the second
/// was settled as feed-in, because the nameplate allowance ran from the backdated reading. The
/// exchange is restarted in between, so the rule must hold from what storage says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backdated_reading_is_refused_and_earns_nothing() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        env.accepted(1, NOW_MS - MINUTE_MS, 2_000, 1_000).await;
        env.restart().await;
        let backdated = env.refused(2, NOW_MS - 6 * DAY_MS, 2_000, 1_000).await;
        assert_eq!(backdated, Reason::TimestampNotIncreasing);
        let jump = env.refused(3, NOW_MS, 2_000, 501_000).await;
        assert_eq!(jump, Reason::ImplausibleEnergy);
        assert_eq!(env.stored(), vec![(1, 1_000)], "nothing but the honest reading is stored");
        // The refusals are recorded with their reasons, for the household to see.
        let refusals = env.recorded_refusals(2).await;
        let expected = vec![(2, "timestamp_not_increasing".to_owned()), (3, "implausible_energy".to_owned())];
        assert_eq!(refusals, expected);
        // An honest reading still continues from the last accepted one.
        env.accepted(4, NOW_MS, 2_010, 1_100).await;
        env
    })
    .await;
}

/// A counter that goes backwards and a next reading that continues from it: before the fix this
/// was taken as a meter reset and the import before it was erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faked_counter_reset_is_refused() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        env.accepted(1, NOW_MS - 2 * MINUTE_MS, 5_000, 0).await;
        assert_eq!(env.refused(2, NOW_MS - MINUTE_MS, 10, 0).await, Reason::CounterWentBackwards);
        assert_eq!(env.refused(3, NOW_MS, 20, 0).await, Reason::CounterWentBackwards);
        assert_eq!(env.stored(), vec![(1, 0)]);
        env.accepted(4, NOW_MS, 5_020, 0).await;
        env
    })
    .await;
}

fn swap(device: &SigningKey, replaced_at_ms: i64, old_import_wh: i64, new_import_wh: i64) -> MeterReplacement {
    MeterReplacement {
        device_id: DeviceId::from_verifying_key(&device.verifying_key()),
        replaced_at_ms,
        old: MeterCounters { import_wh: old_import_wh, export_wh: 0, pv_wh: None },
        new: MeterCounters { import_wh: new_import_wh, export_wh: 0, pv_wh: None },
        new_meter_serial: MeterSerial::parse("SN-2").expect("a serial"),
        reference: "WO-1".to_owned(),
        registered_ms: 0,
    }
}

/// The utility registers a meter replacement while the exchange runs (and has the device cached):
/// the new meter's first reading, whose counters are lower than the old meter's, is accepted from
/// the new meter's initial counters on. (Before the fix it was refused as `counter_went_backwards`:
/// only a second reading "confirming" a reset was taken, the very hole a household exploited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_meter_replacement_is_accepted() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        env.accepted(1, NOW_MS - 2 * MINUTE_MS, 5_000, 0).await;
        // Registration is checked: not before the last accepted reading.
        let early = swap(&env.device, NOW_MS - 3 * MINUTE_MS, 5_000, 0);
        let refused =
            registry::write(&env.test_db.db, move |conn| registry::register_meter_replacement(conn, &early, NOW_MS));
        assert!(matches!(refused.await, Err(RegistryError::Invalid { field: "replaced_at_ms", .. })));
        let replacement = swap(&env.device, NOW_MS - MINUTE_MS, 5_010, 100);
        registry::write(&env.test_db.db, move |conn| registry::register_meter_replacement(conn, &replacement, NOW_MS))
            .await
            .expect("the replacement is registered");
        // From the new meter's initial counters, within the nameplate since the swap: accepted.
        env.accepted(2, NOW_MS, 150, 0).await;
        assert_eq!(env.stored(), vec![(1, 0), (2, 0)]);
        let serial: String = {
            let mut conn = env.test_db.db.get().expect("a connection");
            devices::table
                .filter(devices::device_id.eq(device_hex(&env.device)))
                .select(devices::meter_serial)
                .first(&mut conn)
                .expect("the device")
        };
        assert_eq!(serial, "SN-2");
        // After a restart the new meter goes on from its last accepted reading, never below it.
        env.restart().await;
        assert_eq!(env.refused(3, NOW_MS + 1, 149, 0).await, Reason::CounterWentBackwards);
        env.accepted(4, NOW_MS + 2, 151, 0).await;
        env
    })
    .await;
}

/// A device that floods refused readings cannot grow the table of refusals: each device keeps its
/// newest `READING_REJECTIONS_PER_DEVICE_MAX`, and a resend refused in the same millisecond is one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_readings_keeps_only_the_newest_records_of_the_device() {
    use exchange::ingest::{refused_reading, Parsed, Rejection};
    use exchange::store::{insert_rejections, READING_REJECTIONS_PER_DEVICE_MAX};
    for test_db in TestDb::all() {
        let zone = ZoneId::parse(&format!("f{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, 900_000);
        let (_, device) = seed_household(&test_db.db, &zone, 12, NAMEPLATE_W);
        let rejection = Rejection::new(Reason::ImplausibleEnergy, "too much");
        let flood = READING_REJECTIONS_PER_DEVICE_MAX as u64 + 10;
        let rows: Vec<_> = (1..=flood)
            .map(|seq| {
                let signed = protocol::Signed::sign(reading(&device, &zone, seq, NOW_MS, 0, 0), &device).expect("sign");
                let parsed = Parsed::Reading(signed, String::new());
                refused_reading(Some(&parsed), true, &rejection, NOW_MS + seq as i64 / 100).expect("recorded")
            })
            .collect();
        for chunk in rows.chunks(500) {
            let chunk = chunk.to_vec();
            test_db.db.write(move |conn| insert_rejections(conn, &chunk)).await.expect("recorded");
        }
        let resend = vec![rows[rows.len() - 1].clone(), rows[rows.len() - 1].clone()];
        test_db.db.write(move |conn| insert_rejections(conn, &resend)).await.expect("a resend is recorded once");
        let mut conn = test_db.db.get().expect("a connection");
        let seqs: Vec<i64> = reading_rejections::table
            .filter(reading_rejections::device_id.eq(device_hex(&device)))
            .order(reading_rejections::seq.asc())
            .select(reading_rejections::seq)
            .load(&mut conn)
            .expect("load refusals");
        assert_eq!(seqs.len() as i64, READING_REJECTIONS_PER_DEVICE_MAX);
        assert_eq!(seqs.first().copied(), Some(11), "the oldest are dropped");
        assert_eq!(seqs.last().copied(), Some(flood as i64));
    }
}

/// Device roles (issue 16): a PV meter registered next to the home's grid meter is a device like
/// any other at the exchange: its production readings (export, import 0) pass the same
/// checks and are stored; only settlement tells the roles apart (it settles grid meters only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pv_meter_registered_next_to_the_grid_meter_has_its_readings_accepted() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        env.accepted(1, NOW_MS - 2 * MINUTE_MS, 2_000, 1_000).await;
        let pv = SigningKey::from_bytes(&[211; 32]);
        let account =
            protocol::AccountId::from_verifying_key(&SigningKey::from_bytes(&[SETUP.seed; 32]).verifying_key());
        let (zone, pv_id) = (env.zone.clone(), DeviceId::from_verifying_key(&pv.verifying_key()));
        env.test_db
            .db
            .write_blocking(move |conn| {
                let serial = MeterSerial::parse("INV-1").expect("serial");
                let new = registry::NewDevice {
                    device_id: &pv_id,
                    account_id: &account,
                    zone_id: &zone,
                    meter_serial: &serial,
                    nameplate_w: NAMEPLATE_W,
                    role: registry::DeviceRole::Pv,
                };
                Ok(registry::register_device_with_role(conn, &new, 0))
            })
            .expect("the database")
            .expect("a PV meter is registered next to the grid meter");
        let grid = std::mem::replace(&mut env.device, pv);
        env.accepted(1, NOW_MS - MINUTE_MS, 0, 40_000).await;
        env.accepted(2, NOW_MS, 0, 40_100).await;
        assert_eq!(env.stored(), vec![(1, 40_000), (2, 40_100)]);
        env.device = grid;
        env.accepted(2, NOW_MS, 2_010, 1_050).await;
        env
    })
    .await;
}
