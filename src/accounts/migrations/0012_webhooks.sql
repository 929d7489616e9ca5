-- Signed webhooks (issue 17): an account's HTTP targets for its events, and one delivery row per
-- (webhook, event) that the daemons send at least once, with back-off, and keep as the delivery log.

CREATE TABLE webhooks (
    id           text PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    url          text NOT NULL,
    -- the event types it wants; empty: every type
    types        text[] NOT NULL DEFAULT '{}',
    -- the HMAC key of its signatures: shown once, when it is created
    secret       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- the last account event (seq) turned into a delivery: events after it are still to enqueue,
    -- so no event is skipped however long the daemons were away
    cursor       bigint NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    disabled_reason text,
    -- failed attempts since the last success; webhooks.disable_after_failures disables it
    consecutive_failures integer NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_account ON webhooks (account_id);

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    webhook_id      text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_seq       bigint NOT NULL,
    event_type      text NOT NULL,
    -- the exact body sent (and signed) on every attempt
    payload         text NOT NULL,
    -- pending, delivered, failed
    state           text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    -- also the claim: a sender moves it past its own timeout before it sends, so another daemon
    -- takes the delivery over only if that sender died
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    -- one entry per attempt: {at, status, error}
    history         jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at) WHERE state <> 'pending';
