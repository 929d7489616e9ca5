# The set-up the load scripts share; sourced after scripts/common.sh and scripts/services.sh.
#
#   load_setup <name> <postgres port> <pgbouncer port> <redis port> <gpuproxyd binary>
#
# A work directory /tmp/gpuproxyd-<name>.XXXXXX ($WORK) with PostgreSQL, PgBouncer and Redis in
# it, every job killed and the directory removed on exit; a self-signed certificate for
# localhost ($WORK/c.pem, key $WORK/k.pem); JWT_SECRET (random unless set); the schema migrated.
#
#   load_key <gpuproxyd binary> <account>
#
# Creates the account and prints the token of a new key of it.
#
#   swarm_rows <gpuproxyd binary> <account> <key> <agents>
#
# For gpuproxy-agentswarm: exec allowed for the account and the key; `agents` running instances
# of the account (swarm-<i>), each with its agent token (gpa_<i, 43 digits>), inserted directly
# (any earlier swarm's rows removed first).
load_setup() {
  WORK=$(mktemp -d "/tmp/gpuproxyd-$1.XXXXXX")
  chmod 755 "$WORK"
  services_start "$WORK/services" "$2" "$3" "$4"
  trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; services_stop; rm -rf "$WORK"' EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/k.pem" -out "$WORK/c.pem" 2>/dev/null
  export JWT_SECRET=${JWT_SECRET:-$(openssl rand -hex 32)}
  "$5" migrate >/dev/null
}

load_key() {
  "$1" accounts create --name "$2" --json >/dev/null
  "$1" keys create --account "$2" --json | sed -n 's/^  "token": "\(gpx_[A-Za-z0-9_]*\)".*/\1/p'
}

swarm_rows() {
  "$1" accounts update "$2" --agent-exec true --json >/dev/null
  "$1" keys update "${3:4:12}" --allow-exec true --json >/dev/null
  psql -q "$MIGRATE_DATABASE_URL" <<SQL
DELETE FROM agent_commands WHERE instance_id LIKE 'swarm-%';
DELETE FROM agent_tokens WHERE instance_id LIKE 'swarm-%';
DELETE FROM instances WHERE id LIKE 'swarm-%';
INSERT INTO instances (id, account_id, provider, offer_id, gpu_model, gpu_count, price_per_hour,
                       image, disk_gb, status, started_at)
SELECT 'swarm-' || i, a.id, 'vastai', 'vastai:' || i, 'swarm', 1, 0, 'swarm', 8, 'running', now()
FROM generate_series(0, $4 - 1) i, accounts a WHERE a.name = '$2';
INSERT INTO agent_tokens (instance_id, account_id, token_hash)
SELECT 'swarm-' || i, a.id, sha256(convert_to('gpa_' || lpad(i::text, 43, '0'), 'UTF8'))
FROM generate_series(0, $4 - 1) i, accounts a WHERE a.name = '$2';
SQL
}
