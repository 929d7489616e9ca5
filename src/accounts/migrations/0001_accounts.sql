-- Accounts and their API keys.
--
-- Every column the daemon reads through PgBouncer is a built-in type (bigint, integer, text,
-- text[], bytea, numeric read as float8, timestamptz): a non-built-in type (enum, domain) would
-- make tokio-postgres prepare a named type-lookup statement, which transaction pooling breaks.
-- Status values are text with CHECK constraints for that reason, not enums.

CREATE TABLE accounts (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                  text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    -- Spend allowed per UTC day, in USD; the rentals ledger checks projected spend against it.
    daily_budget_usd      numeric(14, 4) NOT NULL DEFAULT 100 CHECK (daily_budget_usd >= 0),
    max_instances         integer NOT NULL DEFAULT 5 CHECK (max_instances >= 0),
    -- Per-account rate-limit override (NULL = the configured tier default).
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    rate_limit_burst      integer CHECK (rate_limit_burst > 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id            bigint NOT NULL REFERENCES accounts (id),
    -- The `<public id>` part of `gpx_<public id>_<secret>`: how a key is found.
    public_id             text NOT NULL UNIQUE,
    -- SHA-256 of the secret part. The secret has at least 128 random bits, so a fast hash is
    -- enough (nothing to brute-force); the secret itself is never stored.
    secret_hash           bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes                text[] NOT NULL DEFAULT ARRAY['user']
                          CHECK (scopes <@ ARRAY['user', 'admin'] AND cardinality(scopes) > 0),
    label                 text,
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    rate_limit_burst      integer CHECK (rate_limit_burst > 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    -- Written in batches by the daemons, never per request.
    last_used_at          timestamptz
);

CREATE INDEX api_keys_account ON api_keys (account_id);
