DROP INDEX IF EXISTS readings_battery_discharge;
DROP INDEX IF EXISTS readings_battery_charge;
