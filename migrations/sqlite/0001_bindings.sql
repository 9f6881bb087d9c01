-- Key → network bindings (source of truth), their archive, and the intercept log.
-- Times are Unix milliseconds; networks are normalised CIDR text (IPv4-mapped IPv6 as IPv4).

CREATE TABLE bindings (
    key_id        TEXT PRIMARY KEY,           -- HMAC-SHA256(server secret, key), hex
    cidr          TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'banned')),
    created_ms    BIGINT NOT NULL,
    last_used_ms  BIGINT NOT NULL,
    last_ip       TEXT,
    request_count BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX bindings_last_used ON bindings (last_used_ms);

-- Bindings moved out by the retention job; a key may appear once per archiving.
CREATE TABLE bindings_archive (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id        TEXT NOT NULL,
    cidr          TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    last_used_ms  BIGINT NOT NULL,
    last_ip       TEXT,
    request_count BIGINT NOT NULL,
    archived_ms   BIGINT NOT NULL
);
CREATE INDEX bindings_archive_key ON bindings_archive (key_id);

CREATE TABLE intercepts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms         BIGINT NOT NULL,
    key_id_prefix TEXT NOT NULL,
    bound_cidr    TEXT,
    attempted_ip  TEXT NOT NULL,
    method        TEXT NOT NULL,
    path          TEXT NOT NULL,
    reason        TEXT NOT NULL
);
CREATE INDEX intercepts_at ON intercepts (at_ms);
CREATE INDEX intercepts_key ON intercepts (key_id_prefix);
