#!/usr/bin/env bash
# gRPC against REST on one daemon, in one run:
#
#   loadtest/grpc.sh [seconds=10] [connections=16] [streams per connection=16] [rounds=3] [idle streams=5000]
#
# 1. CPU per request: the same call as a gRPC unary call and as REST, each over keep-alive
#    HTTP/2 + TLS 1.3 with h2load (the same client for both): AccountService/GetAccount against
#    GET /v1/account (authenticated, key cached), and OffersService/SearchOffers against
#    GET /v1/offers (a cache hit), alternating, `rounds` times. The daemon runs on core 1, h2load
#    on core 0; the daemon's CPU time (utime + stime from /proc) over each run, divided by the
#    calls it answered, is the figure, beside req/s. Every gRPC call is checked to have answered
#    OK (the daemon's request metrics by method).
# 2. Memory per idle event stream: `idle streams` gRPC StreamEvents calls held open (h2load,
#    100 streams per connection) with no events flowing: the daemon's RSS before and while held.
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
CONNS=${2:-16}
STREAMS=${3:-16}
ROUNDS=${4:-3}
IDLE=${5:-5000}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }

cargo build --release --locked --bin gpuproxyd --bin gpuproxy-sandbox >/dev/null
BIN="$CARGO_TARGET_DIR/release/gpuproxyd"
load_setup grpcload 25742 26742 26689 "$BIN"
export VASTAI_API_KEY=load-vast IONET_API_KEY=load-ionet
KEY=$(load_key "$BIN" load)

taskset -c 0 "$CARGO_TARGET_DIR/release/gpuproxy-sandbox" --vast-listen 127.0.0.1:18381 \
  --ionet-listen 127.0.0.1:18382 --vast-key "$VASTAI_API_KEY" --ionet-key "$IONET_API_KEY" >/dev/null &
for _ in $(seq 100); do svc_port_busy 18382 && break; sleep 0.05; done

# limits stay on (their cost is part of the figure) but so high that nothing trips them
taskset -c 1 "$BIN" serve --https-listen 127.0.0.1:18653 --metrics-listen 127.0.0.1:19391 --http-listen off \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set 'providers.vastai.base_url="http://127.0.0.1:18381"' \
  --set 'providers.ionet.base_url="http://127.0.0.1:18382"' \
  --set offers.cache_ttl_ms=600000 --set log.access_log=false \
  --set ratelimit.ip_per_minute=1000000000 --set ratelimit.ip_burst=1000000000 \
  --set ratelimit.account_per_minute=1000000000 --set ratelimit.account_burst=1000000000 \
  --set ratelimit.key_per_minute=1000000000 --set ratelimit.key_burst=1000000000 \
  --set events.max_streams_per_account=1000000 --set connections.idle_timeout_ms=600000 >/dev/null &
DPID=$!
for _ in $(seq 200); do svc_port_busy 18653 && break; sleep 0.05; done
URL=https://127.0.0.1:18653

# request bodies: a gRPC message is a 5-byte prefix (uncompressed, length) and the message
printf '\x00\x00\x00\x00\x00' >"$WORK/empty.bin"
# SearchOffersRequest{gpu: "RTX 4090" (field 1), limit: 20 (field 14)}
printf '\x00\x00\x00\x00\x0c\x0a\x08RTX 4090\x70\x14' >"$WORK/search.bin"

ticks() { awk '{print $14 + $15}' "/proc/$DPID/stat"; }
hz=$(getconf CLK_TCK)
metric() { curl -s http://127.0.0.1:19391/metrics | awk -v s="$1" 'index($0, s) == 1 {print $2}'; }
ok_calls() { metric "gpuproxy_requests_total{route=\"$1\",status=\"200\"}"; }
h2() { taskset -c 0 h2load -D "$SECS" -c "$CONNS" -m "$STREAMS" -H "authorization: Bearer $KEY" "$@"; }
grpc() { h2 -H 'content-type: application/grpc' -H 'te: trailers' -d "$2" "$URL/$1"; }
# one run: prints "req/s cpu-us-per-request answered"
measure() { # label, then the h2load call
  local label=$1; shift
  local t0 t1 out done rps
  t0=$(ticks)
  out=$("$@" 2>&1)
  t1=$(ticks)
  done=$(awk '/^requests:/ {print $8}' <<<"$out")
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  awk -v l="$label" -v d="$done" -v r="$rps" -v t="$((t1 - t0))" -v hz="$hz" \
    'BEGIN { printf "%-34s %9.0f req/s  %6.1f us CPU/request  (%d answered)\n", l, r, t * 1e6 / hz / d, d }'
}

# warm: TLS, the key cache, the offers cache
h2load -n 200 -c 4 -H "authorization: Bearer $KEY" "$URL/v1/account" >/dev/null
h2load -n 200 -c 4 -H "authorization: Bearer $KEY" "$URL/v1/offers?gpu=RTX%204090&limit=20" >/dev/null
h2load -n 200 -c 4 -H "authorization: Bearer $KEY" -H 'content-type: application/grpc' -H 'te: trailers' \
  -d "$WORK/empty.bin" "$URL/gpuproxy.v1.AccountService/GetAccount" >/dev/null

echo "h2load -D $SECS -c $CONNS -m $STREAMS, HTTP/2 + TLS 1.3; daemon on core 1, h2load on core 0; $ROUNDS rounds"
G0=$(ok_calls /gpuproxy.v1.AccountService/GetAccount); S0=$(ok_calls /gpuproxy.v1.OffersService/SearchOffers)
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  measure "  REST GET /v1/account" h2 "$URL/v1/account"
  measure "  gRPC AccountService/GetAccount" grpc gpuproxy.v1.AccountService/GetAccount "$WORK/empty.bin"
  measure "  REST GET /v1/offers (cache hit)" h2 "$URL/v1/offers?gpu=RTX%204090&limit=20"
  measure "  gRPC OffersService/SearchOffers" grpc gpuproxy.v1.OffersService/SearchOffers "$WORK/search.bin"
done
G1=$(ok_calls /gpuproxy.v1.AccountService/GetAccount); S1=$(ok_calls /gpuproxy.v1.OffersService/SearchOffers)
echo "gRPC calls answered OK (daemon's metrics): GetAccount $(awk -v a="$G0" -v b="$G1" 'BEGIN {print b - a}'), SearchOffers $(awk -v a="$S0" -v b="$S1" 'BEGIN {print b - a}')"

# idle event streams
rss() { awk '/VmRSS/ {print $2}' "/proc/$DPID/status"; }
sleep 2
BEFORE=$(rss)
CONN_N=$(( (IDLE + 99) / 100 ))
taskset -c 0 h2load -n "$IDLE" -c "$CONN_N" -m 100 -H "authorization: Bearer $KEY" \
  -H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/empty.bin" \
  "$URL/gpuproxy.v1.EventsService/StreamEvents" >/dev/null 2>&1 &
HOLD=$!
for _ in $(seq 600); do
  [ "$(metric 'gpuproxy_event_streams ')" = "$IDLE" ] && break
  sleep 0.1
done
OPEN=$(metric 'gpuproxy_event_streams ')
sleep 2
HELD=$(rss)
kill "$HOLD" 2>/dev/null || true
wait "$HOLD" 2>/dev/null || true
awk -v n="$OPEN" -v c="$CONN_N" -v b="$BEFORE" -v h="$HELD" 'BEGIN {
  printf "idle gRPC event streams: %d open over %d connections; RSS %d KiB before, %d KiB held: %.2f KiB per stream (connections included)\n",
    n, c, b, h, (h - b) / n }'
