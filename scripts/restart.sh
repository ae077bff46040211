#!/usr/bin/env bash
# A rolling restart, measured (docs/operations.md): N connections on gateway A, SIGTERM to A,
# every client moves to gateway B after a random pause of up to JITTER_MS (what the Rust
# client does after 1012). Once with A closing its connections over WS_SHUTDOWN_SPREAD
# seconds (the ramp), once with a spread of 0 (all at once, as before the ramp); ROUNDS of
# each, alternating. Both gateways pinned to SERVER_CPU, the clients to CLIENT_CPU.
#
# Usage: scripts/restart.sh      Environment: N=10000 SPREAD=5 JITTER_MS=1000 ROUNDS=2
#        PORT_A=3971 PORT_B=3972 SERVER_CPU=0 CLIENT_CPU=1 OUT=${CARGO_TARGET_DIR:-target}/restart
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
N=${N:-10000}
SPREAD=${SPREAD:-5}
JITTER_MS=${JITTER_MS:-1000}
ROUNDS=${ROUNDS:-2}
PORT_A=${PORT_A:-3971}
PORT_B=${PORT_B:-3972}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$TARGET/restart}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
cargo build --release -p svc-ws --bin svc-ws
BIN=$TARGET/release/svc-ws

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT INT TERM

# gateway PORT SPREAD LOG: starts a gateway pinned to the server core (its PID in $STARTED)
# and waits until it is ready.
gateway() {
    WS_GATEWAY_ANONYMOUS=true WS_SHUTDOWN_SPREAD=$2 PORT=$1 \
        taskset -c "$SERVER_CPU" "$BIN" serve >"$3" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$1/health/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "restart.sh: the gateway on $1 did not start; see $3" >&2
    exit 1
}

for round in $(seq "$ROUNDS"); do
    for spread in "$SPREAD" 0; do
        gateway "$PORT_A" "$spread" "$OUT/a.log"
        a=$STARTED
        gateway "$PORT_B" "$SPREAD" "$OUT/b.log"
        echo "== round $round: WS_SHUTDOWN_SPREAD=$spread on node A, $N connections"
        taskset -c "$CLIENT_CPU" "$BIN" bench restart --url "ws://127.0.0.1:$PORT_A" \
            --to "ws://127.0.0.1:$PORT_B" -n "$N" --stop-pid "$a" --jitter-ms "$JITTER_MS" \
            --connect-concurrency 200 --json | tee "$OUT/restart-spread$spread-$round.txt" | grep -v '^{'
        wait "$a" 2>/dev/null || true
        cleanup
    done
done
python3 - "$OUT" "$ROUNDS" "$SPREAD" <<'PY'
import json, sys
out, rounds, spread = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print("| WS_SHUTDOWN_SPREAD | round | last close (ms) | all back (ms) | busiest second on B | busiest 100 ms on B | moved | codes |")
print("|---|---|---|---|---|---|---|---|")
for s in (spread, "0"):
    for r in range(1, rounds + 1):
        line = [l for l in open(f"{out}/restart-spread{s}-{r}.txt") if l.startswith("{")][-1]
        d = json.loads(line)
        print(f"| {s} s | {r} | {d['closes_ms']['last']:.0f} | {d['back_ms']['last']:.0f} | "
              f"{d['peak_handshakes_per_s']} | {d['peak_handshakes_per_100ms']} | {d['moved']}/{d['connections']} | {d['close_codes']} |")
PY
