#!/usr/bin/env bash
# One fan-out run against a server started under `perf stat`, to see what a fan-out costs in
# system calls: how many writes carried the 500,000 deliveries (fewer = more coalescing),
# and the server's user and system CPU time (whole process life, connection set-up included).
#
# Usage: scripts/fanout_stat.sh SERVER_CMD...      e.g.
#   scripts/fanout_stat.sh "${CARGO_TARGET_DIR:-target}"/release/examples/bench_app --port 3900
#   LD_PRELOAD=$PWD/bench/uws/glibc_compat.so scripts/fanout_stat.sh node bench/uws/server.js --port 3900
# Environment: PORT=3900 (must match the server's), FANOUT_ARGS (default: the issue's
# parameters), SERVER_CPU=0, CLIENT_CPU=1. Needs `perf` with syscall tracepoints (root).
# The server must exit on SIGINT.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PORT=${PORT:-3900}
FANOUT_ARGS=${FANOUT_ARGS:-"-n 10000 -m 50 --interval-ms 20 --size 128"}
OUT=$(mktemp -d)
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build -q --release -p svc-ws --bin svc-ws
EVENTS=syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait
setsid taskset -c "${SERVER_CPU:-0}" perf stat -e "$EVENTS" -o "$OUT/stat" -- "$@" >"$OUT/server.log" 2>&1 &
STAT=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/stats" >/dev/null && break
    sleep 0.1
done
# shellcheck disable=SC2086 # FANOUT_ARGS is a list of arguments
taskset -c "${CLIENT_CPU:-1}" "$TARGET/release/svc-ws" bench fanout --url "ws://127.0.0.1:$PORT" $FANOUT_ARGS \
    | grep -E '^  (latency|deliveries|missing)' || true
sleep 0.5
# perf stat's child is the server: signal it, then let perf print.
pkill -INT -P "$STAT" || true
wait "$STAT" || true
grep -E 'syscalls|seconds (user|sys)' "$OUT/stat"
rm -rf "$OUT"
