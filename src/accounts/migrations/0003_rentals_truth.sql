-- Rentals that match what the providers really do (providers.md §4): bids, storage billed while
-- stopped, dead states, per-account SSH keys attached per instance, one buyer per offer.

ALTER TABLE instances DROP CONSTRAINT instances_status_check;
ALTER TABLE instances ADD CONSTRAINT instances_status_check
    CHECK (status IN ('pending', 'provisioning', 'running', 'stopped', 'interrupted', 'failed',
                      'terminating', 'terminated'));

-- The bid sent as Vast's `price` (USD/h, compute only) for an interruptible rental; NULL for
-- on-demand ones, which never send a price.
ALTER TABLE instances ADD COLUMN bid_per_hour float8 CHECK (bid_per_hour > 0);
-- What the instance costs while stopped or outbid (its disk): Vast bills storage in every state.
ALTER TABLE instances ADD COLUMN storage_per_hour float8 NOT NULL DEFAULT 0
    CHECK (storage_per_hour >= 0);
-- When the provider was first seen reporting a state that never reaches `running` (exited,
-- offline, unknown, a failed container create), and which: the reconciler destroys the instance
-- once this is older than rentals.dead_state_grace_ms. Cleared if it recovers.
ALTER TABLE instances ADD COLUMN dead_since timestamptz;
ALTER TABLE instances ADD COLUMN dead_reason text;

-- What the instance bills from this event on (USD/h: the full price while provisioning or
-- running, the storage price while stopped or interrupted, 0 once ended), so spend over any
-- window is a sum over event segments. `price_per_hour` stays the instance's price.
ALTER TABLE instance_events ADD COLUMN rate_per_hour float8;
UPDATE instance_events SET rate_per_hour = CASE
    WHEN status IN ('provisioning', 'running', 'stopped', 'terminating') THEN price_per_hour
    ELSE 0 END;
CREATE INDEX instance_events_at ON instance_events (at);

-- An account's SSH public keys; rentals name them by id.
CREATE TABLE ssh_keys (
    id           text PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    -- The canonical `type base64` form (the comment is kept in `name` if the caller wants it).
    public_key   text NOT NULL,
    -- OpenSSH's `SHA256:<base64>` of the key blob.
    fingerprint  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, fingerprint)
);

-- The keys each instance must have, and whether the provider has them yet. io.net takes them in
-- the deploy body (attached at create); Vast takes them per instance once it exists (attached by
-- the reconciler, retried until the instance runs; never through the account-wide endpoint).
CREATE TABLE instance_ssh_keys (
    instance_id   text NOT NULL REFERENCES instances (id),
    fingerprint   text NOT NULL,
    public_key    text NOT NULL,
    name          text NOT NULL,
    -- pending: not yet at the provider; attached; failed: gave up (the event says why).
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'attached', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    attached_at   timestamptz,
    PRIMARY KEY (instance_id, fingerprint)
);

-- One rental of an offer at a time, across daemons: a claim row is inserted before the quote and
-- deleted when the provider has answered (or expires, should the daemon die in between).
CREATE TABLE offer_claims (
    offer_id     text PRIMARY KEY,
    instance_id  text NOT NULL,
    expires_at   timestamptz NOT NULL
);
