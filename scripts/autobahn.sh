#!/usr/bin/env bash
# Runs the Autobahn conformance suite against our server (`server`: bench_app's /echo) or our
# client (`client`: the autobahn_client example driving WebSocketClient). Exits non-zero unless
# 0 cases failed.
#
# `server` and `client` (what scripts/test.sh runs) take every case but most of the
# permessage-deflate ones (12.*, 13.*: 216 cases, about 10 minutes each way): of those they
# run 12.1.* (the first data set, every message size and fragmentation) and 13.7.* (several
# offers at once: window 8, no context takeover, the first acceptable one taken). `server-full`
# and `client-full` run all 517 cases; docs/conformance.md records their latest result.
# `server-dedicated` runs the 216 compression cases against the server in
# WS_COMPRESSION=dedicated (context takeover per connection).
# An "unimplemented" compression case (deflate declined) counts as failed.
# Usage: scripts/autobahn.sh server|client|server-full|client-full|server-dedicated
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
mode=${1:?usage: scripts/autobahn.sh server|client|server-full|client-full|server-dedicated}
out=$TARGET/autobahn/$mode
mkdir -p "$out"
# The compression cases CI leaves out (see above); nothing for the -full modes.
SOME_DEFLATE='12.2.*,12.3.*,12.4.*,12.5.*,13.1.*,13.2.*,13.3.*,13.4.*,13.5.*,13.6.*'
case "$mode" in
*-full) exclude=() ;;
server-dedicated)
  exclude=(--cases '12.*,13.*')
  export WS_COMPRESSION=dedicated
  ;;
*) exclude=(--exclude "$SOME_DEFLATE") ;;
esac

case "$mode" in
server|server-full|server-dedicated)
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
  "$AUTOBAHN" server "ws://$addr/echo" "${exclude[@]}" --unimplemented fail --out "$out" -q
  ;;
client|client-full)
  cargo build --release -q -p svc-infra --example autobahn_client
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$AUTOBAHN" client --port "$port" "${exclude[@]}" --unimplemented fail --out "$out" -q \
    -- "$TARGET/release/examples/autobahn_client"
  ;;
*)
  echo "usage: scripts/autobahn.sh server|client|server-full|client-full|server-dedicated" >&2
  exit 2
  ;;
esac
