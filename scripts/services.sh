# PostgreSQL, PgBouncer (transaction pooling) and Redis from Debian's packages, in a directory of
# their own on ports of their own: for scripts/demo.sh and the loadtest/ scripts (the Rust tests
# have their own harness, tests/support/services.rs).
#
#   services_start DIR PG_PORT PGBOUNCER_PORT REDIS_PORT
#
# exports DATABASE_URL (through PgBouncer), MIGRATE_DATABASE_URL (direct) and REDIS_URL, and
# registers services_stop to run on exit. Run as root, PostgreSQL and PgBouncer run as `postgres`
# (they refuse root); DIR then moves under /tmp when `postgres` cannot reach it.
# shellcheck shell=bash

SVC_DB_USER=gpuproxy
SVC_DB_NAME=gpuproxy
SVC_PIDS=()

svc_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

svc_as() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

services_stop() {
  for pid in "${SVC_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # runuser may not pass the signal on: stop PgBouncer by its own pid file
  kill "$(cat "${SVC_DIR:-/nonexistent}/pgbouncer.pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "${SVC_DIR:-}" ] && svc_as "$SVC_PG_BIN/pg_ctl" -D "$SVC_DIR/pg" stop -m fast -w >/dev/null 2>&1 || true
}

# PgBouncer alone (services_start runs it; fault drills stop it with pgbouncer_stop and run it
# again with this).
pgbouncer_start() {
  if [ "$(id -u)" = 0 ]; then
    setsid runuser -u postgres -- /usr/sbin/pgbouncer "$SVC_DIR/pgbouncer.ini" >/dev/null 2>&1 &
  else
    setsid /usr/sbin/pgbouncer "$SVC_DIR/pgbouncer.ini" >/dev/null 2>&1 &
  fi
  SVC_PIDS+=($!)
}

# Stops PgBouncer (by its pid file: runuser may not pass a signal on) and waits until it is gone.
pgbouncer_stop() {
  local pid
  pid="$(cat "$SVC_DIR/pgbouncer.pid" 2>/dev/null)" || return 0
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# The `demo` account and an admin API key for it, made once per database: the key's secret is
# shown only at creation, so it is kept in FILE (next to the database it belongs to). Sets API_KEY.
#   demo_api_key GPUPROXYD_BINARY FILE LABEL
demo_api_key() {
  local bin="$1" file="$2" label="$3"
  if [ ! -s "$file" ]; then
    "$bin" accounts show demo >/dev/null 2>&1 || "$bin" accounts create --name demo --daily-budget-usd 50 >/dev/null
    "$bin" keys create --account demo --scope user --scope admin --label "$label" --json |
      sed -n 's/^  "token": "\(gpx_[A-Za-z0-9_]*\)".*/\1/p' >"$file"
  fi
  API_KEY="$(cat "$file")"
}

services_start() {
  SVC_DIR="$1"
  local pg_port="$2" bouncer_port="$3" redis_port="$4"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$(dirname "$SVC_DIR")"; then
    SVC_DIR="/tmp/gpuproxyd-$(basename "$SVC_DIR")-$(echo "$1" | md5sum | cut -c1-8)"
  fi
  mkdir -p "$SVC_DIR"
  [ "$(id -u)" = 0 ] && chown postgres: "$SVC_DIR"
  for p in "$pg_port" "$bouncer_port" "$redis_port"; do
    if svc_port_busy "$p"; then
      echo "port $p is in use (another run still going?)" >&2
      return 1
    fi
  done
  SVC_PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  trap services_stop EXIT

  if [ ! -s "$SVC_DIR/pg/PG_VERSION" ]; then
    svc_as "$SVC_PG_BIN/initdb" -D "$SVC_DIR/pg" -U "$SVC_DB_USER" --auth=trust -E UTF8 \
      --no-instructions >/dev/null
  fi
  svc_as "$SVC_PG_BIN/pg_ctl" -D "$SVC_DIR/pg" -l "$SVC_DIR/postgres.log" -w start \
    -o "-p $pg_port -k $SVC_DIR -c listen_addresses=127.0.0.1" >/dev/null
  local psql=("$SVC_PG_BIN/psql" -h 127.0.0.1 -p "$pg_port" -U "$SVC_DB_USER" -d postgres)
  "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$SVC_DB_NAME'" | grep -q 1 ||
    "${psql[@]}" -qc "CREATE DATABASE $SVC_DB_NAME"

  cat >"$SVC_DIR/pgbouncer.ini" <<INI
[databases]
$SVC_DB_NAME = host=127.0.0.1 port=$pg_port dbname=$SVC_DB_NAME
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $SVC_DIR/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 10000
ignore_startup_parameters = extra_float_digits,options
logfile = $SVC_DIR/pgbouncer.log
pidfile = $SVC_DIR/pgbouncer.pid
INI
  # recover within a second of PostgreSQL being back: the shipped settings marked "recovery"
  awk '/^; recovery/ { take = 1; next } take && !/^;/ { print; take = 0 }' \
    config/pgbouncer.ini >>"$SVC_DIR/pgbouncer.ini"
  echo "\"$SVC_DB_USER\" \"\"" >"$SVC_DIR/userlist.txt"
  [ "$(id -u)" = 0 ] && chown postgres: "$SVC_DIR/pgbouncer.ini" "$SVC_DIR/userlist.txt"
  pgbouncer_start
  # setsid: Ctrl-C on the terminal reaches the daemon, not the services (services_stop ends them
  # after the daemon has drained).
  setsid redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$SVC_DIR" >"$SVC_DIR/redis.log" 2>&1 &
  SVC_PIDS+=($!)
  for p in "$bouncer_port" "$redis_port"; do
    for _ in $(seq 100); do svc_port_busy "$p" && break; sleep 0.1; done
    svc_port_busy "$p" || { echo "a service did not start on port $p; see $SVC_DIR/*.log" >&2; return 1; }
  done
  export DATABASE_URL="postgres://$SVC_DB_USER@127.0.0.1:$bouncer_port/$SVC_DB_NAME"
  export MIGRATE_DATABASE_URL="postgres://$SVC_DB_USER@127.0.0.1:$pg_port/$SVC_DB_NAME"
  export REDIS_URL="redis://127.0.0.1:$redis_port"
}
