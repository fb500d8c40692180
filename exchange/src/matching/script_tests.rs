//! Data-driven book tests: each test is a script of commands, each followed by the events it must
//! produce (`> ` lines). The runner executes the commands, renders a transcript in the same form and
//! compares it with the script; `validate()` runs after every command.
//!
//! Commands: `a#1 buy 200x10 gtc [post]` (account `a`, nonce 1, price 200, 10 Wh; tif gtc|ioc|fok),
//! `cancel a#1`, `replace a#1 210x5`, `close`, `depth`, and for the closing auction `call` (begin the
//! call phase) and `uncross` (its events, then `auction price=… volume=… trades=…`). The book is 100..=1000 µ/kWh in ticks of 10,
//! 1..=1000 Wh per order, at most 3 open orders per account.

use super::*;
use protocol::{AccountId, PricePerKwh, Side, TimeInForce, TimestampMs, Wh};

fn config() -> BookConfig {
    BookConfig {
        tick: PricePerKwh(10),
        qty_min: Wh(1),
        qty_max: Wh(1000),
        price_min: PricePerKwh(100),
        price_max: PricePerKwh(1000),
        open_orders_per_account_max: 3,
    }
}

fn account(name: &str) -> AccountId {
    assert_eq!(name.len(), 1, "accounts are one letter");
    AccountId([name.as_bytes()[0]; 32])
}

fn order_ref(text: &str) -> (AccountId, u64) {
    let (name, nonce) = text.split_once('#').expect("an order is written account#nonce");
    (account(name), nonce.parse().expect("a nonce is a number"))
}

fn price_qty(text: &str) -> (PricePerKwh, Wh) {
    let (price, qty) = text.split_once('x').expect("price and quantity are written PRICExQTY");
    (PricePerKwh(price.parse().expect("a price")), Wh(qty.parse().expect("a quantity")))
}

fn name(account: &AccountId) -> char {
    account.0[0] as char
}

fn side_name(side: Side) -> &'static str {
    side.as_str()
}

fn render(event: &Event) -> String {
    match *event {
        Event::Accepted { account, nonce, side, price, qty } => {
            format!("accepted {}#{nonce} {} {}x{}", name(&account), side_name(side), price.get(), qty.get())
        }
        Event::Rejected { account, nonce, reason } => format!("rejected {}#{nonce} {}", name(&account), reason.code()),
        Event::Trade { trade_seq, price, qty, buyer, buy_nonce, seller, sell_nonce, aggressor } => format!(
            "trade #{trade_seq} {}@{} buyer={}#{buy_nonce} seller={}#{sell_nonce} aggressor={}",
            qty.get(),
            price.get(),
            name(&buyer),
            name(&seller),
            side_name(aggressor)
        ),
        Event::Rested { account, nonce, open_qty } => {
            format!("rested {}#{nonce} open={}", name(&account), open_qty.get())
        }
        Event::Cancelled { account, nonce, open_qty, filled_qty, by_request } => format!(
            "cancelled {}#{nonce} open={} filled={} {}",
            name(&account),
            open_qty.get(),
            filled_qty.get(),
            if by_request { "requested" } else { "auto" }
        ),
        Event::Replaced { account, nonce, price, open_qty, kept_priority } => format!(
            "replaced {}#{nonce} {}x{} {}",
            name(&account),
            price.get(),
            open_qty.get(),
            if kept_priority { "kept" } else { "moved" }
        ),
        Event::Expired { account, nonce, open_qty, filled_qty } => {
            format!("expired {}#{nonce} open={} filled={}", name(&account), open_qty.get(), filled_qty.get())
        }
        Event::Filled { account, nonce } => format!("filled {}#{nonce}", name(&account)),
    }
}

fn render_depth(book: &OrderBook) -> String {
    let (bids, asks) = book.depth(10);
    let levels = |levels: Vec<protocol::Level>| {
        levels
            .iter()
            .map(|level| format!(" {}x{}/{}", level.price_per_kwh.get(), level.qty_wh.get(), level.orders))
            .collect::<String>()
    };
    format!("bids{} | asks{}", levels(bids), levels(asks))
}

fn execute(book: &mut OrderBook, command: &str, events: &mut Vec<Event>) -> Vec<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["cancel", order] => {
            let (account, nonce) = order_ref(order);
            book.cancel(account, nonce, events);
        }
        ["replace", order, price_and_qty] => {
            let (account, nonce) = order_ref(order);
            let (price, qty) = price_qty(price_and_qty);
            book.replace(account, nonce, price, qty, events);
        }
        ["close"] => book.close(events),
        ["call"] => book.begin_call(),
        ["uncross"] => {
            let outcome = book.uncross(events);
            let mut lines: Vec<String> = events.drain(..).map(|event| render(&event)).collect();
            let price = outcome.price.map_or("none".to_owned(), |price| price.get().to_string());
            lines.push(format!("auction price={price} volume={} trades={}", outcome.volume.get(), outcome.trades));
            return lines;
        }
        ["depth"] => return vec![render_depth(book)],
        [order, side, price_and_qty, tif, flags @ ..] => {
            let (account, nonce) = order_ref(order);
            let (price, qty) = price_qty(price_and_qty);
            let side = match *side {
                "buy" => Side::Buy,
                "sell" => Side::Sell,
                other => panic!("unknown side {other}"),
            };
            let tif = match *tif {
                "gtc" => TimeInForce::Gtc,
                "ioc" => TimeInForce::Ioc,
                "fok" => TimeInForce::Fok,
                other => panic!("unknown time in force {other}"),
            };
            let post_only = flags == ["post"];
            let order = NewOrder { account, nonce, side, price, qty, tif, post_only, ts_ms: TimestampMs(0) };
            book.submit(order, events);
        }
        _ => panic!("cannot parse command {command:?}"),
    }
    events.drain(..).map(|event| render(&event)).collect()
}

/// Runs `script` against a fresh book and asserts that the transcript equals it.
pub(super) fn run(script: &str) {
    let expected: Vec<String> = script
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .collect();
    let mut book = OrderBook::new(config());
    let mut events = Vec::new();
    let mut transcript = Vec::new();
    for command in expected.iter().filter(|line| !line.starts_with('>')) {
        transcript.push(command.clone());
        for line in execute(&mut book, command, &mut events) {
            transcript.push(format!("> {line}"));
        }
        if let Err(problem) = book.validate() {
            panic!("after {command:?}: {problem}");
        }
    }
    assert_eq!(transcript.join("\n"), expected.join("\n"), "\n--- got ---\n{}\n", transcript.join("\n"));
}

#[test]
fn a_crossing_order_trades_at_the_resting_orders_price() {
    run("
        a#1 sell 200x10 gtc
        > accepted a#1 sell 200x10
        > rested a#1 open=10
        b#1 buy 250x4 gtc
        > accepted b#1 buy 250x4
        > trade #1 4@200 buyer=b#1 seller=a#1 aggressor=buy
        > filled b#1
        depth
        > bids | asks 200x6/1
    ");
}

#[test]
fn orders_at_the_same_price_fill_oldest_first() {
    run("
        a#1 buy 300x5 gtc
        > accepted a#1 buy 300x5
        > rested a#1 open=5
        b#1 buy 300x5 gtc
        > accepted b#1 buy 300x5
        > rested b#1 open=5
        c#1 sell 300x7 gtc
        > accepted c#1 sell 300x7
        > trade #1 5@300 buyer=a#1 seller=c#1 aggressor=sell
        > filled a#1
        > trade #2 2@300 buyer=b#1 seller=c#1 aggressor=sell
        > filled c#1
        depth
        > bids 300x3/1 | asks
    ");
}

#[test]
fn a_better_price_fills_before_an_older_worse_one_and_the_remainder_rests() {
    run("
        a#1 sell 220x5 gtc
        > accepted a#1 sell 220x5
        > rested a#1 open=5
        b#1 sell 210x5 gtc
        > accepted b#1 sell 210x5
        > rested b#1 open=5
        c#1 buy 230x12 gtc
        > accepted c#1 buy 230x12
        > trade #1 5@210 buyer=c#1 seller=b#1 aggressor=buy
        > filled b#1
        > trade #2 5@220 buyer=c#1 seller=a#1 aggressor=buy
        > filled a#1
        > rested c#1 open=2
        depth
        > bids 230x2/1 | asks
    ");
}

#[test]
fn an_order_stops_at_its_limit_price() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        a#2 sell 300x5 gtc
        > accepted a#2 sell 300x5
        > rested a#2 open=5
        b#1 buy 250x8 gtc
        > accepted b#1 buy 250x8
        > trade #1 5@200 buyer=b#1 seller=a#1 aggressor=buy
        > filled a#1
        > rested b#1 open=3
        depth
        > bids 250x3/1 | asks 300x5/1
    ");
}

#[test]
fn an_ioc_remainder_is_cancelled_and_never_rests() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        b#1 buy 200x8 ioc
        > accepted b#1 buy 200x8
        > trade #1 5@200 buyer=b#1 seller=a#1 aggressor=buy
        > filled a#1
        > cancelled b#1 open=3 filled=5 auto
        b#2 buy 200x8 ioc
        > accepted b#2 buy 200x8
        > cancelled b#2 open=8 filled=0 auto
        depth
        > bids | asks
    ");
}

#[test]
fn a_fok_that_cannot_fill_completely_is_rejected_without_trading() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        a#2 sell 220x5 gtc
        > accepted a#2 sell 220x5
        > rested a#2 open=5
        b#1 buy 210x6 fok
        > rejected b#1 fok_not_fillable
        b#2 buy 220x10 fok
        > accepted b#2 buy 220x10
        > trade #1 5@200 buyer=b#2 seller=a#1 aggressor=buy
        > filled a#1
        > trade #2 5@220 buyer=b#2 seller=a#2 aggressor=buy
        > filled a#2
        > filled b#2
    ");
}

#[test]
fn a_post_only_order_rests_but_is_rejected_if_it_would_cross() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        b#1 buy 200x5 gtc post
        > rejected b#1 post_only_would_cross
        b#2 buy 190x5 gtc post
        > accepted b#2 buy 190x5
        > rested b#2 open=5
        b#3 buy 190x5 ioc post
        > rejected b#3 invalid_value
    ");
}

#[test]
fn reducing_the_quantity_at_the_same_price_keeps_priority() {
    run("
        a#1 buy 300x5 gtc
        > accepted a#1 buy 300x5
        > rested a#1 open=5
        b#1 buy 300x5 gtc
        > accepted b#1 buy 300x5
        > rested b#1 open=5
        replace a#1 300x3
        > replaced a#1 300x3 kept
        c#1 sell 300x4 ioc
        > accepted c#1 sell 300x4
        > trade #1 3@300 buyer=a#1 seller=c#1 aggressor=sell
        > filled a#1
        > trade #2 1@300 buyer=b#1 seller=c#1 aggressor=sell
        > filled c#1
        depth
        > bids 300x4/1 | asks
    ");
}

#[test]
fn raising_the_quantity_loses_priority() {
    run("
        a#1 buy 300x5 gtc
        > accepted a#1 buy 300x5
        > rested a#1 open=5
        b#1 buy 300x5 gtc
        > accepted b#1 buy 300x5
        > rested b#1 open=5
        replace a#1 300x6
        > replaced a#1 300x6 moved
        > rested a#1 open=6
        c#1 sell 300x5 ioc
        > accepted c#1 sell 300x5
        > trade #1 5@300 buyer=b#1 seller=c#1 aggressor=sell
        > filled b#1
        > filled c#1
    ");
}

#[test]
fn changing_the_price_loses_priority_and_a_crossing_replace_trades() {
    run("
        a#1 buy 300x5 gtc
        > accepted a#1 buy 300x5
        > rested a#1 open=5
        b#1 buy 300x5 gtc
        > accepted b#1 buy 300x5
        > rested b#1 open=5
        replace a#1 290x5
        > replaced a#1 290x5 moved
        > rested a#1 open=5
        replace a#1 300x5
        > replaced a#1 300x5 moved
        > rested a#1 open=5
        c#1 sell 320x4 gtc
        > accepted c#1 sell 320x4
        > rested c#1 open=4
        replace b#1 330x6
        > replaced b#1 330x6 moved
        > trade #1 4@320 buyer=b#1 seller=c#1 aggressor=buy
        > filled c#1
        > rested b#1 open=2
        replace b#1 300x2
        > replaced b#1 300x2 moved
        > rested b#1 open=2
        d#1 sell 300x6 ioc
        > accepted d#1 sell 300x6
        > trade #2 5@300 buyer=a#1 seller=d#1 aggressor=sell
        > filled a#1
        > trade #3 1@300 buyer=b#1 seller=d#1 aggressor=sell
        > filled d#1
        cancel b#1
        > cancelled b#1 open=1 filled=5 requested
    ");
}

#[test]
fn a_replace_that_fills_completely_removes_the_order() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        b#1 buy 150x3 gtc
        > accepted b#1 buy 150x3
        > rested b#1 open=3
        replace b#1 200x3
        > replaced b#1 200x3 moved
        > trade #1 3@200 buyer=b#1 seller=a#1 aggressor=buy
        > filled b#1
        cancel b#1
        > rejected b#1 unknown_order
        depth
        > bids | asks 200x2/1
    ");
}

#[test]
fn prices_off_the_tick_or_outside_the_band_are_rejected() {
    run("
        a#1 buy 205x5 gtc
        > rejected a#1 price_off_tick
        a#2 buy 90x5 gtc
        > rejected a#2 price_out_of_band
        a#3 buy 1010x5 gtc
        > rejected a#3 price_out_of_band
        a#4 buy 1000x5 gtc
        > accepted a#4 buy 1000x5
        > rested a#4 open=5
        replace a#4 995x5
        > rejected a#4 price_off_tick
        replace a#4 2000x5
        > rejected a#4 price_out_of_band
    ");
}

#[test]
fn quantities_outside_the_limits_are_rejected() {
    run("
        a#1 buy 200x0 gtc
        > rejected a#1 quantity_too_small
        a#2 buy 200x1001 gtc
        > rejected a#2 quantity_too_large
        a#3 buy 200x1000 gtc
        > accepted a#3 buy 200x1000
        > rested a#3 open=1000
        replace a#3 200x1001
        > rejected a#3 quantity_too_large
        replace a#3 200x0
        > rejected a#3 quantity_too_small
    ");
}

#[test]
fn an_account_cannot_rest_more_than_its_open_order_limit() {
    run("
        a#1 buy 200x1 gtc
        > accepted a#1 buy 200x1
        > rested a#1 open=1
        a#2 buy 200x1 gtc
        > accepted a#2 buy 200x1
        > rested a#2 open=1
        a#3 buy 210x1 gtc
        > accepted a#3 buy 210x1
        > rested a#3 open=1
        a#4 buy 220x1 gtc
        > rejected a#4 too_many_open_orders
        a#5 buy 220x1 ioc
        > accepted a#5 buy 220x1
        > cancelled a#5 open=1 filled=0 auto
        cancel a#1
        > cancelled a#1 open=1 filled=0 requested
        a#6 buy 220x1 gtc
        > accepted a#6 buy 220x1
        > rested a#6 open=1
    ");
}

#[test]
fn cancel_and_replace_of_an_unknown_order_are_rejected() {
    run("
        cancel a#1
        > rejected a#1 unknown_order
        replace a#1 200x5
        > rejected a#1 unknown_order
        a#1 buy 200x5 gtc
        > accepted a#1 buy 200x5
        > rested a#1 open=5
        cancel a#1
        > cancelled a#1 open=5 filled=0 requested
        cancel a#1
        > rejected a#1 unknown_order
    ");
}

#[test]
fn a_second_order_with_a_resting_orders_key_is_rejected() {
    run("
        a#1 buy 200x5 gtc
        > accepted a#1 buy 200x5
        > rested a#1 open=5
        a#1 sell 300x5 gtc
        > rejected a#1 replayed
        depth
        > bids 200x5/1 | asks
    ");
}

#[test]
fn self_trade_prevention_cancels_the_resting_order_and_matching_continues() {
    run("
        b#1 sell 200x3 gtc
        > accepted b#1 sell 200x3
        > rested b#1 open=3
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        c#1 sell 200x4 gtc
        > accepted c#1 sell 200x4
        > rested c#1 open=4
        a#2 buy 200x6 gtc
        > accepted a#2 buy 200x6
        > trade #1 3@200 buyer=a#2 seller=b#1 aggressor=buy
        > filled b#1
        > cancelled a#1 open=5 filled=0 auto
        > trade #2 3@200 buyer=a#2 seller=c#1 aggressor=buy
        > filled a#2
        depth
        > bids | asks 200x1/1
    ");
}

#[test]
fn a_fok_counts_only_other_accounts_quantity_and_a_rejected_fok_cancels_nothing() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        b#1 sell 200x5 gtc
        > accepted b#1 sell 200x5
        > rested b#1 open=5
        a#2 buy 200x6 fok
        > rejected a#2 fok_not_fillable
        a#3 buy 200x5 fok
        > accepted a#3 buy 200x5
        > cancelled a#1 open=5 filled=0 auto
        > trade #1 5@200 buyer=a#3 seller=b#1 aggressor=buy
        > filled b#1
        > filled a#3
    ");
}

#[test]
fn a_moved_post_only_order_that_would_cross_is_rejected_and_stays_as_it_was() {
    run("
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        b#1 buy 190x5 gtc post
        > accepted b#1 buy 190x5
        > rested b#1 open=5
        replace b#1 200x5
        > rejected b#1 post_only_would_cross
        replace b#1 190x4
        > replaced b#1 190x4 kept
        depth
        > bids 190x4/1 | asks 200x5/1
    ");
}

#[test]
fn gate_closure_expires_every_resting_order_and_rejects_later_commands() {
    run("
        a#1 buy 200x5 gtc
        > accepted a#1 buy 200x5
        > rested a#1 open=5
        b#1 buy 210x5 gtc
        > accepted b#1 buy 210x5
        > rested b#1 open=5
        c#1 sell 300x5 gtc
        > accepted c#1 sell 300x5
        > rested c#1 open=5
        d#1 sell 210x2 gtc
        > accepted d#1 sell 210x2
        > trade #1 2@210 buyer=b#1 seller=d#1 aggressor=sell
        > filled d#1
        close
        > expired b#1 open=3 filled=2
        > expired a#1 open=5 filled=0
        > expired c#1 open=5 filled=0
        close
        e#1 buy 200x5 gtc
        > rejected e#1 gate_closed
        cancel a#1
        > rejected a#1 gate_closed
        replace a#1 200x1
        > rejected a#1 gate_closed
        depth
        > bids | asks
    ");
}

#[test]
fn an_invalid_configuration_is_refused() {
    let valid = config();
    assert!(OrderBook::try_new(valid).is_ok());
    let off_grid = BookConfig { price_min: PricePerKwh(105), ..valid };
    assert_eq!(OrderBook::try_new(off_grid).err(), Some(BookConfigError::BadPriceBand));
    let zero_tick = BookConfig { tick: PricePerKwh(0), ..valid };
    assert_eq!(OrderBook::try_new(zero_tick).err(), Some(BookConfigError::TickNotPositive));
    let huge = BookConfig { tick: PricePerKwh(1), price_max: PricePerKwh(10_000_000), ..valid };
    assert_eq!(OrderBook::try_new(huge).err(), Some(BookConfigError::TooManyPriceLevels));
    let no_orders = BookConfig { open_orders_per_account_max: 0, ..valid };
    assert_eq!(OrderBook::try_new(no_orders).err(), Some(BookConfigError::BadOpenOrderLimit));
}

#[test]
fn a_resting_order_can_be_looked_up_and_resting_orders_list_priority_order() {
    let mut book = OrderBook::new(config());
    let mut events = Vec::new();
    for command in ["a#1 buy 200x5 gtc", "b#1 buy 210x5 gtc", "c#1 buy 210x5 gtc", "d#1 sell 400x5 gtc"] {
        execute(&mut book, command, &mut events);
    }
    let order: Vec<(char, u64)> = book.resting_orders().iter().map(|view| (name(&view.account), view.nonce)).collect();
    assert_eq!(order, vec![('b', 1), ('c', 1), ('a', 1), ('d', 1)]);
    let view = book.order(account("c"), 1).expect("c#1 rests");
    assert_eq!((view.side, view.price, view.open_qty), (Side::Buy, PricePerKwh(210), Wh(5)));
    assert_eq!(book.best_bid(), Some(PricePerKwh(210)));
    assert_eq!(book.best_ask(), Some(PricePerKwh(400)));
}
