#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on stable Rust (`cargo fuzz run -s none`: no
# sanitizer; finds panics, hangs and memory blow-ups), seeded from the test fixtures and
# fuzz/seeds/. A crash fails the script; libFuzzer leaves the input in fuzz/artifacts/TARGET/:
# turn it into a regression case (tests/fixtures/hostile for images) and fix the bug.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(decode_image classify_body v2_infer_body v2_grpc_request)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz@0.13.2
fi
# The fuzz build needs no ONNX Runtime (no target runs inference).
export RESNET_SERVE_SKIP_ORT_FETCH=1
cargo fuzz build -s none

# Images: every fixture small enough to mutate quickly (bombs and corrupt files included).
seeds_images=fuzz/seeds/decode_image
mkdir -p "$seeds_images"
find tests/fixtures/images tests/fixtures/hostile -type f -size -64k \
  ! -name '*.json' ! -name '*.toml' -exec cp -f {} "$seeds_images/" \;

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  echo "== fuzzing $target for ${seconds}s"
  status=0
  cargo fuzz run -s none "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=65536 -print_final_stats=1 >"fuzz/$target.log" 2>&1 || status=$?
  grep -E "^(Done|stat::(number_of_executed_units|peak_rss_mb))" "fuzz/$target.log" || true
  if [[ $status -ne 0 ]]; then
    echo "fuzz target $target failed (exit $status); see fuzz/$target.log and fuzz/artifacts/$target/" >&2
    tail -n 40 "fuzz/$target.log" >&2
    exit 1
  fi
done
