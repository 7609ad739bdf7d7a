"""INT8 top-1 of every calibration method beside FP32 and ONNX Runtime's quantize_static.

For each model entry (a row of the summary tables) the script

1. normalises the model once with ``onnxquant.optimize_model``; that graph is the FP32
   reference and the input of *both* quantizers (saved to a temporary file for ONNX Runtime);
2. onnxquant: one ``Calibrator`` collection on the calibration samples serves all ten
   ``CalibrationMethod`` values (``compute_range(method)``); each range set goes through
   ``quantize`` with the default options (uint8 activations, per-channel int8 weights);
3. ONNX Runtime: ``quant_pre_process`` (its recommended pre-processing, defaults) and then
   ``quantize_static`` with QDQ, per-channel, QUInt8 activations, QInt8 weights and MinMax,
   Entropy or Percentile, each with ONNX Runtime's default extra options, on the same samples;
4. runs every model on the test (and, where the entry has one, validation) set with
   ``onnxquant.evaluate``: INT8 with QDQ emulated in float (``session.disable_quant_qdq = 1``,
   the headline) and, for a few configurations, with ONNX Runtime's fused integer kernels;
5. reports top-1 and the paired difference to FP32 with its paired standard error, and, where
   a validation set exists, each tool's best method chosen on it and compared on the test set
   (differences under two paired standard errors are ties).

    PYTHONPATH=python .venv/bin/python bench/accuracy.py [--quick] [--output docs/accuracy.md]

Model entries live in ``MODELS`` (key -> builder); add a builder to add a row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import inspect
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import onnxquant as oq
from onnxquant.data import read_image_set
from onnxquant.evaluate import compare_top1, make_session, predict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_ZOO = os.environ.get("ONNXQUANT_ZOO", os.path.join(REPO, "..", "shared", "zoo"))

#: The onnxquant method whose integer-kernel figure is reported by default (the library's
#: default method).
DEFAULT_METHOD = "MIN_MAX_ASYM"
#: ONNX Runtime's calibration methods compared, in table order.
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
#: ONNX Runtime's defaults for the extra options of each method (onnxruntime 1.31
#: ``calibrate.create_calibrator``), written down for the report; the script passes none.
ORT_DEFAULTS = {
    "MinMax": "symmetric=False, moving_average=False",
    "Entropy": "num_bins=128, num_quantized_bins=128, symmetric=False",
    "Percentile": "num_bins=2048, percentile=99.999, symmetric=True",
}
QUICK_TEST = 2000
QUICK_VALIDATION = 1000


# --------------------------------------------------------------------------- model entries

@dataclass
class LabelledSet:
    """Inputs (axis 0 indexes images, in the model's layout and dtype) and integer labels."""

    x: np.ndarray
    y: np.ndarray
    description: str

    def subset(self, n: int) -> LabelledSet:
        """``n`` images drawn with ``numpy.random.default_rng(0)``, in order (not the first
        ``n``: a set may be sorted by class, as cifar10_test.npz is)."""
        if n >= len(self.y):
            return self
        pick = draw(len(self.y), n, seed=0)
        return LabelledSet(self.x[pick], self.y[pick],
                           f"{self.description}; {n} of them drawn with "
                           "numpy.random.default_rng(0) (--quick)")


@dataclass
class ModelEntry:
    """One row: a model, its calibration samples, an optional validation set and a test set.

    ``calibration`` holds the samples along axis 0; each is fed as ``calibration[i:i+1]``
    (one ``[1, ...]`` sample) to both tools. The validation set, where present, chooses each
    tool's best method; the test set is what every figure is measured on.
    """

    name: str
    path: str
    calibration: np.ndarray
    calibration_description: str
    test: LabelledSet
    validation: LabelledSet | None = None
    notes: list[str] = field(default_factory=list)


def nchw_set(path: str, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``index`` (default all) of a zoo image set (HWC uint8 arrays or JPEG bytes,
    read by ``onnxquant.data.read_image_set``) as NCHW float32 0..255, with int64 labels."""
    images, labels = read_image_set(path, index)
    if images.ndim == 3:  # greyscale [N, H, W]
        images = images[..., None]
    return images.transpose(0, 3, 1, 2).astype(np.float32), labels.astype(np.int64)


def draw(total: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct indices of ``range(total)`` drawn with
    ``numpy.random.default_rng(seed)``, in file order (as ``python -m onnxquant.data
    --count`` draws them, so both give the same samples)."""
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def resnet8_cifar10(zoo: str) -> ModelEntry:
    folder = os.path.join(zoo, "cifar10")
    train = os.path.join(folder, "cifar10_train_jpeg.npz")
    with np.load(train) as data:
        total = len(data["offsets"]) - 1
    calibration, _ = nchw_set(train, draw(total, 500, seed=0))
    x, y = nchw_set(os.path.join(folder, "cifar10_test.npz"))
    return ModelEntry(
        name="ResNet8 (CIFAR-10)",
        path=os.path.join(folder, "resnet8_cifar10.onnx"),
        calibration=calibration,
        calibration_description="500 images of cifar10_train_jpeg.npz drawn with "
                                "numpy.random.default_rng(0) (file order), decoded with Pillow",
        test=LabelledSet(x, y, f"all {len(y)} images of cifar10_test.npz"),
    )


def mnist_cnn(zoo: str) -> ModelEntry:
    folder = os.path.join(zoo, "mnist")
    x, y = nchw_set(os.path.join(folder, "mnist_test.npz"))
    return ModelEntry(
        name="MNIST CNN",
        path=os.path.join(folder, "mnist_cnn.onnx"),
        calibration=x[:500],
        calibration_description="mnist_test.npz images 0-499",
        test=LabelledSet(x[500:], y[500:], "mnist_test.npz images 500-9999"),
    )


#: key -> builder(zoo path) -> ModelEntry. Table rows follow this order.
MODELS: dict[str, Callable[[str], ModelEntry]] = {
    "resnet8": resnet8_cifar10,
    "mnist": mnist_cnn,
}


# --------------------------------------------------------------------------- measurements

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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _logits(model: onnx.ModelProto, data: LabelledSet | None, emulate: bool,
            threads: int | None) -> np.ndarray | None:
    if data is None:
        return None
    return predict(make_session(model, emulate=emulate, threads=threads), data.x)


def _samples(calibration: np.ndarray):
    return (calibration[i:i + 1] for i in range(len(calibration)))


def has_method_api() -> bool:
    """True once ``Calibrator.compute_range`` takes the method (one collection, ten methods)."""
    return "method" in inspect.signature(oq.Calibrator.compute_range).parameters


@dataclass(frozen=True)
class OurConfig:
    """An onnxquant column: a method, and Calibrator keywords that differ from the defaults."""

    method: str
    calibrator_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.calibrator_kwargs)
        return f"{self.method} ({extra})" if extra else self.method


def calibrator_default(name: str) -> object:
    p = inspect.signature(oq.Calibrator.__init__).parameters.get(name)
    return inspect.Parameter.empty if p is None else p.default


def our_configs(variants: bool) -> list[OurConfig]:
    """The ten methods with the Calibrator's defaults, then (``variants``) ENTROPY with the
    other ``ignore_zero_spike`` (ReLU outputs are mostly exact zeros; that spike decides the
    KL search), where this onnxquant has the option."""
    configs = [OurConfig(m.name) for m in oq.CalibrationMethod]
    default = calibrator_default("ignore_zero_spike")
    if variants and isinstance(default, bool):
        configs += [OurConfig(m, (("ignore_zero_spike", not default),))
                    for m in ("ENTROPY_ASYM", "ENTROPY_SYM")]
    return configs


def our_ranges(model: onnx.ModelProto, calibration: np.ndarray, options: oq.QuantOptions,
               methods: list[oq.CalibrationMethod], **kwargs
               ) -> dict[str, dict[str, tuple[float, float]] | Exception]:
    """Method name -> ranges (or the exception that method raised); ``kwargs`` go to the
    Calibrator."""
    out: dict[str, dict[str, tuple[float, float]] | Exception] = {}
    if has_method_api():
        cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, options=options,
                            **kwargs)
        cal.collect_data(_samples(calibration))
        for m in methods:
            try:
                out[m.name] = cal.compute_range(m)
            except (NotImplementedError, oq.OnnxQuantError) as e:
                out[m.name] = e
        return out
    for m in methods:  # before the histogram Calibrator: one collection per method
        try:
            cal = oq.Calibrator(model, m, options=options, **kwargs)
        except NotImplementedError as e:
            out[m.name] = e
            continue
        cal.collect_data(_samples(calibration))
        out[m.name] = cal.compute_range()
    return out


def default_percentage() -> object:
    """The percentile PERCENTILE methods use by default (a Calibrator or compute_range
    parameter named ``percentage``)."""
    for function in (oq.Calibrator.compute_range, oq.Calibrator.__init__):
        p = inspect.signature(function).parameters.get("percentage")
        if p is not None and p.default not in (inspect.Parameter.empty, None):
            return p.default
    return "unknown"


class _Reader:
    """ONNX Runtime CalibrationDataReader over the same ``[1, ...]`` samples."""

    def __init__(self, input_name: str, calibration: np.ndarray) -> None:
        self._items = ({input_name: s} for s in _samples(calibration))

    def get_next(self):
        return next(self._items, None)


def flatten_gemm_bias(model: onnx.ModelProto) -> int:
    """Reshapes Gemm biases of shape [1, N] to [N] (same arithmetic). onnxruntime's
    quantize_static (1.31) fails on a 2-D Gemm bias while adjusting weight scales for the
    int32 bias (microsoft/onnxruntime#24815). Returns the number of biases changed."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        tensor = inits[node.input[2]]
        if len(tensor.dims) == 2 and tensor.dims[0] == 1 and uses[tensor.name] == 1:
            array = numpy_helper.to_array(tensor).reshape(-1)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            changed += 1
    return changed


def ort_quantize(source: str, output: str, input_name: str, calibration: np.ndarray,
                 method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # quantize_static prints progress on stdout; keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(source, output, _Reader(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))


def ort_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """The activation ranges an ONNX Runtime QDQ model encodes: for each QuantizeLinear of
    a non-constant tensor, [(0 - zp) * s, (qmax - zp) * s]."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = float(inits[node.input[1]].reshape(-1)[0])
        zp_array = inits[node.input[2]]
        zp = int(zp_array.reshape(-1)[0])
        qmin, qmax = (0, 255) if zp_array.dtype == np.uint8 else (-128, 127)
        name = node.input[0]
        # A graph output keeps its name on the DequantizeLinear; the Q reads "<name>" + suffix.
        name = name.removesuffix("_QuantizeLinear_Input")
        out[name] = ((qmin - zp) * scale, (qmax - zp) * scale)
    return out


def measure(entry: ModelEntry, args: argparse.Namespace, workdir: str) -> ModelResult:
    start = time.perf_counter()
    notes = list(entry.notes)
    threads = args.threads
    model = oq.optimize_model(entry.path)
    normalised = os.path.join(workdir, "normalised.onnx")
    onnx.save(model, normalised)
    input_name = model.graph.input[0].name
    test, val = entry.test, entry.validation
    fp32_test = _logits(model, test, True, threads)
    fp32_val = _logits(model, val, True, threads)
    runs: list[Run] = []
    range_columns: dict[str, dict[str, tuple[float, float]]] = {}
    tensors: list[str] = []

    def evaluate(run: Run, q: onnx.ModelProto) -> Run:
        emulate = run.kernels == "emulated"
        run.test_logits = _logits(q, test, emulate, threads)
        run.validation_logits = _logits(q, val, emulate, threads)
        return run

    # onnxquant: one collection per set of Calibrator keywords serves every method.
    ranges: dict[str, dict[str, tuple[float, float]] | Exception] = {}
    for kwargs in dict.fromkeys(c.calibrator_kwargs for c in args.configs):
        t = time.perf_counter()
        group = [c for c in args.configs if c.calibrator_kwargs == kwargs]
        found = our_ranges(model, entry.calibration, oq.QuantOptions(),
                           [oq.CalibrationMethod[c.method] for c in group], **dict(kwargs))
        ranges.update({c.label: found[c.method] for c in group})
        log(f"  onnxquant calibration ({len(entry.calibration)} samples"
            f"{', ' + ', '.join(f'{k}={v}' for k, v in kwargs) if kwargs else ''}): "
            f"{time.perf_counter() - t:.1f} s")
    for c in args.configs:
        r = ranges[c.label]
        if isinstance(r, Exception):
            runs.append(Run("onnxquant", c.label, error=f"{type(r).__name__}: {r}"))
            continue
        range_columns[c.label] = r
        if not tensors:
            tensors = list(r)
        t = time.perf_counter()
        q = oq.quantize(model, r)
        kernels = ["emulated"] + (["integer"] if c.label in args.fused else [])
        for k in kernels:
            runs.append(evaluate(Run("onnxquant", c.label, kernels=k), q))
        log(f"  onnxquant {c.label}: {time.perf_counter() - t:.1f} s")
    for name in args.int8:  # int8 activations: their own plan, so their own collection
        m = oq.CalibrationMethod[name]
        options = oq.QuantOptions(activation_type="int8")
        r = our_ranges(model, entry.calibration, options, [m])[name]
        for k in ("emulated", "integer"):
            run = Run("onnxquant", name, kernels=k, activations="int8")
            if isinstance(r, Exception):
                run.error = f"{type(r).__name__}: {r}"
                runs.append(run)
            else:
                runs.append(evaluate(run, oq.quantize(model, r, options=options)))

    # ONNX Runtime: pre-processing, then one quantize_static per method.
    ort_source = normalised
    if args.ort_preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        ort_source = os.path.join(workdir, "ort_preprocessed.onnx")
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(normalised, ort_source)
    workaround = None
    for method in ORT_METHODS:
        t = time.perf_counter()
        output = os.path.join(workdir, f"ort_{method}.onnx")
        note = None
        try:
            ort_quantize(workaround or ort_source, output, input_name, entry.calibration,
                         method)
        except ValueError as e:
            if workaround is not None or "truth value of an array" not in str(e):
                runs.append(Run("onnxruntime", method, error=f"{type(e).__name__}: {e}"))
                continue
            fixed = onnx.load(ort_source)
            if not flatten_gemm_bias(fixed):
                runs.append(Run("onnxruntime", method, error=f"{type(e).__name__}: {e}"))
                continue
            workaround = os.path.join(workdir, "ort_gemm_bias_1d.onnx")
            onnx.save(fixed, workaround)
            notes.append(
                "onnxruntime's quantize_static fails on this model (`ValueError: The truth "
                "value of an array with more than one element is ambiguous`, in "
                "`_adjust_weight_scale_for_int32_bias`: its Gemm bias has shape [1, N], "
                "microsoft/onnxruntime#24815). ONNX Runtime was given the same graph with "
                "that bias reshaped to [N] (identical arithmetic; its other defaults kept).")
            ort_quantize(workaround, output, input_name, entry.calibration, method)
        if workaround is not None:
            note = "Gemm bias reshaped to 1-D (onnxruntime#24815)"
        q = onnx.load(output)
        range_columns[f"ORT {method}"] = ort_ranges(q)
        kernels = ["emulated"] + (["integer"] if method in args.ort_fused else [])
        for k in kernels:
            runs.append(evaluate(Run("onnxruntime", method, kernels=k, note=note), q))
        log(f"  onnxruntime {method}: {time.perf_counter() - t:.1f} s")
    for column in range_columns.values():
        tensors += [t for t in column if t not in tensors]
    return ModelResult(entry, fp32_test, fp32_val, runs, range_columns, tensors,
                       time.perf_counter() - start, notes)


# --------------------------------------------------------------------------- statistics

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


def is_tie(difference: float, se: float) -> bool:
    return difference == 0 or abs(difference) < 2 * se


# --------------------------------------------------------------------------- report

def cpu_description() -> tuple[str, list[str], int]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == (platform.processor() or
                                                             platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return model, [f for f in wanted if f in flags], cpus or 0


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt_delta(acc) -> str:
    return f"{0.0 - acc.drop:+.2f} ± {acc.paired_se:.2f}"  # 0.0 - x: never "-0.00" for 0


def cell(result: ModelResult, run: Run | None) -> str:
    if run is None:
        return "—"
    if run.error is not None:
        return "not built" if run.error.startswith("NotImplementedError") else "failed"
    a = compare_top1(result.fp32_test, run.test_logits, result.entry.test.y)
    return f"{a.candidate:.2f} ({fmt_delta(a)})"


def fp32_top1(result: ModelResult) -> float:
    y = result.entry.test.y
    return float((result.fp32_test.reshape(len(y), -1).argmax(1) == y).mean() * 100)


def find(result: ModelResult, tool: str, method: str, kernels: str = "emulated",
         activations: str = "uint8") -> Run | None:
    for r in result.runs:
        if (r.tool, r.method, r.kernels, r.activations) == (tool, method, kernels, activations):
            return r
    return None


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None
          ) -> list[str]:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def fmt_range(r: tuple[float, float] | None) -> str:
    if r is None:
        return ""
    return f"{r[0]:.4g} … {r[1]:.4g}"


def render(results: list[ModelResult], args: argparse.Namespace, seconds: float) -> str:
    cpu, flags, cpus = cpu_description()
    from PIL import __version__ as pillow

    our = [c.label for c in args.configs]
    lines = [
        "# INT8 accuracy: onnxquant's calibration methods against ONNX Runtime",
        "",
        "Generated by `bench/accuracy.py`; do not edit by hand. Command:",
        "",
        "```bash",
        "cd /work/main && PYTHONPATH=python .venv/bin/python bench/accuracy.py "
        + " ".join(shlex.quote(a) for a in args.argv),
        "```",
        "",
        (f"- Versions: onnxquant {oq.__version__} (git {git_revision()}), onnxruntime "
        f"{ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}, Pillow {pillow}, "
        f"Python {platform.python_version()}."),
        (f"- CPU: {cpu}, {cpus} CPUs available to the process, "
        f"{' '.join(flags) or 'no AVX2/AVX-512/VNNI'} ({platform.machine()}, "
        f"{platform.system()})."),
        f"- Run: {datetime.date.today().isoformat()}, {seconds / 60:.1f} min"
        + (", `--quick`" if args.quick else "") + ".",
        "",
        "## How it is measured",
        "",
        ("- Both tools start from the same graph: the model normalised by "
        "`onnxquant.optimize_model` (BatchNormalization folded, opset converted up to 13 where "
        "lower, e.g. MNIST's opset 8), saved to a temporary file. That graph is also the FP32 "
        "reference."),
        ("- onnxquant: one `Calibrator` collection on the calibration samples serves all ten "
        "methods (`compute_range(method)`)" if has_method_api() else
         "- onnxquant: one `Calibrator(model, method)` collection per method (this onnxquant's "
         "`compute_range()` takes no method)") +
        (", then `quantize(model, ranges)` with the defaults: "
        "uint8 activations (per tensor), int8 per-channel symmetric weights, int32 bias. "
        f"Calibrator defaults: PERCENTILE percentage {default_percentage()}, ENTROPY "
        f"ignore_zero_spike={calibrator_default('ignore_zero_spike')}. A column whose name "
        "carries a keyword (e.g. `ENTROPY_ASYM (ignore_zero_spike=True)`) used that "
        "Calibrator keyword instead (its own collection)."),
        "- ONNX Runtime: `onnxruntime.quantization.shape_inference.quant_pre_process` with its "
        "defaults" + ("" if args.ort_preprocess else " (skipped: `--no-ort-preprocess`)") +
        ", then `quantize_static(quant_format=QDQ, per_channel=True, "
        "activation_type=QUInt8, weight_type=QInt8, calibrate_method=...)` with no "
        "`extra_options`, so each method runs with ONNX Runtime's defaults: "
        + "; ".join(f"{k}: {v}" for k, v in ORT_DEFAULTS.items()) + ". The same calibration "
        "samples are fed one `[1, ...]` sample per `get_next()`, in the same order.",
        ("- Headline figures run the INT8 models in ONNX Runtime with QDQ emulated in float "
        "(`session.disable_quant_qdq = 1`): they do not depend on the CPU's integer "
        "instructions. The integer-kernel table runs the same models with ONNX Runtime's "
        "default optimisations, which fuse QDQ into integer kernels (results there depend on "
        "the CPU, see the flags above)."),
        ("- Each INT8 cell: top-1 % on the test set, then (INT8 − FP32 in points ± the standard "
        "error of that paired difference, computed per image from correct(INT8) − "
        "correct(FP32) on the same images)."),
        ("- Best method: the one with the highest validation top-1 among a tool's emulated "
        "methods, where the model entry has a validation set (not reported otherwise); "
        "ours-best and ORT-best are then compared on the test set, and a difference under two "
        "paired standard errors is reported as a tie (as are methods within two paired "
        "standard errors of the best on validation)."),
        "",
    ]
    for r in results:
        e = r.entry
        lines.append(f"- **{e.name}**: `{os.path.relpath(e.path, REPO)}`; calibration: "
                     f"{e.calibration_description}; validation: "
                     f"{e.validation.description if e.validation else 'none'}; test: "
                     f"{e.test.description}.")
    lines += ["", "## INT8 top-1, QDQ emulated (headline)", ""]
    header = ["model", "images", "FP32"] + our + [f"ORT {m}" for m in ORT_METHODS]
    rows = []
    for r in results:
        rows.append([r.entry.name, str(len(r.entry.test.y)), f"{fp32_top1(r):.2f}"]
                    + [cell(r, find(r, "onnxquant", m)) for m in our]
                    + [cell(r, find(r, "onnxruntime", m)) for m in ORT_METHODS])
    lines += table(header, rows, ["---"] + ["---:"] * (len(header) - 1))
    lines += ["", "The same figures by method, one column per model:", ""]
    header = ["tool", "method"] + [r.entry.name for r in results]
    rows = [["—", "FP32"] + [f"{fp32_top1(r):.2f}" for r in results]]
    rows += [["onnxquant", m] + [cell(r, find(r, "onnxquant", m)) for r in results]
             for m in our]
    rows += [["onnxruntime", m] + [cell(r, find(r, "onnxruntime", m)) for r in results]
             for m in ORT_METHODS]
    lines += table(header, rows, ["---", "---"] + ["---:"] * len(results))

    lines += ["", "## Best method chosen on validation", ""]
    rows = []
    for r in results:
        if r.entry.validation is None:
            rows.append([r.entry.name, "not reported (no validation set)", "", "", ""])
            continue
        ours, theirs = choose_best(r, "onnxquant"), choose_best(r, "onnxruntime")
        if ours is None or theirs is None:
            rows.append([r.entry.name, "not reported (a tool has no result)", "", "", ""])
            continue
        y = r.entry.test.y
        a = compare_top1(theirs.run.test_logits, ours.run.test_logits, y)
        diff = 0.0 - a.drop
        verdict = "tie" if is_tie(diff, a.paired_se) else \
            ("onnxquant" if diff > 0 else "onnxruntime")

        def name(b: Best) -> str:
            ties = f"; tied on validation: {', '.join(b.tied)}" if b.tied else ""
            return f"{b.run.method} (validation {b.validation_top1:.2f}{ties})"
        rows.append([r.entry.name, name(ours), name(theirs),
                     f"{cell(r, ours.run)} vs {cell(r, theirs.run)}",
                     f"{diff:+.2f} ± {a.paired_se:.2f}: {verdict}"])
    lines += table(["model", "onnxquant best", "ORT best", "test top-1: ours vs ORT",
                    "ours − ORT: verdict"], rows, ["---", "---", "---", "---:", "---:"])

    lines += ["", "## Integer kernels (ONNX Runtime's fused QDQ) beside emulation", "",
              (f"CPU: {cpu} ({' '.join(flags)}). Each cell as above; the agreement column is "
              "the share of test images where the fused and the emulated model predict the "
              "same class."), ""]
    rows = []
    configs = [("onnxquant", m, "uint8") for m in args.fused] + \
        [("onnxquant", m, "int8") for m in args.int8] + \
        [("onnxruntime", m, "uint8") for m in args.ort_fused]
    for r in results:
        for tool, method, act in configs:
            emulated = find(r, tool, method, "emulated", act)
            fused = find(r, tool, method, "integer", act)
            agree = ""
            if emulated and fused and emulated.error is None and fused.error is None:
                a = compare_top1(emulated.test_logits, fused.test_logits, r.entry.test.y)
                agree = f"{a.agreement:.2f}"
            lines_act = "uint8" if tool == "onnxruntime" else act
            rows.append([r.entry.name, tool, method, lines_act, cell(r, emulated),
                         cell(r, fused), agree])
    lines += table(["model", "tool", "method", "activations", "emulated", "integer kernels",
                    "agreement %"], rows, ["---", "---", "---", "---", "---:", "---:", "---:"])

    notes = [(r.entry.name, n) for r in results for n in r.notes + auto_notes(r)]
    errors = [(r.entry.name, run) for r in results for run in r.runs
              if run.error and not run.error.startswith("NotImplementedError")]
    missing = sorted({run.method for r in results for run in r.runs
                      if run.error and run.error.startswith("NotImplementedError")},
                     key=our.index)
    if notes or errors or missing:
        lines += ["", "## Notes", ""]
        if missing:
            lines.append(f"- Not built in this onnxquant (`compute_range` raised "
                         f"NotImplementedError): {', '.join(missing)}.")
        lines += [f"- {name}: {n}" for name, n in notes]
        lines += [f"- {name}: {run.label} ({run.kernels}, {run.activations}) failed: "
                  f"`{run.error.splitlines()[0]}`" for name, run in errors]

    lines += ["", "## Activation ranges per tensor", "",
              ("min … max of each calibrated tensor: onnxquant's from `compute_range`, ONNX "
              "Runtime's read back from the scale and zero point of its QuantizeLinear nodes "
              "(so rounded to its grid). A blank cell: the tool does not quantize that tensor."),
              ""]
    for r in results:
        columns = list(r.ranges)
        lines += [f"<details><summary>{r.entry.name}: {len(r.tensors)} tensors</summary>", ""]
        lines += table(["tensor"] + columns,
                       [[f"`{t}`"] + [fmt_range(r.ranges[c].get(t)) for c in columns]
                        for t in r.tensors])
        lines += ["", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    methods = [m.name for m in oq.CalibrationMethod]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=DEFAULT_ZOO,
                    help="the zoo folder (default $ONNXQUANT_ZOO or ../shared/zoo)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                    help="model entries to run (default all)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_TEST} test and {QUICK_VALIDATION} validation images, drawn at random")
    ap.add_argument("--output", help="write the Markdown report here (it is always printed)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads for evaluation (default: its own)")
    ap.add_argument("--fused", nargs="*", choices=methods, default=[DEFAULT_METHOD],
                    help="onnxquant methods also run with integer kernels (default %(default)s)")
    ap.add_argument("--int8", nargs="*", choices=methods, default=[DEFAULT_METHOD],
                    help="onnxquant methods also run with int8 activations, emulated and "
                         "integer kernels (default %(default)s)")
    ap.add_argument("--ort-fused", nargs="*", choices=ORT_METHODS, default=["MinMax"],
                    help="ONNX Runtime methods also run with integer kernels "
                         "(default %(default)s)")
    ap.add_argument("--no-ort-preprocess", dest="ort_preprocess", action="store_false",
                    help="skip quant_pre_process before quantize_static")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="leave out ENTROPY with the non-default ignore_zero_spike")
    args = ap.parse_args(argv)
    args.configs = our_configs(args.variants)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice and progress
    start = time.perf_counter()
    results = []
    for key in args.models:
        t = time.perf_counter()
        entry = MODELS[key](args.zoo)
        if args.quick:
            entry = dataclasses.replace(
                entry, test=entry.test.subset(QUICK_TEST),
                validation=entry.validation.subset(QUICK_VALIDATION) if entry.validation
                else None)
        log(f"{entry.name}: data loaded in {time.perf_counter() - t:.1f} s")
        with tempfile.TemporaryDirectory(prefix="oq-accuracy-") as workdir:
            results.append(measure(entry, args, workdir))
        log(f"{entry.name}: {results[-1].seconds:.1f} s")
    report = render(results, args, time.perf_counter() - start)
    print(report, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
