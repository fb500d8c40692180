-- Scale-out (issue 13): several exchange instances write one command log. Command numbers come from
-- this sequence, taken inside each group commit's transaction, so two instances never hand out the
-- same `order_commands.command_seq` (an in-memory counter read once at start did, and the instance
-- that lost the race failed every later commit). Numbers increase in commit order per instance;
-- a zone's commands are written by the one instance that owns the zone, so a zone's log order is
-- its arrival order. A failed commit leaves a gap, which nothing relies on.
CREATE SEQUENCE order_command_seq;
SELECT setval('order_command_seq', COALESCE((SELECT max(command_seq) FROM order_commands), 0) + 1, false);

-- Zone ownership by lease (issue 13). Each zone is owned by the one instance holding its lease;
-- `token` rises by one at every change of owner and every group commit checks it (a fencing token),
-- so an instance that lost a zone can never commit for it again. Expiry is on the database's clock
-- (milliseconds since the epoch), never an instance's.
CREATE TABLE zone_leases (
    zone_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
-- Live exchange instances (heartbeats), to share the zones fairly between them.
CREATE TABLE exchange_instances (
    instance_id TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
