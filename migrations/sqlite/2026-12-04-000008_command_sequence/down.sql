DROP TABLE exchange_instances;
DROP TABLE zone_leases;
