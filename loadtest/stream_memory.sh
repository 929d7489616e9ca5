#!/usr/bin/env bash
# Daemon memory per idle event stream, Server-Sent Events against WebSocket, in one run:
#
#   loadtest/stream_memory.sh [streams=5000] [source_addresses=50]
#
# Starts PostgreSQL, PgBouncer and Redis (scripts/services.sh) in a temporary directory, one
# account with one key, and the daemon. Warms it with a few streams of each kind, then for SSE
# and then WebSocket: holds `streams` idle TLS streams of GET /v1/events with gpuproxy-connhold
# (--sse / --ws), reads the daemon's RSS before, while held and after they close, and prints the
# RSS per stream and how much of it came back after the close.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
. loadtest/setup.sh
ensure_cargo
N=${1:-5000}
SOURCES=${2:-50}

cargo build --release --locked --bin gpuproxyd --bin gpuproxy-connhold >/dev/null
BIN="$CARGO_TARGET_DIR/release"
load_setup streammem 25632 26632 26579 "$BIN/gpuproxyd"
KEY=$(load_key "$BIN/gpuproxyd" streams)

# one account holds every stream: caps raised, rate limits off (the opening burst is not what is
# measured). Pings every 15 s: an idle SSE stream whose client left is noticed at its next ping
# (nothing is read from it), and the holder does not answer WebSocket pings, so its streams are
# closed 10 s after the first (events.pong_timeout_ms); the figures are read before that.
taskset -c 1 "$BIN/gpuproxyd" serve --https-listen 127.0.0.1:18643 --metrics-listen 127.0.0.1:19290 --http-listen off \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set log.access_log=false --set ratelimit.enabled=false \
  --set connections.max_per_ip=100000 --set connections.idle_timeout_ms=600000 \
  --set events.max_streams_per_account=1000000 --set events.ping_interval_ms=15000 >/dev/null &
DPID=$!
for _ in $(seq 200); do svc_port_busy 18643 && break; sleep 0.05; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$DPID/status"; }
gauge() { curl -s http://127.0.0.1:19290/metrics | awk -v m="$1" '$1 == m {print $2}'; }
hold() { # mode, connections, seconds, sources
  taskset -c 0 "$BIN/gpuproxy-connhold" --target 127.0.0.1:18643 --tls "--$1" --path /v1/events \
    --header "Authorization: Bearer $KEY" --connections "$2" --sources "$4" \
    --per-process 9000 --hold-secs "$3"
}
settle() { # until no stream is open (an SSE stream's leaving is seen at its next ping)
  for _ in $(seq 400); do [ "$(gauge gpuproxy_event_streams)" = "0" ] && break; sleep 0.1; done
  [ "$(gauge gpuproxy_event_streams)" = "0" ] || echo "streams still open: $(gauge gpuproxy_event_streams)"
  sleep 2
}

# warm the allocator, TLS and the auth cache with both kinds first, so the baseline is fair
hold sse 200 1 10 >/dev/null
hold ws 200 1 10 >/dev/null
settle
for MODE in sse ws; do
  BEFORE=$(rss)
  hold "$MODE" "$N" 600 "$SOURCES" > "$WORK/$MODE.txt" &
  HOLDER=$!
  for _ in $(seq 1200); do grep -q '"event":"held"' "$WORK/$MODE.txt" && break; sleep 0.1; done
  sleep 3
  HELD=$(rss)
  OPEN=$(gauge gpuproxy_event_streams)
  pkill -f "gpuproxy-connhold --target 127.0.0.1:18643" 2>/dev/null || true
  wait "$HOLDER" 2>/dev/null || true
  settle
  AFTER=$(rss)
  echo "$MODE: $(head -1 "$WORK/$MODE.txt")"
  awk -v m="$MODE" -v b="$BEFORE" -v h="$HELD" -v a="$AFTER" -v n="$OPEN" 'BEGIN {
    printf "%s: %d streams held; RSS before %d KiB, held %d KiB, after close %d KiB\n", m, n, b, h, a
    printf "%s: RSS per idle stream %.2f KiB; returned after close %.0f%%\n", m, (h-b)/n, (h-a)*100/(h-b) }'
done
