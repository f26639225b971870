#!/usr/bin/env bash
# The side-by-side: a three-node Murmur cluster and a three-node NATS cluster (Debian's
# nats-server, WebSocket listener without TLS), all on 127.0.0.1, the same scenarios run
# against both, alternating. Prints each run's table row and JSON line, then Murmur/NATS.
#
#   bench/run.sh                      # the default run (a few minutes)
#   SUBSCRIBERS=1000 MESSAGES=2000 bench/run.sh
#
# Ports: Murmur 7400/7410/7420 (WebSocket), 7401.. gossip, 7402.. QUIC;
#        NATS 4222/4223/4224 (clients), 6222/6223/6224 (routes), 8222/8223/8224 (WebSocket).
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${SUBSCRIBERS:-200}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-128}
RATE=${RATE:-100}
RATE_MESSAGES=${RATE_MESSAGES:-300}
ROUNDS=${ROUNDS:-2}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  MURMUR_BIN=target/release/murmur deploy/local-cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if ! command -v nats-server >/dev/null; then
  echo "installing nats-server (Debian package)"
  { apt-get update -qq && apt-get install -y -qq nats-server; } >/dev/null
fi
cargo build --release -p murmur -p murmur-bench

for i in 0 1 2; do
  cat >"$work/nats$i.conf" <<CONF
listen: 127.0.0.1:$((4222 + i))
server_name: nats$i
websocket { listen: "127.0.0.1:$((8222 + i))", no_tls: true }
cluster {
  name: bench
  listen: 127.0.0.1:$((6222 + i))
  routes: [nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224]
}
CONF
  nats-server -c "$work/nats$i.conf" >"$work/nats$i.log" 2>&1 &
  pids+=($!)
done
MURMUR_BIN=target/release/murmur deploy/local-cluster.sh start >/dev/null
sleep 2

murmur_urls=ws://127.0.0.1:7400/ws,ws://127.0.0.1:7410/ws,ws://127.0.0.1:7420/ws
nats_urls=ws://127.0.0.1:8222,ws://127.0.0.1:8223,ws://127.0.0.1:8224
bench=target/release/murmur-bench
results="$work/results.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for system in murmur nats; do
    urls=$murmur_urls; [ "$system" = nats ] && urls=$nats_urls
    "$bench" fanout --system "$system" --url "$urls" --subscribers "$SUBSCRIBERS" \
      --messages "$MESSAGES" --size "$SIZE" --label "round $round" | tee -a "$results"
    "$bench" fanout --system "$system" --url "$urls" --subscribers "$SUBSCRIBERS" \
      --messages "$RATE_MESSAGES" --size "$SIZE" --rate "$RATE" --label "round $round" | tee -a "$results"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def median(system, rate, key):
    values = [r[key] if not isinstance(key, tuple) else r[key[0]][key[1]]
              for r in runs if r["system"] == system and r["rate"] == rate]
    return statistics.median(values) if values else float("nan")
print()
print("| figure | murmur | nats | murmur / nats |")
print("|---|---:|---:|---:|")
for rate, label in [(None, "full speed"), (runs[1]["rate"] if len(runs) > 1 else None, "fixed rate")]:
    for key, name in [("deliveries_per_s", "deliveries/s"), (("latency_ms", "p50"), "p50 ms"), (("latency_ms", "p99"), "p99 ms")]:
        m, n = median("murmur", rate, key), median("nats", rate, key)
        print(f"| {label} {name} | {m:,.2f} | {n:,.2f} | {m / n:.2f} |")
lost = sum(r["lost"] for r in runs if r["system"] == "murmur")
print(f"\nmurmur lost {lost} messages in all runs")
PY
