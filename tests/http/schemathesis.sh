#!/usr/bin/env bash
# schemathesis (PyPI) against a real node's GET /v1/openapi.json: generated requests, valid
# and invalid, to every operation of the HTTP API, each answer checked against the document
# (status codes, content types, schemas, no 5xx, invalid input refused, wrong methods 405).
# Bounded: SCHEMATHESIS_MAX_EXAMPLES (20) cases per operation and phase, a few minutes at
# most. Two runs: a node with auth = none, and one with auth = token given a token.
#
# Strings are generated in ASCII: the node's limits are in bytes (`max_topic_bytes`, 256 by
# default), JSON Schema's `maxLength` counts characters, and the two agree only for ASCII.
#
# The virtualenv lives in target/schemathesis-venv (schemathesis pinned); the node is the
# debug build, started on free loopback ports and stopped at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-20}
VENV=target/schemathesis-venv
OUT=target/schemathesis
SECRET=schemathesis-test-secret-0123456789abcdef

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p murmur
BIN=target/debug/murmur
mkdir -p "$OUT"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

NODE_PID=
stop_node() {
  if [ -n "$NODE_PID" ]; then
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=
  fi
}
trap stop_node EXIT

# start_node NAME [serve flags...]: a node on free ports; sets PORT.
start_node() {
  local name=$1
  shift
  PORT=$(free_port)
  "$BIN" serve --name "$name" --listen "127.0.0.1:$PORT" \
    --admin-listen "127.0.0.1:$(free_port)" --gossip 127.0.0.1:0 --quic 127.0.0.1:0 \
    --log warn "$@" >"$OUT/$name.log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 100); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the node did not come up; its log:" >&2
  cat "$OUT/$name.log" >&2
  return 1
}

# run_schemathesis NAME [st flags...]
run_schemathesis() {
  local name=$1
  shift
  echo "== schemathesis: $name (at most $MAX_EXAMPLES cases per operation and phase)"
  # From $OUT, where schemathesis keeps its own files (.schemathesis/).
  (cd "$OUT" && "$ROOT/$VENV/bin/st" run "http://127.0.0.1:$PORT/v1/openapi.json" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --seed 7400 \
    --workers 1 \
    --request-timeout 10 \
    --generation-codec ascii \
    --generation-database none \
    --report junit --report-junit-path "$name.junit.xml" \
    "$@")
}

start_node schema-open
run_schemathesis auth-none
stop_node

TOKEN=$(MURMUR_TOKEN_HMAC_SECRET=$SECRET "$BIN" token --sub schemathesis \
  --allow-pub '>' --allow-sub '>' --allow-history '>' --ttl 1h)
MURMUR_TOKEN_HMAC_SECRET=$SECRET start_node schema-token --auth token
run_schemathesis auth-token -H "Authorization: Bearer $TOKEN"
stop_node
echo "schemathesis: both runs passed"
