#!/usr/bin/env bash
# Memory per idle keep-alive connection: starts gpuproxyd, reads its RSS, holds N connections with
# gpuproxy-connhold (one request each, then idle), waits until they are parked, reads RSS again and
# prints (after - before) / N.
#
#   loadtest/conn_memory.sh [connections=10000] [plain|tls] [park_after_ms=1000]
#
# park_after_ms=0 keeps hyper's buffers for each connection's whole life (the "before" figure).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ensure_cargo
N=${1:-10000}
MODE=${2:-plain}
PARK=${3:-1000}
cargo build --release --locked --bin gpuproxyd --bin gpuproxy-connhold >/dev/null 2>&1
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/k.pem" -out "$WORK/c.pem" 2>/dev/null

"$BIN/gpuproxyd" serve --https-listen 127.0.0.1:28443 --http-listen 127.0.0.1:28080 \
  --metrics-listen 127.0.0.1:29090 --set "server.tls_cert=\"$WORK/c.pem\"" \
  --set "server.tls_key=\"$WORK/k.pem\"" --set log.access_log=false \
  --set connections.park_after_ms="$PARK" --set connections.idle_timeout_ms=600000 >/dev/null &
DPID=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/29090) 2>/dev/null && break; sleep 0.05; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$DPID/status"; }
# warm the allocator and the runtime with a small burst first, so the baseline is fair
TARGET=127.0.0.1:28080; TLS=""
[ "$MODE" = tls ] && { TARGET=127.0.0.1:28443; TLS=--tls; }
"$BIN/gpuproxy-connhold" --target $TARGET $TLS --connections 200 --hold-secs 0 >/dev/null
sleep 1
BEFORE=$(rss)
"$BIN/gpuproxy-connhold" --target $TARGET $TLS --connections "$N" --sources 200 --hold-secs 30 > "$WORK/hold.txt" &
for _ in $(seq 600); do grep -q '"event":"held"' "$WORK/hold.txt" && break; sleep 0.1; done
sleep $(( PARK / 1000 + 3 ))
AFTER=$(rss)
OPEN=$(curl -s http://127.0.0.1:29090/stats | sed -n 's/.*"open":\([0-9]*\).*/\1/p' | head -1)
WAITING=$(curl -s http://127.0.0.1:29090/stats | sed -n 's/.*"waiting":\([0-9]*\).*/\1/p' | head -1)
head -1 "$WORK/hold.txt"
echo "mode=$MODE connections=$N park_after_ms=$PARK open=$OPEN waiting(parked)=$WAITING"
echo "RSS before=${BEFORE} KiB after=${AFTER} KiB"
awk -v b="$BEFORE" -v a="$AFTER" -v n="$N" 'BEGIN { printf "RSS per idle connection: %.0f bytes (%.2f KiB)\n", (a-b)*1024/n, (a-b)/n }'
