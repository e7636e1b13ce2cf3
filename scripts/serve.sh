#!/usr/bin/env bash
# Builds and runs the server on the model repository in models/ (the default model).
# Extra arguments go to resnet-serve, e.g. scripts/serve.sh --http-port 9000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --bin resnet-serve -- "$@"
