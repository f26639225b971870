#!/usr/bin/env bash
# The compose test (`make compose-test`, after `make image`): deploy/docker-compose.yml as it
# is, three nodes under podman-compose, with workload clients on the host publishing and
# subscribing through the published ports while the nodes are
#   1. killed: `podman kill -s KILL` n2; the others must mark it down, its clients must
#      resume on another node; then it is started again and must rejoin;
#   2. cut off: `podman network disconnect` n3; both sides must see the partition; then it is
#      reconnected (same IP, its service name as alias) and the membership must heal;
#   3. rolled: the image is rebuilt (a new image ID) and each node in turn is stopped
#      (SIGTERM: drain, hand-over, leave) and recreated from it; no publish may wait long
#      and no subscriber may get a gap;
#   4. taken down: `compose down` must leave no container, network or volume of the project.
# The chaos checker (`murmur-chaos check`, tests/chaos) judges the clients' histories. Output:
# compose-test-out/report.md (timeline, verdict, per-phase numbers), the histories and the
# nodes' logs. Exits non-zero when any step or the verdict fails.
#
# Settings (environment):
#   COMPOSE_TEST_PORT      first host port (default 18600): n1, n2, n3 publish on it, +10, +20
#   MURMUR_IMAGE           the image to start from (default murmur:latest, `make image`)
#   COMPOSE_TEST_OUT       output directory (default compose-test-out)
#   COMPOSE_TEST_MAX_PAUSE longest pause in acknowledged publishes allowed while rolling, in
#                          seconds (default 3)
#   PODMAN_COMPOSE         the podman-compose to use (default: 1.6.0, pinned, installed into
#                          target/compose-venv on first use; Debian's 1.0.3 cannot read the
#                          file's per-network ipv4_address)
# Needs root, podman with runc (deploy/README.md, "Containers on podman"), python3, curl, jq.
set -euo pipefail
cd "$(dirname "$0")/../.."

port=${COMPOSE_TEST_PORT:-18600}
image=${MURMUR_IMAGE:-murmur:latest}
out=${COMPOSE_TEST_OUT:-compose-test-out}
max_pause=${COMPOSE_TEST_MAX_PAUSE:-3}
project=murmur-compose-test
rebuilt=murmur:compose-test-rebuilt
net=${project}_murmur
murmur=target/release/murmur
chaos=target/release/murmur-chaos
compose_file=deploy/docker-compose.yml
# Bounds, in seconds (measured here: detection 3-5 s, heal 1-2 s, a node ready 1-3 s).
detect_bound=20
converge_bound=30

export MURMUR_N1_PORT=$port MURMUR_N2_PORT=$((port + 10)) MURMUR_N3_PORT=$((port + 20))
export MURMUR_IMAGE=$image
declare -A host_port=([n1]=$MURMUR_N1_PORT [n2]=$MURMUR_N2_PORT [n3]=$MURMUR_N3_PORT)
declare -A node_ip=([n1]=172.28.0.11 [n2]=172.28.0.12 [n3]=172.28.0.13)

fail() { echo "compose-test: FAIL: $*" >&2; note "FAIL: $*"; exit 1; }

# --- preconditions -------------------------------------------------------------------------
for tool in podman python3 curl jq; do
  command -v "$tool" >/dev/null || { echo "compose-test: needs $tool (apt-get install -y podman runc python3-venv curl jq)" >&2; exit 1; }
done
[ -x "$murmur" ] && [ -x "$chaos" ] || { echo "compose-test: needs $murmur and $chaos: run make image" >&2; exit 1; }
podman image exists "$image" || { echo "compose-test: no image $image: run make image" >&2; exit 1; }
for p in "$MURMUR_N1_PORT" "$MURMUR_N2_PORT" "$MURMUR_N3_PORT"; do
  if ss -Hltn "sport = :$p" | grep -q .; then
    echo "compose-test: host port $p is in use: set COMPOSE_TEST_PORT to a free range" >&2; exit 1
  fi
done
if podman ps -a --format '{{.Names}}' | grep -q "^${project}_"; then
  echo "compose-test: containers of $project exist (a previous run?): podman-compose -p $project -f $compose_file down" >&2
  exit 1
fi
if [ -z "${PODMAN_COMPOSE:-}" ]; then
  PODMAN_COMPOSE=target/compose-venv/bin/podman-compose
  if [ ! -x "$PODMAN_COMPOSE" ]; then
    python3 -m venv target/compose-venv
    target/compose-venv/bin/pip install --quiet --disable-pip-version-check "podman-compose==1.6.0"
  fi
fi
compose() { "$PODMAN_COMPOSE" -p "$project" -f "$compose_file" "$@"; }
ctr() { echo "${project}_$1_1"; }

rm -rf "$out"
mkdir -p "$out/logs"
timeline=$out/timeline.txt
: >"$timeline"
# A fresh key for this run only; never written to disk.
MURMUR_CLUSTER_KEY=$("$murmur" keygen)
export MURMUR_CLUSTER_KEY

now_us() { date +%s%6N; }
t0=$(now_us)
# One line per step: seconds since the start, what happened.
note() {
  local t
  t=$(( ($(now_us) - t0) / 1000 ))
  printf '%d.%03d %s\n' $((t / 1000)) $((t % 1000)) "$*" | tee -a "$timeline"
}
# Phase markers for the analysis: name and µs since t0.
mark() { echo "$1 $(( $(now_us) - t0 ))" >>"$out/marks.txt"; }

clients=()
cleanup() {
  local status=$?
  for pid in "${clients[@]}"; do kill "$pid" 2>/dev/null || true; done
  if podman ps -a --format '{{.Names}}' | grep -q "^${project}_"; then
    for n in n1 n2 n3; do podman logs "$(ctr $n)" >"$out/logs/$n.final.log" 2>&1 || true; done
    compose down >/dev/null 2>&1 || true
    podman ps -a --format '{{.Names}}' | grep "^${project}_" | xargs -r podman rm -f >/dev/null 2>&1 || true
  fi
  if podman network exists "$net"; then podman network rm -f "$net" >/dev/null 2>&1 || true; fi
  remove_rebuilt
  exit "$status"
}
# The rebuilt image (built without intermediate images, so it is all there is to remove).
remove_rebuilt() {
  if podman image exists "$rebuilt"; then podman rmi "$rebuilt" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# state OBSERVER NODE: NODE's state in OBSERVER's membership view (its admin port, inside).
state() {
  podman exec "$(ctr "$1")" murmur members --json 2>/dev/null \
    | jq -r --arg n "$2" '.members[] | select(.name == $n) | .state' 2>/dev/null || true
}
ready() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:${host_port[$1]}/readyz")" = 200 ]; }
all_alive() {
  local o n
  for o in n1 n2 n3; do for n in n1 n2 n3; do [ "$(state "$o" "$n")" = alive ] || return 1; done; done
}
all_ready() { ready n1 && ready n2 && ready n3; }
back() { ready "$1" && all_alive; }
n2_down() { [ "$(state n1 n2)" = down ] && [ "$(state n3 n2)" = down ]; }
n3_cut_off() {
  [ "$(state n1 n3)" = down ] && [ "$(state n2 n3)" = down ] \
    && [ "$(state n3 n1)" = down ] && [ "$(state n3 n2)" = down ]
}
# wait_for BOUND WHAT COMMAND…: poll until COMMAND succeeds; prints the seconds it took.
wait_for() {
  local bound=$1 what=$2 start
  shift 2
  start=$(now_us)
  until "$@"; do
    (( $(now_us) - start < bound * 1000000 )) || fail "$what not within ${bound}s"
    sleep 0.25
  done
  local took=$(( ($(now_us) - start) / 10000 ))
  printf '%d.%02d' $((took / 100)) $((took % 100))
}

# --- 0. up ---------------------------------------------------------------------------------
note "compose up: $compose_file, image $image ($(podman image inspect -f '{{.Id}}' "$image" | cut -c1-12)), host ports $MURMUR_N1_PORT, $MURMUR_N2_PORT, $MURMUR_N3_PORT"
compose up -d >"$out/logs/compose-up.log" 2>&1 || { cat "$out/logs/compose-up.log" >&2; fail "compose up"; }
took=$(wait_for 60 "all three nodes ready" all_ready)
note "all three nodes ready (GET /readyz 200 through the published ports) after ${took}s"
took=$(wait_for "$converge_bound" "every node seeing three alive members" all_alive)
note "every node sees n1, n2, n3 alive (${took}s more)"
# The image's HEALTHCHECK (`murmur members` on the admin port), run the way the engine runs it.
for n in n1 n2 n3; do podman healthcheck run "$(ctr $n)" >/dev/null || fail "health check of $n"; done
note "the image's health check passes on every node"

# --- the workload ----------------------------------------------------------------------------
url() { echo "ws://127.0.0.1:${host_port[$1]}/ws"; }
urls_from() { # the three URLs, starting at node $1
  case $1 in
    n1) echo "$(url n1),$(url n2),$(url n3)" ;;
    n2) echo "$(url n2),$(url n3),$(url n1)" ;;
    n3) echo "$(url n3),$(url n1),$(url n2)" ;;
  esac
}
limit_us=$(( 600 * 1000000 )) # a hard stop; the test ends the clients with SIGTERM before
start_client() { # ROLE ID FIRST-NODE [PATTERN]
  "$chaos" client --role "$1" --id "$2" --urls "$(urls_from "$3")" --pattern "${4:-chaos.>}" \
    --out "$out/$2.jsonl" --t0 "$t0" --until "$limit_us" 2>>"$out/logs/clients.log" &
  clients+=($!)
  case $1 in publisher) publishers+=($!) ;; *) readers+=($!) ;; esac
}
publishers=()
readers=()
# Every node has clients of every kind on it first, as in the chaos runs.
start_client subscriber s1 n1 'chaos.>'
start_client subscriber s2 n2 'chaos.>'
start_client subscriber s3 n3 'chaos.*'
start_client subscriber s4 n2 'chaos.t1'
start_client member q1 n1
start_client member q2 n2
start_client member q3 n3
sleep 1.5 # the subscriptions' interest spreads before the first publish
start_client publisher p1 n1
start_client publisher p2 n2
start_client publisher p3 n3
note "workload: 4 subscribers, 3 queue members (group workers), 3 publishers (~50/s each), one of each kind first on every node"
sleep 8

# --- 1. kill -------------------------------------------------------------------------------
mark kill
podman kill -s KILL "$(ctr n2)" >/dev/null
note "podman kill -s KILL $(ctr n2)"
took=$(wait_for "$detect_bound" "n1 and n3 marking n2 down" n2_down)
note "n1 and n3 mark n2 down after ${took}s"
sleep 5
podman logs "$(ctr n2)" >"$out/logs/n2.before-kill.log" 2>&1 || true
podman start "$(ctr n2)" >/dev/null 2>&1
note "podman start $(ctr n2)"
took=$(wait_for "$converge_bound" "n2 ready and the membership whole again" back n2)
note "n2 back: ready and every node sees three alive after ${took}s"
mark kill-end
sleep 5

# --- 2. partition --------------------------------------------------------------------------
mark partition
podman network disconnect "$net" "$(ctr n3)"
note "podman network disconnect $net $(ctr n3)"
took=$(wait_for "$detect_bound" "the partition seen on both sides" n3_cut_off)
note "partition seen on both sides after ${took}s: n1 and n2 mark n3 down, n3 marks n1 and n2 down"
sleep 8
podman network connect --ip "${node_ip[n3]}" --alias n3 "$net" "$(ctr n3)"
note "podman network connect --ip ${node_ip[n3]} --alias n3 $net $(ctr n3)"
took=$(wait_for "$converge_bound" "the partition healing" all_alive)
note "healed: every node sees three alive after ${took}s"
mark partition-end
sleep 5

# --- 3. rolling update -----------------------------------------------------------------------
note "rebuilding the image as $rebuilt (deploy/podman/build-image.sh)"
# From scratch (--no-cache): every step runs again, so the image is new (buildah 1.28 would
# take a changed --label or --build-arg from its cache). --layers=false: no intermediate
# images to clean up.
deploy/podman/build-image.sh "$rebuilt" --no-cache --layers=false >"$out/logs/rebuild.log" 2>&1 \
  || { tail -20 "$out/logs/rebuild.log" >&2; fail "rebuilding the image"; }
old_id=$(podman image inspect -f '{{.Id}}' "$image")
new_id=$(podman image inspect -f '{{.Id}}' "$rebuilt")
[ "$old_id" != "$new_id" ] || fail "the rebuilt image has the old image's ID"
note "rebuilt: ${new_id:0:12} (was ${old_id:0:12})"
mark rolling
export MURMUR_IMAGE=$rebuilt
for n in n1 n2 n3; do
  stop_start=$(now_us)
  compose stop "$n" >>"$out/logs/compose-roll.log" 2>&1 || fail "compose stop $n"
  stopped=$(( ($(now_us) - stop_start) / 10000 ))
  podman logs "$(ctr $n)" >"$out/logs/$n.before-update.log" 2>&1 || true
  grep -q '"node stopped"' "$out/logs/$n.before-update.log" || fail "$n did not stop gracefully (no 'node stopped' in its log)"
  compose up -d --no-deps --force-recreate "$n" >>"$out/logs/compose-roll.log" 2>&1 || fail "compose up $n"
  took=$(wait_for "$converge_bound" "$n ready on the new image with three alive" back "$n")
  running=$(podman inspect -f '{{.Image}}' "$(ctr $n)")
  [ "$running" = "$new_id" ] || fail "$n runs ${running:0:12}, not the rebuilt image"
  note "$n: SIGTERM drain and leave in $((stopped / 100)).$(printf %02d $((stopped % 100)))s (\"node stopped\"), recreated on ${new_id:0:12}, ready with three alive after ${took}s"
  sleep 5
done
mark rolling-end
note "rolling update done: every node runs ${new_id:0:12}"

# --- the end of the workload ---------------------------------------------------------------
sleep 3
kill -TERM "${publishers[@]}"
wait "${publishers[@]}" || true
note "publishers stopped; subscribers and members get 10 s for what is on its way"
sleep 10
kill -TERM "${readers[@]}"
wait "${readers[@]}" || true
clients=()
mark end
note "workload stopped"

# --- 4. down -------------------------------------------------------------------------------
for n in n1 n2 n3; do podman logs "$(ctr $n)" >"$out/logs/$n.final.log" 2>&1 || true; done
compose down >"$out/logs/compose-down.log" 2>&1 || fail "compose down"
left=$(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}')
left+=$(podman network ls --format '{{.Name}}' | grep "^${project}_" || true)
left+=$(podman volume ls --format '{{.Name}}' | grep "^${project}_" || true)
[ -z "$left" ] || fail "compose down left: $left"
note "compose down: no container, network or volume of $project left"
remove_rebuilt
note "removed $rebuilt"

# --- the verdict ---------------------------------------------------------------------------
set +e
"$chaos" check "$out"/*.jsonl >"$out/verdict.txt" 2>&1
checked=$?
python3 deploy/podman/compose-report.py --out "$out" --max-pause "$max_pause" \
  --node "127.0.0.1:${host_port[n1]}=n1" --node "127.0.0.1:${host_port[n2]}=n2" \
  --node "127.0.0.1:${host_port[n3]}=n3" >"$out/phases.txt"
phases=$?
set -e
{
  echo "# make compose-test"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(podman --version), podman-compose $("$PODMAN_COMPOSE" --version 2>/dev/null | grep -o 'podman-compose version [0-9.]*' | grep -o '[0-9.]*$'), $compose_file, image $image"
  echo
  echo "## Timeline (seconds since the start)"
  echo
  echo '```'
  cat "$timeline"
  echo '```'
  echo
  echo "## What the clients saw (murmur-chaos check)"
  echo
  echo '```'
  cat "$out/verdict.txt"
  echo '```'
  echo
  echo "## Per phase"
  echo
  cat "$out/phases.txt"
} >"$out/report.md"
cat "$out/verdict.txt" "$out/phases.txt"
[ "$checked" = 0 ] || fail "the chaos checker found the histories INVALID ($out/verdict.txt)"
[ "$phases" = 0 ] || fail "a phase broke its bound ($out/phases.txt)"
echo "compose-test: PASS ($out/report.md)"
