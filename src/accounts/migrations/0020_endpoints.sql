-- Ports and endpoints (issue 30): how an instance's exposed ports are reached, as its provider
-- maps them ([{port, protocol, public_ip, public_port}]), recorded when they first appear or
-- change (an `endpoints_ready` event, and `instance.endpoints_ready` for the account).

ALTER TABLE instances ADD COLUMN endpoints jsonb NOT NULL DEFAULT '[]';
