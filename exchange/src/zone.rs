//! One owner task per zone: it owns every book of the zone, applies committed commands in log
//! order, closes books at gate closure, stores trades (idempotently) and publishes what happened.
//! After a crash, `ZoneOwner::recover` replays the command log of the open books through the
//! matching core, which rebuilds them exactly (the core is deterministic); a logged row it cannot
//! parse stops recovery with [`ExchangeError::UnparsableCommand`] rather than being skipped.

use crate::config::{ExchangeConfig, FALLBACK_BAND_TICKS};
use crate::ingest::Rejection;
use crate::matching::{BookConfig, Event, NewOrder, OrderBook, RestingOrderView};
use crate::service::error::ExchangeError;
use crate::service::events::{CommandAck, MarketEvent, SlotInfo};
use crate::service::outlets::Outlets;
use crate::store::{self, CommandRow};
use gridex_store::{Database, DbError};
use protocol::topics;
use protocol::{
    AccountId, AuctionResult, BookSnapshot, BookState, CancelAll, Command, OrderStatus, OrderUpdate, PriceBand,
    PricePerKwh, Reason, Reject, SlotId, TimestampMs, Trade, Wh, ZoneId,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

mod auction;

/// Trade ids are `command_seq × TRADES_PER_COMMAND_MAX + index`: derived from the log, so a replay
/// gives every trade the id it had. One command meets at most the orders resting in one book,
/// far fewer than this; `command_seq` may grow to 2^53 / 10^5 ≈ 9 × 10^10 before ids leave the
/// safe JSON integer range.
pub const TRADES_PER_COMMAND_MAX: u64 = 100_000;

/// Parses a logged command again (the payload was verified before it was logged).
fn parse_logged(payload: &str) -> Result<Command, Rejection> {
    Command::parse(payload.as_bytes()).map_err(Rejection::from)
}

/// A committed command on its way to its zone's books.
#[derive(Debug)]
pub(crate) struct Committed {
    pub row: CommandRow,
    pub command: Command,
    pub reply: Option<oneshot::Sender<Result<CommandAck, Rejection>>>,
}

/// Requests a zone owner serves.
#[derive(Debug)]
pub(crate) enum ZoneMsg {
    Apply(Vec<Committed>),
    Book {
        slot: SlotId,
        levels: usize,
        reply: oneshot::Sender<Option<BookSnapshot>>,
    },
    OpenSlots {
        reply: oneshot::Sender<Vec<SlotInfo>>,
    },
    OpenOrders {
        account: AccountId,
        reply: oneshot::Sender<Vec<OpenOrder>>,
    },
    /// The zone's recent closing auction results, oldest first.
    Auctions {
        reply: oneshot::Sender<Vec<AuctionResult>>,
    },
    Dump {
        reply: oneshot::Sender<Vec<BookDump>>,
    },
    /// Sent by the writer after its last `Apply`: stop.
    Stop,
}

/// One open book's resting orders in priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookDump {
    pub zone: ZoneId,
    pub slot: SlotId,
    pub orders: Vec<RestingOrderView>,
}

/// What the owner remembers of a live order to describe it once it left the book.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    price: PricePerKwh,
    filled: Wh,
    /// The order's signed time (`ts_ms` of the order message).
    placed_ms: TimestampMs,
}

/// One of a trader's resting orders: its live state and the terms it rests with. Only GTC orders
/// rest (IOC and FOK never do), so its time in force is GTC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenOrder {
    pub update: OrderUpdate,
    pub side: protocol::Side,
    pub post_only: bool,
    /// The order's signed time.
    pub placed_ms: TimestampMs,
}

#[derive(Debug)]
struct SlotBook {
    book: OrderBook,
    /// Increases with every change (the snapshot's `seq`).
    version: u64,
    tracked: HashMap<(AccountId, u64), Tracked>,
    /// The last command applied to the book and how many trades it made: the closing auction's
    /// trades take the ids after those, so they too follow from the log.
    last_command_seq: u64,
    last_command_trades: u64,
}

impl SlotBook {
    /// A matching `Event::Trade` of `slot` as published, with its id and time, once its quantity is
    /// credited to the fills of both its orders (those tracked); `None` for any other event.
    fn record_trade(
        &mut self,
        event: &Event,
        zone: &ZoneId,
        slot: SlotId,
        trade_id: u64,
        ts_ms: TimestampMs,
    ) -> Option<Trade> {
        let Event::Trade { price, qty, buyer, buy_nonce, seller, sell_nonce, aggressor, .. } = *event else {
            return None;
        };
        for key in [(buyer, buy_nonce), (seller, sell_nonce)] {
            if let Some(tracked) = self.tracked.get_mut(&key) {
                tracked.filled += qty;
            }
        }
        Some(Trade {
            trade_id,
            zone: zone.clone(),
            slot,
            price_per_kwh: price,
            qty_wh: qty,
            buyer,
            seller,
            buy_nonce,
            sell_nonce,
            aggressor,
            ts_ms,
        })
    }
}

/// Closing auction results the owner keeps for the API, newest last: a day of 15-minute slots.
pub const AUCTION_RESULTS_KEPT: usize = 96;

/// The outcome of one command.
#[derive(Debug, Default)]
struct Applied {
    rejected: Option<Reason>,
    updates: Vec<OrderUpdate>,
    trades: Vec<Trade>,
    /// Nonces of the account's own resting orders that self-trade prevention cancelled ("cancel
    /// resting": the command's order would have traded with them).
    self_trade_cancelled: Vec<u64>,
}

pub(crate) struct ZoneOwner {
    zone: ZoneId,
    slot_len_ms: i64,
    config: ExchangeConfig,
    db: Database,
    outlets: Outlets,
    books: BTreeMap<SlotId, SlotBook>,
    /// The zone's last closing auction results, oldest first (at most [`AUCTION_RESULTS_KEPT`]).
    auctions: std::collections::VecDeque<AuctionResult>,
    /// The band an open slot without a book yet states, read once per slot (a book query must not
    /// cost this task a database round trip each time); only open slots are kept.
    empty_bands: BTreeMap<SlotId, PriceBand>,
}

impl std::fmt::Debug for ZoneOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneOwner").field("zone", &self.zone).field("books", &self.books.len()).finish()
    }
}

impl ZoneOwner {
    /// Rebuilds the zone's open books from the command log and stores any trade the log implies
    /// that is not stored yet.
    pub async fn recover(
        zone: ZoneId,
        slot_len_ms: i64,
        config: &ExchangeConfig,
        db: Database,
        outlets: Outlets,
    ) -> Result<Self, ExchangeError> {
        let mut owner = Self {
            zone,
            slot_len_ms,
            config: config.clone(),
            db: db.clone(),
            outlets,
            books: BTreeMap::new(),
            auctions: std::collections::VecDeque::new(),
            empty_bands: BTreeMap::new(),
        };
        let now_ms = owner.outlets.now_ms();
        // The open books, and in a zone with a closing auction also the books whose gate closed while
        // the exchange was down but whose delivery has not ended: their auction may not have run (gate
        // closure is not a logged command). The first tick runs it; its trades are stored idempotently
        // and published only if they were not stored before. Settlement closes a slot only after its
        // delivery has ended, so an auction recovered here is never late for settlement.
        let slot_after_ms = match config.auction_call_ms(&owner.zone) {
            Some(_) => now_ms.saturating_sub(slot_len_ms),
            None => now_ms.saturating_add(config.gate_closure_ms),
        };
        let zone = owner.zone.clone();
        let rows = db.run(move |conn| store::load_commands(conn, &zone, slot_after_ms)).await?;
        let mut trades = Vec::new();
        for row in rows {
            // The log is the truth: skipping a row would rebuild a different book, so refuse.
            let command = parse_logged(&row.payload).map_err(|rejection| ExchangeError::UnparsableCommand {
                zone: row.zone.clone(),
                command_seq: row.command_seq,
                reason: rejection.message,
            })?;
            if owns_its_slot(&command) {
                owner.ensure_book(row.slot).await?;
            }
            let applied = owner.apply(&row, &command);
            trades.extend(applied.trades.into_iter().map(|trade| (trade, row.command_seq)));
        }
        let inserted = db.write(move |conn| store::insert_trades(conn, &trades)).await?;
        if inserted > 0 {
            tracing::warn!(inserted, "recovery stored trades that were lost in a crash");
        }
        Ok(owner)
    }

    /// Serves until the writer, after its last commit, says `Stop` (so every committed command is
    /// applied before the task ends).
    pub async fn run(mut self, mut inbox: mpsc::Receiver<ZoneMsg>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(ZoneMsg::Stop) | None => break,
                    Some(message) => self.handle(message).await,
                },
                _ = ticker.tick() => self.close_due().await,
            }
        }
    }

    async fn handle(&mut self, message: ZoneMsg) {
        match message {
            ZoneMsg::Apply(batch) => self.apply_batch(batch).await,
            ZoneMsg::Book { slot, levels, reply } => {
                let snapshot = match self.snapshot(slot, levels) {
                    Some(snapshot) => Some(snapshot),
                    None => self.empty_open_book(slot).await,
                };
                let _ = reply.send(snapshot);
            }
            ZoneMsg::OpenSlots { reply } => {
                let _ = reply.send(self.open_slots());
            }
            ZoneMsg::OpenOrders { account, reply } => {
                let _ = reply.send(self.open_orders(account));
            }
            ZoneMsg::Auctions { reply } => {
                let _ = reply.send(self.auctions.iter().cloned().collect());
            }
            ZoneMsg::Stop => {}
            ZoneMsg::Dump { reply } => {
                let dumps = self
                    .books
                    .iter()
                    .map(|(slot, book)| BookDump {
                        zone: self.zone.clone(),
                        slot: *slot,
                        orders: book.book.resting_orders(),
                    })
                    .collect();
                let _ = reply.send(dumps);
            }
        }
    }

    fn gate_ms(&self, slot: SlotId) -> i64 {
        slot.start_ms().saturating_sub(self.config.gate_closure_ms)
    }

    /// When `slot`'s closing auction starts calling, if the zone has one.
    fn call_start_ms(&self, slot: SlotId) -> Option<i64> {
        let call_ms = self.config.auction_call_ms(&self.zone)?;
        Some(self.gate_ms(slot).saturating_sub(call_ms))
    }

    async fn book_config(&self, slot: SlotId) -> BookConfig {
        let tick = self.config.tick.get().max(1);
        let band = match self.config.price_band {
            Some(band) => Some(band),
            None => {
                // The slot's feed-in and retail prices by the rule settlement closes the slot by
                // (the time-of-use band covering the slot's start, else the flat prices).
                let zone = self.zone.clone();
                let at_ms = slot.start_ms();
                self.db
                    .run(move |conn| gridex_store::tariff::tariff_for_slot(conn, &zone, at_ms))
                    .await
                    .map(|tariff| {
                        tariff.map(|tariff| (tariff.prices.feed_in_price_per_kwh, tariff.prices.retail_price_per_kwh))
                    })
                    .unwrap_or_else(|error| {
                        tracing::error!(%error, "cannot read the tariff; using the fallback band");
                        None
                    })
            }
        };
        let (low, high) = band.unwrap_or((PricePerKwh(tick), PricePerKwh(tick * FALLBACK_BAND_TICKS)));
        // The band's ends move inwards onto the tick grid; a zero feed-in tariff becomes one tick.
        let price_min = ((low.get() + tick - 1) / tick).max(1) * tick;
        let price_max = (high.get() / tick * tick).max(price_min);
        BookConfig {
            tick: PricePerKwh(tick),
            qty_min: self.config.qty_min,
            qty_max: self.config.qty_max,
            price_min: PricePerKwh(price_min),
            price_max: PricePerKwh(price_max),
            open_orders_per_account_max: self.config.open_orders_per_account_max,
        }
    }

    async fn ensure_book(&mut self, slot: SlotId) -> Result<(), DbError> {
        if !self.books.contains_key(&slot) {
            let config = self.book_config(slot).await;
            let book = OrderBook::try_new(config).map_err(|error| DbError::Invalid(error.to_string()))?;
            let slot_book =
                SlotBook { book, version: 0, tracked: HashMap::new(), last_command_seq: 0, last_command_trades: 0 };
            self.books.insert(slot, slot_book);
        }
        Ok(())
    }

    /// Applies one logged command to its (existing) book; pure apart from the book. A command
    /// received (by its logged time) once the slot's closing auction calls finds the book calling, so a
    /// replay of the log puts the book in its call phase at the same command.
    fn apply(&mut self, row: &CommandRow, command: &Command) -> Applied {
        if let Command::CancelAll(signed) = command {
            return self.apply_cancel_all(row, &signed.message);
        }
        let zone = self.zone.clone();
        let call_start_ms = self.call_start_ms(row.slot);
        let Some(slot_book) = self.books.get_mut(&row.slot) else {
            return Applied { rejected: Some(Reason::SlotNotOpen), ..Applied::default() };
        };
        if call_start_ms.is_some_and(|start_ms| row.received_ms >= start_ms) {
            slot_book.book.begin_call();
        }
        let mut events = Vec::new();
        match command {
            Command::Order(signed) => {
                slot_book.book.submit(NewOrder::from(&signed.message), &mut events);
            }
            Command::Cancel(signed) => {
                slot_book.book.cancel(signed.message.account, signed.message.order_nonce, &mut events)
            }
            Command::Replace(signed) => {
                let replace = &signed.message;
                slot_book.book.replace(
                    replace.account,
                    replace.order_nonce,
                    replace.price_per_kwh,
                    replace.qty_wh,
                    &mut events,
                )
            }
            Command::CancelAll(_) => unreachable!("a cancel-all is applied by `apply_cancel_all`"),
        }
        if !events.is_empty() {
            slot_book.version += 1;
        }
        let applied = describe(&zone, row, command.ts_ms(), slot_book, &events);
        slot_book.last_command_seq = row.command_seq;
        slot_book.last_command_trades = applied.trades.len() as u64;
        applied
    }

    /// Applies a logged cancel-all: every order of the account resting in the zone's books (or in
    /// its one slot's), in slot order, each book's in priority order. Books whose gate closure was
    /// not after the command's logged receipt are left alone (their orders expire), so a replay of
    /// the log cancels exactly what the live owner did. It makes no trade, so the books keep their
    /// `last_command_seq` (one command touching several books must not give two closing auctions
    /// the same trade ids).
    fn apply_cancel_all(&mut self, row: &CommandRow, cancel_all: &CancelAll) -> Applied {
        let zone = self.zone.clone();
        let gate_closure_ms = self.config.gate_closure_ms;
        let call_ms = self.config.auction_call_ms(&self.zone);
        let mut applied = Applied::default();
        for (slot, slot_book) in &mut self.books {
            if cancel_all.slot.is_some_and(|only| only != *slot) {
                continue;
            }
            let gate_ms = slot.start_ms().saturating_sub(gate_closure_ms);
            if gate_ms <= row.received_ms {
                continue;
            }
            if call_ms.is_some_and(|call_ms| row.received_ms >= gate_ms.saturating_sub(call_ms)) {
                slot_book.book.begin_call();
            }
            let mut events = Vec::new();
            slot_book.book.cancel_account(cancel_all.account, &mut events);
            if events.is_empty() {
                continue;
            }
            slot_book.version += 1;
            let book_row = CommandRow { slot: *slot, ..row.clone() };
            let described = describe(&zone, &book_row, cancel_all.ts_ms, slot_book, &events);
            assert!(described.trades.is_empty(), "a cancel-all never trades");
            applied.updates.extend(described.updates);
        }
        applied
    }

    async fn apply_batch(&mut self, batch: Vec<Committed>) {
        let started = std::time::Instant::now();
        let now_ms = self.outlets.now_ms();
        let mut results = Vec::with_capacity(batch.len());
        let mut touched = Vec::new();
        for committed in batch {
            let applied = if self.gate_ms(committed.row.slot) <= now_ms {
                Applied { rejected: Some(Reason::GateClosed), ..Applied::default() }
            } else if !owns_its_slot(&committed.command) {
                self.apply(&committed.row, &committed.command)
            } else {
                match self.ensure_book(committed.row.slot).await {
                    Ok(()) => self.apply(&committed.row, &committed.command),
                    Err(error) => {
                        tracing::error!(%error, "cannot open a book");
                        Applied { rejected: Some(Reason::InternalError), ..Applied::default() }
                    }
                }
            };
            // A cancel-all changes the books of its updates' slots, whatever slot it is logged under.
            let slots = std::iter::once(committed.row.slot).chain(applied.updates.iter().map(|update| update.slot));
            for slot in slots {
                if !touched.contains(&slot) {
                    touched.push(slot);
                }
            }
            results.push((committed, applied));
        }
        metrics::histogram!("gridex_matching_seconds").record(started.elapsed().as_secs_f64());
        let trades: Vec<(Trade, u64)> = results
            .iter()
            .flat_map(|(committed, applied)| {
                applied.trades.iter().map(|trade| (trade.clone(), committed.row.command_seq))
            })
            .collect();
        if !trades.is_empty() {
            // Trades are derived from the committed log, so a failure here loses nothing: recovery
            // re-derives and stores them. Publishing waits for the write so subscribers never see a
            // trade that storage does not have yet.
            if let Err(error) = self.db.write(move |conn| store::insert_trades(conn, &trades)).await {
                tracing::error!(%error, "storing trades failed; recovery will store them");
            }
        }
        for (committed, applied) in results {
            self.publish(committed, applied);
        }
        for slot in touched {
            self.publish_book(slot);
        }
    }

    fn publish(&self, committed: Committed, applied: Applied) {
        let account = committed.row.account;
        if let Some(reason) = applied.rejected {
            metrics::counter!("gridex_orders_total", "result" => reason.code()).increment(1);
            let reject = Reject {
                of: committed.command.type_name().to_owned(),
                seq: Some(committed.row.nonce),
                reason,
                message: refusal_message(
                    reason,
                    committed.command.type_name(),
                    self.books.get(&committed.row.slot).map(|slot_book| slot_book.book.config()),
                ),
                ts_ms: TimestampMs(self.outlets.now_ms()),
            };
            self.outlets.publish_message(topics::rejects(&self.zone, &account), &reject);
            self.outlets.event(MarketEvent::Rejected {
                zone: Some(self.zone.clone()),
                sender: Some(account.to_hex()),
                reject: reject.clone(),
            });
            if let Some(reply) = committed.reply {
                let _ = reply.send(Err(Rejection::new(reason, reject.message)));
            }
            return;
        }
        metrics::counter!("gridex_orders_total", "result" => "accepted").increment(1);
        for trade in &applied.trades {
            self.outlets.publish_message(topics::trades(&self.zone), trade);
            self.outlets.event(MarketEvent::Trade(trade.clone()));
        }
        for update in &applied.updates {
            self.outlets.publish_message(topics::events(&self.zone, &update.account), update);
            self.outlets.event(MarketEvent::OrderUpdate(update.clone()));
        }
        for &nonce in &applied.self_trade_cancelled {
            // The account learns why an order it did not cancel is gone (PROTOCOL.md §7); its
            // order update says `cancelled`, this says why. The command itself went on.
            let notice = Reject {
                of: "order".to_owned(),
                seq: Some(nonce),
                reason: Reason::SelfTradePrevented,
                message: format!(
                    "resting order {nonce} was cancelled: {} {} of the same account would have traded with it",
                    committed.command.type_name(),
                    committed.row.nonce
                ),
                ts_ms: TimestampMs(self.outlets.now_ms()),
            };
            self.outlets.publish_message(topics::rejects(&self.zone, &account), &notice);
            self.outlets.event(MarketEvent::Rejected {
                zone: Some(self.zone.clone()),
                sender: Some(account.to_hex()),
                reject: notice,
            });
        }
        if let Some(reply) = committed.reply {
            let updates = applied.updates.into_iter().filter(|update| update.account == account).collect();
            let _ =
                reply.send(Ok(CommandAck { command_seq: committed.row.command_seq, updates, trades: applied.trades }));
        }
    }

    fn snapshot(&self, slot: SlotId, levels: usize) -> Option<BookSnapshot> {
        let slot_book = self.books.get(&slot)?;
        let (bids, asks) = slot_book.book.depth(levels.min(protocol::messages::BOOK_LEVELS_MAX));
        let state = if slot_book.book.is_closed() { BookState::Closed } else { BookState::Open };
        Some(BookSnapshot {
            zone: self.zone.clone(),
            slot,
            seq: slot_book.version,
            state,
            bids,
            asks,
            ts_ms: TimestampMs(self.outlets.now_ms()),
            call_phase: slot_book.book.is_calling().then_some(true),
            price_band: Some(price_band(slot_book.book.config())),
        })
    }

    /// The book of an open slot that has had no order yet: empty, version 0. `None` for a slot
    /// that is not open (gate closure passed, beyond the horizon or not aligned to the zone's slots).
    /// Its band is the one the book will have if it opens now (the tariff as it stands).
    async fn empty_open_book(&mut self, slot: SlotId) -> Option<BookSnapshot> {
        let open = self.open_slots();
        if !open.iter().any(|open| open.slot == slot) {
            return None;
        }
        self.empty_bands.retain(|kept, _| open.iter().any(|open| open.slot == *kept));
        let band = match self.empty_bands.get(&slot) {
            Some(band) => *band,
            None => {
                let band = price_band(&self.book_config(slot).await);
                self.empty_bands.insert(slot, band);
                band
            }
        };
        Some(BookSnapshot {
            zone: self.zone.clone(),
            slot,
            seq: 0,
            state: BookState::Open,
            bids: Vec::new(),
            asks: Vec::new(),
            ts_ms: TimestampMs(self.outlets.now_ms()),
            call_phase: None,
            price_band: Some(band),
        })
    }

    fn publish_book(&self, slot: SlotId) {
        let Some(snapshot) = self.snapshot(slot, protocol::messages::BOOK_LEVELS_MAX) else { return };
        self.outlets.publish(topics::book(&self.zone), snapshot.clone(), rumqttc::QoS::AtMostOnce, true);
        self.outlets.event(MarketEvent::Book(snapshot));
    }

    fn open_slots(&self) -> Vec<SlotInfo> {
        let now_ms = self.outlets.now_ms();
        let mut slot = SlotId::containing(TimestampMs(now_ms), self.slot_len_ms);
        let mut slots = Vec::new();
        while slot.start_ms() <= now_ms.saturating_add(self.config.horizon_ms) {
            let gate_closure_ms = self.gate_ms(slot);
            if gate_closure_ms > now_ms {
                let book = self.books.get(&slot).map(|slot_book| &slot_book.book);
                slots.push(SlotInfo {
                    slot,
                    gate_closure_ms,
                    state: BookState::Open,
                    best_bid: book.and_then(OrderBook::best_bid),
                    best_ask: book.and_then(OrderBook::best_ask),
                });
            }
            slot = slot.next(self.slot_len_ms);
        }
        slots
    }

    fn open_orders(&self, account: AccountId) -> Vec<OpenOrder> {
        let now_ms = TimestampMs(self.outlets.now_ms());
        self.books
            .iter()
            .flat_map(|(slot, slot_book)| {
                slot_book.book.resting_orders().into_iter().filter(move |order| order.account == account).map(
                    move |order| OpenOrder {
                        update: update_of(&self.zone, *slot, &order, now_ms),
                        side: order.side,
                        post_only: order.post_only,
                        placed_ms: slot_book
                            .tracked
                            .get(&(order.account, order.nonce))
                            .map_or(TimestampMs(0), |tracked| tracked.placed_ms),
                    },
                )
            })
            .collect()
    }

    /// Closes every book whose gate closure has passed: its orders expire, a last snapshot says so.
    async fn close_due(&mut self) {
        let now_ms = self.outlets.now_ms();
        let due: Vec<SlotId> = self.books.keys().copied().filter(|slot| self.gate_ms(*slot) <= now_ms).collect();
        for slot in due {
            let Some(mut slot_book) = self.books.remove(&slot) else { continue };
            if self.call_start_ms(slot).is_some() {
                self.run_auction(slot, &mut slot_book).await;
            }
            let mut events = Vec::new();
            slot_book.book.close(&mut events);
            slot_book.version += 1;
            for event in &events {
                if let Event::Expired { account, nonce, open_qty, filled_qty } = *event {
                    let price =
                        slot_book.tracked.get(&(account, nonce)).map_or(PricePerKwh(0), |tracked| tracked.price);
                    let update = OrderUpdate {
                        account,
                        zone: self.zone.clone(),
                        slot,
                        order_nonce: nonce,
                        status: OrderStatus::Expired,
                        price_per_kwh: price,
                        open_qty_wh: open_qty,
                        filled_qty_wh: filled_qty,
                        ts_ms: TimestampMs(now_ms),
                    };
                    self.outlets.publish_message(topics::events(&self.zone, &account), &update);
                    self.outlets.event(MarketEvent::OrderUpdate(update));
                }
            }
            let snapshot = BookSnapshot {
                zone: self.zone.clone(),
                slot,
                seq: slot_book.version,
                state: BookState::Closed,
                bids: Vec::new(),
                asks: Vec::new(),
                ts_ms: TimestampMs(now_ms),
                call_phase: None,
                price_band: None,
            };
            self.outlets.publish(topics::book(&self.zone), snapshot.clone(), rumqttc::QoS::AtMostOnce, true);
            self.outlets.event(MarketEvent::Book(snapshot));
        }
    }
}

/// Whether the command's logged slot is the book it acts on: every command but a whole-zone
/// cancel-all, which is logged under a slot beyond the horizon (`ingest::zone_wide_log_slot`) and
/// acts on the zone's open books, so no book is opened for its logged slot.
fn owns_its_slot(command: &Command) -> bool {
    crate::ingest::command_slot(command).is_some()
}

/// What a book's refusal says: for prices and quantities, the slot's limits, so a client can fix the
/// order without reading the tariff (PROTOCOL.md §7 says how the band is made).
fn refusal_message(reason: Reason, kind: &str, config: Option<&BookConfig>) -> String {
    let Some(config) = config else { return format!("{kind} refused by the book") };
    let (min, max, tick) = (config.price_min.get(), config.price_max.get(), config.tick.get());
    match reason {
        Reason::PriceOutOfBand => format!(
            "{kind} refused: the slot's price band is {min}..={max} micro-units per kWh (the zone's feed-in to \
             retail tariff at the slot's start, on the {tick} tick, fixed when the book opened)"
        ),
        Reason::PriceOffTick => {
            format!("{kind} refused: prices are multiples of {tick} micro-units per kWh within {min}..={max}")
        }
        Reason::QuantityTooSmall | Reason::QuantityTooLarge => {
            format!("{kind} refused: quantities are {}..={} Wh", config.qty_min.get(), config.qty_max.get())
        }
        _ => format!("{kind} refused by the book"),
    }
}

fn update_of(zone: &ZoneId, slot: SlotId, order: &RestingOrderView, ts_ms: TimestampMs) -> OrderUpdate {
    OrderUpdate {
        account: order.account,
        zone: zone.clone(),
        slot,
        order_nonce: order.nonce,
        status: OrderStatus::Open,
        price_per_kwh: order.price,
        open_qty_wh: order.open_qty,
        filled_qty_wh: order.filled_qty,
        ts_ms,
    }
}

/// Turns a command's events into trades and order updates, keeping `tracked` current.
/// `placed_ms` is the command's signed time: an accepted order's placement time.
fn describe(
    zone: &ZoneId,
    row: &CommandRow,
    placed_ms: TimestampMs,
    slot_book: &mut SlotBook,
    events: &[Event],
) -> Applied {
    let ts_ms = TimestampMs(row.received_ms);
    let mut applied = Applied::default();
    let mut touched: Vec<(AccountId, u64)> = Vec::new();
    let mut gone: HashMap<(AccountId, u64), (OrderStatus, Wh)> = HashMap::new();
    let mut trade_index = 0;
    for event in events {
        match *event {
            Event::Rejected { reason, .. } => applied.rejected = Some(reason),
            Event::Accepted { account, nonce, price, .. } => {
                slot_book.tracked.insert((account, nonce), Tracked { price, filled: Wh(0), placed_ms });
                touched.push((account, nonce));
            }
            Event::Trade { buyer, buy_nonce, seller, sell_nonce, .. } => {
                assert!(trade_index < TRADES_PER_COMMAND_MAX, "one command made more trades than trade ids allow");
                let trade_id = row.command_seq * TRADES_PER_COMMAND_MAX + trade_index;
                applied.trades.extend(slot_book.record_trade(event, zone, row.slot, trade_id, ts_ms));
                trade_index += 1;
                touched.extend([(buyer, buy_nonce), (seller, sell_nonce)]);
            }
            Event::Rested { account, nonce, .. } => touched.push((account, nonce)),
            Event::Replaced { account, nonce, price, .. } => {
                if let Some(tracked) = slot_book.tracked.get_mut(&(account, nonce)) {
                    tracked.price = price;
                }
                touched.push((account, nonce));
            }
            Event::Cancelled { account, nonce, open_qty, by_request, .. } => {
                // Not asked for and not the command's own order (an IOC remainder): self-trade
                // prevention took one of the account's resting orders.
                if !by_request && account == row.account && nonce != row.nonce {
                    applied.self_trade_cancelled.push(nonce);
                }
                gone.insert((account, nonce), (OrderStatus::Cancelled, open_qty));
                touched.push((account, nonce));
            }
            Event::Expired { account, nonce, open_qty, .. } => {
                gone.insert((account, nonce), (OrderStatus::Expired, open_qty));
                touched.push((account, nonce));
            }
            Event::Filled { account, nonce } => {
                gone.insert((account, nonce), (OrderStatus::Filled, Wh(0)));
                touched.push((account, nonce));
            }
        }
    }
    if applied.rejected.is_some() {
        return Applied { rejected: applied.rejected, ..Applied::default() };
    }
    let mut seen = Vec::new();
    for key in touched {
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        if let Some(order) = slot_book.book.order(key.0, key.1) {
            applied.updates.push(update_of(zone, row.slot, &order, ts_ms));
            continue;
        }
        let Some((status, open_qty)) = gone.get(&key).copied() else { continue };
        let tracked = slot_book.tracked.remove(&key).unwrap_or(Tracked {
            price: PricePerKwh(0),
            filled: Wh(0),
            placed_ms: TimestampMs(0),
        });
        applied.updates.push(OrderUpdate {
            account: key.0,
            zone: zone.clone(),
            slot: row.slot,
            order_nonce: key.1,
            status,
            price_per_kwh: tracked.price,
            open_qty_wh: open_qty,
            filled_qty_wh: tracked.filled,
            ts_ms,
        });
    }
    applied
}

/// What a book's snapshot tells traders about the prices it accepts.
fn price_band(config: &BookConfig) -> PriceBand {
    PriceBand { min_per_kwh: config.price_min, max_per_kwh: config.price_max }
}
