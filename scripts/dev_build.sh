#!/usr/bin/env bash
# Developer build: compiles the engine, its GoogleTests and the _core
# extension into BUILD_DIR (default build/dev) and copies _core next to the
# Python sources, so that `PYTHONPATH=python` imports the fresh build.
# Usage: scripts/dev_build.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/dev}
py=${PYTHON:-.venv/bin/python}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DONNXQUANT_BUILD_PYTHON=ON \
    -DPython3_EXECUTABLE="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" \
    -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)"
fi
cmake --build "$build" -j2
# Copy then rename: a running process that mapped the old file keeps it.
for so in "$build"/_core*.so; do
  cp "$so" "python/onnxquant/.$(basename "$so").tmp"
  mv -f "python/onnxquant/.$(basename "$so").tmp" "python/onnxquant/$(basename "$so")"
done
