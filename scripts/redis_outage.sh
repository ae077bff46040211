#!/usr/bin/env bash
# Cross-node resumption after Redis outages, for docs/scaling.md: two nodes joined by
# RedisBackplane on a private redis-server (started by the example on a free port; the
# machine's own Redis is not touched). For a hang (SIGSTOP ... SIGCONT) and a kill (SIGKILL,
# then a new redis-server on the same port), 5 s and 60 s long, it prints when each node
# noticed, how slow local delivery got meanwhile, and how long after Redis answered again a
# broadcast crossed nodes (crates/svc-infra/examples/redis_outage.rs).
#
# Usage: scripts/redis_outage.sh            (about 7 minutes with the defaults)
# Environment: ROUNDS=3 (outages of each kind and length), LENGTHS="5 60" (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
ROUNDS=${ROUNDS:-3}
command -v redis-server >/dev/null || { echo "redis-server is not on PATH (scripts/setup.sh installs it)" >&2; exit 1; }
cargo build -q --release -p svc-infra --features redis --example redis_outage
for outage in stop kill; do
    for seconds in ${LENGTHS:-5 60}; do
        "$TARGET/release/examples/redis_outage" "$outage" "$seconds" "$ROUNDS"
    done
done
