-- Budgets enforced over time: a monthly budget next to the rolling-window one, a spend cap per
-- key, what the reconciler does when a budget is spent, and the record of what it did.
ALTER TABLE accounts ADD COLUMN monthly_budget_usd numeric(14, 4) CHECK (monthly_budget_usd >= 0);
-- stop: stop what the provider can stop (Vast); destroy: destroy every open instance; alert:
-- record and count only. New rentals, starts and extends are refused (402) either way.
ALTER TABLE accounts ADD COLUMN on_budget_exhausted text NOT NULL DEFAULT 'stop'
    CHECK (on_budget_exhausted IN ('stop', 'destroy', 'alert'));
-- Spend allowed to the instances a key rented, per rolling window (rentals.budget_window_hours).
ALTER TABLE api_keys ADD COLUMN spend_limit_usd numeric(14, 4) CHECK (spend_limit_usd >= 0);

-- Append-only: budget warnings, exhaustion, and each action taken on an instance because of it.
CREATE TABLE budget_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    -- window: daily_budget_usd over rentals.budget_window_hours; monthly: monthly_budget_usd
    -- since the start of the UTC month; key: the key's spend_limit_usd over the window.
    budget       text NOT NULL CHECK (budget IN ('window', 'monthly', 'key')),
    api_key_id   bigint REFERENCES api_keys (id),
    kind         text NOT NULL CHECK (kind IN ('budget.warning', 'budget.exhausted', 'budget.action')),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    spent_usd    float8 NOT NULL,
    limit_usd    float8 NOT NULL,
    instance_id  text REFERENCES instances (id),
    detail       text
);
CREATE INDEX budget_events_account ON budget_events (account_id, at);
