-- Commitments are spend (issue 27). A provider that sells paid time up front (io.net
-- `duration_hours`, `extend`) is paid when the time is bought: each payment is an instance event
-- with `lump_micros`, counted by every budget from that moment; such an instance bills no rate
-- (`paid_hours` is set: the hours bought so far). On destroy, the unused hours come back pro
-- rata (never the first hour) as negative amounts that count at the time of the payment they
-- return (`counts_at`), so no window sees a refund without its payment.
--
-- The caller's key pays: `payer_key_id` is the key whose spend cap an instance's rate counts
-- against from now on (the renting key, until another key starts it or changes its bid), and
-- `paid_by` on each event the key charged for that event's segment and amount (NULL on older
-- rows: the renting key). `extending_since` marks a paid extension in flight: its outcome is
-- not known yet, and the provider's `amount_paid` is not compared with the ledger meanwhile.

ALTER TABLE instances ADD COLUMN paid_hours integer CHECK (paid_hours > 0);
ALTER TABLE instances ADD COLUMN payer_key_id bigint REFERENCES api_keys (id) ON DELETE SET NULL;
ALTER TABLE instances ADD COLUMN extending_since timestamptz;
ALTER TABLE instance_events ADD COLUMN paid_by bigint;
ALTER TABLE instance_events ADD COLUMN counts_at timestamptz;
CREATE INDEX instance_events_lumps ON instance_events (instance_id) WHERE lump_micros <> 0;
