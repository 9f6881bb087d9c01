-- The request log: one row per request the data plane answered, proxied or refused, written by
-- the batched writer (never on the request path). `key_id` is the HMAC id ('' before
-- authentication), `key_name` its name then. `attempts` is a JSON array of the upstream
-- attempts (`upstream`, `status`, `error`, `ms`); `decisions` a JSON object of what the
-- policies decided ('' for none). `error` is the code of the gateway's own answer and
-- `answered_by` the filter or step that gave it ('' for an upstream's answer). Times are in
-- microseconds; tokens and cost are NULL when the answer reported none. Pruned by age and by
-- count (`request_log.max_age`, `request_log.max_rows`). `request_body` and `response_body` are
-- kept only where `capture` asks (redacted, capped; NULL otherwise).

CREATE TABLE request_log (
    id             BIGSERIAL PRIMARY KEY,
    at_ms          BIGINT NOT NULL,
    request_id     TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_name       TEXT NOT NULL,
    client_ip      TEXT NOT NULL,
    method         TEXT NOT NULL,
    path           TEXT NOT NULL,
    route          TEXT NOT NULL,
    model          TEXT NOT NULL,
    upstream       TEXT NOT NULL,
    attempts       TEXT NOT NULL,
    status         INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    error          TEXT NOT NULL,
    answered_by    TEXT NOT NULL,
    first_byte_us  BIGINT,
    duration_us    BIGINT NOT NULL,
    input_tokens   BIGINT,
    output_tokens  BIGINT,
    cached_tokens  BIGINT,
    partial        INTEGER NOT NULL,
    cost_nanos     BIGINT,
    bytes_in       BIGINT NOT NULL,
    bytes_out      BIGINT NOT NULL,
    decisions      TEXT NOT NULL,
    request_body   TEXT,
    response_body  TEXT
);
-- Newest first by id; these serve the filters a page is usually asked with.
CREATE INDEX request_log_at ON request_log (at_ms);
CREATE INDEX request_log_request ON request_log (request_id);
CREATE INDEX request_log_key ON request_log (key_id, id);
CREATE INDEX request_log_error ON request_log (error, id) WHERE error <> '';
-- Everything the gateway answered itself, newest first (`error=any`): only those rows are in it.
CREATE INDEX request_log_refused ON request_log (id) WHERE error <> '';
