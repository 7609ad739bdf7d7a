#!/usr/bin/env bash
# Fuzzes the engine's entry points (model loader, validation, graph passes,
# plan, tensor exposure, kernel check, QDQ insertion, serialization) with
# libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer, from a
# corpus of the zoo's and models/cifar's models with a structure-aware
# mutator (tests/fuzz/). A crash, a sanitizer report, an InternalError, more
# than -rss_limit_mb of memory or more than -timeout seconds on one model is
# a finding: the run stops and leaves the input in build/fuzz/artifacts/.
#
# Usage: bash bench/fuzz.sh [--smoke] [--runs N] [--zoo DIR] [-- LIBFUZZER_ARGS]
#   --runs N   executions (default 10000000, the bench's target)
#   --smoke    the CI's short run: 60 s from the seeds alone (a fresh corpus)
#   --zoo DIR  the model zoo (default ../shared/zoo)
# Needs clang-14 and libclang-rt-14-dev (scripts/setup.sh --test installs
# them) and onnxquant importable by $PYTHON (default .venv/bin/python) to
# write the seeds. At exit the fuzzer prints the share of executions that
# reached each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
build=build/fuzz
runs=10000000
zoo=../shared/zoo
extra=(-max_total_time=0)
corpus=$build/corpus
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) runs=1000000; extra=(-max_total_time=60); corpus=$build/smoke-corpus; shift ;;
    --runs) runs=$2; shift 2 ;;
    --zoo) zoo=$2; shift 2 ;;
    --) shift; break ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
  esac
done

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$build" \
    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
    -DONNXQUANT_BUILD_TESTS=OFF -DONNXQUANT_BUILD_FUZZER=ON \
    -DONNXQUANT_SANITIZE=address,undefined \
    -DPython3_EXECUTABLE="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" >/dev/null
fi
cmake --build "$build" -j2 --target onnxquant_fuzzer
# Seeds are written again when bench/fuzz_seeds.py changed since.
if [ ! -d "$build/seeds" ] || [ bench/fuzz_seeds.py -nt "$build/seeds" ]; then
  rm -rf "$build/seeds" "$build/seeds.tmp"
  "$py" bench/fuzz_seeds.py "$zoo" "$build/seeds.tmp"
  mv "$build/seeds.tmp" "$build/seeds"
fi
# The smoke starts from the seeds each time: the bench's kept corpus can take
# minutes just to load, which would leave its 60 s no mutations.
if [ "$corpus" = "$build/smoke-corpus" ]; then rm -rf "$corpus"; fi
mkdir -p "$corpus" "$build/artifacts"
# Protobuf's and the engine's allocations are checked, the leak check is not:
# libFuzzer's -detect_leaks would count the process-wide statics.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
exec nice -n 19 "$build/onnxquant_fuzzer" -runs="$runs" "${extra[@]}" \
  -rss_limit_mb=2048 -timeout=30 -max_len=$((8 << 20)) -len_control=0 \
  -print_final_stats=1 -artifact_prefix="$build/artifacts/" "$@" \
  "$corpus" "$build/seeds"
