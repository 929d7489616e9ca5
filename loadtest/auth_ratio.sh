#!/usr/bin/env bash
# Throughput of an authenticated request with a cached API key (GET /v1/account) against
# GET /health on the same daemon, with wrk over keep-alive HTTPS, and their ratio; then the
# PostgreSQL statements the run cost per 1,000 authenticated requests (gpuproxy_db_queries_total,
# which leaves out the pool's health probe).
#
#   loadtest/auth_ratio.sh [connections=64] [seconds=10] [wrk threads=2] [rounds=7]
#
# wrk shares the 2 cores with the daemon (on a VM whose neighbours come and go), so single runs of
# the same target swing by ±15%: the two targets are run back to back for several rounds, the
# order alternating (so neither always gets the later, warmer or noisier slot), and both the
# median of the per-round ratios and the ratio of the mean rates are reported.
#
# Starts PostgreSQL, PgBouncer and Redis (scripts/services.sh) in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
. loadtest/setup.sh
ensure_cargo
CONNS=${1:-64}
SECS=${2:-10}
THREADS=${3:-2}
ROUNDS=${4:-7}
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }

cargo build --release --locked --bin gpuproxyd >/dev/null
BIN="$CARGO_TARGET_DIR/release/gpuproxyd"
load_setup authload 25432 26432 26379 "$BIN"
KEY=$(load_key "$BIN" load)

# limits stay on (their cost is part of the figure) but so high that wrk never trips them
"$BIN" serve --https-listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 --http-listen off \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set log.access_log=false --set ratelimit.ip_per_minute=1000000000 \
  --set ratelimit.ip_burst=1000000000 --set ratelimit.account_per_minute=1000000000 \
  --set ratelimit.account_burst=1000000000 --set ratelimit.key_per_minute=1000000000 \
  --set ratelimit.key_burst=1000000000 >/dev/null &
for _ in $(seq 200); do svc_port_busy 18443 && break; sleep 0.05; done

cat >"$WORK/auth.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
rps() { wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$@" | tee -a "$WORK/wrk.txt" | awk '/Requests\/sec/ {print $2}'; }
queries() { curl -s http://127.0.0.1:19090/metrics | awk '/^gpuproxy_db_queries_total/ {s += $2} END {print s + 0}'; }
auth_total() { curl -s http://127.0.0.1:19090/metrics | awk '/^gpuproxy_requests_total\{route="\/v1\/account",status="200"\}/ {print $2}'; }

wrk -t1 -c8 -d2s https://127.0.0.1:18443/health >/dev/null
wrk -t1 -c8 -d2s -s "$WORK/auth.lua" https://127.0.0.1:18443/v1/account >/dev/null   # warms the caches
echo "wrk -t$THREADS -c$CONNS -d${SECS}s, keep-alive HTTPS (HTTP/1.1, TLS 1.3), $ROUNDS rounds"
Q0=$(queries); N0=$(auth_total)
RATIOS=(); HS=(); AS=()
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    H=$(rps https://127.0.0.1:18443/health)
    A=$(rps -s "$WORK/auth.lua" https://127.0.0.1:18443/v1/account)
  else
    A=$(rps -s "$WORK/auth.lua" https://127.0.0.1:18443/v1/account)
    H=$(rps https://127.0.0.1:18443/health)
  fi
  HS+=("$H"); AS+=("$A")
  RATIO=$(awk -v a="$A" -v h="$H" 'BEGIN { printf "%.3f", a / h }')
  RATIOS+=("$RATIO")
  echo "round $r: GET /health $H req/s, GET /v1/account (cached API key) $A req/s, ratio $RATIO"
done
Q1=$(queries); N1=$(auth_total)
printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR] = $1} END {printf "median ratio authenticated/health: %s\n", a[int((NR + 1) / 2)]}'
awk -v h="${HS[*]}" -v a="${AS[*]}" 'BEGIN {
  nh = split(h, H, " "); split(a, A, " "); for (i = 1; i <= nh; i++) { sh += H[i]; sa += A[i] }
  printf "mean rates: GET /health %.0f req/s, GET /v1/account %.0f req/s, ratio %.3f\n", sh / nh, sa / nh, sa / sh }'
awk -v q="$((Q1 - Q0))" -v n="$((N1 - N0))" \
  'BEGIN { printf "PostgreSQL statements: %d for %d authenticated requests = %.4f per 1,000\n", q, n, n ? q * 1000 / n : 0 }'
