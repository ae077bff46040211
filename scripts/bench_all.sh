#!/usr/bin/env bash
# Measures every server in one run, as docs/benchmarks.md reports them: idle once per server
# (plus plain_axum with a 4 KiB and a 1 KiB read buffer, the calibration of DESIGN §3), then
# REPS alternating rounds of fanout and echo, then prints the Markdown tables.
#
# Usage: scripts/bench_all.sh
# Environment: SERVERS="plain_axum uws bench_app"  REPS=3  OUT=${CARGO_TARGET_DIR:-target}/bench/<UTC timestamp>
#              BENCH_APP_BIN=<prebuilt bench_app binary, optional>
#              and every parameter of scripts/bench.sh (PORT, FANOUT_N, ...).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVERS=${SERVERS:-"plain_axum uws bench_app"}
REPS=${REPS:-3}
BASE=${OUT:-$TARGET/bench/$(date -u +%Y%m%dT%H%M%SZ)}
failed=0

run() { # run SERVER [ARGS...] with WORKLOADS and OUT set by the caller
    local server=$1
    if [ "$server" = bench_app ] && [ -n "${BENCH_APP_BIN:-}" ]; then
        SERVER_BIN=$BENCH_APP_BIN scripts/bench.sh "$@" || failed=1
    else
        scripts/bench.sh "$@" || failed=1
    fi
}

for server in $SERVERS; do
    WORKLOADS=idle OUT=$BASE/idle run "$server"
done
case " $SERVERS " in
    *" plain_axum "*)
        WORKLOADS=idle OUT=$BASE/idle run plain_axum --read-buffer-size 4096
        WORKLOADS=idle OUT=$BASE/idle run plain_axum --read-buffer-size 1024
        ;;
esac
for rep in $(seq "$REPS"); do
    for server in $SERVERS; do
        WORKLOADS="fanout echo" OUT=$BASE/rep$rep run "$server"
    done
done

echo
echo "== tables ($BASE)"
dirs=("$BASE/idle")
for rep in $(seq "$REPS"); do dirs+=("$BASE/rep$rep"); done
python3 scripts/bench_table.py "${dirs[@]}"
exit "$failed"
