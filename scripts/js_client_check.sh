#!/usr/bin/env bash
# The JavaScript client (clients/js/svc-ws.js) under Node's own test runner, against the real
# gateway binary that each test starts (clients/js/test/client.test.mjs). Needs Node >= 20
# (scripts/setup.sh installs it); without it this fails when CI is set and skips otherwise.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ! command -v node >/dev/null; then
    if [ -n "${CI:-}" ]; then
        echo "js_client_check: node is required (scripts/setup.sh installs it)" >&2
        exit 1
    fi
    echo "js_client_check: skipped, node is not installed (CI unset)" >&2
    exit 0
fi
MAJOR=$(node -p 'process.versions.node.split(".")[0]')
if [ "$MAJOR" -lt 20 ]; then
    echo "js_client_check: Node >= 20 is required, this is $(node --version)" >&2
    exit 1
fi
# Node 20 has a WebSocket only behind this flag; later ones have it by default.
FLAGS=()
if [ "$(node -p 'typeof WebSocket')" != "function" ]; then
    FLAGS+=(--experimental-websocket)
fi
cargo build -q -p svc-ws --bin svc-ws
export SVC_WS_BIN=${SVC_WS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/svc-ws}
timeout 300 node "${FLAGS[@]}" --test clients/js/test/
