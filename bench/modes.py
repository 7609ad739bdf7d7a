"""Quantization modes side by side: accuracy and latency against FP32.

For each model (the zoo's ResNet8 and the models/cifar networks, the entries of
bench/accuracy.py), one calibration (500 samples, MIN_MAX_ASYM), then each mode:

- W8A8: the default (uint8 activations, int8 per-channel weights, portable);
- W8A8 pow2: per-tensor power-of-two symmetric scales (``per_channel=False,
  power_of_two="ceil"``; NPUs and DSPs);
- W8A8 pow2 mse: the same with ``power_of_two="mse"`` (weights' power chosen by MSE);
- W8A16: int16 activations (``activation_type="int16"``);
- W4A8: int4 weights per channel (``weight_type="int4"``; the model goes to opset 21);
- W4A8 blk32: the same with MatMul weights blockwise, 32 rows a block (``block_size=32``);
- W4A8 MP: W4A8 with the sensitivity-driven mixed precision (``oq.mixed_precision``):
  layers ranked by the SQNR they lose (``oq.analyze`` on 64 calibration samples), the most
  sensitive promoted to int16 activations and int8 weights until top-1 on the validation
  set is within ``--budget`` points of FP32's there (at most ``--max-share`` of the layers);
- W4A8 MP int8: the same, the promoted layers getting int8 weights only (W8A8, fused);
- W8A8 MP: the mixed precision on the W8A8 default, the promoted layers getting int16
  activations (int8 weights), with the same budget and metric.

Top-1 on a drawn subset of the test set, with ONNX Runtime's default session options (as
deployed: W8A8 modes fuse into integer kernels; W8A16 runs DQ -> float op -> Q; W4A8 runs
DQ(int4) -> float Conv/Gemm/MatMul, its Add and pooling nodes in integer kernels; the
"runs as" column says which). Latency:
batch 1, the default session, interleaved rounds, median time per run and the median of the
per-round ratios to FP32.

    PYTHONPATH=python .venv/bin/python bench/modes.py [--models resnet8 cifar-resnet ...]
        [--modes W8A8 W4A8 "W4A8 MP"] [--calibration-images 200] [--batch 100]
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
    "W4A8": {"weight_type": "int4"},
    "W4A8 blk32": {"weight_type": "int4", "block_size": 32},
    "W4A8 MP": {"weight_type": "int4"},  # then oq.mixed_precision
    "W4A8 MP int8": {"weight_type": "int4"},  # promoted layers to W8A8
    "W8A8 MP": {},  # the default, then oq.mixed_precision to int16
}
RUNS_AS = {
    "FP32": "float",
    "W8A8": "fused (integer kernels)",
    "W8A8 pow2": "fused (integer kernels)",
    "W8A8 pow2 mse": "fused (integer kernels)",
    "W8A16": "DQ -> float op -> Q (no int16 kernels)",
    "W4A8": "DQ(int4) -> float op (no int4 kernels); Add/pool fused",
    "W4A8 blk32": "as W4A8",
    "W4A8 MP": "as W4A8; promoted layers DQ -> float op -> Q",
    "W4A8 MP int8": "as W4A8; promoted layers fused (integer kernels)",
    "W8A8 MP": "fused; promoted layers DQ -> float op -> Q",
}
DEFAULT_MODELS = ("resnet8", "cifar-resnet", "cifar-mobilenetv2", "cifar-efficientnet",
                  "cifar-convnext", "cifar-vit")


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def top1(s: ort.InferenceSession, x: np.ndarray, y: np.ndarray, batch: int = 1) -> float:
    name = s.get_inputs()[0].name
    out = [s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
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
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--calibration-images", type=int, default=500,
                   help="the first N of the entry's calibration images (default 500)")
    p.add_argument("--batch", type=int, default=1, help="images per run for top-1 (default 1)")
    p.add_argument("--validation-images", type=int, default=1000,
                   help="validation images the MP modes' metric runs on (drawn; default 1000)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="MP modes: top-1 points below FP32 allowed on the validation set")
    p.add_argument("--max-share", type=float, default=0.5,
                   help="MP modes: the largest share of layers promoted (default 0.5)")
    args = p.parse_args()
    print(f"command: python bench/modes.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
          f"onnxquant {oq.__version__}, onnxruntime {ort.__version__}")
    print(f"calibration: {args.calibration_images} samples, MIN_MAX_ASYM; top-1 % on "
          f"{args.test_images} drawn test images, default session (fused where ORT has "
          "integer kernels); latency batch 1, default session\n")
    print("| model | mode | top-1 % | INT8 - FP32 | ms / run | × FP32 | runs as |")
    print("|---|---|---:|---:|---:|---:|---|")
    for key in args.models:
        entry = MODELS[key](args.zoo)
        test = entry.test.subset(args.test_images)
        model = oq.optimize_model(entry.path)
        calibration = entry.calibration[:args.calibration_images]
        cal = oq.Calibrator(model, "MIN_MAX_ASYM")
        cal.collect_data([calibration[i:i + 1] for i in range(len(calibration))])
        ranges = cal.compute_range()
        sessions = {"FP32": session(model)}
        notes = []
        for mode in args.modes:
            options = MODES[mode]
            if " MP" in mode:
                result = mixed(model, cal, calibration, entry, args, oq.QuantOptions(**options),
                               "int8" if mode.endswith("int8") else "int16")
                sessions[mode] = session(result.model)
                notes.append(f"{entry.name}, {mode}: {result}")
            else:
                sessions[mode] = session(oq.quantize(model, ranges, calibrator=cal, **options))
        acc = {k: top1(s, test.x, test.y, args.batch) for k, s in sessions.items()}
        lat = latencies(sessions, test.x, args.rounds)
        for k in sessions:
            diff = "" if k == "FP32" else f"{acc[k] - acc['FP32']:+.2f}"
            print(f"| {entry.name} | {k} | {acc[k]:.2f} | {diff} | {lat[k][0]:.3f} "
                  f"| {lat[k][1]:.2f} | {RUNS_AS[k]} |", flush=True)
        for note in notes:
            print(f"\n{note}\n", flush=True)


def mixed(model, cal, calibration: np.ndarray, entry, args, options, promote_to: str):
    """oq.mixed_precision on ``options`` with top-1 on the validation set as the metric."""
    if entry.validation is None:
        raise SystemExit(f"{entry.name} has no validation set for the MP modes' metric")
    val = entry.validation.subset(args.validation_images)

    def metric(m) -> float:
        return top1(session(m), val.x, val.y, args.batch)

    samples = [calibration[i:i + 1] for i in range(min(64, len(calibration)))]
    return oq.mixed_precision(model, cal, samples, metric, budget=args.budget,
                              max_share=args.max_share, options=options, promote_to=promote_to)


if __name__ == "__main__":
    main()
