-- Webhooks (written only by `web`): a utility's registered receivers, and the outbox of deliveries
-- not acknowledged yet. A delivery row is written when a slot is settled, one per registration,
-- before the first attempt; it is deleted when the receiver answers 2xx or its registration is
-- deleted. So a restart loses neither registrations nor deliveries in flight.
CREATE TABLE webhooks (
    webhook_id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    -- The HMAC-SHA256 key deliveries are signed with. It must be readable to sign, so it is stored
    -- as is: whoever reads this table can forge deliveries (as whoever reads the API keys can call
    -- the API).
    secret TEXT NOT NULL,
    -- The name of the API key that registered it (audit).
    registered_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    webhook_id TEXT NOT NULL REFERENCES webhooks (webhook_id) ON DELETE CASCADE,
    -- What is delivered, e.g. `slot_settled/<zone>/<slot start ms>`: an event is delivered once per
    -- registration however often it is announced.
    event_id TEXT NOT NULL,
    -- The exact JSON body, so every attempt sends (and signs) the same bytes.
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL CHECK (attempts >= 0),
    -- Wall-clock unix ms of the next attempt.
    next_attempt_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms);

-- How far settled slots have been written to the outbox: the last `settlement_slots` row enqueued, in
-- (closed_ms, zone_id, slot_start_ms) order. Every slot settled after it is enqueued, also one
-- settled while the web server was down or one its live feed missed. One row, created on first use.
CREATE TABLE webhook_cursor (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    closed_ms BIGINT NOT NULL,
    zone_id TEXT NOT NULL,
    slot_start_ms BIGINT NOT NULL
);
CREATE INDEX settlement_slots_by_closed ON settlement_slots (closed_ms, zone_id, slot_start_ms);
