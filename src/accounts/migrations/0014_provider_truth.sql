-- Provider truth (docs/providers.md): states a restarted or unreachable instance passes through,
-- and charges read as Vast writes them.

-- `frozen` (Vast: paused with its memory) bills the GPU; `unknown` is a provider state gpuproxyd
-- does not know, or a host gone offline after the instance ran: it bills in full and is never
-- destroyed as a failed start.
ALTER TABLE instances DROP CONSTRAINT instances_status_check;
ALTER TABLE instances ADD CONSTRAINT instances_status_check
    CHECK (status IN ('pending', 'provisioning', 'running', 'stopped', 'interrupted', 'frozen',
                      'unknown', 'failed', 'terminating', 'terminated'));

-- The latest (re)start: the provider accepted the rental, or the instance went back to
-- provisioning after it had been running, stopped or frozen (a start, a reboot, a host restart).
-- The provisioning timeout counts from here.
ALTER TABLE instances ADD COLUMN restarted_at timestamptz;
UPDATE instances SET restarted_at = started_at;
-- When the instance was last seen becoming `running`. An instance that has ever run is never
-- destroyed as stuck or dead: its renter's data is on it.
ALTER TABLE instances ADD COLUMN ran_at timestamptz;
UPDATE instances i SET ran_at = (SELECT max(at) FROM instance_events e
                                 WHERE e.instance_id = i.id AND e.status = 'running');

-- Charges as Vast writes them: one row per instance and item (`gpu`, `disk`, `bwu`, `bwd`, ...),
-- in micro-dollars. The rows read before were keyed by fields real charges do not have (every
-- real line was skipped), so none is worth keeping.
DELETE FROM provider_charges;
ALTER TABLE provider_charges ADD COLUMN item text NOT NULL DEFAULT 'total';
ALTER TABLE provider_charges ADD COLUMN amount_micros bigint NOT NULL DEFAULT 0;
ALTER TABLE provider_charges ADD COLUMN period_end timestamptz;
ALTER TABLE provider_charges DROP COLUMN amount_usd;

-- A provider that never refunds a minimum of the paid time (io.net: the first hour) says so at
-- rent time; an instance that ends sooner is charged the rest of it at once, as a one-time amount
-- on the event that records it (micro-dollars; spend, usage and budgets add these amounts).
ALTER TABLE instances ADD COLUMN minimum_hours float8 CHECK (minimum_hours > 0);
ALTER TABLE instance_events ADD COLUMN lump_micros bigint NOT NULL DEFAULT 0;

-- Which provider account the configured key belongs to, as first seen (Vast: the user id of
-- GET /api/v0/users/current/). A key of another account reads an empty list and "no such
-- instance" for ours successfully: while the account differs, the reconciler concludes nothing.
-- An intended move to another account is acknowledged by deleting the row.
CREATE TABLE provider_identities (
    provider   text PRIMARY KEY,
    identity   text NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
