-- Volumes (issue 30, Vast): disk on one machine that outlives instances, billed by the GB-month
-- from creation to deletion whatever its instances do. A volume is never destroyed by the
-- reconciler: only its owner's DELETE removes it.
CREATE TABLE volumes (
    id text PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    api_key_id bigint REFERENCES api_keys (id),
    provider text NOT NULL,
    -- NULL until the provider's list shows it (its create answer names no id)
    provider_volume_id text,
    offer_id text NOT NULL,
    machine_id text NOT NULL,
    name text,
    size_gb integer NOT NULL CHECK (size_gb >= 1),
    price_micros_per_gb_month bigint NOT NULL CHECK (price_micros_per_gb_month >= 0),
    -- size × price / 720 (USD per hour), as the ledger's segments count it
    rate_per_hour float8 NOT NULL,
    status text NOT NULL CHECK (status IN ('creating', 'available', 'deleted', 'failed')),
    failure text,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE INDEX volumes_account ON volumes (account_id, created_at DESC);
CREATE UNIQUE INDEX volumes_provider_id ON volumes (provider, provider_volume_id)
    WHERE provider_volume_id IS NOT NULL;
-- The volume an instance was rented with, and where it is mounted.
ALTER TABLE instances ADD COLUMN volume_id text REFERENCES volumes (id);
ALTER TABLE instances ADD COLUMN volume_mount text;
