DROP TABLE reading_rejections;
DROP TABLE meter_replacements;
