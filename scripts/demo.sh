#!/usr/bin/env bash
# Sets everything up, then runs the main job on the embedded default: the
# project's Fashion-MNIST CNN, calibrated on 500 real training images,
# quantized to INT8, FP32 and INT8 top-1 printed on the 10 000 test images.
# Usage: bash scripts/demo.sh [onnxquant demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/onnxquant demo "$@"
