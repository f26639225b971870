#!/usr/bin/env bash
# Acknowledged fan-in against the history backends (issue 17, part 8): three-node clusters
# with `storage = memory`, `disk` + `fsync = interval` and `disk` + `fsync = always`, one
# after the other in each round, `murmur-bench topics --acked` against each. Prints each
# run's deliveries/s and the medians, disk over memory.
#
#   bench/storage-acked.sh                 # `make bench-storage`: 3 rounds, 200 topics x 200
#   ROUNDS=5 TOPICS=1000 MESSAGES=100 bench/storage-acked.sh
#   NODE_ARGS="--history-max-events 50" bench/storage-acked.sh   # steady trimming
#
# Ports 7600/7610/7620 (WebSocket), +1 gossip, +2 QUIC, +3 admin; data directories in a
# temporary directory, removed at the end. Results: target/bench/storage-acked.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
TOPICS=${TOPICS:-200}
MESSAGES=${MESSAGES:-200}
SIZE=${SIZE:-128}
bin=target/release/murmur
bench=target/release/murmur-bench
[ -x "$bin" ] && [ -x "$bench" ] || cargo build --release -p murmur -p murmur-bench
work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]+"${pids[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop; rm -rf "$work"' EXIT
"$bin" keygen >"$work/cluster.key"
mkdir -p target/bench
results=target/bench/storage-acked.jsonl
: >"$results"
urls=ws://127.0.0.1:7600/ws,ws://127.0.0.1:7610/ws,ws://127.0.0.1:7620/ws

# start LABEL ARGS...: three nodes with ARGS (and a data directory each when $disk is set).
start() {
  local label=$1
  shift
  for i in 1 2 3; do
    base=$((7600 + (i - 1) * 10))
    MURMUR_MAX_CONNECTIONS_PER_IP=0 "$bin" serve --name "n$i" --cluster-key-file "$work/cluster.key" \
      --listen "127.0.0.1:$base" --gossip "127.0.0.1:$((base + 1))" --quic "127.0.0.1:$((base + 2))" \
      --admin-listen "127.0.0.1:$((base + 3))" --seeds 127.0.0.1:7601,127.0.0.1:7611 \
      "$@" ${disk:+--data-dir "$work/data/n$i"} ${NODE_ARGS:-} >"$work/$label-n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 150); do
    if "$bin" members --url http://127.0.0.1:7603 2>/dev/null | grep -c ' alive ' | grep -q '^3$'; then
      sleep 2
      return 0
    fi
    sleep 0.1
  done
  echo "the $label nodes did not form a cluster; logs in $work" >&2
  exit 1
}

for round in $(seq 1 "$ROUNDS"); do
  for config in memory disk-interval disk-always; do
    case $config in
      memory) args=(--storage memory) ;;
      disk-interval) rm -rf "$work/data"; args=(--storage disk --fsync interval) ;;
      disk-always) rm -rf "$work/data"; args=(--storage disk --fsync always) ;;
    esac
    # One data directory per node, made afresh for each run.
    disk=""
    [ "$config" != memory ] && disk=yes
    start "$config" "${args[@]}"
    line=$("$bench" topics --system murmur --url "$urls" --acked --topics "$TOPICS" \
      --messages "$MESSAGES" --size "$SIZE" --label "$config" --fail-on-loss | tail -n 1)
    echo "$line" >>"$results"
    rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["deliveries_per_s"]))' "$line")
    echo "round $round  $config  $rate deliveries/s"
    stop
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["label"], []).append(r["deliveries_per_s"])
med = {k: statistics.median(v) for k, v in runs.items()}
for k, v in med.items():
    print(f"median {k:14} {v:>10,.0f} deliveries/s  ({v / med['memory']:.2f}x memory)")
PY
