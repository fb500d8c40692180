//! Several exchange instances on one database (issue 13). On PostgreSQL they share the command log:
//! command numbers come from a database sequence, so two instances committing at the same time never
//! take the same one; zones are owned by lease (shared fairly, taken over when an owner dies), and a
//! fencing token checked by every group commit keeps an owner that lost its lease from committing.
//! SQLite takes one exchange: a second is refused at start, clearly.

mod support;

use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use gridex_store::Database;
use protocol::{AccountId, Reason, Side, SlotId, ZoneId};
use std::sync::Arc;
use std::time::Duration;
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
    let Some(test_db) = postgres_for("this test needs PostgreSQL (SQLite takes one exchange)") else { return };
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

/// Leases short enough that a failover test waits a second or two, long enough over the renewal
/// interval that a busy machine (2 cores, other builds) never loses a lease by a slow round.
const TEST_LEASE_TTL_MS: u64 = 1_500;
const TEST_LEASE_RENEW_INTERVAL_MS: u64 = 200;

/// An instance that names no zones: it leases its fair share.
fn leased_config() -> ExchangeConfig {
    ExchangeConfig {
        zones: Vec::new(),
        instance_id: format!("instance-{}", unique()),
        lease_ttl_ms: TEST_LEASE_TTL_MS,
        lease_renew_interval_ms: TEST_LEASE_RENEW_INTERVAL_MS,
        order_commands_per_account_per_s: 1_000,
        order_commands_burst: 1_000,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    }
}

/// Starts an instance with its own pool (as a separate process would have).
async fn start_leased(test_db: &TestDb, mqtt: Option<rumqttc::MqttOptions>) -> ExchangeHandle {
    let db = Database::open(&test_db.url, 4).expect("a pool of its own");
    service::start(leased_config(), db, Arc::new(ManualClock::new(NOW_MS)), mqtt).await.expect("the instance starts")
}

/// Waits (generously: not a timing assertion) until `done` holds, failing with `what` otherwise.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen in {ANSWER_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open_slot() -> SlotId {
    SlotId::new(NOW_MS - NOW_MS % SLOT_LEN_MS + 4 * SLOT_LEN_MS).expect("a slot")
}

fn zones(count: usize) -> Vec<ZoneId> {
    let mut zones: Vec<ZoneId> =
        (0..count).map(|index| ZoneId::parse(&format!("l{index}{}", unique())).expect("zone")).collect();
    zones.sort();
    zones
}

/// The `(zone, owner)` of every lease row.
fn lease_owners(db: &Database) -> Vec<(String, String)> {
    use diesel::prelude::*;
    use gridex_store::schema::zone_leases;
    let mut conn = db.get().expect("a connection");
    zone_leases::table
        .select((zone_leases::zone_id, zone_leases::owner))
        .order(zone_leases::zone_id)
        .load(&mut conn)
        .expect("the leases")
}

/// The logged nonces of `account`, in log order.
fn logged_nonces(db: &Database, account: &SigningKey) -> Vec<i64> {
    use diesel::prelude::*;
    let account = AccountId::from_verifying_key(&account.verifying_key()).to_hex();
    let mut conn = db.get().expect("a connection");
    order_commands::table
        .filter(order_commands::account_id.eq(account))
        .order(order_commands::command_seq)
        .select(order_commands::nonce)
        .load(&mut conn)
        .expect("the log")
}

/// Two instances that name no zones share them: the first takes all four alone, releases its
/// surplus once the second heartbeats, and the second takes it. Each then takes orders for its
/// zones only; the other refuses them as moved (nothing stored), so a caller retries elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_are_shared_between_two_instances_started_without_market_zones() {
    let Some(test_db) = postgres_for("zone leases are taken on PostgreSQL only") else { return };
    let zones = zones(4);
    let mut keys = Vec::new();
    for (index, zone) in zones.iter().enumerate() {
        seed_zone(&test_db.db, zone, SLOT_LEN_MS);
        keys.push(seed_household(&test_db.db, zone, 31 + index as u8, 10_000).0);
    }
    let first = start_leased(&test_db, None).await;
    assert_eq!(first.zones(), zones, "a lone instance takes every zone at start");
    let second = start_leased(&test_db, None).await;

    wait_until("the zones shared 2 + 2", || first.zones().len() == 2 && second.zones().len() == 2).await;
    let mut all: Vec<ZoneId> = first.zones().into_iter().chain(second.zones()).collect();
    all.sort();
    assert_eq!(all, zones, "every zone has exactly one owner");
    for (zone, owner) in lease_owners(&test_db.db) {
        let expected = if first.zones().iter().any(|owned| owned.as_str() == zone) { &first } else { &second };
        assert_eq!(owner, expected.instance_id(), "the lease of {zone} names its owner");
    }

    let (index, zone) = zones.iter().enumerate().find(|(_, zone)| second.zones().contains(zone)).expect("one");
    let bytes = order(&keys[index], zone, open_slot(), Side::Sell, 120_000, 100, 1, NOW_MS);
    let refused = first.submit_command(bytes.clone()).await.expect_err("the other instance's zone");
    assert_eq!(refused.reason, Reason::InternalError);
    assert!(refused.message.contains("zone moved"), "{}", refused.message);
    assert!(logged_nonces(&test_db.db, &keys[index]).is_empty(), "nothing stored by the instance that refused");
    second.submit_command(bytes).await.expect("the owner takes the retry");
    assert_eq!(logged_nonces(&test_db.db, &keys[index]), vec![1]);

    first.shutdown().await;
    wait_until("the survivor takes every zone after a clean shutdown", || second.zones().len() == 4).await;
    second.shutdown().await;
}

/// The owner of two zones dies (its tasks aborted: no shutdown code runs, its leases are left to
/// expire). The survivor, which owned nothing while the leases were held, takes both zones within
/// the failover bound; its books, recovered from the log, are the dead owner's books at its death,
/// hold every order acknowledged over MQTT and HTTP, and new orders trade against them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_zones_move_to_the_survivor_and_nothing_acknowledged_is_lost() {
    for broker in brokers() {
        let Some(test_db) = postgres_for("zone leases are taken on PostgreSQL only") else { return };
        eprintln!("broker {}", broker.name);
        dead_owner_failover(&test_db, &broker).await;
    }
}

async fn dead_owner_failover(test_db: &TestDb, broker: &BrokerAddr) {
    let zones = zones(2);
    let (mut http_sellers, mut mqtt_sellers, mut buyers) = (Vec::new(), Vec::new(), Vec::new());
    for (index, zone) in zones.iter().enumerate() {
        seed_zone(&test_db.db, zone, SLOT_LEN_MS);
        http_sellers.push(seed_household(&test_db.db, zone, 41 + index as u8, 10_000).0);
        mqtt_sellers.push(seed_household(&test_db.db, zone, 51 + index as u8, 10_000).0);
        buyers.push(seed_household(&test_db.db, zone, 61 + index as u8, 10_000).0);
    }
    let mut probe = Probe::connect(broker, &zones).await;
    let dying = start_leased(test_db, Some(mqtt_options(broker, &format!("dying-{}", unique())))).await;
    dying.mqtt_subscribed().await;
    assert_eq!(dying.zones(), zones);

    // Acknowledged orders: over HTTP (the answer) and over MQTT (the order update it publishes).
    for (index, zone) in zones.iter().enumerate() {
        for nonce in 1..=3u64 {
            let bytes = order(
                &http_sellers[index],
                zone,
                open_slot(),
                Side::Sell,
                100_000 + nonce as i64 * 1_000,
                100,
                nonce,
                NOW_MS,
            );
            dying.submit_command(bytes).await.expect("an HTTP order is acknowledged");
            let seller = AccountId::from_verifying_key(&mqtt_sellers[index].verifying_key());
            let bytes = order(
                &mqtt_sellers[index],
                zone,
                open_slot(),
                Side::Sell,
                110_000 + nonce as i64 * 1_000,
                100,
                nonce,
                NOW_MS,
            );
            probe.publish(protocol::topics::orders(zone, &seller), bytes).await;
            let update: protocol::OrderUpdate =
                decode(&probe.next_on(&protocol::topics::events(zone, &seller)).await).expect("an order update");
            assert_eq!(update.order_nonce, nonce, "the MQTT order is acknowledged");
        }
    }
    let before = dying.resting_orders().await;
    assert_eq!(before.iter().map(|dump| dump.orders.len()).sum::<usize>(), 12);

    let survivor = start_leased(test_db, Some(mqtt_options(broker, &format!("survivor-{}", unique())))).await;
    assert!(survivor.zones().is_empty(), "while the owner holds its leases, nobody else owns its zones");
    dying.kill();

    wait_until("the survivor takes the dead owner's zones", || survivor.zones() == zones).await;
    let after = survivor.resting_orders().await;
    assert_eq!(after, before, "the survivor's books are the log's: every acknowledged order, same priority");

    for (index, zone) in zones.iter().enumerate() {
        let bytes = order(&buyers[index], zone, open_slot(), Side::Buy, 200_000, 600, 1, NOW_MS);
        let ack = survivor.submit_command(bytes).await.expect("the survivor takes new orders");
        let traded: i64 = ack.trades.iter().map(|trade| trade.qty_wh.0).sum();
        assert_eq!(traded, 600, "the new order trades against the six orders acknowledged by the dead owner");
    }
    survivor.shutdown().await;
}

/// An owner stalls (its lease manager paused, as a stopped process would be) while the rest of it
/// runs; its lease expires and another instance takes the zone. The stalled owner's next commit for
/// the zone fails the fencing check: nothing of it is stored and its caller is told the zone moved.
/// The same order sent again to the new owner commits normally, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_whose_lease_was_taken_cannot_commit() {
    let Some(test_db) = postgres_for("zone leases are taken on PostgreSQL only") else { return };
    let zones = zones(1);
    let zone = &zones[0];
    seed_zone(&test_db.db, zone, SLOT_LEN_MS);
    let key = seed_household(&test_db.db, zone, 71, 10_000).0;
    let stale = start_leased(&test_db, None).await;
    let sell =
        |nonce: u64| order(&key, zone, open_slot(), Side::Sell, 100_000 + nonce as i64 * 1_000, 100, nonce, NOW_MS);
    stale.submit_command(sell(1)).await.expect("the owner commits");

    stale.pause_leases(true);
    let taker = start_leased(&test_db, None).await;
    wait_until("the other instance takes the stalled owner's zone", || taker.zones() == zones).await;
    assert_eq!(stale.zones(), zones, "the stalled owner still believes it owns the zone");

    let refused = stale.submit_command(sell(2)).await.expect_err("the stale owner's commit is fenced off");
    assert_eq!(refused.reason, Reason::InternalError);
    assert!(refused.message.contains("zone moved"), "{}", refused.message);
    assert_eq!(logged_nonces(&test_db.db, &key), vec![1], "nothing of the fenced commit is stored");

    taker.submit_command(sell(2)).await.expect("the new owner commits the resend");
    assert_eq!(logged_nonces(&test_db.db, &key), vec![1, 2]);
    let book = taker.resting_orders().await;
    assert_eq!(book.iter().map(|dump| dump.orders.len()).sum::<usize>(), 2, "both orders rest with the new owner");

    stale.pause_leases(false);
    wait_until("the stale owner drops the zone", || stale.zones().is_empty()).await;
    let refused = stale.submit_command(sell(3)).await.expect_err("and never commits for it again");
    assert!(refused.message.contains("zone moved"), "{}", refused.message);
    assert_eq!(logged_nonces(&test_db.db, &key), vec![1, 2]);
    stale.shutdown().await;
    taker.shutdown().await;
}

/// An account registered for no zone trades in two zones owned by two instances, each checking its
/// nonces against its own cache. The instance whose cache is behind once failed its group commit on
/// the log's unique (account, nonce) for ever, stalling every later message; now the commit finds
/// the nonce logged and refuses the command `replayed`, and the instance goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_logged_by_another_instance_is_refused_as_replayed_and_stalls_nothing() {
    let Some(test_db) = postgres_for("zone leases are taken on PostgreSQL only") else { return };
    let zones = zones(2);
    for zone in &zones {
        seed_zone(&test_db.db, zone, SLOT_LEN_MS);
    }
    let trader = SigningKey::from_bytes(&[81; 32]);
    let trader_hex = AccountId::from_verifying_key(&trader.verifying_key()).to_hex();
    test_db
        .db
        .write_blocking(|conn| {
            settlement::registry::register_account(
                conn,
                &trader_hex,
                settlement::registry::AccountKind::Household,
                "a trader in every zone",
                None,
                0,
            )
            .map_err(|error| gridex_store::DbError::Invalid(error.to_string()))
        })
        .expect("the trader is registered");
    let first = start_leased(&test_db, None).await;
    let second = start_leased(&test_db, None).await;
    wait_until("the zones shared 1 + 1", || first.zones().len() == 1 && second.zones().len() == 1).await;
    let (mine, theirs) = (&first.zones()[0], &second.zones()[0]);
    let sell = |zone: &ZoneId, nonce: u64, price: i64| {
        order(&trader, zone, open_slot(), Side::Sell, price, 100, nonce, NOW_MS)
    };

    // The second instance caches the trader at nonce 1; the first then logs nonce 2.
    second.submit_command(sell(theirs, 1, 100_000)).await.expect("nonce 1 in the second's zone");
    first.submit_command(sell(mine, 2, 100_000)).await.expect("nonce 2 in the first's zone");
    // The second's cache says nonce 2 is fresh: a different command with it must not stall it.
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, second.submit_command(sell(theirs, 2, 120_000)))
        .await
        .expect("answered, not retried for ever");
    let refused = answer.expect_err("nonce 2 is logged already");
    assert_eq!(refused.reason, Reason::Replayed);
    assert_eq!(logged_nonces(&test_db.db, &trader), vec![1, 2]);
    second.submit_command(sell(theirs, 3, 120_000)).await.expect("the second instance goes on");
    first.shutdown().await;
    second.shutdown().await;
}
