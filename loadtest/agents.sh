#!/usr/bin/env bash
# Instance agents at scale (issue 31), in one run:
#
#   loadtest/agents.sh [agents=18000] [commands=1000]
#
# Starts PostgreSQL, PgBouncer and Redis (scripts/services.sh) in a temporary directory, one
# account allowed to exec, `agents` running instances of it with an agent token each (inserted
# directly: instance swarm-<i>, token gpa_<i, 43 digits>), and the daemon on core 1. Then, with
# gpuproxy-agentswarm on core 0 (real WebSocket channels over TLS that say hello, answer pings
# and answer each exec at once):
#
# 1. holds `agents` channels; the daemon's RSS before and while held gives the RSS per agent;
# 2. sends `commands` commands to random agents through the API, one after another: the time
#    from each POST to its exec at the agent (the swarm's clock), and from acceptance to the
#    recorded result (PostgreSQL's: finished_at - created_at);
# 3. restarts the daemon (SIGTERM, a new one on the same address): the time until every agent is
#    back (gpuproxy_agents_connected), the handshakes per second meanwhile, and what an API
#    request (GET /v1/account, one every quarter second) got during the storm.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
. loadtest/setup.sh
ensure_cargo
N=${1:-18000}
C=${2:-1000}

cargo build --release --locked --bin gpuproxyd --bin gpuproxy-agentswarm >/dev/null
BIN="$CARGO_TARGET_DIR/release"
load_setup agents 25732 26732 26679 "$BIN/gpuproxyd"
KEY=$(load_key "$BIN/gpuproxyd" swarm)
swarm_rows "$BIN/gpuproxyd" swarm "$KEY" "$N"

serve() {
  taskset -c 1 "$BIN/gpuproxyd" serve --https-listen 127.0.0.1:18743 --metrics-listen 127.0.0.1:19390 --http-listen off \
    --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
    --set log.access_log=false --set ratelimit.enabled=false \
    --set connections.max_per_ip=100000 --set connections.idle_timeout_ms=600000 >>"$WORK/daemon.log" 2>&1 &
  DPID=$!
  for _ in $(seq 200); do svc_port_busy 18743 && break; sleep 0.05; done
  kill -0 "$DPID" 2>/dev/null || { tail -5 "$WORK/daemon.log"; exit 1; }
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$DPID/status"; }
metric() { curl -s http://127.0.0.1:19390/metrics | awk -v m="$1" '$1 == m {print $2}'; }
swarm() { # agents, first, seconds, [commands]
  taskset -c 0 "$BIN/gpuproxy-agentswarm" --target 127.0.0.1:18743 --agents "$1" --first "$2" \
    --hold-secs "$3" --sources 200 --per-process 9000 --max-backoff-s 10 \
    --commands "${4:-0}" --api-key "$KEY"
}

serve
# warm the allocator, TLS and the caches with a few hundred channels first
swarm 200 0 3 >/dev/null
sleep 2
BEFORE=$(rss)
swarm "$N" 0 600 "$C" > "$WORK/swarm.txt" &
SWARM=$!
for _ in $(seq 2400); do grep -q '"event":"commands"\|"event":"held".*"errors":{"' "$WORK/swarm.txt" 2>/dev/null && break; sleep 0.1; done
grep '"event":"held"' "$WORK/swarm.txt"
HELD=$(rss)
CONNECTED=$(metric gpuproxy_agents_connected)
awk -v b="$BEFORE" -v h="$HELD" -v n="$CONNECTED" 'BEGIN {
  printf "agents: %d channels held; RSS before %d KiB, held %d KiB: %.2f KiB per agent\n", n, b, h, (h-b)/n }'
# the commands (the swarm sends them once every agent is held); their results, by PostgreSQL
for _ in $(seq 600); do grep -q '"event":"commands"' "$WORK/swarm.txt" 2>/dev/null && break; sleep 0.5; done
sleep 2
psql -qAt "$MIGRATE_DATABASE_URL" -c "SELECT count(*), round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))::numeric, 2), round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))::numeric, 2), round(1000 * max(extract(epoch FROM finished_at - created_at))::numeric, 2) FROM agent_commands WHERE status = 'exited'" |
  awk -F'|' '{ printf "commands: %d exited; accepted -> result p50 %s ms, p99 %s ms, max %s ms (PostgreSQL clock)\n", $1, $2, $3, $4 }'
echo "routing (POST sent -> exec at the agent): $(grep '"event":"commands"' "$WORK/swarm.txt" || echo none)"

# the restart: every agent comes back by itself
kill -TERM "$DPID"
wait "$DPID" 2>/dev/null || true
T0=$(date +%s.%N)
serve
LAST=0
for _ in $(seq ${RESTART_WAIT_TICKS:-480}); do
  curl -sk -o /dev/null -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $KEY" \
    https://127.0.0.1:18743/v1/account >>"$WORK/api.txt" || true
  NOW=$(metric gpuproxy_agents_connected); NOW=${NOW:-0}
  [ "${NOW%.*}" -ge "$N" ] && break
  sleep 0.25
done
T1=$(date +%s.%N)
NOW=$(metric gpuproxy_agents_connected)
sort -n -k2 "$WORK/api.txt" | awk '{ n++; if ($1 != 200) bad++; t[n] = $2 } END {
  printf "API during the restart: %d requests, %d not 200; latency p50 %.1f ms, max %.1f ms\n",
    n, bad, 1000 * t[int((n + 1) / 2)], 1000 * t[n] }'
awk -v a="$T0" -v b="$T1" -v n="$NOW" -v want="$N" 'BEGIN {
  printf "restart: %d of %d agents back %.1f s after the new daemon started: %.0f handshakes/s\n", n, want, b-a, n/(b-a) }'
[ "${NOW%.*}" -ge "$N" ] || { echo "daemon log:"; tail -5 "$WORK/daemon.log"; tail -3 "$WORK/swarm.txt"; }
kill "$SWARM" 2>/dev/null || true
wait "$SWARM" 2>/dev/null || true
