-- A rental's lifetime: the reconciler destroys the instance at this time and records why.
ALTER TABLE instances ADD COLUMN expires_at timestamptz;
CREATE INDEX instances_expiry ON instances (expires_at)
    WHERE expires_at IS NOT NULL AND status NOT IN ('failed', 'terminated');
