-- Fair webhook delivery (issue 28): a webhook is disabled after failing for a sustained time, not
-- after a burst of failures; `failing_since` is when its current run of failures began (NULL
-- while it succeeds).

ALTER TABLE webhooks ADD COLUMN failing_since timestamptz;
