//! What a book operation did, in order. The book never calls out: the caller persists and publishes
//! these events.

use protocol::{AccountId, PricePerKwh, Reason, Side, Wh};

/// One thing that happened in a book. An operation appends its events in the order they happened.
///
/// Shapes of an operation's events (the last event of an accepted order or move says where it stands):
/// - `submit`: `Rejected`; or `Accepted`, then for each match a `Trade` (followed by `Filled` of the
///   resting order when it is used up, or `Cancelled` of a resting order of the same account, see
///   self-trade prevention in [`matching`](super)), and last `Filled`, `Rested` (GTC) or `Cancelled`
///   (IOC remainder).
/// - `cancel`: `Cancelled { by_request: true }` or `Rejected`.
/// - `replace`: `Rejected`; or `Replaced { kept_priority: true }` alone; or `Replaced { kept_priority:
///   false }` followed by what a new arrival gets: trades, and last `Filled` or `Rested`.
/// - `close`: one `Expired` per resting order, bids best first then asks best first, each in queue order.
/// - in the call phase (see [`OrderBook::begin_call`](super::OrderBook::begin_call)), `submit` and a moving
///   `replace` trade nothing: `Accepted` (or `Replaced { kept_priority: false }`), a `Cancelled` for each
///   of the account's own resting opposite orders it crosses, and last `Rested`.
/// - `uncross`: a `Trade` per bid–ask pair at the clearing price, then `Filled` per order used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The order passed every check; it now matches and/or rests.
    Accepted { account: AccountId, nonce: u64, side: Side, price: PricePerKwh, qty: Wh },
    /// The command changed nothing. `nonce` is the order's (for cancel/replace, the order named).
    Rejected { account: AccountId, nonce: u64, reason: Reason },
    /// `qty` changed hands at `price`, the resting order's price.
    Trade {
        /// Per book, starting at 1, increasing by one per trade.
        trade_seq: u64,
        price: PricePerKwh,
        qty: Wh,
        buyer: AccountId,
        buy_nonce: u64,
        seller: AccountId,
        sell_nonce: u64,
        /// The side of the inbound order.
        aggressor: Side,
    },
    /// The order's remainder now rests in the book.
    Rested { account: AccountId, nonce: u64, open_qty: Wh },
    /// The order left the book (or, for IOC, never entered it) with `open_qty` unfilled.
    Cancelled { account: AccountId, nonce: u64, open_qty: Wh, filled_qty: Wh, by_request: bool },
    /// The order's price and/or open quantity changed.
    Replaced { account: AccountId, nonce: u64, price: PricePerKwh, open_qty: Wh, kept_priority: bool },
    /// Gate closure removed the order with `open_qty` unfilled.
    Expired { account: AccountId, nonce: u64, open_qty: Wh, filled_qty: Wh },
    /// The order is completely filled and gone.
    Filled { account: AccountId, nonce: u64 },
}
