#!/usr/bin/env bash
# Three Murmur nodes on this machine, for trying the cluster out.
#   deploy/local-cluster.sh start   # build (release) and start n1, n2, n3 in the background
#   deploy/local-cluster.sh stop    # SIGTERM them (graceful leave) and wait
#   deploy/local-cluster.sh status  # the cluster as n1 sees it
#
# Ports (all on 127.0.0.1):
#   node  WebSocket/HTTP  gossip (UDP)  QUIC (UDP)  admin (/metrics, /v1/cluster)
#   n1    7400            7401          7402        7403
#   n2    7410            7411          7412        7413
#   n3    7420            7421          7422        7423
# Logs and pid files: .cluster/ in the repository. The cluster key is MURMUR_CLUSTER_KEY when
# set; otherwise one is generated (`murmur keygen`) into .cluster/cluster.key (mode 0600) on the
# first start and reused after, and the nodes read it with --cluster-key-file.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cluster
bin=${MURMUR_BIN:-target/release/murmur}
key_file=$dir/cluster.key

start() {
  [ -n "${MURMUR_BIN:-}" ] || cargo build --release -p murmur
  mkdir -p "$dir"
  if [ -z "${MURMUR_CLUSTER_KEY:-}" ] && [ ! -s "$key_file" ]; then
    (umask 077; "$bin" keygen >"$key_file")
    echo "generated a cluster key in $key_file"
  fi
  for i in 1 2 3; do
    if [ -f "$dir/n$i.pid" ] && kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "n$i already running (pid $(cat "$dir/n$i.pid"))"; continue
    fi
    base=$((7400 + (i - 1) * 10))
    if [ -n "${MURMUR_CLUSTER_KEY:-}" ]; then key_args=(); else key_args=(--cluster-key-file "$key_file"); fi
    "$bin" serve --name "n$i" ${key_args[@]+"${key_args[@]}"} \
      --listen "127.0.0.1:$base" --gossip "127.0.0.1:$((base + 1))" --quic "127.0.0.1:$((base + 2))" \
      --admin-listen "127.0.0.1:$((base + 3))" \
      --seeds 127.0.0.1:7401,127.0.0.1:7411 >"$dir/n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
    echo "n$i: ws://127.0.0.1:$base/ws (pid $!, log $dir/n$i.log)"
  done
  for _ in $(seq 1 100); do
    if "$bin" members --url http://127.0.0.1:7403 2>/dev/null | grep -c ' alive ' | grep -q '^3$'; then
      "$bin" members --url http://127.0.0.1:7403; return 0
    fi
    sleep 0.1
  done
  echo "the nodes did not form a cluster within 10 s; see $dir/*.log" >&2
  return 1
}

stop() {
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] || continue
    pid=$(cat "$dir/n$i.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "n$i stopped"
    fi
    rm -f "$dir/n$i.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) "$bin" members --url http://127.0.0.1:7403 ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
