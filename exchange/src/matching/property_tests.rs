//! Properties of the book under random command sequences: `validate()` holds after every operation (so
//! the book never stays crossed and every cached total is right), quantities are conserved per order,
//! price-time priority is respected, FOK and IOC behave, and the same commands give the same events.

use super::*;
use proptest::prelude::*;
use protocol::{AccountId, PricePerKwh, Reason, Side, TimeInForce, TimestampMs, Wh};
use std::collections::HashMap;

/// A small book so random orders cross often: 11 levels, a few accounts (so self-trade prevention fires).
fn config() -> BookConfig {
    BookConfig {
        tick: PricePerKwh(10),
        qty_min: Wh(1),
        qty_max: Wh(20),
        price_min: PricePerKwh(100),
        price_max: PricePerKwh(200),
        open_orders_per_account_max: 4,
    }
}

#[derive(Debug, Clone)]
enum Command {
    Submit {
        account: u8,
        side: Side,
        price: i64,
        qty: i64,
        tif: TimeInForce,
        post_only: bool,
    },
    /// `pick` chooses one of the orders submitted so far (resting or not).
    Cancel {
        pick: usize,
    },
    Replace {
        pick: usize,
        price: i64,
        qty: i64,
    },
    Close,
}

fn command() -> impl Strategy<Value = Command> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    let tif = prop_oneof![6 => Just(TimeInForce::Gtc), 2 => Just(TimeInForce::Ioc), 2 => Just(TimeInForce::Fok)];
    // Prices step by 5 across and beyond the band: some are off the tick or outside the band.
    let price = (19i64..=41).prop_map(|step| step * 5);
    let qty = 0i64..=22;
    prop_oneof![
        10 => (0u8..4, side, price.clone(), qty.clone(), tif, prop::bool::weighted(0.15)).prop_map(
            |(account, side, price, qty, tif, post_only)| Command::Submit { account, side, price, qty, tif, post_only }
        ),
        2 => any::<usize>().prop_map(|pick| Command::Cancel { pick }),
        5 => (any::<usize>(), price, qty).prop_map(|(pick, price, qty)| Command::Replace { pick, price, qty }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    // Close only as the last command, with some probability: a closed book is not interesting for long.
    (prop::collection::vec(command(), 1..120), any::<bool>()).prop_map(|(mut commands, close)| {
        if close {
            commands.push(Command::Close);
        }
        commands
    })
}

type Key = (AccountId, u64);

/// Per-order bookkeeping rebuilt from events alone.
#[derive(Debug, Default, Clone)]
struct Track {
    /// Accepted quantity plus every replace increase minus every replace decrease.
    qty_in: i64,
    filled: i64,
    open: i64,
    /// Open quantity that left by cancel or expiry.
    removed: i64,
    done: bool,
}

struct Harness {
    book: OrderBook,
    submitted: Vec<(Key, Side)>,
    tracks: HashMap<Key, Track>,
    all_events: Vec<Event>,
}

fn account(index: u8) -> AccountId {
    AccountId([index + 1; 32])
}

impl Harness {
    fn new() -> Self {
        Self { book: OrderBook::new(config()), submitted: Vec::new(), tracks: HashMap::new(), all_events: Vec::new() }
    }

    fn run(&mut self, command: &Command) -> Result<(), TestCaseError> {
        let before = self.book.resting_orders();
        let mut events = Vec::new();
        let mut inbound: Option<(Key, Side, i64, i64, TimeInForce)> = None; // key, side, limit price, qty, tif
        match *command {
            Command::Submit { account: index, side, price, qty, tif, post_only } => {
                let nonce = self.submitted.len() as u64 + 1;
                let key = (account(index), nonce);
                self.submitted.push((key, side));
                let order = NewOrder {
                    account: key.0,
                    nonce,
                    side,
                    price: PricePerKwh(price),
                    qty: Wh(qty),
                    tif,
                    post_only,
                    ts_ms: TimestampMs(0),
                };
                self.book.submit(order, &mut events);
                inbound = Some((key, side, price, qty, tif));
            }
            Command::Cancel { pick } => {
                if let Some(&((account, nonce), _)) = self.pick(pick) {
                    self.book.cancel(account, nonce, &mut events);
                }
            }
            Command::Replace { pick, price, qty } => {
                if let Some(&(key, side)) = self.pick(pick) {
                    self.book.replace(key.0, key.1, PricePerKwh(price), Wh(qty), &mut events);
                    inbound = Some((key, side, price, qty, TimeInForce::Gtc));
                }
            }
            Command::Close => self.book.close(&mut events),
        }
        if let Err(problem) = self.book.validate() {
            return Err(TestCaseError::fail(format!("after {command:?}: {problem}")));
        }
        self.account(&events)?;
        if let Some((key, side, price, qty, tif)) = inbound {
            check_priority(&before, &events, key, side, price, qty, tif)?;
        }
        for view in self.book.resting_orders() {
            let track = &self.tracks[&(view.account, view.nonce)];
            prop_assert_eq!((view.open_qty.get(), view.filled_qty.get()), (track.open, track.filled));
            prop_assert!(!track.done);
        }
        self.all_events.extend(events);
        Ok(())
    }

    fn pick(&self, pick: usize) -> Option<&(Key, Side)> {
        (!self.submitted.is_empty()).then(|| &self.submitted[pick % self.submitted.len()])
    }

    /// Follows every order's quantities through the events and checks each event against them.
    fn account(&mut self, events: &[Event]) -> Result<(), TestCaseError> {
        for event in events {
            match *event {
                Event::Accepted { account, nonce, qty, .. } => {
                    let previous = self
                        .tracks
                        .insert((account, nonce), Track { qty_in: qty.get(), open: qty.get(), ..Track::default() });
                    prop_assert!(previous.is_none(), "an order key was accepted twice");
                }
                Event::Trade { qty, buyer, buy_nonce, seller, sell_nonce, .. } => {
                    prop_assert!(buyer != seller, "an account traded with itself");
                    prop_assert!(qty.get() > 0);
                    for key in [(buyer, buy_nonce), (seller, sell_nonce)] {
                        let track =
                            self.tracks.get_mut(&key).ok_or_else(|| TestCaseError::fail("trade of unknown order"))?;
                        prop_assert!(!track.done);
                        track.open -= qty.get();
                        track.filled += qty.get();
                        prop_assert!(track.open >= 0, "overfilled {:?}", key);
                    }
                }
                Event::Replaced { account, nonce, open_qty, .. } => {
                    let track = self.track(account, nonce)?;
                    track.qty_in += open_qty.get() - track.open;
                    track.open = open_qty.get();
                }
                Event::Rested { account, nonce, open_qty } => {
                    let track = self.track(account, nonce)?;
                    prop_assert_eq!(track.open, open_qty.get());
                    prop_assert!(open_qty.get() > 0);
                }
                Event::Cancelled { account, nonce, open_qty, filled_qty, .. }
                | Event::Expired { account, nonce, open_qty, filled_qty } => {
                    let track = self.track(account, nonce)?;
                    prop_assert_eq!((track.open, track.filled), (open_qty.get(), filled_qty.get()));
                    track.removed = track.open;
                    track.open = 0;
                    track.done = true;
                }
                Event::Filled { account, nonce } => {
                    let track = self.track(account, nonce)?;
                    prop_assert_eq!(track.open, 0);
                    track.done = true;
                }
                Event::Rejected { .. } => {}
            }
        }
        Ok(())
    }

    fn track(&mut self, account: AccountId, nonce: u64) -> Result<&mut Track, TestCaseError> {
        let track =
            self.tracks.get_mut(&(account, nonce)).ok_or_else(|| TestCaseError::fail("event of unknown order"))?;
        prop_assert!(!track.done, "event after the order was done");
        Ok(track)
    }
}

/// Checks one inbound order (new or moved) against the book as it was before: it traded with exactly the
/// best-priority orders of other accounts, at their prices, and left none it could still have traded with.
fn check_priority(
    before: &[RestingOrderView],
    events: &[Event],
    key: Key,
    side: Side,
    limit: i64,
    qty: i64,
    tif: TimeInForce,
) -> Result<(), TestCaseError> {
    let crosses = |view: &RestingOrderView| match side {
        Side::Buy => view.price.get() <= limit,
        Side::Sell => view.price.get() >= limit,
    };
    // `before` lists each side best price first and oldest first: exactly the order matching must follow.
    let eligible: Vec<&RestingOrderView> =
        before.iter().filter(|view| view.side != side && view.account != key.0 && crosses(view)).collect();
    let mut makers: Vec<Key> = Vec::new();
    for event in events {
        if let Event::Trade { price, buyer, buy_nonce, seller, sell_nonce, .. } = *event {
            let maker = if side == Side::Buy { (seller, sell_nonce) } else { (buyer, buy_nonce) };
            let Some(view) = eligible.iter().find(|view| (view.account, view.nonce) == maker) else {
                return Err(TestCaseError::fail(format!("traded with an order that was not eligible: {maker:?}")));
            };
            prop_assert_eq!(price, view.price, "a trade was not at the resting order's price");
            if makers.last() != Some(&maker) {
                makers.push(maker);
            }
        }
    }
    for (position, maker) in makers.iter().enumerate() {
        let expected = eligible[position];
        prop_assert_eq!(*maker, (expected.account, expected.nonce), "priority was not respected");
    }
    let accepted = events
        .iter()
        .any(|event| matches!(event, Event::Accepted { .. } | Event::Replaced { kept_priority: false, .. }));
    let unfilled_after = events.iter().any(|event| match *event {
        Event::Rested { account, nonce, .. } | Event::Cancelled { account, nonce, .. } => (account, nonce) == key,
        _ => false,
    });
    if accepted && unfilled_after {
        // Had it stopped with quantity left, every eligible order must have been used up.
        prop_assert_eq!(makers.len(), eligible.len(), "an order left crossing liquidity untouched");
    }
    let available: i64 = eligible.iter().map(|view| view.open_qty.get()).sum();
    let rejected_fok =
        events.iter().any(|event| matches!(event, Event::Rejected { reason: Reason::FokNotFillable, .. }));
    if tif == TimeInForce::Fok && rejected_fok {
        prop_assert!(available < qty, "a fillable FOK order was rejected");
        prop_assert_eq!(events.len(), 1);
    }
    Ok(())
}

fn run_all(commands: &[Command]) -> Result<Harness, TestCaseError> {
    let mut harness = Harness::new();
    for command in commands {
        harness.run(command)?;
    }
    Ok(harness)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_book_stays_valid_uncrossed_and_respects_priority(commands in commands()) {
        run_all(&commands)?;
    }

    #[test]
    fn every_orders_quantity_is_conserved(commands in commands()) {
        let mut harness = run_all(&commands)?;
        harness.run(&Command::Close)?;
        prop_assert_eq!(harness.book.open_order_count(), 0);
        for (key, track) in &harness.tracks {
            prop_assert!(track.done, "{:?} never finished", key);
            prop_assert_eq!(track.qty_in, track.filled + track.removed, "{:?} lost quantity", key);
        }
    }

    #[test]
    fn the_same_commands_give_the_same_events_and_book(commands in commands()) {
        let first = run_all(&commands)?;
        let second = run_all(&commands)?;
        prop_assert_eq!(&first.all_events, &second.all_events);
        prop_assert_eq!(first.book.resting_orders(), second.book.resting_orders());
        prop_assert_eq!(first.book.depth(usize::MAX), second.book.depth(usize::MAX));
    }
}
