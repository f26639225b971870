#!/usr/bin/env bash
# The side-by-side: a three-node Murmur cluster and a three-node NATS cluster (Debian's
# nats-server, WebSocket listener without TLS, JetStream enabled), all on 127.0.0.1, every
# scenario of murmur-bench run against both, alternating, in rounds; then bench/render.py
# writes the generated section of docs/benchmarks.md (medians of the rounds, Murmur/NATS per
# figure, the issue's targets met or missed).
# The acknowledged scenarios (`fanout --acked`, `topics --acked`) run against NATS JetStream,
# the peer with the same guarantee (a publish answered once stored on 2 replicas), twice:
# `--system jetstream-mem` (a stream in memory) and `--system jetstream-file` (on disk), with
# a push consumer per subscriber; and the memory stream once more with core NATS
# subscriptions as the subscribers (`--jetstream-subscribers core`, reported as
# `jetstream-mem-core-sub`). murmur-bench creates a stream with 2 replicas for each run and
# deletes it afterwards.
# The cost of client auth is measured in the same run: a second three-node Murmur cluster
# with `auth = token` (an HMAC secret, a token with a few allow patterns and a deny pattern),
# the many-topics and full-speed fan-out runs each paired with the same run against the
# auth-off cluster, back to back, the pair's order alternating with the round.
#
#   bench/run.sh            # `make bench`: the full run (about 7 minutes on 2 cores)
#   bench/run.sh --smoke    # `make bench-smoke`: small counts, checks only that nothing is
#                           # lost and nothing fails (non-zero exit otherwise); NATS is
#                           # skipped when nats-server is not installed and can't be
#                           # (or when NATS=no)
#   ROUNDS=3 SUBSCRIBERS=500 bench/run.sh   # counts can be overridden, see below
#
# Run it under `flock /tmp/murmur-bench.lock` on a shared machine: the ports are fixed.
# Ports: Murmur 7400/7410/7420 (WebSocket), 7401.. gossip, 7402.. QUIC, 7403.. admin;
#        Murmur with auth 7500/7510/7520 (WebSocket), 7501.. gossip, 7502.. QUIC, 7503.. admin;
#        NATS 4222/4223/4224 (clients), 6222/6223/6224 (routes), 8222/8223/8224 (WebSocket);
#        its JetStream stores in a temporary directory, removed at the end.
# Results (one JSON line per run, plus the table rows): target/bench/<mode>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
[ "${1:-}" = --smoke ] && mode=smoke
began=$(date +%s)
# Other work on the machine skews the numbers: the load average before anything starts says how much.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "$mode" = full ]; then
  ROUNDS=${ROUNDS:-5}
  SUBSCRIBERS=${SUBSCRIBERS:-1000}
  MESSAGES=${MESSAGES:-2000}
  RATE=${RATE:-100}
  RATE_MESSAGES=${RATE_MESSAGES:-300}
  TOPICS=${TOPICS:-1000}
  TOPIC_MESSAGES=${TOPIC_MESSAGES:-100}
  # The generator's bursts: 10,000 messages to 1,000 subscribers; 1,000 topics x 1,000.
  BURST_MESSAGES=${BURST_MESSAGES:-10000}
  BURST_TOPIC_MESSAGES=${BURST_TOPIC_MESSAGES:-1000}
  MEMBERS=${MEMBERS:-30}
  QUEUE_MESSAGES=${QUEUE_MESSAGES:-20000}
  IDLE_STEPS=${IDLE_STEPS:-1000,5000,10000,19000}
  IDLE_SETTLE_MS=${IDLE_SETTLE_MS:-2000}
else
  ROUNDS=${ROUNDS:-1}
  SUBSCRIBERS=${SUBSCRIBERS:-20}
  MESSAGES=${MESSAGES:-2000}
  RATE=${RATE:-100}
  RATE_MESSAGES=${RATE_MESSAGES:-100}
  TOPICS=${TOPICS:-50}
  TOPIC_MESSAGES=${TOPIC_MESSAGES:-40}
  BURST_MESSAGES=${BURST_MESSAGES:-5000}
  BURST_TOPIC_MESSAGES=${BURST_TOPIC_MESSAGES:-200}
  MEMBERS=${MEMBERS:-3}
  QUEUE_MESSAGES=${QUEUE_MESSAGES:-2000}
  IDLE_STEPS=${IDLE_STEPS:-100,200}
  IDLE_SETTLE_MS=${IDLE_SETTLE_MS:-300}
fi
SIZE=${SIZE:-128}
# Seconds between runs, so one run's closing connections don't overlap the next one's start.
PAUSE=${PAUSE:-2}
[ "$mode" = smoke ] && PAUSE=${PAUSE_SMOKE:-0}

# Every node and the load generator may hold up to 20,000 files (the idle scenario drives one
# node to ~19,000 connections, from several generator processes).
open_files=20000
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$open_files" ]; then open_files=$hard; fi
ulimit -n "$open_files"
# Leave the node room for its own files: drop idle steps beyond the limit.
IDLE_STEPS=$(echo "$IDLE_STEPS" | tr , '\n' | awk -v max=$((open_files - 500)) '$1 <= max' | paste -sd,)

systems="murmur nats"
nats_note=""
if [ "$mode" = smoke ] && [ "${NATS:-auto}" = no ]; then
  systems="murmur"
  nats_note="NATS skipped: NATS=no"
elif ! command -v nats-server >/dev/null; then
  echo "nats-server is missing: installing Debian's package"
  limit=300
  [ "$mode" = smoke ] && limit=60
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { timeout $limit apt-get update -qq && timeout $limit apt-get install -y -qq nats-server; } >/dev/null 2>&1 || true
  fi
  if ! command -v nats-server >/dev/null; then
    if [ "$mode" = full ]; then
      echo "nats-server could not be installed (needs root, apt-get and the Debian archive)" >&2
      exit 1
    fi
    systems="murmur"
    nats_note="NATS skipped: nats-server is not installed and could not be installed"
  fi
fi
[ -n "$nats_note" ] && echo "$nats_note"

cargo build --release -p murmur -p murmur-bench -p murmur-abuse -p murmur-chaos
bench=target/release/murmur-bench
out=target/bench
mkdir -p "$out"
rm -rf "$out/logs"
results="$out/$mode.jsonl"
: >"$results"
work=$(mktemp -d)
nats_pids=()

start_clusters() {
  if [[ " $systems " == *" nats "* ]]; then
    nats_pids=()
    for i in 0 1 2; do
      cat >"$work/nats$i.conf" <<CONF
listen: 127.0.0.1:$((4222 + i))
server_name: nats$i
websocket { listen: "127.0.0.1:$((8222 + i))", no_tls: true }
jetstream { store_dir: "$work/jetstream$i", max_memory_store: 1G, max_file_store: 4G }
cluster {
  name: bench
  listen: 127.0.0.1:$((6222 + i))
  routes: [nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224]
}
CONF
      nats-server -c "$work/nats$i.conf" >"$work/nats$i.log" 2>&1 &
      nats_pids+=($!)
    done
    for port in 8222 8223 8224; do
      for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
      done
    done
  fi
  # Every load generator connects from 127.0.0.1 (19,000 idle connections to one node):
  # no per-address limit here.
  MURMUR_MAX_CONNECTIONS_PER_IP=0 MURMUR_BIN=target/release/murmur deploy/local-cluster.sh start >/dev/null
  sleep 2
}

# The auth-on cluster: the same three nodes as deploy/local-cluster.sh starts, on their own
# ports, with `auth = token` and an HMAC secret made for this run. The same node names too:
# topics are placed by hashing them, so both clusters give each topic the same owner and
# replica, and a delivery takes the same hops. Its token allows what the
# bench does among a few other patterns, the bench's own last (so a publish is checked
# against every allow before it matches), and denies one pattern in each direction (checked
# on every publish and subscription that passed the allows): the checks do real work.
murmur_bin=target/release/murmur
auth_urls=ws://127.0.0.1:7500/ws,ws://127.0.0.1:7510/ws,ws://127.0.0.1:7520/ws
auth_pids=()
auth_token=""
start_auth_cluster() {
  (umask 077; "$murmur_bin" keygen >"$work/auth-cluster.key"; "$murmur_bin" keygen >"$work/auth-hmac.secret")
  local secret
  secret=$(cat "$work/auth-hmac.secret")
  auth_token=$(MURMUR_TOKEN_HMAC_SECRET=$secret "$murmur_bin" token --sub murmur-bench --ttl 2h \
    --allow-pub 'chat.*.messages' --allow-pub 'presence.>' --allow-pub 'bench.fanout' --allow-pub 'bench.topics.*' \
    --allow-sub 'chat.>' --allow-sub 'presence.*' --allow-sub 'bench.fanout' --allow-sub 'bench.topics.*' \
    --deny-pub 'bench.*.admin' --deny-sub 'bench.*.admin')
  auth_pids=()
  for i in 1 2 3; do
    base=$((7500 + (i - 1) * 10))
    MURMUR_MAX_CONNECTIONS_PER_IP=0 MURMUR_TOKEN_HMAC_SECRET_FILE="$work/auth-hmac.secret" \
      "$murmur_bin" serve --name "n$i" --auth token --cluster-key-file "$work/auth-cluster.key" \
      --listen "127.0.0.1:$base" --gossip "127.0.0.1:$((base + 1))" --quic "127.0.0.1:$((base + 2))" \
      --admin-listen "127.0.0.1:$((base + 3))" \
      --seeds 127.0.0.1:7501,127.0.0.1:7511 >"$work/auth-n$i.log" 2>&1 &
    auth_pids+=($!)
  done
  for _ in $(seq 1 100); do
    if "$murmur_bin" members --url http://127.0.0.1:7503 2>/dev/null | grep -c ' alive ' | grep -q '^3$'; then
      sleep 2
      return 0
    fi
    sleep 0.1
  done
  echo "the auth-on nodes did not form a cluster within 10 s; see $out/logs/murmur-auth-*.log" >&2
  stop_auth_cluster start
  exit 1
}

# stop_auth_cluster PHASE: SIGTERM (a graceful leave), then the logs to $out/logs/.
stop_auth_cluster() {
  [ "${#auth_pids[@]}" = 0 ] && return 0
  for pid in "${auth_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${auth_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  auth_pids=()
  mkdir -p "$out/logs"
  for i in 1 2 3; do
    [ -f "$work/auth-n$i.log" ] && cp "$work/auth-n$i.log" "$out/logs/murmur-auth-n$i.${1:-end}.log"
  done
  return 0
}

# stop_clusters PHASE: stops the clusters, keeping the Murmur nodes' logs in $out/logs/.
stop_clusters() {
  stop_auth_cluster "${1:-end}"
  mkdir -p "$out/logs"
  for i in 1 2 3; do
    [ -f ".cluster/n$i.log" ] && cp ".cluster/n$i.log" "$out/logs/murmur-n$i.${1:-end}.log"
  done
  for pid in "${nats_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${nats_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  nats_pids=()
  rm -rf "$work"/jetstream?
  MURMUR_BIN=target/release/murmur deploy/local-cluster.sh stop >/dev/null 2>&1 || true
}

cleanup() {
  stop_clusters end
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

murmur_urls=ws://127.0.0.1:7400/ws,ws://127.0.0.1:7410/ws,ws://127.0.0.1:7420/ws
nats_urls=ws://127.0.0.1:8222,ws://127.0.0.1:8223,ws://127.0.0.1:8224
strict=()
[ "$mode" = smoke ] && strict=(--fail-on-loss)
failures=0

# run SYSTEM URLS SCENARIO ARGS...: one run; its rows and JSON line go to the results.
run() {
  local system=$1 urls=$2
  shift 2
  if ! "$bench" "$@" --system "$system" --url "$urls" "${strict[@]}" | tee -a "$results"; then
    echo "FAILED: $system $*" | tee -a "$results"
    [ "$mode" = smoke ] && exit 1
    failures=$((failures + 1))
  fi
  sleep "$PAUSE"
}

# auth_pair ARGS...: one run against the auth-off cluster and the same against the auth-on
# cluster (its token in the environment, not on the command line), back to back; odd rounds
# start with auth off, even rounds with auth on. Both report their nodes' CPU time per
# delivery, which the machine's other load disturbs less than throughput.
auth_pair() {
  local order="off on" off_pids
  [ $((round % 2)) = 0 ] && order="on off"
  off_pids=$(cat .cluster/n1.pid .cluster/n2.pid .cluster/n3.pid | paste -sd,)
  for auth in $order; do
    if [ "$auth" = off ]; then
      run murmur "$murmur_urls" "$@" --server-pids "$off_pids"
    else
      MURMUR_BENCH_TOKEN=$auth_token run murmur "$auth_urls" "$@" \
        --server-pids "$(IFS=,; echo "${auth_pids[*]}")"
    fi
  done
}

start_clusters
start_auth_cluster
for round in $(seq 1 "$ROUNDS"); do
  order=$systems
  # Alternate which system goes first in each round.
  if [ $((round % 2)) = 0 ]; then order=$(echo "$systems" | tr ' ' '\n' | tac | paste -sd' '); fi
  for system in $order; do
    urls=$murmur_urls
    [ "$system" = nats ] && urls=$nats_urls
    label="round $round"
    if [ "$system" = murmur ]; then
      auth_pair fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --size "$SIZE" --label "$label"
    else
      run "$system" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" \
        --size "$SIZE" --label "$label"
    fi
    run "$system" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$RATE_MESSAGES" \
      --size "$SIZE" --rate "$RATE" --label "$label"
    if [ "$system" = murmur ]; then
      # The opt-in batch frames (several queued events per WebSocket frame).
      run "$system" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" \
        --size "$SIZE" --batch --label "$label"
      run "$system" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$RATE_MESSAGES" \
        --size "$SIZE" --rate "$RATE" --batch --label "$label"
      # The compact batch layout (runs: topic and epoch once per run of events).
      run "$system" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" \
        --size "$SIZE" --batch --compact --label "$label"
    fi
    # Acknowledged publishing: Murmur, or JetStream (memory, then file) on the NATS cluster.
    # JetStream's subscribers are push consumers (every stored message, from the stream);
    # `:core` runs the memory stream again with core NATS subscriptions on its subjects
    # instead (the live copy of each publish, no consumers).
    acked_systems=$system
    [ "$system" = nats ] && acked_systems="jetstream-mem jetstream-file jetstream-mem:core"
    for acked in $acked_systems; do
      subscribers=()
      [ "${acked#*:}" = core ] && subscribers=(--jetstream-subscribers core)
      run "${acked%%:*}" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" \
        --size "$SIZE" --acked "${subscribers[@]}" --label "$label"
      run "${acked%%:*}" "$urls" topics --topics "$TOPICS" --messages "$TOPIC_MESSAGES" \
        --size "$SIZE" --acked "${subscribers[@]}" --label "$label"
    done
    if [ "$system" = murmur ]; then
      auth_pair topics --topics "$TOPICS" --messages "$TOPIC_MESSAGES" --size "$SIZE" --label "$label"
    else
      run "$system" "$urls" topics --topics "$TOPICS" --messages "$TOPIC_MESSAGES" \
        --size "$SIZE" --label "$label"
    fi
    run "$system" "$urls" queue --members "$MEMBERS" --messages "$QUEUE_MESSAGES" \
      --size "$SIZE" --label "$label"
    # The bursts of issue 13, read as its independent generator reads them: subscribers on
    # 2 threads of their own with 4 KiB socket reads, the publishers flushing every 64
    # frames, a subscriber closed by the node counting every event it did not get as lost.
    run "$system" "$urls" fanout --subscribers "$SUBSCRIBERS" --messages "$BURST_MESSAGES" \
      --size "$SIZE" --read-buffer 4096 --subscriber-threads 2 --label "$label"
    run "$system" "$urls" topics --topics "$TOPICS" --messages "$BURST_TOPIC_MESSAGES" \
      --size "$SIZE" --read-buffer 4096 --subscriber-threads 2 --label "$label"
  done
done

# Idle connections on freshly started nodes, so memory freed by the runs above can't be
# reused and hide the per-connection cost. One round: it is the slow scenario.
stop_clusters rounds
start_clusters
for system in $systems; do
  if [ "$system" = murmur ]; then
    url=ws://127.0.0.1:7400/ws
    pid=$(cat .cluster/n1.pid)
  else
    url=ws://127.0.0.1:8222
    pid=${nats_pids[0]}
  fi
  run "$system" "$url" idle --server-pid "$pid" --steps "$IDLE_STEPS" \
    --settle-ms "$IDLE_SETTLE_MS" --label "fresh nodes"
done
stop_clusters idle

seconds=$(($(date +%s) - began))
echo "$mode run took ${seconds} s; $failures failed runs; results in $results"
if [ "$mode" = full ]; then
  python3 bench/render.py --results "$results" --out docs/benchmarks.md \
    --seconds "$seconds" --murmur-version "$(target/release/murmur --version)" \
    --nats-version "$(nats-server --version)" \
    --load-before "$load_before" --load-after "$(cut -d' ' -f1-3 /proc/loadavg)" --git "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --settings "ROUNDS=$ROUNDS SUBSCRIBERS=$SUBSCRIBERS MESSAGES=$MESSAGES SIZE=$SIZE RATE=$RATE RATE_MESSAGES=$RATE_MESSAGES TOPICS=$TOPICS TOPIC_MESSAGES=$TOPIC_MESSAGES MEMBERS=$MEMBERS QUEUE_MESSAGES=$QUEUE_MESSAGES IDLE_STEPS=$IDLE_STEPS"
  echo "wrote docs/benchmarks.md"
else
  python3 bench/render.py --results "$results" --check
  [ -n "$nats_note" ] && echo "$nats_note"
  echo "bench-smoke passed in ${seconds} s (systems: $systems)"
fi
[ "$failures" = 0 ]
