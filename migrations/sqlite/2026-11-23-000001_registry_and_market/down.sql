DROP TABLE trades;
DROP TABLE order_commands;
DROP TABLE readings;
DROP TABLE reward_schedule;
DROP TABLE devices;
DROP TABLE accounts;
DROP TABLE tariffs;
DROP TABLE zones;
