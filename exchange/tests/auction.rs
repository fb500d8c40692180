//! The closing auction end to end: signed orders published to a real broker (embedded rumqttd, and
//! Mosquitto when `MQTT_URL` is set) rest without trading once the zone's call phase starts, and at gate
//! closure cross at one uniform price; the trades are stored (SQLite, and PostgreSQL when
//! `DATABASE_URL` is set) and published, with the result on the zone's `auction` topic and the API.

mod support;

use support::decode;

use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::config::{ClosingAuction, ExchangeConfig};
use exchange::service::ExchangeHandle;
use gridex_store::clock::ManualClock;
use gridex_store::schema::trades;
use gridex_store::testing::TestDb;
use protocol::topics;
use protocol::{AccountId, AuctionResult, OrderStatus, OrderUpdate, Side, SlotId, Trade, ZoneId};
use std::sync::Arc;
use support::*;

/// The exchange's clock: a fixed instant, moved by hand.
const NOW_MS: i64 = 1_790_000_000_000;
const SLOT_LEN_MS: i64 = 900_000;
/// The call phase: the last ten minutes before gate closure (five minutes before delivery).
const CALL_MS: i64 = 600_000;
const NAMEPLATE_W: i64 = 10_000;

struct Market {
    exchange: ExchangeHandle,
    clock: Arc<ManualClock>,
    config: ExchangeConfig,
    client_id: String,
    zone: ZoneId,
    slot: SlotId,
    seller: SigningKey,
    buyers: [SigningKey; 2],
}

impl Market {
    /// Starts the market on `test_db` and `broker`, and connects a probe to its zone.
    async fn start(test_db: &TestDb, broker: &BrokerAddr) -> (Market, Probe) {
        eprintln!("backend {:?}, broker {}", test_db.db.backend(), broker.name);
        let zone = ZoneId::parse(&format!("a{}", unique())).expect("a zone id");
        seed_zone(&test_db.db, &zone, SLOT_LEN_MS);
        let (seller, _) = seed_household(&test_db.db, &zone, 11, NAMEPLATE_W);
        let (first, _) = seed_household(&test_db.db, &zone, 12, NAMEPLATE_W);
        let (second, _) = seed_household(&test_db.db, &zone, 13, NAMEPLATE_W);
        let config = ExchangeConfig {
            zones: vec![zone.clone()],
            closing_auctions: vec![ClosingAuction { zone: zone.clone(), call_ms: CALL_MS }],
            ..ExchangeConfig::new(protocol::testing::operator_key())
        };
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let client_id = format!("exchange-{}", unique());
        let exchange = start_exchange(&config, &test_db.db, &clock, broker, &client_id).await;
        let slot = SlotId::new(NOW_MS - NOW_MS % SLOT_LEN_MS + 4 * SLOT_LEN_MS).expect("a slot");
        let probe = Probe::connect(broker, std::slice::from_ref(&zone)).await;
        (Market { exchange, clock, config, client_id, zone, slot, seller, buyers: [first, second] }, probe)
    }

    fn gate_ms(&self) -> i64 {
        self.slot.start_ms() - self.config.gate_closure_ms
    }

    /// Publishes an order over MQTT and returns the order update that acknowledges it.
    async fn place(
        &self,
        probe: &mut Probe,
        key: &SigningKey,
        side: Side,
        price: i64,
        qty_wh: i64,
        nonce: u64,
    ) -> OrderUpdate {
        let account = AccountId::from_verifying_key(&key.verifying_key());
        let bytes = order(key, &self.zone, self.slot, side, price, qty_wh, nonce, self.clock_now());
        probe.publish(topics::orders(&self.zone, &account), bytes).await;
        let payload = probe.next_on(&topics::events(&self.zone, &account)).await;
        decode::<OrderUpdate>(&payload).expect("an order update")
    }

    fn clock_now(&self) -> i64 {
        use gridex_store::clock::Clock;
        self.clock.now_ms()
    }
}

fn stored_trades(test_db: &TestDb, zone: &ZoneId) -> Vec<(i64, i64, String)> {
    let mut conn = test_db.db.get().expect("a connection");
    trades::table
        .filter(trades::zone_id.eq(zone.as_str()))
        .order(trades::trade_id)
        .select((trades::price_per_kwh, trades::qty_wh, trades::buyer_id))
        .load(&mut conn)
        .expect("load trades")
}

fn hex(key: &SigningKey) -> String {
    AccountId::from_verifying_key(&key.verifying_key()).to_hex()
}

/// 500 Wh offered at 0.12 against bids of 300 Wh at 0.20 and 400 Wh at 0.15, placed in the call phase:
/// nothing trades on arrival; at gate closure 500 Wh clear at one price. The most volume trades at any
/// price from 0.12 to 0.15, always with 200 Wh of excess demand, so the price is the highest of them,
/// 0.15: the bid at 0.20 pays 0.15 too, and nobody trades beyond its limit. A restart during the call
/// phase rebuilds the crossed book from the log, so the auction after it is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resting_orders_cross_at_one_price_at_gate_closure_also_after_a_restart_in_the_call_phase() {
    each_backend_and_broker(|test_db, broker| async move {
        let (mut market, mut probe) = Market::start(&test_db, &broker).await;
        let seller = market.seller.clone();
        let [first, second] = market.buyers.clone();

        // Continuous trading before the call: a bid below the ask rests, as always.
        let update = market.place(&mut probe, &first, Side::Buy, 100_000, 100, 1).await;
        assert_eq!(update.status, OrderStatus::Open);

        market.clock.set(market.gate_ms() - CALL_MS);
        let update = market.place(&mut probe, &seller, Side::Sell, 120_000, 500, 1).await;
        assert_eq!((update.status, update.open_qty_wh.0), (OrderStatus::Open, 500));
        let update = market.place(&mut probe, &first, Side::Buy, 200_000, 300, 2).await;
        assert_eq!((update.status, update.filled_qty_wh.0), (OrderStatus::Open, 0), "no trade in the call");
        let update = market.place(&mut probe, &second, Side::Buy, 150_000, 400, 1).await;
        assert_eq!((update.status, update.filled_qty_wh.0), (OrderStatus::Open, 0), "no trade in the call");
        let book =
            market.exchange.book(&market.zone, market.slot, 20).await.expect("answered").expect("the book is open");
        assert_eq!(book.call_phase, Some(true));
        assert_eq!(book.bids.first().map(|level| level.price_per_kwh.0), Some(200_000), "crossed while calling");
        assert!(stored_trades(&test_db, &market.zone).is_empty());

        // A restart in the call phase: the books come back from the log, still calling and crossed.
        market.exchange.clone().shutdown().await;
        market.exchange = start_exchange(&market.config, &test_db.db, &market.clock, &broker, &market.client_id).await;
        let book =
            market.exchange.book(&market.zone, market.slot, 20).await.expect("answered").expect("the book is rebuilt");
        assert_eq!(book.call_phase, Some(true));
        assert_eq!(book.asks.first().map(|level| (level.price_per_kwh.0, level.qty_wh.0)), Some((120_000, 500)));

        market.clock.set(market.gate_ms());
        let result =
            decode::<AuctionResult>(&probe.next_on(&topics::auction(&market.zone)).await).expect("an auction result");
        assert_eq!((result.slot, result.price_per_kwh.map(|price| price.0)), (market.slot, Some(150_000)));
        assert_eq!((result.qty_wh.0, result.trades), (500, 2));
        let mut published = Vec::new();
        for _ in 0..2 {
            published.push(decode::<Trade>(&probe.next_on(&topics::trades(&market.zone)).await).expect("a trade"));
        }
        assert!(published.iter().all(|trade| trade.price_per_kwh.0 == 150_000 && trade.slot == market.slot));
        assert!(published[0].trade_id < published[1].trade_id);
        let stored = stored_trades(&test_db, &market.zone);
        assert_eq!(
            stored,
            vec![(150_000, 300, hex(&first)), (150_000, 200, hex(&second))],
            "the bid at 0.20 fills first (better price), the one at 0.15 with what is left"
        );
        assert_eq!(market.exchange.auctions(&market.zone).await.expect("answered"), vec![result]);
        market.exchange.shutdown().await;
    })
    .await;
}

/// A crash at gate closure (the exchange is down when the slot's gate closes) used to lose the slot's
/// closing auction: recovery rebuilt only the books still open, and gate closure is not a logged
/// command. Now the books whose gate closed while the exchange was down, but whose delivery has not
/// ended, are rebuilt and their auction runs on the first tick, with the same trades (ids after the
/// last command's, time the gate closure). A second restart stores and publishes nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_down_at_gate_closure_runs_the_closing_auction_when_it_comes_back() {
    each_backend_and_broker(|test_db, broker| async move {
        let (mut market, mut probe) = Market::start(&test_db, &broker).await;
        let seller = market.seller.clone();
        let [first, second] = market.buyers.clone();

        market.clock.set(market.gate_ms() - CALL_MS);
        market.place(&mut probe, &seller, Side::Sell, 120_000, 500, 1).await;
        market.place(&mut probe, &first, Side::Buy, 200_000, 300, 1).await;
        market.place(&mut probe, &second, Side::Buy, 150_000, 400, 1).await;

        // Down through gate closure; back a minute later, before delivery starts.
        market.exchange.clone().shutdown().await;
        market.clock.set(market.gate_ms() + 60_000);
        assert!(market.clock_now() < market.slot.start_ms());
        market.exchange = start_exchange(&market.config, &test_db.db, &market.clock, &broker, &market.client_id).await;

        let result =
            decode::<AuctionResult>(&probe.next_on(&topics::auction(&market.zone)).await).expect("an auction result");
        assert_eq!((result.slot, result.price_per_kwh.map(|price| price.0)), (market.slot, Some(150_000)));
        assert_eq!((result.qty_wh.0, result.trades, result.ts_ms.0), (500, 2, market.gate_ms()));
        let mut published = Vec::new();
        for _ in 0..2 {
            published.push(decode::<Trade>(&probe.next_on(&topics::trades(&market.zone)).await).expect("a trade"));
        }
        assert!(published.iter().all(|trade| trade.ts_ms.0 == market.gate_ms()), "trades at the gate closure");
        let expected = vec![(150_000, 300, hex(&first)), (150_000, 200, hex(&second))];
        assert_eq!(stored_trades(&test_db, &market.zone), expected);
        assert_eq!(market.exchange.auctions(&market.zone).await.expect("answered"), vec![result.clone()]);

        // Another restart before delivery ends: the auction is known, nothing is stored or
        // published twice.
        market.exchange.clone().shutdown().await;
        market.clock.set(market.slot.start_ms() + 60_000);
        market.exchange = start_exchange(&market.config, &test_db.db, &market.clock, &broker, &market.client_id).await;
        let again =
            decode::<AuctionResult>(&probe.next_on(&topics::auction(&market.zone)).await).expect("the result again");
        assert_eq!(again, result, "the same result, retained");
        assert_eq!(stored_trades(&test_db, &market.zone), expected);
        let trades_topic = topics::trades(&market.zone);
        let later = probe.drain(std::time::Duration::from_millis(500)).await;
        assert!(later.iter().all(|(topic, _)| *topic != trades_topic), "no trade is published twice");
        market.exchange.shutdown().await;
    })
    .await;
}
