#!/usr/bin/env bash
# The smoke subset of the Python tests (pytest -m smoke) at the lower bounds
# of onnxquant's run-time ranges (scripts/constraints/lowest.txt: onnx,
# onnxruntime, numpy), in a second virtual environment, build/venv-lowest.
# The wheel is built by .venv (scripts/setup.sh) from the persistent build
# directory, so nothing recompiles after a set-up; the venv is kept between
# runs. scripts/test.sh runs this after the full suite.
# Usage: bash scripts/test_lower_bounds.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
low=build/venv-lowest
wheels=build/wheelhouse
lowest=scripts/constraints/lowest.txt
[ -x "$py" ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 2; }

echo "== lower bounds: the wheel, from the build .venv made"
rm -rf "$wheels"
"$py" -m pip wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps \
  -w "$wheels" .
wheel=$(ls "$wheels"/onnxquant-*.whl)

if [ ! -x "$low/bin/python" ]; then
  python3 -m venv "$low"
fi
echo "== lower bounds: installing $(grep -v '^#' "$lowest" | tr '\n' ' ')into $low"
"$low/bin/python" -m pip install --quiet --disable-pip-version-check -c "$lowest" \
  "pytest>=8" "onnxquant[cpu] @ file://$PWD/$wheel"
"$low/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$wheel"
# The venv must hold exactly the lower bounds, or the smoke tests nothing.
"$low/bin/python" - "$lowest" <<'EOF'
import importlib.metadata
import sys

for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        installed = importlib.metadata.version(name)
        if installed != version:
            sys.exit(f"{name} {installed} is installed in place of the lower bound {version}")
EOF

echo "== lower bounds: pytest -m smoke"
# The installed wheel is tested (python/ is not on the path).
"$low/bin/python" -m pytest tests/python -m smoke -p no:cacheprovider "$@"
