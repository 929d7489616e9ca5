-- Interruption and idle policies (issue 30): what a rental asks the reconciler to do when it is
-- outbid (`on_interrupt`) or its GPUs sit unused (`idle`), as {"on_interrupt": ..., "idle": ...}.
ALTER TABLE instances ADD COLUMN policies jsonb;
-- What a failover rents by again (the rental's body with its spec; never an inline SSH key).
ALTER TABLE instances ADD COLUMN relaunch jsonb;
-- Since when every reported GPU utilisation has been below the idle policy's share, and whether
-- `instance.idle` was sent for that span.
ALTER TABLE instances ADD COLUMN idle_since timestamptz;
ALTER TABLE instances ADD COLUMN idle_warned boolean NOT NULL DEFAULT false;
-- The last thing the interruption policy did or could not do (so a round repeats no event), and
-- the rental a failover made in this one's place.
ALTER TABLE instances ADD COLUMN upkeep_note text;
ALTER TABLE instances ADD COLUMN replaced_by text;
