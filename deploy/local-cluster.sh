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
# LOCAL_CLUSTER_PORT moves them all (default 7400: n1 on it, n2 on +10, n3 on +20).
# Logs and pid files: .cluster/ in the repository. The cluster key is MURMUR_CLUSTER_KEY when
# set; otherwise one is generated (`murmur keygen`) into .cluster/cluster.key (mode 0600) on the
# first start and reused after, and the nodes read it with --cluster-key-file.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cluster
bin=${MURMUR_BIN:-target/release/murmur}
key_file=$dir/cluster.key
first=${LOCAL_CLUSTER_PORT:-7400}
admin_url=http://127.0.0.1:$((first + 3))

start() {
  [ -n "${MURMUR_BIN:-}" ] || cargo build --release -p murmur
  mkdir -p "$dir"
  if [ -z "${MURMUR_CLUSTER_KEY:-}" ] && [ ! -s "$key_file" ]; then
    (umask 077; "$bin" keygen >"$key_file")
    echo "generated a cluster key in $key_file"
  fi
  local started=()
  for i in 1 2 3; do
    if [ -f "$dir/n$i.pid" ] && kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "n$i already running (pid $(cat "$dir/n$i.pid"))"; continue
    fi
    base=$((first + (i - 1) * 10))
    # A port already taken (often by `make run` on 7400) would only show as a node dying
    # quietly and the others failing to form a cluster: say which one, before starting any.
    if busy=$(ports_in_use "$base"); then
      echo "n$i cannot start: $busy already in use (a \`make run\` node? stop it with Ctrl-C, or stop what listens there)" >&2
      stop_started "${started[@]+"${started[@]}"}"
      return 1
    fi
    if [ -n "${MURMUR_CLUSTER_KEY:-}" ]; then key_args=(); else key_args=(--cluster-key-file "$key_file"); fi
    "$bin" serve --name "n$i" ${key_args[@]+"${key_args[@]}"} \
      --listen "127.0.0.1:$base" --gossip "127.0.0.1:$((base + 1))" --quic "127.0.0.1:$((base + 2))" \
      --admin-listen "127.0.0.1:$((base + 3))" \
      --seeds "127.0.0.1:$((first + 1)),127.0.0.1:$((first + 11))" >"$dir/n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
    started+=("$i")
    echo "n$i: ws://127.0.0.1:$base/ws (pid $!, log $dir/n$i.log)"
  done
  for _ in $(seq 1 100); do
    for i in 1 2 3; do
      if [ -f "$dir/n$i.pid" ] && ! kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
        echo "n$i exited at start; the end of $dir/n$i.log:" >&2
        tail -n 5 "$dir/n$i.log" >&2
        rm -f "$dir/n$i.pid"
        stop
        return 1
      fi
    done
    if "$bin" members --url "$admin_url" 2>/dev/null | grep -c ' alive ' | grep -q '^3$'; then
      "$bin" members --url "$admin_url"; return 0
    fi
    sleep 0.1
  done
  echo "the nodes did not form a cluster within 10 s; see $dir/*.log" >&2
  return 1
}

# The ports of the node whose client port is $1 (TCP $1 and $1+3, UDP $1+1 and $1+2) that
# something already listens on, e.g. "7400/tcp"; false when all are free (or ss is missing).
ports_in_use() {
  command -v ss >/dev/null || return 1
  local taken=()
  local p
  for p in "$1" $(($1 + 3)); do
    ss -Hltn "sport = :$p" | grep -q . && taken+=("$p/tcp")
  done
  for p in $(($1 + 1)) $(($1 + 2)); do
    ss -Hlun "sport = :$p" | grep -q . && taken+=("$p/udp")
  done
  [ ${#taken[@]} -gt 0 ] || return 1
  echo "${taken[*]}"
}

# SIGTERM the nodes this start launched (their numbers as arguments).
stop_started() {
  local i
  for i in "$@"; do
    [ -f "$dir/n$i.pid" ] && kill -TERM "$(cat "$dir/n$i.pid")" 2>/dev/null
    rm -f "$dir/n$i.pid"
  done
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
  status) "$bin" members --url "$admin_url" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
