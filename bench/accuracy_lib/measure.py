"""Classifier measurements (``measure``) and the statistics read off them."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

import onnxquant as oq
from onnxquant.evaluate import DeployedAccuracy, compare_top1, deployed_top1, \
    kernels_description, make_session, predict
from onnxquant.qemu import qemu_available
from onnxquant.report import KernelRemedy

from .avx2 import Avx2Job, run_avx2
from .classifiers import ModelEntry, avx2_subset
from .common import (
    DEFAULT_METHOD,
    ORT_DEFAULT_METHOD,
    ORT_METHODS,
    available_cpus,
    first_line,
    is_tie,
    log,
    optimize,
)
from .ort_quant import (
    GEMM_BIAS_NOTE,
    OrtConfig,
    gemm_bias_workaround,
    ort_configs,
    ort_preprocess,
    ort_quantize,
    ort_ranges,
)
from .our_quant import our_calibration


#: Test images the per-tensor error figures are taken on (the first ones).
ERROR_IMAGES = 256


@dataclass
class ModelErrors:
    """Per-tensor error figures of the default method's INT8 model
    (``onnxquant.analyze``), and the accumulated SQNR of the model's output."""

    method: str
    images: int
    analysis: oq.LayerAnalysis      # every quantized tensor, in graph order
    output: str
    output_db: float


def tensor_errors(model: onnx.ModelProto, quantized: onnx.ModelProto,
                  calibrator: oq.Calibrator, x: np.ndarray, method: str) -> ModelErrors:
    """``onnxquant.analyze`` of ``quantized`` on the first ERROR_IMAGES rows of ``x``,
    with ``calibrator``'s histograms (no method ranges, no warnings)."""
    from onnxquant.analysis import tensor_sqnr

    samples = [x[i:i + 1] for i in range(min(len(x), ERROR_IMAGES))]
    analysis = oq.analyze(model, quantized, samples, calibrator=calibrator, methods=(),
                          warn=False)
    output = model.graph.output[0].name
    if output in {r.tensor for r in analysis}:
        output_db = analysis.record(output).accumulated_db
    else:  # a float output (Softmax): its SQNR all the same
        output_db = tensor_sqnr(model, quantized, samples, tensors=[output])[output]
    return ModelErrors(method, len(samples), analysis, output, output_db)


@dataclass
class Run:
    """One quantized configuration's outputs on the test (and validation) images, or why
    there are none. ``fused``: ONNX Runtime's default session options (QDQ fused into this
    CPU's integer kernels); ``emulated``: ``session.disable_quant_qdq = 1``."""

    tool: str                      # "onnxquant" or "onnxruntime"
    method: str                    # the column label
    activations: str = "uint8"
    target: str = "portable"       # onnxquant's quantize(target=...)
    reduce_range: bool = False     # ONNX Runtime's quantize_static(reduce_range=...)
    candidate: bool = False        # competes for the tool's best method
    test_fused: np.ndarray | None = None
    test_emulated: np.ndarray | None = None
    validation_fused: np.ndarray | None = None
    model: bytes | None = None     # the INT8 model, kept until the QEMU runs
    checked: int | None = None     # report.kernels.checked (onnxquant)
    remedies: tuple[KernelRemedy, ...] | None = None   # report.kernels.remedies
    error: str | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return f"{self.tool} {self.method}"


@dataclass
class Choice:
    """A tool's method for the summary: the best on validation (fused), or, without a
    validation set, the tool's default (``validation_top1`` None)."""

    run: Run
    validation_top1: float | None
    tied: list[str]          # other candidates within two paired SE of it on validation


@dataclass
class Avx2Run:
    """A chosen run's fused outputs on ONNX Runtime's AVX2 kernels under QEMU."""

    role: str                # "onnxquant", "onnxruntime", "onnxruntime, reduce_range"
    run: Run
    job: Avx2Job


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
    ours: Choice | None = None
    theirs: Choice | None = None
    theirs_reduce_range: Choice | None = None   # ORT's best with reduce_range=True
    exact: Run | None = None          # ours' chosen method with target="exact", fused
    avx2: list[Avx2Run] = field(default_factory=list)
    avx2_index: np.ndarray | None = None
    avx2_description: str = ""
    avx2_seconds: float = 0.0         # wall time of this entry's QEMU runs
    avx2_skipped: str | None = None   # why the AVX2 part did not run

    def deployed(self, run: Run) -> DeployedAccuracy:
        """``run`` as deployed on this CPU's kernels, beside its emulation (test set)."""
        return deployed_top1(self.fp32_test, run.test_emulated, run.test_fused,
                             self.entry.test.y, kernels_description("native"))

    def deployed_avx2(self, a: Avx2Run) -> DeployedAccuracy:
        """``a`` on the AVX2 kernels beside its emulation, on the AVX2 images."""
        i = self.avx2_index
        return deployed_top1(self.fp32_test[i], a.run.test_emulated[i], a.job.outputs,
                             self.entry.test.y[i], kernels_description("avx2"))


def measure(entry: ModelEntry, args: argparse.Namespace, workdir: str) -> ModelResult:
    start = time.perf_counter()
    notes = list(entry.notes)
    threads = args.threads
    model = optimize(entry.path)
    normalised = os.path.join(workdir, "normalised.onnx")
    onnx.save(model, normalised)
    input_name = model.graph.input[0].name
    test, val = entry.test, entry.validation
    fp32 = make_session(model, emulate=False, threads=threads)
    fp32_test = predict(fp32, test.x)
    fp32_val = predict(fp32, val.x) if val is not None else None
    runs: list[Run] = []
    range_columns: dict[str, dict[str, tuple[float, float]]] = {}
    tensors: list[str] = []
    errors: ModelErrors | None = None

    def evaluate(run: Run, q: bytes) -> Run:
        """Fused on the test set (and, for a candidate, the validation set), emulated on
        the test set."""
        try:
            fused = make_session(q, emulate=False, threads=threads)
            run.test_fused = predict(fused, test.x)
            if run.candidate and val is not None:
                run.validation_fused = predict(fused, val.x)
            run.test_emulated = predict(make_session(q, emulate=True, threads=threads),
                                        test.x)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime refusing the INT8 model
            run.test_fused = run.test_emulated = run.validation_fused = None
            run.error = first_line(e)
        run.model = q
        return run

    # onnxquant: one collection per set of Calibrator keywords serves every method; the
    # default quantize (target="portable") replays that Calibrator's first samples.
    calibrations: dict[str, tuple[oq.Calibrator, dict] | Exception] = {}
    configs = [c for c in args.configs if entry.methods is None or c.label in entry.methods]
    ort_methods = [m for m in ORT_METHODS
                   if entry.ort_methods is None or m in entry.ort_methods]
    for kwargs in dict.fromkeys(c.calibrator_kwargs for c in configs):
        t = time.perf_counter()
        group = [c for c in configs if c.calibrator_kwargs == kwargs]
        try:
            found = our_calibration(model, entry.calibration, oq.QuantOptions(),
                                    [oq.CalibrationMethod[c.method] for c in group],
                                    **dict(kwargs))
        except Exception as e:  # noqa: BLE001 - e.g. the Calibrator refusing the model
            log(f"  onnxquant calibration failed: {first_line(e)}")
            found = {c.method: e for c in group}
        calibrations.update({c.label: found[c.method] for c in group})
        log(f"  onnxquant calibration ({len(entry.calibration)} samples"
            f"{', ' + ', '.join(f'{k}={v}' for k, v in kwargs) if kwargs else ''}): "
            f"{time.perf_counter() - t:.1f} s")
    for c in configs:
        found = calibrations[c.label]
        run = Run("onnxquant", c.label, candidate=not c.calibrator_kwargs)
        if isinstance(found, Exception):
            run.error = f"{type(found).__name__}: {found}"
            runs.append(run)
            continue
        cal, r = found
        range_columns[c.label] = r
        if not tensors:
            tensors = list(r)
        t = time.perf_counter()
        try:
            q, report = oq.quantize(model, r, calibrator=cal, return_report=True)
        except Exception as e:  # noqa: BLE001 - recorded in the report, the run goes on
            run.error = first_line(e)
            runs.append(run)
            log(f"  onnxquant {c.label}: quantize failed: {first_line(e)}")
            continue
        run.checked, run.remedies = report.kernels.checked, report.kernels.remedies
        runs.append(evaluate(run, q.SerializeToString()))
        if c.label == DEFAULT_METHOD and args.tensor_errors:
            try:
                errors = tensor_errors(model, q, cal, test.x, c.label)
            except Exception as e:  # noqa: BLE001 - a diagnostic; the table goes on
                notes.append(f"Per-tensor error figures failed: {first_line(e)}")
        log(f"  onnxquant {c.label}: {time.perf_counter() - t:.1f} s")
    for name in [m for m in args.int8 if entry.methods is None or m in entry.methods]:
        # int8 activations: their own plan, so their own collection
        options = oq.QuantOptions(activation_type="int8")
        run = Run("onnxquant", name, activations="int8")
        try:
            found = our_calibration(model, entry.calibration, options,
                                    [oq.CalibrationMethod[name]])[name]
            if isinstance(found, Exception):
                raise found
            q = oq.quantize(model, found[1], options=options, calibrator=found[0])
        except Exception as e:  # noqa: BLE001 - recorded in the report
            run.error = first_line(e)
            runs.append(run)
            continue
        runs.append(evaluate(run, q.SerializeToString()))

    # ONNX Runtime: pre-processing, then quantize_static per method and reduce_range (one
    # calibration per method: the second call reads the first one's calibration cache).
    ort_source = ort_preprocess(normalised, workdir, args.ort_preprocess, notes)
    workaround = None
    for config in ort_configs(ort_methods):
        t = time.perf_counter()
        output = os.path.join(workdir, f"ort_{config.method}_{int(config.reduce_range)}.onnx")
        cache = os.path.join(workdir, f"ort_{config.method}_calibration.json")
        run = Run("onnxruntime", config.label, reduce_range=config.reduce_range,
                  candidate=True)

        def quantize_static(source: str, config: OrtConfig = config, output: str = output,
                            cache: str = cache) -> None:
            ort_quantize(source, output, input_name, entry.calibration, config.method,
                         reduce_range=config.reduce_range, calibration_cache=cache)
        try:
            quantize_static(workaround or ort_source)
        except ValueError as e:
            retry = None if workaround else gemm_bias_workaround(ort_source, e, workdir)
            if retry is None:
                run.error = f"{type(e).__name__}: {e}"
                runs.append(run)
                continue
            workaround = retry
            notes.append(GEMM_BIAS_NOTE)
            try:
                quantize_static(workaround)
            except Exception as e2:  # noqa: BLE001 - recorded in the report
                run.error = first_line(e2)
                runs.append(run)
                continue
        except Exception as e:  # noqa: BLE001 - recorded in the report, the run goes on
            run.error = first_line(e)
            runs.append(run)
            log(f"  onnxruntime {config.label}: quantize_static failed: {first_line(e)}")
            continue
        if workaround is not None:
            run.note = "Gemm bias reshaped to 1-D (onnxruntime#24815)"
        q = onnx.load(output)
        if not config.reduce_range:
            range_columns[f"ORT {config.method}"] = ort_ranges(q)
        runs.append(evaluate(run, q.SerializeToString()))
        log(f"  onnxruntime {config.label}: {time.perf_counter() - t:.1f} s")
    for column in range_columns.values():
        tensors += [t for t in column if t not in tensors]

    result = ModelResult(entry, fp32_test, fp32_val, runs, range_columns, tensors, 0.0,
                         notes, errors)
    result.ours = choose(result, "onnxquant", DEFAULT_METHOD)
    result.theirs = choose(result, "onnxruntime", ORT_DEFAULT_METHOD)
    if result.ours is not None and args.exact:
        result.exact = _exact(model, calibrations[result.ours.run.method], result.ours.run,
                              test.x, threads)
    _measure_avx2(result, args)
    for run in runs:
        run.model = None
    result.seconds = time.perf_counter() - start
    return result


def _exact(model: onnx.ModelProto, found, portable: Run, x: np.ndarray,
           threads: int | None) -> Run:
    """The chosen method's ranges quantized with target="exact", fused on the test set."""
    run = Run("onnxquant", portable.method, target="exact")
    try:
        q = oq.quantize(model, found[1], target="exact")
        run.test_fused = predict(make_session(q, emulate=False, threads=threads), x)
    except Exception as e:  # noqa: BLE001 - recorded in the report
        run.error = first_line(e)
    return run


def _measure_avx2(result: ModelResult, args: argparse.Namespace) -> None:
    """The chosen runs (ours, ONNX Runtime's best and, unless
    ``--no-avx2-ort-reduce-range``, ONNX Runtime's best with reduce_range=True where that
    is another run) fused under QEMU on the AVX2 images."""
    if not args.avx2_images:
        result.avx2_skipped = "not run (--avx2-images 0)"
        return
    if not qemu_available():
        result.avx2_skipped = ("not run: qemu-x86_64 is not installed (apt-get install "
                               "qemu-user) or this is not an x86-64 Linux host")
        return
    roles = [("onnxquant", result.ours), ("onnxruntime", result.theirs)]
    if args.avx2_ort_reduce_range:
        reduced = choose(result, "onnxruntime", ORT_DEFAULT_METHOD, reduce_range=True)
        result.theirs_reduce_range = reduced
        if reduced is not None and (result.theirs is None or
                                    reduced.run is not result.theirs.run):
            roles.append(("onnxruntime, reduce_range", reduced))
    index, description = avx2_subset(result.entry, args.avx2_images)
    result.avx2_index, result.avx2_description = index, description
    x = result.entry.test.x[index]
    chosen = [(role, c.run) for role, c in roles if c is not None]
    result.avx2 = [Avx2Run(role, run, Avx2Job(run.model, x)) for role, run in chosen]
    workers = args.avx2_workers
    threads = args.avx2_threads or max(1, available_cpus() // max(1, workers))
    log(f"  AVX2 under QEMU: {len(result.avx2)} models on {len(index)} images, "
        f"{workers} at a time, {threads} thread(s) each")
    result.avx2_seconds = run_avx2([a.job for a in result.avx2], workers, threads,
                                   args.avx2_timeout)
    for a in result.avx2:
        status = a.job.error or f"{a.job.seconds:.1f} s"
        log(f"  AVX2 {a.role} {a.run.method}: {status}")


def choose(result: ModelResult, tool: str, default: str,
           reduce_range: bool | None = None) -> Choice | None:
    """The tool's candidate run with the highest fused validation top-1 (the first in
    table order on an exact tie), or, without a validation set, its ``default`` method.
    ``reduce_range``: only ONNX Runtime runs with that reduce_range (None: any)."""
    runs = [r for r in result.runs if r.tool == tool and r.candidate and r.error is None
            and (reduce_range is None or r.reduce_range == reduce_range)]
    if not runs:
        return None
    val = result.entry.validation
    if val is None:
        wanted = default + (" (reduce_range=True)" if reduce_range else "")
        run = next((r for r in runs if r.method == wanted), None)
        return Choice(run, None, []) if run is not None else None
    scores = [compare_top1(result.fp32_validation, r.validation_fused, val.y).candidate
              for r in runs]
    best = runs[int(np.argmax(scores))]
    tied = []
    for r in runs:
        if r is best:
            continue
        a = compare_top1(best.validation_fused, r.validation_fused, val.y)
        if is_tie(-a.drop, a.paired_se):
            tied.append(r.method)
    return Choice(best, max(scores), tied)


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
            ties = argmax_ties(run.test_fused)
            if ties > ref:
                extra = f" ({run.activations})" if run.activations != "uint8" else ""
                tied.append(f"{run.label}{extra} {ties:.2f}")
    if tied:
        notes.append("The largest output of the fused INT8 model is shared by two or more "
                     "classes (argmax then takes the first) on this share of test images, "
                     f"in %: FP32 {ref:.2f}; " + "; ".join(tied) + ".")
    return notes
