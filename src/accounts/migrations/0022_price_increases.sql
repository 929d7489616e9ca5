-- Hosts' price increases on running contracts (issue 30; Vast's pending price increases): each
-- decided once by `rentals.price_increase_reject_above_pct`, answered at the provider, and, when
-- accepted, applied to the ledger's price from the time it takes effect (the contract's end).
-- Prices are integer micro-dollars per hour.
CREATE TABLE price_increases (
    provider text NOT NULL,
    pending_id text NOT NULL,
    instance_id text NOT NULL REFERENCES instances (id),
    increase_pct numeric NOT NULL,
    accept boolean NOT NULL,
    -- NULL until the provider took the answer; `answered`, or `stale` (no longer pending there)
    outcome text CHECK (outcome IN ('answered', 'stale')),
    applies_at timestamptz,
    price_micros_per_hour bigint NOT NULL,
    storage_micros_per_hour bigint NOT NULL,
    applied_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, pending_id)
);
CREATE INDEX price_increases_due ON price_increases (applies_at)
    WHERE accept AND outcome = 'answered' AND applied_at IS NULL;
