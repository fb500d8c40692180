-- Metering cursors and gap settlements (issue 11, part 2). Written only by `settlement`, in the
-- close transaction of a slot.
--
-- A device's metering cursor: the slot boundary up to which its energy has been settled from
-- metered data, and its counters at that boundary. A row exists only while the device's household
-- has an open gap (it was "no data" since boundary_ms); a device without a row is settled up to the
-- end of its zone's last closed slot, so the common case writes nothing. When a later slot has data,
-- the energy of the gap [boundary_ms, slot start) is settled in that slot's close and the row goes.
-- Counters NULL: the device had no reading yet; its gap starts at its first reading at or after
-- boundary_ms.
CREATE TABLE metering_cursors (
    device_id TEXT PRIMARY KEY NOT NULL REFERENCES devices (device_id),
    -- The device's zone (a device belongs to one zone; read per zone).
    zone_id TEXT NOT NULL,
    boundary_ms BIGINT NOT NULL,
    import_wh BIGINT CHECK (import_wh >= 0),
    export_wh BIGINT CHECK (export_wh >= 0),
    -- The slot whose close wrote it.
    slot_start_ms BIGINT NOT NULL,
    CHECK ((import_wh IS NULL) = (export_wh IS NULL))
);
CREATE INDEX metering_cursors_by_zone ON metering_cursors (zone_id);

-- One line per household and settled gap: the energy of [gap_start_ms, slot_start_ms) that was
-- settled provisionally as "no data" and is billed in the close of the slot starting at
-- slot_start_ms, by ledger transaction tx_id (kind `gap`).
CREATE TABLE gap_settlements (
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    gap_start_ms BIGINT NOT NULL,
    import_wh BIGINT NOT NULL,
    export_wh BIGINT NOT NULL,
    bought_wh BIGINT NOT NULL,
    retail_price_per_kwh BIGINT NOT NULL,
    feed_in_price_per_kwh BIGINT NOT NULL,
    charged BIGINT NOT NULL,
    credited BIGINT NOT NULL,
    tx_id BIGINT NOT NULL,
    PRIMARY KEY (zone_id, slot_start_ms, account_id)
);
CREATE INDEX gap_settlements_by_account ON gap_settlements (account_id, slot_start_ms);

-- Per zone: the first slot closed with metering cursors. A device without a cursor has been "no
-- data" in every slot since its registration or this slot (whichever is later), so its energy is
-- settled from its first reading in that window; slots closed before cursors existed stay as they
-- were settled.
CREATE TABLE metering_zones (
    zone_id TEXT PRIMARY KEY NOT NULL REFERENCES zones (zone_id),
    since_ms BIGINT NOT NULL
);

-- Gap settlements are ledger transactions (and entries) of kind `gap`. SQLite cannot change a CHECK
-- constraint, so both tables are rebuilt with the wider one (same columns, rows, index and
-- append-only triggers; DROP TABLE fires no trigger).
CREATE TABLE ledger_transactions_widened (
    tx_id BIGINT PRIMARY KEY NOT NULL,
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('trade', 'imbalance', 'reward', 'correction', 'gap')),
    -- What the transaction settles: the trade id, the account, the reward epoch, or the gap.
    reference TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
INSERT INTO ledger_transactions_widened (tx_id, zone_id, slot_start_ms, kind, reference, created_ms)
    SELECT tx_id, zone_id, slot_start_ms, kind, reference, created_ms FROM ledger_transactions;
DROP TABLE ledger_transactions;
ALTER TABLE ledger_transactions_widened RENAME TO ledger_transactions;
CREATE INDEX ledger_transactions_by_slot ON ledger_transactions (zone_id, slot_start_ms);
CREATE TRIGGER ledger_transactions_append_only_update BEFORE UPDATE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are append-only'); END;
CREATE TRIGGER ledger_transactions_append_only_delete BEFORE DELETE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are append-only'); END;

CREATE TABLE ledger_entries_widened (
    tx_id BIGINT NOT NULL,
    line BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    asset TEXT NOT NULL CHECK (asset IN ('money', 'grid')),
    kind TEXT NOT NULL
        CHECK (kind IN ('purchase', 'sale', 'grid_fee', 'protocol_fee', 'imbalance', 'reward', 'correction', 'gap')),
    amount BIGINT NOT NULL,
    PRIMARY KEY (tx_id, line)
);
INSERT INTO ledger_entries_widened (tx_id, line, account_id, asset, kind, amount)
    SELECT tx_id, line, account_id, asset, kind, amount FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_widened RENAME TO ledger_entries;
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, asset);
CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
