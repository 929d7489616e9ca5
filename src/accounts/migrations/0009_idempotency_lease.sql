-- A running Idempotency-Key record holds a lease its request renews: one whose daemon died is
-- taken over once the lease runs out, instead of answering 409 until the record expires.
ALTER TABLE idempotency_keys ADD COLUMN lease_until timestamptz;
