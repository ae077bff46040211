#!/usr/bin/env bash
# Runs the three `svc-ws bench` workloads of docs/benchmarks.md against one server.
#
# Usage: scripts/bench.sh SERVER [SERVER ARGS...]
#   SERVER: plain_axum | bench_app | uws | gateway (the `svc-ws serve` gateway: idle only,
#           anonymous users on /ws?user=bench-idle-{i}, its /ws/stats)
#   e.g.    scripts/bench.sh plain_axum
#           scripts/bench.sh plain_axum --read-buffer-size 4096
#           WORKLOADS="fanout" scripts/bench.sh uws
#
# Each workload gets a fresh server (so the idle RSS baseline is taken at 0 connections),
# started after `ulimit -n 65536` and pinned with `taskset -c $SERVER_CPU`; the load generator
# runs pinned with `taskset -c $CLIENT_CPU`. The figures (one JSON line per workload) go to
# $OUT/<label>-<workload>.json and a summary is printed at the end. Run as root or with a hard
# open-file limit of at least 65536 (10,000 connections need 10,000 descriptors on each side).
#
# Parameters (environment; defaults are the issue's):
#   WORKLOADS="idle fanout echo"   PORT=3900   SERVER_CPU=0   CLIENT_CPU=1
#   (a fourth workload, connect, is the reconnect storm of issue 8: WORKLOADS="connect")
#   CONNECT_N=10000  CONNECT_CONCURRENCY=200  CONNECT_ARGS=  (e.g. --tungstenite)
#   IDLE_N=10000  IDLE_HOLD_SECS=3  IDLE_ARGS=  (e.g. --connect-concurrency 200)
#   FANOUT_N=10000  FANOUT_M=50  FANOUT_SIZE=128  FANOUT_INTERVAL_MS=20  FANOUT_ARGS=
#   (e.g. "--deflate --realistic": subscribers offer permessage-deflate, realistic JSON; the
#   servers compress by WS_COMPRESSION (bench_app) and UWS_COMPRESSION=shared (uws))
#   ECHO_C=50  ECHO_M=2000  ECHO_SIZE=128
#   LABEL=<server name plus args>   OUT=${CARGO_TARGET_DIR:-target}/bench
#   SERVER_BIN=<path>  (plain_axum, bench_app: use this prebuilt binary instead of building)
#   LOADGEN_BIN=<path> (a prebuilt svc-ws to run as the load generator instead of building it)
#   NICE=-10   (niceness of server and load generator, each in its own session and so its own
#               scheduler autogroup whose nice value is set too: on a shared machine this keeps
#               other work from skewing the figures; ignored where it is not permitted)
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
SERVER=$1
shift
SERVER_ARGS=("$@")

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORKLOADS=${WORKLOADS:-"idle fanout echo"}
PORT=${PORT:-3900}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CONNECT_N=${CONNECT_N:-10000}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-200}
IDLE_N=${IDLE_N:-10000}
IDLE_HOLD_SECS=${IDLE_HOLD_SECS:-3}
FANOUT_N=${FANOUT_N:-10000}
FANOUT_M=${FANOUT_M:-50}
FANOUT_SIZE=${FANOUT_SIZE:-128}
FANOUT_INTERVAL_MS=${FANOUT_INTERVAL_MS:-20}
ECHO_C=${ECHO_C:-50}
ECHO_M=${ECHO_M:-2000}
ECHO_SIZE=${ECHO_SIZE:-128}
OUT=${OUT:-$TARGET/bench}
NICE=${NICE:--10}
LABEL=${LABEL:-$(printf '%s' "$SERVER${SERVER_ARGS[*]:+ ${SERVER_ARGS[*]}}" | sed 's/--//g' | tr -c 'A-Za-z0-9_.=-' '_')}
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0

# 65536 descriptors for the server and the load generator; where the hard limit is lower and
# cannot be raised (no CAP_SYS_RESOURCE, as in some containers), use the hard limit if it fits.
NOFILE=65536
if ! (ulimit -n "$NOFILE") 2>/dev/null; then
    hard=$(ulimit -Hn)
    need=$(( $( printf '%s\n' "$CONNECT_N" "$IDLE_N" "$FANOUT_N" "$ECHO_C" | sort -n | tail -1) + 256 ))
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
        echo "bench.sh: the open-file limit cannot be raised to $need (hard limit $hard)" >&2
        exit 1
    fi
    echo "bench.sh: note: hard open-file limit is $hard; using it instead of $NOFILE"
    NOFILE=$hard
fi
# LAUNCH NOFILE NICE CMD...: raises the open-file limit, sets the niceness of the process's
# scheduler autogroup (it runs under setsid, so the group is its own), then execs CMD: one PID
# throughout, so $! is the server's PID.
# shellcheck disable=SC2016 # expanded by the launched bash, not here
LAUNCH='ulimit -n "$1" || exit 1
if [ -n "$2" ] && [ -w /proc/self/autogroup ]; then echo "$2" >/proc/self/autogroup 2>/dev/null || true; fi
shift 2
exec "$@"'
PRIO=(nice -n "$NICE")
if ! nice -n "$NICE" true 2>/dev/null; then
    PRIO=()
    NICE=
fi
SETSID=(setsid)
command -v setsid >/dev/null || SETSID=()
for tool in taskset curl; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool is required" >&2; exit 1; }
done

echo "== building release binaries"
if [ -z "${LOADGEN_BIN:-}" ]; then
    cargo build --release -p svc-ws --bin svc-ws
fi
LOADGEN=${LOADGEN_BIN:-$TARGET/release/svc-ws}
SERVER_ENV=()
STATS_PATH=/stats
case "$SERVER" in
    gateway)
        SERVER_CMD=("${SERVER_BIN:-$LOADGEN}" serve --host 127.0.0.1 --port "$PORT")
        STATS_PATH=/ws/stats
        IDLE_ARGS="--path /ws?user=bench-idle-{i} ${IDLE_ARGS:-}"
        ;;
    plain_axum)
        if [ -z "${SERVER_BIN:-}" ]; then
            cargo build --release -p svc-ws --example plain_axum
        fi
        SERVER_CMD=("${SERVER_BIN:-$TARGET/release/examples/plain_axum}" --port "$PORT")
        ;;
    bench_app)
        if [ -z "${SERVER_BIN:-}" ] && ! cargo build --release --example bench_app; then
            echo "bench.sh: skipping bench_app: \`cargo build --release --example bench_app\` failed (not built yet?)"
            exit 0
        fi
        SERVER_CMD=("${SERVER_BIN:-$TARGET/release/examples/bench_app}" --port "$PORT")
        ;;
    uws)
        command -v node >/dev/null || { echo "bench.sh: skipping uws: node is not installed"; exit 0; }
        bench/uws/setup.sh
        if [ -f bench/uws/glibc_compat.so ]; then
            SERVER_ENV=(env "LD_PRELOAD=$ROOT/bench/uws/glibc_compat.so")
        fi
        SERVER_CMD=(node "$ROOT/bench/uws/server.js" --port "$PORT")
        ;;
    *)
        usage
        ;;
esac
SERVER_CMD+=("${SERVER_ARGS[@]}")
mkdir -p "$OUT"

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT INT TERM

start_server() {
    ${SETSID[@]+"${SETSID[@]}"} bash -c "$LAUNCH" _ "$NOFILE" "$NICE" \
        ${PRIO[@]+"${PRIO[@]}"} taskset -c "$SERVER_CPU" ${SERVER_ENV[@]+"${SERVER_ENV[@]}"} "${SERVER_CMD[@]}" \
        >"$OUT/$LABEL-server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:$PORT$STATS_PATH" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench.sh: the server did not come up; its log:" >&2
    cat "$OUT/$LABEL-server.log" >&2
    exit 1
}

# Runs the load generator pinned to CLIENT_CPU; the last stdout line (--json) is kept.
loadgen() {
    local workload=$1
    shift
    local log="$OUT/$LABEL-$workload.log"
    local status=0
    ${SETSID[@]+"${SETSID[@]}"} bash -c "$LAUNCH" _ "$NOFILE" "$NICE" \
        ${PRIO[@]+"${PRIO[@]}"} taskset -c "$CLIENT_CPU" "$LOADGEN" bench "$workload" \
        --url "ws://127.0.0.1:$PORT" --stats-path "$STATS_PATH" --json "$@" | tee "$log" || status=$?
    tail -n 1 "$log" >"$OUT/$LABEL-$workload.json"
    return "$status"
}

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "== server: ${SERVER_CMD[*]} (label $LABEL), server CPU $SERVER_CPU, load generator CPU $CLIENT_CPU, ${PRIO[*]:-default niceness}"
failed=0
for workload in $WORKLOADS; do
    echo
    echo "== $workload (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    start_server
    case "$workload" in
        connect)
            loadgen connect -n "$CONNECT_N" --connect-concurrency "$CONNECT_CONCURRENCY" \
                --server-pid "$SERVER_PID" ${CONNECT_ARGS:-} || failed=1
            ;;
        idle)
            loadgen idle -n "$IDLE_N" --hold-secs "$IDLE_HOLD_SECS" --server-pid "$SERVER_PID" ${IDLE_ARGS:-} || failed=1
            ;;
        fanout)
            loadgen fanout -n "$FANOUT_N" -m "$FANOUT_M" --size "$FANOUT_SIZE" \
                --interval-ms "$FANOUT_INTERVAL_MS" --server-pid "$SERVER_PID" ${FANOUT_ARGS:-} || failed=1
            ;;
        echo)
            loadgen echo -c "$ECHO_C" -m "$ECHO_M" --size "$ECHO_SIZE" --server-pid "$SERVER_PID" || failed=1
            ;;
        *)
            echo "bench.sh: unknown workload $workload" >&2
            failed=1
            ;;
    esac
    stop_server
done

echo
echo "== summary ($LABEL)"
if command -v python3 >/dev/null; then
    # shellcheck disable=SC2086 # one argument per workload
    python3 - "$OUT" "$LABEL" $WORKLOADS <<'PY'
import json, sys
out, label, workloads = sys.argv[1], sys.argv[2], sys.argv[3:]
for w in workloads:
    try:
        with open(f"{out}/{label}-{w}.json") as f:
            r = json.loads(f.read())
    except (OSError, ValueError):
        print(f"{w}: no figures")
        continue
    if w == "connect":
        h, t = r["handshake"], r["tcp_connect"]
        print(f"connect: {r['connected']} connections, {r['connections_per_s']:.0f} connections/s, handshake "
              f"p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms (TCP connect p99 {t['p99_ms']} ms), "
              f"over 1 s {r['handshakes_over_1s']}, kernel {r['kernel']}, server CPU {r['server_cpu_percent']}%, "
              f"client CPU {r['client_cpu_percent']}%")
    elif w == "idle":
        print(f"idle:   {r['connected']} connections, server RSS {r['server_rss_per_conn_kib']} KiB/conn "
              f"({r['server_rss_before_kib']} -> {r['server_rss_after_kib']} KiB), dropped {r['dropped']}")
    elif w == "fanout":
        l = r["latency"]
        print(f"fanout: {r['subscribers_up']} subs x {r['messages']} msgs: p50 {l['p50_ms']} ms, p99 {l['p99_ms']} ms, "
              f"max {l['max_ms']} ms, {r['deliveries_per_s']:.0f} deliveries/s, missing {r['missing']}, "
              f"duplicates {r['duplicates']}, server CPU {r['server_cpu_percent']}%, client CPU {r['client_cpu_percent']}%, "
              f"bytes read {r.get('bytes_read', '?')}")
    elif w == "echo":
        l = r["rtt"]
        print(f"echo:   {r['connections']} conns: {r['msgs_per_s']:.0f} msgs/s, RTT p50 {l['p50_ms']} ms, "
              f"p99 {l['p99_ms']} ms, max {l['max_ms']} ms, server CPU {r['server_cpu_percent']}%, "
              f"client CPU {r['client_cpu_percent']}%")
PY
fi
exit "$failed"
