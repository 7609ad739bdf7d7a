"""Calibration against onnxruntime.quantization, side by side in one run.

On the same optimized model (``oq.optimize_model`` output, saved to a temp file
and given to ONNX Runtime's ``create_calibrator`` too) and the same images in
the same batches, this measures for onnxquant's ``Calibrator`` and ONNX
Runtime's MinMax, Entropy and Percentile calibrators:

- setup (building the calibrator), collection (``collect_data``) and range
  computation (``compute_range`` / ``compute_data``) wall time, range
  computation in microseconds per calibrated tensor, and the ratios.
  onnxquant collects the same histograms whatever the method, so its
  collection is timed once (best of ``--repeat``) and every method's
  ``compute_range`` on it (median of 5 calls); each ONNX Runtime method is a
  calibrator of its own, run once;
- onnxquant's overhead over plain inference of the same augmented model (the
  planned tensors exposed as graph outputs and fetched, same session options,
  same batches, a fresh session each time as the calibrator has):
  each collection followed by an inference run, (collection - inference) /
  inference per pair, the median over ``--repeat`` pairs (best-of-each shown
  beside it);
- peak memory: one fresh subprocess per (tool, method, N): the resident set
  is read once the modules are imported and the images loaded (start); the
  calibrator is
  built and warmed up with WARM_BATCHES batches of other images and one range
  computation (both tools: the allocators of ONNX Runtime, NumPy and the
  engine reach their steady state only after a few batches; with one batch,
  ~2 MiB of that start-up showed up above the baseline), the resident set read
  (baseline), VmHWM reset (``5`` into /proc/self/clear_refs), N samples
  streamed from a generator, the ranges computed, and VmHWM read. Reported:
  the peak above the baseline (DESIGN.md's measure), the calibrator's
  footprint (peak minus start: session, model, statistics and working
  memory) and the peak resident set, with their growth from the small to the
  large N (SETTINGS lists the N of each model). Once warmed up, onnxquant's
  peak above the baseline is a few hundred KiB at most, below the run-to-run
  spread of the baseline itself, so its growth in percent says nothing; the
  target is judged on the footprint.

Settings that make both tools do comparable work:

- the same images (CIFAR-10 test set, the first N) in batches of 25 images
  per ``session.run`` for both (ONNX Runtime's histogram collector stacks the
  outputs of all batches with ``np.asarray`` and fails when the last batch is
  smaller, so the batch size divides 100 and 1000). Both get the same ready
  [25,3,32,32] views (onnxquant ``batch_size=25``), as does the plain
  inference that the overhead is measured against. onnxquant's collection
  from single [1,3,32,32] images, which it stacks itself, is timed beside it
  (not judged: stacking is data preparation that the other timings leave
  out);
- ONNX Runtime Entropy: ``num_bins=2048, num_quantized_bins=128`` (one
  histogram of x over [-max|x|, max|x|], 1024 bins a side; 961 candidate
  thresholds, each slice merged into 128 groups); compared with onnxquant's
  ENTROPY_SYM (at least 2048 bins over the observed range, re-binned to 2048
  bins of |x|; 1921 candidates, 128 levels). ONNX Runtime does less work
  here than with ``4096/256``, the setting that models the same quantizer as
  ENTROPY_SYM (docs/calibration.md), so its per-tensor time is a lower bound;
- ONNX Runtime Percentile: ``num_bins=2048, percentile=99.99`` and its default
  ``symmetric=True`` (a histogram of |x|); compared with PERCENTILE_SYM at 99.99;
- ONNX Runtime MinMax (ReduceMin/ReduceMax nodes added to the graph):
  compared with MIN_MAX_SYM;
- threads: onnxquant ``threads=T``; ONNX Runtime's calibration session is
  rebuilt exactly as ``create_inference_session`` builds it (ORT_DISABLE_ALL)
  but with ``intra_op_num_threads=T`` (default T = the CPUs this process may
  use), so both use the same thread budget.

ONNX Runtime calibrates every float input and output of every node (more
tensors than onnxquant's plan); tensor counts are printed for both and range
computation is compared per tensor.

    PYTHONPATH=python .venv/bin/python bench/calibration.py [--quick] [--models resnet8 resnet18]

``resnet8`` is the zoo's MLPerf Tiny ResNet8 (``$ONNXQUANT_ZOO``, default
``<repo>/../shared/zoo``); ``resnet18`` is a ResNet-18-size CIFAR network with
random weights that ``bench/resnet18_cifar.py`` builds into the run's temporary
folder. Both are fed the same real CIFAR-10 test images. The targets are
judged only at the full run's sizes; ``--quick`` and other ``--images`` print
ok/below instead of met/MISSED.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from _proc import reset_peak, status_kib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ZOO = os.environ.get("ONNXQUANT_ZOO", os.path.join(REPO, "..", "shared", "zoo"))
CIFAR = os.path.join(ZOO, "cifar10")
BATCH = 25
WARM_BATCHES = 4  # memory children: batches fed (and ranges computed) before the baseline

# (label, onnxquant method name, ONNX Runtime method name, ORT extra_options)
PAIRS = [
    ("MinMax", "MIN_MAX_SYM", "MinMax", {}),
    ("Entropy", "ENTROPY_SYM", "Entropy", {"num_bins": 2048, "num_quantized_bins": 128}),
    ("Percentile", "PERCENTILE_SYM", "Percentile", {"num_bins": 2048, "percentile": 99.99}),
]
ORT_OPTIONS = {ort: extra for _, _, ort, extra in PAIRS}


# ----------------------------------------------------------------------------- helpers

def _threads_default() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _load_pool(count: int, offset: int = 0):
    """CIFAR-10 test images [count,3,32,32] float32 0..255 (NCHW), from ``offset``."""
    import numpy as np

    images = np.load(os.path.join(CIFAR, "cifar10_test.npz"))["images"]
    if offset + count > len(images):
        raise SystemExit(f"need {offset + count} images, the test set has {len(images)}")
    chunk = images[offset:offset + count]
    return np.ascontiguousarray(chunk.transpose(0, 3, 1, 2).astype(np.float32))


def _model_source(name: str, workdir: str) -> str:
    if name == "resnet8":
        return os.path.join(CIFAR, "resnet8_cifar10.onnx")
    sys.path.insert(0, HERE)
    import resnet18_cifar

    return resnet18_cifar.ensure(os.path.join(workdir, "resnet18_cifar.onnx"))


def _optimized(name: str, workdir: str) -> str:
    """oq.optimize_model of the named model, saved in ``workdir``; returns the path."""
    import onnx

    import onnxquant as oq

    path = os.path.join(workdir, f"{name}.opt.onnx")
    if not os.path.exists(path):
        onnx.save(oq.optimize_model(_model_source(name, workdir)), path)
    return path


def _input_name(model_path: str) -> str:
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _ort_reader(input_name: str, batches):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def _ort_calibrator(model_path: str, method: str, threads: int, workdir: str):
    """create_calibrator, then its session rebuilt as ORT builds it but with
    ``threads`` intra-op threads. Returns (calibrator, box): box["setup_s"] is
    the time of create_calibrator alone (the rebuild of its session is left
    out, so ONNX Runtime is not charged for two sessions), box["compute_s"]
    accumulates the time spent in compute_data."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    t0 = time.perf_counter()
    cal = create_calibrator(model_path, op_types_to_calibrate=None,
                            augmented_model_path=os.path.join(workdir, f"ort_aug_{method}.onnx"),
                            calibrate_method=getattr(CalibrationMethod, method),
                            extra_options=dict(ORT_OPTIONS[method]))
    setup_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    cal.infer_session = ort.InferenceSession(cal.augmented_model_path, sess_options=so,
                                             providers=cal.execution_providers)
    # MinMax computes its ranges inside collect_data; time compute_data
    # wherever it is called so collection and range computation separate.
    box = {"compute_s": 0.0, "setup_s": setup_s}
    original = cal.compute_data

    def timed():
        t = time.perf_counter()
        try:
            return original()
        finally:
            box["compute_s"] += time.perf_counter() - t

    cal.compute_data = timed
    return cal, box


def _quiet():
    # ONNX Runtime's histogram collector prints progress lines to stdout.
    return contextlib.redirect_stdout(io.StringIO())


# ----------------------------------------------------------------------------- timing

def _time_ours(model_path: str, method: str, samples, threads: int, repeat: int,
               inference=None, singles=None):
    """Returns dict with setup/collect (min over ``repeat`` runs), per-method range
    times, tensor count; ``inference`` (a callable) is timed after each
    collection, and a collection from ``singles`` (when given) after that."""
    import onnx

    import onnxquant as oq

    model = onnx.load(model_path)

    def calibrator():
        return oq.Calibrator(model, getattr(oq.CalibrationMethod, method), batch_size=BATCH,
                             threads=threads)

    collect, setup, infer, single = [], [], [], []
    cal = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        cal = calibrator()
        t1 = time.perf_counter()
        cal.collect_data(samples)
        t2 = time.perf_counter()
        setup.append(t1 - t0)
        collect.append(t2 - t1)
        if inference is not None:
            infer.append(inference())
        if singles is not None:
            other = calibrator()
            t = time.perf_counter()
            other.collect_data(singles)
            single.append(time.perf_counter() - t)
    ranges = {}
    for m in oq.CalibrationMethod:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            cal.compute_range(m)
            times.append(time.perf_counter() - t)
        ranges[m.name] = statistics.median(times)
    return {"setup_s": min(setup), "collect_s": min(collect), "collect_all": collect,
            "infer_s": min(infer) if infer else None, "infer_all": infer,
            "singles_all": single,
            "tensors": len(cal.tensors), "range_s": ranges, "calibrator": cal}


def _inference_runner(model_path: str, planned, batches, threads: int):
    """Plain inference of onnxquant's augmented model (its planned tensors as
    outputs, fetched and discarded), same session options, same batches;
    returns a timing callable."""
    import onnx

    from onnxquant import _core
    from onnxquant._model import model_to_bytes
    from onnxquant._shapes import infer_dtypes
    from onnxquant.calibrator import _session

    model = onnx.load(model_path)
    input_name = _input_name(model_path)
    fetch = [t for t in planned if t != input_name]
    augmented, _outputs = _core.expose_tensors(model_to_bytes(model), fetch,
                                               infer_dtypes(model))

    def run() -> float:
        # A fresh session each time, built untimed, not warmed up: exactly what
        # a Calibrator's collection starts from (its setup is not in the
        # collection time either).
        session = _session(augmented, threads, None)
        t = time.perf_counter()
        for b in batches:
            session.run(fetch, {input_name: b})
        return time.perf_counter() - t

    return run


def _time_ort(model_path: str, method: str, batches, threads: int, workdir: str):
    input_name = _input_name(model_path)
    cal, box = _ort_calibrator(model_path, method, threads, workdir)
    t1 = time.perf_counter()
    with _quiet():
        cal.collect_data(_ort_reader(input_name, batches))
        t2 = time.perf_counter()
        data = cal.compute_data()
        t3 = time.perf_counter()
    inside = box["compute_s"] - (t3 - t2)  # compute_data run inside collect_data (MinMax)
    tensors = len(list(data.keys()))
    return {"setup_s": box["setup_s"], "collect_s": (t2 - t1) - inside,
            "range_total_s": inside + (t3 - t2), "tensors": tensors}


# ----------------------------------------------------------------------------- memory

def _memory_child(spec: dict) -> dict:
    import numpy as np

    tool, method, n, threads = spec["tool"], spec["method"], spec["n"], spec["threads"]
    model_path = spec["model"]
    pool = np.load(os.path.join(CIFAR, "cifar10_test.npz"))["images"]  # uint8 HWC, ~30 MB

    def image(i):
        return np.ascontiguousarray(pool[i:i + 1].transpose(0, 3, 1, 2), dtype=np.float32)

    def singles(start, count):
        for i in range(start, start + count):
            yield image(i)

    def batches(start, count):
        for i in range(start, start + count, BATCH):
            yield np.concatenate([image(j) for j in range(i, min(i + BATCH, start + count))])

    warm_start = len(pool) - WARM_BATCHES * BATCH  # not among the N measured
    if tool == "onnxquant":
        import onnx

        import onnxquant as oq

        start = status_kib("VmRSS")  # before the calibrator exists
        cal = oq.Calibrator(onnx.load(model_path), getattr(oq.CalibrationMethod, method),
                            batch_size=BATCH, threads=threads)
        cal.collect_data(singles(warm_start, WARM_BATCHES * BATCH))
        cal.compute_range()
        baseline = status_kib("VmRSS")
        reset_peak()
        cal.collect_data(singles(0, n))
        cal.compute_range()
    else:
        import onnxruntime.quantization  # noqa: F401  (imported before `start`)

        workdir = tempfile.TemporaryDirectory(prefix="oq_bench_mem_")
        input_name = _input_name(model_path)
        start = status_kib("VmRSS")
        cal, _ = _ort_calibrator(model_path, method, threads, workdir.name)
        with _quiet():
            cal.collect_data(_ort_reader(input_name,
                                         batches(warm_start, WARM_BATCHES * BATCH)))
            cal.compute_data()
            baseline = status_kib("VmRSS")
            reset_peak()
            cal.collect_data(_ort_reader(input_name, batches(0, n)))
            cal.compute_data()
    peak = status_kib("VmHWM")
    if tool != "onnxquant":
        workdir.cleanup()
    return {"baseline_kib": baseline, "peak_kib": peak, "above_kib": peak - baseline,
            "footprint_kib": peak - start}


def _memory(model_path: str, configs, counts, threads: int) -> dict:
    out = {}
    for tool, method in configs:
        for n in counts:
            spec = {"tool": tool, "method": method, "n": n, "threads": threads,
                    "model": model_path}
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child",
                                   json.dumps(spec)], check=False, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {spec} failed:\n{proc.stderr[-3000:]}")
            out[(tool, method, n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------- report

def _paired_overheads(collections: list[float], inferences: list[float]) -> list[float]:
    """(collection - inference) / inference of each pair, sorted."""
    return sorted((c - i) / i for c, i in zip(collections, inferences))


def _fmt_runs(seconds: list[float]) -> str:
    return ", ".join(f"{x:.3f}" for x in seconds)


def _fmt_percents(fractions: list[float]) -> str:
    return ", ".join(f"{x * 100:+.1f} %" for x in fractions)


def _fmt_s(s: float) -> str:
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def _fmt_x(x: float) -> str:
    return f"{x:,.0f}×" if x >= 10 else f"{x:.2f}×"


def _fmt_us(us: float) -> str:
    return f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def _memory_report(model_path: str, cfg: dict, threads: int) -> dict:
    """Runs the memory subprocesses of one model and prints their table."""
    lo, hi = cfg["ours_counts"]
    mem = _memory(model_path, [("onnxquant", m) for m in cfg["ours_methods"]], (lo, hi), threads)
    mem.update(_memory(model_path, [("onnxquant", "ENTROPY_SYM")], cfg["ours_scaling"], threads))
    mem.update(_memory(model_path, [("onnxruntime", m) for m in cfg["ort_methods"]],
                       cfg["ort_counts"], threads))
    print("\nPeak memory (a fresh process per row and N; footprint: peak RSS minus the RSS "
          "before the calibrator was built; above baseline: peak RSS minus the RSS after "
          f"{WARM_BATCHES} warm-up batches and one range computation):\n")
    print("| tool | method | N | baseline RSS (MiB) | footprint (MiB) | growth of footprint | "
          "peak above baseline (MiB) | growth of peak RSS |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    rows = [("onnxquant", m, (lo, hi)) for m in cfg["ours_methods"]] + \
           [("onnxruntime", m, tuple(cfg["ort_counts"])) for m in cfg["ort_methods"]]
    out = {}
    for tool, method, (n0, n1) in rows:
        a, b = mem[(tool, method, n0)], mem[(tool, method, n1)]
        g_foot = (b["footprint_kib"] - a["footprint_kib"]) / a["footprint_kib"]
        g_peak = (b["peak_kib"] - a["peak_kib"]) / a["peak_kib"]
        out[(tool, method)] = (n0, n1, g_foot, g_peak, a["above_kib"], b["above_kib"])
        print(f"| {tool} | {method} | {n0} -> {n1} | {a['baseline_kib'] / 1024:.1f} | "
              f"{a['footprint_kib'] / 1024:.2f} -> {b['footprint_kib'] / 1024:.2f} | "
              f"{g_foot * 100:+.1f} % | "
              f"{a['above_kib'] / 1024:.2f} -> {b['above_kib'] / 1024:.2f} | "
              f"{g_peak * 100:+.1f} % |")
    if cfg["ours_scaling"]:
        counts = (lo, hi) + tuple(cfg["ours_scaling"])
        points = "; ".join(
            f"{n}: {mem[('onnxquant', 'ENTROPY_SYM', n)]['footprint_kib'] / 1024:.2f} / "
            f"{mem[('onnxquant', 'ENTROPY_SYM', n)]['above_kib'] / 1024:.2f}" for n in counts)
        print(f"\nonnxquant ENTROPY_SYM by N, footprint / peak above baseline (MiB), to see "
              f"whether either keeps growing: {points}")
    return out


def bench_model(name: str, images: int, threads: int, repeat: int, memory, workdir: str) -> dict:
    """``memory``: None, or the memory part of the model's SETTINGS."""
    model_path = _optimized(name, workdir)
    pool = _load_pool(images)
    singles = [pool[i:i + 1] for i in range(images)]
    batches = [pool[i:i + BATCH] for i in range(0, images, BATCH)]
    print(f"\n## {name}: {images} images, batches of {BATCH}, {threads} threads\n", flush=True)

    # onnxquant collects the same histograms whatever the method (every method
    # is computed from them), so one collection, timed best of ``repeat`` and
    # interleaved with plain inference of the same augmented model, serves
    # every row; compute_range is timed per method.
    import onnx

    import onnxquant as oq

    planned = oq.Calibrator(onnx.load(model_path), oq.CalibrationMethod.ENTROPY_SYM,
                            threads=threads).tensors
    runner = _inference_runner(model_path, planned, batches, threads)
    infer = _time_ours(model_path, "ENTROPY_SYM", batches, threads, repeat, runner, singles)
    print(f"  onnxquant: collection {infer['collect_s']:.3f} s", flush=True)
    results = {}
    for label, ours, ort_method, _ in PAIRS:
        o = _time_ort(model_path, ort_method, batches, threads, workdir)
        results[label] = (infer, o)
        print(f"  ORT {label}: collection {o['collect_s']:.3f} s, "
              f"ranges {o['range_total_s']:.3f} s",
              flush=True)

    any_ours = results["Entropy"][0]
    n_ours, n_ort = any_ours["tensors"], results["Entropy"][1]["tensors"]
    print(f"\nCalibrated tensors: onnxquant {n_ours} (the plan's), ONNX Runtime {n_ort} "
          f"(every float input/output of every node).\n")
    print("| method (ours / ORT) | setup ours / ORT (s) | collection ours / ORT (s) | "
          "ranges ours / ORT (ms total) | ranges ours / ORT (µs per tensor) | "
          "whole ours / ORT (s) | ORT ÷ ours: collection, ranges per tensor, whole |")
    print("|---|---:|---:|---:|---:|---:|---|")
    summary = {}
    for label, ours, ort_method, _ in PAIRS:
        r, o = results[label]
        ours_range = r["range_s"][ours]
        ours_us = ours_range / r["tensors"] * 1e6
        ort_us = o["range_total_s"] / o["tensors"] * 1e6
        whole_ours = r["setup_s"] + r["collect_s"] + ours_range
        whole_ort = o["setup_s"] + o["collect_s"] + o["range_total_s"]
        ratios = (o["collect_s"] / r["collect_s"], ort_us / ours_us, whole_ort / whole_ours)
        summary[label] = {"ours_us": ours_us, "ort_us": ort_us, "whole_ours": whole_ours,
                          "whole_ort": whole_ort, "ratios": ratios}
        print(f"| {ours} / {ort_method} | {r['setup_s']:.2f} / {o['setup_s']:.2f} | "
              f"{_fmt_s(r['collect_s'])} / {_fmt_s(o['collect_s'])} | "
              f"{ours_range * 1e3:.2f} / {o['range_total_s'] * 1e3:,.1f} | "
              f"{_fmt_us(ours_us)} / {_fmt_us(ort_us)} | {_fmt_s(whole_ours)} / "
              f"{_fmt_s(whole_ort)} | {ratios[0]:.2f}×, {_fmt_x(ratios[1])}, {ratios[2]:.2f}× |")

    print("\nonnxquant range computation, every method on the same statistics "
          "(median of 5 calls):\n")
    print("| method | total (ms) | µs per tensor |")
    print("|---|---:|---:|")
    for m, s in any_ours["range_s"].items():
        print(f"| {m} | {s * 1e3:.3f} | {s / n_ours * 1e6:.1f} |")

    best = (infer["collect_s"] - infer["infer_s"]) / infer["infer_s"]
    # Each collection is followed by an inference run: the pairs share the
    # machine's state of the moment, and their median overhead does not hang on
    # one lucky or unlucky run as best-of does.
    paired = _paired_overheads(infer["collect_all"], infer["infer_all"])
    overhead = statistics.median(paired)
    print(f"\nOverhead over inference (ENTROPY_SYM statistics): collection "
          f"(runs: {_fmt_runs(infer['collect_all'])} s)"
          f" vs plain inference of the same augmented model "
          f"(runs: {_fmt_runs(infer['infer_all'])} s), each collection "
          f"followed by an inference run: median of the {repeat} paired overheads "
          f"**{overhead * 100:+.1f} %** (pairs: {_fmt_percents(paired)}); best of each "
          f"{best * 100:+.1f} %")
    # Each inference run is followed by a collection from single images: the
    # same pairing, stacking included.
    stacked = _paired_overheads(infer["singles_all"], infer["infer_all"])
    print(f"\nFrom single [1,...] images, stacked by onnxquant into batches of {BATCH} "
          f"(not judged): collection (runs: {_fmt_runs(infer['singles_all'])} s), median of "
          f"the {repeat} paired overheads over the same inference runs "
          f"{statistics.median(stacked) * 100:+.1f} % (pairs: {_fmt_percents(stacked)})")
    summary["overhead"] = overhead

    if memory is not None:
        summary["memory"] = _memory_report(model_path, memory, threads)
    return summary


def _targets(name: str, s: dict, judged: bool) -> None:
    """Prints each target's figure; ``judged`` False (a run at other sizes than
    the targets') prints "ok"/"below" instead of a verdict."""
    if judged:
        print(f"\nTargets, {name}:")
    else:
        print(f"\nTargets, {name} (not judged: this run's sizes are not the targets'; "
              f"ok/below say how this run compares):")

    def verdict(ok: bool) -> str:
        return ("met" if ok else "MISSED") if judged else ("ok" if ok else "below")

    ent = s["Entropy"]
    print(f"- range computation ≥100× faster per tensor than ORT Entropy: "
          f"{_fmt_x(ent['ratios'][1])} -> {verdict(ent['ratios'][1] >= 100)}")
    for label in ("Entropy", "Percentile"):
        x = s[label]["ratios"][2]
        print(f"- whole calibration ≥3× faster than ORT {label}: {x:.2f}× -> "
              f"{verdict(x >= 3)}")
    ov = s["overhead"]
    print(f"- overhead over inference ≤25 %: {ov * 100:+.1f} % -> "
          f"{verdict(ov <= 0.25)}")
    if "memory" in s:
        for (tool, method), (lo, hi, g_foot, g_peak, a0, a1) in s["memory"].items():
            if tool == "onnxquant":
                print(f"- peak memory growth {lo} -> {hi} samples <10 %, {method}: footprint "
                      f"{g_foot * 100:+.1f} %, peak RSS {g_peak * 100:+.1f} %, peak above "
                      f"baseline {a0 / 1024:.2f} -> {a1 / 1024:.2f} MiB -> "
                      f"{verdict(g_foot < 0.10)} (footprint)")


# Per model: images for timing, and the memory runs: onnxquant's methods at two
# sample counts (the <10 % growth target), onnxquant's ENTROPY_SYM at larger
# counts (does the peak keep growing?), ONNX Runtime's methods at its counts.
# On the ResNet-18-size model ONNX Runtime's histogram calibrators keep every
# batch's outputs (6.5 GB and 2 minutes of collection at 1000 images on 2
# cores) and its Entropy search takes 60-90 s whatever N, so the full run
# times it on 250 images and measures its memory for MinMax and Percentile at
# 100 and 250 samples (Entropy keeps the outputs the same way as Percentile);
# onnxquant's collection is the same whatever the method, so there only
# ENTROPY_SYM (the costliest range search) is measured.
SETTINGS = {
    "full": {
        "resnet8": {"images": 1000,
                    "ours_methods": ("MIN_MAX_SYM", "ENTROPY_SYM", "PERCENTILE_SYM"),
                    "ours_counts": (100, 1000), "ours_scaling": (3000, 9000),
                    "ort_methods": ("MinMax", "Entropy", "Percentile"), "ort_counts": (100, 1000)},
        "resnet18": {"images": 250, "ours_methods": ("ENTROPY_SYM",),
                     "ours_counts": (100, 1000), "ours_scaling": (2000,),
                     "ort_methods": ("MinMax", "Percentile"), "ort_counts": (100, 250)},
    },
    "quick": {
        "resnet8": {"images": 200,
                    "ours_methods": ("MIN_MAX_SYM", "ENTROPY_SYM", "PERCENTILE_SYM"),
                    "ours_counts": (50, 200), "ours_scaling": (400,),
                    "ort_methods": ("MinMax", "Entropy", "Percentile"), "ort_counts": (50, 200)},
        "resnet18": {"images": 50, "ours_methods": ("ENTROPY_SYM",),
                     "ours_counts": (25, 100), "ours_scaling": (),
                     "ort_methods": ("MinMax",), "ort_counts": (25, 50)},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer images and samples, one repetition (a smoke run)")
    ap.add_argument("--models", nargs="+", choices=["resnet8", "resnet18"],
                    default=["resnet8", "resnet18"])
    ap.add_argument("--images", type=int, default=None,
                    help=f"images for timing, a multiple of {BATCH} (default: resnet8 1000, "
                         "resnet18 250)")
    ap.add_argument("--threads", type=int, default=_threads_default(),
                    help="thread budget of both tools (default: the CPUs this process may use)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="repetitions of onnxquant's ENTROPY_SYM collection and of the "
                         "inference baseline, interleaved in pairs (default 15, quick 1)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(_memory_child(json.loads(args.memory_child))))
        return

    import numpy as np
    import onnx
    import onnxruntime

    import onnxquant
    from onnxquant.cpu import cpu_kernels

    settings = SETTINGS["quick" if args.quick else "full"]
    if args.images is not None and args.images % BATCH:
        raise SystemExit(f"--images must be a multiple of {BATCH}")
    repeat = args.repeat or (1 if args.quick else 15)

    print("# Calibration: onnxquant vs onnxruntime.quantization\n")
    print("command: " + " ".join(shlex.quote(a) for a in
                                 ["PYTHONPATH=python", os.path.relpath(sys.executable, REPO),
                                  os.path.relpath(os.path.abspath(__file__), REPO)]
                                 + sys.argv[1:]))
    cpu = cpu_kernels()
    print(f"CPU: {cpu.name}, {os.cpu_count()} CPUs, flags: {' '.join(cpu.flags) or 'none'}")
    print(f"versions: onnxquant {onnxquant.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"onnx {onnx.__version__}, numpy {np.__version__}, Python {platform.python_version()}")

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    started = time.perf_counter()
    summaries = {}
    with tempfile.TemporaryDirectory(prefix="oq_bench_cal_") as workdir:
        for name in args.models:
            cfg = settings[name]
            summaries[name] = bench_model(name, args.images or cfg["images"], args.threads,
                                          repeat, None if args.no_memory else cfg, workdir)
    for name, s in summaries.items():
        full = SETTINGS["full"][name]
        judged = not args.quick and (args.images or full["images"]) == full["images"]
        _targets(name, s, judged)
    print(f"\n(total wall time {time.perf_counter() - started:.0f} s; load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
