#!/usr/bin/env bash
# Throughput of gpuproxyd's GET /health against a bare hyper + rustls server (examples/bare_hello.rs,
# same crate versions), with wrk over keep-alive HTTPS, and their ratio.
#
#   loadtest/health_ratio.sh [connections=64] [seconds=15] [wrk threads=2]
#
# Both servers run on this machine with the same worker count; wrk shares the cores with them, so
# compare the ratio, not the absolute numbers, across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ensure_cargo
CONNS=${1:-64}
SECS=${2:-15}
THREADS=${3:-2}
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }

cargo build --release --locked --bin gpuproxyd --example bare_hello >/dev/null
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/k.pem" -out "$WORK/c.pem" 2>/dev/null

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rps() { wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$1" | tee -a "$WORK/wrk.txt" | awk '/Requests\/sec/ {print $2}'; }

"$BIN/gpuproxyd" serve --https-listen 127.0.0.1:18443 --metrics-listen off --http-listen off \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set log.access_log=false >/dev/null &
"$BIN/examples/bare_hello" 127.0.0.1:18444 "$WORK/c.pem" "$WORK/k.pem" 2>/dev/null &
wait_port 18443; wait_port 18444

wrk -t1 -c8 -d2s https://127.0.0.1:18443/health >/dev/null   # warm-up
wrk -t1 -c8 -d2s https://127.0.0.1:18444/ >/dev/null
G=$(rps https://127.0.0.1:18443/health)
B=$(rps https://127.0.0.1:18444/)
echo "wrk -t$THREADS -c$CONNS -d${SECS}s, keep-alive HTTPS (HTTP/1.1, TLS 1.3)"
echo "gpuproxyd GET /health: $G req/s"
echo "bare hyper+rustls:     $B req/s"
awk -v g="$G" -v b="$B" 'BEGIN { printf "ratio gpuproxyd/bare: %.3f\n", g / b }'
