"""Peak memory of calibration against the number of samples.

Each configuration runs in a fresh subprocess: the model is optimized and a
Calibrator built, a warm-up of 20 samples is fed, the resident set is read as
the baseline and the kernel's peak counter (VmHWM) is reset; then N samples
are streamed from a generator and the peak resident set above the baseline
is reported. Calibration memory must not grow with N (DESIGN.md: O(planned
tensors x bins)).

    .venv/bin/python bench/calibration_memory.py [--model fashion|resnet8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from _proc import reset_peak, status_kib

ZOO = os.environ.get("ONNXQUANT_ZOO",
                     os.path.join(os.path.dirname(__file__), "..", "..", "shared", "zoo"))


def _child(model_name: str, n: int) -> None:
    import numpy as np
    import onnx

    import onnxquant as oq
    from onnxquant.demo import default_model_path

    rng = np.random.default_rng(0)
    if model_name == "resnet8":
        model = onnx.load(os.path.join(ZOO, "cifar10", "resnet8_cifar10.onnx"))
        images = np.load(os.path.join(ZOO, "cifar10", "cifar10_test.npz"))["images"]
        pool = images.transpose(0, 3, 1, 2).astype(np.float32)
    else:
        from onnxquant.datasets import load_fashion_mnist
        model = onnx.load(default_model_path())
        x, _ = load_fashion_mnist("test")
        pool = (x.astype(np.float32) / 255.0)[:, None]

    def samples(count):
        for i in rng.integers(0, len(pool), count):
            yield np.ascontiguousarray(pool[i:i + 1])

    model = oq.optimize_model(model)
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, threads=2)
    cal.collect_data(samples(20))
    baseline = status_kib("VmRSS")
    reset_peak()
    cal.collect_data(samples(n))
    cal.compute_range()
    peak = status_kib("VmHWM")
    print(json.dumps({"n": n, "baseline_kib": baseline, "peak_kib": peak,
                      "peak_above_baseline_kib": peak - baseline}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["fashion", "resnet8"], default="resnet8")
    ap.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.model, args.child)
        return
    rows = []
    for n in args.counts:
        out = subprocess.run([sys.executable, __file__, "--model", args.model,
                              "--child", str(n)], check=True, capture_output=True,
                             text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"# calibration peak memory, model {args.model}, MIN_MAX_ASYM; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| samples | baseline RSS (MiB) | peak above baseline (MiB) |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['baseline_kib'] / 1024:.1f} | "
              f"{r['peak_above_baseline_kib'] / 1024:.2f} |")
    first, last = rows[0], rows[-1]
    base = max(first["peak_kib"], 1)
    growth = (last["peak_kib"] - first["peak_kib"]) / base * 100
    print(f"\npeak RSS with {last['n']} samples vs {first['n']}: {growth:+.2f} % "
          f"(target: within 10 %)")


if __name__ == "__main__":
    main()
