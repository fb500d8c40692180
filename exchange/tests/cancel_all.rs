//! `cancel_all` end to end (issue 16): one signed command clears an account's resting orders in a
//! zone (or one slot of it), through the real path: published to a real broker (embedded rumqttd,
//! and Mosquitto when `MQTT_URL` is set) or submitted directly (as HTTP does), verified, logged
//! (SQLite, and PostgreSQL when `DATABASE_URL` is set), applied and replayed after a restart.

mod support;

use support::decode;

use ed25519_dalek::{Signer, SigningKey};
use exchange::config::ExchangeConfig;
use exchange::service::ExchangeHandle;
use gridex_store::clock::ManualClock;
use gridex_store::testing::TestDb;
use protocol::{topics, AccountId, CancelAll, OrderStatus, OrderUpdate, Reason, Reject, Side, Signed, SlotId};
use protocol::{TimestampMs, ZoneId};
use std::future::Future;
use std::sync::Arc;
use support::*;

/// The exchange's clock: a fixed instant, moved by hand.
const NOW_MS: i64 = 1_790_000_000_000;
const SLOT_LEN_MS: i64 = 900_000;

struct Env {
    test_db: TestDb,
    exchange: ExchangeHandle,
    probe: Probe,
    zone: ZoneId,
    clock: Arc<ManualClock>,
    /// The account that cancels, and a neighbour in the same zone whose orders must stay.
    trader: SigningKey,
    neighbour: SigningKey,
    client_id: String,
    config: ExchangeConfig,
    broker: BrokerAddr,
}

impl Env {
    async fn start(test_db: TestDb, broker: &BrokerAddr) -> Env {
        let zone = ZoneId::parse(&format!("c{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, SLOT_LEN_MS);
        let (trader, _) = seed_household(&test_db.db, &zone, 31, 10_000);
        let (neighbour, _) = seed_household(&test_db.db, &zone, 32, 10_000);
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let client_id = format!("exchange-{}", unique());
        // Only this test's zone: tests share Mosquitto.
        let config =
            ExchangeConfig { zones: vec![zone.clone()], ..ExchangeConfig::new(protocol::testing::operator_key()) };
        let exchange = start_exchange(&config, &test_db.db, &clock, broker, &client_id).await;
        let probe = Probe::connect(broker, std::slice::from_ref(&zone)).await;
        Env { test_db, exchange, probe, zone, clock, trader, neighbour, client_id, config, broker: broker.clone() }
    }

    /// The `n`th open slot from now (gate closure five minutes before its start).
    fn slot(&self, n: i64) -> SlotId {
        SlotId::new(NOW_MS - NOW_MS % SLOT_LEN_MS + n * SLOT_LEN_MS).expect("a slot")
    }

    /// Places a resting order (sells above every buy: nothing trades) and returns its nonce.
    async fn rest(&self, key: &SigningKey, slot: SlotId, side: Side, nonce: u64) -> u64 {
        let price = if side == Side::Sell { 250_000 + nonce as i64 * 1_000 } else { 100_000 };
        let bytes = order(key, &self.zone, slot, side, price, 100, nonce, NOW_MS);
        let ack = self.exchange.submit_command(bytes).await.expect("the order is accepted");
        assert_eq!(ack.updates[0].status, OrderStatus::Open, "it rests");
        nonce
    }

    /// The resting orders of `key`: (slot start, nonce), sorted.
    async fn resting(&self, key: &SigningKey) -> Vec<(i64, u64)> {
        let account = AccountId::from_verifying_key(&key.verifying_key());
        let mut orders: Vec<(i64, u64)> = (self.exchange.open_orders(account).await.expect("answered").into_iter())
            .map(|order| (order.update.slot.start_ms(), order.update.order_nonce))
            .collect();
        orders.sort();
        orders
    }

    fn cancel_all(&self, key: &SigningKey, slot: Option<SlotId>, nonce: u64) -> CancelAll {
        CancelAll {
            account: AccountId::from_verifying_key(&key.verifying_key()),
            zone: self.zone.clone(),
            slot,
            nonce,
            ts_ms: TimestampMs(NOW_MS),
        }
    }
}

fn signed(message: CancelAll, key: &SigningKey) -> Vec<u8> {
    Signed::sign(message, key).expect("sign a cancel-all").to_json()
}

async fn on_every_backend<F, Fut>(scenario: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = Env>,
{
    let scenario = &scenario;
    each_backend_and_broker(|test_db, broker| async move {
        let env = scenario(Env::start(test_db, &broker).await).await;
        env.exchange.shutdown().await;
    })
    .await;
}

/// Over MQTT, on the account's orders topic like any command: every resting order of the account in
/// the zone (two slots, both sides) gets a `cancelled` update on its events topic; the neighbour's
/// orders, in the same books, stay. A cancel-all of one slot leaves the account's other slots alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_all_clears_every_resting_order_of_the_account_and_no_other() {
    on_every_backend(|mut env| async move {
        let (near, far) = (env.slot(2), env.slot(6));
        let trader = env.trader.clone();
        let neighbour = env.neighbour.clone();
        let mine = vec![
            (near.start_ms(), env.rest(&trader, near, Side::Sell, 1).await),
            (near.start_ms(), env.rest(&trader, near, Side::Buy, 2).await),
            (far.start_ms(), env.rest(&trader, far, Side::Sell, 3).await),
        ];
        let theirs = vec![
            (near.start_ms(), env.rest(&neighbour, near, Side::Sell, 1).await),
            (far.start_ms(), env.rest(&neighbour, far, Side::Buy, 2).await),
        ];
        assert_eq!(env.resting(&trader).await, mine);

        let account = AccountId::from_verifying_key(&trader.verifying_key()).to_hex();
        let events = topics::events(&env.zone, &account);
        env.probe.publish(topics::orders(&env.zone, &account), signed(env.cancel_all(&trader, None, 4), &trader)).await;
        let mut cancelled = Vec::new();
        while cancelled.len() < mine.len() {
            let update = decode::<OrderUpdate>(&env.probe.next_on(&events).await).expect("an order update");
            if update.status == OrderStatus::Open {
                continue; // the placements' own updates, published before
            }
            assert_eq!(update.status, OrderStatus::Cancelled);
            assert_eq!(update.open_qty_wh.0, 100, "cancelled with its open quantity");
            cancelled.push((update.slot.start_ms(), update.order_nonce));
        }
        cancelled.sort();
        assert_eq!(cancelled, mine, "one cancelled update per resting order of the account");
        assert_eq!(env.resting(&trader).await, Vec::new(), "nothing of the account rests");
        assert_eq!(env.resting(&neighbour).await, theirs, "the neighbour's orders rest as before");

        // One slot only: the far order stays.
        env.rest(&trader, near, Side::Sell, 5).await;
        env.rest(&trader, far, Side::Sell, 6).await;
        let ack = env.exchange.submit_command(signed(env.cancel_all(&trader, Some(near), 7), &trader)).await;
        let ack = ack.expect("the cancel-all is accepted");
        let listed: Vec<(i64, u64, OrderStatus)> =
            ack.updates.iter().map(|update| (update.slot.start_ms(), update.order_nonce, update.status)).collect();
        assert_eq!(listed, vec![(near.start_ms(), 5, OrderStatus::Cancelled)], "the reply lists what it cancelled");
        assert!(ack.trades.is_empty());
        assert_eq!(env.resting(&trader).await, vec![(far.start_ms(), 6)]);
        assert_eq!(env.resting(&neighbour).await, theirs);

        // Nothing left to cancel in that slot: accepted, an empty list.
        let ack = env.exchange.submit_command(signed(env.cancel_all(&trader, Some(near), 8), &trader)).await;
        assert!(ack.expect("accepted").updates.is_empty());
        env
    })
    .await;
}

/// A neighbour (or anyone on the broker) sends a cancel-all naming the trader's account, signed with
/// its own key: refused as `bad_signature`, over MQTT and directly, and the trader's orders stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cancel_all_is_refused() {
    on_every_backend(|mut env| async move {
        let slot = env.slot(3);
        let trader = env.trader.clone();
        env.rest(&trader, slot, Side::Sell, 1).await;
        env.rest(&trader, slot, Side::Buy, 2).await;
        let before = env.resting(&trader).await;

        // The neighbour's signature over exactly the bytes the trader would sign.
        let message = env.cancel_all(&trader, None, 3);
        let signing_bytes = Signed::sign(message.clone(), &trader).expect("signs").signing_bytes().to_vec();
        let forged_signature = env.neighbour.sign(&signing_bytes).to_bytes();
        let forged = Signed::with_signature(message, forged_signature).expect("well-formed").to_json();

        let account = AccountId::from_verifying_key(&trader.verifying_key()).to_hex();
        env.probe.publish(topics::orders(&env.zone, &account), forged.clone()).await;
        let reject = decode::<Reject>(&env.probe.next_on(&topics::rejects(&env.zone, &account)).await).expect("reject");
        assert_eq!((reject.of.as_str(), reject.reason), ("cancel_all", Reason::BadSignature));
        let rejection = env.exchange.submit_command(forged).await.expect_err("refused directly too");
        assert_eq!(rejection.reason, Reason::BadSignature);
        assert_eq!(env.resting(&trader).await, before, "the trader's orders rest as before");

        // The nonce was not used: the trader's own cancel-all with it goes through.
        let ack = env.exchange.submit_command(signed(env.cancel_all(&trader, None, 3), &trader)).await;
        assert_eq!(ack.expect("the trader's own is accepted").updates.len(), 2);
        env
    })
    .await;
}

/// A cancel-all sent again (a broker's redelivery, a client's retry, or a captured copy replayed to
/// clear orders placed since) is refused (`duplicate`), as is another command under its nonce
/// (`replayed`); the orders placed after it stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_cancel_all_is_refused() {
    on_every_backend(|mut env| async move {
        let slot = env.slot(3);
        let trader = env.trader.clone();
        env.rest(&trader, slot, Side::Sell, 1).await;
        let cancel_all = signed(env.cancel_all(&trader, None, 2), &trader);
        let ack = env.exchange.submit_command(cancel_all.clone()).await.expect("accepted");
        assert_eq!(ack.updates.len(), 1);
        env.rest(&trader, slot, Side::Sell, 3).await;

        let rejection = env.exchange.submit_command(cancel_all.clone()).await.expect_err("a resend");
        assert_eq!(rejection.reason, Reason::Duplicate);
        let account = AccountId::from_verifying_key(&trader.verifying_key()).to_hex();
        env.probe.publish(topics::orders(&env.zone, &account), cancel_all).await;
        let reject = decode::<Reject>(&env.probe.next_on(&topics::rejects(&env.zone, &account)).await).expect("reject");
        assert_eq!((reject.reason, reject.seq), (Reason::Duplicate, Some(2)));
        let same_nonce = signed(env.cancel_all(&trader, Some(slot), 2), &trader);
        let rejection = env.exchange.submit_command(same_nonce).await.expect_err("a used nonce");
        assert_eq!(rejection.reason, Reason::Replayed);
        assert_eq!(env.resting(&trader).await, vec![(slot.start_ms(), 3)], "the later order rests");
        env
    })
    .await;
}

/// The books rebuilt from the log after a restart equal the live books after a cancel-all, even
/// once the nearest slot it touched has closed: a whole-zone cancel-all is logged under a slot
/// beyond the horizon, so recovery (which loads only the commands of books still open) replays it
/// for the far slot too. Had it been logged under the near slot, the far slot's cancelled order
/// would come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_all_survives_a_restart() {
    on_every_backend(|mut env| async move {
        let (near, far) = (env.slot(2), env.slot(8));
        let (trader, neighbour) = (env.trader.clone(), env.neighbour.clone());
        env.rest(&trader, near, Side::Sell, 1).await;
        env.rest(&trader, far, Side::Sell, 2).await;
        env.rest(&trader, far, Side::Buy, 3).await;
        env.rest(&neighbour, far, Side::Sell, 1).await;
        env.rest(&neighbour, near, Side::Buy, 2).await;
        let ack = env.exchange.submit_command(signed(env.cancel_all(&trader, None, 4), &trader)).await;
        assert_eq!(ack.expect("accepted").updates.len(), 3);
        env.rest(&trader, far, Side::Sell, 5).await;
        let live = env.exchange.resting_orders().await;
        assert!(live.iter().any(|book| book.slot == far && book.orders.len() == 2), "{live:?}");

        env.exchange.clone().shutdown().await;
        env.exchange = start_exchange(&env.config, &env.test_db.db, &env.clock, &env.broker, &env.client_id).await;
        assert_eq!(env.exchange.resting_orders().await, live, "the replayed books equal the live books");

        // Down again until the near slot's gate has closed: its book is not rebuilt any more, and
        // the far book still comes back without the cancelled orders.
        env.exchange.clone().shutdown().await;
        env.clock.set(near.start_ms() - 60_000);
        env.exchange = start_exchange(&env.config, &env.test_db.db, &env.clock, &env.broker, &env.client_id).await;
        let far_only: Vec<_> = live.iter().filter(|book| book.slot != near).cloned().collect();
        assert_eq!(env.exchange.resting_orders().await, far_only);
        assert_eq!(env.resting(&trader).await, vec![(far.start_ms(), 5)]);
        env
    })
    .await;
}
