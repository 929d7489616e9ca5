#!/usr/bin/env bash
# The scale-out deployment on one machine, until Ctrl-C: HAProxy (the shipped haproxy/haproxy.cfg:
# TCP, PROXY v2, TLS health checks on /ready) in front of N daemons (default 3) that share
# PostgreSQL (through PgBouncer), Redis (a master and a replica under Sentinel; REDIS_URL is the
# Sentinel URL) and the sandbox providers, all from Debian's packages on loopback ports:
#
#   HAProxy       127.0.0.1:8443 (clients), stats http://127.0.0.1:8404/stats
#   daemons       127.0.0.1:8451.. (HTTPS, PROXY v2 from HAProxy only), metrics 127.0.0.1:9091..
#   PostgreSQL    :55432, PgBouncer :56432, Redis master :56379, replica :56380, Sentinel :56381
#   sandbox       Vast.ai :18081, io.net :18082
#
#   scripts/cluster.sh [--daemons N]
#
# Prints an API key and curl lines. Other scripts source it for cluster_start/cluster_stop (the
# fault drills in loadtest/), with extra daemon flags in CLUSTER_DAEMON_ARGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/common.sh
. scripts/services.sh

CLUSTER_DIR="$PWD/demo-data/cluster"
CLUSTER_FRONT=8443
CLUSTER_STATS=8404
CLUSTER_PIDS=()
CLUSTER_DAEMON_PIDS=()
CLUSTER_DAEMON_ARGS=("${CLUSTER_DAEMON_ARGS[@]+"${CLUSTER_DAEMON_ARGS[@]}"}")
# haproxy is not in the shared list: only this script and the tests need it
DEBIAN_PACKAGES+=(haproxy)

cluster_stop() {
  # the daemons first (they drain), then what they depend on
  for pid in "${CLUSTER_DAEMON_PIDS[@]+"${CLUSTER_DAEMON_PIDS[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_DAEMON_PIDS[@]+"${CLUSTER_DAEMON_PIDS[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]+"${CLUSTER_PIDS[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  services_stop
}

# The shipped HAProxy configuration with this machine's addresses and without what needs root.
cluster_haproxy_cfg() {
  local n="$1" servers="" i
  for i in $(seq "$n"); do servers+="    server gpx$i 127.0.0.1:$((8450 + i))\n"; done
  grep -vE '^\s*(chroot|user |group |stats socket|fd-hard-limit|server gpx2)' haproxy/haproxy.cfg |
    sed -e "s/bind :443/bind 127.0.0.1:$CLUSTER_FRONT/" \
      -e "s/bind 127.0.0.1:8404/bind 127.0.0.1:$CLUSTER_STATS/" \
      -e "s/maxconn 250000/maxconn 8000/" \
      -e "s|^\s*server gpx1 .*|$servers|"
}

# Starts everything; sets API_KEY, CLUSTER_URL and the exports of services_start.
cluster_start() {
  local n="$1" i
  install_debian_packages
  ensure_cargo
  echo "==> building gpuproxyd and gpuproxy-sandbox (release)"
  cargo build --release --locked --bin gpuproxyd --bin gpuproxy-sandbox
  local bin="$CARGO_TARGET_DIR/release/gpuproxyd"
  local sandbox="$CARGO_TARGET_DIR/release/gpuproxy-sandbox"
  mkdir -p "$CLUSTER_DIR/certs"
  for p in "$CLUSTER_FRONT" "$CLUSTER_STATS" 18081 18082 56380 56381 $(seq 8451 $((8450 + n))) $(seq 9091 $((9090 + n))); do
    if svc_port_busy "$p"; then echo "port $p is in use (the demo or another cluster running?)" >&2; exit 1; fi
  done
  if [ ! -s "$CLUSTER_DIR/certs/server.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
      -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout "$CLUSTER_DIR/certs/server.key" -out "$CLUSTER_DIR/certs/server.crt" 2>/dev/null
  fi
  echo "==> PostgreSQL :55432, PgBouncer :56432, Redis :56379"
  services_start "$CLUSTER_DIR/services" 55432 56432 56379
  trap cluster_stop EXIT
  # a signal ends the script through its EXIT trap (which stops everything it started)
  trap 'exit 130' INT
  trap 'exit 143' TERM

  echo "==> Redis replica :56380 and Sentinel :56381 (promotes the replica 1 s after the master stops answering)"
  setsid redis-server --port 56380 --bind 127.0.0.1 --save "" --appendonly no --dir "$SVC_DIR" \
    --replicaof 127.0.0.1 56379 >"$SVC_DIR/redis-replica.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  mkdir -p "$SVC_DIR/sentinel"
  cat >"$SVC_DIR/sentinel/sentinel.conf" <<CONF
port 56381
bind 127.0.0.1
dir $SVC_DIR/sentinel
sentinel monitor gpx 127.0.0.1 56379 1
sentinel down-after-milliseconds gpx 1000
sentinel failover-timeout gpx 10000
CONF
  setsid redis-server "$SVC_DIR/sentinel/sentinel.conf" --sentinel >"$SVC_DIR/sentinel.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  for _ in $(seq 100); do svc_port_busy 56381 && break; sleep 0.1; done
  export REDIS_URL="redis-sentinel://127.0.0.1:56381?sentinelServiceName=gpx"

  [ -s "$CLUSTER_DIR/jwt-secret" ] || openssl rand -hex 32 >"$CLUSTER_DIR/jwt-secret"
  JWT_SECRET="$(cat "$CLUSTER_DIR/jwt-secret")"
  export JWT_SECRET
  "$bin" migrate >/dev/null
  demo_api_key "$bin" "$SVC_DIR/cluster-api-key" cluster

  echo "==> sandbox providers: Vast.ai :18081, io.net :18082"
  export VASTAI_API_KEY=demo-vast-key IONET_API_KEY=demo-ionet-key
  "$sandbox" --vast-listen 127.0.0.1:18081 --ionet-listen 127.0.0.1:18082 \
    --vast-key "$VASTAI_API_KEY" --ionet-key "$IONET_API_KEY" >/dev/null &
  CLUSTER_PIDS+=($!)
  for _ in $(seq 100); do svc_port_busy 18082 && break; sleep 0.05; done

  # a daemon told to stop answers /ready 503 for drain_delay_ms while it still serves: longer
  # than HAProxy needs to take it out (inter 1s x fall 2 in haproxy/haproxy.cfg, plus a check)
  echo "==> $n daemons on 127.0.0.1:8451..$((8450 + n)) (PROXY v2 from HAProxy)"
  for i in $(seq "$n"); do
    setsid "$bin" serve --config config/gpuproxyd.toml \
      --https-listen "127.0.0.1:$((8450 + i))" --metrics-listen "127.0.0.1:$((9090 + i))" \
      --set "server.tls_cert=\"$CLUSTER_DIR/certs/server.crt\"" \
      --set "server.tls_key=\"$CLUSTER_DIR/certs/server.key\"" \
      --set proxy_protocol.https=true \
      --set server.drain_delay_ms=3000 \
      --set 'providers.vastai.base_url="http://127.0.0.1:18081"' \
      --set 'providers.ionet.base_url="http://127.0.0.1:18082"' \
      "${CLUSTER_DAEMON_ARGS[@]+"${CLUSTER_DAEMON_ARGS[@]}"}" >"$SVC_DIR/daemon-$i.log" 2>&1 &
    CLUSTER_DAEMON_PIDS+=($!)
  done

  echo "==> HAProxy :$CLUSTER_FRONT (haproxy/haproxy.cfg), stats :$CLUSTER_STATS"
  cluster_haproxy_cfg "$n" >"$SVC_DIR/haproxy.cfg"
  haproxy -c -q -f "$SVC_DIR/haproxy.cfg"
  setsid haproxy -db -f "$SVC_DIR/haproxy.cfg" >"$SVC_DIR/haproxy.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  for _ in $(seq 150); do
    [ "$(cluster_servers_up)" = "$n" ] && break
    sleep 0.2
  done
  [ "$(cluster_servers_up)" = "$n" ] || { echo "HAProxy does not see $n daemons up; see $SVC_DIR/*.log" >&2; exit 1; }
  CLUSTER_URL="https://localhost:$CLUSTER_FRONT"
}

# How many daemons HAProxy has in rotation (status UP on its stats page).
cluster_servers_up() {
  curl -s "http://127.0.0.1:$CLUSTER_STATS/stats;csv" | awk -F, '$1 == "gpuproxyd" && $2 ~ /^gpx/ && $18 == "UP"' | wc -l
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  N=3
  if [ "${1:-}" = "--daemons" ]; then N="${2:?--daemons N}"; fi
  cluster_start "$N"
  cat <<MSG

$N gpuproxyd daemons behind HAProxy, sharing PostgreSQL (via PgBouncer), Redis (Sentinel) and the
sandbox providers. Your API key (admin scope):

  $API_KEY

Try, from another terminal:

  curl --cacert demo-data/cluster/certs/server.crt -H "Authorization: Bearer $API_KEY" $CLUSTER_URL/v1/account
  curl --cacert demo-data/cluster/certs/server.crt -H "Authorization: Bearer $API_KEY" "$CLUSTER_URL/v1/offers?limit=3"
  curl -s "http://127.0.0.1:$CLUSTER_STATS/stats;csv" | cut -d, -f1,2,18     # HAProxy's view
  kill -TERM \$(pgrep -f 'https-listen 127.0.0.1:8451')                       # drain one daemon
  redis-cli -p 56379 shutdown nosave                                          # fail the Redis master over

Ctrl-C stops everything.

MSG
  wait "${CLUSTER_DAEMON_PIDS[@]}" || true
fi
