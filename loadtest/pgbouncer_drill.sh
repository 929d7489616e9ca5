#!/usr/bin/env bash
# Fault drill (issue 19): PgBouncer stopped for 20 s under wrk load, through HAProxy (the shipped
# config) in front of 3 daemons (scripts/cluster.sh). wrk calls GET /v1/account with a cached API
# key over keep-alive HTTPS; meanwhile PgBouncer is stopped, HAProxy's view and a rental are
# checked, and PgBouncer is started again. Reports what wrk saw (answers, non-2xx, socket errors),
# whether every daemon stayed in rotation, what the rental got during the outage and whether a
# rental 2 s after PgBouncer was back succeeded.
#
#   loadtest/pgbouncer_drill.sh [outage seconds=20] [connections=32]
#
# The integration test (tests/topology.rs) runs the same drill, shorter, with its own client.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTAGE=${1:-20}
CONNS=${2:-32}
# wrk comes from one address: the per-IP tier would answer most of it 429
CLUSTER_DAEMON_ARGS=(--set ratelimit.enabled=false)
. scripts/cluster.sh
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }
cluster_start 3
CA=demo-data/cluster/certs/server.crt
api() { curl -s --cacert "$CA" -H "Authorization: Bearer $API_KEY" "$@"; }
OFFER=$(api "$CLUSTER_URL/v1/offers?providers=vastai&limit=1&sort=price" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["offers"][0]["id"])')
KEY="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0 drill@example"
# POST /v1/instances; prints the status and the error code, if any
rent() {
  api -o "$SVC_DIR/rent.json" -w '%{http_code}' -H "Content-Type: application/json" \
    -d "{\"offer_id\": \"$OFFER\", \"image\": \"ubuntu:22.04\", \"disk_gb\": 20, \"ssh_public_key\": \"$KEY\"}" \
    "$CLUSTER_URL/v1/instances"
  python3 -c 'import json,sys; print("", json.load(open(sys.argv[1])).get("error", {}).get("code", ""))' "$SVC_DIR/rent.json"
}

TOTAL=$((OUTAGE + 20))
echo "==> wrk: $CONNS connections for $TOTAL s; PgBouncer stopped from 10 s to $((10 + OUTAGE)) s"
wrk -t2 -c"$CONNS" -d"${TOTAL}s" -H "Authorization: Bearer $API_KEY" \
  "$CLUSTER_URL/v1/account" >"$SVC_DIR/wrk.txt" 2>&1 &
WRK=$!
sleep 10
pgbouncer_stop
echo "PgBouncer stopped"
MIN_UP=3
DURING=""
END=$((SECONDS + OUTAGE))
while [ "$SECONDS" -lt "$END" ]; do
  up=$(cluster_servers_up)
  [ "$up" -lt "$MIN_UP" ] && MIN_UP=$up
  if [ -z "$DURING" ] && [ "$SECONDS" -gt $((END - OUTAGE + 3)) ]; then
    DURING=$(rent)
    READY=$(curl -s --cacert "$CA" "$CLUSTER_URL/ready")
  fi
  sleep 0.5
done
pgbouncer_start
for _ in $(seq 100); do svc_port_busy 56432 && break; sleep 0.05; done
echo "PgBouncer started"
sleep 2
AFTER=$(rent)
wait "$WRK"
cat "$SVC_DIR/wrk.txt"
echo
echo "== PgBouncer stopped ${OUTAGE} s under load through HAProxy, 3 daemons"
echo "requests answered:     $(awk '/requests in/ {print $1}' "$SVC_DIR/wrk.txt")"
NON2XX=$(awk -F': ' '/Non-2xx/ {print $2}' "$SVC_DIR/wrk.txt" | tr -d ' ')
echo "non-2xx answers:       ${NON2XX:-0}"
echo "socket errors:         $(grep -o 'Socket errors.*' "$SVC_DIR/wrk.txt" || echo none)"
echo "daemons in rotation:   at least $MIN_UP of 3 throughout the outage"
echo "/ready during outage:  $READY"
echo "rental during outage:  $DURING"
echo "rental 2 s after:      $AFTER"
