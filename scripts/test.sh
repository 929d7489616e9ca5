#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format and lint checks, unit and integration
# tests (the integration tests start their own PostgreSQL, PgBouncer and Redis on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
# the checks of the operations files run each ecosystem's own tool
DEBIAN_PACKAGES+=(
  haproxy        # haproxy -c, and the HAProxy-in-front integration test
  prometheus     # promtool check rules / test rules
  systemd        # systemd-analyze verify
  python3        # scripts/modgraph.py: the module layers
  python3-venv   # tests/schemathesis.rs installs schemathesis into a virtual environment
)
install_debian_packages
ensure_cargo

echo "==> module layers and file cycles (scripts/modgraph.py)"
python3 scripts/modgraph.py src
python3 scripts/modgraph.py --files src
echo "==> buf lint and buf breaking (proto/)"
buf=$(ensure_buf)
"$buf" lint proto
# no change may break what was published: the protos as first committed, and as of the commit
# before this one (a clone without that history skips the comparison it cannot make)
first=$(git log --diff-filter=A --format=%H -- proto/buf.yaml 2>/dev/null | tail -1)
for ref in $first HEAD~1; do
  if git cat-file -e "$ref:proto/buf.yaml" 2>/dev/null; then
    "$buf" breaking proto --against ".git#ref=$(git rev-parse "$ref"),subdir=proto"
  else
    echo "(no protos at $ref to compare with)"
  fi
done
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --all-targets --locked
