#!/usr/bin/env bash
# Drives the gateway's demo page in a real Chromium (tests/browser/demo_page.js): two pages
# chat in a room and see presence, live stats and the live charts; a third connects with a JWT
# as the ["bearer", token] subprotocol; a fourth, on a second gateway joined by a private
# redis-server, follows a rolling restart of its gateway (1012) and reconnects by itself; a
# fifth gets every message of a room with history once and in order across a dropped
# connection and a restart of its gateway.
# Needs chromium, node and redis-server (scripts/setup.sh installs them). With SCREENSHOT=FILE
# the charts are saved there (docs/images/live-panel.png is one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ] || ! command -v node >/dev/null || ! command -v redis-server >/dev/null; then
    echo "browser_check: chromium, node and redis-server are required (scripts/setup.sh installs them)" >&2
    exit 1
fi
export CHROMIUM
(cd tests/browser && npm ci --no-audit --no-fund --silent)
cargo build -q -p svc-ws --bin svc-ws
BIN=$TARGET/debug/svc-ws
LOGS=$(mktemp -d)
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$LOGS"; }
PIDS=()
trap cleanup EXIT

# start NAME ENV...: runs `svc-ws serve --port 0` with ENV in the background.
start() {
    local name=$1; shift
    env -u AUTH_JWT__SECRET -u AUTH_JWT_SECRET -u JWT_SECRET -u REDIS_URL "$@" \
        "$BIN" serve --port 0 >/dev/null 2>"$LOGS/$name.log" &
    PIDS+=($!)
}

# addr NAME: the address NAME printed when it started listening.
addr() {
    local a
    for _ in $(seq 100); do
        a=$(sed -n 's|.*listening on ws://\([^/]*\)/ws.*|\1|p' "$LOGS/$1.log")
        [ -n "$a" ] && { echo "$a"; return; }
        sleep 0.1
    done
    echo "browser_check: $1 did not start" >&2
    cat "$LOGS/$1.log" >&2
    return 1
}

# A private redis-server on a free port (never the machine's own on 6379).
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$LOGS/redis.log" 2>&1 &
REDIS_PID=$!
disown "$REDIS_PID" # the Node script kills it: no "Killed" notice
PIDS+=("$REDIS_PID")
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done

SECRET=browser-check-secret-of-at-least-32-bytes
start anonymous REDIS_URL="$REDIS_URL" WS_HISTORY_SIZE=100
start authenticated AUTH_JWT__SECRET="$SECRET"
ANON=$(addr anonymous)
AUTHED=$(addr authenticated)
TOKEN=$(AUTH_JWT__SECRET="$SECRET" "$BIN" token --sub dana)
# The second node of the cluster: the Node script starts it, restarts it and stops Redis.
export SVC_WS_BIN=$BIN REDIS_URL REDIS_PID
timeout 180 node tests/browser/demo_page.js "http://$ANON/" "http://$AUTHED/" "$TOKEN"
