#!/usr/bin/env python3
"""What a stored publication costs: drives bench_app with BENCH_ROOM (every connection in one
room, each "broadcast" published to it with its position) and a history large enough to keep
every publication, and reports the growth per publication of the server's RSS (memory store)
or of the room's Redis keys (`MEMORY USAGE`, with REDIS_URL: the Redis store).

Usage: memory.py URL SERVER_PID [N] [--redis REDIS_PORT]
  bench_app must run with BENCH_ROOM=bench WS_HISTORY_SIZE>=N (and REDIS_URL for --redis).
"""
import asyncio
import json
import subprocess
import sys

import websockets


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def redis_bytes(port):
    total = 0
    for key in ("svc-ws:history:room:bench", "svc-ws:history-meta:room:bench"):
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "MEMORY", "USAGE", key, "SAMPLES", "0"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        total += int(out or 0)
    return total


def message(seq):
    items = [{"id": seq * 100 + i, "user": f"user-{i % 7}", "text": "hello from the room",
              "ts": 1700000000 + i} for i in range(13)]
    return json.dumps({"type": "broadcast", "seq": seq, "items": items})


async def main():
    url, pid = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 and not sys.argv[3].startswith("--") else 20000
    redis_port = int(sys.argv[sys.argv.index("--redis") + 1]) if "--redis" in sys.argv else None
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await asyncio.sleep(0.5)
        before = redis_bytes(redis_port) if redis_port else rss_kib(pid) * 1024
        size = len(message(0))
        for seq in range(n):
            await ws.send(message(seq))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["seq"] == seq and reply["offset"] == seq + 1, reply
        await asyncio.sleep(1)
        after = redis_bytes(redis_port) if redis_port else rss_kib(pid) * 1024
    what = "Redis MEMORY USAGE of the room's keys" if redis_port else "server RSS"
    print(f"{n} publications of {size} bytes (+ position): {what} {before} -> {after} bytes "
          f"= {(after - before) / n:.0f} bytes per publication ({(after - before) / n / size:.2f}x its size)")


asyncio.run(main())
