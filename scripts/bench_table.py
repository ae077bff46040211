#!/usr/bin/env python3
"""Prints the figures of `scripts/bench.sh` runs as Markdown tables.

Usage: scripts/bench_table.py DIR [DIR...]   (DIR: an OUT directory of bench.sh, e.g. ${CARGO_TARGET_DIR:-target}/bench)
Reads every <label>-<workload>.json there (the final --json line of `svc-ws bench`).
"""
import json
import pathlib
import sys


def load(dirs):
    rows = {"connect": [], "idle": [], "fanout": [], "echo": []}
    for d in dirs:
        for path in sorted(pathlib.Path(d).glob("*.json")):
            label, _, workload = path.stem.rpartition("-")
            try:
                figures = json.loads(path.read_text().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                continue
            if figures.get("workload") == workload:
                rows[workload].append((f"{label} ({d})" if len(dirs) > 1 else label, figures))
    return rows


def main(dirs):
    rows = load(dirs)
    if rows["connect"]:
        print("| server | connections (in flight) | connections/s | handshake p50 ms | p99 ms | max ms | over 1 s | "
              "ListenOverflows | TCPSynRetrans | server CPU % | client CPU % |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in rows["connect"]:
            h, k = r["handshake"], r["kernel"]
            print(f"| {label} | {r['connected']} ({r['concurrency']}) | {r['connections_per_s']:.0f} | {h['p50_ms']} | "
                  f"{h['p99_ms']} | {h['max_ms']} | {r['handshakes_over_1s']} | {k.get('ListenOverflows')} | "
                  f"{k.get('TCPSynRetrans')} | {r.get('server_cpu_percent')} | {r.get('client_cpu_percent')} |")
        print()
    if rows["idle"]:
        print("| server | connections | RSS before (KiB) | RSS after (KiB) | KiB per connection |")
        print("|---|---|---|---|---|")
        for label, r in rows["idle"]:
            print(f"| {label} | {r['connected']} | {r['server_rss_before_kib']} | "
                  f"{r['server_rss_after_kib']} | {r['server_rss_per_conn_kib']} |")
        print()
    if rows["fanout"]:
        print("| server | subscribers x msgs | p50 ms | p90 ms | p99 ms | max ms | deliveries/s | missing | dup | server CPU % | client CPU % |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in rows["fanout"]:
            l = r["latency"]
            print(f"| {label} | {r['subscribers_up']} x {r['messages']} | {l['p50_ms']} | {l['p90_ms']} | "
                  f"{l['p99_ms']} | {l['max_ms']} | {r['deliveries_per_s']:.0f} | {r['missing']} | "
                  f"{r['duplicates']} | {r.get('server_cpu_percent')} | {r.get('client_cpu_percent')} |")
        print()
    if rows["echo"]:
        print("| server | connections x round trips | msgs/s | p50 ms | p90 ms | p99 ms | max ms | server CPU % | client CPU % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, r in rows["echo"]:
            l = r["rtt"]
            print(f"| {label} | {r['connections']} x {r['messages_per_connection']} | {r['msgs_per_s']:.0f} | "
                  f"{l['p50_ms']} | {l['p90_ms']} | {l['p99_ms']} | {l['max_ms']} | "
                  f"{r.get('server_cpu_percent')} | {r.get('client_cpu_percent')} |")
        print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
