-- instance.expiring (issue 17): the expiry time an `instance.expiring` event was written for, so
-- the reconciler writes it once per expiry time (an extended rental gets a new notice when its
-- new end comes near).
ALTER TABLE instances ADD COLUMN expiring_notified_for timestamptz;
