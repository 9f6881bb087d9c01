-- The audit log: one row per admin action (logins and lockouts included), written before the
-- action is acknowledged. `actor` is the admin user (or `cli:<user>` for the CLI), `ip` the
-- client address ('' for the CLI), `target` what was acted on (a key id, an upstream, a user),
-- `before`/`after` JSON snapshots of the target where there is one ('' otherwise).

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    ip         TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    before     TEXT NOT NULL,
    after      TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
