#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the
# stable toolchain (the flags cargo-fuzz passes, without a sanitizer: the
# vault's only `unsafe` is in src/harden.rs) and runs each one.
#
#   bash fuzz/run.sh                 # every target for FUZZ_SECONDS (30) each
#   FUZZ_RUNS=10000000 bash fuzz/run.sh config   # one target, 10 M executions
#   FUZZ_OPT_LEVEL=0 bash fuzz/run.sh  # quicker to build, slower to run (CI)
#   FUZZ_JOBS=2 bash fuzz/run.sh       # two targets at a time (CI)
#
# Each target starts from its seeds (fuzz/seeds/<target>/) in a scratch
# corpus under fuzz/target/, so the repository is not modified. A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(egress_body selector form clevertap_envelope webhook config)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); fi
SECONDS_EACH="${FUZZ_SECONDS:-30}"

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# An explicit target keeps the flags off build scripts and proc macros.
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
CARGO_PROFILE_RELEASE_OPT_LEVEL="${FUZZ_OPT_LEVEL:-1}" \
  cargo build --locked --release --bins --target "$TRIPLE"

# One target: its output (filtered to the figures and any failure) goes to
# target/log/<target>, so that targets run side by side do not interleave.
run_target() {
  local target="$1" corpus="target/corpus/$1" limit
  mkdir -p "$corpus" "artifacts/$target" target/log
  cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  if [ -n "${FUZZ_RUNS:-}" ]; then limit=(-runs="$FUZZ_RUNS"); else limit=(-max_total_time="$SECONDS_EACH"); fi
  "target/$TRIPLE/release/$target" "$corpus" "${limit[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 2>&1 \
    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)|ERROR|panicked|SUMMARY|Test unit written' \
    > "target/log/$target" || true
}

# FUZZ_JOBS targets at a time (default 1; CI runs two, one per core).
JOBS="${FUZZ_JOBS:-1}"
for ((i = 0; i < ${#TARGETS[@]}; i += JOBS)); do
  batch=("${TARGETS[@]:i:JOBS}")
  for target in "${batch[@]}"; do run_target "$target" & done
  wait
  for target in "${batch[@]}"; do
    echo "== $target"
    cat "target/log/$target"
  done
done
failed=0
for target in "${TARGETS[@]}"; do
  if [ -n "$(find "artifacts/$target" -type f)" ]; then
    echo "fuzz target $target failed: see fuzz/artifacts/$target/" >&2
    failed=1
  fi
done
exit "$failed"
