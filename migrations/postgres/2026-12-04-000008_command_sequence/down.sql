DROP TABLE exchange_instances;
DROP TABLE zone_leases;
DROP SEQUENCE order_command_seq;
