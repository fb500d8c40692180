//! The order table: resting orders stored in the slots of an open-addressing hash table keyed by
//! `(account, nonce)`, so that finding an order lands directly on its node (one cache line) instead of
//! going through a separate index to a separate slab.
//!
//! Linear probing over a power-of-two number of slots, at most half of them live, so a probe ends at a
//! vacant slot after one or two nodes. Removal shifts the rest of the probe run back (no tombstones, so
//! lookups never slow down with churn); a node that moves is relinked in its queue. Consequently a node
//! index is stable only until the next removal, and every live node must be linked in a queue whenever
//! a removal happens (the book takes an order out of the table before matching it as a replace).
//!
//! The hash is keyed with a random 64-bit key per table. Traders choose their nonces, so with a fixed
//! hash one could pick nonces that all land in one probe run and make every operation on the book walk
//! it; with a key they cannot know, a nonce's home slot is unpredictable. The key changes nothing a
//! caller can see: priority lives in the queues, not in the slots.

use super::level::BookSide;
use super::order::{account_prefix, Link, NodeIndex, OrderNode, NIL};
use protocol::{AccountId, Side};

/// Slots of a new table; it doubles when more than half would be live.
const SLOTS_MIN: usize = 64;

/// Mixing constants (from SplitMix64 and MurmurHash3's finaliser): odd, with well spread bits.
const MIX_ACCOUNT: u64 = 0x9E37_79B9_7F4A_7C15;
const MIX_1: u64 = 0xFF51_AFD7_ED55_8CCD;
const MIX_2: u64 = 0xC4CE_B9FE_1A85_EC53;

#[derive(Debug)]
pub(crate) struct OrderTable {
    nodes: Vec<OrderNode>,
    links: Vec<Link>,
    live: usize,
    /// `64 - log2(nodes.len())`: the home slot is the top bits of the hash.
    shift: u32,
    /// The hash key (see the module documentation).
    key: u64,
}

impl Default for OrderTable {
    fn default() -> Self {
        Self::with_slots(SLOTS_MIN, random_key())
    }
}

/// A fresh random key: std's `RandomState` is seeded from the operating system once per thread and
/// differs for every instance.
fn random_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x6772_6964_6578_u64)
}

impl OrderTable {
    /// An empty table of `slots` slots (a power of two) hashing with `key`.
    pub fn with_slots(slots: usize, key: u64) -> Self {
        assert!(slots.is_power_of_two(), "table slots must be a power of two");
        assert!(slots <= NIL as usize, "the order table is too large for its node indices");
        Self {
            nodes: vec![OrderNode::VACANT; slots],
            links: vec![Link::DETACHED; slots],
            live: 0,
            shift: 64 - slots.trailing_zeros(),
            key,
        }
    }

    /// An empty table of twice the slots, with the same key.
    pub fn grown(&self) -> Self {
        Self::with_slots(self.nodes.len() * 2, self.key)
    }

    /// How many orders the table holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn slots(&self) -> usize {
        self.nodes.len()
    }

    /// Whether one more order fits without exceeding half the slots.
    #[inline]
    pub fn has_room(&self) -> bool {
        (self.live + 1) * 2 <= self.nodes.len()
    }

    /// The slot where the probe for `(account, nonce)` starts: the top bits of a keyed hash. The key
    /// enters before the finaliser's xor-shift-multiply rounds, so every bit of it reaches every bit of
    /// the result.
    #[inline]
    fn home(&self, account: &AccountId, nonce: u64) -> usize {
        let mut hash = account_prefix(account).wrapping_mul(MIX_ACCOUNT) ^ nonce ^ self.key;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(MIX_1);
        hash ^= hash >> 29;
        hash = hash.wrapping_mul(MIX_2);
        (hash >> self.shift) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.nodes.len() - 1
    }

    /// The node of `(account, nonce)`, or the vacant slot where it would go.
    #[inline]
    pub fn probe(&self, account: &AccountId, nonce: u64) -> Result<NodeIndex, NodeIndex> {
        let mask = self.mask();
        let mut slot = self.home(account, nonce);
        loop {
            let node = &self.nodes[slot];
            if !node.live {
                return Err(slot as NodeIndex);
            }
            if node.nonce == nonce && node.account == *account {
                return Ok(slot as NodeIndex);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The node of `(account, nonce)`, if it is in the table.
    #[inline]
    pub fn find(&self, account: &AccountId, nonce: u64) -> Option<NodeIndex> {
        self.probe(account, nonce).ok()
    }

    /// Puts `node`, whose key is not in the table, into it (detached from any queue) and returns its index.
    ///
    /// # Panics
    /// If the table has no room (the caller grows it first; see [`OrderTable::has_room`]).
    #[inline]
    pub fn insert(&mut self, mut node: OrderNode) -> NodeIndex {
        assert!(self.has_room(), "the order table is over half full");
        let Err(index) = self.probe(&node.account, node.nonce) else {
            panic!("an order key is inserted twice");
        };
        node.live = true;
        self.nodes[index as usize] = node;
        self.links[index as usize] = Link::DETACHED;
        self.live += 1;
        index
    }

    /// Removes the node at `index`, which must already be out of its queue. Later nodes of its probe run
    /// move back into the gap and are relinked in their queues in `bids` / `asks`.
    pub fn remove(&mut self, index: NodeIndex, bids: &mut BookSide, asks: &mut BookSide) {
        debug_assert!(self.nodes[index as usize].live, "removing a vacant slot");
        let mask = self.mask();
        let mut hole = index as usize;
        let mut slot = (hole + 1) & mask;
        loop {
            let node = &self.nodes[slot];
            if !node.live {
                break;
            }
            let home = self.home(&node.account, node.nonce);
            // The node may fill the hole if the hole lies on its probe path, from its home to its slot.
            if slot.wrapping_sub(home) & mask >= slot.wrapping_sub(hole) & mask {
                self.relocate(slot, hole, bids, asks);
                hole = slot;
            }
            slot = (slot + 1) & mask;
        }
        self.nodes[hole].live = false;
        self.live -= 1;
    }

    /// Moves the linked node at `from` to the vacant slot `to` and points its neighbours (or its level's
    /// head / tail) at the new place.
    fn relocate(&mut self, from: usize, to: usize, bids: &mut BookSide, asks: &mut BookSide) {
        let node = self.nodes[from];
        let link = self.links[from];
        self.nodes[to] = node;
        self.links[to] = link;
        let queue = match node.side {
            Side::Buy => &mut bids.levels[node.level as usize],
            Side::Sell => &mut asks.levels[node.level as usize],
        };
        let to = to as NodeIndex;
        if link.prev == NIL {
            queue.head = to;
        } else {
            self.links[link.prev as usize].next = to;
        }
        if link.next == NIL {
            queue.tail = to;
        } else {
            self.links[link.next as usize].prev = to;
        }
    }

    #[inline]
    pub fn link(&self, index: NodeIndex) -> Link {
        self.links[index as usize]
    }

    #[inline]
    pub fn link_mut(&mut self, index: NodeIndex) -> &mut Link {
        &mut self.links[index as usize]
    }

    /// Every live node's index (for `validate`).
    pub fn live_indices(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        (0..self.nodes.len()).filter(|&slot| self.nodes[slot].live).map(|slot| slot as NodeIndex)
    }
}

impl std::ops::Index<NodeIndex> for OrderTable {
    type Output = OrderNode;
    #[inline]
    fn index(&self, index: NodeIndex) -> &OrderNode {
        &self.nodes[index as usize]
    }
}

impl std::ops::IndexMut<NodeIndex> for OrderTable {
    #[inline]
    fn index_mut(&mut self, index: NodeIndex) -> &mut OrderNode {
        &mut self.nodes[index as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId([7; 32])
    }

    /// `count` nonces that share one home slot under `table`'s key: what a trader who knew the key
    /// could send.
    fn colliding_nonces(table: &OrderTable, count: usize) -> Vec<u64> {
        let target = table.home(&account(), 1);
        (1..).filter(|&nonce| table.home(&account(), nonce) == target).take(count).collect()
    }

    #[test]
    fn nonces_chosen_to_collide_under_one_key_spread_out_under_another() {
        let known = OrderTable::with_slots(256, 0x0123_4567_89AB_CDEF);
        let nonces = colliding_nonces(&known, 32);
        let homes = |table: &OrderTable| {
            let mut homes: Vec<usize> = nonces.iter().map(|&nonce| table.home(&account(), nonce)).collect();
            homes.sort_unstable();
            homes.dedup();
            homes.len()
        };
        assert_eq!(homes(&known), 1, "under the key they were chosen for, all 32 share a slot");
        for key in [0, 1, 0xFEDC_BA98_7654_3210, u64::MAX] {
            let other = OrderTable::with_slots(256, key);
            // 32 keys hashed at random into 256 slots meet in a few slots at most.
            assert!(homes(&other) >= 26, "key {key:#x}: only {} distinct homes", homes(&other));
        }
    }

    #[test]
    fn every_table_gets_its_own_key_and_a_grown_table_keeps_it() {
        let (a, b) = (OrderTable::default(), OrderTable::default());
        assert_ne!(a.key, b.key);
        let grown = a.grown();
        assert_eq!((grown.key, grown.slots()), (a.key, a.slots() * 2));
    }
}
