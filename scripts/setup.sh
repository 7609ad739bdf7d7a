#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for onnxquant: the Debian packages the
# build and the data need, a virtual environment in .venv, and onnxquant
# itself built and installed into it (with the test extras). With --test it
# also installs qemu-user: the tests run ONNX Runtime's AVX2 kernels under
# qemu-x86_64 (the demo does not need it); and clang-14 with its runtime
# libraries, for the fuzz smoke (libFuzzer: -fsanitize=fuzzer, bench/fuzz.sh).
# Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(g++ protobuf-compiler libprotobuf-dev libgtest-dev dataset-fashion-mnist python3-venv)
if [ "${1:-}" = "--test" ]; then
  debs+=(qemu-user clang-14 libclang-rt-14-dev)
elif [ $# -gt 0 ]; then
  echo "usage: bash scripts/setup.sh [--test]" >&2
  exit 2
fi
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
echo "== installing onnxquant into .venv (builds the C++ engine once)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check ".[test]"
