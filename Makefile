# The verbs a newcomer types. `make help` lists them.
CARGO ?= cargo
ARGS ?=
# One release build for every tool that runs nodes (bench, abuse, chaos, demo): built together,
# the crates share one feature set, so no target rebuilds `murmur` for its own.
RELEASE_TOOLS = $(CARGO) build --release -p murmur -p murmur-bench -p murmur-abuse -p murmur-chaos

IMAGE ?= murmur:latest

.PHONY: image compose-test check-deploy help build run cluster cluster-stop cluster-status measure-membership measure-publish measure-idle measure-topics measure-resume bench bench-smoke bench-storage perf-count perf-count-cluster bench-scale storage-compare abuse abuse-smoke chaos chaos-soak chaos-smoke fuzz fuzz-smoke test test-js test-browser demo demo-kill test-http-schema lint fmt bench-matching clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

build: ## Build everything (release binary at target/release/murmur)
	$(CARGO) build --workspace --release

run: ## Start one node on 127.0.0.1:7400 (WebSocket at ws://127.0.0.1:7400/ws); ARGS="--help" for settings
	$(CARGO) run --release -p murmur -- serve $(ARGS)

cluster: ## Start three local nodes n1..n3 (WebSocket on 7400, 7410, 7420); see deploy/local-cluster.sh
	deploy/local-cluster.sh start

cluster-stop: ## Stop the local cluster (graceful leave)
	deploy/local-cluster.sh stop

cluster-status: ## Show the local cluster's members
	deploy/local-cluster.sh status

measure-membership: ## Time failure detection, restart and partition heal on 3 local processes (partition needs root + iptables)
	cargo build --release -p murmur
	tests/measure/membership-timings.sh target/release/murmur

measure-publish: ## Acknowledged vs fire-and-forget publishing, on 1 and 3 in-process nodes
	$(CARGO) run --release -p murmur --example publish_cost

measure-idle: ## Node memory per idle WebSocket connection (one subscription each), up to 19,500 connections
	$(CARGO) build --release -p murmur --bins --example idle_connections
	target/release/examples/idle_connections --connections 19500 --steps 5

measure-topics: ## Heap per remembered topic, before and after topics are forgotten (600,000 topics, 1 and 3 in-process nodes)
	$(CARGO) run --release -p murmur --example topic_bookkeeping -- --topics 600000
	$(CARGO) run --release -p murmur --example topic_bookkeeping -- --topics 600000 --nodes 3

measure-resume: ## How long a resume takes on 1, 3, 5 and 9 in-process nodes: one topic (its placement asked) and a wildcard (every node asked once)
	$(CARGO) run --release -p murmur --example resume_latency

bench: ## Murmur next to a 3-node NATS cluster (nats-server from Debian; JetStream for the acknowledged scenarios), and auth on / off: every scenario, writes docs/benchmarks.md (~7 min)
	flock /tmp/murmur-bench.lock bench/run.sh

bench-scale: ## Fan-out and fan-in on clusters of 1, 2, 3, 5 and 9 nodes: the nodes' CPU, bytes and events per write per delivery, then docs/scaling.md's model fitted and checked (~6 min)
	flock /tmp/murmur-bench.lock bench/scale.sh
	python3 bench/scale_model.py target/bench/scale.jsonl

bench-storage: ## Acknowledged fan-in on 3 nodes with storage memory, disk+interval, disk+always, alternating (3 rounds, ~2 min): target/bench/storage-acked.jsonl
	$(CARGO) build --release -p murmur -p murmur-bench
	flock /tmp/murmur-bench-storage.lock bench/storage-acked.sh

storage-compare: ## fjall against redb on the history write pattern (appends per fsync mode, startup, pages, trimming; ~2.5 min; QUICK=1 for ~25 s): docs/storage.md
	$(CARGO) build --release -p storage-compare
	target/release/storage-compare $(if $(QUICK),--quick,--list-files)

perf-count: ## Instructions per delivery, per fan-in event and per acknowledged publish, auth off and on (valgrind callgrind, one node, ~6 min): appends to bench/perf-count-history.tsv
	bench/perf-count.sh

perf-count-cluster: ## Instructions per fan-in event across three nodes, every hop included (valgrind callgrind, ~3 min): appends to bench/perf-count-history.tsv
	bench/perf-count-cluster.sh

bench-smoke: ## A short bench run (small counts, auth on too; under two minutes once built) that fails on any loss or error
	flock /tmp/murmur-bench.lock bench/run.sh --smoke

abuse: ## The adversarial findings' loads against 3 real nodes, 60 s each (ABUSE_SECONDS); fails on a death or RSS over its bound (~13 min): abuse-out/report.md
	$(RELEASE_TOOLS)
	[ "$$(ulimit -n)" -ge 4096 ] || ulimit -n 4096; flock /tmp/murmur-abuse.lock target/release/murmur-abuse --out abuse-out $(ARGS)

abuse-smoke: ## The same loads, 8 s each, smaller history (about 2 minutes once built; reuses bench-smoke's release build)
	$(RELEASE_TOOLS)
	[ "$$(ulimit -n)" -ge 4096 ] || ulimit -n 4096; flock /tmp/murmur-abuse.lock target/release/murmur-abuse --seconds 8 --settle 2 --history-topics 10 --out abuse-out $(ARGS)

chaos: ## Every chaos nemesis on namespace hosts, on 3 and on 5 nodes (root, about 30 min): chaos-out/<nemesis>[-5n]/report.md, chaos-out/summary.md
	$(RELEASE_TOOLS)
	flock /tmp/murmur-chaos.lock target/release/murmur-chaos matrix --sizes 3,5 --out chaos-out $(ARGS)

ROUNDS ?= 20
chaos-soak: ## The chaos matrix (3 and 5 nodes) ROUNDS times (default 20) with fresh seeds (root, ~30 min a round): chaos-soak/soak.md
	$(RELEASE_TOOLS)
	flock /tmp/murmur-chaos.lock target/release/murmur-chaos soak --rounds $(ROUNDS) --sizes 3,5 --out chaos-soak $(ARGS)

chaos-smoke: ## A short chaos matrix (root, ~3 min): kill -9, a short partition, QUIC packet loss, 15 s of load each
	$(RELEASE_TOOLS)
	flock /tmp/murmur-chaos.lock target/release/murmur-chaos matrix --nemeses kill,partition-short,quic-loss --seconds 15 --out chaos-out $(ARGS)

image: ## Build deploy/Dockerfile into IMAGE (murmur:latest) with podman, from this machine's release build (root; base image made with debootstrap on first use)
	$(RELEASE_TOOLS)
	deploy/podman/build-image.sh $(IMAGE)

check-deploy: ## deploy/kubernetes/ against the Kubernetes 1.27 and 1.37 API schemas, strictly (kubernetes-validate pinned, venv in target/)
	deploy/kubernetes/validate.sh

compose-test: ## deploy/docker-compose.yml under podman-compose: kill, disconnect and roll nodes under load, checked (root, ~2 min after make image): compose-test-out/report.md
	$(RELEASE_TOOLS)
	flock /tmp/murmur-chaos.lock deploy/podman/compose-test.sh

FUZZ_SECONDS ?= 300

fuzz: ## cargo fuzz every decoder (JSON, protobuf, peer frames, gossip envelope), FUZZ_SECONDS (300) each; docs/fuzzing.md
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh full

fuzz-smoke: ## Each fuzz target for ~20 s (under 1.5 min once built); fails on any crash, panic, timeout or OOM
	FUZZ_SECONDS=20 fuzz/run.sh smoke

test: ## Run the whole test suite (unit, integration, CLI), then the JS client's (test-js); needs cargo-nextest
	@$(CARGO) nextest --version >/dev/null 2>&1 || { echo "make test runs the tests with cargo-nextest, which is not installed: cargo install cargo-nextest --locked (or run one crate without it: cargo test -p murmur)" >&2; exit 1; }
	$(CARGO) nextest run --workspace --all-targets $(NEXTEST_ARGS)
	$(MAKE) test-js

test-js: ## The JS client in clients/js: npm ci, tsc build, node --test (fake-node unit tests, 3 real nodes from target/debug/murmur)
	$(CARGO) build -p murmur
	cd clients/js && npm ci --no-audit --no-fund && npm test

demo: ## Three nodes (release build, ports as make cluster) and a live ticker page at http://127.0.0.1:7480/ that survives killing its node (Ctrl-C stops); demo/README.md
	$(RELEASE_TOOLS)
	node demo/server.mjs --bin target/release/murmur $(ARGS)

demo-kill: ## Kill (SIGKILL) the node the demo page is on
	@node -e "fetch('http://127.0.0.1:7480/api/kill',{method:'POST'}).then(async r=>{console.log(await r.text());process.exit(r.ok?0:1)},e=>{console.error('is make demo running? '+e.message);process.exit(1)})"

test-browser: ## The dashboard and the demo in Chromium (Debian's chromium, playwright-core from npm) against real nodes: tests/browser/, screenshots in tests/browser/artifacts/
	$(CARGO) build -p murmur
	cd tests/browser && npm ci --no-audit --no-fund && npm test

test-http-schema: ## schemathesis (pinned, venv in target/) against a node's /v1/openapi.json, auth off and on, 20 cases per operation (~1 min once installed)
	tests/http/schemathesis.sh

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench-matching: ## criterion benchmark of subscription matching (up to 100k subscriptions)
	$(CARGO) bench -p murmur --bench matching

clean:
	$(CARGO) clean
