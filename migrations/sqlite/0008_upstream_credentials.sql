-- Upstream credentials set at run time (admin API, `tollgate credentials`), which take the place
-- of an upstream's `credential` in the config file. Each is sealed with AES-256-GCM under one of
-- `storage.credential_keys` (named by `key_id`; the keys themselves are never stored), with the
-- upstream's name as associated data, so a sealed value moved to another row does not open.
-- `fingerprint` (the first 16 hex digits of its SHA-256) is all that is ever shown of it.

CREATE TABLE upstream_credentials (
    upstream     TEXT PRIMARY KEY,
    key_id       TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    updated_by   TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL
);
