"""Inference latency as deployed: FP32, onnxquant's INT8 and ONNX Runtime's INT8.

For each model the script

1. reads the model and its samples with the accuracy benchmark's loaders
   (``bench/accuracy_lib``: the zoo's classifiers, detectors, super-resolution and Basic
   Pitch, the models/cifar networks) or the demo's (the Fashion-MNIST CNN);
2. FP32: the model file as it is;
3. onnxquant: ``optimize_model``, one ``Calibrator`` (MIN_MAX_ASYM) on the first
   ``--calibration`` samples (fewer where the entry has fewer), ``quantize`` with its default
   options;
4. ONNX Runtime: ``quant_pre_process`` of the normalised graph, then ``quantize_static`` (QDQ,
   per_channel=True, QUInt8 activations, QInt8 weights, MinMax) on the same samples;
5. times the three in ONNX Runtime CPU sessions with the default options (ORT_ENABLE_ALL,
   which fuses QDQ into integer kernels), for each thread setting (``--threads``: 1 intra-op
   thread and ONNX Runtime's default, all cores) and batch (``--batches``: 1 and 32 rows,
   stacked from the entry's evaluation samples). Models whose input has a fixed batch of 1
   are timed at batch 1 only. The three take turns: each round times one block of runs of
   each, in a rotating order, after a warm-up; a block repeats the run until it lasts about
   ``--block-ms`` (the same count for the three). Reported: the median over ``--runs`` rounds
   (at least 20 in a full run) of the time per run, and the median of the per-round ratios
   (ours / ORT's, ours / FP32), which cancels drift that hits all three alike;
6. lists what ONNX Runtime runs in float in each INT8 model (``onnxquant.runtime_graph``).

Targets, judged per model on every measured setting: ours <= 1.05 x ONNX Runtime's INT8; and
ours faster than FP32 at batch 32 (batch 1 where the batch is fixed) on every model whose
heavy ops (Conv, ConvTranspose, Gemm, MatMul) ONNX Runtime runs as integer kernels in ours.

    PYTHONPATH=python .venv/bin/python bench/inference.py                 # every model
    PYTHONPATH=python .venv/bin/python bench/inference.py --quick         # 3 models, 7 rounds
    PYTHONPATH=python .venv/bin/python bench/inference.py --models resnet8 cifar-resnet

The report goes to stdout as Markdown (``--output`` also writes it to a file); progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from accuracy_lib.classifiers import MODELS as CLASSIFIERS
from accuracy_lib.classifiers import MissingModel
from accuracy_lib.common import (
    DEFAULT_METHOD,
    DEFAULT_ZOO,
    REPO,
    cpu_description,
    first_line,
    git_revision,
    log,
    table,
)
from accuracy_lib.ort_quant import (
    GEMM_BIAS_NOTE,
    gemm_bias_workaround,
    ort_preprocess,
    ort_quantize,
)

import onnxquant as oq
from onnxquant.runtime_graph import RuntimeGraph, inspect_runtime_graph

VARIANTS = ("FP32", "ours", "ORT")
HEAVY_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
             "FusedMatMul")
ORT_RATIO_TARGET = 1.05
QUICK_MODELS = ["mnist", "resnet8", "cifar-resnet"]


@dataclass
class Workload:
    """A model file, its calibration samples and the samples timed (axis 0 indexes
    samples, each fed as ``x[i:i+1]`` or stacked into a batch)."""

    name: str
    path: str
    calibration: np.ndarray
    timing: np.ndarray
    notes: list[str] = field(default_factory=list)


def _classifier(key: str) -> Callable[[str], Workload]:
    def load(zoo: str) -> Workload:
        entry = CLASSIFIERS[key](zoo)
        return Workload(entry.name, entry.path, entry.calibration, entry.test.x[:64])
    return load


def _task(builder: Callable[[str], list], name: str) -> Callable[[str], Workload]:
    def load(zoo: str) -> Workload:
        entry = next(e for e in builder(zoo) if e.name == name)
        return Workload(entry.name, entry.path, entry.calibration, entry.evaluation)
    return load


def _faces(zoo: str) -> list:
    from accuracy_lib.task_faces import face_entries

    return face_entries(zoo)


def _superres(zoo: str) -> list:
    from accuracy_lib.task_superres import superres_entry

    return [superres_entry(zoo)]


def _basic_pitch(zoo: str) -> list:
    from accuracy_lib.task_audio import basic_pitch_entry

    return [basic_pitch_entry(zoo)]


def _fashion(zoo: str) -> Workload:
    from onnxquant.demo import default_demo_data, default_model_path

    data = default_demo_data(num_calibration=200)
    return Workload("Fashion-MNIST CNN (demo)", default_model_path(), data.calibration,
                    data.test_inputs[:64])


#: key -> loader(zoo) -> Workload, in table order.
WORKLOADS: dict[str, Callable[[str], Workload]] = {
    "mnist": _classifier("mnist"),
    "resnet8": _classifier("resnet8"),
    "face-rfb": _task(_faces, "Ultra-Light RFB-320"),
    "face-slim": _task(_faces, "Ultra-Light slim-320"),
    "yunet": _task(_faces, "YuNet n 320"),
    "superres": _task(_superres, "Sub-pixel CNN ×3"),
    "basic-pitch": _task(_basic_pitch, "Basic Pitch (nmp)"),
    **{f"cifar-{stem}": _classifier(f"cifar-{stem}")
       for stem in ("resnet", "mobilenetv2", "efficientnet", "convnext", "vit")},
    "fashion": _fashion,
}


@dataclass
class Timing:
    batch: int
    threads: int  # 0: ONNX Runtime's default (all cores)
    repeats: int  # runs per timed block
    ms: dict[str, float]  # variant -> median ms per run
    ours_over_ort: float | None
    ours_over_fp32: float | None


@dataclass
class Result:
    key: str
    workload: Workload
    fixed_batch: bool
    timings: list[Timing] = field(default_factory=list)
    graphs: dict[str, RuntimeGraph] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _fixed_batch(path: str) -> bool:
    model = onnx.load(path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def _quantize(w: Workload, samples: int, workdir: str, options: oq.QuantOptions
              ) -> tuple[dict[str, str], dict[str, str]]:
    """The FP32, ours and ORT's model files (variant -> path), and errors (variant -> text)."""
    paths, errors = {"FP32": w.path}, {}
    calibration = w.calibration[:samples]
    model = oq.optimize_model(w.path)
    normalised = os.path.join(workdir, "normalised.onnx")
    onnx.save(model, normalised)
    t = time.perf_counter()
    try:
        calibrator = oq.Calibrator(model, oq.CalibrationMethod[DEFAULT_METHOD],
                                   options=options)
        calibrator.collect_data(calibration[i:i + 1] for i in range(len(calibration)))
        paths["ours"] = os.path.join(workdir, "ours.onnx")
        onnx.save(oq.quantize(model, calibrator.compute_range(), options=options,
                              calibrator=calibrator), paths["ours"])
    except Exception as e:  # noqa: BLE001 - reported in the table
        paths.pop("ours", None)
        errors["ours"] = first_line(e)
    log(f"  onnxquant: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    notes: list[str] = []
    source = ort_preprocess(normalised, workdir, True, notes)
    paths["ORT"] = os.path.join(workdir, "ort.onnx")
    input_name = model.graph.input[0].name
    try:
        try:
            ort_quantize(source, paths["ORT"], input_name, calibration, "MinMax")
        except ValueError as e:
            retry = gemm_bias_workaround(source, e, workdir)
            if retry is None:
                raise
            notes.append(GEMM_BIAS_NOTE)
            ort_quantize(retry, paths["ORT"], input_name, calibration, "MinMax")
    except Exception as e:  # noqa: BLE001 - reported in the table
        paths.pop("ORT", None)
        errors["ORT"] = first_line(e)
    w.notes += notes
    log(f"  onnxruntime quantize_static: {time.perf_counter() - t:.2f} s")
    return paths, errors


def _session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()  # defaults: ORT_ENABLE_ALL, QDQ fused
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    index = np.arange(n) % len(x)
    return np.ascontiguousarray(x[index])


def _time_block(session: ort.InferenceSession, feeds: dict, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feeds)
    return (time.perf_counter() - start) / repeats


def _time(paths: dict[str, str], x: np.ndarray, batch: int, threads: int, runs: int,
          block_ms: float) -> Timing:
    sessions = {v: _session(p, threads) for v, p in paths.items()}
    feeds = {v: {s.get_inputs()[0].name: _batch(x, batch)} for v, s in sessions.items()}
    for v, s in sessions.items():  # warm-up
        for _ in range(3):
            s.run(None, feeds[v])
    once = min(_time_block(s, feeds[v], 1) for v, s in sessions.items())
    repeats = max(1, round(block_ms / 1000 / max(once, 1e-7)))
    order = list(sessions)
    per_run: dict[str, list[float]] = {v: [] for v in order}
    for r in range(runs):
        for k in range(len(order)):
            v = order[(r + k) % len(order)]
            per_run[v].append(_time_block(sessions[v], feeds[v], repeats))

    def paired(a: str, b: str) -> float | None:
        if a not in per_run or b not in per_run:
            return None
        return statistics.median(x / y for x, y in zip(per_run[a], per_run[b], strict=True))

    return Timing(batch, threads, repeats,
                  {v: 1000 * statistics.median(t) for v, t in per_run.items()},
                  paired("ours", "ORT"), paired("ours", "FP32"))


def measure(key: str, zoo: str, args: argparse.Namespace) -> Result:
    start = time.perf_counter()
    w = WORKLOADS[key](zoo)
    result = Result(key, w, False)
    log(f"{w.name}: {os.path.relpath(w.path, REPO)}")
    with tempfile.TemporaryDirectory(prefix="onnxquant_inference_") as workdir:
        options = oq.QuantOptions(quantize_silu=args.quantize_silu)
        paths, result.errors = _quantize(w, args.calibration, workdir, options)
        result.fixed_batch = any(_fixed_batch(p) for p in paths.values())
        for v in ("ours", "ORT"):
            if v not in paths:
                continue
            try:
                result.graphs[v] = inspect_runtime_graph(paths[v])
            except Exception as e:  # noqa: BLE001 - e.g. ORT cannot load that model
                result.errors[v] = f"ONNX Runtime cannot load the INT8 model: {first_line(e)}"
                del paths[v]
        batches = [1] if result.fixed_batch else args.batches
        for threads in args.threads:
            for batch in batches:
                t = time.perf_counter()
                timing = _time(paths, w.timing, batch, threads, args.runs, args.block_ms)
                result.timings.append(timing)
                log(f"  batch {batch}, threads {threads or 'all'}: "
                    + ", ".join(f"{v} {ms:.3f} ms" for v, ms in timing.ms.items())
                    + f" ({time.perf_counter() - t:.0f} s)")
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------
# The report


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}"


def heavy_ops_integer(graph: RuntimeGraph | None) -> bool:
    """True when no heavy op (Conv, Gemm, MatMul, ...) of ``graph`` runs in float."""
    if graph is None:
        return False
    return not any(op.split(":")[-1] in HEAVY_OPS for op in graph.float_ops)


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else "met" if ok else "MISSED"


def _threads_label(threads: int) -> str:
    return "all" if threads == 0 else str(threads)


def _latency_table(results: list[Result]) -> list[str]:
    rows = []
    for res in results:
        for t in res.timings:
            within = (None if t.ours_over_ort is None else t.ours_over_ort <= ORT_RATIO_TARGET)
            rows.append([res.workload.name + (" (fixed batch 1)" if res.fixed_batch else ""),
                         str(t.batch), _threads_label(t.threads),
                         *(_fmt_ms(t.ms.get(v)) for v in VARIANTS),
                         _fmt_ratio(t.ours_over_ort), _fmt_ratio(t.ours_over_fp32),
                         _verdict(within)])
        if not res.timings:
            rows.append([res.workload.name, "—", "—", "—", "—", "—", "—", "—", "not measured"])
    return table(["model", "batch", "threads", "FP32 ms", "ours ms", "ORT ms", "ours/ORT",
                  "ours/FP32", f"ours ≤ {ORT_RATIO_TARGET}×ORT"], rows,
                 ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"])


def _targets(results: list[Result]) -> list[str]:
    lines = [f"- ours ≤ {ORT_RATIO_TARGET} × ONNX Runtime's INT8 (every setting):"]
    for res in results:
        missed = [t for t in res.timings
                  if t.ours_over_ort is not None and t.ours_over_ort > ORT_RATIO_TARGET]
        judged = [t for t in res.timings if t.ours_over_ort is not None]
        if not judged:
            lines.append(f"  - {res.workload.name}: not judged ({_errors(res) or 'no timing'})")
            continue
        worst = max(t.ours_over_ort for t in judged)
        text = "; ".join(f"batch {t.batch}, threads {_threads_label(t.threads)}: "
                         f"{t.ours_over_ort:.2f}" for t in missed)
        same = " (ORT runs the same ops in both)" if same_runtime_graph(res) else ""
        lines.append(f"  - {res.workload.name}: worst {worst:.2f} -> "
                     f"{'met' if not missed else 'MISSED (' + text + ')'}{same}")
    lines.append("- ours faster than FP32 at batch 32 (batch 1 where the batch is fixed), "
                 "where ONNX Runtime runs ours' heavy ops as integer kernels:")
    for res in results:
        graph = res.graphs.get("ours")
        if not heavy_ops_integer(graph):
            floats = sorted(op for op in (graph.float_ops if graph else {})
                            if op.split(":")[-1] in HEAVY_OPS)
            why = f"heavy ops in float: {', '.join(floats)}" if floats else \
                _errors(res) or "no INT8 model"
            lines.append(f"  - {res.workload.name}: not applicable ({why})")
            continue
        if not res.timings:
            lines.append(f"  - {res.workload.name}: not measured")
            continue
        batch = 1 if res.fixed_batch else max(t.batch for t in res.timings)
        judged = [t for t in res.timings if t.batch == batch and t.ours_over_fp32 is not None]
        missed = [t for t in judged if t.ours_over_fp32 >= 1.0]
        text = ", ".join(f"threads {_threads_label(t.threads)}: {t.ours_over_fp32:.2f}"
                         for t in judged)
        lines.append(f"  - {res.workload.name} (batch {batch}): ours/FP32 {text} -> "
                     f"{'met' if not missed else 'MISSED'}")
    return lines


def same_runtime_graph(res: Result) -> bool:
    """True when ONNX Runtime runs the same ops, Q and DQ in ours and in its own INT8
    model: then a timing difference between the two is noise or node order."""
    ours, theirs = res.graphs.get("ours"), res.graphs.get("ORT")
    return ours is not None and theirs is not None and all(
        getattr(ours, f) == getattr(theirs, f)
        for f in ("integer_ops", "float_ops", "quantize", "dequantize"))


def _errors(res: Result) -> str:
    return "; ".join(f"{v}: {e}" for v, e in res.errors.items())


def _islands(results: list[Result]) -> list[str]:
    lines = []
    for res in results:
        lines.append(f"- **{res.workload.name}**")
        for v in ("ours", "ORT"):
            graph = res.graphs.get(v)
            if graph is None:
                lines.append(f"  - {v}: no INT8 model ({res.errors.get(v, '')})")
                continue
            integer = ", ".join(f"{op} {n}" for op, n in sorted(graph.integer_ops.items()))
            islands = graph.islands_on_dequantized_data
            lines.append(f"  - {v}: integer ops: {integer or 'none'}; "
                         f"Q {graph.quantize}, DQ {graph.dequantize}; "
                         f"{len(islands)} float island(s) on dequantized data")
            grouped: dict[str, int] = {}
            for island in islands:
                grouped[str(island)] = grouped.get(str(island), 0) + 1
            lines += [f"    - {n} × {text}" if n > 1 else f"    - {text}"
                      for text, n in grouped.items()]
    return lines


def render(results: list[Result], args: argparse.Namespace, command: str,
           started: datetime.datetime) -> str:
    cpu, flags, cpus = cpu_description()
    lines = [
        "```text",
        f"command: {command}",
        f"date: {started:%Y-%m-%d %H:%M} (local), revision {git_revision()}",
        f"CPU: {cpu}, {cpus} CPUs available, ISA: {' '.join(flags) or 'none of interest'}",
        f"versions: onnxquant {oq.__version__}, onnxruntime {ort.__version__}, "
        f"onnx {onnx.__version__}, numpy {np.__version__}",
        f"load average at start: {args.load_start}; at the end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"rounds: {args.runs} per setting (median), blocks of ~{args.block_ms:g} ms; "
        f"calibration: up to {args.calibration} samples",
        "```",
        "",
        *_latency_table(results),
        "",
        "Targets:",
        "",
        *_targets(results),
        "",
        "What ONNX Runtime runs (ORT_ENABLE_ALL, this CPU; onnxquant.runtime_graph):",
        "",
        *_islands(results),
    ]
    notes = [f"- {res.workload.name}: {n}" for res in results for n in res.workload.notes]
    notes += [f"- {res.workload.name}: {len(res.workload.calibration[:args.calibration])} "
              "calibration samples (all the entry has)" for res in results
              if len(res.workload.calibration) < args.calibration]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=list(WORKLOADS), metavar="KEY",
                   help=f"models to run (default all: {', '.join(WORKLOADS)})")
    p.add_argument("--quick", action="store_true",
                   help=f"development run: {', '.join(QUICK_MODELS)} (unless --models), "
                        "7 rounds, 50 calibration samples")
    p.add_argument("--runs", type=int, help="interleaved rounds per setting (default 21; "
                                            "7 with --quick)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                   help="intra-op threads per setting; 0: ONNX Runtime's default, all cores "
                        "(default: 1 0)")
    p.add_argument("--calibration", type=int, help="calibration samples (default 200; 50 "
                                                   "with --quick)")
    p.add_argument("--block-ms", type=float, default=10.0,
                   help="a timed block repeats the run until it lasts about this long")
    p.add_argument("--quantize-silu", action="store_true",
                   help="quantize our INT8 models with QuantOptions(quantize_silu=True)")
    p.add_argument("--zoo", default=DEFAULT_ZOO)
    p.add_argument("--output", help="also write the report to this file")
    args = p.parse_args(argv)
    args.models = args.models or (QUICK_MODELS if args.quick else list(WORKLOADS))
    args.runs = args.runs or (7 if args.quick else 21)
    args.calibration = args.calibration or (50 if args.quick else 200)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now()
    args.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "PYTHONPATH=python .venv/bin/python bench/inference.py " + \
        " ".join(sys.argv[1:] if argv is None else argv)
    ort.set_default_logger_severity(3)  # quantize_static's sessions warn about the graphs
    results = []
    for key in args.models:
        try:
            results.append(measure(key, args.zoo, args))
        except MissingModel as e:
            log(f"{key}: skipped: {e}")
            continue
        log(f"  ({results[-1].seconds:.0f} s)")
    report = render(results, args, command.strip(), started)
    sys.stdout.write(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
