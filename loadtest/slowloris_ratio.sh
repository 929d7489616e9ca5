#!/usr/bin/env bash
# A normal client's GET /health throughput while a slowloris holds connections, as a ratio to the
# same run without the abuse. The daemon runs on core 0; wrk and the abuser share core 1, the
# abuser at nice 19 (a fixed CPU budget), so the ratio measures the daemon, not the 2 cores.
#
#   loadtest/slowloris_ratio.sh [abusive connections=2000] [sources=20] [seconds=10] [wrk conns=32]
#
# The abuser (`gpuproxy-connhold --slowloris`) keeps each connection's request head unfinished,
# adding a header line a second, and reconnects whenever the daemon cuts it
# (`server.header_read_timeout_ms`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ensure_cargo
ABUSE=${1:-2000}
SOURCES=${2:-20}
SECS=${3:-10}
CONNS=${4:-32}
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }

cargo build --release --locked --bin gpuproxyd --bin gpuproxy-connhold >/dev/null
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/k.pem" -out "$WORK/c.pem" 2>/dev/null
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rps() { taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency https://127.0.0.1:18443/health | tee -a "$WORK/wrk.txt" | awk '/Requests\/sec/ {print $2}'; }
open_conns() { curl -s http://127.0.0.1:19090/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"]["open"])'; }

taskset -c 0 "$BIN/gpuproxyd" serve --https-listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 \
  --http-listen off --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set log.access_log=false --set server.workers=1 >/dev/null &
wait_port 18443
taskset -c 1 wrk -t1 -c8 -d2s https://127.0.0.1:18443/health >/dev/null   # warm-up

BASE=$(rps)
nice -n 19 taskset -c 1 "$BIN/gpuproxy-connhold" --target 127.0.0.1:18443 --tls --slowloris \
  --connections "$ABUSE" --sources "$SOURCES" --hold-secs $((SECS + 15)) > "$WORK/abuser.json" &
sleep 5
HELD=$(open_conns)
UNDER=$(rps)
echo "wrk -t1 -c$CONNS -d${SECS}s GET /health over keep-alive HTTPS; daemon on core 0 (1 worker), wrk and abuser on core 1 (abuser nice 19)"
echo "without abuse:                          $BASE req/s"
echo "with $ABUSE slowloris connections from $SOURCES addresses: $UNDER req/s (daemon holding $HELD connections)"
awk -v u="$UNDER" -v b="$BASE" 'BEGIN { printf "ratio abused/clean: %.3f\n", u / b }'
