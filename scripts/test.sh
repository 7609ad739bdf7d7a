#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: the engine's
# GoogleTests through CTest, then pytest on the installed package.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
py="$PWD/.venv/bin/python"

echo "== C++ engine: GoogleTest through CTest"
cmake -S . -B build/ctest -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$py" >/dev/null
cmake --build build/ctest -j"$(nproc)" --target onnxquant_tests
ctest --test-dir build/ctest --output-on-failure -j"$(nproc)"

echo "== Python package: pytest"
# The installed package is tested (python/ is not on the path).
"$py" -m pytest tests/python "$@"
