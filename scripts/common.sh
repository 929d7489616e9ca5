# Shared by scripts/demo.sh and scripts/test.sh: installs what they need on Debian.
# shellcheck shell=bash

# Debian packages the demo and the tests use (each named by what it provides).
DEBIAN_PACKAGES=(
  postgresql     # initdb, postgres, pg_ctl, psql (tests and demo start their own server)
  pgbouncer      # transaction pooling in front of PostgreSQL
  redis-server   # cache and coordination
  openssl        # the demo's self-signed certificate
  procps         # pgrep/ps used by tests
  gcc            # C parts of mimalloc and ring
  wrk            # loadtest/ scripts
)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_debian_packages() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    # Packages such as haproxy and prometheus start a system service on install (on :9090, where
    # the demo's metrics go): the tests and the demo run their own, so none is started here.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
      as_root chmod 755 "$policy"
      created=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ -n "$created" ]; then as_root rm -f "$policy"; fi
  fi
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust >= 1.88 with rustup (https://rustup.rs), then run this again" >&2
    exit 1
  fi
  # One build cache outside the checkout, so fresh clones build incrementally.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gpuproxyd-target}"
}

# buf (lint and breaking-change checks of proto/), from npm at a pinned version, cached under
# ~/.cache; prints the binary's path. npm comes with Debian's nodejs/npm when it is missing.
BUF_VERSION=1.75.0
ensure_buf() {
  local dir="$HOME/.cache/gpuproxyd-buf/$BUF_VERSION"
  if [ ! -x "$dir/node_modules/.bin/buf" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      local DEBIAN_PACKAGES=(nodejs npm)
      install_debian_packages >&2
    fi
    mkdir -p "$dir"
    npm install --silent --no-audit --no-fund --prefix "$dir" "@bufbuild/buf@$BUF_VERSION" >&2
  fi
  echo "$dir/node_modules/.bin/buf"
}
