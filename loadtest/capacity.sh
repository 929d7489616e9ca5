#!/usr/bin/env bash
# The inputs of the capacity table in docs/operations.md (section "Capacity"), measured on this machine:
#  - CPU per request on the hot routes (GET /health, GET /v1/account with a cached key,
#    GET /v1/offers answered from the cache): the daemon pinned to core 0, wrk to core 1, keep-alive
#    HTTPS; CPU = the daemon's utime + stime over the run (/proc/PID/stat) / requests answered;
#  - PostgreSQL statements (gpuproxy_db_queries_total) and Redis commands (INFO commandstats) per
#    1,000 requests of each route;
#  - bytes per idle connection: loadtest/conn_memory.sh (TLS and plain, 10,000 connections).
# The SSE figure comes from loadtest/sse_streams.sh (18,000 streams; minutes to run).
#
#   loadtest/capacity.sh [seconds per route=10] [connections=64]
#
# Starts PostgreSQL, PgBouncer and Redis (scripts/services.sh) and the sandbox providers in a
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
. loadtest/setup.sh
ensure_cargo
SECS=${1:-10}
CONNS=${2:-64}
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked --bin gpuproxyd --bin gpuproxy-sandbox >/dev/null
BIN="$CARGO_TARGET_DIR/release"
export JWT_SECRET=capacity-secret-0123456789-0123456789-abcdef
load_setup capacity 35432 36432 36379 "$BIN/gpuproxyd"
KEY=$(load_key "$BIN/gpuproxyd" capacity)
export VASTAI_API_KEY=cap-vast IONET_API_KEY=cap-ionet
"$BIN/gpuproxy-sandbox" --vast-listen 127.0.0.1:38081 --ionet-listen 127.0.0.1:38082 \
  --vast-key "$VASTAI_API_KEY" --ionet-key "$IONET_API_KEY" >/dev/null &
taskset -c 0 "$BIN/gpuproxyd" serve --https-listen 127.0.0.1:38443 --metrics-listen 127.0.0.1:39090 \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set log.access_log=false --set ratelimit.enabled=false --set server.workers=1 \
  --set 'providers.vastai.base_url="http://127.0.0.1:38081"' \
  --set 'providers.ionet.base_url="http://127.0.0.1:38082"' >"$WORK/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/39090) 2>/dev/null && break; sleep 0.05; done
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$DPID/stat"; }
db_statements() {
  curl -s http://127.0.0.1:39090/metrics |
    awk '/^gpuproxy_db_queries_total\{/ {s += $2} END {printf "%d\n", s}'
}
redis_commands() {
  redis-cli -p 36379 info commandstats |
    awk -F'[=,:]' '/^cmdstat_/ && $1 !~ /cmdstat_(info|ping)$/ {s += $3} END {printf "%d\n", s}'
}
HZ=$(getconf CLK_TCK)

printf '\n%-34s %10s %12s %14s %14s\n' route requests "CPU µs/req" "PG stmt/1000" "Redis cmd/1000"
measure() {
  local name="$1" path="$2" auth=()
  [ "$3" = auth ] && auth=(-H "Authorization: Bearer $KEY")
  # warm: the key and the offers answer are cached after this
  curl -sk "${auth[@]}" "https://127.0.0.1:38443$path" >/dev/null
  local c0 d0 r0 out n c1 d1 r1
  c0=$(cpu_ticks) d0=$(db_statements) r0=$(redis_commands)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" "${auth[@]}" "https://127.0.0.1:38443$path")
  c1=$(cpu_ticks) d1=$(db_statements) r1=$(redis_commands)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v name="$name" -v n="$n" -v c=$((c1 - c0)) -v hz="$HZ" -v d=$((d1 - d0)) -v r=$((r1 - r0)) \
    'BEGIN {printf "%-34s %10d %12.1f %14.2f %14.2f\n", name, n, c / hz * 1e6 / n, d * 1000 / n, r * 1000 / n}'
}
measure "GET /health" /health none
measure "GET /v1/account (cached key)" /v1/account auth
measure "GET /v1/offers (cached answer)" "/v1/offers?limit=20" auth
kill "$DPID"
wait "$DPID" 2>/dev/null || true

echo
echo "== bytes per idle connection (loadtest/conn_memory.sh 10000 …)"
loadtest/conn_memory.sh 10000 tls | tail -1
loadtest/conn_memory.sh 10000 plain | tail -1
