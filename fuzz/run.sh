#!/usr/bin/env bash
# Runs Murmur's cargo-fuzz targets one after the other (docs/fuzzing.md).
#
#   fuzz/run.sh smoke    each target for FUZZ_SECONDS (default 30); what CI runs
#   fuzz/run.sh full     each target for FUZZ_SECONDS (default 300)
#   fuzz/run.sh build    build the targets only
#   fuzz/run.sh corpus   rewrite the committed seed corpora (fuzz/examples/make_corpus.rs)
#
# FUZZ_TARGETS="json_request peer_frame" picks targets. Any crash, panic, leak, timeout or
# out-of-memory fails the run (after every target has had its turn); libFuzzer writes the
# input to fuzz/artifacts/<target>/. New inputs go to fuzz/work/<target>/ (not committed);
# the seeds in fuzz/corpus/<target>/ are only read.
#
# The machine has the stable toolchain only: RUSTC_BOOTSTRAP=1 lets it take the nightly
# flags cargo-fuzz passes (-Zsanitizer=address and friends).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS="json_request protobuf_request peer_frame gossip_envelope"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
export RUSTC_BOOTSTRAP=1

mode=${1:-smoke}
case "$mode" in
  smoke) seconds=${FUZZ_SECONDS:-30} ;;
  full) seconds=${FUZZ_SECONDS:-300} ;;
  build | corpus) seconds=0 ;;
  *)
    echo "usage: fuzz/run.sh [smoke|full|build|corpus]" >&2
    exit 2
    ;;
esac

if [[ "$mode" == corpus ]]; then
  exec cargo run --quiet --manifest-path fuzz/Cargo.toml --example make_corpus
fi

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Release code with debug assertions and overflow checks, under AddressSanitizer.
build_flags=(--release --debug-assertions --sanitizer address)
echo "== building the fuzz targets"
cargo fuzz build "${build_flags[@]}"
[[ "$mode" == build ]] && exit 0

# The longest input per target: client frames and peer frames well past their usual size,
# gossip packets past foca's limit (larger ones are refused before decoding).
max_len() {
  case "$1" in
    gossip_envelope) echo 2048 ;;
    *) echo 16384 ;;
  esac
}

mkdir -p fuzz/logs
failed=()
summary=()
for target in $TARGETS; do
  mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
  log="fuzz/logs/$target.log"
  echo "== $target: ${seconds}s (log: $log)"
  status=0
  cargo fuzz run "${build_flags[@]}" "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" -rss_limit_mb=2048 \
    -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The last status line: "#runs ... cov: N ft: N corp: N/size ... exec/s: N rss: NMb".
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  field() { sed -nE "s/.* $1: ([^ ]+).*/\1/p" <<<"$last"; }
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  speed=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  rss=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  line=$(printf '%-18s runs %-10s exec/s %-7s cov %-6s ft %-7s corpus %-12s peak rss %s MB' \
    "$target" "${runs:-?}" "${speed:-?}" "$(field cov)" "$(field ft)" "$(field corp)" "${rss:-?}")
  if [[ $status -ne 0 ]]; then
    failed+=("$target")
    line="$line  FAILED (exit $status)"
    echo "---- $target failed; the end of its log:"
    tail -n 60 "$log"
    ls -l "fuzz/artifacts/$target" || true
  fi
  echo "$line"
  summary+=("$line")
done

echo "== summary ($mode, ${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzzing found a problem in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
