DROP TABLE tariff_bands;
ALTER TABLE tariffs DROP COLUMN utc_offset_minutes;
