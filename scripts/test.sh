#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: the engine's
# GoogleTests through CTest, the same GoogleTests built with AddressSanitizer
# and UndefinedBehaviorSanitizer (-O1), a 60-second fuzz smoke of the engine's
# entry points (bench/fuzz.sh), then pytest on the installed package (with
# the pinned latest dependencies, scripts/constraints/latest.txt), then the
# smoke subset at the dependencies' lower bounds (scripts/test_lower_bounds.sh).
# Run again, every step reuses its build: scripts/setup.sh and the CMake build
# directories (build/ctest, build/asan, build/fuzz) recompile only what changed.
# Usage: bash scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
py="$PWD/.venv/bin/python"

echo "== C++ engine: GoogleTest through CTest"
cmake -S . -B build/ctest -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$py" >/dev/null
cmake --build build/ctest -j"$(nproc)" --target onnxquant_tests
ctest --test-dir build/ctest --output-on-failure -j"$(nproc)"

echo "== C++ engine under ASan and UBSan: GoogleTest through CTest (-O1)"
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DONNXQUANT_SANITIZE=address,undefined -DPython3_EXECUTABLE="$py" >/dev/null
cmake --build build/asan -j"$(nproc)" --target onnxquant_tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j"$(nproc)"

echo "== Fuzz smoke: libFuzzer, ASan, UBSan on the engine's entry points (60 s)"
PYTHON="$py" bash bench/fuzz.sh --smoke

echo "== Python package: pytest"
# The installed package is tested (python/ is not on the path).
"$py" -m pytest tests/python "$@"

echo "== Python package at the lower bounds of its dependencies: pytest -m smoke"
bash scripts/test_lower_bounds.sh
