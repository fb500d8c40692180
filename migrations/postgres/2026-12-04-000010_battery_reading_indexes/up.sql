-- The exchange looks up each device's latest reading that had each battery counter when it loads the
-- device (`exchange::store::load_devices`, one correlated subquery per counter): these partial indexes
-- make each one index probe, also for a device whose long history has no battery at all.
CREATE INDEX IF NOT EXISTS readings_battery_charge ON readings (device_id, seq) WHERE battery_charge_wh IS NOT NULL;
CREATE INDEX IF NOT EXISTS readings_battery_discharge ON readings (device_id, seq) WHERE battery_discharge_wh IS NOT NULL;
