#!/usr/bin/env bash
# `make perf-count-cluster`: CPU instructions a three-node cluster spends per fan-in event,
# every hop included, counted by valgrind's callgrind (bench/perf-count.sh counts one node,
# so no peer hop). Each node runs under callgrind; murmur-bench, outside valgrind, runs the
# many-topics scenario (topic i's subscriber on node i mod 3, its publisher on the next node)
# twice, with N and 2N messages per topic. The difference of the three nodes' summed totals,
# divided by the difference in events, is the cluster's cost per event: the publisher's
# front door, the hop to the owner, sequencing, the replica's copy and its `Stored`, the hop
# to the subscriber's node and the delivery.
#
#   bench/perf-count-cluster.sh            # 300 topics, 20 and 40 messages each (~3 min)
#
# Run to run the figure moves by a few percent (how many frames each wake-up of a task or a
# link's writer finds differs with the timing of three processes on two cores); compare
# commits by several runs each. NATS is not counted: callgrind 3.19 trips on the Go
# runtime's signals (an assertion at the first preemption signal; with GODEBUG=asyncpreemptoff=1
# at exit, and one server of three died mid-run when its counts were dumped first).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
TOPICS=${TOPICS:-300}
N=${N:-20}
cargo build --release -p murmur -p murmur-bench >&2
murmur=target/release/murmur
bench=target/release/murmur-bench
work=target/perf-count-cluster
rm -rf "$work"
mkdir -p "$work"
first=17900
pids=()
cleanup() { for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

ready() {
  local port=$1 status
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
    printf 'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 &&
    head -1 <&3) 2>/dev/null) || return 1
  [[ $status == *" 200 "* ]]
}

# True when the node whose admin port is $1 lists three members alive (GET /v1/cluster).
members_alive() {
  local body
  body=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf 'GET /v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 &&
    cat <&3) 2>/dev/null) || return 1
  [ "$(printf '%s' "$body" | grep -o '"state":"alive"' | wc -l)" -ge 3 ]
}

# run_once DIR MESSAGES: the three nodes' summed instructions for one bench run.
run_once() {
  local dir=$1 n=$2 key urls="" total=0
  mkdir -p "$dir"
  key=$("$murmur" keygen)
  for i in 1 2 3; do
    local base=$((first + (i - 1) * 10))
    MURMUR_CLUSTER_KEY=$key valgrind --tool=callgrind --callgrind-out-file="$dir/n$i.out" \
      --dump-instr=no --collect-jumps=no \
      "$murmur" serve --name "n$i" --listen "127.0.0.1:$base" --gossip "127.0.0.1:$((base + 1))" \
      --quic "127.0.0.1:$((base + 2))" --admin-listen "127.0.0.1:$((base + 3))" \
      --seeds "127.0.0.1:$((first + 1)),127.0.0.1:$((first + 11))" --shutdown-grace 1s \
      --log warn >"$dir/n$i.log" 2>&1 &
    pids+=($!)
    urls+="${urls:+,}ws://127.0.0.1:$base/ws"
  done
  for i in 0 1 2; do
    for attempt in $(seq 1 900); do
      if ready $((first + i * 10)); then break; fi
      [ "$attempt" = 900 ] && { echo "node n$((i + 1)) under callgrind did not become ready" >&2; exit 1; }
      sleep 0.2
    done
  done
  # Every node sees the other two alive before the first publish (else a publish could meet
  # a node that does not know its topic's owner yet).
  for i in 0 1 2; do
    for attempt in $(seq 1 300); do
      if members_alive $((first + i * 10 + 3)); then break; fi
      [ "$attempt" = 300 ] && { echo "node n$((i + 1)) never saw all three members alive" >&2; exit 1; }
      sleep 0.2
    done
  done
  "$bench" topics --topics "$TOPICS" --size 128 --messages "$n" --system murmur --url "$urls" \
    --fail-on-loss >"$dir/bench.txt" 2>&1 || { echo "bench failed: $dir/bench.txt" >&2; cat "$dir/bench.txt" >&2; exit 1; }
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  pids=()
  for i in 1 2 3; do
    total=$((total + $(grep -E '^(summary|totals):' "$dir/n$i.out" | head -1 | awk '{print $2}')))
  done
  echo "$total"
}

small=$(run_once "$work/small" "$N")
large=$(run_once "$work/large" "$((2 * N))")
per_event=$(( (large - small) / (TOPICS * N) ))
commit=$(git rev-parse --short HEAD)
echo "fan-in over 3 nodes ($TOPICS topics, +$N messages each), commit $commit: $per_event instructions per event (all three nodes)"
history=bench/perf-count-history.tsv
printf '%s\t%s\t%s\t%s\t%s\n' "$commit" "$(date -u +%Y-%m-%d)" fanin-3-nodes "$per_event" "" >>"$history"
echo "appended to $history; callgrind files in $work/" >&2
