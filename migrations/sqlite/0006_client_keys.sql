-- Client keys issued at run time (admin API, `tollgate keys`), beside the config file's
-- `auth.keys`. A key's `id` is the HMAC-SHA256 of its first secret under the server secret, so
-- bindings and usage keep following it across rotations; the secrets themselves are never stored,
-- only the digest of each one that authenticates as the key (`client_key_secrets`).

CREATE TABLE client_keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    owner           TEXT NOT NULL,
    description     TEXT NOT NULL,
    -- JSON arrays of strings; models may end in `*` (a prefix). Empty: every model / route.
    tags            TEXT NOT NULL,
    models          TEXT NOT NULL,
    routes          TEXT NOT NULL,
    -- A JSON array of budgets ({"amount" | "tokens", "period", "alert_at"}).
    budgets         TEXT NOT NULL,
    -- The key's own limits ({"requests", "tokens", "in_flight"}), or null.
    limits          TEXT NOT NULL,
    -- A JSON object the operator attaches (never interpreted).
    metadata        TEXT NOT NULL,
    display_prefix  TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    expires_ms      BIGINT,
    revoked_ms      BIGINT
);
CREATE INDEX client_keys_owner ON client_keys (owner);

-- Each secret that authenticates as a key: its HMAC digest, and when it stops working (a
-- rotated-away secret during its grace period; NULL while it is the key's current secret).
CREATE TABLE client_key_secrets (
    digest      TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES client_keys (id),
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT
);
CREATE INDEX client_key_secrets_key ON client_key_secrets (key_id);
