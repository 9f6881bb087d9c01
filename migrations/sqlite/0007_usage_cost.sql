-- What each hour's tokens cost, in billionths of the deployment's currency (`pricing:`): summed
-- like the token counts. 0 for requests whose model had no price.

ALTER TABLE token_usage ADD COLUMN cost_nanos BIGINT NOT NULL DEFAULT 0;
