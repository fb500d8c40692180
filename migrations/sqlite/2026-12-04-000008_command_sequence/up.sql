-- Scale-out (issue 13): on PostgreSQL command numbers come from a sequence. SQLite has one writer
-- (the exchange holds a lock on the database file, see gridex_store's `WriterLock`), which numbers
-- commands from the log's maximum inside each group commit's transaction: nothing to create for it.
-- The lease tables exist for schema parity only: SQLite's one exchange owns every zone and takes no
-- leases (see the PostgreSQL migration for what they hold there).
CREATE TABLE zone_leases (
    zone_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE exchange_instances (
    instance_id TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
