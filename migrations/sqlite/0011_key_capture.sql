-- A client key's own body capture (`capture` of docs/requests.md, "Body capture"): JSON
-- {"requests": "off" | "errors" | "all", "max_bytes", "redact"}, or null to follow its route's.
ALTER TABLE client_keys ADD COLUMN capture TEXT NOT NULL DEFAULT 'null';
