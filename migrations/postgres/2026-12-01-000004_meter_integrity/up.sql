-- Meter integrity (issue 11).
--
-- A meter replacement, registered by the utility: the old meter's final counters and the new
-- meter's initial counters at the moment of the swap. A reading whose counters are lower than the
-- device's last accepted reading is refused (`counter_went_backwards`) unless such a replacement
-- lies between them; settlement counts the energy up to `old_*` on the old meter and from `new_*`
-- on the new one. Written only by `settlement::registry`.
CREATE TABLE meter_replacements (
    device_id TEXT NOT NULL REFERENCES devices (device_id),
    replaced_at_ms BIGINT NOT NULL,
    old_import_wh BIGINT NOT NULL CHECK (old_import_wh >= 0),
    old_export_wh BIGINT NOT NULL CHECK (old_export_wh >= 0),
    old_pv_wh BIGINT CHECK (old_pv_wh >= 0),
    new_import_wh BIGINT NOT NULL CHECK (new_import_wh >= 0),
    new_export_wh BIGINT NOT NULL CHECK (new_export_wh >= 0),
    new_pv_wh BIGINT CHECK (new_pv_wh >= 0),
    new_meter_serial TEXT NOT NULL,
    reference TEXT NOT NULL,
    registered_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, replaced_at_ms)
);

-- Readings the exchange refused although their signature was valid (so the device really sent
-- them), with the reason, so a household sees why its meter data is missing. Bounded per device
-- by the exchange (the newest are kept). Written only by `exchange`.
CREATE TABLE reading_rejections (
    device_id TEXT NOT NULL REFERENCES devices (device_id),
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq, received_ms)
);
CREATE INDEX reading_rejections_by_time ON reading_rejections (device_id, received_ms);
