-- Live settings changed through the admin API: each row overrides the config file's value of one
-- setting for every gateway sharing the database, until it is changed again.

CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);
