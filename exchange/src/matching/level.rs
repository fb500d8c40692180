//! Price levels: one FIFO queue of orders per price, and one side of the book as an array of levels
//! indexed by `(price - price_min) / tick` with a bitmap of non-empty levels and the best index.

use super::order::{Link, NodeIndex, NIL};
use super::table::OrderTable;
use protocol::Side;

/// The queue of orders at one price, oldest first, with its cached open quantity. 16 bytes, so four
/// levels share a cache line; the order count is not cached (only `depth` and `validate` need it, and
/// they walk the queue), since the hot paths only ask whether the queue is empty.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PriceLevel {
    pub head: NodeIndex,
    pub tail: NodeIndex,
    /// Sum of the open quantity of the queued orders, in Wh.
    pub open_qty: i64,
}

const _: () = assert!(std::mem::size_of::<PriceLevel>() == 16);

impl PriceLevel {
    const EMPTY: PriceLevel = PriceLevel { head: NIL, tail: NIL, open_qty: 0 };

    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

const WORD_BITS: usize = 64;

/// One side of a book. The best level is the highest non-empty index for bids and the lowest for asks.
#[derive(Debug)]
pub(crate) struct BookSide {
    pub side: Side,
    pub levels: Vec<PriceLevel>,
    /// Bit `i` is set exactly when `levels[i]` is not empty.
    occupied: Vec<u64>,
    best: Option<u32>,
}

impl BookSide {
    pub fn new(side: Side, price_levels: usize) -> Self {
        Self {
            side,
            levels: vec![PriceLevel::EMPTY; price_levels],
            occupied: vec![0; price_levels.div_ceil(WORD_BITS)],
            best: None,
        }
    }

    #[inline]
    pub fn best(&self) -> Option<u32> {
        self.best
    }

    /// Whether `level` is at least as good as `other` for this side (higher for bids, lower for asks).
    #[inline]
    pub fn is_at_least_as_good(&self, level: u32, other: u32) -> bool {
        match self.side {
            Side::Buy => level >= other,
            Side::Sell => level <= other,
        }
    }

    /// Appends `node` at the back of the queue at `level`. Forced inline, like `unlink`: both sit on the
    /// move path of `replace`, the bulk of the load (see the matching section of BENCHMARKS.md).
    #[inline(always)]
    pub fn push_back(&mut self, table: &mut OrderTable, level: u32, node: NodeIndex) {
        let queue = &mut self.levels[level as usize];
        let tail = queue.tail;
        *table.link_mut(node) = Link { prev: tail, next: NIL };
        queue.tail = node;
        queue.open_qty += table[node].open_qty;
        if tail == NIL {
            queue.head = node;
            self.mark_occupied(level);
        } else {
            table.link_mut(tail).next = node;
        }
    }

    /// Takes `node` out of its queue; the node itself stays in the table.
    #[inline(always)]
    pub fn unlink(&mut self, table: &mut OrderTable, node: NodeIndex) {
        let Link { prev, next } = table.link(node);
        let (level, open_qty) = (table[node].level, table[node].open_qty);
        let queue = &mut self.levels[level as usize];
        if prev == NIL {
            queue.head = next;
        } else {
            table.link_mut(prev).next = next;
        }
        if next == NIL {
            queue.tail = prev;
        } else {
            table.link_mut(next).prev = prev;
        }
        queue.open_qty -= open_qty;
        if prev == NIL && next == NIL {
            self.mark_empty(level);
        }
    }

    fn mark_occupied(&mut self, level: u32) {
        let index = level as usize;
        self.occupied[index / WORD_BITS] |= 1 << (index % WORD_BITS);
        self.best = match self.best {
            Some(best) if self.is_at_least_as_good(best, level) => Some(best),
            _ => Some(level),
        };
    }

    fn mark_empty(&mut self, level: u32) {
        let index = level as usize;
        self.occupied[index / WORD_BITS] &= !(1 << (index % WORD_BITS));
        if self.best == Some(level) {
            self.best = self.next_worse_occupied(level);
        }
    }

    /// The best occupied level strictly worse than `level`.
    pub fn next_worse_occupied(&self, level: u32) -> Option<u32> {
        match self.side {
            Side::Buy => self.occupied_below(level),
            Side::Sell => self.occupied_above(level),
        }
    }

    fn occupied_above(&self, level: u32) -> Option<u32> {
        let start = level as usize + 1;
        let mut word_index = start / WORD_BITS;
        let shift = start % WORD_BITS;
        let mut word = self.occupied.get(word_index)? & (u64::MAX << shift);
        loop {
            if word != 0 {
                return Some((word_index * WORD_BITS + word.trailing_zeros() as usize) as u32);
            }
            word_index += 1;
            word = *self.occupied.get(word_index)?;
        }
    }

    fn occupied_below(&self, level: u32) -> Option<u32> {
        let end = level as usize; // exclusive
        if end == 0 {
            return None;
        }
        let last = end - 1;
        let mut word_index = last / WORD_BITS;
        let keep = last % WORD_BITS; // keep bits 0..=keep
        let mask = if keep == WORD_BITS - 1 { u64::MAX } else { (1u64 << (keep + 1)) - 1 };
        let mut word = self.occupied[word_index] & mask;
        loop {
            if word != 0 {
                return Some((word_index * WORD_BITS + (WORD_BITS - 1 - word.leading_zeros() as usize)) as u32);
            }
            if word_index == 0 {
                return None;
            }
            word_index -= 1;
            word = self.occupied[word_index];
        }
    }

    /// Occupied levels from the best outward.
    pub fn occupied_best_first(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(self.best, move |&level| self.next_worse_occupied(level))
    }

    pub fn is_marked_occupied(&self, level: u32) -> bool {
        let index = level as usize;
        self.occupied[index / WORD_BITS] & (1 << (index % WORD_BITS)) != 0
    }

    /// Recomputes the best level from the bitmap (for `validate`).
    pub fn best_from_scratch(&self) -> Option<u32> {
        let mut occupied = (0..self.levels.len() as u32).filter(|&level| !self.levels[level as usize].is_empty());
        match self.side {
            Side::Buy => occupied.next_back(),
            Side::Sell => occupied.next(),
        }
    }
}
