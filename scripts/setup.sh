#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine with Rust, Python and pip:
#   build: cmake + nasm (libjpeg-turbo, built from source by the turbojpeg crate);
#   tests (with --tests): the pinned Python tools in requirements.txt, Fashion-MNIST and
#   Chromium.
# ONNX Runtime itself is fetched by build.rs from the pinned PyPI wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v cmake >/dev/null || packages+=(cmake)
command -v nasm >/dev/null || packages+=(nasm)
if [[ "${1:-}" == "--tests" ]]; then
  [[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]] || packages+=(dataset-fashion-mnist)
  # The web page is tested in Debian's headless Chromium (Playwright drives it; no download).
  command -v chromium >/dev/null || packages+=(chromium)
fi
if ((${#packages[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${packages[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [[ "${1:-}" == "--tests" ]]; then
  python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
fi
