//! The drill of issue 11 through the real path: signed readings published to a broker (embedded
//! rumqttd; Mosquitto too when MQTT_URL is set) → the exchange → the database (SQLite; PostgreSQL
//! too when DATABASE_URL is set) → slot closes → the ledger.

mod common;
#[path = "../../exchange/tests/support/mod.rs"]
mod support;

use common::{assert_balanced, tariff, GRACE_MS, RETAIL, SLOT_LEN_MS};
use support::decode;

use exchange::config::ExchangeConfig;
use gridex_store::clock::ManualClock;
use gridex_store::testing::TestDb;
use protocol::testing::signing_key;
use protocol::{topics, AccountId, DeviceId, MeterSerial, ReadingAck, SlotId, Wh, ZoneId};
use settlement::registry::{self, AccountKind};
use settlement::{close_slot, queries, SlotOutcome};
use std::sync::Arc;
use support::*;

/// The drill's clock: a slot boundary (1 790 000 000 000 rounded down to 15 minutes).
const T0_MS: i64 = 1_789_999_200_000;
/// 10 kW: 250 Wh over 45 minutes is plausible.
const NAMEPLATE_W: i64 = 10_000;

fn boundary(index: i64) -> i64 {
    T0_MS + index * SLOT_LEN_MS
}

fn seed(db: &gridex_store::Database, zone: &ZoneId, account: AccountId, device: DeviceId) {
    let zone = zone.clone();
    db.write_blocking(move |conn| {
        registry::create_zone(conn, &zone, "Drill", SLOT_LEN_MS, None, T0_MS).expect("zone");
        registry::set_tariff(conn, &zone, &tariff()).expect("tariff");
        registry::register_account(conn, &account.to_hex(), AccountKind::Household, "Withholder", Some(&zone), T0_MS)
            .expect("account");
        let serial = MeterSerial::parse("SN-1").expect("serial");
        registry::register_device(conn, &device, &account, &zone, &serial, NAMEPLATE_W, T0_MS).expect("device");
        Ok::<_, gridex_store::DbError>(())
    })
    .expect("seed the registry");
}

// A household stops sending readings across two slot boundaries while its counters advance 250 Wh,
// buys nothing, and resumes. Before the fix the slots in between were "no data" with
// import = bought = 0, so the 250 Wh were free and never billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_readings_are_billed_when_readings_resume() {
    for broker in brokers() {
        for test_db in TestDb::all() {
            eprintln!("backend {:?}, broker {}", test_db.db.backend(), broker.name);
            let zone = ZoneId::parse(&format!("w{}", unique())).expect("a zone id");
            let (account_key, device_key) = (signing_key(41), signing_key(141));
            let account = AccountId::from_verifying_key(&account_key.verifying_key());
            let device = DeviceId::from_verifying_key(&device_key.verifying_key());
            seed(&test_db.db, &zone, account, device);

            let clock = Arc::new(ManualClock::new(boundary(0)));
            let options = mqtt_options(&broker, &format!("exchange-{}", unique()));
            let config =
                ExchangeConfig { zones: vec![zone.clone()], ..ExchangeConfig::new(protocol::testing::operator_key()) };
            let exchange = exchange::service::start(config, test_db.db.clone(), clock.clone(), Some(options))
                .await
                .expect("the exchange starts");
            tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");
            let mut probe = Probe::connect(&broker, std::slice::from_ref(&zone)).await;

            // Readings at boundaries 0 and 1, none at 2 and 3 (withheld), then 4 and 5: +250 Wh meanwhile.
            let sender = device.to_hex();
            for (seq, at, import_wh) in [(1, 0, 1_000), (2, 1, 1_010), (3, 4, 1_260), (4, 5, 1_270)] {
                clock.set(boundary(at) + 500);
                let signed = signed_reading(&device_key, reading(&device_key, &zone, seq, boundary(at), import_wh, 0));
                probe.publish(topics::readings(&zone, &sender), signed).await;
                let ack = probe.next_on(&topics::events(&zone, &sender)).await;
                decode::<ReadingAck>(&ack).unwrap_or_else(|error| panic!("reading {seq} acknowledged: {error}"));
            }
            exchange.shutdown().await;

            let settlement_config = common::config();
            let mut conn = test_db.db.get().expect("a connection");
            for index in 0..5 {
                let slot = SlotId::new(boundary(index)).expect("a slot");
                let due_ms = boundary(index + 1) + GRACE_MS;
                let outcome = close_slot(&mut conn, &zone, slot, &settlement_config, due_ms).expect("closes");
                assert!(matches!(outcome, SlotOutcome::Settled(_)), "slot {index}");
            }

            // 10 + 250 + 10 Wh, every one at retail.
            let balances = queries::balances(&mut conn, &account.to_hex()).expect("balances");
            assert_eq!(balances.money.0, -RETAIL * 270 / 1_000, "the withheld 250 Wh are billed");
            let gaps = queries::gap_lines(&mut conn, &account, 10).expect("gap lines");
            assert_eq!(gaps.len(), 1);
            assert_eq!((gaps[0].gap_start_ms, gaps[0].slot.start_ms()), (boundary(1), boundary(4)));
            assert_eq!(gaps[0].import_wh, Wh(250));
            assert_balanced(&mut conn);
        }
    }
}
