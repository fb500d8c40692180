-- Time-of-use tariffs (issue 16): a tariff version keeps its flat prices as the default and may
-- have bands (days of the week as a bitmask Monday = bit 0 … Sunday = bit 6, a local time-of-day
-- range [start_minute, end_minute) and their own prices). Local time is the version's fixed UTC
-- offset in minutes (no daylight-saving rule: a new version at each change). A slot's prices are the
-- band covering its start, else the flat prices (protocol::tariff). Written only by
-- `settlement::registry`, which refuses overlapping bands; read through `gridex_store::tariff`.
ALTER TABLE tariffs ADD COLUMN utc_offset_minutes BIGINT NOT NULL DEFAULT 0
    CHECK (utc_offset_minutes BETWEEN -720 AND 840);

CREATE TABLE tariff_bands (
    zone_id TEXT NOT NULL,
    effective_from_ms BIGINT NOT NULL,
    position BIGINT NOT NULL CHECK (position >= 0),
    days_mask BIGINT NOT NULL CHECK (days_mask BETWEEN 1 AND 127),
    start_minute BIGINT NOT NULL CHECK (start_minute >= 0),
    end_minute BIGINT NOT NULL CHECK (end_minute <= 1440 AND start_minute < end_minute),
    retail_price_per_kwh BIGINT NOT NULL CHECK (retail_price_per_kwh >= 0),
    feed_in_price_per_kwh BIGINT NOT NULL CHECK (feed_in_price_per_kwh >= 0),
    grid_fee_per_kwh BIGINT NOT NULL CHECK (grid_fee_per_kwh >= 0),
    PRIMARY KEY (zone_id, effective_from_ms, position),
    FOREIGN KEY (zone_id, effective_from_ms) REFERENCES tariffs (zone_id, effective_from_ms) ON DELETE CASCADE
);
