-- API keys (issue 12), written only by `web` (it owns authentication). A key belongs to a utility
-- and acts only on that utility's zones (those whose `zones.utility_account` is `utility:<utility>`).
-- Only the SHA-256 of a key is stored: keys are 32 random bytes made by `gridex api-key create`,
-- so a fast hash is right (there is nothing to brute-force that a slow hash would protect), and
-- whoever reads this table cannot call the API with what they read.
CREATE TABLE api_keys (
    -- A public id to list and revoke the key by (16 hex digits, random; not derived from the key).
    key_id TEXT PRIMARY KEY NOT NULL,
    -- The utility's name: its zones are those of account `utility:<utility>`.
    utility TEXT NOT NULL,
    -- `utility` or `observer`.
    role TEXT NOT NULL CHECK (role IN ('utility', 'observer')),
    -- Lowercase hex SHA-256 of the key; requests are looked up by it.
    key_hash TEXT NOT NULL UNIQUE,
    -- The zones the key is limited to, comma separated (`gridex api-key create --zones`); NULL:
    -- every zone of the utility, also those created later.
    zones TEXT,
    created_ms BIGINT NOT NULL,
    -- Set by `gridex api-key revoke`; a revoked key is refused from the next request on.
    revoked_ms BIGINT
);
