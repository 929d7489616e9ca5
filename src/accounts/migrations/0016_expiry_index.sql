-- Lifetimes end on time (issue 27): `rentals::expiry` looks every second for open instances whose
-- `expires_at` has passed; this index keeps that a lookup of the few that have one.

CREATE INDEX instances_expiring ON instances (expires_at)
  WHERE expires_at IS NOT NULL AND status NOT IN ('failed', 'terminated');
