//! The exchange as separate `exchange-node` processes on the tool's broker and PostgreSQL database,
//! sharing the zones by lease.

use crate::support::{spawn_node, BrokerAddr};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest wait for a node's answer (`ready`, `zones`, `bye`): a bound on a hang, not a measurement.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait until the nodes have split the zones by lease (the lease manager moves a zone about
/// once per `lease_renew_interval_ms`, 1 s by default).
const SPLIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `exchange-node` binary: `LOAD_EXCHANGE_NODE` when set, else next to this example's directory
/// (`target/release/examples/load` → `target/release/exchange-node`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LOAD_EXCHANGE_NODE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of this example");
    let target = exe.parent().and_then(|examples| examples.parent()).expect("target/<profile>/examples/load");
    let binary = target.join("exchange-node");
    assert!(
        binary.exists(),
        "{} not found: build it with `cargo build --release -p exchange --bin exchange-node` (or set LOAD_EXCHANGE_NODE)",
        binary.display()
    );
    binary
}

/// One `exchange-node` child process; killed (SIGKILL) if dropped without [`Node::quit`], so a failed
/// run leaves no exchange behind.
#[derive(Debug)]
pub struct Node {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    done: bool,
}

impl Node {
    /// Starts a node on `db_url` and `broker`, with the default lease settings, and waits for `ready`.
    pub fn start(db_url: &str, broker: &BrokerAddr, name: &str) -> Node {
        let (child, stdin, lines) = spawn_node(&binary(), db_url, broker, name, &[]);
        let mut node = Node { name: name.to_owned(), child, stdin, lines, done: false };
        assert_eq!(node.line(), "ready", "{} starts", node.name);
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&mut self) -> String {
        self.lines.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|_| panic!("{} answers in time", self.name))
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the node");
        self.stdin.flush().expect("flush the node's stdin");
        self.line()
    }

    /// The zones the node owns now.
    pub fn zones(&mut self) -> BTreeSet<String> {
        let line = self.ask("zones");
        let zones = line.strip_prefix("zones").unwrap_or_else(|| panic!("a zones line, not {line}"));
        zones.split_whitespace().map(str::to_owned).collect()
    }

    /// Orders resting in the node's books (`dump`).
    pub fn resting_orders(&mut self) -> usize {
        let line = self.ask("dump");
        let json = line.strip_prefix("dump ").unwrap_or_else(|| panic!("a dump line, not {line}"));
        let books: serde_json::Value = serde_json::from_str(json).expect("dump JSON");
        let books = books.as_array().expect("an array of books");
        books.iter().map(|book| book["orders"].as_array().map_or(0, Vec::len)).sum()
    }

    /// Stops the node cleanly (`quit`, then `bye`).
    pub fn quit(mut self) {
        assert_eq!(self.ask("quit"), "bye", "{} quits", self.name);
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the nodes own every one of `zones` between them, each zone once, in shares that differ
/// by at most one (the lease manager's fair share, ⌈zones / instances⌉).
pub fn wait_for_split(nodes: &mut [Node], zones: &BTreeSet<String>) -> Vec<usize> {
    let started = Instant::now();
    loop {
        let owned: Vec<BTreeSet<String>> = nodes.iter_mut().map(Node::zones).collect();
        let sizes: Vec<usize> = owned.iter().map(BTreeSet::len).collect();
        let union: BTreeSet<&String> = owned.iter().flatten().collect();
        let shared = sizes.iter().sum::<usize>() == zones.len() && union.len() == zones.len();
        let fair = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1;
        if shared && fair && union.iter().all(|zone| zones.contains(*zone)) {
            return sizes;
        }
        assert!(started.elapsed() < SPLIT_TIMEOUT, "the nodes did not split the zones: {owned:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
