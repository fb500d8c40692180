-- Home batteries (issue 15): a version 2 reading (PROTOCOL.md §4.1) reports the battery behind the
-- grid meter. Its counters are stored next to the grid counters, NULL for a reading without them
-- (every version 1 reading). Settlement never uses them for money, energy or rewards: the grid
-- meter's import and export already include what the battery charged from or discharged to the
-- grid. Written only by `exchange`, like the rest of the table.
ALTER TABLE readings ADD COLUMN battery_charge_wh BIGINT CHECK (battery_charge_wh >= 0);
ALTER TABLE readings ADD COLUMN battery_discharge_wh BIGINT CHECK (battery_discharge_wh >= 0);
ALTER TABLE readings ADD COLUMN battery_soc_permille BIGINT CHECK (battery_soc_permille BETWEEN 0 AND 1000);
ALTER TABLE readings ADD COLUMN battery_capacity_wh BIGINT CHECK (battery_capacity_wh > 0);
