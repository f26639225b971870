#!/usr/bin/env bash
# `make perf-count`: CPU instructions a node spends per event, counted by valgrind's
# callgrind. Instruction counts repeat to within about 1% from run to run, where wall-clock
# rates on this shared machine spread by 20% or more: this is the figure to compare commits
# and settings by (docs/benchmarks.md, "Instructions per event").
#
# One node (release build) runs under callgrind; murmur-bench, outside valgrind, drives one
# scenario against it twice, with N and 2N messages after the same setup (connections,
# hello, subscriptions). The difference between the two runs' totals, divided by the
# difference in events, is the cost per event with start-up, connects and shutdown taken out.
#
#   fan-out   1 publisher, 50 subscribers on one topic: instructions per delivery
#   fan-in    100 topics, a subscriber each, publishers on their own connections: per event
#             (publish, sequencing, one delivery)
#   acked     acknowledged publishes (`pub` with `ref`, window 64), 1 subscriber: per publish
#
# Each with `auth = none` and with `auth = token` (HS256, the bench's token with allow and
# deny patterns): the ratio is what token and permission checks cost per event.
#
#   bench/perf-count.sh            # all scenarios, both auth modes (~6 min)
#   bench/perf-count.sh --quick    # smaller counts (~2 min)
# --quick is for trying the script: its smaller differences carry more noise (allocator state,
# scheduling: a few percent). Appends one line per scenario to bench/perf-count-history.tsv (commit, date, figures).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }

FANOUT_SUBS=50
FANOUT_N=200
TOPICS=100
TOPIC_N=30
ACKED_N=1000
if [ "${1:-}" = --quick ]; then
  FANOUT_N=100
  TOPIC_N=10
  ACKED_N=250
fi

cargo build --release -p murmur -p murmur-bench -p murmur-abuse -p murmur-chaos >&2
murmur=target/release/murmur
bench=target/release/murmur-bench
work=target/perf-count
rm -rf "$work"
mkdir -p "$work"

secret=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
token=$(MURMUR_TOKEN_HMAC_SECRET=$secret "$murmur" token --sub murmur-bench --ttl 2h \
  --allow-pub 'chat.*.messages' --allow-pub 'presence.>' --allow-pub 'bench.fanout' --allow-pub 'bench.topics.*' \
  --allow-sub 'chat.>' --allow-sub 'presence.*' --allow-sub 'bench.fanout' --allow-sub 'bench.topics.*' \
  --deny-pub 'bench.*.admin' --deny-sub 'bench.*.admin')

port=17700
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then kill -9 "$node_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# True when the node answers GET /readyz with 200 (bash's /dev/tcp: no curl needed).
ready() {
  local status
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
    printf 'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 &&
    head -1 <&3) 2>/dev/null) || return 1
  [[ $status == *" 200 "* ]]
}

# Starts a node under callgrind writing to $1; auth mode $2.
start_node() {
  local out=$1 auth=$2
  local auth_args=()
  [ "$auth" = on ] && auth_args=(--auth token)
  MURMUR_TOKEN_HMAC_SECRET=$secret valgrind --tool=callgrind --callgrind-out-file="$out" \
    --dump-instr=no --collect-jumps=no \
    "$murmur" serve --name perf --listen "127.0.0.1:$port" --gossip "127.0.0.1:$((port + 1))" \
    --quic "127.0.0.1:$((port + 2))" --admin-listen "127.0.0.1:$((port + 3))" \
    --shutdown-grace 1s --log warn "${auth_args[@]}" >"$out.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 600); do
    if ready; then return 0; fi
    sleep 0.1
  done
  echo "the node under callgrind did not become ready; log: $out.log" >&2
  exit 1
}

stop_node() {
  kill -TERM "$node_pid"
  wait "$node_pid" || true
  node_pid=""
}

total_instructions() {
  grep -E '^(summary|totals):' "$1" | head -1 | awk '{print $2}'
}

# run_once AUTH OUT -- bench args…: total instructions of the node for one bench run.
run_once() {
  local auth=$1 out=$2
  shift 3
  start_node "$out" "$auth"
  local token_env=()
  [ "$auth" = on ] && token_env=(MURMUR_BENCH_TOKEN="$token")
  env "${token_env[@]}" "$bench" "$@" --system murmur --url "ws://127.0.0.1:$port/ws" \
    --fail-on-loss >"$out.bench" 2>&1 || { echo "bench failed: $out.bench" >&2; cat "$out.bench" >&2; exit 1; }
  stop_node
  total_instructions "$out"
}

# measure NAME AUTH EVENTS_PER_MESSAGE N -- bench args without --messages
measure() {
  local name=$1 auth=$2 per=$3 n=$4
  shift 5
  local small large
  small=$(run_once "$auth" "$work/$name-$auth-1.out" -- "$@" --messages "$n")
  large=$(run_once "$auth" "$work/$name-$auth-2.out" -- "$@" --messages "$((2 * n))")
  # The extra messages' events: n more messages, each `per` events.
  echo $(( (large - small) / (n * per) ))
}

commit=$(git rev-parse --short HEAD)
date=$(date -u +%Y-%m-%d)
declare -A result
for auth in off on; do
  result[fanout-$auth]=$(measure fanout "$auth" "$FANOUT_SUBS" "$FANOUT_N" -- \
    fanout --subscribers "$FANOUT_SUBS" --size 128)
  result[fanin-$auth]=$(measure fanin "$auth" "$TOPICS" "$TOPIC_N" -- \
    topics --topics "$TOPICS" --size 128)
  result[acked-$auth]=$(measure acked "$auth" 1 "$ACKED_N" -- \
    fanout --subscribers 1 --acked --window 64 --size 128)
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
{
  echo "| scenario (commit $commit, $date) | auth off | auth on | on / off |"
  echo "|---|---:|---:|---:|"
  echo "| fan-out: instructions per delivery | ${result[fanout-off]} | ${result[fanout-on]} | $(ratio "${result[fanout-on]}" "${result[fanout-off]}") |"
  echo "| fan-in: instructions per event (publish + delivery) | ${result[fanin-off]} | ${result[fanin-on]} | $(ratio "${result[fanin-on]}" "${result[fanin-off]}") |"
  echo "| acknowledged publish: instructions per publish (+1 delivery) | ${result[acked-off]} | ${result[acked-on]} | $(ratio "${result[acked-on]}" "${result[acked-off]}") |"
} | tee "$work/table.md"

history=bench/perf-count-history.tsv
[ -f "$history" ] || printf 'commit\tdate\tscenario\tauth_off\tauth_on\n' >"$history"
for s in fanout fanin acked; do
  printf '%s\t%s\t%s\t%s\t%s\n' "$commit" "$date" "$s" "${result[$s-off]}" "${result[$s-on]}" >>"$history"
done
echo "appended to $history; callgrind files in $work/" >&2
