-- The double-entry ledger and what closing a slot produces. Written only by `settlement`, one
-- database transaction per closed slot. Amounts are integers: asset `money` in micro-units of the
-- settlement currency, asset `grid` in micro-GRID. Every transaction's entries sum to zero per asset;
-- GRID is minted by debiting the `issuer` account, so every asset sums to zero over all accounts.

-- One row that every slot close locks first (SELECT ... FOR UPDATE on PostgreSQL): it serializes
-- concurrent closers and hands out transaction ids without gaps.
CREATE TABLE ledger_head (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    next_tx_id BIGINT NOT NULL CHECK (next_tx_id > 0)
);
INSERT INTO ledger_head (id, next_tx_id) VALUES (1, 1);

CREATE TABLE ledger_transactions (
    tx_id BIGINT PRIMARY KEY NOT NULL,
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('trade', 'imbalance', 'reward', 'correction')),
    -- What the transaction settles: the trade id, the account, or the reward epoch.
    reference TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX ledger_transactions_by_slot ON ledger_transactions (zone_id, slot_start_ms);

-- Append-only (see the triggers below). No foreign key to ledger_transactions: both are written in
-- the same database transaction by the same code, and a per-row key check would slow bulk COPY.
CREATE TABLE ledger_entries (
    tx_id BIGINT NOT NULL,
    line BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    asset TEXT NOT NULL CHECK (asset IN ('money', 'grid')),
    kind TEXT NOT NULL CHECK (kind IN ('purchase', 'sale', 'grid_fee', 'protocol_fee', 'imbalance', 'reward', 'correction')),
    amount BIGINT NOT NULL,
    PRIMARY KEY (tx_id, line)
);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, asset);

-- A settled slot: only settled slots have a row (closing is one transaction). Totals are over the
-- slot's household statements; the utility's and treasury's side are the negatives.
CREATE TABLE settlement_slots (
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    slot_len_ms BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('settled')),
    statements BIGINT NOT NULL,
    trades BIGINT NOT NULL,
    traded_wh BIGINT NOT NULL,
    traded_value BIGINT NOT NULL,
    delivered_p2p_wh BIGINT NOT NULL,
    metered_import_wh BIGINT NOT NULL,
    metered_export_wh BIGINT NOT NULL,
    utility_supplied_wh BIGINT NOT NULL,
    utility_absorbed_wh BIGINT NOT NULL,
    utility_supplied_value BIGINT NOT NULL,
    utility_absorbed_value BIGINT NOT NULL,
    grid_fees BIGINT NOT NULL,
    protocol_fees BIGINT NOT NULL,
    household_savings BIGINT NOT NULL,
    tokens_emitted BIGINT NOT NULL,
    tokens_carry BIGINT NOT NULL,
    no_data_accounts BIGINT NOT NULL,
    first_tx_id BIGINT NOT NULL,
    next_tx_id BIGINT NOT NULL,
    entries BIGINT NOT NULL,
    merkle_root TEXT NOT NULL,
    root_signature TEXT NOT NULL,
    operator TEXT NOT NULL,
    signed_root TEXT NOT NULL,
    closed_ms BIGINT NOT NULL,
    PRIMARY KEY (zone_id, slot_start_ms)
);

-- One statement per household account per settled slot: the canonical JSON of the protocol
-- `statement` and its Merkle leaf (leaves ordered by account id).
CREATE TABLE statements (
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    leaf_index BIGINT NOT NULL,
    leaf_hash TEXT NOT NULL,
    statement TEXT NOT NULL,
    PRIMARY KEY (zone_id, slot_start_ms, account_id)
);
CREATE INDEX statements_by_account ON statements (account_id, slot_start_ms);

-- GRID emission per zone and reward epoch: what the schedule allotted and what was minted so far.
CREATE TABLE reward_epochs (
    zone_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    scheduled BIGINT NOT NULL,
    emitted BIGINT NOT NULL,
    PRIMARY KEY (zone_id, epoch)
);

-- Entries and transactions are append-only: a correction is a new transaction.
CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_transactions_append_only_update BEFORE UPDATE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are append-only'); END;
CREATE TRIGGER ledger_transactions_append_only_delete BEFORE DELETE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are append-only'); END;
