//! The `exchange-node` binary as a child process, and what its tests check afterwards: the command
//! log, the stored trades and the books a fresh replay of the log rebuilds. Included by the process
//! tests (`#[path = "support/node.rs"] mod node;`), not by `support` itself: the examples share
//! `support` and have no `CARGO_BIN_EXE_exchange-node`.
#![allow(dead_code)]

use crate::support::{decode, order, spawn_node, BrokerAddr, ANSWER_TIMEOUT};
use diesel::prelude::*;
use ed25519_dalek::SigningKey;
use exchange::matching::{BookConfig, Event, NewOrder, OrderBook};
use exchange::zone::TRADES_PER_COMMAND_MAX;
use gridex_store::schema::{order_commands, trades};
use gridex_store::testing::TestDb;
use protocol::{AccountId, Command, OrderUpdate, PricePerKwh, Side, SlotId, Wh, ZoneId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Child, ChildStdin};
use std::sync::mpsc as std_mpsc;

/// The exchange-node child process with line access to its stdout.
pub struct Node {
    pub child: Child,
    pub stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl Node {
    /// A node trading `zone` only.
    pub fn start(db_url: &str, broker: &BrokerAddr, client_id: &str, zone: &ZoneId) -> Node {
        Node::start_with(db_url, broker, client_id, &["--zone", zone.as_str()])
    }

    /// A node with more command-line arguments (`--zone`, `--lease-ttl-ms`, …).
    pub fn start_with(db_url: &str, broker: &BrokerAddr, client_id: &str, args: &[&str]) -> Node {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_exchange-node"));
        let (child, stdin, lines) = spawn_node(binary, db_url, broker, client_id, args);
        let mut node = Node { child, stdin, lines };
        assert_eq!(node.line(), "ready");
        node
    }

    pub fn line(&mut self) -> String {
        self.lines.recv_timeout(ANSWER_TIMEOUT).expect("the node answers in time")
    }

    pub fn dump(&mut self) -> serde_json::Value {
        writeln!(self.stdin, "dump").expect("write to the node");
        self.stdin.flush().expect("flush");
        let line = self.line();
        let json = line.strip_prefix("dump ").expect("a dump line");
        serde_json::from_str(json).expect("dump JSON")
    }

    /// The zones the node owns now.
    pub fn zones(&mut self) -> Vec<String> {
        writeln!(self.stdin, "zones").expect("write to the node");
        self.stdin.flush().expect("flush");
        let line = self.line();
        let zones = line.strip_prefix("zones").expect("a zones line");
        zones.split_whitespace().map(str::to_owned).collect()
    }

    /// Stops the node cleanly (`quit`).
    pub fn quit(mut self) {
        writeln!(self.stdin, "quit").expect("quit");
        let _ = self.stdin.flush();
        assert_eq!(self.line(), "bye");
        let _ = self.child.wait();
    }

    pub fn kill(mut self) {
        // `Child::kill` sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("SIGKILL the node");
        let _ = self.child.wait();
    }
}

pub fn account_hex(key: &SigningKey) -> String {
    AccountId::from_verifying_key(&key.verifying_key()).to_hex()
}

/// The `(account, nonce)` an answer on an `events` or `rejects` topic is about, and whether it is an
/// order update (the order was accepted) rather than a reject.
pub fn answer(topic: &str, payload: &[u8]) -> ((String, u64), bool) {
    if topic.contains("/events/") {
        let update = decode::<OrderUpdate>(payload).expect("an order update");
        ((update.account.to_hex(), update.order_nonce), true)
    } else {
        let reject = decode::<protocol::Reject>(payload).expect("a reject");
        let account = topic.rsplit('/').next().unwrap_or_default().to_owned();
        ((account, reject.seq.unwrap_or_default()), false)
    }
}

/// Trades by id: `(price, qty, buyer, seller)`.
pub type TradeMap = BTreeMap<u64, (i64, i64, String, String)>;

pub fn stored_trades(test_db: &TestDb) -> TradeMap {
    let mut conn = test_db.db.get().expect("a connection");
    let rows: Vec<(i64, i64, i64, String, String)> = trades::table
        .select((trades::trade_id, trades::price_per_kwh, trades::qty_wh, trades::buyer_id, trades::seller_id))
        .load(&mut conn)
        .expect("load trades");
    rows.into_iter().map(|(id, price, qty, buyer, seller)| (id as u64, (price, qty, buyer, seller))).collect()
}

/// Replays the stored command log through a fresh matching core: the trades it implies and the
/// resting orders of each book, in the node's dump format.
pub fn replay_log(test_db: &TestDb) -> (TradeMap, serde_json::Value) {
    let mut conn = test_db.db.get().expect("a connection");
    let rows: Vec<(i64, i64, String)> = order_commands::table
        .order(order_commands::command_seq.asc())
        .select((order_commands::command_seq, order_commands::slot_start_ms, order_commands::payload))
        .load(&mut conn)
        .expect("load the log");
    // The node's book rules: default tick and quantities, the seeded tariff as the band.
    let config = BookConfig {
        tick: PricePerKwh(1_000),
        qty_min: Wh(1),
        qty_max: Wh(1_000_000),
        price_min: PricePerKwh(50_000),
        price_max: PricePerKwh(300_000),
        open_orders_per_account_max: 100,
    };
    let mut books: BTreeMap<(String, i64), OrderBook> = BTreeMap::new();
    let mut derived = BTreeMap::new();
    for (command_seq, slot, payload) in rows {
        let command = Command::parse(payload.as_bytes()).expect("a logged command parses");
        if let Command::CancelAll(signed) = &command {
            // Every book of its zone (or its one slot's); it trades nothing. (The exchange also skips
            // books past gate closure at its receipt; this log's books are all open.)
            let cancel_all = &signed.message;
            let zone = cancel_all.zone.to_string();
            let mut events = Vec::new();
            for ((book_zone, book_slot), book) in &mut books {
                if *book_zone == zone && cancel_all.slot.is_none_or(|only| only.start_ms() == *book_slot) {
                    book.cancel_account(cancel_all.account, &mut events);
                }
            }
            continue;
        }
        let book = books.entry((command.zone().to_string(), slot)).or_insert_with(|| OrderBook::new(config));
        let mut events = Vec::new();
        match &command {
            Command::Order(signed) => {
                book.submit(NewOrder::from(&signed.message), &mut events);
            }
            Command::Cancel(signed) => book.cancel(signed.message.account, signed.message.order_nonce, &mut events),
            Command::CancelAll(_) => unreachable!("handled above"),
            Command::Replace(signed) => {
                let replace = &signed.message;
                book.replace(replace.account, replace.order_nonce, replace.price_per_kwh, replace.qty_wh, &mut events)
            }
        }
        book.validate().expect("the replayed book is consistent");
        let mut index = 0;
        for event in events {
            if let Event::Trade { price, qty, buyer, seller, .. } = event {
                let id = command_seq as u64 * TRADES_PER_COMMAND_MAX + index;
                derived.insert(id, (price.0, qty.0, buyer.to_hex(), seller.to_hex()));
                index += 1;
            }
        }
    }
    let dump: Vec<serde_json::Value> = books
        .iter()
        .map(|((zone, slot), book)| {
            let orders: Vec<serde_json::Value> = book
                .resting_orders()
                .iter()
                .map(|order| {
                    let side = if order.side == Side::Buy { "buy" } else { "sell" };
                    serde_json::json!([
                        order.account.to_hex(),
                        order.nonce,
                        side,
                        order.price.0,
                        order.open_qty.0,
                        order.filled_qty.0
                    ])
                })
                .collect();
            serde_json::json!({ "zone": zone, "slot": slot, "orders": orders })
        })
        .collect();
    (derived, serde_json::Value::Array(dump))
}

pub fn logged(test_db: &TestDb) -> BTreeSet<(String, u64)> {
    let mut conn = test_db.db.get().expect("a connection");
    let rows: Vec<(String, i64)> =
        order_commands::table.select((order_commands::account_id, order_commands::nonce)).load(&mut conn).expect("log");
    rows.into_iter().map(|(account, nonce)| (account, nonce as u64)).collect()
}

/// A deterministic stream of orders (a linear congruential generator; no timing involved).
pub struct Stream {
    state: u64,
    accounts: u8,
    nonces: HashMap<u8, u64>,
}

impl Stream {
    /// A stream from `seed` over the first `accounts` of the keys it is given.
    pub fn new(seed: u64, accounts: u8) -> Stream {
        Stream { state: seed, accounts, nonces: HashMap::new() }
    }

    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.state >> 33
    }

    pub fn next_nonce(&mut self, seed: u8) -> u64 {
        *self.nonces.entry(seed).and_modify(|nonce| *nonce += 1).or_insert(1)
    }

    /// `(account seed, nonce, signed order bytes)`.
    pub fn order(&mut self, keys: &[SigningKey], zone: &ZoneId, slot: SlotId) -> (u8, u64, Vec<u8>) {
        let seed = (self.next() % u64::from(self.accounts)) as u8;
        let nonce = self.next_nonce(seed);
        let side = if self.next().is_multiple_of(2) { Side::Buy } else { Side::Sell };
        let price = 140_000 + (self.next() % 21) as i64 * 1_000 + if side == Side::Buy { -5_000 } else { 5_000 };
        let qty = 100 + (self.next() % 20) as i64 * 50;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let bytes = order(&keys[seed as usize], zone, slot, side, price, qty, nonce, now_ms);
        (seed, nonce, bytes)
    }
}
