#!/usr/bin/env bash
# What N idle WebSocket connections cost the kernel (memory RSS does not show): the slab
# caches that grow while bench_app holds them, from /proc/slabinfo (root), read before and
# once every connection is up. Both ends of each connection are on this machine, so each
# connection holds two TCP sockets here: the per-connection figure is the growth / N / 2
# for what both ends have (TCP, sock_inode_cache, dentry, filp, eventpoll_epi), which
# is what a server's end holds (its listener's accept path adds nothing per connection).
#
# Usage: scripts/kernel_socket_memory.sh [N]   (N defaults to 10000; needs root)
# Environment: SERVER_BIN=target/release/examples/bench_app LOADGEN_BIN=target/release/svc-ws PORT=3902
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10000}
SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/examples/bench_app}
LOADGEN=${LOADGEN_BIN:-$ROOT/target/release/svc-ws}
PORT=${PORT:-3902}
ulimit -n "$(( N + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CACHES="TCP sock_inode_cache dentry filp eventpoll_epi eventpoll_pwq"
slab() { # prints "cache active_objs objsize" for each cache of interest
    for c in $CACHES; do
        awk -v c="$c" '$1 == c { print $1, $2, $4 }' /proc/slabinfo
    done
}
"$SERVER_BIN" --port "$PORT" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/stats" >/dev/null && break; sleep 0.1; done
before=$(slab)
"$LOADGEN" bench idle --url "ws://127.0.0.1:$PORT" -n "$N" --hold-secs 30 >"/tmp/kernel_socket_memory.$$" 2>&1 &
loadgen=$!
for _ in $(seq 600); do grep -q holding "/tmp/kernel_socket_memory.$$" && break; sleep 0.1; done
sleep 1
after=$(slab)
kill "$loadgen" 2>/dev/null || true
rm -f "/tmp/kernel_socket_memory.$$"
echo "| slab cache | object size (bytes) | objects added | bytes per connection (one end) |"
echo "|---|---|---|---|"
total=0
while read -r cache count size; do
    was=$(awk -v c="$cache" '$1 == c { print $2 }' <<<"$before")
    added=$(( count - ${was:-0} ))
    per=$(( added * size / N / 2 ))
    total=$(( total + per ))
    echo "| $cache | $size | $added | $per |"
done <<<"$after"
echo "| **total** | | | **$total** |"
