-- What the providers billed, line by line, next to the ledger: the daily reconciliation pulls
-- the lines and compares them, per instance, with the ledger's spend (rentals/billing.rs).
CREATE TABLE provider_charges (
    provider              text NOT NULL,
    -- Lines have no id at the provider: "<provider instance>|<date>|<description>" names one
    -- across fetches (a running instance's line grows from one fetch to the next).
    charge_key            text NOT NULL,
    provider_instance_id  text NOT NULL,
    at                    timestamptz NOT NULL,
    description           text NOT NULL,
    amount_usd            float8 NOT NULL,
    -- When this amount was read: the ledger is compared up to the same moment.
    fetched_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, charge_key)
);
CREATE INDEX provider_charges_instance ON provider_charges (provider, provider_instance_id);
