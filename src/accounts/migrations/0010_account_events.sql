-- The account-visible event log behind GET /v1/events (and, later, webhooks): one row per event,
-- written in the transaction of the change it reports.
--
-- `seq` counts per account, with no gaps: the writer takes it from accounts.event_seq with
-- UPDATE ... RETURNING, whose row lock holds until commit, so one account's events commit in
-- seq order and a reader that has seen seq N has seen everything before it.
ALTER TABLE accounts ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE account_events (
    account_id   bigint NOT NULL REFERENCES accounts (id),
    seq          bigint NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    type         text NOT NULL,
    instance_id  text,
    data         jsonb NOT NULL,
    PRIMARY KEY (account_id, seq)
);

-- the retention sweep
CREATE INDEX account_events_at ON account_events (at);
