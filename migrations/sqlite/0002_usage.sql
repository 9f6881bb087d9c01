-- Token usage per hour, key, upstream and model: what every proxied request used, as the
-- upstream reported it. Rows are added to by the batched writer (one upsert per group per
-- flush). `partial` counts requests that ended before their answer did (client left, upstream
-- broke off): their tokens are what was seen. `model` is as the client named it ('' if none);
-- `upstream` is '' for requests refused before one was chosen.

CREATE TABLE token_usage (
    hour_ms        BIGINT NOT NULL,
    key_id         TEXT NOT NULL,
    upstream       TEXT NOT NULL,
    model          TEXT NOT NULL,
    requests       BIGINT NOT NULL DEFAULT 0,
    errors         BIGINT NOT NULL DEFAULT 0,
    partial        BIGINT NOT NULL DEFAULT 0,
    input_tokens   BIGINT NOT NULL DEFAULT 0,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    cached_tokens  BIGINT NOT NULL DEFAULT 0,
    last_used_ms   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, key_id, upstream, model)
);
CREATE INDEX token_usage_key ON token_usage (key_id, hour_ms);
