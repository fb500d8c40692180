//! Registering a meter replacement (issue 11): what the registry checks before the exchange lets a
//! device's counters go down.

mod common;

use common::*;
use diesel::prelude::*;
use gridex_store::schema::devices;
use gridex_store::testing::TestDb;
use protocol::{DeviceId, MeterSerial};
use settlement::registry::{self, MeterCounters, MeterReplacement, RegistryError};

const HOUR_MS: i64 = 3_600_000;

fn swap(device: DeviceId, replaced_at_ms: i64, old_import_wh: i64) -> MeterReplacement {
    MeterReplacement {
        device_id: device,
        replaced_at_ms,
        old: MeterCounters { import_wh: old_import_wh, export_wh: 200, pv_wh: None },
        new: MeterCounters { import_wh: 0, export_wh: 0, pv_wh: None },
        new_meter_serial: MeterSerial::parse("SN-NEW").expect("serial"),
        reference: "WO-9".to_owned(),
        registered_ms: 0,
    }
}

fn field(result: Result<MeterReplacement, RegistryError>) -> &'static str {
    match result {
        Err(RegistryError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn a_replacement_must_continue_plausibly_from_the_last_accepted_reading() {
    for test_db in TestDb::all() {
        let mut conn = test_db.db.get().expect("a connection");
        setup(&mut conn, default_schedule());
        // A 5 kW device whose last accepted reading is at 10 h: 1 000 Wh imported, 200 Wh exported.
        let home = household(&mut conn, 1);
        reading(&mut conn, &home.device, 10 * HOUR_MS, 1_000, 200);
        let now_ms = 12 * HOUR_MS;
        let register = |conn: &mut _, replacement: &MeterReplacement| {
            registry::register_meter_replacement(conn, replacement, now_ms)
        };
        assert_eq!(field(register(&mut conn, &swap(home.device, 10 * HOUR_MS, 1_000))), "replaced_at_ms");
        assert_eq!(field(register(&mut conn, &swap(home.device, 13 * HOUR_MS, 1_000))), "replaced_at_ms");
        assert_eq!(field(register(&mut conn, &swap(home.device, 11 * HOUR_MS, 999))), "old", "below the reading");
        // 5 kW for an hour is 5 000 Wh (+5 %): 6 000 Wh more is not plausible.
        assert_eq!(field(register(&mut conn, &swap(home.device, 11 * HOUR_MS, 7_000))), "old");
        let mut negative = swap(home.device, 11 * HOUR_MS, 1_500);
        negative.new.export_wh = -1;
        assert_eq!(field(register(&mut conn, &negative)), "counters");
        let stranger = DeviceId::from_verifying_key(&protocol::testing::signing_key(77).verifying_key());
        assert!(matches!(register(&mut conn, &swap(stranger, 11 * HOUR_MS, 0)), Err(RegistryError::UnknownDevice(_))));
        let stored = register(&mut conn, &swap(home.device, 11 * HOUR_MS, 1_500)).expect("registered");
        assert_eq!(stored.registered_ms, now_ms);
        let serial: String =
            devices::table.find(home.device.to_hex()).select(devices::meter_serial).first(&mut conn).expect("device");
        assert_eq!(serial, "SN-NEW");
        assert!(matches!(
            register(&mut conn, &swap(home.device, 11 * HOUR_MS, 1_500)),
            Err(RegistryError::ReplacementExists { .. })
        ));
    }
}
