#!/usr/bin/env bash
# Measures membership timings on three local `murmur serve` processes:
#   1. kill -9 of one node -> every other node marks it down
#   2. restart on the same addresses -> every node sees every node alive
#   3. a real partition of one node (iptables drops its gossip and QUIC UDP on loopback) held
#      past failure detection, then healed -> every node sees every node alive again
# Usage: tests/measure/membership-timings.sh [path/to/murmur]   (step 3 needs root + iptables)
# Ports used: 127.0.0.1:7600-7622. Cleans up its processes and iptables rules on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/murmur}
[ -x "$bin" ] || cargo build --release -p murmur
key=${MURMUR_CLUSTER_KEY:-$("$bin" keygen)}
pids=()
rules=()
cleanup() {
  for rule in "${rules[@]}"; do iptables -D $rule 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

start() { # start NODE_INDEX
  local i=$1 base=$((7600 + (i - 1) * 10))
  MURMUR_CLUSTER_KEY=$key "$bin" serve --name "m$i" --listen "127.0.0.1:$base" \
    --gossip "127.0.0.1:$((base + 1))" --quic "127.0.0.1:$((base + 2))" \
    --admin-listen "127.0.0.1:$((base + 3))" \
    --seeds 127.0.0.1:7601,127.0.0.1:7611 >/dev/null 2>&1 &
  pids[$i]=$!
}

# states OBSERVER_INDEX -> "name=state ..." as that node reports it
states() {
  "$bin" members --json --url "http://127.0.0.1:$((7603 + ($1 - 1) * 10))" 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join("%s=%s" % (m["name"], m["state"]) for m in json.load(sys.stdin)["members"]))' 2>/dev/null || true
}

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

wait_for() { # wait_for DESCRIPTION COMMAND...; prints seconds taken
  local what=$1; shift
  local t0; t0=$(now)
  for _ in $(seq 1 600); do
    if "$@"; then elapsed "$t0" "$(now)"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting until $what" >&2; return 1
}

all_alive() { for o in "$@"; do [ "$(states "$o")" = "m1=alive m2=alive m3=alive" ] || return 1; done; }
sees() { states "$1" | grep -qw "$2"; }
m3_down_everywhere() { sees 1 m3=down && sees 2 m3=down; }

for i in 1 2 3; do start $i; done
t=$(wait_for 'the cluster forms' all_alive 1 2 3) || exit 1
echo "formed:            $t s"

kill -9 "${pids[3]}"; wait "${pids[3]}" 2>/dev/null || true
t=$(wait_for 'm3 is down everywhere' m3_down_everywhere) || exit 1
echo "kill -9 -> down:   $t s  (seen by m1 and m2)"

start 3
t=$(wait_for 'the restarted m3 is alive everywhere' all_alive 1 2 3) || exit 1
echo "restart -> mesh:   $t s"

if command -v iptables >/dev/null && [ "$(id -u)" = 0 ]; then
  for port in 7621 7622; do
    for rule in "INPUT -i lo -p udp --dport $port -j DROP" "INPUT -i lo -p udp --sport $port -j DROP"; do
      iptables -I $rule; rules+=("$rule")
    done
  done
  t=$(wait_for 'm1 and m2 see m3 down' m3_down_everywhere) || exit 1
  echo "partition -> down: $t s"
  sleep 3
  for rule in "${rules[@]}"; do iptables -D $rule; done
  rules=()
  t=$(wait_for 'every node sees every node alive' all_alive 1 2 3) || exit 1
  echo "heal -> mesh:      $t s"
else
  echo "partition: skipped (needs root and iptables)"
fi
