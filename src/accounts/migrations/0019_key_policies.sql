-- Agent-safe keys (issue 30): a `read` scope (search, list, read: no change), and per-key policies
-- checked before any provider call (`accounts::policy`). The price cap is integer micro-dollars
-- per hour; the lists are the names the API uses.

ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
  CHECK (scopes <@ ARRAY['user', 'admin', 'read'] AND cardinality(scopes) > 0);
ALTER TABLE api_keys ADD COLUMN max_price_micros_per_hour bigint
  CHECK (max_price_micros_per_hour > 0);
ALTER TABLE api_keys ADD COLUMN allowed_providers text[];
ALTER TABLE api_keys ADD COLUMN allowed_gpu_models text[];
ALTER TABLE api_keys ADD COLUMN require_max_duration_hours float8
  CHECK (require_max_duration_hours > 0 AND require_max_duration_hours <= 8760);
ALTER TABLE api_keys ADD COLUMN key_max_instances integer CHECK (key_max_instances >= 0);
