#!/usr/bin/env bash
# Instance agents through 3 daemons behind HAProxy (issue 31), in one run:
#
#   loadtest/agents_cluster.sh [agents=6000] [commands=1000]
#
# scripts/cluster.sh's deployment (HAProxy, the shipped config: TCP with PROXY v2; 3 daemons
# sharing PostgreSQL through PgBouncer and Redis under Sentinel). `agents` channels of
# gpuproxy-agentswarm open through HAProxy, which spreads them over the daemons; then `commands`
# commands to random agents go through HAProxy too, so each enters whichever daemon HAProxy
# picks: for two in three that is not the daemon holding the agent, and the command reaches the
# holder as a notice on its Redis channel. Reported, split by where each command entered (each
# daemon's access log) against who held its agent (agent_commands.daemon): how many, and the
# time from acceptance to the recorded result (PostgreSQL's clock).
#
# Why 6,000 and not 18,000: HAProxy holds two sockets per agent (client and server side), and a
# process here may hold 20,000 (the cluster's HAProxy runs with maxconn 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-6000}
C=${2:-1000}
CLUSTER_DAEMON_ARGS=(--set ratelimit.enabled=false --set connections.max_per_ip=100000
  --set connections.idle_timeout_ms=600000 --set log.access_log=true)
. scripts/cluster.sh
cluster_start 3
cargo build --release --locked --bin gpuproxy-agentswarm >/dev/null
BIN="$CARGO_TARGET_DIR/release"
. loadtest/setup.sh
swarm_rows "$BIN/gpuproxyd" demo "$API_KEY" "$N"

taskset -c 0 "$BIN/gpuproxy-agentswarm" --target "127.0.0.1:$CLUSTER_FRONT" --agents "$N" \
  --hold-secs 120 --sources 200 --per-process 9000 --max-backoff-s 10 \
  --commands "$C" --api-key "$API_KEY" >"$SVC_DIR/swarm.txt" &
SWARM=$!
for _ in $(seq 1200); do grep -q '"event":"commands"' "$SVC_DIR/swarm.txt" 2>/dev/null && break; sleep 0.5; done
grep '"event":"held"' "$SVC_DIR/swarm.txt"
for i in 1 2 3; do
  echo "daemon $i holds $(curl -s "http://127.0.0.1:$((9090 + i))/metrics" | awk '$1 == "gpuproxy_agents_connected" {print $2}') agents"
done
echo "routing (POST sent -> exec at the agent, swarm's clock): $(grep '"event":"commands"' "$SVC_DIR/swarm.txt")"
sleep 2

# where each command entered (the daemon whose access log has its POST), by instance
: >"$SVC_DIR/entered.csv"
for i in 1 2 3; do
  pid=${CLUSTER_DAEMON_PIDS[$((i - 1))]}
  # the swarm only POSTs there
  grep -o 'swarm-[0-9]*/commands' "$SVC_DIR/daemon-$i.log" | grep -o 'swarm-[0-9]*' |
    awk -v p="$pid" '{print $1 "," p}' >>"$SVC_DIR/entered.csv" || true
done
echo "commands seen in the access logs: $(wc -l <"$SVC_DIR/entered.csv")"
psql -qAt "$MIGRATE_DATABASE_URL" <<SQL
CREATE TEMP TABLE entered (instance_id text, pid text);
\copy entered FROM '$SVC_DIR/entered.csv' WITH (FORMAT csv)
WITH c AS (
  SELECT c.instance_id, c.daemon, extract(epoch FROM c.finished_at - c.created_at) AS s
  FROM agent_commands c WHERE c.status = 'exited' AND c.instance_id LIKE 'swarm-%'),
  e AS (SELECT DISTINCT ON (instance_id) instance_id, pid FROM entered),
  j AS (SELECT c.s, CASE WHEN c.daemon LIKE '%-' || e.pid || '-%' THEN 'entered at the holder'
                         ELSE 'entered at another daemon' END AS path
        FROM c JOIN e USING (instance_id)
        WHERE (SELECT count(*) FROM agent_commands x WHERE x.instance_id = c.instance_id) = 1)
SELECT path || ': ' || count(*) || ' commands; accepted -> result p50 ' ||
       round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 2) || ' ms, p99 ' ||
       round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 2) || ' ms, max ' ||
       round(1000 * max(s)::numeric, 2) || ' ms'
FROM j GROUP BY path ORDER BY path;
SELECT 'all exited: ' || count(*) || ' of ' || (SELECT count(*) FROM agent_commands WHERE instance_id LIKE 'swarm-%')
FROM agent_commands WHERE status = 'exited' AND instance_id LIKE 'swarm-%';
SQL
kill "$SWARM" 2>/dev/null || true
wait "$SWARM" 2>/dev/null || true
