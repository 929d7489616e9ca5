#!/usr/bin/env bash
# Cache-hit GET /v1/offers against GET /health on the same daemon, with wrk over keep-alive HTTPS:
# requests/s and p99 of each and their ratio; then how many upstream calls the run cost, per
# 10,000 client requests and per provider per cache TTL (read from the sandbox's own counters).
#
#   loadtest/offers_ratio.sh [connections=64] [seconds=15] [wrk threads=2] [rounds=3] [query]
#
# wrk shares the 2 cores with the daemon (and the sandbox), so the two targets are run alternately
# and the median of the per-round ratios is reported. Starts PostgreSQL, PgBouncer and Redis
# (scripts/services.sh) and the sandbox providers in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
. loadtest/setup.sh
ensure_cargo
CONNS=${1:-64}
SECS=${2:-15}
THREADS=${3:-2}
ROUNDS=${4:-3}
QUERY=${5:-gpu=RTX%204090&sort=price&limit=20}
TTL_MS=30000
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }

cargo build --release --locked --bin gpuproxyd --bin gpuproxy-sandbox >/dev/null
BIN="$CARGO_TARGET_DIR/release/gpuproxyd"
load_setup offersload 25442 26442 26389 "$BIN"
export VASTAI_API_KEY=load-vast IONET_API_KEY=load-ionet
KEY=$(load_key "$BIN" load)

"$CARGO_TARGET_DIR/release/gpuproxy-sandbox" --vast-listen 127.0.0.1:18181 --ionet-listen 127.0.0.1:18182 \
  --vast-key "$VASTAI_API_KEY" --ionet-key "$IONET_API_KEY" >/dev/null &
for _ in $(seq 100); do svc_port_busy 18182 && break; sleep 0.05; done

# limits stay on (their cost is part of the figure) but so high that wrk never trips them
"$BIN" serve --https-listen 127.0.0.1:18453 --metrics-listen 127.0.0.1:19091 --http-listen off \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set 'providers.vastai.base_url="http://127.0.0.1:18181"' \
  --set 'providers.ionet.base_url="http://127.0.0.1:18182"' \
  --set "offers.cache_ttl_ms=$TTL_MS" \
  --set log.access_log=false --set ratelimit.ip_per_minute=1000000000 \
  --set ratelimit.ip_burst=1000000000 --set ratelimit.account_per_minute=1000000000 \
  --set ratelimit.account_burst=1000000000 --set ratelimit.key_per_minute=1000000000 \
  --set ratelimit.key_burst=1000000000 >/dev/null &
for _ in $(seq 200); do svc_port_busy 18453 && break; sleep 0.05; done

cat >"$WORK/auth.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
run() { wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$@" | tee -a "$WORK/wrk.txt"; }
rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '$1 == "99%" {print $2}'; }
calls() { curl -s "http://127.0.0.1:$1/_sandbox/stats" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
served() { curl -s http://127.0.0.1:19091/metrics | awk '/^gpuproxy_requests_total\{route="\/v1\/offers",status="200"\}/ {print $2}'; }

wrk -t1 -c8 -d2s https://127.0.0.1:18453/health >/dev/null
wrk -t1 -c8 -d2s -s "$WORK/auth.lua" "https://127.0.0.1:18453/v1/offers?$QUERY" >/dev/null   # fills the cache
echo "wrk -t$THREADS -c$CONNS -d${SECS}s, keep-alive HTTPS (HTTP/1.1, TLS 1.3), $ROUNDS rounds, GET /v1/offers?$QUERY"
V0=$(calls 18181 search); I0=$(calls 18182 hardware); N0=$(served); T0=$(date +%s.%N)
RATIOS=()
for r in $(seq "$ROUNDS"); do
  OUT=$(run https://127.0.0.1:18453/health); H=$(rps <<<"$OUT"); HP=$(p99 <<<"$OUT")
  OUT=$(run -s "$WORK/auth.lua" "https://127.0.0.1:18453/v1/offers?$QUERY"); A=$(rps <<<"$OUT"); AP=$(p99 <<<"$OUT")
  RATIO=$(awk -v a="$A" -v h="$H" 'BEGIN { printf "%.3f", a / h }')
  RATIOS+=("$RATIO")
  echo "round $r: GET /health $H req/s (p99 $HP), GET /v1/offers (cache hit) $A req/s (p99 $AP), ratio $RATIO"
done
V1=$(calls 18181 search); I1=$(calls 18182 hardware); N1=$(served); T1=$(date +%s.%N)
printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR] = $1} END {printf "median ratio offers/health: %s\n", a[int((NR + 1) / 2)]}'
awk -v v="$((V1 - V0))" -v i="$((I1 - I0))" -v n="$((N1 - N0))" -v t0="$T0" -v t1="$T1" -v ttl="$TTL_MS" 'BEGIN {
  secs = t1 - t0; ttls = secs * 1000 / ttl
  printf "upstream calls: Vast.ai %d, io.net %d for %d client requests in %.0f s (%.1f TTLs of %d ms)\n", v, i, n, secs, ttls, ttl
  printf "per 10,000 client requests: Vast.ai %.4f, io.net %.4f; per provider per TTL: Vast.ai %.2f, io.net %.2f\n",
    n ? v * 10000 / n : 0, n ? i * 10000 / n : 0, v / ttls, i / ttls }'
