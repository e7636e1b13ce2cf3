#!/usr/bin/env bash
# Runs every check and test: formatting, lints, the CUDA build check, and the test suite
# (unit, integration against real servers, trainer, Python conformance tools).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
# A CI run builds once: incremental caches would only take disk (gigabytes) there.
if [[ "${CI:-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi

cargo fmt --check
cargo fmt --check --manifest-path fuzz/Cargo.toml
cargo clippy --all-targets --features train -- -D warnings
cargo clippy --all-targets --no-default-features -- -D warnings
# The CUDA provider must keep compiling; its library is not needed to check it.
RESNET_SERVE_SKIP_ORT_FETCH=1 cargo check --features cuda
scripts/check_deploy.sh
# Licences, banned crates and sources (advisories need the network: see deny.toml).
cargo deny check bans licenses sources

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --features train --no-fail-fast
else
  cargo test --features train --no-fail-fast
fi

# Every fuzz target for a bounded time (a crash fails the run).
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

# Soak, CI-sized (the 10-minute run and its result: docs/RELIABILITY.md).
python3 scripts/soak.py --seconds 20 --features train
