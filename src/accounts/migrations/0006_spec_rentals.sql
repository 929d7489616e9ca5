-- Renting by spec, with failover: every offer tried for one request is an instance row (its
-- intent), in order, under one request id; the answer and GET /v1/instances/{id} list them.
ALTER TABLE instances ADD COLUMN rental_request_id text;
ALTER TABLE instances ADD COLUMN try_index integer CHECK (try_index >= 1);
CREATE INDEX instances_request ON instances (rental_request_id, try_index)
    WHERE rental_request_id IS NOT NULL;
-- The API key that rented the instance: per-key spend caps and usage by key.
ALTER TABLE instances ADD COLUMN api_key_id bigint REFERENCES api_keys (id);
