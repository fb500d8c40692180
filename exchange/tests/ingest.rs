//! Ingest end to end: signed messages published to a real broker (embedded rumqttd, and Mosquitto
//! when `MQTT_URL` is set) reach the exchange, which stores them (SQLite, and PostgreSQL when
//! `DATABASE_URL` is set) or rejects them with the right reason on the sender's reject topic.

mod support;

use support::decode;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::service::{self, ExchangeHandle};
use gridex_store::clock::ManualClock;
use gridex_store::schema::{order_commands, readings, trades};
use gridex_store::testing::TestDb;
use protocol::topics;
use protocol::{OrderStatus, OrderUpdate, ReadingAck, Reason, Reject, Side, SlotId, Trade, ZoneId};
use std::future::Future;
use std::sync::Arc;
use support::*;

/// The exchange's clock in these tests: a fixed instant, moved by hand.
const NOW_MS: i64 = 1_790_000_000_000;
/// A device nameplate: 10 kW allows 10 Wh in 3.6 s, 2 778 Wh in 1 000 s.
const NAMEPLATE_W: i64 = 10_000;

struct Env {
    test_db: TestDb,
    exchange: ExchangeHandle,
    probe: Probe,
    zone: ZoneId,
    other: ZoneId,
    clock: Arc<ManualClock>,
    /// Household 1: account key and device key, registered in `zone`.
    account: SigningKey,
    device: SigningKey,
    /// Household 2 in `zone`, for trades.
    account2: SigningKey,
    /// A device registered in `other`.
    other_device: SigningKey,
    /// The exchange's MQTT client id: its persistent session outlives a restart.
    client_id: String,
    /// The exchange's configuration, serving only this test's zones; a restart must keep it.
    config: ExchangeConfig,
    broker: BrokerAddr,
}

impl Env {
    async fn start(test_db: TestDb, broker: &BrokerAddr, config: ExchangeConfig) -> Env {
        let zone = ZoneId::parse(&format!("z{}", unique())).expect("a zone id");
        let other = ZoneId::parse(&format!("o{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, 900_000);
        seed_zone(&test_db.db, &other, 900_000);
        let (account, device) = seed_household(&test_db.db, &zone, 1, NAMEPLATE_W);
        let (account2, _) = seed_household(&test_db.db, &zone, 2, NAMEPLATE_W);
        let (_, other_device) = seed_household(&test_db.db, &other, 3, NAMEPLATE_W);
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let client_id = format!("exchange-{}", unique());
        // Only this test's zones: tests share Mosquitto, and an exchange serving every zone would
        // answer the other tests' messages too.
        let config = ExchangeConfig { zones: vec![zone.clone(), other.clone()], ..config };
        let exchange = start_exchange(&config, &test_db.db, &clock, broker, &client_id).await;
        let probe = Probe::connect(broker, &[zone.clone(), other.clone()]).await;
        Env {
            test_db,
            exchange,
            probe,
            zone,
            other,
            clock,
            account,
            device,
            account2,
            other_device,
            client_id,
            config,
            broker: broker.clone(),
        }
    }

    /// Publishes `bytes` as a reading of `sender` on `zone`'s topic and returns the reject it earns.
    async fn reading_rejected(&mut self, zone: &ZoneId, sender: &str, bytes: Vec<u8>) -> Reject {
        self.probe.publish(topics::readings(zone, &sender), bytes).await;
        let payload = self.probe.next_on(&topics::rejects(zone, &sender)).await;
        decode::<Reject>(&payload).expect("a reject")
    }

    async fn reading_acked(&mut self, bytes: Vec<u8>) -> ReadingAck {
        let device = device_hex(&self.device);
        self.probe.publish(topics::readings(&self.zone, &device), bytes).await;
        let payload = self.probe.next_on(&topics::events(&self.zone, &device)).await;
        decode::<ReadingAck>(&payload).unwrap_or_else(|error| panic!("expected an ack: {error}"))
    }

    async fn stored_readings(&self) -> i64 {
        let mut conn = self.test_db.db.get().expect("a connection");
        readings::table.count().get_result(&mut conn).expect("count readings")
    }

    fn slot(&self) -> SlotId {
        SlotId::new(NOW_MS - NOW_MS % 900_000 + 4 * 900_000).expect("a slot")
    }
}

/// Runs `scenario` on every backend (SQLite; PostgreSQL with `DATABASE_URL`) with every broker
/// (embedded; Mosquitto with `MQTT_URL`).
async fn on_every_backend<F, Fut>(config: ExchangeConfig, scenario: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = Env>,
{
    let (scenario, config) = (&scenario, &config);
    each_backend_and_broker(|test_db, broker| async move {
        let env = scenario(Env::start(test_db, &broker, config.clone()).await).await;
        env.exchange.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_published_while_the_exchange_is_down_wait_in_its_session_and_are_stored_when_it_returns() {
    each_backend_and_broker(|test_db, broker| async move {
        let mut env = Env::start(test_db, &broker, ExchangeConfig::new(protocol::testing::operator_key())).await;
        env.reading_acked(good_reading(&env, 1, NOW_MS - 3_000, 1)).await;
        env.exchange.clone().shutdown().await;
        // The exchange is gone; its gateways go on publishing and the broker acknowledges them.
        let device = device_hex(&env.device);
        for seq in 2..=4 {
            let bytes = good_reading(&env, seq, NOW_MS - 3_000 + seq as i64 * 500, seq as i64);
            env.probe.publish(topics::readings(&env.zone, &device), bytes).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(env.stored_readings().await, 1, "nothing is stored while the exchange is down");
        // Restarted with the same zones: an exchange serving every zone would subscribe with
        // wildcards and, on the shared Mosquitto, refuse the other tests' messages as unknown_zone.
        let options = mqtt_options(&broker, &env.client_id);
        env.exchange = service::start(env.config.clone(), env.test_db.db.clone(), env.clock.clone(), Some(options))
            .await
            .expect("the exchange restarts");
        for seq in 2..=4 {
            let payload = env.probe.next_on(&topics::events(&env.zone, &device)).await;
            let ack = decode::<ReadingAck>(&payload).expect("an ack");
            assert_eq!(ack.seq, seq, "delivered from the session, in order");
        }
        assert_eq!(env.stored_readings().await, 4, "every reading published during the outage is stored");
        env.exchange.shutdown().await;
    })
    .await;
}

/// A utility registers a zone (and households in it) while the exchange runs: the exchange serves it
/// from the first message on, over HTTP and over MQTT, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_registered_while_the_exchange_runs_is_served_without_a_restart() {
    for test_db in TestDb::all() {
        // The embedded broker only: an exchange serving every zone subscribes with wildcards, which on
        // the shared Mosquitto would answer other tests' messages.
        let broker = embedded_broker();
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let options = mqtt_options(&broker, &format!("exchange-{}", unique()));
        let exchange = service::start(
            ExchangeConfig::new(protocol::testing::operator_key()),
            test_db.db.clone(),
            clock.clone(),
            Some(options),
        )
        .await
        .expect("the exchange starts");
        tokio::time::timeout(ANSWER_TIMEOUT, exchange.mqtt_subscribed()).await.expect("subscribed in time");

        let zone = ZoneId::parse(&format!("late{}", unique())).expect("a zone id");
        assert!(!exchange.zones().contains(&zone));
        seed_zone(&test_db.db, &zone, 900_000);
        let (seller, device) = seed_household(&test_db.db, &zone, 41, NAMEPLATE_W);
        let (buyer, _) = seed_household(&test_db.db, &zone, 42, NAMEPLATE_W);
        let slot = SlotId::new(NOW_MS - NOW_MS % 900_000 + 4 * 900_000).expect("a slot");

        // HTTP: the first order starts the zone's books.
        let sell = order(&seller, &zone, slot, Side::Sell, 120_000, 500, 1, NOW_MS);
        let ack = exchange.submit_command(sell).await.expect("an order in the new zone is accepted");
        assert_eq!(ack.updates.first().map(|update| update.status), Some(OrderStatus::Open));
        assert!(exchange.zones().contains(&zone));

        // MQTT: a reading and a crossing order on the new zone's topics.
        let mut probe = Probe::connect(&broker, std::slice::from_ref(&zone)).await;
        let device_hex = device_hex(&device);
        let bytes = signed_reading(&device, reading(&device, &zone, 1, NOW_MS - 1_000, 5, 0));
        probe.publish(topics::readings(&zone, &device_hex), bytes).await;
        let payload = probe.next_on(&topics::events(&zone, &device_hex)).await;
        assert_eq!(decode::<ReadingAck>(&payload).expect("a reading ack").seq, 1);
        let buy = order(&buyer, &zone, slot, Side::Buy, 120_000, 500, 1, NOW_MS);
        let buyer_id = protocol::AccountId::from_verifying_key(&buyer.verifying_key());
        probe.publish(topics::orders(&zone, &buyer_id), buy).await;
        let trade = decode::<Trade>(&probe.next_on(&topics::trades(&zone)).await).expect("a trade");
        assert_eq!((trade.qty_wh.0, trade.price_per_kwh.0), (500, 120_000));

        // A zone nobody registered is still refused.
        let ghost = ZoneId::parse(&format!("ghost{}", unique())).expect("a zone id");
        let stray = order(&buyer, &ghost, slot, Side::Buy, 120_000, 500, 2, NOW_MS);
        let rejection = exchange.submit_command(stray).await.expect_err("unknown zone");
        assert_eq!(rejection.reason, Reason::UnknownZone);
        assert!(!exchange.serve_zone(&ghost).await.expect("looked up"));
        exchange.shutdown().await;
    }
}

/// After a restart the exchange knows a command it accepted before from its log: a resend (a
/// broker redelivering it, or a client retrying over HTTP) is a duplicate and changes nothing, even
/// past the order's time window; a different command with that nonce is a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_resent_after_a_restart_is_a_duplicate_and_is_not_applied_again() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let zone = env.zone.clone();
        let slot = env.slot();
        let account = protocol::AccountId::from_verifying_key(&env.account.verifying_key());
        let sell = order(&env.account, &zone, slot, Side::Sell, 120_000, 1_000, 7, NOW_MS);
        env.probe.publish(topics::orders(&zone, &account.to_hex()), sell.clone()).await;
        let update =
            decode::<OrderUpdate>(&env.probe.next_on(&topics::events(&zone, &account.to_hex())).await).expect("update");
        assert_eq!((update.status, update.order_nonce), (OrderStatus::Open, 7));

        env.exchange.clone().shutdown().await;
        // Ten minutes later: the order is older than the order window, but still the same order.
        env.clock.set(NOW_MS + 600_000);
        let options = mqtt_options(&env.broker, &env.client_id);
        env.exchange = service::start(env.config.clone(), env.test_db.db.clone(), env.clock.clone(), Some(options))
            .await
            .expect("the exchange restarts");
        tokio::time::timeout(ANSWER_TIMEOUT, env.exchange.mqtt_subscribed()).await.expect("subscribed in time");

        env.probe.publish(topics::orders(&zone, &account.to_hex()), sell.clone()).await;
        let reject =
            decode::<Reject>(&env.probe.next_on(&topics::rejects(&zone, &account.to_hex())).await).expect("reject");
        assert_eq!(reject.reason, Reason::Duplicate);
        let rejection = env.exchange.submit_command(sell).await.expect_err("a resend over HTTP");
        assert_eq!(rejection.reason, Reason::Duplicate);
        let other = order(&env.account, &zone, slot, Side::Sell, 130_000, 10, 7, NOW_MS + 600_000);
        let rejection = env.exchange.submit_command(other).await.expect_err("a used nonce");
        assert_eq!(rejection.reason, Reason::Replayed);

        let resting = env.exchange.open_orders(account).await.expect("answered");
        assert_eq!(resting.len(), 1, "the order rests once");
        assert_eq!(resting[0].update.open_qty_wh.0, 1_000);
        let mut conn = env.test_db.db.get().expect("a connection");
        let logged: i64 = order_commands::table.count().get_result(&mut conn).expect("count");
        assert_eq!(logged, 1, "the resends were not logged");
        env
    })
    .await;
}

fn good_reading(env: &Env, seq: u64, ts_ms: i64, import_wh: i64) -> Vec<u8> {
    signed_reading(&env.device, reading(&env.device, &env.zone, seq, ts_ms, import_wh, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_reading_is_rejected_as_a_bad_signature() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let json = String::from_utf8(good_reading(&env, 1, NOW_MS, 100)).expect("utf-8");
        let forged = json.replace("\"import_wh\":100", "\"import_wh\":99");
        assert_ne!(json, forged);
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        let reject = env.reading_rejected(&zone, &device, forged.into_bytes()).await;
        assert_eq!(reject.reason, Reason::BadSignature);
        assert_eq!(reject.of, "reading");
        assert_eq!(env.stored_readings().await, 0);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_oversized_and_unknown_field_messages_are_rejected_before_verification() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        let bytes = good_reading(&env, 1, NOW_MS, 100);
        let truncated = bytes[..bytes.len() / 2].to_vec();
        assert_eq!(env.reading_rejected(&zone, &device, truncated).await.reason, Reason::MalformedJson);
        let oversized = format!("{{\"pad\":\"{}\"}}", "x".repeat(2_000)).into_bytes();
        assert_eq!(env.reading_rejected(&zone, &device, oversized).await.reason, Reason::TooLarge);
        let json = String::from_utf8(bytes).expect("utf-8");
        let unknown = json.replacen('{', "{\"colour\":\"blue\",", 1).into_bytes();
        assert_eq!(env.reading_rejected(&zone, &device, unknown).await.reason, Reason::UnknownField);
        assert_eq!(env.stored_readings().await, 0);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_the_wrong_topic_or_for_the_wrong_zone_is_rejected() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let zone = env.zone.clone();
        let other = env.other.clone();
        // Device 1's reading on device 2's topic.
        let other_device = device_hex(&env.other_device);
        let bytes = good_reading(&env, 1, NOW_MS, 100);
        let reject = env.reading_rejected(&zone, &other_device, bytes.clone()).await;
        assert_eq!(reject.reason, Reason::TopicMismatch);
        // Zone A's reading on zone B's topic.
        let device = device_hex(&env.device);
        assert_eq!(env.reading_rejected(&other, &device, bytes).await.reason, Reason::TopicMismatch);
        // A reading that names zone B, from a device registered in zone A.
        let wrong_zone = signed_reading(&env.device, reading(&env.device, &other, 1, NOW_MS, 100, 0));
        assert_eq!(env.reading_rejected(&other, &device, wrong_zone).await.reason, Reason::ZoneMismatch);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_key_is_rejected_as_unknown() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let stranger = SigningKey::from_bytes(&[77; 32]);
        let zone = env.zone.clone();
        let bytes = signed_reading(&stranger, reading(&stranger, &zone, 1, NOW_MS, 1, 0));
        let reject = env.reading_rejected(&zone, &device_hex(&stranger), bytes).await;
        assert_eq!(reject.reason, Reason::UnknownKey);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_timestamps_are_rejected() {
    let config = ExchangeConfig {
        reading_age_ms_max: 60_000,
        future_skew_ms_max: 5_000,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    on_every_backend(config, |mut env| async move {
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        let stale = good_reading(&env, 1, NOW_MS - 61_000, 100);
        assert_eq!(env.reading_rejected(&zone, &device, stale).await.reason, Reason::TimestampTooOld);
        let future = good_reading(&env, 2, NOW_MS + 6_000, 100);
        assert_eq!(env.reading_rejected(&zone, &device, future).await.reason, Reason::TimestampInFuture);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_going_backwards_is_rejected_even_when_the_next_reading_continues_from_it() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        env.reading_acked(good_reading(&env, 1, NOW_MS - 20_000, 5_000)).await;
        let backwards = good_reading(&env, 2, NOW_MS - 10_000, 10);
        assert_eq!(env.reading_rejected(&zone, &device, backwards).await.reason, Reason::CounterWentBackwards);
        // No automatic reset (issue 11): only a meter replacement registered by the utility lowers the counters.
        let continues = good_reading(&env, 3, NOW_MS, 20);
        assert_eq!(env.reading_rejected(&zone, &device, continues).await.reason, Reason::CounterWentBackwards);
        assert_eq!(env.stored_readings().await, 1);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_beyond_the_nameplate_is_rejected_as_implausible() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        env.reading_acked(good_reading(&env, 1, NOW_MS - 3_600_000, 0)).await;
        // 10 kW for an hour is 10 000 Wh (+5 % tolerance); 11 000 Wh is not plausible.
        let implausible = good_reading(&env, 2, NOW_MS, 11_000);
        assert_eq!(env.reading_rejected(&zone, &device, implausible).await.reason, Reason::ImplausibleEnergy);
        env.reading_acked(good_reading(&env, 3, NOW_MS, 10_000)).await;
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_acknowledged_reading_is_acknowledged_again_and_stored_once() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let first = good_reading(&env, 1, NOW_MS - 2_000, 1);
        let second = good_reading(&env, 2, NOW_MS - 1_000, 2);
        env.reading_acked(first.clone()).await;
        env.reading_acked(second.clone()).await;
        // The gateway missed both acks and resends: the last and an older one.
        assert_eq!(env.reading_acked(second).await.seq, 2);
        assert_eq!(env.reading_acked(first).await.seq, 1);
        assert_eq!(env.stored_readings().await, 2);
        // A different reading reusing an accepted seq is a replay.
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        let replay = good_reading(&env, 1, NOW_MS, 3);
        assert_eq!(env.reading_rejected(&zone, &device, replay).await.reason, Reason::Replayed);
        // The HTTP path is the same pipeline.
        env.exchange.submit_reading(good_reading(&env, 2, NOW_MS - 1_000, 2)).await.expect("a resend is harmless");
        let forged =
            String::from_utf8(good_reading(&env, 3, NOW_MS, 4)).expect("utf-8").replace("\"seq\":3", "\"seq\":4");
        let rejection = env.exchange.submit_reading(forged.into_bytes()).await.expect_err("forged");
        assert_eq!(rejection.reason, Reason::BadSignature);
        assert_eq!(env.stored_readings().await, 2);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_acknowledged_after_commit_matches_and_a_replayed_nonce_is_rejected() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let zone = env.zone.clone();
        let slot = env.slot();
        let seller = protocol::AccountId::from_verifying_key(&env.account.verifying_key()).to_hex();
        let buyer = protocol::AccountId::from_verifying_key(&env.account2.verifying_key()).to_hex();
        let sell = order(&env.account, &zone, slot, Side::Sell, 120_000, 1_000, 5, NOW_MS);
        env.probe.publish(topics::orders(&zone, &seller), sell.clone()).await;
        let update = decode::<OrderUpdate>(&env.probe.next_on(&topics::events(&zone, &seller)).await).expect("update");
        assert_eq!((update.status, update.open_qty_wh.0, update.order_nonce), (OrderStatus::Open, 1_000, 5));
        // The very same order again (a resend) is a duplicate and is not applied twice.
        env.probe.publish(topics::orders(&zone, &seller), sell.clone()).await;
        let reject = decode::<Reject>(&env.probe.next_on(&topics::rejects(&zone, &seller)).await).expect("reject");
        assert_eq!((reject.reason, reject.of.as_str(), reject.seq), (Reason::Duplicate, "order", Some(5)));
        // The same nonce on a different order is a replay.
        let replay = order(&env.account, &zone, slot, Side::Sell, 130_000, 10, 5, NOW_MS);
        env.probe.publish(topics::orders(&zone, &seller), replay).await;
        let reject = decode::<Reject>(&env.probe.next_on(&topics::rejects(&zone, &seller)).await).expect("reject");
        assert_eq!(reject.reason, Reason::Replayed);
        // A crossing buy over HTTP trades at the resting price.
        let buy = order(&env.account2, &zone, slot, Side::Buy, 150_000, 400, 1, NOW_MS);
        let ack = env.exchange.submit_command(buy).await.expect("accepted");
        assert_eq!(ack.trades.len(), 1);
        assert_eq!((ack.trades[0].price_per_kwh.0, ack.trades[0].qty_wh.0), (120_000, 400));
        assert_eq!(ack.updates.last().map(|update| update.status), Some(OrderStatus::Filled));
        let trade = decode::<Trade>(&env.probe.next_on(&topics::trades(&zone)).await).expect("trade");
        assert_eq!(trade, ack.trades[0]);
        let _ = buyer;
        let resting = env
            .exchange
            .open_orders(protocol::AccountId::from_verifying_key(&env.account.verifying_key()))
            .await
            .expect("answered");
        assert_eq!(resting.len(), 1);
        assert_eq!(resting[0].update.open_qty_wh.0, 600);
        let book = env.exchange.book(&zone, slot, 20).await.expect("answered").expect("an open book");
        assert_eq!(book.asks.len(), 1);
        let mut conn = env.test_db.db.get().expect("a connection");
        let logged: i64 = order_commands::table.count().get_result(&mut conn).expect("count");
        let stored: i64 = trades::table.count().get_result(&mut conn).expect("count");
        assert_eq!((logged, stored), (2, 1));
        // Orders for a slot past gate closure, or misaligned, never reach the log.
        let late = SlotId::new(NOW_MS - NOW_MS % 900_000 + 900_000).expect("a slot");
        env.clock.set(late.start_ms() - 60_000);
        let too_late = order(&env.account2, &zone, late, Side::Buy, 150_000, 400, 2, late.start_ms() - 60_000);
        assert_eq!(env.exchange.submit_command(too_late).await.expect_err("late").reason, Reason::GateClosed);
        let misaligned = SlotId::new(slot.start_ms() + 1).expect("a slot");
        let odd = order(&env.account2, &zone, misaligned, Side::Buy, 150_000, 400, 3, late.start_ms() - 60_000);
        assert_eq!(env.exchange.submit_command(odd).await.expect_err("misaligned").reason, Reason::SlotMisaligned);
        env
    })
    .await;
}

/// Over HTTP a full ingest queue is answered at once as `overloaded` (nothing was acknowledged, the
/// caller retries). Over MQTT it is back-pressure instead (see `ack_after_store.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_ingest_queue_over_http_is_rejected_as_overloaded_and_every_message_is_answered() {
    let config = ExchangeConfig {
        ingest_queue_len: 2,
        verify_batch_max: 1,
        commit_queue_len: 1,
        group_commit_size_max: 1,
        group_commit_delay_ms: 20,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    on_every_backend(config, |env| async move {
        const FLOOD: u64 = 300;
        let mut waiting = Vec::new();
        let (mut acks, mut overloaded) = (0, 0);
        let mut answered = |result: Result<(), exchange::ingest::Rejection>| match result {
            Ok(()) => acks += 1,
            Err(rejection) => {
                assert_eq!(rejection.reason, Reason::Overloaded, "{rejection:?}");
                overloaded += 1;
            }
        };
        for seq in 1..=FLOOD {
            let bytes = good_reading(&env, seq, NOW_MS - 1_000_000 + seq as i64 * 1_000, seq as i64);
            let mut submission = Box::pin(env.exchange.submit_reading(bytes));
            // One poll queues the reading (in seq order) or refuses it; the answer comes later.
            match std::future::poll_fn(|cx| std::task::Poll::Ready(submission.as_mut().poll(cx))).await {
                std::task::Poll::Ready(result) => answered(result),
                std::task::Poll::Pending => waiting.push(submission),
            }
        }
        for submission in waiting {
            answered(tokio::time::timeout(ANSWER_TIMEOUT, submission).await.expect("answered in time"));
        }
        assert!(overloaded > 0, "a flood of {FLOOD} into a queue of 2 must shed load");
        assert!(acks > 0);
        assert_eq!(env.stored_readings().await, acks as i64);
        env
    })
    .await;
}

/// Guards the parallel verification stage: a burst from one device is split into many small
/// batches verified on several threads at once, yet every reading is checked against its
/// predecessor in arrival order (a reading checked before the one it follows would be refused as
/// `replayed` or `counter_went_backwards`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_verified_on_several_workers_is_accepted_in_arrival_order() {
    let config = ExchangeConfig {
        verify_workers: 4,
        verify_batch_max: 8,
        ..ExchangeConfig::new(protocol::testing::operator_key())
    };
    on_every_backend(config, |mut env| async move {
        const BURST: u64 = 400;
        let device = device_hex(&env.device);
        let zone = env.zone.clone();
        for seq in 1..=BURST {
            let bytes = good_reading(&env, seq, NOW_MS - 1_000_000 + seq as i64 * 1_000, seq as i64);
            env.probe.publish(topics::readings(&zone, &device), bytes).await;
        }
        let events_topic = topics::events(&zone, &device);
        let rejects_topic = topics::rejects(&zone, &device);
        for seq in 1..=BURST {
            let (topic, payload) = env.probe.next_any(&[&events_topic, &rejects_topic]).await;
            assert_eq!(topic, events_topic, "reading {seq} refused: {:?}", decode::<Reject>(&payload));
            let ack = decode::<ReadingAck>(&payload).expect("an ack");
            assert_eq!(ack.seq, seq, "acknowledged in arrival order");
        }
        assert_eq!(env.stored_readings().await, BURST as i64);
        env
    })
    .await;
}

/// Guards the early group commit: with nothing else being verified, waiting for more messages only
/// delays the commit and, since PUBACK follows it, the broker's next messages. A ten-minute delay
/// must therefore not hold back a lone reading (the timeout is a bound on a hang, not a timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_message_is_committed_without_waiting_out_the_group_commit_delay() {
    let config =
        ExchangeConfig { group_commit_delay_ms: 600_000, ..ExchangeConfig::new(protocol::testing::operator_key()) };
    on_every_backend(config, |env| async move {
        for seq in 1..=3 {
            let bytes = good_reading(&env, seq, NOW_MS - 10_000 + seq as i64 * 1_000, seq as i64);
            tokio::time::timeout(ANSWER_TIMEOUT, env.exchange.submit_reading(bytes))
                .await
                .expect("committed without waiting out the delay")
                .expect("accepted");
        }
        assert_eq!(env.stored_readings().await, 3);
        env
    })
    .await;
}

/// The attack of issue 12: a neighbour on the broker publishes a trade and an order update of its
/// own making on the zone's topics. A gateway's agent verifies what it hears against the pinned
/// operator key (`meter_gateway::operator`): the forgeries are dropped, while the exchange's real,
/// signed messages verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_trade_on_the_broker_is_detected_by_the_agent() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let zone = env.zone.clone();
        let slot = env.slot();
        let pinned = pinned_operator();
        let seller = protocol::AccountId::from_verifying_key(&env.account.verifying_key()).to_hex();
        let (trades_topic, events_topic) = (topics::trades(&zone), topics::events(&zone, &seller));
        let neighbour = protocol::testing::signing_key(77);
        // The forged trade says the seller sold 5 MWh; signed by the neighbour, or not at all.
        let mut forged_trade = protocol::testing::sample_trade();
        forged_trade.zone = zone.clone();
        forged_trade.qty_wh = protocol::Wh(5_000_000);
        let forged = protocol::Signed::sign_operator(forged_trade.clone(), &neighbour).expect("signs");
        env.probe.publish(trades_topic.clone(), forged.to_json()).await;
        let forged_json = env.probe.next_on(&trades_topic).await;
        assert_eq!(meter_gateway::operator::verified::<Trade>(&pinned, &trades_topic, &forged_json), None);
        env.probe.publish(trades_topic.clone(), protocol::encode(&forged_trade).expect("encodes")).await;
        let unsigned = env.probe.next_on(&trades_topic).await;
        assert_eq!(meter_gateway::operator::verified::<Trade>(&pinned, &trades_topic, &unsigned), None);
        let mut forged_update = protocol::testing::sample_order_update();
        forged_update.zone = zone.clone();
        let forged_update = protocol::Signed::sign_operator(forged_update, &neighbour).expect("signs");
        env.probe.publish(events_topic.clone(), forged_update.to_json()).await;
        let heard = env.probe.next_on(&events_topic).await;
        assert_eq!(meter_gateway::operator::verified::<OrderUpdate>(&pinned, &events_topic, &heard), None);

        // The exchange's own messages verify against the pinned key.
        let sell = order(&env.account, &zone, slot, Side::Sell, 120_000, 1_000, 5, NOW_MS);
        env.probe.publish(topics::orders(&zone, &seller), sell).await;
        let update = env.probe.next_on(&events_topic).await;
        let update = meter_gateway::operator::verified::<OrderUpdate>(&pinned, &events_topic, &update)
            .expect("the exchange's order update verifies");
        assert_eq!((update.status, update.order_nonce), (OrderStatus::Open, 5));
        let buy = order(&env.account2, &zone, slot, Side::Buy, 150_000, 400, 1, NOW_MS);
        let ack = env.exchange.submit_command(buy).await.expect("accepted");
        let trade = env.probe.next_on(&trades_topic).await;
        let trade = meter_gateway::operator::verified::<Trade>(&pinned, &trades_topic, &trade)
            .expect("the exchange's trade verifies");
        assert_eq!(trade, ack.trades[0]);
        // And the same messages do not verify against another key.
        let real = env.probe.drain(std::time::Duration::from_millis(200)).await;
        let other = neighbour.verifying_key().to_bytes();
        for (topic, payload) in &real {
            if topic == &events_topic {
                assert_eq!(meter_gateway::operator::verified::<OrderUpdate>(&other, topic, payload), None);
            }
        }
        env
    })
    .await;
}

/// Slot roots are published retained on the zone's `roots` topic as the operator signed them; a root
/// signed by another key is refused, never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_root_is_published_only_when_the_operator_signed_it() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let zone = env.zone.clone();
        let root = |operator: &SigningKey| protocol::SlotRoot {
            zone: zone.clone(),
            slot: env.slot(),
            root: "07".repeat(32),
            statements: 3,
            operator: protocol::AccountId::from_verifying_key(&operator.verifying_key()),
            ts_ms: protocol::TimestampMs(NOW_MS),
        };
        let neighbour = protocol::testing::signing_key(77);
        let forged = protocol::Signed::sign(root(&neighbour), &neighbour).expect("signs");
        assert_eq!(env.exchange.publish_slot_root(&forged).unwrap_err().reason, Reason::BadSignature);
        let operator = protocol::testing::operator_key();
        let genuine = protocol::Signed::sign(root(&operator), &operator).expect("signs");
        env.exchange.publish_slot_root(&genuine).expect("the operator's root");
        let heard = env.probe.next_on(&topics::slot_root(&zone)).await;
        let heard = protocol::Signed::<protocol::SlotRoot>::parse(&heard).expect("a slot root");
        heard.verify_operator(&pinned_operator()).expect("verifies against the pinned key");
        assert_eq!(heard.message, genuine.message);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_crossing_its_own_accounts_resting_order_cancels_it_with_self_trade_prevented() {
    on_every_backend(ExchangeConfig::new(protocol::testing::operator_key()), |mut env| async move {
        let zone = env.zone.clone();
        let slot = env.slot();
        let account = protocol::AccountId::from_verifying_key(&env.account.verifying_key());
        let me = account.to_hex();
        let ask = order(&env.account, &zone, slot, Side::Sell, 120_000, 1_000, 1, NOW_MS);
        env.exchange.submit_command(ask).await.expect("the ask rests");
        // The same account's crossing bid: its own resting ask is cancelled, nothing trades, the bid rests.
        let bid = order(&env.account, &zone, slot, Side::Buy, 130_000, 400, 2, NOW_MS);
        env.probe.publish(topics::orders(&zone, &me), bid).await;
        let notice = decode::<Reject>(&env.probe.next_on(&topics::rejects(&zone, &me)).await).expect("a notice");
        assert_eq!((notice.reason, notice.of.as_str(), notice.seq), (Reason::SelfTradePrevented, "order", Some(1)));
        assert!(notice.message.contains("resting order 1 was cancelled"), "{}", notice.message);
        let resting = env.exchange.open_orders(account).await.expect("answered");
        assert_eq!(resting.iter().map(|order| order.update.order_nonce).collect::<Vec<_>>(), vec![2]);
        let mut conn = env.test_db.db.get().expect("a connection");
        let stored: i64 = trades::table.count().get_result(&mut conn).expect("count");
        assert_eq!(stored, 0, "an account never trades with itself");
        env
    })
    .await;
}
