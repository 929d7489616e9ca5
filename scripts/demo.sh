#!/usr/bin/env bash
# Runs gpuproxyd for real on this machine: builds it, makes a self-signed certificate in
# ./demo-data, and serves HTTPS on 127.0.0.1:8443 with metrics on 127.0.0.1:9090 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
install_debian_packages
ensure_cargo

DEMO_DIR="$PWD/demo-data"
mkdir -p "$DEMO_DIR/certs"

echo "==> building gpuproxyd (release)"
cargo build --release --locked --bin gpuproxyd
BIN="$CARGO_TARGET_DIR/release/gpuproxyd"

if [ ! -s "$DEMO_DIR/certs/server.crt" ]; then
  echo "==> generating a self-signed certificate for localhost"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DEMO_DIR/certs/server.key" -out "$DEMO_DIR/certs/server.crt" 2>/dev/null
fi

"$BIN" check-config --config config/gpuproxyd.toml >/dev/null

cat <<MSG

gpuproxyd is starting. Try, from another terminal:

  curl --cacert demo-data/certs/server.crt https://localhost:8443/health
  curl --cacert demo-data/certs/server.crt https://localhost:8443/stats
  curl -s http://127.0.0.1:9090/metrics | grep gpuproxy_

Ctrl-C drains and stops it (a second Ctrl-C exits at once); kill -HUP reloads the certificate.

MSG
exec "$BIN" serve --config config/gpuproxyd.toml --log-format text
