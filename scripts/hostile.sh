#!/usr/bin/env bash
# The hostile-client figures of docs/security.md. Server pinned to one core, the load
# generator (`svc-ws bench hostile`, `svc-ws bench fanout`) to the other.
#
#   1. stalled:  N connections to the gateway (`svc-ws serve`) that send part of an upgrade
#                request, then nothing: when the server closes each (WS_HANDSHAKE_TIMEOUT).
#   2. announce: N upgraded connections to the gateway, idle, then each announcing a 1 MiB
#                frame and sending one byte a second: server RSS per connection, before and
#                after, in the same run.
#   3. flood:    fan-out p99 of bench_app (FANOUT_N subscribers) alone, and with one more
#                connection sending FLOOD_RATE echo requests per second; ROUNDS of each,
#                alternating, medians printed.
#
# Usage: scripts/hostile.sh [stalled] [announce] [flood]   (default: all three)
# Environment: N=10000  FANOUT_N=10000  FLOOD_RATE=100000  ROUNDS=3  PORT=3960
#              SERVER_CPU=0  CLIENT_CPU=1  OUT=${CARGO_TARGET_DIR:-target}/hostile
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
N=${N:-10000}
FANOUT_N=${FANOUT_N:-10000}
FLOOD_RATE=${FLOOD_RATE:-100000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-3960}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$TARGET/hostile}
MODES=${*:-stalled announce flood}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

cargo build --release -p svc-ws --bin svc-ws
cargo build --release -p svc-infra --example bench_app
LOADGEN=(taskset -c "$CLIENT_CPU" "$TARGET/release/svc-ws" bench)
URL=ws://127.0.0.1:$PORT

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT INT TERM

# start_server HEALTH_PATH CMD...: starts CMD pinned to the server core, waits for HEALTH_PATH.
start_server() {
    local health=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$PORT$health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "hostile.sh: the server did not start; see $OUT/server.log" >&2
    exit 1
}

gateway() {
    start_server /health env PORT="$PORT" WS_GATEWAY_ANONYMOUS=true \
        "$TARGET/release/svc-ws" serve
}

for mode in $MODES; do
    case "$mode" in
        stalled)
            echo "== stalled: $N partial upgrade requests to the gateway (WS_HANDSHAKE_TIMEOUT 10 s)"
            gateway
            "${LOADGEN[@]}" hostile --url "$URL" --mode stalled -n "$N" --server-pid "$SERVER_PID" \
                --path '/ws?user=s{i}' --connect-concurrency 512 --wait-secs 60 --json \
                | tee "$OUT/stalled.txt"
            stop_server
            ;;
        announce)
            echo "== announce: $N connections to the gateway, idle, then 1 MiB announced + 1 byte/s"
            gateway
            "${LOADGEN[@]}" hostile --url "$URL" --mode announce -n "$N" --server-pid "$SERVER_PID" \
                --path '/ws?user=a{i}' --settle-secs 5 --json | tee "$OUT/announce.txt"
            stop_server
            ;;
        flood)
            echo "== flood: fan-out p99 to $FANOUT_N alone and beside a flood of $FLOOD_RATE requests/s"
            for round in $(seq "$ROUNDS"); do
                for with in alone flood; do
                    start_server /stats "$TARGET/release/examples/bench_app" --port "$PORT"
                    flooder=
                    if [ "$with" = flood ]; then
                        "${LOADGEN[@]}" hostile --url "$URL" --mode flood --rate "$FLOOD_RATE" \
                            --secs 30 --json >"$OUT/flood-$round.txt" 2>&1 &
                        flooder=$!
                        sleep 1
                    fi
                    "${LOADGEN[@]}" fanout --url "$URL" -n "$FANOUT_N" --json \
                        | tail -1 >"$OUT/fanout-$with-$round.json"
                    [ -n "$flooder" ] && { kill "$flooder" 2>/dev/null || true; wait "$flooder" 2>/dev/null || true; }
                    stop_server
                    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], 'p99', d['latency']['p99_ms'], 'ms, lost', d.get('missing'))" \
                        "$OUT/fanout-$with-$round.json" "$round" "$with"
                done
            done
            python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for with_ in ("alone", "flood"):
    p99 = [json.load(open(f"{out}/fanout-{with_}-{r}.json"))["latency"]["p99_ms"] for r in range(1, rounds + 1)]
    med[with_] = statistics.median(p99)
    print(f"fan-out p99 {with_}: {p99} ms, median {med[with_]} ms")
print(f"flood raises the median p99 by {100 * (med['flood'] / med['alone'] - 1):.1f}%")
EOF
            ;;
        *)
            echo "hostile.sh: unknown mode $mode (stalled, announce, flood)" >&2
            exit 2
            ;;
    esac
done
