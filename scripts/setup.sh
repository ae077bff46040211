#!/usr/bin/env bash
# Installs what the test suite needs and a fresh Debian machine with Rust may lack:
# python3 (the Autobahn runner's bootstrap), a C compiler (ring), rustfmt and clippy,
# redis-server (the Redis backplane's tests start private ones), and chromium with node and
# npm (scripts/browser_check.sh drives the gateway's demo page), Python's websockets (the
# independent wss:// client of crates/svc-ws/tests/serve.rs), and cargo-hack from crates.io
# (scripts/test.sh checks that each feature builds on its own). Does nothing when all are
# there. Run by scripts/test.sh.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if need apt-get; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$@"
    elif need sudo; then sudo apt-get update -qq && sudo apt-get install -y -qq "$@"
    fi
  fi
}

need python3 || apt_install python3
need cc || apt_install build-essential
need redis-server || apt_install redis-server
need chromium || need chromium-browser || apt_install chromium
need node || apt_install nodejs
need npm || apt_install npm
# For the python3 first on PATH: pip where it may install (a virtualenv, pyenv), else
# Debian's package (a system Python refuses pip: PEP 668).
python3 -c 'import websockets' 2>/dev/null \
  || python3 -m pip install --quiet websockets 2>/dev/null \
  || apt_install python3-websockets
rustup component add rustfmt clippy >/dev/null 2>&1 || true
need cargo-hack || cargo install cargo-hack --locked
