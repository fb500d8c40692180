-- Registry (accounts, devices, zones, tariffs, reward schedule) and market data (readings, the
-- order command log, trades). Every amount is an integer with its unit in the column name.
CREATE TABLE zones (
    zone_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    slot_len_ms BIGINT NOT NULL CHECK (slot_len_ms BETWEEN 60000 AND 3600000),
    utility_account TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE tariffs (
    zone_id TEXT NOT NULL REFERENCES zones (zone_id),
    effective_from_ms BIGINT NOT NULL,
    retail_price_per_kwh BIGINT NOT NULL CHECK (retail_price_per_kwh >= 0),
    feed_in_price_per_kwh BIGINT NOT NULL CHECK (feed_in_price_per_kwh >= 0),
    grid_fee_per_kwh BIGINT NOT NULL CHECK (grid_fee_per_kwh >= 0),
    protocol_fee_bps BIGINT NOT NULL CHECK (protocol_fee_bps BETWEEN 0 AND 10000),
    PRIMARY KEY (zone_id, effective_from_ms)
);

-- Households are named by their ed25519 public key (hex); system accounts by a name such as
-- `utility:<zone>`, `treasury`, `issuer`.
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('household', 'utility', 'treasury', 'issuer')),
    display_name TEXT NOT NULL,
    zone_id TEXT,
    created_ms BIGINT NOT NULL
);

CREATE TABLE devices (
    device_id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    zone_id TEXT NOT NULL REFERENCES zones (zone_id),
    meter_serial TEXT NOT NULL,
    nameplate_w BIGINT NOT NULL CHECK (nameplate_w > 0),
    registered_ms BIGINT NOT NULL
);
CREATE INDEX devices_by_account ON devices (account_id);

CREATE TABLE reward_schedule (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    genesis_ms BIGINT NOT NULL,
    epoch_len_ms BIGINT NOT NULL CHECK (epoch_len_ms > 0),
    initial_emission_per_epoch BIGINT NOT NULL CHECK (initial_emission_per_epoch >= 0),
    halving_epochs BIGINT NOT NULL CHECK (halving_epochs > 0),
    max_supply BIGINT NOT NULL CHECK (max_supply >= 0)
);

-- Accepted readings, as signed by the device (`payload` keeps the signed JSON for audit).
CREATE TABLE readings (
    device_id TEXT NOT NULL REFERENCES devices (device_id),
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    import_wh BIGINT NOT NULL,
    export_wh BIGINT NOT NULL,
    pv_wh BIGINT,
    power_w BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX readings_by_time ON readings (device_id, ts_ms);

-- The order command log: every accepted order, cancel and replace in commit order. Books are
-- rebuilt after a crash by replaying it through the matching core.
CREATE TABLE order_commands (
    command_seq BIGINT PRIMARY KEY NOT NULL,
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('order', 'cancel', 'replace', 'close')),
    payload TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    UNIQUE (account_id, nonce)
);
CREATE INDEX order_commands_by_book ON order_commands (zone_id, slot_start_ms, command_seq);

CREATE TABLE trades (
    trade_id BIGINT PRIMARY KEY NOT NULL,
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL,
    price_per_kwh BIGINT NOT NULL,
    qty_wh BIGINT NOT NULL CHECK (qty_wh > 0),
    buyer_id TEXT NOT NULL,
    buy_nonce BIGINT NOT NULL,
    seller_id TEXT NOT NULL,
    sell_nonce BIGINT NOT NULL,
    aggressor TEXT NOT NULL CHECK (aggressor IN ('buy', 'sell')),
    ts_ms BIGINT NOT NULL,
    command_seq BIGINT NOT NULL
);
CREATE INDEX trades_by_slot ON trades (zone_id, slot_start_ms);
