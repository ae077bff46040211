#!/usr/bin/env bash
# The soak run (issue 8): two gateways (`svc-ws serve`) on a private Redis under mixed load
# (crates/svc-ws/examples/soak_load.rs: connect/disconnect churn, joins, publishes, sends,
# presence, HTTP publishes, clients that never read) for SOAK_SECS, with Redis killed and
# restarted in the middle. Then it checks, and prints PASS or FAIL for each:
#
#   - each gateway's RSS at the end of the load and after the clients left is at most 10%
#     above its RSS after the warm-up;
#   - each gateway's open file descriptors, once the clients left, are back to the count
#     before the load (within FD_TOLERANCE, default 2: the backplane's two Redis connections);
#   - the gateway logs hold no panic and no ERROR line (the WARN lines are listed);
#   - the load client saw no error, and its counts agree with the gateways' /metrics and
#     /ws/stats (docs/security.md, "Soak run", says which checks are exact and why).
#
# Not part of scripts/test.sh (ten minutes). Usage:
#   scripts/soak.sh                  # 600 s
#   SOAK_SECS=60 scripts/soak.sh     # the short version
# Parameters (environment): SOAK_SECS=600  SOAK_WARMUP=min(60, SOAK_SECS/4)
#   REDIS_DOWN_SECS=5  FD_TOLERANCE=2  RSS_TOLERANCE_PCT=10  SOAK_NO_BUILD= (1: use the
#   binaries already in target/release)  SOAK_LOAD_ARGS= (more flags for soak_load)
# Logs, samples and figures stay in the directory printed at the start. Exits 1 on any FAIL.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SOAK_SECS=${SOAK_SECS:-600}
SOAK_WARMUP=${SOAK_WARMUP:-$(( SOAK_SECS / 4 < 60 ? SOAK_SECS / 4 : 60 ))}
REDIS_DOWN_SECS=${REDIS_DOWN_SECS:-5}
FD_TOLERANCE=${FD_TOLERANCE:-2}
RSS_TOLERANCE_PCT=${RSS_TOLERANCE_PCT:-10}
SAMPLE_EVERY=10
export RUST_BACKTRACE=1

if [ -z "${SOAK_NO_BUILD:-}" ]; then
    cargo build --release -p svc-ws --bin svc-ws --example soak_load
fi
SVC=$TARGET/release/svc-ws
LOAD=$TARGET/release/examples/soak_load
for bin in "$SVC" "$LOAD"; do
    [ -x "$bin" ] || { echo "soak.sh: $bin is missing (build it, or unset SOAK_NO_BUILD)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "soak.sh: redis-server is needed" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")
echo "soak.sh: ${SOAK_SECS} s, warm-up ${SOAK_WARMUP} s; logs in $WORK"
# What is still running of ours (a PID is cleared once waited for, so never reused).
REDIS_PID= LOAD_PID=
GW_PID=()
cleanup() {
    local pid
    for pid in "$LOAD_PID" "${GW_PID[@]}" "$REDIS_PID"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap "exit 130" INT TERM

now_ms() { date +%s%3N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# Stops the run if a gateway has gone (a crash, or a signal from outside).
gateways_alive() {
    local i
    for i in 0 1; do
        if ! kill -0 "${GW_PID[$i]}" 2>/dev/null; then
            echo "FAIL  gateway $((i + 1)) (pid ${GW_PID[$i]}) is gone; its log:" >&2
            tail -20 "$WORK/gateway-$((i + 1)).log" >&2
            echo "RESULT: FAIL (a gateway ended before the run did)"
            exit 1
        fi
    done
}
http_get() { curl -sf --max-time 5 "http://$1$2"; }

REDIS_PORT=$(free_port)
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no >>"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "soak.sh: redis-server did not start on port $REDIS_PORT" >&2
    exit 1
}
start_redis

API_KEY="soak-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SECRET=$(head -c 32 /dev/urandom | base64)
GW_ADDR=()
for i in 1 2; do
    env -u APP_ENV -u RAILWAY_ENVIRONMENT_NAME \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" WS_GATEWAY_ANONYMOUS=true \
        WS_API_KEYS="soak:$API_KEY" AUTH_JWT__SECRET="$SECRET" RUST_LOG=info \
        "$SVC" serve --host 127.0.0.1 --port 0 >"$WORK/gateway-$i.log" 2>&1 &
    GW_PID+=("$!")
done
for i in 0 1; do
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's|.*listening on ws://\([^/]*\)/ws.*|\1|p' "$WORK/gateway-$((i + 1)).log" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "soak.sh: gateway $((i + 1)) did not start" >&2; cat "$WORK/gateway-$((i + 1)).log" >&2; exit 1; }
    GW_ADDR+=("$addr")
done
both_connected() {
    local a
    for a in "${GW_ADDR[@]}"; do
        http_get "$a" /health | grep -q '"backplane":"connected"' || return 1
    done
}
for _ in $(seq 100); do both_connected && break; sleep 0.1; done
both_connected || { echo "soak.sh: the gateways did not connect to Redis" >&2; exit 1; }
echo "soak.sh: redis 127.0.0.1:$REDIS_PORT, gateways ${GW_ADDR[*]} (pids ${GW_PID[*]})"

# Baseline: started and connected to Redis, no client yet.
sleep 2
gateways_alive
echo "soak.sh: load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A FIG
for i in 0 1; do
    FIG[rss_base_$i]=$(rss_kb "${GW_PID[$i]}")
    FIG[fd_base_$i]=$(fds "${GW_PID[$i]}")
done

# shellcheck disable=SC2086 # SOAK_LOAD_ARGS is a list of flags
"$LOAD" --gateway "${GW_ADDR[0]}" --gateway "${GW_ADDR[1]}" --api-key "$API_KEY" \
    --secs "$SOAK_SECS" ${SOAK_LOAD_ARGS:-} >"$WORK/load.json" 2>"$WORK/load.log" &
LOAD_PID=$!
T0=$(date +%s)
printf 't_s\trss_kb_1\tfd_1\tconns_1\trss_kb_2\tfd_2\tconns_2\n' >"$WORK/samples.tsv"
sample() {
    local line=$1 i
    for i in 0 1; do
        line+=$(printf '\t%s\t%s\t%s' "$(rss_kb "${GW_PID[$i]}")" "$(fds "${GW_PID[$i]}")" \
            "$(http_get "${GW_ADDR[$i]}" /health | sed -n 's/.*"connections":\([0-9]*\).*/\1/p')")
    done
    printf '%s\n' "$line" >>"$WORK/samples.tsv"
}
next_sample=0 warm=0 kill_ms=0 restart_ms=0 recovered_ms=0
while kill -0 "$LOAD_PID" 2>/dev/null; do
    gateways_alive
    el=$(( $(date +%s) - T0 ))
    if [ "$el" -ge "$next_sample" ]; then
        sample "$el"
        next_sample=$(( next_sample + SAMPLE_EVERY ))
    fi
    if [ "$warm" = 0 ] && [ "$el" -ge "$SOAK_WARMUP" ]; then
        warm=1
        for i in 0 1; do
            FIG[rss_warm_$i]=$(rss_kb "${GW_PID[$i]}")
            FIG[fd_warm_$i]=$(fds "${GW_PID[$i]}")
        done
        echo "soak.sh: after warm-up (${el} s): RSS ${FIG[rss_warm_0]} kB, ${FIG[rss_warm_1]} kB"
    fi
    if [ "$kill_ms" = 0 ] && [ "$el" -ge $(( SOAK_SECS / 2 )) ]; then
        kill -KILL "$REDIS_PID"
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
        kill_ms=$(now_ms)
        echo "soak.sh: Redis killed at ${el} s"
    fi
    if [ "$kill_ms" != 0 ] && [ "$restart_ms" = 0 ] && [ $(( $(now_ms) - kill_ms )) -ge $(( REDIS_DOWN_SECS * 1000 )) ]; then
        start_redis
        restart_ms=$(now_ms)
        echo "soak.sh: Redis restarted after $(( restart_ms - kill_ms )) ms"
    fi
    if [ "$restart_ms" != 0 ] && [ "$recovered_ms" = 0 ] && both_connected; then
        recovered_ms=$(now_ms)
        echo "soak.sh: both gateways reconnected $(( recovered_ms - restart_ms )) ms after the restart"
    fi
    if [ "$el" -gt $(( SOAK_SECS + 300 )) ]; then
        echo "soak.sh: the load did not end; stopping it" >&2
        kill "$LOAD_PID"
    fi
    sleep 1
done
load_exit=0
wait "$LOAD_PID" || load_exit=$?
LOAD_PID=
load_end_el=$(( $(date +%s) - T0 ))
gateways_alive
echo "soak.sh: load ended after ${load_end_el} s (exit $load_exit); load average $(cut -d' ' -f1-3 /proc/loadavg)"
sample "$load_end_el"
for i in 0 1; do FIG[rss_load_end_$i]=$(rss_kb "${GW_PID[$i]}"); done
if [ "$recovered_ms" = 0 ] && both_connected; then recovered_ms=$(now_ms); fi

# Drain: every connection gone on both gateways (at most 30 s), then the final figures.
for _ in $(seq 300); do
    left=0
    for a in "${GW_ADDR[@]}"; do
        n=$(http_get "$a" /ws/stats | sed -n 's/.*"local_connections":\([0-9]*\).*/\1/p')
        left=$(( left + ${n:-1} ))
    done
    [ "$left" = 0 ] && break
    sleep 0.1
done
sleep 2
for i in 0 1; do
    FIG[rss_end_$i]=$(rss_kb "${GW_PID[$i]}")
    FIG[fd_end_$i]=$(fds "${GW_PID[$i]}")
    http_get "${GW_ADDR[$i]}" /metrics >"$WORK/metrics-$((i + 1)).txt" || true
    http_get "${GW_ADDR[$i]}" /ws/stats >"$WORK/stats-$((i + 1)).json" || echo '{}' >"$WORK/stats-$((i + 1)).json"
    http_get "${GW_ADDR[$i]}" /health >"$WORK/health-$((i + 1)).json" || echo '{}' >"$WORK/health-$((i + 1)).json"
done
sample "$(( $(date +%s) - T0 ))"

# Stop the gateways (SIGTERM: a graceful shutdown) so that their logs are complete.
gw_exit=()
for i in 0 1; do
    kill -TERM "${GW_PID[$i]}"
    code=0
    wait "${GW_PID[$i]}" || code=$?
    GW_PID[$i]=
    gw_exit+=("$code")
done

cat >"$WORK/figures.json" <<EOF
{"secs": $SOAK_SECS, "warmup": $SOAK_WARMUP, "load_exit": $load_exit, "load_end_s": $load_end_el,
 "kill_ms": $kill_ms, "restart_ms": $restart_ms, "recovered_ms": $recovered_ms,
 "fd_tolerance": $FD_TOLERANCE, "rss_tolerance_pct": $RSS_TOLERANCE_PCT,
 "gateways": [
  {"addr": "${GW_ADDR[0]}", "exit": ${gw_exit[0]}, "rss_base": ${FIG[rss_base_0]}, "fd_base": ${FIG[fd_base_0]},
   "rss_warm": ${FIG[rss_warm_0]:-0}, "fd_warm": ${FIG[fd_warm_0]:-0}, "rss_load_end": ${FIG[rss_load_end_0]},
   "rss_end": ${FIG[rss_end_0]}, "fd_end": ${FIG[fd_end_0]}},
  {"addr": "${GW_ADDR[1]}", "exit": ${gw_exit[1]}, "rss_base": ${FIG[rss_base_1]}, "fd_base": ${FIG[fd_base_1]},
   "rss_warm": ${FIG[rss_warm_1]:-0}, "fd_warm": ${FIG[fd_warm_1]:-0}, "rss_load_end": ${FIG[rss_load_end_1]},
   "rss_end": ${FIG[rss_end_1]}, "fd_end": ${FIG[fd_end_1]}}
 ]}
EOF

python3 - "$WORK" <<'PY'
import collections, json, re, sys

work = sys.argv[1]
fig = json.load(open(f"{work}/figures.json"))
try:
    load = json.load(open(f"{work}/load.json"))
except ValueError:
    load = {"counts": {}, "errors": {"no JSON report from soak_load": 1}, "deliveries": {}}
counts, deliveries = load["counts"], load["deliveries"]
gws = fig["gateways"]

def metrics(i):
    out = collections.Counter()
    for line in open(f"{work}/metrics-{i + 1}.txt"):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name.split("{")[0]] += float(value)
    return out

m = [metrics(i) for i in range(2)]
stats = [json.load(open(f"{work}/stats-{i + 1}.json")) for i in range(2)]
health = [json.load(open(f"{work}/health-{i + 1}.json")) for i in range(2)]
total = lambda name: int(sum(x[name] for x in m))
c = lambda name: counts.get(name, 0)
failed = []

def check(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if not ok:
        failed.append(name)

print("\n=== checks")
check("load client", fig["load_exit"] == 0 and not load["errors"],
      f"exit {fig['load_exit']}, errors {load['errors'] or 'none'}")
tol = fig["rss_tolerance_pct"] / 100
for i, g in enumerate(gws):
    warm = g["rss_warm"]
    ok = warm > 0 and g["rss_load_end"] <= warm * (1 + tol) and g["rss_end"] <= warm * (1 + tol)
    check(f"gateway {i + 1} RSS", ok,
          f"{g['rss_base']} kB at start, {warm} kB after warm-up, {g['rss_load_end']} kB at the "
          f"end of the load ({(g['rss_load_end'] / warm - 1) * 100 if warm else 0:+.1f}%), "
          f"{g['rss_end']} kB after the clients left ({(g['rss_end'] / warm - 1) * 100 if warm else 0:+.1f}%)")
for i, g in enumerate(gws):
    check(f"gateway {i + 1} fds", abs(g["fd_end"] - g["fd_base"]) <= fig["fd_tolerance"],
          f"{g['fd_base']} before the load, {g['fd_warm']} after warm-up, {g['fd_end']} after the clients left")

bad, warns = [], collections.Counter()
for i in range(2):
    for line in open(f"{work}/gateway-{i + 1}.log", errors="replace"):
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "panic" in plain.lower() or " ERROR " in plain:
            bad.append(plain.strip())
        elif " WARN " in plain:
            msg = re.sub(r"^\S+\s+WARN\s+", "", plain.strip())
            msg = re.sub(r"\d+(\.\d+)?(ms|s|µs)\b", "N", msg)
            warns[f"gateway {i + 1}: {msg}"] += 1
check("logs", not bad, f"{len(bad)} panic/ERROR lines" + (": " + " | ".join(bad[:5]) if bad else ""))
for w, n in sorted(warns.items()):
    print(f"      WARN x{n}  {w}")

check("connects", total("svc_ws_connects_total") == c("ws.opened"),
      f"svc_ws_connects_total {total('svc_ws_connects_total')} (sum of both), client opened {c('ws.opened')}")
check("disconnects", total("svc_ws_disconnects_total") == total("svc_ws_connects_total"),
      f"svc_ws_disconnects_total {total('svc_ws_disconnects_total')}")
idle = all(s.get(k) == 0 for s in stats for k in ("connections", "local_connections", "users", "rooms"))
check("nothing left", idle, "; ".join(
    f"gateway {i + 1}: " + ", ".join(f"{k} {s.get(k)}" for k in ("connections", "local_connections", "users", "rooms"))
    for i, s in enumerate(stats)))
check("slow consumers", total("svc_ws_slow_consumer_disconnects_total") == c("non_readers.closed_by_gateway") == load.get("non_readers"),
      f"svc_ws_slow_consumer_disconnects_total {total('svc_ws_slow_consumer_disconnects_total')}, "
      f"non-readers {load.get('non_readers')}, closed by the gateway {c('non_readers.closed_by_gateway')}; ends seen: "
      + ", ".join(f"{k.split('.', 2)[2]} x{v}" for k, v in counts.items() if k.startswith("non_readers.ended.")))
zero = ["svc_ws_keepalive_timeouts_total", "svc_ws_messages_dropped_total", "svc_ws_connections_refused_total",
        "svc_ws_upgrades_refused_total", "svc_ws_handshake_timeouts_total", "svc_ws_gateway_rate_limited_total",
        "svc_ws_gateway_rate_limit_closes_total", "svc_ws_gateway_room_limit_total", "svc_ws_backplane_malformed_total"]
nonzero = {z: total(z) for z in zero if total(z)}
check("counters that must stay 0", not nonzero, str(nonzero or "all 0"))

sent = sum(v for k, v in counts.items() if k.startswith("sent."))
answered = sum(c(f"answers.{k}") for k in ("ack", "error", "echo", "presence"))
check("answers", sent == answered + c("abandoned_requests") and c("answers.error") == c("answers.expected_errors"),
      f"{sent} requests = {answered} answers + {c('abandoned_requests')} abandoned by churners that dropped "
      f"the connection; {c('answers.error')} error answers = {c('answers.expected_errors')} to requests meant to fail "
      f"(of {c('sent.bad_type') + c('sent.broadcast_without_scope')} sent)")
http_sent = sum(v for k, v in counts.items() if k.startswith("http.sent."))
http_status = {k.rsplit(".", 1)[1]: v for k, v in counts.items() if k.startswith("http.status.")}
want = {"200": http_sent - c("http.sent.both_to_and_room") - c("http.sent.no_key"),
        "400": c("http.sent.both_to_and_room"), "401": c("http.sent.no_key")}
check("HTTP publishes", http_status == {k: v for k, v in want.items() if v},
      f"{http_sent} sent; statuses {http_status}")

d = deliveries
check("deliveries, same gateway", d.get("lost_local") == 0 and d.get("duplicates") == 0 and d.get("misdelivered") == 0,
      f"{d.get('expected')} deliveries to witnesses expected, {d.get('delivered')} arrived; lost on the sender's "
      f"gateway {d.get('lost_local')}, duplicates {d.get('duplicates')}, to a witness not meant {d.get('misdelivered')}")
lo, hi = d.get("lost_cross_first_sent_ms"), d.get("lost_cross_last_sent_ms")
window = (fig["kill_ms"] - 1000, fig["recovered_ms"])
in_window = d.get("lost_cross") == 0 or (fig["recovered_ms"] > 0 and lo >= window[0] and hi <= window[1])
check("deliveries, across gateways", in_window,
      f"{d.get('lost_cross')} lost, sent between {lo and lo - fig['kill_ms']} and {hi and hi - fig['kill_ms']} ms "
      f"from the Redis kill; allowed: -1000 to {fig['recovered_ms'] - fig['kill_ms']} ms (both reconnected)")
recon = [int(x["svc_ws_backplane_reconnects_total"]) for x in m]
check("backplane", all(r >= 1 for r in recon) and all(int(x["svc_ws_backplane_connected"]) == 1 for x in m)
      and all(h.get("status") == "ok" for h in health),
      f"reconnects {recon}, dropped while Redis was away {[int(x['svc_ws_backplane_dropped_total']) for x in m]}, "
      f"health {[h.get('status') for h in health]}")
frames_sent = sum(s.get("frames_sent", 0) for s in stats)
check("frames (a bound)", frames_sent >= c("frames.received"),
      f"frames_sent {frames_sent} (both /ws/stats) >= {c('frames.received')} frames the clients read")
check("shutdown", all(g["exit"] == 0 for g in gws), f"exit codes on SIGTERM {[g['exit'] for g in gws]}")

print(f"\nload: {c('ws.opened')} connections, {sent} requests, {http_sent} HTTP publishes, "
      f"{c('messages.room') + c('messages.user')} messages read, {d.get('keys')} keyed messages")
print("RESULT: " + ("PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"))
sys.exit(1 if failed else 0)
PY
