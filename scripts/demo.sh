#!/usr/bin/env bash
# Runs gpuproxyd for real on this machine, until Ctrl-C:
#  - PostgreSQL, PgBouncer (transaction pooling) and Redis from Debian's packages, with their data
#    in ./demo-data (or a private directory under /tmp when run as root and the checkout is not
#    reachable by the `postgres` user), on ports of their own;
#  - the schema (gpuproxyd migrate), a demo account and an admin API key;
#  - the sandbox providers (gpuproxy-sandbox: Vast.ai on 127.0.0.1:18081, io.net on :18082), which
#    speak the providers' wire formats from a seeded inventory; the daemon is pointed at them;
#  - the daemon: HTTPS on 127.0.0.1:8443, metrics on 127.0.0.1:9090.
# It prints the API key and curl lines to try. Ctrl-C drains the daemon and stops the services.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
install_debian_packages
ensure_cargo

DEMO_DIR="$PWD/demo-data"
PG_PORT="${DEMO_PG_PORT:-55432}"
BOUNCER_PORT="${DEMO_PGBOUNCER_PORT:-56432}"
REDIS_PORT="${DEMO_REDIS_PORT:-56379}"
mkdir -p "$DEMO_DIR/certs"

echo "==> building gpuproxyd and gpuproxy-sandbox (release)"
cargo build --release --locked --bin gpuproxyd --bin gpuproxy-sandbox --bin gpx
BIN="$CARGO_TARGET_DIR/release/gpuproxyd"
SANDBOX_BIN="$CARGO_TARGET_DIR/release/gpuproxy-sandbox"
GPX="$CARGO_TARGET_DIR/release/gpx"
VAST_PORT="${DEMO_VAST_PORT:-18081}"
IONET_PORT="${DEMO_IONET_PORT:-18082}"

# a self-signed end-entity certificate (not a CA: rustls clients such as gpx refuse a CA
# certificate presented as the server's own); one from an earlier demo that is a CA is replaced
if [ -s "$DEMO_DIR/certs/server.crt" ] &&
   openssl x509 -in "$DEMO_DIR/certs/server.crt" -noout -ext basicConstraints 2>/dev/null | grep -q "CA:TRUE"; then
  rm -f "$DEMO_DIR/certs/server.crt" "$DEMO_DIR/certs/server.key"
fi
if [ ! -s "$DEMO_DIR/certs/server.crt" ]; then
  echo "==> generating a self-signed certificate for localhost"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$DEMO_DIR/certs/server.key" -out "$DEMO_DIR/certs/server.crt" 2>/dev/null
fi

for p in 8443 9090 "$VAST_PORT" "$IONET_PORT"; do
  if svc_port_busy "$p"; then echo "port $p is in use (another demo running?)" >&2; exit 1; fi
done
echo "==> starting PostgreSQL :$PG_PORT, PgBouncer (transaction pooling) :$BOUNCER_PORT, Redis :$REDIS_PORT"
services_start "$DEMO_DIR/services" "$PG_PORT" "$BOUNCER_PORT" "$REDIS_PORT"
[ -s "$DEMO_DIR/jwt-secret" ] || openssl rand -hex 32 >"$DEMO_DIR/jwt-secret"
JWT_SECRET="$(cat "$DEMO_DIR/jwt-secret")"
export JWT_SECRET

echo "==> gpuproxyd migrate"
"$BIN" migrate

echo "==> the demo account and its admin API key"
demo_api_key "$BIN" "$SVC_DIR/demo-api-key" demo

echo "==> starting the sandbox providers: Vast.ai :$VAST_PORT, io.net :$IONET_PORT"
# the keys only the daemon holds; the sandbox checks them as the real providers would
export VASTAI_API_KEY=demo-vast-key IONET_API_KEY=demo-ionet-key
"$SANDBOX_BIN" --vast-listen "127.0.0.1:$VAST_PORT" --ionet-listen "127.0.0.1:$IONET_PORT" \
  --vast-key "$VASTAI_API_KEY" --ionet-key "$IONET_API_KEY" >/dev/null &
SANDBOX_PID=$!
trap 'kill $SANDBOX_PID 2>/dev/null || true; services_stop' EXIT
for _ in $(seq 100); do svc_port_busy "$IONET_PORT" && break; sleep 0.05; done
PROVIDERS=(--set "providers.vastai.base_url=\"http://127.0.0.1:$VAST_PORT\""
           --set "providers.ionet.base_url=\"http://127.0.0.1:$IONET_PORT\"")

"$BIN" check-config --config config/gpuproxyd.toml "${PROVIDERS[@]}" >/dev/null

cat <<MSG

gpuproxyd is starting with PostgreSQL (via PgBouncer), Redis and the sandbox providers.
Your API key (admin scope):

  $API_KEY

Try, from another terminal:

  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" https://localhost:8443/v1/account
  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" "https://localhost:8443/v1/offers?gpu=RTX%204090&sort=price&limit=5"
  curl --cacert demo-data/certs/server.crt -X POST -H "Authorization: Bearer $API_KEY" https://localhost:8443/v1/auth/token
  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" \
    -d '{"name": "laptop", "public_key": "'"\$(cat ~/.ssh/id_ed25519.pub)"'"}' https://localhost:8443/v1/ssh-keys
  # a Vast offer takes a container image; an io.net offer one of its VM images: "general" or "datascience"
  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" \
    -d '{"offer_id": "<a vastai: id from /v1/offers>", "image": "ubuntu:22.04", "disk_gb": 20, "ssh_key_ids": ["<id from /v1/ssh-keys>"]}' https://localhost:8443/v1/instances
  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" \
    -d '{"offer_id": "<an ionet: id from /v1/offers>", "image": "general", "disk_gb": 20, "duration_hours": 2}' https://localhost:8443/v1/instances
  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" \
    -d '{"spec": {"gpu": "RTX 4090", "max_price_per_hour": 2}, "image": "ubuntu:22.04", "disk_gb": 20, "max_duration_hours": 1}' https://localhost:8443/v1/instances
  curl --cacert demo-data/certs/server.crt -H "Authorization: Bearer $API_KEY" "https://localhost:8443/v1/usage?group_by=instance"
  curl --cacert demo-data/certs/server.crt https://localhost:8443/ready
  curl -s http://127.0.0.1:9090/metrics | grep gpuproxy_

Or with gpx, the tenant CLI (docs/cli.md):

  $GPX --url https://localhost:8443 --cacert demo-data/certs/server.crt login --key $API_KEY
  $GPX offers --gpu "RTX 4090" --limit 5
  $GPX rent --gpu "RTX 4090" --max-price 2 --hours 1 --wait
  $GPX ls
  $GPX events --follow

Accounts and keys: DATABASE_URL=$DATABASE_URL $BIN keys list --account demo

Sandbox faults (e.g. io.net failing):  curl -X POST -d '{"error_rate":1}' http://127.0.0.1:$IONET_PORT/_sandbox/faults

Ctrl-C drains and stops it (a second Ctrl-C exits at once) and then stops the services.

MSG
"$BIN" serve --config config/gpuproxyd.toml "${PROVIDERS[@]}" --log-format text || true
