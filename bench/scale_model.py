#!/usr/bin/env python3
"""The model of docs/scaling.md against `make bench-scale`'s runs (target/bench/scale.jsonl).

CPU per delivery (the nodes' user + system time over the deliveries, `server_cpu_us_per_delivery`):

  fan-in  (T topics, a subscriber each, publishers on other nodes than the subscribers):
      cost_in(N)  = E_in + m * k_in(N)
      k_in(N)     = 2 + 2 (N - 1) / N for N >= 2, 0 for N = 1: messages between nodes per event
                    (Replicate and Stored always; a PublishRequest unless the publisher's node
                    owns the topic, a Forward unless the subscriber's node does: each 1 - 1/N)
  fan-out (one topic, S subscribers spread over the N nodes, the publisher on the last node):
      cost_out(N) = E_out + m * k_out(N) / S
      k_out(N)    = 2 + (N - 1) + (N - 1) / N for N >= 2, 0 for N = 1 (Replicate and Stored, a
                    Forward to every other node, the PublishRequest unless the publisher owns it)

plus, in both, what the nodes spend while idle (gossip, QUIC keep-alives, timers), which a
run pays for its whole length: N * i / rate, with i the CPU one formed, idle node uses per
second with N nodes formed (`idle-cluster` lines: measured before the runs) and rate the
run's deliveries/s.

E_in and E_out are the one-node runs' medians (less their idle share); m, the CPU a message
between two nodes costs (both ends), is fitted from the three-node fan-in runs alone.
Everything else is predicted, fan-out included, and compared with the medians measured.
The `writes` lines give the events each socket write carried (murmur_deliveries over
murmur_event_writes, summed over the nodes): the per-write cost is the part of a delivery's
cost that batching amortizes, and what the model leaves out.

Throughput on this machine: every node shares the same 2 cores, so adding nodes adds no CPU.
The prediction is deliveries/s(N) = U / cost(N), with U the cores the nodes used in the
three-node run (deliveries/s x CPU per delivery there).

  bench/scale_model.py [target/bench/scale.jsonl]   # prints the markdown tables
"""

import json
import statistics
import sys


def k_in(n):
    return 0.0 if n == 1 else 2 + 2 * (n - 1) / n


def k_out(n):
    return 0.0 if n == 1 else 2 + (n - 1) + (n - 1) / n


def load(path):
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                runs.append(json.loads(line))
    return runs


def idle_per_node(runs):
    """Per node count: the idle CPU (cores) of one node, and the RSS (MiB) of one node."""
    out = {}
    for r in runs:
        if r.get("scenario") == "idle-cluster":
            out[r["nodes"]] = (r["cpu_ms_per_s"] / 1000 / r["nodes"], r["rss_kib_total"] / 1024 / r["nodes"])
    return out


def events_per_write(runs, scenario, compact):
    """Per node count: median events per socket write of the matching runs."""
    by_n = {}
    for r in runs:
        if r.get("scenario") != "writes" or not r["args"].startswith(scenario):
            continue
        if ("--compact" in r["args"]) != compact:
            continue
        by_n.setdefault(r["nodes"], []).append(r["deliveries"] / max(r["event_writes"], 1))
    return {n: statistics.median(v) for n, v in by_n.items()}


MASK = (1 << 64) - 1


def weight(topic, member):
    """routing::ownership::weight: FNV-1a over topic, 0xff, member, then splitmix64's finaliser."""
    h = 0xCBF29CE484222325
    for byte in topic.encode() + b"\xff" + member.encode():
        h ^= byte
        h = (h * 0x100000001B3) & MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def ranking(topic, members):
    """routing::ownership::rank: the owner first, then the replicas."""
    return sorted(members, key=lambda m: (-weight(topic, m), m))


def fanout_roles(runs, system, e_out):
    """Per node count: the median CPU per event (µs) each kind of node spent in the fan-out
    runs beyond its local deliveries (its subscribers x E_out): the owner (sequences, sends a
    Replicate and N - 1 Forwards), the replica, the publisher's node, and the others (each
    receives one Forward per event)."""
    by_n = {}
    for r in runs:
        if r.get("system") != system or r.get("case") != "fanout-full" or not r.get("server_cpu_s_each"):
            continue
        n, s, messages = r["nodes"], r["subscribers"], r["messages"]
        names = [f"n{i}" for i in range(1, n + 1)]
        ranked = ranking("bench.fanout", names)
        owner, replica = ranked[0], (ranked[1] if n > 1 else None)
        publisher = names[-1]
        for i, (name, cpu) in enumerate(zip(names, r["server_cpu_s_each"])):
            local = len(range(i, s, n))
            extra = cpu * 1e6 / messages - local * e_out
            role = ("owner" if name == owner else "replica" if name == replica
                    else "publisher's node" if name == publisher else "other")
            by_n.setdefault(n, {}).setdefault(role, []).append(extra)
    return {n: {role: statistics.median(v) for role, v in roles.items()} for n, roles in by_n.items()}


def medians(runs, system, case):
    """Per node count: (median CPU µs/delivery, median deliveries/s, median B/delivery, rounds, lost)."""
    by_n = {}
    for r in runs:
        if r.get("system") == system and r.get("case") == case and r.get("server_cpu_us_per_delivery") is not None:
            by_n.setdefault(r["nodes"], []).append(r)
    out = {}
    for n, rs in sorted(by_n.items()):
        out[n] = (
            statistics.median(r["server_cpu_us_per_delivery"] for r in rs),
            statistics.median(r["deliveries_per_s"] for r in rs),
            statistics.median(r["bytes_per_delivery"] or 0 for r in rs),
            len(rs),
            sum(r["lost"] for r in rs),
        )
    return out


def table(title, measured, cost, calibrated, writes):
    base = measured.get(3)
    cores = base[0] * base[1] / 1e6 if base else None
    print(f"#### {title}")
    print()
    print("| nodes | CPU µs/delivery measured | predicted | measured / predicted | deliveries/s measured | "
          "predicted (U / cost) | measured / predicted | events per socket write | B/delivery | rounds | lost |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, (cpu, rate, size, rounds, lost) in measured.items():
        predicted = cost(n, rate)
        rate_predicted = cores * 1e6 / predicted if cores else None
        mark = " (calibration)" if n in calibrated else ""
        rate_cells = (f"{rate_predicted:,.0f} | {rate / rate_predicted:.2f}" if rate_predicted else "— | —")
        per_write = f"{writes[n]:.1f}" if n in writes else "—"
        print(f"| {n}{mark} | {cpu:.2f} | {predicted:.2f} | {cpu / predicted:.2f} | {rate:,.0f} | "
              f"{rate_cells} | {per_write} | {size:.1f} | {rounds} | {lost} |")
    if cores:
        print()
        print(f"U = {cores:.2f} cores (the three-node run's deliveries/s × CPU per delivery).")
    print()


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "target/bench/scale.jsonl"
    runs = load(path)
    fan_in = medians(runs, "murmur", "topics")
    fan_out = medians(runs, "murmur", "fanout-full")
    compact = medians(runs, "murmur-batch-compact", "fanout-full")
    if 1 not in fan_in or 3 not in fan_in:
        sys.exit("need one-node and three-node fan-in runs (NODES=\"1 3 ...\")")
    idle = idle_per_node(runs)

    def idle_us(n, rate):
        """The idle nodes' CPU a delivery carries, µs (measured with N nodes formed)."""
        return n * idle.get(n, (0.0, 0.0))[0] / rate * 1e6

    e_in = fan_in[1][0] - idle_us(1, fan_in[1][1])
    m = (fan_in[3][0] - idle_us(3, fan_in[3][1]) - e_in) / k_in(3)
    subscribers = next(r["subscribers"] for r in runs if r.get("case") == "fanout-full")
    if idle:
        print("| nodes | idle CPU per node (ms/s) | RSS per node, idle (MiB) |")
        print("|---:|---:|---:|")
        for n, (cpu, rss) in sorted(idle.items()):
            print(f"| {n} | {cpu * 1000:.1f} | {rss:.1f} |")
        print()
    print(f"Fitted: E_in = {e_in:.2f} µs (one node, less its idle share), "
          f"m = {m:.2f} µs per message between nodes (three-node fan-in); S = {subscribers}.")
    print()
    table("Fan-in (1 subscriber per topic, publishers on other nodes)", fan_in,
          lambda n, rate: e_in + m * k_in(n) + idle_us(n, rate), {1, 3},
          events_per_write(runs, "topics", False))
    for title, measured, is_compact in [("Fan-out, plain frames", fan_out, False),
                                        ("Fan-out, compact batches", compact, True)]:
        if 1 not in measured:
            continue
        e_out = measured[1][0] - idle_us(1, measured[1][1])
        table(f"{title} ({subscribers} subscribers on one topic)", measured,
              lambda n, rate, e_out=e_out: e_out + m * k_out(n) / subscribers + idle_us(n, rate), {1},
              events_per_write(runs, "fanout", is_compact))
        system = "murmur-batch-compact" if is_compact else "murmur"
        roles = fanout_roles(runs, system, e_out)
        if roles:
            print(f"Where it went, per node: µs of CPU per published event beyond the node's local "
                  f"deliveries (its subscribers × {e_out:.2f} µs), medians:")
            print()
            print("| nodes | owner | replica | publisher's node | each other node |")
            print("|---:|---:|---:|---:|---:|")
            for n, by_role in sorted(roles.items()):
                cells = [f"{by_role[k]:.1f}" if k in by_role else "—"
                         for k in ("owner", "replica", "publisher's node", "other")]
                print(f"| {n} | " + " | ".join(cells) + " |")
            print()


if __name__ == "__main__":
    main()
