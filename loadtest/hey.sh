#!/usr/bin/env bash
# The deployment guide's hey runs, adapted to gpuproxyd's endpoints, against the local demo
# (./scripts/demo.sh prints the key). hey is closed-loop (-c workers, each waits for its answer):
# use it for quick capacity and error checks, wrk2 (-R) for latency at a fixed rate.
#
#   GPX_KEY=gpx_... loadtest/hey.sh [base URL, default https://localhost:8443] [seconds, default 30]
set -euo pipefail
BASE=${1:-https://localhost:8443}
SECS=${2:-30}
: "${GPX_KEY:?set GPX_KEY to an API key (the demo prints one)}"
command -v hey >/dev/null || { echo "hey missing: apt-get install hey" >&2; exit 1; }
# The demo's certificate is self-signed: hey does not verify certificates. hey sends the URL's
# host:port as the TLS server name, which is not a valid SNI (rustls refuses the handshake with
# "illegal parameter"), so every run sets the Host (and with it the SNI) explicitly.
HOST=$(printf '%s' "$BASE" | sed -E 's#^https?://##; s#[:/].*$##')
hey() { command hey -host "$HOST" "$@"; }

echo "== liveness: GET /health, 200 workers"
hey -z "${SECS}s" -c 200 "$BASE/health"

echo "== authenticated: GET /v1/account, 200 workers (auth cache hits)"
hey -z "${SECS}s" -c 200 -H "Authorization: Bearer $GPX_KEY" "$BASE/v1/account"

echo "== offers: GET /v1/offers (cache hits after the first), 200 workers"
hey -z "${SECS}s" -c 200 -H "Authorization: Bearer $GPX_KEY" "$BASE/v1/offers?gpu=RTX%204090&sort=price&limit=20"

echo "== HTTP/2: GET /v1/offers over h2, 50 workers"
hey -z "${SECS}s" -c 50 -h2 -H "Authorization: Bearer $GPX_KEY" "$BASE/v1/offers?gpu=A100&limit=20"

echo "== rate limit: one client past 1,000/min gets 429s (look for [429] in the status distribution)"
hey -n 2000 -c 20 "$BASE/openapi.json"
