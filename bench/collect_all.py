"""The cost of ``Calibrator(..., collect="all")`` against the default
``collect="plan"``: tensors observed, set-up time, collection time and memory.

Each configuration runs in a fresh subprocess, ``--repeat`` times, the two
collect modes alternating: the model is optimized; the resident set is read
(``start``); the Calibrator is built (set-up time) and fed ``--warm`` samples;
the resident set is read again (baseline) and the kernel's peak counter reset;
then ``--samples`` CIFAR-10 test images are fed one per sample (stacked by the
calibrator into batches of 32 where the batch is dynamic) and ranges computed
(collection time). Reported: the median time, the peak resident set above the
baseline during collection, and the footprint (peak above ``start``: session,
histograms, retained kernel-check samples).

    .venv/bin/python bench/collect_all.py [--models resnet8 vit] [--samples 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from _proc import reset_peak, status_kib

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.environ.get("ONNXQUANT_ZOO", os.path.join(HERE, "..", "..", "shared", "zoo"))
MODELS = {
    "resnet8": (os.path.join(ZOO, "cifar10", "resnet8_cifar10.onnx"), 1.0),
    "vit": (os.path.join(HERE, "..", "models", "cifar", "vit.onnx"), 1 / 255),
    "convnext": (os.path.join(HERE, "..", "models", "cifar", "convnext.onnx"), 1 / 255),
}


def _child(spec: dict) -> dict:
    import numpy as np
    import onnx

    import onnxquant as oq

    path, scale = MODELS[spec["model"]]
    pool = np.load(os.path.join(ZOO, "cifar10", "cifar10_test.npz"))["images"]

    def samples(start, count):
        for i in range(start, start + count):
            yield np.ascontiguousarray(pool[i:i + 1].transpose(0, 3, 1, 2),
                                       dtype=np.float32) * np.float32(scale)

    model = oq.optimize_model(onnx.load(path))
    start = status_kib("VmRSS")
    t0 = time.perf_counter()
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, threads=spec["threads"],
                        collect=spec["collect"])
    setup = time.perf_counter() - t0
    cal.collect_data(samples(len(pool) - spec["warm"], spec["warm"]))
    baseline = status_kib("VmRSS")
    reset_peak()
    t1 = time.perf_counter()
    cal.collect_data(samples(0, spec["samples"]))
    cal.compute_range()
    collect = time.perf_counter() - t1
    peak = status_kib("VmHWM")
    return {"tensors": len(cal.tensors), "setup_s": setup, "collect_s": collect,
            "above_kib": peak - baseline, "footprint_kib": peak - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet8", "vit"])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--warm", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    print(f"# collect='plan' vs collect='all', MIN_MAX_ASYM, {args.samples} CIFAR-10 test "
          f"images after {args.warm} warm-up, threads={args.threads}; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"median of {args.repeat} fresh processes")
    print("| model | collect | tensors | set-up (s) | collection (s) | peak above baseline "
          "(MiB) | footprint (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        runs: dict[str, list[dict]] = {"plan": [], "all": []}
        for _ in range(args.repeat):
            for collect in ("plan", "all"):
                spec = {"model": name, "collect": collect, "samples": args.samples,
                        "warm": args.warm, "threads": args.threads}
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                      json.dumps(spec)], check=True, capture_output=True,
                                     text=True).stdout
                runs[collect].append(json.loads(out.strip().splitlines()[-1]))
        medians = {}
        for collect, rows in runs.items():
            m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            medians[collect] = m
            print(f"| {name} | {collect} | {m['tensors']:.0f} | {m['setup_s']:.3f} | "
                  f"{m['collect_s']:.3f} | {m['above_kib'] / 1024:.1f} | "
                  f"{m['footprint_kib'] / 1024:.1f} |")
        p, a = medians["plan"], medians["all"]
        print(f"| {name} | all / plan | {a['tensors'] / p['tensors']:.2f}× | "
              f"{a['setup_s'] / p['setup_s']:.2f}× | {a['collect_s'] / p['collect_s']:.2f}× | "
              f"| {a['footprint_kib'] / max(p['footprint_kib'], 1):.2f}× |")


if __name__ == "__main__":
    main()
