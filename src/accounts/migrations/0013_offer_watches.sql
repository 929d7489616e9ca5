-- Offer watches (issue 17): an account's standing searches. When an upstream answer refreshes the
-- offers cache, every watch is evaluated against it; an offer matching at or below the watch's
-- price gets one `offer.watch_matched` event per watch (the match row's key keeps it to one, across
-- daemons and refreshes).

CREATE TABLE offer_watches (
    id                text PRIMARY KEY,
    account_id        bigint NOT NULL REFERENCES accounts (id),
    -- the rental spec's fields (what `POST /v1/instances {"spec"}` takes), price ceiling aside
    spec              jsonb NOT NULL,
    max_price_per_gpu float8 NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX offer_watches_account ON offer_watches (account_id);

CREATE TABLE offer_watch_matches (
    watch_id           text NOT NULL REFERENCES offer_watches (id) ON DELETE CASCADE,
    offer_id           text NOT NULL,
    price_per_gpu_hour float8 NOT NULL,
    matched_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (watch_id, offer_id)
);
