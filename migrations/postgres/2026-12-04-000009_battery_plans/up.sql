-- Home batteries (issue 15): the latest battery plan of each account (PROTOCOL.md §4.7), as its
-- trading agent signed it. A plan is information for the household, never an order: it touches
-- neither a book nor the ledger. One row per account, replaced by a plan with a higher nonce.
-- Written only by `exchange` (the plan stage); read by `web` through `exchange::queries`.
CREATE TABLE battery_plans (
    account_id TEXT PRIMARY KEY NOT NULL REFERENCES accounts (account_id),
    zone_id TEXT NOT NULL REFERENCES zones (zone_id),
    nonce BIGINT NOT NULL CHECK (nonce >= 0),
    ts_ms BIGINT NOT NULL,
    first_slot_ms BIGINT,
    last_slot_ms BIGINT,
    payload TEXT NOT NULL,
    received_ms BIGINT NOT NULL
);
