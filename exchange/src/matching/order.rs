//! Orders: what a caller submits ([`NewOrder`]), what the book shows of a resting one
//! ([`RestingOrderView`]), and the node the book keeps a resting order in.

use protocol::{AccountId, Order, PricePerKwh, Side, TimeInForce, TimestampMs, Wh};

/// A limit order as the caller hands it to [`OrderBook::submit`](super::OrderBook::submit), after the
/// signature, zone, slot and nonce checks of ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOrder {
    pub account: AccountId,
    /// Names the order together with `account`.
    pub nonce: u64,
    pub side: Side,
    pub price: PricePerKwh,
    pub qty: Wh,
    pub tif: TimeInForce,
    /// Rest only; rejected with `PostOnlyWouldCross` if it would trade on arrival.
    pub post_only: bool,
    /// The signed timestamp, carried for the caller. The book never reads it: time priority is arrival
    /// order, so that replaying the command log rebuilds exactly the same queues.
    pub ts_ms: TimestampMs,
}

impl From<&Order> for NewOrder {
    /// A signed order's terms, as the book takes them.
    fn from(order: &Order) -> Self {
        NewOrder {
            account: order.account,
            nonce: order.nonce,
            side: order.side,
            price: order.price_per_kwh,
            qty: order.qty_wh,
            tif: order.tif,
            post_only: order.post_only,
            ts_ms: order.ts_ms,
        }
    }
}

/// A resting order as the book holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestingOrderView {
    pub account: AccountId,
    pub nonce: u64,
    pub side: Side,
    pub price: PricePerKwh,
    pub open_qty: Wh,
    /// Filled since the order was accepted (replaces keep it).
    pub filled_qty: Wh,
    pub post_only: bool,
}

/// Index of a node (a slot) in the [`OrderTable`](super::table::OrderTable).
pub(crate) type NodeIndex = u32;

/// "No node": the end of a queue.
pub(crate) const NIL: NodeIndex = NodeIndex::MAX;

/// The first 8 bytes of an account key. Account ids are ed25519 public keys, so these bytes are already
/// well mixed; the order table and the per-account counts hash them (and compare the whole account).
#[inline]
pub(crate) fn account_prefix(account: &AccountId) -> u64 {
    let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = account.0;
    u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
}

/// An account as a hash map key, hashed by its first 8 bytes (equality compares all 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountKey(pub AccountId);

impl std::hash::Hash for AccountKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(account_prefix(&self.0));
    }
}

/// One resting order. Exactly one cache line; the queue links live apart in [`Link`]s, so walking and
/// relinking queues touches a small, dense array.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct OrderNode {
    pub account: AccountId,
    pub nonce: u64,
    pub open_qty: i64,
    pub filled_qty: i64,
    /// The price level index, `(price - price_min) / tick`.
    pub level: u32,
    pub side: Side,
    pub post_only: bool,
    /// Whether this slot of the [`OrderTable`](super::table::OrderTable) holds an order.
    pub live: bool,
}

// The "exactly one cache line" above, checked.
const _: () = assert!(std::mem::size_of::<OrderNode>() == 64);

/// A node's neighbours in its price level's queue (an intrusive doubly linked list through the table).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub prev: NodeIndex,
    pub next: NodeIndex,
}

impl Link {
    pub const DETACHED: Link = Link { prev: NIL, next: NIL };
}

impl OrderNode {
    /// An empty table slot.
    pub const VACANT: OrderNode = OrderNode {
        account: AccountId([0; 32]),
        nonce: 0,
        open_qty: 0,
        filled_qty: 0,
        level: 0,
        side: Side::Buy,
        post_only: false,
        live: false,
    };
}
