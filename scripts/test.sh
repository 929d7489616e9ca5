#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format and lint checks, unit and integration
# tests (the integration tests start their own PostgreSQL, PgBouncer and Redis on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
install_debian_packages
ensure_cargo

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --all-targets --locked
