//! The closing auction at a zone's gate closure: the owner uncrosses the book, stores and publishes
//! the trades and filled orders, then the result.

use super::{SlotBook, ZoneOwner, AUCTION_RESULTS_KEPT, TRADES_PER_COMMAND_MAX};
use crate::matching::{AuctionOutcome, Event};
use crate::service::events::MarketEvent;
use crate::store;
use protocol::topics;
use protocol::{AuctionResult, OrderStatus, OrderUpdate, PricePerKwh, SlotId, TimestampMs, Trade, Wh};

impl ZoneOwner {
    /// The closing auction of a book at its gate closure: uncrosses it, stores and publishes the
    /// trades and the filled orders' updates, then the result (`auction` message, retained).
    ///
    /// Everything follows from the log: the trades' ids come after the last command's and their time
    /// is the gate closure, so running the auction again (after a restart in which the gate closed
    /// while the exchange was down, see `ZoneOwner::recover`) gives the same trades. They are stored
    /// idempotently; trades and fills that were already stored are not published again.
    pub(super) async fn run_auction(&mut self, slot: SlotId, slot_book: &mut SlotBook) {
        let gate_ms = self.gate_ms(slot);
        let mut events = Vec::new();
        let outcome = slot_book.book.uncross(&mut events);
        slot_book.version += 1;
        let (trades, updates) = self.describe_auction(slot, slot_book, &events, gate_ms);
        let mut stored_before = false;
        if !trades.is_empty() {
            let command_seq = slot_book.last_command_seq;
            let rows: Vec<(Trade, u64)> = trades.iter().map(|trade| (trade.clone(), command_seq)).collect();
            match self.db.write(move |conn| store::insert_trades(conn, &rows)).await {
                Ok(0) => {
                    tracing::info!(%slot, "the closing auction's trades were stored before a restart");
                    stored_before = true;
                }
                Ok(inserted) if inserted < trades.len() => {
                    tracing::warn!(%slot, inserted, "stored the rest of a closing auction interrupted by a crash");
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, %slot, "storing the closing auction's trades failed"),
            }
        }
        if stored_before {
            // Published before the restart; the (retained, identical) result is published again below.
            self.publish_auction(slot, outcome, gate_ms);
            return;
        }
        for trade in &trades {
            self.outlets.publish_message(topics::trades(&self.zone), trade);
            self.outlets.event(MarketEvent::Trade(trade.clone()));
        }
        for update in &updates {
            self.outlets.publish_message(topics::events(&self.zone, &update.account), update);
            self.outlets.event(MarketEvent::OrderUpdate(update.clone()));
        }
        self.publish_auction(slot, outcome, gate_ms);
    }

    /// The trades and order updates (filled orders only; the rest expire right after) of an uncross.
    fn describe_auction(
        &self,
        slot: SlotId,
        slot_book: &mut SlotBook,
        events: &[Event],
        now_ms: i64,
    ) -> (Vec<Trade>, Vec<OrderUpdate>) {
        let first_id = slot_book.last_command_seq * TRADES_PER_COMMAND_MAX + slot_book.last_command_trades;
        let (mut trades, mut updates) = (Vec::new(), Vec::new());
        for event in events {
            match *event {
                Event::Trade { .. } => {
                    let index = trades.len() as u64;
                    assert!(
                        slot_book.last_command_trades + index < TRADES_PER_COMMAND_MAX,
                        "a closing auction made more trades than trade ids allow"
                    );
                    trades.extend(slot_book.record_trade(
                        event,
                        &self.zone,
                        slot,
                        first_id + index,
                        TimestampMs(now_ms),
                    ));
                }
                Event::Filled { account, nonce } => {
                    let tracked = slot_book.tracked.remove(&(account, nonce));
                    updates.push(OrderUpdate {
                        account,
                        zone: self.zone.clone(),
                        slot,
                        order_nonce: nonce,
                        status: OrderStatus::Filled,
                        price_per_kwh: tracked.map_or(PricePerKwh(0), |tracked| tracked.price),
                        open_qty_wh: Wh(0),
                        filled_qty_wh: tracked.map_or(Wh(0), |tracked| tracked.filled),
                        ts_ms: TimestampMs(now_ms),
                    });
                }
                _ => {}
            }
        }
        (trades, updates)
    }

    fn publish_auction(&mut self, slot: SlotId, outcome: AuctionOutcome, gate_ms: i64) {
        let result = AuctionResult {
            zone: self.zone.clone(),
            slot,
            price_per_kwh: outcome.price,
            qty_wh: outcome.volume,
            trades: outcome.trades,
            ts_ms: TimestampMs(gate_ms),
        };
        self.outlets.publish(topics::auction(&self.zone), result.clone(), rumqttc::QoS::AtLeastOnce, true);
        self.outlets.event(MarketEvent::Auction(result.clone()));
        if self.auctions.len() == AUCTION_RESULTS_KEPT {
            self.auctions.pop_front();
        }
        self.auctions.push_back(result);
    }
}
