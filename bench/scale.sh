#!/usr/bin/env bash
# Clusters of N Murmur nodes on this machine, for checking the model of docs/scaling.md:
# for each N in NODES it starts N nodes (release build, default settings: replication 2),
# runs fan-out (one topic, S subscribers spread over the nodes, one publisher on the last
# node) and fan-in (T topics, one subscriber each, publishers on the next node) in ROUNDS
# rounds, with the nodes' CPU time per delivery and the subscribers' bytes per delivery, then
# stops them. With NATS=yes it runs the same against an N-node NATS cluster (routes between
# all, WebSocket listeners), and MODES adds Murmur's batch-frame modes to the fan-out.
#
#   bench/scale.sh                        # `make bench-scale`: N = 1, 2, 3, 5, 9, plain frames
#                                         # and compact batches (~6 minutes); then
#   bench/scale_model.py                  # the model of docs/scaling.md, fitted and checked
#   NODES="3 5" ROUNDS=1 bench/scale.sh   # counts can be overridden, see below
#   NODES=3 NATS=yes MODES="plain batch compact" SCALE_SCENARIOS=fanout bench/scale.sh
#                                         # bytes per delivery: Murmur's layouts vs NATS
#
# Run it under `flock /tmp/murmur-bench.lock` on a shared machine (the make target does).
# Ports: Murmur node i (1..9) 7600+10(i-1) WebSocket, +1 gossip, +2 QUIC, +3 admin;
#        NATS node i 4300+i clients, 6300+i routes, 8300+i WebSocket.
# Results: one JSON line per run in target/bench/scale.jsonl (each with `nodes`), a table
# row per run on stdout; node logs in target/bench/scale-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-1 2 3 5 9}
ROUNDS=${ROUNDS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-300}
MESSAGES=${MESSAGES:-1000}
TOPICS=${TOPICS:-300}
TOPIC_MESSAGES=${TOPIC_MESSAGES:-100}
SIZE=${SIZE:-128}
NATS=${NATS:-no}
MODES=${MODES:-plain compact}
SCALE_SCENARIOS=${SCALE_SCENARIOS:-fanout topics}
PAUSE=${PAUSE:-2}
IDLE_SECONDS=${IDLE_SECONDS:-5}

for n in $NODES; do
  if [ "$n" -lt 1 ] || [ "$n" -gt 9 ]; then
    echo "NODES: 1 to 9 nodes per cluster (ports 7600-7683), not $n" >&2
    exit 2
  fi
done
ulimit -n "$(ulimit -Hn | sed 's/unlimited/65536/')" 2>/dev/null || true

cargo build --release -p murmur -p murmur-bench
murmur=target/release/murmur
bench=target/release/murmur-bench
out=target/bench
mkdir -p "$out" "$out/scale-logs"
results=$out/scale.jsonl
: >"$results"
work=$(mktemp -d)
pids=()
nats_pids=()

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${nats_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${nats_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  nats_pids=()
}
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

(umask 077; "$murmur" keygen >"$work/cluster.key")

# start_murmur N: N nodes, seeded by the first two (a lone node has no seeds: with seeds it
# would wait to find another member before taking publishes); waits until n1 sees all N alive.
start_murmur() {
  local n=$1 i base seeds=()
  [ "$n" -gt 1 ] && seeds=(--seeds 127.0.0.1:7601,127.0.0.1:7611)
  for i in $(seq 1 "$n"); do
    base=$((7600 + (i - 1) * 10))
    MURMUR_MAX_CONNECTIONS_PER_IP=0 "$murmur" serve --name "n$i" --cluster-key-file "$work/cluster.key" \
      --listen "127.0.0.1:$base" --gossip "127.0.0.1:$((base + 1))" --quic "127.0.0.1:$((base + 2))" \
      --admin-listen "127.0.0.1:$((base + 3))" \
      ${seeds[@]+"${seeds[@]}"} >"$out/scale-logs/murmur-$n-n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 300); do
    if "$murmur" members --url http://127.0.0.1:7603 2>/dev/null | grep -c ' alive ' | grep -q "^$n\$"; then
      sleep 2
      return 0
    fi
    sleep 0.1
  done
  echo "$n Murmur nodes did not form a cluster within 30 s; see $out/scale-logs/" >&2
  exit 1
}

# start_nats N: N nats-servers routed to each other.
start_nats() {
  local n=$1 i routes=""
  for i in $(seq 1 "$n"); do routes+="nats-route://127.0.0.1:$((6300 + i)),"; done
  for i in $(seq 1 "$n"); do
    cat >"$work/nats$i.conf" <<CONF
listen: 127.0.0.1:$((4300 + i))
server_name: nats$i
websocket { listen: "127.0.0.1:$((8300 + i))", no_tls: true }
cluster { name: scale, listen: 127.0.0.1:$((6300 + i)), routes: [${routes%,}] }
CONF
    nats-server -c "$work/nats$i.conf" >"$out/scale-logs/nats-$n-$i.log" 2>&1 &
    nats_pids+=($!)
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$((8300 + i))") 2>/dev/null && break
      sleep 0.1
    done
  done
  # Routes between every pair, and the interest they carry, settle after the listeners open.
  sleep 3
}

# cpu_ticks PIDS...: user + system clock ticks (1/100 s) the processes used so far.
cpu_ticks() {
  local pid total=0 fields
  for pid in "$@"; do
    read -ra fields <"/proc/$pid/stat"
    total=$((total + fields[13] + fields[14]))
  done
  echo "$total"
}

# metric_sum N NAME: NAME summed over the N Murmur nodes' /metrics (admin ports).
metric_sum() {
  local n=$1 name=$2 i total=0 value
  for i in $(seq 1 "$n"); do
    value=$( (exec 3<>"/dev/tcp/127.0.0.1/$((7603 + (i - 1) * 10))" &&
      printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 &&
      cat <&3) 2>/dev/null | awk -v m="$name" '$1 == m {printf "%d", $2}')
    total=$((total + ${value:-0}))
  done
  echo "$total"
}

# idle_cost N: what N idle nodes (formed, no clients) use: CPU over IDLE_SECONDS and RSS.
idle_cost() {
  local n=$1 before after rss=0 pid kib
  before=$(cpu_ticks "${pids[@]}")
  sleep "$IDLE_SECONDS"
  after=$(cpu_ticks "${pids[@]}")
  for pid in "${pids[@]}"; do
    kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    rss=$((rss + kib))
  done
  echo "{\"scenario\":\"idle-cluster\",\"nodes\":$n,\"cpu_ms_per_s\":$(( (after - before) * 10 / IDLE_SECONDS )),\"rss_kib_total\":$rss}" | tee -a "$results"
}

# run SCENARIO ARGS...: one murmur-bench run; for Murmur runs (when MURMUR_NODES is set) the
# events each socket write carried, from the nodes' murmur_deliveries / murmur_event_writes.
run() {
  local d0 w0 d1 w1
  if [ -n "${MURMUR_NODES:-}" ]; then
    d0=$(metric_sum "$MURMUR_NODES" murmur_deliveries_total)
    w0=$(metric_sum "$MURMUR_NODES" murmur_event_writes_total)
  fi
  if ! "$bench" "$@" | tee -a "$results"; then
    echo "FAILED: $*" | tee -a "$results"
  fi
  if [ -n "${MURMUR_NODES:-}" ]; then
    d1=$(metric_sum "$MURMUR_NODES" murmur_deliveries_total)
    w1=$(metric_sum "$MURMUR_NODES" murmur_event_writes_total)
    if [ "$((w1 - w0))" -gt 0 ]; then
      echo "{\"scenario\":\"writes\",\"args\":\"$*\",\"nodes\":$MURMUR_NODES,\"deliveries\":$((d1 - d0)),\"event_writes\":$((w1 - w0))}" | tee -a "$results"
    fi
  fi
  sleep "$PAUSE"
}

for n in $NODES; do
  murmur_urls=$(for i in $(seq 1 "$n"); do printf 'ws://127.0.0.1:%d/ws,' $((7600 + (i - 1) * 10)); done)
  murmur_urls=${murmur_urls%,}
  start_murmur "$n"
  server_pids=$(IFS=,; echo "${pids[*]}")
  idle_cost "$n"
  nats_urls=""
  if [ "$NATS" = yes ]; then
    start_nats "$n"
    nats_urls=$(for i in $(seq 1 "$n"); do printf 'ws://127.0.0.1:%d,' $((8300 + i)); done)
    nats_urls=${nats_urls%,}
    nats_server_pids=$(IFS=,; echo "${nats_pids[*]}")
  fi
  for round in $(seq 1 "$ROUNDS"); do
    label="$n nodes, round $round"
    for scenario in $SCALE_SCENARIOS; do
      if [ "$scenario" = fanout ]; then
        for mode in $MODES; do
          mode_args=()
          [ "$mode" = batch ] && mode_args=(--batch)
          [ "$mode" = compact ] && mode_args=(--batch --compact)
          MURMUR_NODES=$n run fanout --system murmur --url "$murmur_urls" --server-pids "$server_pids" \
            --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --size "$SIZE" \
            ${mode_args[@]+"${mode_args[@]}"} --label "$label"
        done
        if [ "$NATS" = yes ]; then
          run fanout --system nats --url "$nats_urls" --server-pids "$nats_server_pids" \
            --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --size "$SIZE" --label "$label"
        fi
      else
        MURMUR_NODES=$n run topics --system murmur --url "$murmur_urls" --server-pids "$server_pids" \
          --topics "$TOPICS" --messages "$TOPIC_MESSAGES" --size "$SIZE" --label "$label"
        if [ "$NATS" = yes ]; then
          run topics --system nats --url "$nats_urls" --server-pids "$nats_server_pids" \
            --topics "$TOPICS" --messages "$TOPIC_MESSAGES" --size "$SIZE" --label "$label"
        fi
      fi
    done
  done
  stop_all
done
echo "results in $results"
