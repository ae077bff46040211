#!/usr/bin/env python3
"""Breaks a heaptrack profile of a server holding N idle connections down by owner.

Usage: scripts/heap_table.py PROFILE.zst N [--raw]

The profile is taken by scripts/heap_profile.sh, which kills the server (SIGKILL) while the
connections are held: what heaptrack reports as "leaked" is then what was live at that
moment. Each live allocation's call stack is matched against the rules below (first match
wins) and the bytes are divided by N. Bytes are what the program asked for; what glibc's
malloc adds (8 bytes per chunk, rounding to 16, alignment) shows in RSS, not here.
`--raw` prints the stacks no rule matched, with their bytes.
"""
import re
import subprocess
import sys
import tempfile

# (owner, regular expression searched in the stack, frames joined by ';'; the order of inlined
# frames is not reliable, hence the lookaheads)
RULES = [
    ("connection task: the handler's future (tokio task cell)", r"bind_new_task|new_task \(mod\.rs\)"),
    ("tokio socket registration (ScheduledIo)", r"add_source \(driver\.rs\)"),
    ("hyper: the upgraded stream (Box<dyn Io>, its Rewind)", r"(?=.*poll \(http1\.rs\))(?=.*new \(upgrade\.rs\))"),
    ("tokio::io::split (reader/writer halves' shared state)", r"split \(split\.rs\)"),

    ("TcpStream::into_split (the halves' shared Arc<TcpStream>)", r"into_split \(stream\.rs\)"),
    ("reader and writer boxes (Box<dyn AsyncRead/Write>)", r"split_upgraded \(upgrade\.rs\)"),
    ("socket: Outbound (send queue, writer, keepalive times)", r"(?=.*new \(socket\.rs\))(?=.*new \(sync\.rs\))"),
    ("socket: reading state (parser, reader, close state)", r"new \(socket\.rs\)"),
    ("registry: user → connections map", r"(?=.*register \(manager\.rs\))(?=.*reserve_rehash)"),
    ("registry: the user's connection list (Vec)", r"(?=.*register \(manager\.rs\))(?=.*grow_one)"),
    ("registry: user id (Arc<str>)", r"(?=.*(register|connect_with_metadata) \(manager\.rs\))(?=.*from \(sync\.rs\))"),
    ("registry: Conn (id, user, times, metadata)", r"register \(manager\.rs\)"),
    ("gateway: user id (Arc<str>, shared by the session and the registry)", r"(?=.*\{async_fn#0\} \(protocol\.rs\))(?=.*\(sync\.rs\))"),
    ("metrics: histogram samples awaiting the next scrape (not per connection)", r"record \(recency\.rs\)"),
    ("registry: rooms (user → rooms map, room → members set)", r"(?=.*\{async_fn#0\} \(manager\.rs\))(?=.*(rustc_entry|insert \(set\.rs\)|insert \(map\.rs\)|from \(sync\.rs\)))"),
    ("registry: broadcast snapshot (Arc<[Arc<Conn>]>)", r"snapshot \(manager\.rs\)"),
    ("application: the user id string its handler keeps (from the path or the query)", r"deserialize_string"),
]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    raw = "--raw" in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    profile, n = args[0], int(args[1])
    with tempfile.NamedTemporaryFile("r", suffix=".flame") as flame:
        subprocess.run(
            ["heaptrack_print", "-f", profile, "--flamegraph-cost-type", "leaked",
             "-F", flame.name, "-p", "0", "-a", "0", "-T", "0", "-l", "0"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines = flame.read().splitlines()
    totals = {owner: 0 for owner, _ in RULES}
    other, unmatched = 0, []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        count = int(count)
        # `new<> (boxed.rs)` → `new (boxed.rs)`: generic markers off, so rules name frames plainly.
        stack = re.sub(r"<[^;()]*> \(", " (", stack)
        for owner, rule in RULES:
            if re.search(rule, stack):
                totals[owner] += count
                break
        else:
            other += count
            unmatched.append((count, stack))
    total = sum(totals.values()) + other
    print(f"| owner | bytes per connection |\n|---|---|")
    for owner, _ in RULES:
        if totals[owner]:
            print(f"| {owner} | {totals[owner] / n:,.0f} |")
    print(f"| everything else (runtime, listener, buffers not per connection) | {other / n:,.0f} |")
    print(f"| **total live heap** | **{total / n:,.0f}** |")
    if raw:
        for count, stack in sorted(unmatched, reverse=True)[:15]:
            frames = [f for f in stack.split(";") if not re.search(r"\((alloc|boxed|sync|raw_vec|mod|unsafe_cell|harness|core|panic|panicking|unwind_safe|function)\.rs\)", f)]
            print(f"\n{count / n:.1f} B/conn: " + " ; ".join(frames[-8:]))


if __name__ == "__main__":
    main()
