//! The matching core: one continuous double auction per (zone, delivery slot). Pure: no I/O, no clock;
//! it knows nothing of SQL, MQTT or HTTP. Its one use of randomness is the order table's hash key (drawn
//! per table, see `table.rs`), which decides only which slot holds a node, never an event, a priority
//! or a view. So the same commands in the same order always give the same events and the same book,
//! which is how ingest rebuilds books after a crash (it replays the committed command log through this
//! code).
//!
//! Principal types: [`OrderBook`] (one per zone and slot, owned by one task), [`BookConfig`], the inbound
//! [`NewOrder`], the outbound [`Event`]s, and [`RestingOrderView`].
//!
//! # Rules
//! - **Price-time priority.** An inbound order meets the best opposite price first, and within a price the
//!   oldest order first. A trade happens at the resting order's price.
//! - **Time in force.** GTC rests what is left until filled, cancelled or gate closure; IOC's remainder is
//!   cancelled (`Cancelled { by_request: false }`); FOK trades in full or is rejected with
//!   `FokNotFillable` and trades nothing. Post-only (GTC only) that would trade is rejected with
//!   `PostOnlyWouldCross`.
//! - **Checks, in this order** (each rejects with the reason named and changes nothing): gate closed
//!   (`GateClosed`); price outside `[price_min, price_max]` (`PriceOutOfBand`); price not a multiple of
//!   the tick (`PriceOffTick`); quantity below/above the limits (`QuantityTooSmall`/`QuantityTooLarge`);
//!   post-only with IOC/FOK (`InvalidValue`); an order `(account, nonce)` that already rests (`Replayed`;
//!   nonces that increase across the log are ingest's check, the book only guarantees unique live keys);
//!   a GTC order from an account that already has `open_orders_per_account_max` resting
//!   (`TooManyOpenOrders`, checked for every GTC order even if it would fill at once, so the rule does not
//!   depend on the state of the other side); post-only would cross; FOK not fillable.
//! - **Cancel / replace** of an order that does not rest: `UnknownOrder`. Replace sets the price and the
//!   new open quantity (checked like a new order). At the same price with the same or a smaller quantity
//!   the order keeps its place; a price change or a larger quantity sends it to the back of the queue at
//!   the new price, and it first matches as a new arrival would (GTC; a post-only order that would then
//!   cross is rejected and stays as it was).
//! - **Self-trade prevention: cancel resting.** An account never trades with itself. When an inbound order
//!   meets a resting order of the same account, the resting (older) order is cancelled
//!   (`Cancelled { by_request: false }`) and matching continues with the next order. We chose this over
//!   "cancel newest" because the newer order carries the account's latest intent (typically a household
//!   re-pricing its surplus) and a stale opposite order of its own should not block it. FOK counts only
//!   other accounts' quantity when deciding whether it can fill; a rejected FOK cancels nothing.
//! - **Gate closure** ([`OrderBook::close`]): every resting order expires (`Expired`), and later commands
//!   are rejected with `GateClosed`.
//! - **Closing auction** (optional, per zone; rules and tie rule in [`auction`]). After
//!   [`OrderBook::begin_call`] the book is in its call phase: orders rest without trading (so the book may
//!   be crossed), IOC and FOK are rejected with `InvalidValue` (nothing could fill them on arrival), a
//!   post-only order is accepted like any GTC order, and self-trade prevention cancels the account's own
//!   resting opposite orders that the new or moved order crosses (so the call never pairs an account with
//!   itself). [`OrderBook::uncross`] then trades every crossing order at one uniform price; the caller
//!   closes the book right after. Without a call phase, `uncross` finds an uncrossed book and trades
//!   nothing: the continuous auction before it is unchanged.
//! - **Trade sequence.** `trade_seq` counts trades per book from 1; the caller maps it to exchange-wide ids.
//!
//! # Shape
//! One array of price levels per side, indexed by `(price - price_min) / tick`, each level a FIFO queue
//! (an intrusive doubly linked list through the order table, with the links in a separate dense array)
//! with its cached quantity; a bitmap of non-empty levels finds the next best price. The
//! order table is an open-addressing hash table whose slots are the one-cache-line order nodes
//! themselves, keyed by `(account, nonce)`, so finding an order touches one node (see `table.rs`).
//! Nothing is allocated per operation once the table, the per-account counts and the caller's event
//! buffer have grown to the working size.
//! [`OrderBook::validate`] recomputes every cached value from the queues.
//!
//! ```
//! use exchange::matching::{BookConfig, Event, NewOrder, OrderBook};
//! use protocol::{AccountId, PricePerKwh, Side, TimeInForce, TimestampMs, Wh};
//!
//! let config = BookConfig {
//!     tick: PricePerKwh(100),
//!     qty_min: Wh(1),
//!     qty_max: Wh(100_000),
//!     price_min: PricePerKwh(50_000),
//!     price_max: PricePerKwh(400_000),
//!     open_orders_per_account_max: 16,
//! };
//! let mut book = OrderBook::new(config);
//! let order = |account: u8, nonce, side, price, qty| NewOrder {
//!     account: AccountId([account; 32]),
//!     nonce,
//!     side,
//!     price: PricePerKwh(price),
//!     qty: Wh(qty),
//!     tif: TimeInForce::Gtc,
//!     post_only: false,
//!     ts_ms: TimestampMs(0),
//! };
//! let mut events = Vec::new();
//! book.submit(order(1, 1, Side::Sell, 120_000, 500), &mut events);
//! book.submit(order(2, 1, Side::Buy, 130_000, 200), &mut events);
//! let trade = events.iter().find(|event| matches!(event, Event::Trade { .. }));
//! assert!(matches!(trade, Some(Event::Trade { price: PricePerKwh(120_000), qty: Wh(200), .. })));
//! assert_eq!(book.order(AccountId([1; 32]), 1).map(|order| order.open_qty), Some(Wh(300)));
//! book.validate().unwrap();
//! ```

pub mod auction;
mod book;
mod config;
mod events;
mod level;
mod order;
mod table;

pub use auction::AuctionOutcome;
pub use book::OrderBook;
pub use config::{BookConfig, BookConfigError, OPEN_ORDERS_PER_ACCOUNT_LIMIT, PRICE_LEVELS_MAX};
pub use events::Event;
pub use order::{NewOrder, RestingOrderView};

#[cfg(test)]
mod auction_property_tests;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod script_tests;
