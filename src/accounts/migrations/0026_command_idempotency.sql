-- `Idempotency-Key` on `POST /v1/instances/{id}/commands`: a command is recorded once per key
-- and account; the same key and body again answer that command (its state now), another body
-- 422. The key is released (set NULL) by the agents' sweep once `rentals.idempotency_ttl_ms`
-- has passed, as the rentals' keys expire.
ALTER TABLE agent_commands ADD COLUMN idempotency_key text;
-- SHA-256 of the request line and body the key was first used with
ALTER TABLE agent_commands ADD COLUMN request_digest bytea;
CREATE UNIQUE INDEX agent_commands_idempotency ON agent_commands (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
