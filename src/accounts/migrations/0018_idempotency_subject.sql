-- One key, one outcome across crashes (issue 27). An `Idempotency-Key` on a rental is bound to
-- what it rents (`subject`: the instance id of a rental of one offer, the request id of a rental
-- by spec) before anything is asked of a provider. A request that takes the key over from a
-- daemon that died, or retries an answer whose outcome was unknown, first finds out what became
-- of that rental (rented: its instance is the answer; failed: it runs again; still unknown:
-- 502 naming the instance) and never starts a second one.

ALTER TABLE idempotency_keys ADD COLUMN subject text;
