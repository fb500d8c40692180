//! Issue 13, several instances on one PostgreSQL: every trading `gridex serve` runs the settlement
//! loop, so two instances close the same slots at the same moment. Each slot must still be closed
//! once, and the ledger, the slot records and their signed roots must be exactly what a single
//! instance writes from the same trades and readings.

mod common;

use common::*;
use diesel::prelude::*;
use gridex_store::schema::{ledger_transactions, settlement_slots};
use gridex_store::testing::TestDb;
use gridex_store::Database;
use settlement::service::close_due;

/// Slots with trades and readings.
const SLOTS: i64 = 6;

/// Households 1–4 trading and metering in slots `0..SLOTS`, each slot a little different.
fn seed(db: &Database) {
    let conn = &mut *db.get().expect("a connection");
    setup(conn, default_schedule());
    let homes: Vec<Household> = (1..=4).map(|seed| household(conn, seed)).collect();
    for index in 0..SLOTS {
        let (seller, buyer) = (&homes[(index % 2) as usize], &homes[2 + (index % 2) as usize]);
        meter(conn, seller, index, 10 * index, 800 + 50 * index);
        meter(conn, buyer, index, 600 + 30 * index, 0);
        let other = &homes[((index + 1) % 2) as usize];
        meter(conn, other, index, 200, 0);
        trade(conn, 1 + index, index, 150_000 + 1_000 * index, 500 + 10 * index, buyer, seller);
    }
    // The fourth household sends nothing in the last slot: a gap, settled as such.
}

type Transaction = (i64, String, i64, String, String, i64);
type SlotRecord = (String, i64, i64, i64, String, String, i64, i64);

/// Everything settlement wrote: ledger transactions and entries, and each slot's record with its root.
fn written(db: &Database) -> (Vec<Transaction>, Vec<LedgerLine>, Vec<SlotRecord>) {
    let conn = &mut *db.get().expect("a connection");
    let transactions = ledger_transactions::table
        .select((
            ledger_transactions::tx_id,
            ledger_transactions::zone_id,
            ledger_transactions::slot_start_ms,
            ledger_transactions::kind,
            ledger_transactions::reference,
            ledger_transactions::created_ms,
        ))
        .order(ledger_transactions::tx_id)
        .load(conn)
        .expect("transactions");
    let entries = ledger_lines(conn);
    let slots = settlement_slots::table
        .select((
            settlement_slots::zone_id,
            settlement_slots::slot_start_ms,
            settlement_slots::first_tx_id,
            settlement_slots::next_tx_id,
            settlement_slots::merkle_root,
            settlement_slots::signed_root,
            settlement_slots::traded_value,
            settlement_slots::tokens_emitted,
        ))
        .order((settlement_slots::zone_id, settlement_slots::slot_start_ms))
        .load(conn)
        .expect("slots");
    (transactions, entries, slots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_settling_the_same_slots_at_once_write_what_one_instance_writes() {
    let Some(shared) = TestDb::postgres() else {
        eprintln!("DATABASE_URL is not set: several instances share PostgreSQL only");
        return;
    };
    let Some(reference) = TestDb::postgres() else { return };
    seed(&shared.db);
    seed(&reference.db);
    let now_ms = due(SLOTS - 1) + settlement::service::COMMIT_MARGIN_MS;

    // One instance, alone.
    let alone = close_due(&reference.db, &common::config(), now_ms).await.expect("closes");
    assert_eq!(alone.len(), SLOTS as usize, "every due slot closes");

    // Two instances (each its own pool) polling at the same moment, three times over.
    let (first, second) =
        (Database::open(&shared.url, 4).expect("a pool"), Database::open(&shared.url, 4).expect("another pool"));
    let config = config();
    let mut closed = Vec::new();
    for _ in 0..3 {
        let (a, b) = tokio::join!(close_due(&first, &config, now_ms), close_due(&second, &config, now_ms));
        closed.extend(a.expect("the first instance's poll"));
        closed.extend(b.expect("the second instance's poll"));
    }
    let mut slots: Vec<i64> = closed.iter().map(|settled| settled.slot.start_ms()).collect();
    slots.sort_unstable();
    let expected: Vec<i64> = (0..SLOTS).map(|index| slot(index).start_ms()).collect();
    assert_eq!(slots, expected, "each slot is closed once, by one of the two");

    let (together, single) = (written(&shared.db), written(&reference.db));
    assert!(!single.1.is_empty(), "the slots settle money and tokens");
    assert_eq!(together.0, single.0, "ledger transactions");
    assert_eq!(together.1, single.1, "ledger entries");
    assert_eq!(together.2, single.2, "slot records and signed roots");
    assert_balanced(&mut shared.db.get().expect("a connection"));
}
