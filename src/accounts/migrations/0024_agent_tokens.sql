-- Instance agents (issue 31): one agent token per instance, kept as its SHA-256. Minting again
-- replaces it. A token is good only while its instance is open: once the instance is
-- terminated or failed, it authenticates nothing (no write needed at the end).
CREATE TABLE agent_tokens (
    instance_id text PRIMARY KEY REFERENCES instances (id),
    account_id bigint NOT NULL REFERENCES accounts (id),
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
