-- Commands run through instance agents (issue 31). A command is recorded here before anything
-- else happens to it, so an agent that is offline gets it when it comes back (or it expires with
-- a clear status), and a daemon that dies loses nothing the database had.
--
-- Exec is off unless both the account (`accounts.agent_exec`, set by an administrator) and the
-- key (`api_keys.allow_exec`, a key policy) allow it.

ALTER TABLE accounts ADD COLUMN agent_exec boolean NOT NULL DEFAULT false;
ALTER TABLE api_keys ADD COLUMN allow_exec boolean;

CREATE TABLE agent_commands (
    id text PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    instance_id text NOT NULL REFERENCES instances (id),
    -- the key that sent it (its public id: the audit trail names it)
    key_public_id text NOT NULL,
    kind text NOT NULL CHECK (kind = 'exec'),
    argv text[] NOT NULL CHECK (cardinality(argv) BETWEEN 1 AND 256),
    timeout_s integer NOT NULL CHECK (timeout_s BETWEEN 1 AND 86400),
    -- queued: waiting for the agent; sent: written to its channel; running: the agent started it;
    -- exited, timed_out, start_failed: the agent's answer; expired: no agent took it in time;
    -- lost: sent, and no answer within its timeout and the grace after it
    status text NOT NULL DEFAULT 'queued' CHECK (status IN
        ('queued', 'sent', 'running', 'exited', 'timed_out', 'start_failed', 'expired', 'lost')),
    exit_code integer,
    error text,
    -- the first `agents.command_output_bytes` of stdout and stderr, interleaved as they came
    output text NOT NULL DEFAULT '',
    output_bytes bigint NOT NULL DEFAULT 0,
    output_truncated boolean NOT NULL DEFAULT false,
    daemon text,
    -- its agent held a channel when it was accepted (only these time the routing: a metric)
    agent_online boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    sent_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz
);

CREATE INDEX agent_commands_queued ON agent_commands (instance_id, created_at)
    WHERE status = 'queued';
CREATE INDEX agent_commands_open ON agent_commands (status, expires_at)
    WHERE status IN ('queued', 'sent', 'running');
CREATE INDEX agent_commands_by_instance ON agent_commands (instance_id, created_at DESC);
