"""Quantization modes side by side: accuracy and latency against FP32.

For each model (the zoo's ResNet8 and the models/cifar networks, the entries of
bench/accuracy.py), one calibration (500 samples, MIN_MAX_ASYM), then each mode:

- W8A8: the default (uint8 activations, int8 per-channel weights, portable);
- W8A8 pow2: per-tensor power-of-two symmetric scales (``per_channel=False,
  power_of_two="ceil"``; NPUs and DSPs);
- W8A8 pow2 mse: the same with ``power_of_two="mse"`` (weights' power chosen by MSE);
- W8A16: int16 activations (``activation_type="int16"``).

Top-1 on a drawn subset of the test set, with ONNX Runtime's default session options (as
deployed: W8A8 modes fuse into integer kernels; W8A16 runs DQ -> float op -> Q). Latency:
batch 1, the default session, interleaved rounds, median time per run and the median of the
per-round ratios to FP32.

    PYTHONPATH=python .venv/bin/python bench/modes.py [--models resnet8 cifar-resnet ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import MODELS  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO  # noqa: E402

MODES = {
    "W8A8": {},
    "W8A8 pow2": {"per_channel": False, "power_of_two": "ceil"},
    "W8A8 pow2 mse": {"per_channel": False, "power_of_two": "mse"},
    "W8A16": {"activation_type": "int16"},
}
DEFAULT_MODELS = ("resnet8", "cifar-resnet", "cifar-mobilenetv2", "cifar-efficientnet",
                  "cifar-convnext", "cifar-vit")


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def top1(s: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    name = s.get_inputs()[0].name
    out = [s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]
    return 100.0 * float(np.mean(np.concatenate(out).argmax(axis=1) == y))


def latencies(sessions: dict[str, ort.InferenceSession], x: np.ndarray,
              rounds: int) -> dict[str, tuple[float, float]]:
    """Per mode: (median ms per run, median per-round ratio to FP32)."""
    name = next(iter(sessions.values())).get_inputs()[0].name
    feed = {name: x[:1]}
    for s in sessions.values():  # warm-up
        for _ in range(5):
            s.run(None, feed)
    reps = 20
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        order = list(sessions)[r % len(sessions):] + list(sessions)[:r % len(sessions)]
        for k in order:
            t = time.perf_counter()
            for _ in range(reps):
                sessions[k].run(None, feed)
            times[k].append((time.perf_counter() - t) / reps * 1e3)
    fp32 = np.array(times["FP32"])
    return {k: (float(np.median(v)), float(np.median(np.array(v) / fp32)))
            for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--zoo", default=DEFAULT_ZOO)
    args = p.parse_args()
    print(f"command: python bench/modes.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
          f"onnxquant {oq.__version__}, onnxruntime {ort.__version__}")
    print("calibration: 500 samples, MIN_MAX_ASYM; top-1 % on the drawn test subset, "
          "default session (fused); latency batch 1, default session\n")
    print("| model | mode | top-1 % | INT8 - FP32 | ms / run | × FP32 |")
    print("|---|---|---:|---:|---:|---:|")
    for key in args.models:
        entry = MODELS[key](args.zoo)
        test = entry.test.subset(args.test_images)
        model = oq.optimize_model(entry.path)
        cal = oq.Calibrator(model, "MIN_MAX_ASYM")
        cal.collect_data([entry.calibration[i:i + 1] for i in range(len(entry.calibration))])
        ranges = cal.compute_range()
        sessions = {"FP32": session(model)}
        for mode, options in MODES.items():
            sessions[mode] = session(oq.quantize(model, ranges, calibrator=cal, **options))
        acc = {k: top1(s, test.x, test.y) for k, s in sessions.items()}
        lat = latencies(sessions, test.x, args.rounds)
        for k in sessions:
            diff = "" if k == "FP32" else f"{acc[k] - acc['FP32']:+.2f}"
            print(f"| {entry.name} | {k} | {acc[k]:.2f} | {diff} | {lat[k][0]:.3f} "
                  f"| {lat[k][1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
