//! Properties of the closing auction under random books: the call never trades outside any order's
//! limit, never leaves the book crossed, conserves every order's quantity, trades the most volume any
//! single price could (then the least imbalance), never pairs an account with itself, and the same
//! commands give the same trades.

use super::*;
use proptest::prelude::*;
use protocol::{AccountId, PricePerKwh, Side, TimeInForce, TimestampMs, Wh};
use std::collections::HashMap;

/// A small band so random orders cross often: 21 levels, four accounts.
fn config() -> BookConfig {
    BookConfig {
        tick: PricePerKwh(10),
        qty_min: Wh(1),
        qty_max: Wh(50),
        price_min: PricePerKwh(100),
        price_max: PricePerKwh(300),
        open_orders_per_account_max: 6,
    }
}

#[derive(Debug, Clone)]
enum Command {
    Submit {
        account: u8,
        side: Side,
        price_level: i64,
        qty: i64,
    },
    /// `pick` chooses one of the orders submitted so far.
    Cancel {
        pick: usize,
    },
    Replace {
        pick: usize,
        price_level: i64,
        qty: i64,
    },
    /// Starts the call phase (a second one does nothing).
    Call,
}

fn command() -> impl Strategy<Value = Command> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    prop_oneof![
        10 => (0u8..4, side, 0i64..=20, 1i64..=50)
            .prop_map(|(account, side, price_level, qty)| Command::Submit { account, side, price_level, qty }),
        1 => any::<usize>().prop_map(|pick| Command::Cancel { pick }),
        3 => (any::<usize>(), 0i64..=20, 1i64..=50)
            .prop_map(|(pick, price_level, qty)| Command::Replace { pick, price_level, qty }),
        1 => Just(Command::Call),
    ]
}

/// A few continuous commands, then the call phase and more commands in it.
fn commands() -> impl Strategy<Value = Vec<Command>> {
    (prop::collection::vec(command(), 0..20), prop::collection::vec(command(), 1..80)).prop_map(
        |(mut continuous, called)| {
            continuous.retain(|command| !matches!(command, Command::Call));
            continuous.push(Command::Call);
            continuous.extend(called);
            continuous
        },
    )
}

fn account(index: u8) -> AccountId {
    AccountId([index + 1; 32])
}

fn price(level: i64) -> PricePerKwh {
    PricePerKwh(100 + 10 * level)
}

/// Runs the commands, returning the book just before the uncross and every event so far.
fn build(commands: &[Command]) -> (OrderBook, Vec<Event>) {
    let mut book = OrderBook::new(config());
    let mut events = Vec::new();
    let mut submitted: Vec<(AccountId, u64)> = Vec::new();
    for command in commands {
        match *command {
            Command::Submit { account: index, side, price_level, qty } => {
                let nonce = submitted.len() as u64 + 1;
                submitted.push((account(index), nonce));
                let order = NewOrder {
                    account: account(index),
                    nonce,
                    side,
                    price: price(price_level),
                    qty: Wh(qty),
                    tif: TimeInForce::Gtc,
                    post_only: false,
                    ts_ms: TimestampMs(0),
                };
                book.submit(order, &mut events);
            }
            Command::Cancel { pick } if !submitted.is_empty() => {
                let (account, nonce) = submitted[pick % submitted.len()];
                book.cancel(account, nonce, &mut events);
            }
            Command::Replace { pick, price_level, qty } if !submitted.is_empty() => {
                let (account, nonce) = submitted[pick % submitted.len()];
                book.replace(account, nonce, price(price_level), Wh(qty), &mut events);
            }
            Command::Cancel { .. } | Command::Replace { .. } => {}
            Command::Call => book.begin_call(),
        }
        book.validate().expect("the book stays valid in the call phase");
    }
    (book, events)
}

/// `(demand, supply)` at `price` over resting orders, counted one by one.
fn demand_and_supply(orders: &[RestingOrderView], price: PricePerKwh) -> (i64, i64) {
    let total = |side: Side, eligible: &dyn Fn(PricePerKwh) -> bool| -> i64 {
        orders
            .iter()
            .filter(|order| order.side == side && eligible(order.price))
            .map(|order| order.open_qty.get())
            .sum()
    };
    (total(Side::Buy, &|limit| limit >= price), total(Side::Sell, &|limit| limit <= price))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_call_trades_within_every_limit_conserves_quantity_and_leaves_the_book_uncrossed(
        commands in commands()
    ) {
        let (mut book, _) = build(&commands);
        let before = book.resting_orders();
        let by_key: HashMap<(AccountId, u64), RestingOrderView> =
            before.iter().map(|order| ((order.account, order.nonce), *order)).collect();
        let mut events = Vec::new();
        let outcome = book.uncross(&mut events);
        book.validate().map_err(TestCaseError::fail)?;
        if let (Some(bid), Some(ask)) = (book.best_bid(), book.best_ask()) {
            prop_assert!(bid < ask, "the book is crossed after the uncross: {:?} >= {:?}", bid, ask);
        }

        let mut filled: HashMap<(AccountId, u64), i64> = HashMap::new();
        let (mut bought, mut sold, mut trades) = (0i64, 0i64, 0u64);
        for event in &events {
            match *event {
                Event::Trade { price, qty, buyer, buy_nonce, seller, sell_nonce, .. } => {
                    prop_assert_eq!(Some(price), outcome.price, "a trade not at the uniform price");
                    prop_assert!(buyer != seller, "an account traded with itself");
                    let (bid, ask) = (by_key[&(buyer, buy_nonce)], by_key[&(seller, sell_nonce)]);
                    prop_assert_eq!((bid.side, ask.side), (Side::Buy, Side::Sell));
                    prop_assert!(price <= bid.price, "a buyer paid above its limit");
                    prop_assert!(price >= ask.price, "a seller got less than its limit");
                    *filled.entry((buyer, buy_nonce)).or_default() += qty.get();
                    *filled.entry((seller, sell_nonce)).or_default() += qty.get();
                    bought += qty.get();
                    sold += qty.get();
                    trades += 1;
                }
                Event::Filled { .. } => {}
                other => return Err(TestCaseError::fail(format!("unexpected event {other:?}"))),
            }
        }
        prop_assert_eq!(bought, sold);
        prop_assert_eq!(bought, outcome.volume.get());
        prop_assert_eq!(trades, outcome.trades);
        for (key, order) in &by_key {
            let fill = filled.get(key).copied().unwrap_or(0);
            let left = book.order(key.0, key.1).map_or(0, |after| after.open_qty.get());
            prop_assert_eq!(order.open_qty.get(), fill + left, "{:?} lost quantity", key);
            let filled_before = order.filled_qty.get();
            if let Some(after) = book.order(key.0, key.1) {
                prop_assert_eq!(after.filled_qty.get(), filled_before + fill);
            }
        }

        // Optimal by brute force over every price of the band: most volume, then least imbalance.
        let scores: Vec<(PricePerKwh, i64, i64)> = (0..=20)
            .map(price)
            .map(|candidate| {
                let (demand, supply) = demand_and_supply(&before, candidate);
                (candidate, demand.min(supply), (demand - supply).abs())
            })
            .collect();
        let best_volume = scores.iter().map(|score| score.1).max().unwrap_or(0);
        prop_assert_eq!(outcome.volume.get(), best_volume, "not the most executable volume");
        if let Some(chosen) = outcome.price {
            let least_imbalance =
                scores.iter().filter(|score| score.1 == best_volume).map(|score| score.2).min().unwrap_or(0);
            let score = scores.iter().find(|score| score.0 == chosen).copied();
            prop_assert_eq!(score.map(|score| score.2), Some(least_imbalance), "not the least imbalance");
        } else {
            prop_assert_eq!(best_volume, 0);
        }
    }

    #[test]
    fn the_same_commands_give_the_same_auction(commands in commands()) {
        let (mut first, mut first_events) = build(&commands);
        let (mut second, mut second_events) = build(&commands);
        let first_outcome = first.uncross(&mut first_events);
        let second_outcome = second.uncross(&mut second_events);
        prop_assert_eq!(first_outcome, second_outcome);
        prop_assert_eq!(first_events, second_events);
        prop_assert_eq!(first.resting_orders(), second.resting_orders());
    }
}
