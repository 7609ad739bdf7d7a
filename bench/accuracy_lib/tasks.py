"""Task section (detectors, super-resolution, audio): entries, results and ``measure_task``."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

import onnxquant as oq
from onnxquant.evaluate import make_session

from .common import first_line, log, optimize
from .ort_quant import ort_preprocess, ort_quantize
from .our_quant import our_calibration

#: onnxquant methods of the task section by default (one collection serves them all).
TASK_METHODS = ("MIN_MAX_ASYM", "PERCENTILE_ASYM", "MSE_ASYM", "SQNR_ASYM", "ENTROPY_ASYM")
#: ONNX Runtime methods of the task section by default.
TASK_ORT_METHODS = ("MinMax", "Percentile")


@dataclass
class Column:
    """A metric column of a task table: key in the metric dict, header, format, and whether
    the FP32 row shows it (an agreement of FP32 with itself is left blank)."""

    key: str
    header: str
    fmt: str = "{:.4f}"
    fp32: bool = False


@dataclass
class TaskEntry:
    """One model of the task section: calibration samples and evaluation samples along axis
    0 (each fed as ``x[i:i+1]``), and ``score(fp32, int8)``: metric name -> value, from the
    outputs (name -> array stacked over the evaluation samples) of FP32 and of an INT8
    model (``score(fp32, fp32)`` gives the FP32 row)."""

    name: str
    group: str
    path: str
    calibration: np.ndarray
    evaluation: np.ndarray
    calibration_description: str
    evaluation_description: str
    score: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, float]]
    reference: dict[str, float] = field(default_factory=dict)   # rows beside FP32 (bicubic)
    notes: list[str] = field(default_factory=list)
    #: Extra rows: (label, nodes(model) -> names of the nodes to keep in float), run with
    #: the first onnxquant method (``exclude_nodes``) and the first ONNX Runtime method
    #: (``nodes_to_exclude``), each tool's names read from the graph it quantizes.
    variants: list[tuple[str, Callable[[onnx.ModelProto], list[str]]]] = \
        field(default_factory=list)


@dataclass
class TaskRun:
    """An INT8 model's metrics: ``metrics`` with ONNX Runtime's default session options
    (QDQ fused into this CPU's integer kernels, the headline), ``emulated`` with QDQ
    emulated in float (``session.disable_quant_qdq = 1``, a diagnostic); ``error`` (the
    model was not built), ``fused_error`` and ``emulated_error`` (ONNX Runtime failed to
    run it that way) say why a figure is missing."""

    tool: str
    method: str
    metrics: dict[str, float] | None = None
    emulated: dict[str, float] | None = None
    error: str | None = None
    fused_error: str | None = None
    emulated_error: str | None = None


@dataclass
class TaskResult:
    entry: TaskEntry
    fp32: dict[str, float]
    runs: list[TaskRun]
    seconds: float
    notes: list[str]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def run_outputs(model: onnx.ModelProto, x: np.ndarray, threads: int | None,
                emulate: bool = False) -> dict[str, np.ndarray]:
    """Every output of a one-input model for each ``x[i:i+1]``: name -> outputs stacked
    along axis 0. ``emulate``: as ``onnxquant.evaluate.make_session`` (default False: the
    default session options, QDQ fused into integer kernels)."""
    session = make_session(model, emulate=emulate, threads=threads)
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    outs = [session.run(None, {name: x[i:i + 1]}) for i in range(len(x))]
    return {n: np.concatenate([o[k] for o in outs]) for k, n in enumerate(names)}


def measure_task(entry: TaskEntry, args: argparse.Namespace, workdir: str) -> TaskResult:
    start = time.perf_counter()
    notes = list(entry.notes)
    model = optimize(entry.path)
    normalised = os.path.join(workdir, "normalised.onnx")
    onnx.save(model, normalised)
    input_name = model.graph.input[0].name
    fp32_out = run_outputs(model, entry.evaluation, args.threads)  # float: no QDQ
    runs: list[TaskRun] = []

    def evaluate(run: TaskRun, q: onnx.ModelProto) -> None:
        try:
            run.metrics = entry.score(fp32_out, run_outputs(q, entry.evaluation,
                                                            args.threads))
        except Exception as e:  # noqa: BLE001 - recorded in the report
            run.fused_error = f"running the INT8 model fused: {first_line(e)}"
        try:
            run.emulated = entry.score(fp32_out, run_outputs(q, entry.evaluation,
                                                             args.threads, emulate=True))
        except Exception as e:  # noqa: BLE001 - recorded in the report
            run.emulated_error = f"running the INT8 model emulated: {first_line(e)}"
        runs.append(run)

    t = time.perf_counter()
    methods = [oq.CalibrationMethod[m] for m in args.task_methods]
    try:
        found = our_calibration(model, entry.calibration, oq.QuantOptions(), methods)
    except Exception as e:  # noqa: BLE001 - e.g. the Calibrator refusing the model
        found = {m.name: e for m in methods}
    log(f"  onnxquant calibration ({len(entry.calibration)} samples): "
        f"{time.perf_counter() - t:.1f} s")
    for m in args.task_methods:
        if isinstance(found[m], Exception):
            runs.append(TaskRun("onnxquant", m, error=first_line(found[m])))
            continue
        cal, r = found[m]
        try:
            q = oq.quantize(model, r, calibrator=cal)
        except Exception as e:  # noqa: BLE001 - recorded in the report
            runs.append(TaskRun("onnxquant", m, error=first_line(e)))
            continue
        evaluate(TaskRun("onnxquant", m), q)
    method = args.task_methods[0]
    for label, select in entry.variants:
        excluded = select(model)
        options = oq.QuantOptions(exclude_nodes=tuple(excluded))
        run = TaskRun("onnxquant", f"{method}, {label}")
        try:
            variant = our_calibration(model, entry.calibration, options,
                                      [oq.CalibrationMethod[method]])[method]
            if isinstance(variant, Exception):
                raise variant
            q = oq.quantize(model, variant[1], options=options, calibrator=variant[0])
        except Exception as e:  # noqa: BLE001 - recorded in the report
            run.error = first_line(e)
            runs.append(run)
            continue
        evaluate(run, q)
        notes.append(f"{run.tool} {run.method}: {len(excluded)} of the "
                     f"{len(model.graph.node)} nodes kept in float (`exclude_nodes`).")
    ort_source = ort_preprocess(normalised, workdir, args.ort_preprocess, notes)
    ort_graph = onnx.load(ort_source)
    ort_configs = [(m, None) for m in args.task_ort_methods]
    if args.task_ort_methods:
        ort_configs += [(args.task_ort_methods[0], v) for v in entry.variants]
    for method, variant in ort_configs:
        output = os.path.join(workdir, f"ort_{method}.onnx")
        run = TaskRun("onnxruntime", method if variant is None else f"{method}, {variant[0]}")
        excluded = None if variant is None else variant[1](ort_graph)
        try:
            ort_quantize(ort_source, output, input_name, entry.calibration, method,
                         nodes_to_exclude=excluded)
        except Exception as e:  # noqa: BLE001 - recorded in the report
            run.error = f"quantize_static: {first_line(e)}"
            runs.append(run)
            continue
        evaluate(run, onnx.load(output))
        if excluded is not None:
            notes.append(f"{run.tool} {run.method}: {len(excluded)} of the "
                         f"{len(ort_graph.graph.node)} nodes of its (pre-processed) graph "
                         "kept in float (`nodes_to_exclude`).")
    for run in runs:
        for kind, metrics, error in (("fused", run.metrics, run.fused_error),
                                     ("emulated", run.emulated, run.emulated_error)):
            log(f"  {run.tool} {run.method} {kind}: " + (run.error or error or ", ".join(
                f"{k} {v:.4g}" for k, v in metrics.items())))
    return TaskResult(entry, entry.score(fp32_out, fp32_out), runs,
                      time.perf_counter() - start, notes)
