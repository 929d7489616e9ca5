-- Rentals: instances, their append-only ledger, and Idempotency-Key records.
--
-- Built-in column types only (see 0001): ids are text (UUIDs as strings), statuses text with CHECK.

CREATE TABLE instances (
    -- Our id (a UUID), also put in the provider's label / deployment name so a crash between the
    -- provider call and our commit can be reconciled.
    id                    text PRIMARY KEY,
    account_id            bigint NOT NULL REFERENCES accounts (id),
    provider              text NOT NULL CHECK (provider IN ('vastai', 'ionet')),
    -- NULL until the provider said which instance it created.
    provider_instance_id  text,
    offer_id              text NOT NULL,
    gpu_model             text NOT NULL,
    gpu_count             integer NOT NULL,
    price_per_hour        float8 NOT NULL CHECK (price_per_hour >= 0),
    image                 text NOT NULL,
    disk_gb               integer NOT NULL,
    label                 text,
    -- pending: intent written, provider not (yet) answered. failed: the provider refused or the
    -- intent was abandoned; nothing runs (the reconciler makes sure).
    status                text NOT NULL CHECK (status IN ('pending', 'provisioning', 'running',
                              'stopped', 'failed', 'terminating', 'terminated')),
    ssh_host              text,
    ssh_port              integer,
    ssh_user              text,
    failure               text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- When the provider accepted: billing starts here.
    started_at            timestamptz,
    terminated_at         timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX instances_account ON instances (account_id, created_at DESC);
CREATE INDEX instances_open ON instances (status) WHERE status NOT IN ('failed', 'terminated');
CREATE UNIQUE INDEX instances_provider_id ON instances (provider, provider_instance_id)
    WHERE provider_instance_id IS NOT NULL;

-- Append-only: one row per state change, with its time and the price in force.
CREATE TABLE instance_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id     text NOT NULL REFERENCES instances (id),
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind            text NOT NULL,
    status          text,
    price_per_hour  float8,
    detail          text
);

CREATE INDEX instance_events_instance ON instance_events (instance_id, id);

CREATE TABLE idempotency_keys (
    account_id    bigint NOT NULL REFERENCES accounts (id),
    key           text NOT NULL,
    -- "POST /v1/instances", "DELETE /v1/instances/<id>": one key may serve one request only.
    request       text NOT NULL,
    body_sha256   bytea NOT NULL,
    -- NULL while the first request is still running.
    status        integer,
    response      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
