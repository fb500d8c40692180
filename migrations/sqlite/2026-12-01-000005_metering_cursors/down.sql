DROP TABLE metering_zones;
DROP TABLE gap_settlements;
DROP TABLE metering_cursors;
