#!/usr/bin/env bash
# Build and run Raindrop's fuzz targets with cargo-fuzz (libFuzzer).
#
#   bash fuzz/run.sh                 # every target, 300 s each
#   FUZZ_SECS=60 bash fuzz/run.sh ingest_batch
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP lets cargo-fuzz pass its
# instrumentation flags, and no sanitizer is used (the code under test is
# safe Rust; libFuzzer's coverage guidance and our assertions find panics
# and broken invariants). Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/raindrop/fuzz-target}"
SECS="${FUZZ_SECS:-300}"
PY="${RAINDROP_PYTHON:-$HOME/.cache/raindrop/venv/bin/python}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
"$PY" seeds.py corpus
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(flight_ticket ingest_batch)
for t in "${targets[@]}"; do
  echo "== $t (${SECS}s)"
  cargo fuzz run --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1
done
