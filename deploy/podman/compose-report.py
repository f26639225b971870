#!/usr/bin/env python3
"""Per-phase numbers of a `make compose-test` run, from the clients' histories.

The contract (nothing acknowledged lost, no duplicate, order kept) is the chaos checker's
verdict (`murmur-chaos check`); this adds what the checker does not time: during each fault,
the longest pause in acknowledged publishes (all publishers together, and the worst single
publisher), the gap notices the subscribers got, and where the clients of the killed node went.

Exits 1 when the rolling update paused acknowledged publishes (all publishers together) for
more than --max-pause seconds, or when any subscriber got a gap during it, or when a client
of the killed node did not resume on another node.
"""

import argparse
import glob
import json
import os
import sys


def load(out):
    ops = []
    for path in sorted(glob.glob(os.path.join(out, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            ops.extend(json.loads(line) for line in f if line.strip())
    ops.sort(key=lambda op: op["t"])
    return ops


def marks(out):
    found = {}
    with open(os.path.join(out, "marks.txt"), encoding="utf-8") as f:
        for line in f:
            name, t = line.split()
            found[name] = int(t)
    return found


def longest_pause(times, start, end):
    """The longest stretch of [start, end] without one of `times` (µs)."""
    inside = [t for t in times if start <= t <= end]
    edges = [start] + inside + [end]
    return max(b - a for a, b in zip(edges, edges[1:]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-pause", type=float, default=3.0)
    parser.add_argument("--node", action="append", default=[], help="HOST:PORT=NAME")
    args = parser.parse_args()
    names = dict(n.split("=", 1) for n in args.node)
    ops = load(args.out)
    m = marks(args.out)
    ok_by_publisher = {}
    for op in ops:
        if op["kind"] == "publish_ok":
            ok_by_publisher.setdefault(op["client"], []).append(op["t"])
    all_oks = sorted(t for ts in ok_by_publisher.values() for t in ts)
    phases = [
        ("kill -9 n2, restart", m["kill"], m["kill-end"]),
        ("disconnect n3, reconnect", m["partition"], m["partition-end"]),
        ("rolling update n1, n2, n3", m["rolling"], m["rolling-end"]),
    ]
    failures = []
    print("| phase | length | acknowledged publishes | longest pause, all publishers | longest pause, worst publisher | gap notices |")
    print("|---|---|---|---|---|---|")
    for name, start, end in phases:
        count = sum(1 for t in all_oks if start <= t <= end)
        pause = longest_pause(all_oks, start, end)
        worst = max(
            ((longest_pause(ts, start, end), client) for client, ts in ok_by_publisher.items()),
            default=(0, "-"),
        )
        gaps = [op for op in ops if op["kind"] == "gap" and start <= op["t"] <= end]
        print(
            f"| {name} | {(end - start) / 1e6:.1f} s | {count} | {pause / 1e6:.2f} s"
            f" | {worst[0] / 1e6:.2f} s ({worst[1]}) | {len(gaps)} |"
        )
        if name.startswith("rolling"):
            if pause / 1e6 > args.max_pause:
                failures.append(
                    f"acknowledged publishes paused {pause / 1e6:.2f} s during the rolling update"
                    f" (bound {args.max_pause} s)"
                )
            if gaps:
                failures.append(f"{len(gaps)} gap notices during the rolling update")
    all_gaps = sum(1 for op in ops if op["kind"] == "gap")
    print(f"\nGap notices in the whole run: {all_gaps}.")

    # The killed node's clients: the node each was on when n2 was killed, and the first
    # node it used after.
    killed = next((addr for addr, name in names.items() if name == "n2"), None)
    print("\nClients on n2 when it was killed, and where they went on:\n")
    moved_any = False
    for client in sorted({op["client"] for op in ops}):
        mine = [op for op in ops if op["client"] == client and op.get("node")]
        before = [op for op in mine if op["t"] < m["kill"]]
        if not before or before[-1]["node"] != killed:
            continue
        moved_any = True
        after = [op for op in mine if op["t"] >= m["kill"] and op["node"] != killed]
        if not after:
            failures.append(f"{client} did not resume on another node after n2 was killed")
            print(f"- {client}: never used another node")
            continue
        took = (after[0]["t"] - m["kill"]) / 1e6
        print(
            f"- {client}: on {names.get(after[0]['node'], after[0]['node'])} {took:.2f} s after the"
            f" kill ({after[0]['kind']})"
        )
    if not moved_any:
        failures.append("no client was on n2 when it was killed: the kill tested nothing")
    for failure in failures:
        print(f"\nFAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
