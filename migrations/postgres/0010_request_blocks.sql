-- The request log in blocks (host/state/src/requests/block.rs): one row per flush of the batched
-- writer rather than one per request, which cost about 47,000 instructions a request to write.
-- `data` holds the block's requests (host/state/src/requests/codec.rs: texts they share written
-- once); a request's id is the block's id times 65,536 plus `first_row` plus its place in the
-- block. The other columns let a query skip a
-- block without opening it: the span of its requests' start times (`from_ms`, `to_ms`, unix
-- ms), a bit per status class seen (`statuses`: bit 2 for 2xx, …), how many requests the gateway
-- answered itself (`refused`), and a Bloom filter of each exact filter's values (`bloom`).
-- Pruning drops whole blocks by age, and by count trims the oldest block kept (`first_row`).
-- The bodies `capture` kept are in `request_bodies`, by request id, as text.

DROP TABLE request_log;

CREATE TABLE request_blocks (
    id         BIGSERIAL PRIMARY KEY,
    first_row  BIGINT NOT NULL,
    row_count  BIGINT NOT NULL,
    from_ms    BIGINT NOT NULL,
    to_ms      BIGINT NOT NULL,
    statuses   BIGINT NOT NULL,
    refused    BIGINT NOT NULL,
    bloom      BYTEA NOT NULL,
    data       BYTEA NOT NULL
);
CREATE INDEX request_blocks_to ON request_blocks (to_ms);

CREATE TABLE request_bodies (
    id             BIGINT PRIMARY KEY,
    request_body   TEXT NOT NULL,
    response_body  TEXT NOT NULL
);
