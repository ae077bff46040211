#!/usr/bin/env bash
# A heap profile of a server holding N idle connections, broken down by owner
# (scripts/heap_table.py): the byte-by-byte table of docs/benchmarks.md.
#
# Usage: scripts/heap_profile.sh SERVER_BIN [N] [PATH]
#   SERVER_BIN: bench_app (or the gateway: `svc-ws`, run as `svc-ws serve`), prebuilt, with
#               line tables (the release profile has them)
#   N:          idle connections (default 10000)
#   PATH:       the WebSocket path the connections open (default /ws/bench-idle-{i}, as
#               `svc-ws bench idle`; the gateway's is /ws?user=bench-idle-{i})
# Environment: PORT=3901, LOADGEN_BIN=target/release/svc-ws, OUT=target/heap.
#
# The server runs under heaptrack (Debian's package; installed here if missing) pinned to
# CPU 0, the load generator on CPU 1; once the connections are up and settled the server is
# killed with SIGKILL, so what heaptrack calls "leaked" is exactly what was live then.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER_BIN=$1
N=${2:-10000}
WS_PATH=${3:-}
PORT=${PORT:-3901}
LOADGEN=${LOADGEN_BIN:-$ROOT/target/release/svc-ws}
OUT=${OUT:-$ROOT/target/heap}
mkdir -p "$OUT"
command -v heaptrack >/dev/null || apt-get install -y -qq heaptrack >/dev/null
ulimit -n "$(( N + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

name=$(basename "$SERVER_BIN")
profile=$OUT/$name.$N
rm -f "$profile".zst
stats=/stats
case "$name" in
    svc-ws*) args=(serve --host 127.0.0.1 --port "$PORT"); stats=/ws/stats ;;
    *) args=(--port "$PORT") ;;
esac
taskset -c 0 heaptrack -o "$profile" "$SERVER_BIN" "${args[@]}" >"$OUT/$name.log" 2>&1 &
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT$stats" >/dev/null 2>&1 && break
    sleep 0.1
done
pid=$(pgrep -f "^$SERVER_BIN" | head -1)
[ -n "$pid" ] || { echo "heap_profile.sh: the server did not start:" >&2; cat "$OUT/$name.log" >&2; exit 1; }
path_args=(--stats-path "$stats")
[ -n "$WS_PATH" ] && path_args+=(--path "$WS_PATH")
taskset -c 1 "$LOADGEN" bench idle --url "ws://127.0.0.1:$PORT" "${path_args[@]}" -n "$N" \
    --hold-secs 60 --server-pid "$pid" >"$OUT/$name.$N.idle.out" 2>&1 &
loadgen=$!
# Up and settled: the load generator reads the RSS after its settle pause, then holds.
for _ in $(seq 600); do
    grep -q "holding" "$OUT/$name.$N.idle.out" 2>/dev/null && break
    kill -0 "$loadgen" 2>/dev/null || { cat "$OUT/$name.$N.idle.out" >&2; exit 1; }
    sleep 0.1
done
sleep 1
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill -9 "$pid"
wait "$loadgen" 2>/dev/null || true
for _ in $(seq 100); do grep -q "Heaptrack finished" "$OUT/$name.log" && break; sleep 0.2; done
grep "server RSS" "$OUT/$name.$N.idle.out" || true
echo "server RSS under heaptrack at $N connections, when killed: $rss KiB"
python3 "$ROOT/scripts/heap_table.py" "$profile.zst" "$N"
