//! Zone failover with real processes (issue 13): two `exchange-node` processes on one PostgreSQL
//! and one broker share the zones by lease. Orders stream in over MQTT from a client that sends
//! again what is not answered, as gateways and agents do. One owner is paused (SIGSTOP) until its
//! lease is taken, then resumed; later an owner is SIGKILLed mid-stream. Each time its zones move to
//! the other process; no acknowledged order is lost or logged twice, a resumed stale owner commits
//! nothing, the stored trades are exactly those the command log implies, and the survivor's books
//! equal a single-instance replay of the log.

#[path = "support/node.rs"]
mod node;
mod support;

use ed25519_dalek::SigningKey;
use gridex_store::schema::order_commands;
use gridex_store::testing::TestDb;
use node::*;
use protocol::{topics, OrderUpdate, Reason, Reject, SlotId, ZoneId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::*;

/// Households per zone sending orders.
const ACCOUNTS: u8 = 4;
/// Orders per phase (over both zones); the fault lands after [`FAULT_AFTER`] of them are answered.
const ORDERS_PER_PHASE: usize = 240;
const FAULT_AFTER: usize = 60;
/// Short leases, so the test waits little: failover within TTL + renew interval.
const LEASE_TTL_MS: u64 = 1_500;
const LEASE_RENEW_MS: u64 = 300;
/// A command not answered within this is sent again (same signed bytes: a duplicate at worst),
/// then after twice as long each time, up to [`RESEND_AFTER_MAX`], as a gateway or agent backs off.
const RESEND_AFTER: Duration = Duration::from_secs(2);
const RESEND_AFTER_MAX: Duration = Duration::from_secs(16);
/// Bound on any wait of this test (a hang guard, not a timing assertion).
const DEADLINE: Duration = Duration::from_secs(120);

/// A command sent and not answered yet.
struct Pending {
    topic: String,
    bytes: Vec<u8>,
    /// When it is sent again if still unanswered, and the wait after that.
    due: Instant,
    backoff: Duration,
}

/// The client side: every command sent and not answered yet.
struct Client {
    probe: Probe,
    watched: Vec<String>,
    pending: BTreeMap<(String, u64), Pending>,
    acked: BTreeSet<(String, u64)>,
    refused: Vec<((String, u64), Reason)>,
    resent: usize,
}

impl Client {
    async fn send(&mut self, account: String, nonce: u64, topic: String, bytes: Vec<u8>) {
        self.probe.publish(topic.clone(), bytes.clone()).await;
        let due = Instant::now() + RESEND_AFTER;
        self.pending.insert((account, nonce), Pending { topic, bytes, due, backoff: RESEND_AFTER });
    }

    /// Takes answers (and sends again what waits too long) until at most `left` commands are
    /// unanswered.
    async fn drive_until(&mut self, left: usize) {
        let started = Instant::now();
        let mut reported = Instant::now();
        while self.pending.len() > left {
            assert!(started.elapsed() < DEADLINE, "{} commands still unanswered", self.pending.len());
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                eprintln!(
                    "client: {} unanswered, {} acknowledged, {} sent again",
                    self.pending.len(),
                    self.acked.len(),
                    self.resent
                );
            }
            let watched: Vec<&str> = self.watched.iter().map(String::as_str).collect();
            if let Ok((topic, payload)) =
                tokio::time::timeout(Duration::from_millis(250), self.probe.next_any(&watched)).await
            {
                self.take(&topic, &payload);
            }
            let now = Instant::now();
            let stale: Vec<(String, Vec<u8>)> = self
                .pending
                .values_mut()
                .filter(|pending| pending.due <= now)
                .map(|pending| {
                    pending.backoff = (pending.backoff * 2).min(RESEND_AFTER_MAX);
                    pending.due = now + pending.backoff;
                    (pending.topic.clone(), pending.bytes.clone())
                })
                .collect();
            for (topic, bytes) in stale {
                self.resent += 1;
                self.probe.publish(topic, bytes).await;
            }
        }
    }

    fn take(&mut self, topic: &str, payload: &[u8]) {
        if topic.contains("/events/") {
            let update = support::decode::<OrderUpdate>(payload).expect("an order update");
            let key = (update.account.to_hex(), update.order_nonce);
            self.pending.remove(&key);
            self.acked.insert(key);
        } else {
            let reject = support::decode::<Reject>(payload).expect("a reject");
            let key = (topic.rsplit('/').next().unwrap_or_default().to_owned(), reject.seq.unwrap_or_default());
            if self.pending.remove(&key).is_none() {
                return;
            }
            if reject.reason == Reason::Duplicate {
                // Sent again after it was committed: it stands as first accepted.
                self.acked.insert(key);
            } else {
                self.refused.push((key, reject.reason));
            }
        }
    }
}

/// Polls `node` until it owns `count` zones; returns how long that took.
fn wait_for_zones(node: &mut Node, count: usize, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if node.zones().len() == count {
            return started.elapsed();
        }
        assert!(started.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_node(test_db: &TestDb, broker: &BrokerAddr, name: &str) -> Node {
    let (ttl, renew) = (LEASE_TTL_MS.to_string(), LEASE_RENEW_MS.to_string());
    let client_id = format!("failover-{name}-{}", unique());
    Node::start_with(&test_db.url, broker, &client_id, &["--lease-ttl-ms", &ttl, "--lease-renew-interval-ms", &renew])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_then_a_killed_zone_owner_hands_its_zones_over_and_nothing_acknowledged_is_lost() {
    let Some(test_db) = postgres_for("zone leases need PostgreSQL (SQLite takes one exchange)") else { return };
    let broker = external_broker().unwrap_or_else(embedded_broker);
    let zones: Vec<ZoneId> =
        (0..2).map(|index| ZoneId::parse(&format!("f{index}{}", unique())).expect("a zone id")).collect();
    let mut keys: Vec<Vec<SigningKey>> = Vec::new();
    for (index, zone) in zones.iter().enumerate() {
        seed_zone(&test_db.db, zone, 900_000);
        let first = 10 + index as u8 * ACCOUNTS;
        keys.push((0..ACCOUNTS).map(|seed| seed_household(&test_db.db, zone, first + seed, 10_000).0).collect());
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let slot = SlotId::containing(protocol::TimestampMs(now_ms + 3 * 3_600_000), 900_000);
    let watched = zones
        .iter()
        .zip(&keys)
        .flat_map(|(zone, keys)| {
            keys.iter().flat_map(move |key| {
                [topics::events(zone, &account_hex(key)), topics::rejects(zone, &account_hex(key))]
            })
        })
        .collect();
    let probe = Probe::connect(&broker, &zones).await;
    let mut client =
        Client { probe, watched, pending: BTreeMap::new(), acked: BTreeSet::new(), refused: Vec::new(), resent: 0 };
    let mut streams: Vec<Stream> = (0..zones.len()).map(|index| Stream::new(7 + index as u64, ACCOUNTS)).collect();

    // Two processes share the two zones, one each.
    let mut first = start_node(&test_db, &broker, "a");
    wait_for_zones(&mut first, 2, "the first node takes both zones");
    let mut second = start_node(&test_db, &broker, "b");
    wait_for_zones(&mut second, 1, "the second node takes its share");
    wait_for_zones(&mut first, 1, "the first node hands over one zone");

    let mut next_phase = || {
        let mut batch = Vec::new();
        for index in 0..ORDERS_PER_PHASE {
            let zone_index = index % zones.len();
            let (seed, nonce, bytes) = streams[zone_index].order(&keys[zone_index], &zones[zone_index], slot);
            let account = account_hex(&keys[zone_index][seed as usize]);
            batch.push((account.clone(), nonce, topics::orders(&zones[zone_index], &account), bytes));
        }
        batch
    };

    // 1. A stale owner: the owner of zone 0 is paused until the other takes its zone, then resumed.
    let batch = next_phase();
    for (account, nonce, topic, bytes) in batch {
        client.send(account, nonce, topic, bytes).await;
    }
    client.drive_until(ORDERS_PER_PHASE - FAULT_AFTER).await;
    let zone0 = zones[0].to_string();
    let (mut paused, mut other) = if first.zones().contains(&zone0) { (first, second) } else { (second, first) };
    let pid = paused.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    let stop_started = Instant::now();
    // The other node takes the paused node's zone once its lease runs out; commands keep coming.
    let mut taken = None;
    while taken.is_none() {
        client.drive_until(client.pending.len().saturating_sub(1)).await;
        if other.zones().len() == 2 {
            taken = Some(stop_started.elapsed());
        }
        assert!(stop_started.elapsed() < DEADLINE, "the paused node's zone was not taken over");
    }
    client.drive_until(0).await;
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    // Resumed, it finds its lease gone: it drops the zone (and commits nothing for it) and the two
    // share again.
    wait_for_zones(&mut paused, 1, "the resumed node takes its share again");
    wait_for_zones(&mut other, 1, "the other node hands one zone back");
    eprintln!(
        "SIGSTOP: zone taken over after {:?} (bound {} ms)",
        taken.unwrap_or_default(),
        LEASE_TTL_MS + LEASE_RENEW_MS
    );

    // 2. A dead owner: the owner of zone 0 is SIGKILLed mid-stream.
    let batch = next_phase();
    for (account, nonce, topic, bytes) in batch {
        client.send(account, nonce, topic, bytes).await;
    }
    client.drive_until(ORDERS_PER_PHASE - FAULT_AFTER).await;
    let (victim, mut survivor) = if paused.zones().contains(&zone0) { (paused, other) } else { (other, paused) };
    victim.kill();
    let taken = wait_for_zones(&mut survivor, 2, "the survivor takes the dead node's zone");
    client.drive_until(0).await;
    eprintln!(
        "SIGKILL: zone taken over after {taken:?} (bound {} ms); {} commands answered, {} sent again",
        LEASE_TTL_MS + LEASE_RENEW_MS,
        client.acked.len(),
        client.resent
    );

    // Nothing acknowledged is lost; nothing is logged twice; nothing in range was refused.
    assert!(client.refused.is_empty(), "orders were refused: {:?}", client.refused);
    let log = logged(&test_db);
    let lost: Vec<_> = client.acked.difference(&log).collect();
    assert!(lost.is_empty(), "acknowledged orders missing from the log: {lost:?}");
    let rows: i64 = {
        use diesel::prelude::*;
        let mut conn = test_db.db.get().expect("a connection");
        order_commands::table.count().get_result(&mut conn).expect("count the log")
    };
    assert_eq!(rows as usize, log.len(), "a command was logged twice (a stale owner committed)");
    assert_eq!(log.len(), 2 * ORDERS_PER_PHASE, "every order sent is logged once");
    // The stored trades are exactly what the log implies, and the survivor's books equal a single
    // instance's replay of the log.
    let stored = stored_trades(&test_db);
    let (derived, replayed) = replay_log(&test_db);
    assert_eq!(stored, derived, "stored trades differ from the trades the log implies");
    assert!(!stored.is_empty(), "the stream should have traded");
    assert_eq!(survivor.dump(), replayed, "the survivor's books equal a replay of the log");
    survivor.quit();
}
