#!/usr/bin/env bash
# Runs the Autobahn conformance suite (all cases but 12.* and 13.*, compression) against
# our server (`server`: bench_app's /echo) or our client (`client`: the autobahn_client
# example driving WebSocketClient). Exits non-zero unless 0 cases failed.
# Usage: scripts/autobahn.sh server|client
# Binaries and reports are under ${CARGO_TARGET_DIR:-target} (where cargo puts them).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${AUTOBAHN:-}" ]; then
  for candidate in ../shared/tools/autobahn /work/shared/tools/autobahn; do
    [ -x "$candidate" ] && AUTOBAHN=$candidate && break
  done
fi
[ -n "${AUTOBAHN:-}" ] || { echo "autobahn runner not found (set AUTOBAHN=/path/to/tools/autobahn)" >&2; exit 2; }
mode=${1:?usage: scripts/autobahn.sh server|client}
out=$TARGET/autobahn/$mode
mkdir -p "$out"

case "$mode" in
server)
  cargo build --release -q -p svc-infra --example bench_app
  log=$(mktemp)
  "$TARGET/release/examples/bench_app" --port 0 2>"$log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on ws:\/\/\(.*\)$/\1/p' "$log")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "${addr:-}" ] || { echo "bench_app did not start:"; cat "$log"; exit 1; }
  "$AUTOBAHN" server "ws://$addr/echo" --exclude '12.*,13.*' --out "$out" -q
  ;;
client)
  cargo build --release -q -p svc-infra --example autobahn_client
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$AUTOBAHN" client --port "$port" --exclude '12.*,13.*' --out "$out" -q \
    -- "$TARGET/release/examples/autobahn_client"
  ;;
*)
  echo "usage: scripts/autobahn.sh server|client" >&2
  exit 2
  ;;
esac
