#!/usr/bin/env bash
# Installs the uWebSockets.js bench server's dependency (npm ci) and, on glibc < 2.38, makes the
# prebuilt addon loadable: its only GLIBC_2.38 symbols are the C23 strtol/strtoul/sscanf
# variants, so the version requirement is marked weak and glibc_compat.so (built here) provides
# them; run the server with LD_PRELOAD="$PWD/glibc_compat.so" (scripts/bench.sh does).
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "setup.sh: node is not installed" >&2; exit 1; }
if [ ! -d node_modules/@btc-vision/uwebsockets.js ]; then
    npm ci --no-audit --no-fund
fi
glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -1)" != "2.38" ]; then
    abi=$(node -p 'process.versions.modules')
    addon="node_modules/@btc-vision/uwebsockets.js/uws_linux_x64_${abi}.node"
    [ -f "$addon" ] || { echo "setup.sh: no prebuilt addon for Node ABI $abi" >&2; exit 1; }
    python3 weaken_glibc_238.py "$addon"
    cc -O2 -shared -fPIC -o glibc_compat.so glibc_compat.c
    echo "setup.sh: glibc $glibc: start the server with LD_PRELOAD=$PWD/glibc_compat.so"
fi
