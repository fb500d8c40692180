-- The widened ledger kinds stay (harmless without `gap` rows); only the new tables go.
DROP TABLE metering_zones;
DROP TABLE gap_settlements;
DROP TABLE metering_cursors;
