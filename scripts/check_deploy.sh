#!/usr/bin/env bash
# Validates deploy/ offline (no Docker engine, no cluster): hadolint on both Dockerfiles,
# yamllint on deploy/, checkov on the rendered overlays and the Dockerfiles,
# kustomize renders + strict schema validation + property checks of every overlay, the KServe
# runtime and the Grafana dashboard (deploy/ci/check_manifests.py), and the runtime contract
# the images rely on, run with the debug binary (deploy/ci/runtime_contract.py), and the
# rendered cpu overlay's probes, ports, grace period and the dashboard's and alerts' metrics
# against that binary running with the rendered configuration (deploy/ci/probes_match_server.py).
# Tools come from requirements.txt (scripts/setup.sh --tests installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

# pip puts the tools' entry points beside the interpreter's scripts.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin:$PATH"
for tool in hadolint kubectl checkov yamllint; do
  if ! command -v "$tool" >/dev/null; then
    echo "check_deploy: $tool not found: run scripts/setup.sh --tests (requirements.txt)" >&2
    exit 1
  fi
done

echo "check_deploy: hadolint $(hadolint --version | awk '{print $NF}')" >&2
dockerfiles=(deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda)
timeout 60 hadolint --failure-threshold style "${dockerfiles[@]}"
# Every ignored rule must say why, in the comment lines right above the directive.
for dockerfile in "${dockerfiles[@]}"; do
  previous=""
  while IFS= read -r line; do
    if [[ "$line" == "# hadolint ignore="* && ( "$previous" != "#"* || "$previous" == "# hadolint"* ) ]]; then
      echo "check_deploy: $dockerfile: '$line' has no comment above it saying why" >&2
      exit 1
    fi
    previous="$line"
  done <"$dockerfile"
done

echo "check_deploy: yamllint $(yamllint --version | awk '{print $NF}')" >&2
timeout 60 yamllint --strict -c deploy/.yamllint deploy/

# checkov over what is applied (each overlay rendered, with and without the monitoring
# component) and both Dockerfiles. No failed check is allowed; the checks skipped, each with
# its reason, are in deploy/ci/checkov.yaml. --skip-download (in the config) keeps it offline.
echo "check_deploy: checkov $(checkov --version)" >&2
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for overlay in deploy/k8s/overlays/cpu deploy/k8s/overlays/cuda \
    tests/fixtures/deploy/kustomize/cpu-monitoring tests/fixtures/deploy/kustomize/cuda-monitoring; do
  timeout 60 kubectl kustomize "$overlay" >"$rendered/$(basename "$overlay").yaml"
done
timeout 120 checkov --config-file deploy/ci/checkov.yaml --skip-download \
  --framework kubernetes dockerfile -o cli \
  -f "$rendered"/*.yaml "${dockerfiles[@]}"

# The debug binary, with the features scripts/test.sh tests with, so that after the test
# suite this build has nothing to do. RESNET_SERVE_BIN=path skips it.
target_dir="$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
if [[ -z "${RESNET_SERVE_BIN:-}" ]]; then
  timeout 1800 cargo build --quiet --bin resnet-serve --features train
fi
server="${RESNET_SERVE_BIN:-$target_dir/debug/resnet-serve}"
ort_lib="$target_dir/onnxruntime/libonnxruntime.so.1.31.1"
if [[ ! -f "$ort_lib" ]]; then
  echo "check_deploy: $ort_lib missing (build.rs fetches it; see scripts/fetch_onnxruntime.py)" >&2
  exit 1
fi

timeout 120 python3 deploy/ci/check_manifests.py --kubectl "$(command -v kubectl)" --server-bin "$server"
timeout 180 python3 deploy/ci/runtime_contract.py --server-bin "$server" --ort-lib "$ort_lib"
# The real server started with the rendered cpu overlay's args + ConfigMap: probes, Service
# ports, grace period, and the dashboard's and alerts' metrics against its /metrics.
timeout 150 python3 deploy/ci/probes_match_server.py --kubectl "$(command -v kubectl)" \
  --server-bin "$server" --ort-lib "$ort_lib"
echo "check_deploy: all deployment checks pass" >&2
