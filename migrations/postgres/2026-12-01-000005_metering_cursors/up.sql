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

-- Gap settlements are ledger transactions (and entries) of kind `gap`.
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check,
    ADD CONSTRAINT ledger_transactions_kind_check
    CHECK (kind IN ('trade', 'imbalance', 'reward', 'correction', 'gap'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check,
    ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('purchase', 'sale', 'grid_fee', 'protocol_fee', 'imbalance', 'reward', 'correction', 'gap'));
