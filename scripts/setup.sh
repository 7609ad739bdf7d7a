#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for onnxquant: the Debian packages the
# build and the data need, a virtual environment in .venv, and onnxquant
# itself built and installed into it with the `cpu` extra (onnxruntime). With
# --test it also installs the test extras, qemu-user (the tests run ONNX
# Runtime's AVX2 kernels under qemu-x86_64; the demo does not need it), and
# clang-14 with its runtime libraries, for the fuzz smoke (libFuzzer:
# -fsanitize=fuzzer, bench/fuzz.sh).
#
# Run again, it reuses what it did: the build dependencies live in .venv, pip
# builds without an isolated environment into the persistent build directory
# build/<wheel tag> (pyproject.toml), so only changed sources recompile, and
# when neither the sources nor the requirements changed since the last
# install (a stamp in .venv: a hash of them) pip is not run at all.
# Versions: scripts/constraints/latest.txt pins what CI tests.
# Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(g++ cmake ninja-build protobuf-compiler libprotobuf-dev libgtest-dev libeigen3-dev dataset-fashion-mnist
      python3-venv)
extras=cpu
if [ "${1:-}" = "--test" ]; then
  debs+=(qemu-user clang-14 libclang-rt-14-dev)
  extras=cpu,test
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
py=.venv/bin/python
constraints=scripts/constraints/latest.txt

# What the installed package was built from: every file the wheel or its
# requirements depend on, plus this script (a tracked file deleted from the
# work tree drops out of the hash). The stamp holds this hash and the extras
# installed with it.
sources_hash() {
  { git ls-files -z --cached --others --exclude-standard -- \
      CMakeLists.txt pyproject.toml README.md cpp python scripts/setup.sh "$constraints" \
      2>/dev/null || find CMakeLists.txt pyproject.toml README.md cpp python scripts/setup.sh \
      "$constraints" -type f -not -name '*.so' -not -path '*/__pycache__/*' -print0; } \
    | sort -z | { xargs -0 sha256sum 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
}
stamp=.venv/onnxquant-setup.stamp
hash=$(sources_hash)
installed=""
[ -f "$stamp" ] && installed=$(sed -n 2p "$stamp")
covered=1
for e in ${extras//,/ }; do
  case ",$installed," in *",$e,"*) ;; *) covered=0 ;; esac
done
if [ "$covered" = 1 ] && [ "$(head -1 "$stamp")" = "$hash" ]; then
  echo "== onnxquant in .venv is up to date with the sources (extras: $installed)"
  exit 0
fi
# Keep the extras an earlier run installed (the demo after the tests).
for e in ${installed//,/ }; do
  case ",$extras," in *",$e,"*) ;; *) extras="$extras,$e" ;; esac
done

# The build dependencies, once, into .venv (no isolated build environment:
# pip's gets a new path on every call, which makes CMake rebuild everything).
# With the stamp gone pip is asked again; what is there is kept.
echo "== installing build dependencies into .venv"
mapfile -t build_requires < <("$py" -c \
  'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
"$py" -m pip install --quiet --disable-pip-version-check -c "$constraints" "${build_requires[@]}"

echo "== installing onnxquant[$extras] into .venv (compiles the C++ sources that changed)"
rm -f "$stamp"
"$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
  -c "$constraints" ".[$extras]"
printf '%s\n%s\n' "$hash" "$extras" > "$stamp"
