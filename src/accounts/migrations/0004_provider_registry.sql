-- Providers are a registry (`[providers.<id>]` tables), not a fixed pair: the ledger takes any
-- configured provider id. The daemon checks ids against its configuration before writing.
ALTER TABLE instances DROP CONSTRAINT instances_provider_check;
ALTER TABLE instances ADD CONSTRAINT instances_provider_check
    CHECK (provider ~ '^[a-z][a-z0-9_-]{0,31}$');
