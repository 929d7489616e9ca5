#!/usr/bin/env bash
# Idle authenticated event streams (GET /v1/events over TLS) held by one daemon: RSS per stream,
# and the time from an event's commit to its arrival on every stream (p50/p99).
#
#   loadtest/sse_streams.sh [streams=18000] [events=5] [source_addresses=200]
#
# Starts PostgreSQL, PgBouncer and Redis (scripts/services.sh) in a temporary directory, one
# account with one key, and the daemon; holds the streams with gpuproxy-connhold --sse (spread
# over child processes and 127.0.x.y source addresses), reads RSS before and after, then commits
# `events` events to the account's log one second apart the way a writer does (one transaction
# that takes the next seq, then a notice on the events channel) and reports, over all streams,
# how long each took from its commit time (`at`, in milliseconds) to its arrival.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
. scripts/services.sh
. loadtest/setup.sh
ensure_cargo
N=${1:-18000}
EVENTS=${2:-5}
SOURCES=${3:-200}

cargo build --release --locked --bin gpuproxyd --bin gpuproxy-connhold >/dev/null
BIN="$CARGO_TARGET_DIR/release"
load_setup sseload 25532 26532 26479 "$BIN/gpuproxyd"
KEY=$(load_key "$BIN/gpuproxyd" streams)

# one account holds every stream: caps raised; rate limits off (the opening burst is not what
# is measured); pings every 30 s as shipped
"$BIN/gpuproxyd" serve --https-listen 127.0.0.1:18543 --metrics-listen 127.0.0.1:19190 --http-listen off \
  --set "server.tls_cert=\"$WORK/c.pem\"" --set "server.tls_key=\"$WORK/k.pem\"" \
  --set log.access_log=false --set ratelimit.enabled=false \
  --set connections.max_per_ip=100000 --set connections.idle_timeout_ms=600000 \
  --set events.max_streams_per_account=1000000 >/dev/null &
DPID=$!
for _ in $(seq 200); do svc_port_busy 18543 && break; sleep 0.05; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$DPID/status"; }
gauge() { curl -s http://127.0.0.1:19190/metrics | awk -v m="$1" '$1 == m {print $2}'; }

# warm the allocator, TLS and the auth cache with a few streams first, so the baseline is fair
"$BIN/gpuproxy-connhold" --target 127.0.0.1:18543 --tls --sse --path /v1/events \
  --header "Authorization: Bearer $KEY" --connections 200 --hold-secs 1 >/dev/null
sleep 2
BEFORE=$(rss)
HOLD=$(( 60 + N / 300 + EVENTS * 2 ))
"$BIN/gpuproxy-connhold" --target 127.0.0.1:18543 --tls --sse --path /v1/events \
  --header "Authorization: Bearer $KEY" --connections "$N" --sources "$SOURCES" \
  --per-process 9000 --hold-secs "$HOLD" > "$WORK/hold.txt" &
HOLDER=$!
for _ in $(seq 1200); do grep -q '"event":"held"' "$WORK/hold.txt" && break; sleep 0.1; done
sleep 3
AFTER=$(rss)
OPEN=$(gauge gpuproxy_event_streams)
head -1 "$WORK/hold.txt"
echo "streams=$N open(gpuproxy_event_streams)=$OPEN"
echo "RSS before=${BEFORE} KiB after=${AFTER} KiB"
awk -v b="$BEFORE" -v a="$AFTER" -v n="$OPEN" \
  'BEGIN { printf "RSS per idle TLS event stream: %.0f bytes (%.2f KiB)\n", (a-b)*1024/n, (a-b)/n }'

# events, committed as a writer does, each announced on the events channel
for i in $(seq "$EVENTS"); do
  psql -q "$MIGRATE_DATABASE_URL" -c "WITH a AS (UPDATE accounts SET event_seq = event_seq + 1 \
    WHERE name = 'streams' RETURNING id, event_seq) INSERT INTO account_events \
    (account_id, seq, type, data) SELECT id, event_seq, 'budget.warning', '{\"load\": $i}' FROM a" >/dev/null
  ACCOUNT=$(psql -qtA "$MIGRATE_DATABASE_URL" -c "SELECT id FROM accounts WHERE name = 'streams'")
  redis-cli -p 26479 PUBLISH gpx:events "$ACCOUNT" >/dev/null
  sleep 1
done
echo "events delivered (gpuproxy_events_delivered_total): $(gauge gpuproxy_events_delivered_total)"
wait "$HOLDER" || true
tail -1 "$WORK/hold.txt" | sed 's/"poke_requests"/"events_timed"/'
echo "(p50_ms / p99_ms / max_ms above: commit to arrival over every stream and event)"
