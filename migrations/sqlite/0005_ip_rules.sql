-- IP allow and deny entries added through the admin API or `tollgate ip`; every gateway sharing the
-- database applies them (with the config file's `access` lists) within a second.

CREATE TABLE ip_rules (
    cidr        TEXT PRIMARY KEY,
    action      TEXT NOT NULL,
    note        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);
