//! Data-driven book tests. The cases live in `testdata/*.txt`: each starts with `=== name`, then a
//! script of commands, each followed by the events it must produce (`> ` lines); `//` lines are
//! comments. The runner executes the commands on a fresh book, renders a transcript in the same form
//! and compares it with the script; `validate()` runs after every command. `continuous.txt` covers
//! the continuous double auction, `auction.txt` the closing auction (call phase, uniform-price
//! uncross, its tie rule, self-trade prevention).
//!
//! Commands: `a#1 buy 200x10 gtc [post]` (account `a`, nonce 1, price 200, 10 Wh; tif gtc|ioc|fok),
//! `cancel a#1`, `cancel-all a` (every resting order of account `a`), `replace a#1 210x5`, `close`, `depth`, and for the closing auction `call` (begin the
//! call phase) and `uncross` (its events, then `auction price=… volume=… trades=…`). The book is
//! 100..=1000 µ/kWh in ticks of 10, 1..=1000 Wh per order, at most 3 open orders per account.

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
        ["cancel-all", name] => book.cancel_account(account(name), events),
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

/// Runs `script` against a fresh book: `Err` with both transcripts when they differ, or with the
/// book's complaint when `validate()` fails after a command.
fn run(script: &str) -> Result<(), String> {
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
        book.validate().map_err(|problem| format!("after {command:?}: {problem}"))?;
    }
    if transcript == expected {
        Ok(())
    } else {
        Err(format!("--- expected ---\n{}\n--- got ---\n{}", expected.join("\n"), transcript.join("\n")))
    }
}

/// Runs every case of a script file and fails naming each case that does not hold.
fn run_file(file: &str, text: &str) {
    let mut cases = 0;
    let mut failures = Vec::new();
    for case in text.split("\n=== ").skip(1) {
        let (name, script) = case.split_once('\n').unwrap_or((case, ""));
        cases += 1;
        if let Err(problem) = run(script) {
            failures.push(format!("{file}: case `{}`\n{problem}", name.trim()));
        }
    }
    assert!(cases > 0, "{file} holds no `=== name` case");
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn continuous_double_auction_scripts() {
    run_file("testdata/continuous.txt", include_str!("testdata/continuous.txt"));
}

#[test]
fn closing_auction_scripts() {
    run_file("testdata/auction.txt", include_str!("testdata/auction.txt"));
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
