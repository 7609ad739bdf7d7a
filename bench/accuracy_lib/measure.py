"""Classifier measurements (``measure``) and the statistics read off them."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx

import onnxquant as oq
from onnxquant.evaluate import compare_top1, make_session, predict

from .classifiers import ModelEntry
from .common import DEFAULT_METHOD, ORT_METHODS, LabelledSet, first_line, is_tie, log, optimize
from .ort_quant import (
    GEMM_BIAS_NOTE,
    gemm_bias_workaround,
    ort_preprocess,
    ort_quantize,
    ort_ranges,
)
from .our_quant import our_ranges
from .tensor_errors import ModelErrors, tensor_errors


@dataclass
class Run:
    """One quantized configuration's predictions (or why there are none)."""

    tool: str                      # "onnxquant" or "onnxruntime"
    method: str
    kernels: str = "emulated"      # "emulated" or "integer"
    activations: str = "uint8"
    test_logits: np.ndarray | None = None
    validation_logits: np.ndarray | None = None
    error: str | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return f"{self.tool} {self.method}"


@dataclass
class ModelResult:
    entry: ModelEntry
    fp32_test: np.ndarray
    fp32_validation: np.ndarray | None
    runs: list[Run]
    ranges: dict[str, dict[str, tuple[float, float]]]   # column label -> tensor -> range
    tensors: list[str]                                  # row order of the range table
    seconds: float
    notes: list[str]
    errors: ModelErrors | None = None                   # per-tensor error figures


def _logits(model: onnx.ModelProto, data: LabelledSet | None, emulate: bool,
            threads: int | None) -> np.ndarray | None:
    if data is None:
        return None
    return predict(make_session(model, emulate=emulate, threads=threads), data.x)


def measure(entry: ModelEntry, args: argparse.Namespace, workdir: str) -> ModelResult:
    start = time.perf_counter()
    notes = list(entry.notes)
    threads = args.threads
    model = optimize(entry.path)
    normalised = os.path.join(workdir, "normalised.onnx")
    onnx.save(model, normalised)
    input_name = model.graph.input[0].name
    test, val = entry.test, entry.validation
    fp32_test = _logits(model, test, True, threads)
    fp32_val = _logits(model, val, True, threads)
    runs: list[Run] = []
    range_columns: dict[str, dict[str, tuple[float, float]]] = {}
    tensors: list[str] = []
    errors: ModelErrors | None = None

    def evaluate(run: Run, q: onnx.ModelProto) -> Run:
        emulate = run.kernels == "emulated"
        try:
            run.test_logits = _logits(q, test, emulate, threads)
            run.validation_logits = _logits(q, val, emulate, threads)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime refusing the INT8 model
            run.test_logits = run.validation_logits = None
            run.error = first_line(e)
        return run

    # onnxquant: one collection per set of Calibrator keywords serves every method.
    ranges: dict[str, dict[str, tuple[float, float]] | Exception] = {}
    configs = [c for c in args.configs if entry.methods is None or c.label in entry.methods]
    ort_methods = [m for m in ORT_METHODS
                   if entry.ort_methods is None or m in entry.ort_methods]
    for kwargs in dict.fromkeys(c.calibrator_kwargs for c in configs):
        t = time.perf_counter()
        group = [c for c in configs if c.calibrator_kwargs == kwargs]
        try:
            found = our_ranges(model, entry.calibration, oq.QuantOptions(),
                               [oq.CalibrationMethod[c.method] for c in group], **dict(kwargs))
        except Exception as e:  # noqa: BLE001 - e.g. the Calibrator refusing the model
            log(f"  onnxquant calibration failed: {first_line(e)}")
            found = {c.method: e for c in group}
        ranges.update({c.label: found[c.method] for c in group})
        log(f"  onnxquant calibration ({len(entry.calibration)} samples"
            f"{', ' + ', '.join(f'{k}={v}' for k, v in kwargs) if kwargs else ''}): "
            f"{time.perf_counter() - t:.1f} s")
    for c in configs:
        r = ranges[c.label]
        if isinstance(r, Exception):
            runs.append(Run("onnxquant", c.label, error=f"{type(r).__name__}: {r}"))
            continue
        range_columns[c.label] = r
        if not tensors:
            tensors = list(r)
        t = time.perf_counter()
        kernels = ["emulated"] + (["integer"] if c.label in args.fused and
                                  entry.kernel_checks else [])
        try:
            q = oq.quantize(model, r)
        except Exception as e:  # noqa: BLE001 - recorded in the report, the run goes on
            runs += [Run("onnxquant", c.label, kernels=k, error=first_line(e)) for k in kernels]
            log(f"  onnxquant {c.label}: quantize failed: {first_line(e)}")
            continue
        for k in kernels:
            runs.append(evaluate(Run("onnxquant", c.label, kernels=k), q))
        if c.label == DEFAULT_METHOD and args.tensor_errors:
            try:
                errors = tensor_errors(model, q, r, test.x, c.label, threads)
            except Exception as e:  # noqa: BLE001 - a diagnostic; the table goes on
                notes.append(f"Per-tensor error figures failed: {first_line(e)}")
        log(f"  onnxquant {c.label}: {time.perf_counter() - t:.1f} s")
    for name in [m for m in args.int8 if entry.kernel_checks and
                 (entry.methods is None or m in entry.methods)]:
        # int8 activations: their own plan, so their own collection
        m = oq.CalibrationMethod[name]
        options = oq.QuantOptions(activation_type="int8")
        try:
            r = our_ranges(model, entry.calibration, options, [m])[name]
        except Exception as e:  # noqa: BLE001 - recorded in the report
            r = e
        for k in ("emulated", "integer"):
            run = Run("onnxquant", name, kernels=k, activations="int8")
            if isinstance(r, Exception):
                run.error = f"{type(r).__name__}: {r}"
                runs.append(run)
                continue
            try:
                q = oq.quantize(model, r, options=options)
            except Exception as e:  # noqa: BLE001 - recorded in the report
                run.error = first_line(e)
                runs.append(run)
                continue
            runs.append(evaluate(run, q))

    # ONNX Runtime: pre-processing, then one quantize_static per method.
    ort_source = ort_preprocess(normalised, workdir, args.ort_preprocess, notes)
    workaround = None
    for method in ort_methods:
        t = time.perf_counter()
        output = os.path.join(workdir, f"ort_{method}.onnx")
        note = None
        try:
            ort_quantize(workaround or ort_source, output, input_name, entry.calibration,
                         method)
        except ValueError as e:
            retry = None if workaround else gemm_bias_workaround(ort_source, e, workdir)
            if retry is None:
                runs.append(Run("onnxruntime", method, error=f"{type(e).__name__}: {e}"))
                continue
            workaround = retry
            notes.append(GEMM_BIAS_NOTE)
            try:
                ort_quantize(workaround, output, input_name, entry.calibration, method)
            except Exception as e2:  # noqa: BLE001 - recorded in the report
                runs.append(Run("onnxruntime", method, error=first_line(e2)))
                continue
        except Exception as e:  # noqa: BLE001 - recorded in the report, the run goes on
            runs.append(Run("onnxruntime", method, error=first_line(e)))
            log(f"  onnxruntime {method}: quantize_static failed: {first_line(e)}")
            continue
        if workaround is not None:
            note = "Gemm bias reshaped to 1-D (onnxruntime#24815)"
        q = onnx.load(output)
        range_columns[f"ORT {method}"] = ort_ranges(q)
        kernels = ["emulated"] + (["integer"] if method in args.ort_fused and
                                  entry.kernel_checks else [])
        for k in kernels:
            runs.append(evaluate(Run("onnxruntime", method, kernels=k, note=note), q))
        log(f"  onnxruntime {method}: {time.perf_counter() - t:.1f} s")
    for column in range_columns.values():
        tensors += [t for t in column if t not in tensors]
    return ModelResult(entry, fp32_test, fp32_val, runs, range_columns, tensors,
                       time.perf_counter() - start, notes, errors)


@dataclass
class Best:
    run: Run
    validation_top1: float
    tied: list[str]          # other methods within two paired SE of it on validation


def choose_best(result: ModelResult, tool: str) -> Best | None:
    """The tool's emulated uint8 method with the highest validation top-1 (the first in table
    order on an exact tie); None without a validation set."""
    val = result.entry.validation
    if val is None:
        return None
    runs = [r for r in result.runs if r.tool == tool and r.kernels == "emulated"
            and r.activations == "uint8" and r.error is None]
    if not runs:
        return None
    scores = [compare_top1(result.fp32_validation, r.validation_logits, val.y).candidate
              for r in runs]
    best = runs[int(np.argmax(scores))]
    tied = []
    for r in runs:
        if r is best:
            continue
        a = compare_top1(best.validation_logits, r.validation_logits, val.y)
        if is_tie(-a.drop, a.paired_se):
            tied.append(r.method)
    return Best(best, max(scores), tied)


def argmax_ties(logits: np.ndarray) -> float:
    """Percent of rows whose largest output is shared by two or more classes (argmax then
    takes the first; a quantized output can tie where the float one does not)."""
    flat = logits.reshape(len(logits), -1)
    return float(((flat == flat.max(axis=1, keepdims=True)).sum(axis=1) > 1).mean() * 100)


def same_ranges(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]) -> bool:
    return a.keys() == b.keys() and all(
        np.allclose(a[t], b[t], rtol=1e-6, atol=1e-12) for t in a)


def auto_notes(result: ModelResult) -> list[str]:
    """Facts read off the measurements that explain a figure."""
    notes = []
    columns = list(result.ranges)
    for i, a in enumerate(columns):
        for b in columns[i + 1:]:
            if a.startswith("ORT ") == b.startswith("ORT ") and \
                    same_ranges(result.ranges[a], result.ranges[b]):
                notes.append(f"{b} chose the same range as {a} on every tensor.")
    ref = argmax_ties(result.fp32_test)
    tied = []
    for run in result.runs:
        if run.error is None:
            ties = argmax_ties(run.test_logits)
            if ties > ref:
                extra = [k for k in (run.kernels if run.kernels != "emulated" else "",
                                     run.activations if run.activations != "uint8" else "") if k]
                label = run.label + (f" ({', '.join(extra)})" if extra else "")
                tied.append(f"{label} {ties:.2f}")
    if tied:
        notes.append("The largest output is shared by two or more classes (argmax then takes "
                     "the first) on this share of test images, in %: FP32 "
                     f"{ref:.2f}; " + "; ".join(tied) + ".")
    return notes
