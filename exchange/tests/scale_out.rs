//! Several exchange instances on one database (issue 13). On PostgreSQL they share the command log:
//! command numbers come from a database sequence, so two instances committing at the same time never
//! take the same one. SQLite takes one exchange: a second is refused at start, clearly.

mod support;

use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use gridex_store::Database;
use protocol::{Side, SlotId, ZoneId};
use std::sync::Arc;
use support::*;

const NOW_MS: i64 = 1_790_000_000_000;
const SLOT_LEN_MS: i64 = 900_000;
/// Orders each instance takes: many interleaved group commits, below the open orders per account.
const ORDERS_PER_INSTANCE: u64 = 90;

fn config(zone: &ZoneId) -> ExchangeConfig {
    ExchangeConfig {
        zones: vec![zone.clone()],
        // One account per zone sends every order at one instant of the exchange's clock.
        order_commands_per_account_per_s: 1_000,
        order_commands_burst: 1_000,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    }
}

async fn start(zone: &ZoneId, db: Database) -> Result<ExchangeHandle, exchange::service::ExchangeError> {
    service::start(config(zone), db, Arc::new(ManualClock::new(NOW_MS)), None).await
}

/// Sells at rising prices (nothing trades); each is acknowledged before the next is sent, so the
/// instance's arrival order is the nonce order.
async fn sell_all(exchange: &ExchangeHandle, key: &SigningKey, zone: &ZoneId) {
    let slot = SlotId::new(NOW_MS - NOW_MS % SLOT_LEN_MS + 4 * SLOT_LEN_MS).expect("a slot");
    for nonce in 1..=ORDERS_PER_INSTANCE {
        let bytes = order(key, zone, slot, Side::Sell, 100_000 + nonce as i64 * 1_000, 100, nonce, NOW_MS);
        let ack = tokio::time::timeout(ANSWER_TIMEOUT, exchange.submit_command(bytes))
            .await
            .unwrap_or_else(|_| panic!("order {nonce} in {zone} was not answered: its group commit keeps failing"));
        ack.unwrap_or_else(|rejection| panic!("order {nonce} in {zone} refused: {rejection:?}"));
    }
}

/// Two instances started on one command log used to read the same "next number" at start; the one
/// that committed second failed every group commit that held a command, for ever. With numbers
/// from a sequence both commit, and each zone's log is in its arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exchanges_on_one_postgres_never_take_the_same_command_number() {
    let Some(test_db) = TestDb::postgres() else {
        eprintln!("DATABASE_URL is not set: this test needs PostgreSQL (SQLite takes one exchange)");
        return;
    };
    let zones = [
        ZoneId::parse(&format!("n{}", unique())).expect("zone"),
        ZoneId::parse(&format!("s{}", unique())).expect("zone"),
    ];
    let mut keys = Vec::new();
    for (index, zone) in zones.iter().enumerate() {
        seed_zone(&test_db.db, zone, SLOT_LEN_MS);
        keys.push(seed_household(&test_db.db, zone, 21 + index as u8, 10_000).0);
    }
    // Two instances, each with its own pool, as two processes would have.
    let second_db = Database::open(&test_db.url, 4).expect("a second pool");
    let north = start(&zones[0], test_db.db.clone()).await.expect("the first instance starts");
    let south = start(&zones[1], second_db).await.expect("the second instance starts");

    tokio::join!(sell_all(&north, &keys[0], &zones[0]), sell_all(&south, &keys[1], &zones[1]));

    let mut conn = test_db.db.get().expect("a connection");
    for zone in &zones {
        use diesel::prelude::*;
        let logged: Vec<(i64, i64)> = order_commands::table
            .filter(order_commands::zone_id.eq(zone.as_str()))
            .order(order_commands::command_seq)
            .select((order_commands::command_seq, order_commands::nonce))
            .load(&mut conn)
            .expect("the log");
        let nonces: Vec<i64> = logged.iter().map(|(_, nonce)| *nonce).collect();
        assert_eq!(nonces, (1..=ORDERS_PER_INSTANCE as i64).collect::<Vec<_>>(), "{zone}'s log is in arrival order");
    }
    north.shutdown().await;
    south.shutdown().await;
}

/// SQLite has one writer: a second exchange on the same file is refused at start with a message that
/// says why and what to do, and starts once the first has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_exchange_on_one_sqlite_database_is_refused_clearly() {
    let test_db = TestDb::sqlite();
    let zone = ZoneId::parse(&format!("z{}", unique())).expect("zone");
    seed_zone(&test_db.db, &zone, SLOT_LEN_MS);
    let first = start(&zone, test_db.db.clone()).await.expect("the first exchange starts");

    let second_db = Database::open(&test_db.url, 2).expect("a second pool");
    let refused = start(&zone, second_db.clone()).await.expect_err("a second exchange on the same SQLite file");
    let message = refused.to_string();
    assert!(message.contains("another exchange is already writing the SQLite database"), "{message}");
    assert!(message.contains("PostgreSQL"), "says what to do instead: {message}");

    first.shutdown().await;
    let second = start(&zone, second_db).await.expect("starts once the first has stopped");
    second.shutdown().await;
}
