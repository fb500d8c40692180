ALTER TABLE readings DROP COLUMN battery_capacity_wh;
ALTER TABLE readings DROP COLUMN battery_soc_permille;
ALTER TABLE readings DROP COLUMN battery_discharge_wh;
ALTER TABLE readings DROP COLUMN battery_charge_wh;
