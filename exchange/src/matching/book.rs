//! The order book of one (zone, delivery slot): validation, matching, cancel, replace, gate closure.

use super::auction::{self, AuctionOutcome, Clearing};
use super::config::{BookConfig, BookConfigError};
use super::events::Event;
use super::level::BookSide;
use super::order::{AccountKey, NewOrder, NodeIndex, OrderNode, RestingOrderView, NIL};
use super::table::OrderTable;
use protocol::{AccountId, Level, PricePerKwh, Reason, Side, TimeInForce, Wh};
use rustc_hash::FxHashMap;
use std::fmt;

/// How many orders each account has resting (the orders themselves are found through the table).
#[derive(Debug, Default)]
struct OpenOrders(FxHashMap<AccountKey, u32>);

impl OpenOrders {
    fn of(&self, account: &AccountId) -> usize {
        self.0.get(&AccountKey(*account)).map_or(0, |&count| count as usize)
    }

    fn add(&mut self, account: &AccountId) {
        *self.0.entry(AccountKey(*account)).or_insert(0) += 1;
    }

    fn subtract(&mut self, account: &AccountId) {
        let count = self.0.get_mut(&AccountKey(*account));
        debug_assert!(count.is_some(), "forgetting an order of an account with none");
        if let Some(count) = count {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&AccountKey(*account));
            }
        }
    }
}

/// A continuous double auction for one (zone, delivery slot): price-time priority, trades at the resting
/// order's price. Owned by one task; no I/O, no clock, and no allocation per operation once its order
/// table, per-account counts and the caller's event buffer have grown to the book's working size.
pub struct OrderBook {
    config: BookConfig,
    bids: BookSide,
    asks: BookSide,
    table: OrderTable,
    open_orders: OpenOrders,
    /// The last trade sequence number handed out (0: none yet).
    trade_seq: u64,
    /// In the closing auction's call phase: orders rest without trading.
    calling: bool,
    closed: bool,
}

impl fmt::Debug for OrderBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderBook")
            .field("config", &self.config)
            .field("best_bid", &self.best_bid())
            .field("best_ask", &self.best_ask())
            .field("open_orders", &self.table.len())
            .field("trade_seq", &self.trade_seq)
            .field("calling", &self.calling)
            .field("closed", &self.closed)
            .finish()
    }
}

impl OrderBook {
    /// An empty, open book.
    ///
    /// # Panics
    /// If `config` is invalid (a programmer or operator error; check it with [`BookConfig::validate`] or
    /// use [`OrderBook::try_new`]).
    pub fn new(config: BookConfig) -> Self {
        match Self::try_new(config) {
            Ok(book) => book,
            Err(error) => panic!("invalid book configuration {config:?}: {error}"),
        }
    }

    /// An empty, open book, or why `config` cannot make one.
    pub fn try_new(config: BookConfig) -> Result<Self, BookConfigError> {
        config.validate()?;
        let price_levels = config.price_levels();
        Ok(Self {
            config,
            bids: BookSide::new(Side::Buy, price_levels),
            asks: BookSide::new(Side::Sell, price_levels),
            table: OrderTable::default(),
            open_orders: OpenOrders::default(),
            trade_seq: 0,
            calling: false,
            closed: false,
        })
    }

    pub fn config(&self) -> &BookConfig {
        &self.config
    }

    /// Whether gate closure has happened; a closed book accepts nothing.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the book is in the closing auction's call phase (see [`OrderBook::begin_call`]).
    pub fn is_calling(&self) -> bool {
        self.calling
    }

    /// Starts the closing auction's call phase: from now on orders rest without trading until
    /// [`OrderBook::uncross`]. Does nothing on a closed book or one already calling.
    pub fn begin_call(&mut self) {
        self.calling = !self.closed;
    }

    /// The last trade sequence number handed out (0 before the first trade).
    pub fn trade_seq(&self) -> u64 {
        self.trade_seq
    }

    /// How many orders rest in the book.
    pub fn open_order_count(&self) -> usize {
        self.table.len()
    }

    pub fn best_bid(&self) -> Option<PricePerKwh> {
        self.bids.best().map(|level| self.price_of(level))
    }

    pub fn best_ask(&self) -> Option<PricePerKwh> {
        self.asks.best().map(|level| self.price_of(level))
    }

    /// Validates, then matches `order` and rests what GTC leaves; appends what happened to `events`.
    pub fn submit(&mut self, order: NewOrder, events: &mut Vec<Event>) {
        let NewOrder { account, nonce, side, price, qty, tif, post_only, ts_ms: _ } = order;
        let reject = |events: &mut Vec<Event>, reason| events.push(Event::Rejected { account, nonce, reason });
        if self.closed {
            return reject(events, Reason::GateClosed);
        }
        let level = match self.level_for(price, qty) {
            Ok(level) => level,
            Err(reason) => return reject(events, reason),
        };
        if post_only && tif != TimeInForce::Gtc {
            return reject(events, Reason::InvalidValue);
        }
        if self.calling && tif != TimeInForce::Gtc {
            return reject(events, Reason::InvalidValue);
        }
        if self.table.find(&account, nonce).is_some() {
            return reject(events, Reason::Replayed);
        }
        if tif == TimeInForce::Gtc && self.open_orders.of(&account) >= self.config.open_orders_per_account_max {
            return reject(events, Reason::TooManyOpenOrders);
        }
        if post_only && !self.calling && self.would_cross(side, level) {
            return reject(events, Reason::PostOnlyWouldCross);
        }
        if tif == TimeInForce::Fok && !self.can_fill(&account, side, level, qty.get()) {
            return reject(events, Reason::FokNotFillable);
        }
        events.push(Event::Accepted { account, nonce, side, price, qty });
        if self.calling {
            self.cancel_own_crossing(&account, side, level, events);
            let node =
                OrderNode { account, nonce, open_qty: qty.get(), filled_qty: 0, level, side, post_only, live: true };
            self.rest(node);
            events.push(Event::Rested { account, nonce, open_qty: qty });
            return;
        }

        let remaining = if self.would_cross(side, level) {
            self.match_inbound(&account, nonce, side, level, qty.get(), events)
        } else {
            qty.get()
        };
        let filled = qty.get() - remaining;
        if remaining == 0 {
            events.push(Event::Filled { account, nonce });
            return;
        }
        match tif {
            TimeInForce::Gtc => {
                let node = OrderNode {
                    account,
                    nonce,
                    open_qty: remaining,
                    filled_qty: filled,
                    level,
                    side,
                    post_only,
                    live: true,
                };
                self.rest(node);
                events.push(Event::Rested { account, nonce, open_qty: Wh(remaining) });
            }
            TimeInForce::Ioc | TimeInForce::Fok => {
                debug_assert!(tif == TimeInForce::Ioc, "a fillable FOK order left a remainder");
                events.push(Event::Cancelled {
                    account,
                    nonce,
                    open_qty: Wh(remaining),
                    filled_qty: Wh(filled),
                    by_request: false,
                });
            }
        }
    }

    /// Cancels the resting order `(account, nonce)`.
    pub fn cancel(&mut self, account: AccountId, nonce: u64, events: &mut Vec<Event>) {
        if self.closed {
            return events.push(Event::Rejected { account, nonce, reason: Reason::GateClosed });
        }
        let Some(index) = self.table.find(&account, nonce) else {
            return events.push(Event::Rejected { account, nonce, reason: Reason::UnknownOrder });
        };
        let node = self.table[index];
        self.retire(node.side, index);
        events.push(Event::Cancelled {
            account,
            nonce,
            open_qty: Wh(node.open_qty),
            filled_qty: Wh(node.filled_qty),
            by_request: true,
        });
    }

    /// Cancels every resting order of `account`, in priority order (bids best first, then asks): a
    /// `Cancelled { by_request: true }` for each; nothing for an account with no resting order or a
    /// closed book (its orders have expired).
    pub fn cancel_account(&mut self, account: AccountId, events: &mut Vec<Event>) {
        if self.closed {
            return;
        }
        let nonces: Vec<u64> = self
            .resting_orders()
            .into_iter()
            .filter(|order| order.account == account)
            .map(|order| order.nonce)
            .collect();
        for nonce in nonces {
            self.cancel(account, nonce, events);
        }
    }

    /// Sets the resting order's price and open quantity. Reducing (or keeping) the quantity at the same
    /// price keeps its place in the queue; any other change sends it to the back of the queue at the new
    /// price, matching first as a new arrival would.
    pub fn replace(&mut self, account: AccountId, nonce: u64, price: PricePerKwh, qty: Wh, events: &mut Vec<Event>) {
        let reject = |events: &mut Vec<Event>, reason| events.push(Event::Rejected { account, nonce, reason });
        if self.closed {
            return reject(events, Reason::GateClosed);
        }
        let Some(index) = self.table.find(&account, nonce) else {
            return reject(events, Reason::UnknownOrder);
        };
        let level = match self.level_for(price, qty) {
            Ok(level) => level,
            Err(reason) => return reject(events, reason),
        };
        let node = self.table[index];
        if level == node.level && qty.get() <= node.open_qty {
            let reduction = node.open_qty - qty.get();
            self.table[index].open_qty = qty.get();
            self.side_mut(node.side).levels[level as usize].open_qty -= reduction;
            events.push(Event::Replaced { account, nonce, price, open_qty: qty, kept_priority: true });
            return;
        }
        let replaced = Event::Replaced { account, nonce, price, open_qty: qty, kept_priority: false };
        if self.calling {
            return self.move_in_call(index, level, qty, replaced, events);
        }
        if node.post_only && self.would_cross(node.side, level) {
            return reject(events, Reason::PostOnlyWouldCross);
        }
        let (queues, table) = self.side_and_table(node.side);
        queues.unlink(table, index);

        if !self.would_cross(node.side, level) {
            // The common move: nothing leaves the table, so `index` still names the node.
            let moved = &mut self.table[index];
            moved.open_qty = qty.get();
            moved.level = level;
            let (queues, table) = self.side_and_table(node.side);
            queues.push_back(table, level, index);
            // Both events at once: one capacity check for the pair.
            events.extend_from_slice(&[replaced, Event::Rested { account, nonce, open_qty: qty }]);
            return;
        }
        events.push(replaced);
        // Matching removes orders from the table, which may move nodes, so the moving order leaves the
        // table while it matches (every node in the table must be linked in a queue during a removal).
        self.table.remove(index, &mut self.bids, &mut self.asks);
        let remaining = self.match_inbound(&account, nonce, node.side, level, qty.get(), events);
        if remaining == 0 {
            self.open_orders.subtract(&account);
            events.push(Event::Filled { account, nonce });
            return;
        }
        let filled_qty = node.filled_qty + qty.get() - remaining;
        self.rest_again(OrderNode { open_qty: remaining, filled_qty, level, ..node });
        events.push(Event::Rested { account, nonce, open_qty: Wh(remaining) });
    }

    /// Gate closure: every resting order expires (bids best first, then asks best first, each queue in
    /// time order) and the book accepts nothing more. Closing a closed book does nothing.
    pub fn close(&mut self, events: &mut Vec<Event>) {
        if self.closed {
            return;
        }
        for view in self.resting_orders() {
            events.push(Event::Expired {
                account: view.account,
                nonce: view.nonce,
                open_qty: view.open_qty,
                filled_qty: view.filled_qty,
            });
        }
        let price_levels = self.config.price_levels();
        self.bids = BookSide::new(Side::Buy, price_levels);
        self.asks = BookSide::new(Side::Sell, price_levels);
        self.table = OrderTable::default();
        self.open_orders = OpenOrders::default();
        self.calling = false;
        self.closed = true;
    }

    /// The closing auction: trades every crossing order at one uniform price (see
    /// [`auction`](super::auction) for the price rule), ends the call phase and returns what traded.
    /// Events: one `Trade` per pair of a bid and an ask in priority order, then `Filled` for each
    /// order used up, bids first. The book is uncrossed afterwards; the caller closes it next.
    pub fn uncross(&mut self, events: &mut Vec<Event>) -> AuctionOutcome {
        self.calling = false;
        if self.closed {
            return AuctionOutcome::NONE;
        }
        let (bids, asks) = (self.level_quantities(Side::Buy), self.level_quantities(Side::Sell));
        let Some(clearing) = auction::clearing(&bids, &asks) else {
            return AuctionOutcome::NONE;
        };
        let bid_fills = self.allocate(Side::Buy, &clearing);
        let ask_fills = self.allocate(Side::Sell, &clearing);
        let price = self.price_of(clearing.level);
        // Buyers pressed when demand exceeded supply at the price, sellers when supply did.
        let aggressor = if clearing.supply_wh > clearing.demand_wh { Side::Sell } else { Side::Buy };
        let trades = self.pair_fills(&bid_fills, &ask_fills, price, aggressor, events);
        for &(account, nonce, fill) in bid_fills.iter().chain(&ask_fills) {
            self.apply_auction_fill(account, nonce, fill, events);
        }
        // The volume is at most the open quantity of a bounded number of orders each below 2^53; it
        // fits i64 unless a book held more than a thousand maximal orders, where it saturates.
        let volume = Wh(i64::try_from(clearing.volume_wh).unwrap_or(i64::MAX));
        AuctionOutcome { price: Some(price), volume, trades }
    }

    /// Up to `levels` price levels per side, best first: `(bids, asks)`.
    pub fn depth(&self, levels: usize) -> (Vec<Level>, Vec<Level>) {
        let summarize = |side: &BookSide| -> Vec<Level> {
            side.occupied_best_first()
                .take(levels)
                .map(|level| {
                    let queue = &side.levels[level as usize];
                    let orders = self.queue_len(queue.head);
                    Level { price_per_kwh: self.price_of(level), qty_wh: Wh(queue.open_qty), orders }
                })
                .collect()
        };
        (summarize(&self.bids), summarize(&self.asks))
    }

    /// Every resting order in priority order: bids best first, then asks best first, each price level
    /// oldest first. Two books with equal lists have the same orders with the same priority.
    pub fn resting_orders(&self) -> Vec<RestingOrderView> {
        let mut views = Vec::with_capacity(self.open_order_count());
        for side in [&self.bids, &self.asks] {
            for level in side.occupied_best_first() {
                let mut cursor = side.levels[level as usize].head;
                while cursor != NIL {
                    views.push(self.view(cursor));
                    cursor = self.table.link(cursor).next;
                }
            }
        }
        views
    }

    /// How many orders the queue starting at `head` holds.
    fn queue_len(&self, head: NodeIndex) -> u32 {
        let (mut orders, mut cursor) = (0, head);
        while cursor != NIL {
            orders += 1;
            cursor = self.table.link(cursor).next;
        }
        orders
    }

    /// The resting order `(account, nonce)`, if it rests.
    pub fn order(&self, account: AccountId, nonce: u64) -> Option<RestingOrderView> {
        self.table.find(&account, nonce).map(|index| self.view(index))
    }

    // --- closing auction ---

    /// `(level, open quantity)` of every occupied level of `side`, best first.
    fn level_quantities(&self, side: Side) -> Vec<(u32, i64)> {
        let queues = match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        };
        queues.occupied_best_first().map(|level| (level, queues.levels[level as usize].open_qty)).collect()
    }

    /// The fills of `side` at the clearing price, in price-time priority: `(account, nonce, fill)`,
    /// adding up to the clearing volume.
    fn allocate(&self, side: Side, clearing: &Clearing) -> Vec<(AccountId, u64, i64)> {
        let queues = match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        };
        let mut remaining = clearing.volume_wh;
        let mut fills = Vec::new();
        for level in queues.occupied_best_first() {
            if remaining == 0 || !queues.is_at_least_as_good(level, clearing.level) {
                break;
            }
            let mut cursor = queues.levels[level as usize].head;
            while cursor != NIL && remaining > 0 {
                let node = &self.table[cursor];
                let fill = remaining.min(i128::from(node.open_qty));
                remaining -= fill;
                // `fill <= node.open_qty`, an i64.
                fills.push((node.account, node.nonce, fill as i64));
                cursor = self.table.link(cursor).next;
            }
        }
        debug_assert!(remaining == 0, "the clearing volume exceeds the eligible quantity");
        fills
    }

    /// Pairs bid and ask fills in priority order into trades at `price`; returns how many.
    fn pair_fills(
        &mut self,
        bids: &[(AccountId, u64, i64)],
        asks: &[(AccountId, u64, i64)],
        price: PricePerKwh,
        aggressor: Side,
        events: &mut Vec<Event>,
    ) -> u64 {
        let (mut bid_index, mut ask_index) = (0, 0);
        let (mut bid_left, mut ask_left) = (0i64, 0i64);
        let mut trades = 0;
        loop {
            if bid_left == 0 {
                let Some(&(_, _, fill)) = bids.get(bid_index) else { break };
                bid_left = fill;
                bid_index += 1;
            }
            if ask_left == 0 {
                let Some(&(_, _, fill)) = asks.get(ask_index) else { break };
                ask_left = fill;
                ask_index += 1;
            }
            let qty = bid_left.min(ask_left);
            let (buyer, buy_nonce, _) = bids[bid_index - 1];
            let (seller, sell_nonce, _) = asks[ask_index - 1];
            debug_assert!(buyer != seller, "the call paired an account with itself");
            bid_left -= qty;
            ask_left -= qty;
            self.trade_seq += 1;
            trades += 1;
            events.push(Event::Trade {
                trade_seq: self.trade_seq,
                price,
                qty: Wh(qty),
                buyer,
                buy_nonce,
                seller,
                sell_nonce,
                aggressor,
            });
        }
        debug_assert!(bid_left == 0 && ask_left == 0, "bid and ask fills do not add up to the same volume");
        trades
    }

    /// Takes an auction fill off the resting order `(account, nonce)`; retires it when used up.
    fn apply_auction_fill(&mut self, account: AccountId, nonce: u64, fill: i64, events: &mut Vec<Event>) {
        let Some(index) = self.table.find(&account, nonce) else {
            debug_assert!(false, "an allocated order left the book");
            return;
        };
        let node = &mut self.table[index];
        debug_assert!(fill <= node.open_qty, "an auction fill exceeds the open quantity");
        node.open_qty -= fill;
        node.filled_qty += fill;
        let (side, level, open_qty) = (node.side, node.level, node.open_qty);
        self.side_mut(side).levels[level as usize].open_qty -= fill;
        if open_qty == 0 {
            self.retire(side, index);
            events.push(Event::Filled { account, nonce });
        }
    }

    /// Self-trade prevention in the call phase, "cancel resting": cancels `account`'s resting orders of
    /// the other side that an order of `side` at `level` crosses.
    fn cancel_own_crossing(&mut self, account: &AccountId, side: Side, level: u32, events: &mut Vec<Event>) {
        let opposite = match side {
            Side::Buy => &self.asks,
            Side::Sell => &self.bids,
        };
        let mut own = Vec::new();
        for resting_level in opposite.occupied_best_first() {
            if !opposite.is_at_least_as_good(resting_level, level) {
                break;
            }
            let mut cursor = opposite.levels[resting_level as usize].head;
            while cursor != NIL {
                if self.table[cursor].account == *account {
                    own.push(self.table[cursor].nonce);
                }
                cursor = self.table.link(cursor).next;
            }
        }
        for nonce in own {
            // Found again each time: retiring may move nodes in the table.
            let Some(index) = self.table.find(account, nonce) else { continue };
            let node = self.table[index];
            self.retire(side.opposite(), index);
            events.push(Event::Cancelled {
                account: *account,
                nonce,
                open_qty: Wh(node.open_qty),
                filled_qty: Wh(node.filled_qty),
                by_request: false,
            });
        }
    }

    /// A replace in the call phase that moves the order: to the back of the queue at `level` with
    /// `qty`, without trading (events: `Replaced`, any self-trade cancels, `Rested`).
    fn move_in_call(&mut self, index: NodeIndex, level: u32, qty: Wh, replaced: Event, events: &mut Vec<Event>) {
        let node = self.table[index];
        let (queues, table) = self.side_and_table(node.side);
        queues.unlink(table, index);
        // Out of the table while own orders are cancelled (removals may move nodes), still counted.
        self.table.remove(index, &mut self.bids, &mut self.asks);
        events.push(replaced);
        self.cancel_own_crossing(&node.account, node.side, level, events);
        self.rest_again(OrderNode { open_qty: qty.get(), level, ..node });
        events.push(Event::Rested { account: node.account, nonce: node.nonce, open_qty: qty });
    }

    // --- matching ---

    /// Matches an inbound order of `side` with limit `limit_level` against the other side, best price
    /// first and oldest first within a price, and returns the quantity left unfilled.
    fn match_inbound(
        &mut self,
        account: &AccountId,
        nonce: u64,
        side: Side,
        limit_level: u32,
        qty: i64,
        events: &mut Vec<Event>,
    ) -> i64 {
        let (price_min, tick) = (self.config.price_min.get(), self.config.tick.get());
        let resting_side = side.opposite();
        let mut remaining = qty;
        while remaining > 0 {
            let opposite = self.side_mut(resting_side);
            let Some(best) = opposite.best() else { break };
            if !opposite.is_at_least_as_good(best, limit_level) {
                break;
            }
            let price = PricePerKwh(price_min + i64::from(best) * tick);
            // Every order before `cursor` in the queue has been retired, so `cursor` is always the head;
            // it is read again after each removal because removals may move nodes in the table.
            let mut cursor = opposite.levels[best as usize].head;
            while cursor != NIL && remaining > 0 {
                let resting = self.table[cursor];
                if resting.account == *account {
                    // Self-trade prevention, "cancel resting": the older order of the same account goes.
                    self.retire(resting_side, cursor);
                    events.push(Event::Cancelled {
                        account: resting.account,
                        nonce: resting.nonce,
                        open_qty: Wh(resting.open_qty),
                        filled_qty: Wh(resting.filled_qty),
                        by_request: false,
                    });
                    cursor = self.side_mut(resting_side).levels[best as usize].head;
                    continue;
                }
                let fill = remaining.min(resting.open_qty);
                debug_assert!(fill > 0, "a resting order has no open quantity");
                remaining -= fill;
                let maker = &mut self.table[cursor];
                maker.open_qty -= fill;
                maker.filled_qty += fill;
                let maker_open_qty = maker.open_qty;
                self.side_mut(resting_side).levels[best as usize].open_qty -= fill;
                self.trade_seq += 1;
                let (buyer, buy_nonce, seller, sell_nonce) = match side {
                    Side::Buy => (*account, nonce, resting.account, resting.nonce),
                    Side::Sell => (resting.account, resting.nonce, *account, nonce),
                };
                events.push(Event::Trade {
                    trade_seq: self.trade_seq,
                    price,
                    qty: Wh(fill),
                    buyer,
                    buy_nonce,
                    seller,
                    sell_nonce,
                    aggressor: side,
                });
                if maker_open_qty == 0 {
                    self.retire(resting_side, cursor);
                    events.push(Event::Filled { account: resting.account, nonce: resting.nonce });
                }
                cursor = self.side_mut(resting_side).levels[best as usize].head;
            }
        }
        remaining
    }

    /// Whether an order of `side` at `level` would meet the other side's best price.
    #[inline]
    fn would_cross(&self, side: Side, level: u32) -> bool {
        match side {
            Side::Buy => self.asks.best().is_some_and(|best| best <= level),
            Side::Sell => self.bids.best().is_some_and(|best| best >= level),
        }
    }

    /// Whether `qty` of the other side's orders, other than `account`'s own, are at `level` or better.
    fn can_fill(&self, account: &AccountId, side: Side, limit_level: u32, qty: i64) -> bool {
        let opposite = match side {
            Side::Buy => &self.asks,
            Side::Sell => &self.bids,
        };
        let mut available = 0;
        for level in opposite.occupied_best_first() {
            if !opposite.is_at_least_as_good(level, limit_level) {
                return false;
            }
            let mut cursor = opposite.levels[level as usize].head;
            while cursor != NIL {
                let resting = &self.table[cursor];
                if resting.account != *account {
                    available += resting.open_qty;
                    if available >= qty {
                        return true;
                    }
                }
                cursor = self.table.link(cursor).next;
            }
        }
        false
    }

    // --- helpers ---

    /// The level index of a valid price, or why the price or quantity is refused.
    fn level_for(&self, price: PricePerKwh, qty: Wh) -> Result<u32, Reason> {
        let config = &self.config;
        if price < config.price_min || price > config.price_max {
            return Err(Reason::PriceOutOfBand);
        }
        // `price_min` is on the tick grid, so the price is on it exactly when its offset is: one division,
        // in 32 bits when the band allows (the common case; several times cheaper than a 64-bit divide).
        let offset = price.get() - config.price_min.get();
        let level = match (u32::try_from(offset), u32::try_from(config.tick.get())) {
            (Ok(offset), Ok(tick)) => i64::from(offset / tick),
            _ => offset / config.tick.get(),
        };
        if level * config.tick.get() != offset {
            return Err(Reason::PriceOffTick);
        }
        if qty < config.qty_min {
            return Err(Reason::QuantityTooSmall);
        }
        if qty > config.qty_max {
            return Err(Reason::QuantityTooLarge);
        }
        // In the band, so below PRICE_LEVELS_MAX (checked by BookConfig::validate) and fits u32.
        Ok(level as u32)
    }

    fn price_of(&self, level: u32) -> PricePerKwh {
        PricePerKwh(self.config.price_min.get() + i64::from(level) * self.config.tick.get())
    }

    fn side_and_table(&mut self, side: Side) -> (&mut BookSide, &mut OrderTable) {
        match side {
            Side::Buy => (&mut self.bids, &mut self.table),
            Side::Sell => (&mut self.asks, &mut self.table),
        }
    }

    /// Removes the resting order at `index` of `side` from its queue, the table and the per-account
    /// counts. Other nodes of the table may move (see [`OrderTable::remove`]).
    #[inline]
    fn retire(&mut self, side: Side, index: NodeIndex) {
        match side {
            Side::Buy => self.bids.unlink(&mut self.table, index),
            Side::Sell => self.asks.unlink(&mut self.table, index),
        }
        self.open_orders.subtract(&self.table[index].account);
        self.table.remove(index, &mut self.bids, &mut self.asks);
    }

    /// Puts a new resting order (not yet counted for its account) at the back of its level's queue.
    fn rest(&mut self, node: OrderNode) {
        self.open_orders.add(&node.account);
        self.rest_again(node);
    }

    /// Puts an order already counted for its account at the back of its level's queue.
    fn rest_again(&mut self, node: OrderNode) {
        if !self.table.has_room() {
            self.grow_table();
        }
        let index = self.table.insert(node);
        let (queues, table) = self.side_and_table(node.side);
        queues.push_back(table, node.level, index);
    }

    /// Moves every resting order into a table twice the size, keeping each queue's order.
    #[cold]
    fn grow_table(&mut self) {
        let mut table = self.table.grown();
        let price_levels = self.config.price_levels();
        let mut bids = BookSide::new(Side::Buy, price_levels);
        let mut asks = BookSide::new(Side::Sell, price_levels);
        for (old, new) in [(&self.bids, &mut bids), (&self.asks, &mut asks)] {
            for level in old.occupied_best_first() {
                let mut cursor = old.levels[level as usize].head;
                while cursor != NIL {
                    let index = table.insert(self.table[cursor]);
                    new.push_back(&mut table, level, index);
                    cursor = self.table.link(cursor).next;
                }
            }
        }
        (self.table, self.bids, self.asks) = (table, bids, asks);
    }

    fn side_mut(&mut self, side: Side) -> &mut BookSide {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    fn view(&self, index: NodeIndex) -> RestingOrderView {
        let node = &self.table[index];
        RestingOrderView {
            account: node.account,
            nonce: node.nonce,
            side: node.side,
            price: self.price_of(node.level),
            open_qty: Wh(node.open_qty),
            filled_qty: Wh(node.filled_qty),
            post_only: node.post_only,
        }
    }

    // --- validation ---

    /// Recomputes every cached total (level quantities, the occupancy bitmaps, best prices, the
    /// order table's live count and load, per-account counts) from the queues and compares; also
    /// checks that the book is not crossed (outside a call phase) and that a closed book is empty.
    /// For tests and debugging: it walks the whole book.
    pub fn validate(&self) -> Result<(), String> {
        let mut live = 0usize;
        let mut per_account: FxHashMap<AccountKey, u32> = FxHashMap::default();
        for side in [&self.bids, &self.asks] {
            for (level, queue) in side.levels.iter().enumerate() {
                let level = level as u32;
                let (open_qty, orders) = self.validate_queue(side, level)?;
                if open_qty != queue.open_qty {
                    return Err(format!(
                        "{:?} level {level}: cached {} Wh, counted {open_qty} Wh in {orders} orders",
                        side.side, queue.open_qty
                    ));
                }
                if side.is_marked_occupied(level) == queue.is_empty() {
                    return Err(format!("{:?} level {level}: occupancy bit disagrees with the queue", side.side));
                }
                let mut cursor = queue.head;
                while cursor != NIL {
                    *per_account.entry(AccountKey(self.table[cursor].account)).or_insert(0) += 1;
                    cursor = self.table.link(cursor).next;
                }
                live += orders as usize;
            }
            if side.best() != side.best_from_scratch() {
                return Err(format!(
                    "{:?}: cached best {:?}, actual {:?}",
                    side.side,
                    side.best(),
                    side.best_from_scratch()
                ));
            }
        }
        if let (Some(bid), Some(ask), false) = (self.bids.best(), self.asks.best(), self.calling) {
            if bid >= ask {
                return Err(format!("the book is crossed: best bid level {bid} >= best ask level {ask}"));
            }
        }
        if live != self.table.len() {
            return Err(format!("{live} orders in queues but {} in the table", self.table.len()));
        }
        let live_slots = self.table.live_indices().count();
        if live_slots != self.table.len() {
            return Err(format!("{live_slots} live slots but the table counts {}", self.table.len()));
        }
        if self.table.len() * 2 > self.table.slots() {
            return Err(format!("{} orders in a table of {} slots", self.table.len(), self.table.slots()));
        }
        if per_account != self.open_orders.0 {
            return Err("per-account open order counts disagree with the queues".to_owned());
        }
        if self.closed && live != 0 {
            return Err("a closed book has resting orders".to_owned());
        }
        Ok(())
    }

    /// Walks one queue checking its links and nodes; returns its open quantity and order count.
    fn validate_queue(&self, side: &BookSide, level: u32) -> Result<(i64, u32), String> {
        let queue = &side.levels[level as usize];
        let (mut open_qty, mut orders) = (0i64, 0u32);
        let (mut previous, mut cursor) = (NIL, queue.head);
        while cursor != NIL {
            let node = &self.table[cursor];
            let link = self.table.link(cursor);
            if link.prev != previous {
                return Err(format!("{:?} level {level}: broken back link at node {cursor}", side.side));
            }
            if node.side != side.side || node.level != level {
                return Err(format!("{:?} level {level}: node {cursor} belongs elsewhere", side.side));
            }
            if node.open_qty <= 0 || node.filled_qty < 0 {
                return Err(format!("{:?} level {level}: node {cursor} has bad quantities", side.side));
            }
            if !node.live || self.table.find(&node.account, node.nonce) != Some(cursor) {
                return Err(format!("{:?} level {level}: node {cursor} is not indexed", side.side));
            }
            open_qty += node.open_qty;
            orders += 1;
            if orders as usize > self.table.slots() {
                return Err(format!("{:?} level {level}: the queue has a cycle", side.side));
            }
            previous = cursor;
            cursor = link.next;
        }
        if queue.tail != previous {
            return Err(format!("{:?} level {level}: the tail is not the last node", side.side));
        }
        Ok((open_qty, orders))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TimestampMs;

    /// Guards the order table: growing it and shifting probe runs back on removal move nodes, and every
    /// queue must still hold the same orders in the same order afterwards.
    #[test]
    fn orders_keep_their_queues_while_the_table_grows_and_shifts() {
        let config = BookConfig {
            tick: PricePerKwh(1),
            qty_min: Wh(1),
            qty_max: Wh(1_000),
            price_min: PricePerKwh(1),
            price_max: PricePerKwh(8),
            open_orders_per_account_max: super::super::OPEN_ORDERS_PER_ACCOUNT_LIMIT,
        };
        let mut book = OrderBook::new(config);
        let mut events = Vec::new();
        let account = |n: u64| AccountId([(n % 3) as u8; 32]);
        for n in 0..600u64 {
            let side = if n % 2 == 0 { Side::Buy } else { Side::Sell };
            let price = if side == Side::Buy { 1 + n % 4 } else { 5 + n % 4 };
            let order = NewOrder {
                account: account(n),
                nonce: n,
                side,
                price: PricePerKwh(price as i64),
                qty: Wh(1 + (n % 7) as i64),
                tif: TimeInForce::Gtc,
                post_only: false,
                ts_ms: TimestampMs(0),
            };
            book.submit(order, &mut events);
        }
        book.validate().expect("a valid book");
        let mut expected = book.resting_orders();
        for n in (0..600u64).filter(|n| n % 5 != 1) {
            book.cancel(account(n), n, &mut events);
            expected.retain(|view| view.nonce != n);
            book.validate().expect("a valid book");
            assert_eq!(book.resting_orders(), expected);
        }
    }
}
