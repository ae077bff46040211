#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every unit and integration test
# (real sockets, real servers), the JavaScript client under Node against the gateway, the
# gateway's demo page in a real Chromium, and the Autobahn conformance suite against our
# server and our client. First installs what a fresh Debian machine lacks (scripts/setup.sh).
# The Redis backplane's tests start their own redis-server, svc-ws's TLS test runs Python's
# websockets, and the JavaScript client's tests need node; with CI set (the default here)
# they fail, not skip, if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CI="${CI:-1}"

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "set-up"
scripts/setup.sh
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "each feature of svc-infra on its own (cargo hack)"
cargo hack check -p svc-infra --each-feature --no-dev-deps
step "cargo doc -D warnings (no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps -q
step "cargo test"
cargo test --workspace --all-features
step "JavaScript client: Node's test runner against the gateway"
scripts/js_client_check.sh
step "Browser: the gateway's demo page in Chromium"
scripts/browser_check.sh
step "Autobahn: server"
scripts/autobahn.sh server
if [ -f crates/svc-infra/examples/autobahn_client.rs ]; then
  step "Autobahn: client"
  scripts/autobahn.sh client
fi
step "all green"
