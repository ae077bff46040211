#!/usr/bin/env python3
"""What a connection costs the server once it has exchanged one compressed message each
way: opens N connections to bench_app's /echo with Python websockets (which offers
permessage-deflate with context takeover, as browsers do), sends one ~1 KiB JSON message on
each and waits for the echo, then reads the server's VmRSS.

Usage: cost.py URL SERVER_PID [N] [--idle]   (prints KiB per connection, before → after)
With --idle nothing is sent: what a connection that negotiated compression costs before its
first compressed message.
"""
import asyncio
import json
import sys

import websockets


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


MESSAGE = json.dumps(
    {
        "type": "message",
        "room": "lobby",
        "items": [
            {"id": i, "user": f"user-{i % 7}", "text": "hello from the room", "ts": 1700000000 + i}
            for i in range(14)
        ],
    }
)


async def main():
    url, pid = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    idle = "--idle" in sys.argv
    before = rss_kib(pid)
    conns = []
    negotiated = 0
    for _ in range(n):
        ws = await asyncio.wait_for(websockets.connect(url, max_size=None), 10)
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        negotiated += "permessage-deflate" in ext
        if not idle:
            await ws.send(MESSAGE)
            assert await asyncio.wait_for(ws.recv(), 10) == MESSAGE
        conns.append(ws)
    await asyncio.sleep(2)
    after = rss_kib(pid)
    print(
        f"{n} connections ({negotiated} negotiated {ext!r}), "
        + ("idle: " if idle else f"one {len(MESSAGE)}-byte message each way: ")
        + f"server RSS {before} -> {after} KiB = {(after - before) / n:.2f} KiB per connection"
    )
    for ws in conns:
        await ws.close()


asyncio.run(main())
