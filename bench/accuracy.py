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

A second part (on by default; ``--no-tasks`` leaves it out, ``--tasks-only`` runs only it)
measures the zoo's models without labels here, INT8 against FP32 in each task's metric:
the face detectors (detections matched to FP32's as pseudo-labels: precision, recall, F1,
mean IoU, score correlation), super-resolution (PSNR against FP32 and against a reference)
and Basic Pitch (output correlation), onnxquant's methods beside ONNX Runtime's, with the
same normalised graph, calibration samples and QDQ emulation.

    PYTHONPATH=python .venv/bin/python bench/accuracy.py [--quick] [--output docs/accuracy.md]
    PYTHONPATH=python .venv/bin/python bench/accuracy.py --tasks-only

Model entries live in ``MODELS`` (key -> builder); add a builder to add a row. The
models/cifar networks (``cifar-<name>``) are skipped, with a note, while their ONNX file is
missing. Task entries live in ``TASKS`` (key -> builder of ``TaskEntry`` list).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
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
    #: The onnxquant columns (config labels) and ONNX Runtime methods run for this entry;
    #: None: all. The others show "—".
    methods: tuple[str, ...] | None = None
    ort_methods: tuple[str, ...] | None = None
    #: Whether the integer-kernel and int8-activation runs (``--fused``, ``--int8``,
    #: ``--ort-fused``) are made for this entry.
    kernel_checks: bool = True


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


class MissingModel(FileNotFoundError):
    """A model entry whose ONNX file does not exist (yet): skipped, with a note."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


CIFAR_DIR = os.path.join(REPO, "models", "cifar")
#: The methods run by default on the models/cifar networks: two per tool, to keep the
#: whole run within 15 minutes on two cores (every method costs a pass over 15 000 images,
#: ViT's about 20 s on an idle CPU and twice that on a busy one, and ONNX Runtime's
#: calibration 5-20 s more per method). ``--cifar-methods`` and ``--cifar-ort-methods``
#: change them; the validation set chooses each tool's best among those run.
CIFAR_METHODS = ("MIN_MAX_ASYM", "PERCENTILE_ASYM")
CIFAR_ORT_METHODS = ("MinMax", "Percentile")
#: The CIFAR-10 networks trained in this repository (models/cifar/nets.py): file stem -> name.
CIFAR_NETS = {
    "resnet": "ResNet",
    "mobilenetv2": "MobileNetV2",
    "efficientnet": "EfficientNet",
    "convnext": "ConvNeXt",
    "vit": "ViT",
}


def cifar_data_module():
    """``models/cifar/data.py`` (numpy and Pillow only), imported from its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnxquant_bench_cifar_data",
                                                  os.path.join(CIFAR_DIR, "data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=2)
def cifar_sets(zoo: str) -> tuple[np.ndarray, str, LabelledSet, LabelledSet]:
    """The calibration samples, their description, the validation set and the test set of
    the models/cifar networks (shared by every entry: decoded and preprocessed once)."""
    data = cifar_data_module()
    x_train, _, x_val, y_val, _ = data.load_train_val(zoo)
    pick = draw(len(x_train), 500, seed=0)
    calibration = data.preprocess(x_train[pick])
    x_test, y_test = data.load_test(zoo)
    val = LabelledSet(data.preprocess(x_val), y_val.astype(np.int64),
                      f"the {len(y_val)} held-out training images of models/cifar/data.py "
                      "(`load_train_val`: not trained on)")
    test = LabelledSet(data.preprocess(x_test), y_test.astype(np.int64),
                       f"all {len(y_test)} images of cifar10_test.npz")
    description = (f"500 of the {len(x_train)} training images of models/cifar/data.py "
                   "(`load_train_val`, the validation images left out) drawn with "
                   "numpy.random.default_rng(0) (file order); `data.preprocess`")
    return calibration, description, val, test


def cifar_entry(stem: str, dynamo: bool = False) -> Callable[[str], ModelEntry]:
    """Builder of the entry of ``models/cifar/<stem>.onnx`` (TorchScript export) or
    ``<stem>.dynamo.onnx`` (``torch.onnx.export(dynamo=True)``)."""
    filename = f"{stem}.dynamo.onnx" if dynamo else f"{stem}.onnx"

    name = f"{CIFAR_NETS[stem]} (CIFAR-10{', dynamo export' if dynamo else ''})"

    def build(zoo: str) -> ModelEntry:
        path = os.path.join(CIFAR_DIR, filename)
        if not os.path.isfile(path):
            raise MissingModel(name, f"{os.path.relpath(path, REPO)} does not exist (yet)")
        calibration, description, val, test = cifar_sets(zoo)
        return ModelEntry(
            name=name, path=path, methods=CIFAR_METHODS, ort_methods=CIFAR_ORT_METHODS,
            kernel_checks=False,
            calibration=calibration, calibration_description=description,
            test=test, validation=val)
    return build


#: key -> builder(zoo path) -> ModelEntry. Table rows follow this order.
MODELS: dict[str, Callable[[str], ModelEntry]] = {
    "resnet8": resnet8_cifar10,
    "mnist": mnist_cnn,
    **{f"cifar-{stem}": cifar_entry(stem) for stem in CIFAR_NETS},
    **{f"cifar-{stem}-dynamo": cifar_entry(stem, dynamo=True) for stem in CIFAR_NETS},
}
#: The entries run by default (the dynamo exports hold the same weights: ``--models``).
DEFAULT_MODELS = [k for k in MODELS if not k.endswith("-dynamo")]


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
                 method: str, nodes_to_exclude: list[str] | None = None) -> None:
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
                        calibrate_method=getattr(CalibrationMethod, method),
                        nodes_to_exclude=nodes_to_exclude)


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


class EntryFailed(RuntimeError):
    """A step without which an entry has no row (e.g. ``optimize_model`` failing)."""


def optimize(path: str) -> onnx.ModelProto:
    try:
        return oq.optimize_model(path)
    except Exception as e:  # the entry is reported as not measured
        raise EntryFailed(f"oq.optimize_model failed: {first_line(e)}") from e


def ort_preprocess(normalised: str, workdir: str, enabled: bool, notes: list[str]) -> str:
    """The file ONNX Runtime quantizes: ``quant_pre_process(normalised)`` with its defaults
    (``enabled``), else ``normalised``. Where pre-processing fails, ``normalised`` is used and
    a note says why."""
    if not enabled:
        return normalised
    from onnxruntime.quantization.shape_inference import quant_pre_process

    output = os.path.join(workdir, "ort_preprocessed.onnx")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(normalised, output)
    except Exception as e:  # noqa: BLE001 - reported, and ONNX Runtime still runs
        notes.append(f"onnxruntime's quant_pre_process failed (`{first_line(e)}`); "
                     "quantize_static was given the normalised graph without it.")
        return normalised
    return output


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


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
                       time.perf_counter() - start, notes)


# --------------------------------------------------------------------------- tasks: detectors,
# super-resolution and audio (INT8 against FP32 in each task's own metric)

#: onnxquant methods of the task section by default (one collection serves them all).
TASK_METHODS = ("MIN_MAX_ASYM", "PERCENTILE_ASYM", "MSE_ASYM", "SQNR_ASYM", "ENTROPY_ASYM")
#: ONNX Runtime methods of the task section by default.
TASK_ORT_METHODS = ("MinMax", "Percentile")
FACE_SCORE_THRESHOLD = 0.7
FACE_NMS_IOU = 0.3
FACE_MATCH_IOU = 0.5
#: Face photos (sorted by file name) that calibrate; the others are evaluated.
FACE_CALIBRATION = 12
SR_SCALE = 3
BP_RATE = 22050
BP_WINDOW = 43844
BP_PAD = 3840                  # Basic Pitch's half overlap: 30 frames of 256 samples / 2
BP_HOP = BP_WINDOW - 2 * BP_PAD
BP_OUTPUTS = {"contour": "StatefulPartitionedCall:0", "note": "StatefulPartitionedCall:1",
              "onset": "StatefulPartitionedCall:2"}


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
    tool: str
    method: str
    metrics: dict[str, float] | None = None
    error: str | None = None


@dataclass
class TaskResult:
    entry: TaskEntry
    fp32: dict[str, float]
    runs: list[TaskRun]
    seconds: float
    notes: list[str]


# ---- data

def face_photos(zoo: str) -> list[str]:
    folder = os.path.join(zoo, "face", "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith((".jpg", ".jpeg", ".png"))]


def _split_description(paths: list[str]) -> tuple[str, str, str]:
    """Short calibration and evaluation descriptions, and the note listing the files."""
    names = [os.path.basename(p) for p in paths]
    cal, ev = names[:FACE_CALIBRATION], names[FACE_CALIBRATION:]
    note = (f"Face photos (`face/images`, {len(names)} files sorted by name): calibration "
            f"{', '.join(cal)}; evaluation {', '.join(ev)}.")
    return (f"the first {len(cal)} face photos", f"the other {len(ev)}", note)


def face_inputs(paths: list[str], size: tuple[int, int], bgr_raw: bool) -> np.ndarray:
    """Photos resized (bilinear, aspect not kept) to ``size`` (width, height) as
    [N, 1, 3, H, W] float32: RGB (x - 127) / 128, or BGR 0..255 (``bgr_raw``)."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32)
        a = a[..., ::-1] if bgr_raw else (a - 127.0) / 128.0
        out.append(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return np.stack(out)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corner boxes a [n, 4] and b [m, 4] (x1, y1, x2, y2): [n, m]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[:, 2:] - x[:, :2], 0, None).prod(axis=1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[box_iou(boxes[i:i + 1], boxes[order])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def ultraface_scores(out: dict[str, np.ndarray]) -> np.ndarray:
    return out["scores"][..., 1]                           # [N, 4420]: the face class


def ultraface_boxes(out: dict[str, np.ndarray], i: int, keep: np.ndarray) -> np.ndarray:
    return out["boxes"][i, keep] * np.array([320, 240, 320, 240], dtype=np.float32)


YUNET_STRIDES = (8, 16, 32)


def yunet_scores(out: dict[str, np.ndarray]) -> np.ndarray:
    """sqrt(cls * obj), each clamped to [0, 1], over the three strides: [N, 2100]."""
    return np.concatenate([np.sqrt(np.clip(out[f"cls_{s}"][..., 0], 0, 1) *
                                   np.clip(out[f"obj_{s}"][..., 0], 0, 1))
                           for s in YUNET_STRIDES], axis=1)


def yunet_boxes(out: dict[str, np.ndarray], i: int, keep: np.ndarray, size: int = 320
                ) -> np.ndarray:
    """YuNet's anchor-free decoding (as OpenCV's FaceDetectorYN): at grid cell (r, c) of
    stride s, centre ((c, r) + bbox[0:2]) * s, size exp(bbox[2:4]) * s; input pixels."""
    cells, strides, offsets = [], [], []
    for s in YUNET_STRIDES:
        n = (size // s) ** 2
        cells.append(np.arange(n))
        strides.append(np.full(n, s))
        offsets.append(out[f"bbox_{s}"][i])
    cell, stride = np.concatenate(cells)[keep], np.concatenate(strides)[keep]
    b = np.concatenate(offsets)[keep].astype(np.float64)
    cols = size // stride
    cx, cy = (cell % cols + b[:, 0]) * stride, (cell // cols + b[:, 1]) * stride
    w, h = np.exp(b[:, 2]) * stride, np.exp(b[:, 3]) * stride
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def detections(scores: np.ndarray, boxes_of: Callable[[np.ndarray], np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores of one image after the score threshold and NMS."""
    keep = np.flatnonzero(scores >= FACE_SCORE_THRESHOLD)
    boxes = boxes_of(keep)
    kept = nms(boxes, scores[keep], FACE_NMS_IOU)
    return boxes[kept], scores[keep][kept]


def match(ref_boxes: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list[float]:
    """Greedy matching, highest score first, each detection to the unmatched reference
    box of highest IoU where that IoU >= FACE_MATCH_IOU: the IoUs of the matched pairs."""
    if not len(ref_boxes) or not len(boxes):
        return []
    iou = box_iou(boxes, ref_boxes)
    free = np.ones(len(ref_boxes), dtype=bool)
    matched = []
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(free, iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= FACE_MATCH_IOU:
            free[j] = False
            matched.append(float(cand[j]))
    return matched


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def detector_score(scores_of, boxes_of):
    def score(fp32: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, float]:
        s_ref, s_q = scores_of(fp32), scores_of(q)
        n_ref = n_q = 0
        ious: list[float] = []
        for i in range(len(s_ref)):
            ref_boxes, _ = detections(s_ref[i], lambda k, i=i: boxes_of(fp32, i, k))
            boxes, scores = detections(s_q[i], lambda k, i=i: boxes_of(q, i, k))
            n_ref, n_q = n_ref + len(ref_boxes), n_q + len(boxes)
            ious += match(ref_boxes, boxes, scores)
        tp = len(ious)
        precision = tp / n_q if n_q else float("nan")
        recall = tp / n_ref if n_ref else float("nan")
        return {"fp32_detections": n_ref, "detections": n_q, "matched": tp,
                "precision": precision, "recall": recall,
                "f1": 2 * tp / (n_ref + n_q) if n_ref + n_q else float("nan"),
                "mean_iou": float(np.mean(ious)) if ious else float("nan"),
                "score_r": pearson(s_ref, s_q),
                "score_max_diff": float(np.abs(s_ref - s_q).max())}
    return score


DETECTOR_COLUMNS = [
    Column("detections", "detections", "{:.0f}", fp32=True),
    Column("matched", "matched", "{:.0f}"),
    Column("precision", "precision", "{:.3f}"),
    Column("recall", "recall", "{:.3f}"),
    Column("f1", "F1", "{:.3f}"),
    Column("mean_iou", "mean IoU", "{:.3f}"),
    Column("score_r", "score r", "{:.5f}"),
    Column("score_max_diff", "max abs score diff", "{:.4f}"),
]


def after_last_conv(model: onnx.ModelProto) -> list[str]:
    """The nodes between the last Convs and the graph outputs (walking back from the
    outputs, stopping at Conv nodes): Ultra-Light's head reshapes and concatenation,
    Softmax and in-graph box decoding (Slice, Mul, Add, Exp, Div, Sub, Concat). Found by
    data flow, so the same nodes in any topological order (ONNX Runtime's pre-processed
    graph reorders them)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen: dict[str, onnx.NodeProto] = {}
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.op_type == "Conv" or node.name in seen:
            continue
        seen[node.name] = node
        stack += list(node.input)
    return [n.name for n in model.graph.node if n.name in seen]


def face_entries(zoo: str) -> list[TaskEntry]:
    paths = face_photos(zoo)
    cal_text, eval_text, split = _split_description(paths)
    entries = []
    for filename, name in (("version-RFB-320.onnx", "Ultra-Light RFB-320"),
                           ("version-slim-320.onnx", "Ultra-Light slim-320")):
        x = face_inputs(paths, (320, 240), bgr_raw=False)
        entries.append(TaskEntry(
            name=name, group="detector", path=os.path.join(zoo, "face", filename),
            calibration=x[:FACE_CALIBRATION], evaluation=x[FACE_CALIBRATION:],
            calibration_description=cal_text + "; resized to 320×240, RGB (x − 127) / 128",
            evaluation_description=eval_text, notes=[split],
            score=detector_score(ultraface_scores, ultraface_boxes),
            variants=[("decoding in float", after_last_conv)]))
    x = face_inputs(paths, (320, 320), bgr_raw=True)
    entries.append(TaskEntry(
        name="YuNet n 320", group="detector",
        path=os.path.join(zoo, "face", "yunet_n_320_320.onnx"),
        calibration=x[:FACE_CALIBRATION], evaluation=x[FACE_CALIBRATION:],
        calibration_description=cal_text + "; resized to 320×320, BGR 0..255",
        evaluation_description=eval_text, notes=[split],
        score=detector_score(yunet_scores, yunet_boxes)))
    return entries


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per image (axis 0) of images in 0..1 (both clipped to 0..1 first)."""
    d = np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1).astype(np.float64)
    mse = (d * d).reshape(len(d), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))


def superres_entry(zoo: str) -> TaskEntry:
    """Each photo centre-cropped to a square and resized (bicubic) to 672×672: the reference;
    that image resized (bicubic) to 224×224 is the input; its Y channel (Pillow's YCbCr)
    scaled to 0..1 is what the model sees and the reference's Y what its output is compared
    with."""
    from PIL import Image

    paths = face_photos(zoo)
    cal_text, eval_text, split = _split_description(paths)
    size = 224
    lows, highs, bicubic = [], [], []

    def y(image) -> np.ndarray:
        return np.asarray(image.convert("YCbCr"), np.float32)[..., 0] / 255.0
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            high = im.crop((left, top, left + side, top + side)).resize(
                (size * SR_SCALE,) * 2, Image.BICUBIC)
        low = high.resize((size, size), Image.BICUBIC)
        lows.append(y(low)[None])
        highs.append(y(high)[None])
        bicubic.append(np.asarray(low.convert("YCbCr").split()[0].resize(
            high.size, Image.BICUBIC), np.float32)[None] / 255.0)
    x, ref, bic = np.stack(lows), np.stack(highs)[FACE_CALIBRATION:], \
        np.stack(bicubic)[FACE_CALIBRATION:]

    def score(fp32: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, float]:
        a, b = fp32["output"], q["output"]
        vs_fp32 = psnr(a, b) if a is not b else np.full(len(a), np.inf)
        return {"psnr_fp32": float(vs_fp32.mean()), "psnr_fp32_min": float(vs_fp32.min()),
                "psnr_ref": float(psnr(ref, b).mean()),
                "psnr_ref_delta": float((psnr(ref, b) - psnr(ref, a)).mean())}
    return TaskEntry(
        name="Sub-pixel CNN ×3", group="superres",
        path=os.path.join(zoo, "superres", "super_resolution.onnx"),
        calibration=x[:FACE_CALIBRATION], evaluation=x[FACE_CALIBRATION:],
        calibration_description=cal_text,
        evaluation_description=eval_text,
        score=score, reference={"psnr_ref": float(psnr(ref, bic).mean())},
        notes=[split, ("Super-resolution: each photo centre-cropped to a square and resized "
                "(bicubic) to 672×672 is the reference; that image resized (bicubic) to 224×224 is the input. The "
                "model sees the Y channel (Pillow's YCbCr) / 255 and is compared on Y; "
                "outputs are clipped to 0..1 before PSNR (peak 1). PSNR is per image, then "
                "averaged.")])


SUPERRES_COLUMNS = [
    Column("psnr_fp32", "PSNR vs FP32 (dB, mean)", "{:.2f}"),
    Column("psnr_fp32_min", "PSNR vs FP32 (dB, worst image)", "{:.2f}"),
    Column("psnr_ref", "PSNR vs 672×672 reference (dB)", "{:.2f}", fp32=True),
    Column("psnr_ref_delta", "vs reference: INT8 − FP32 (dB)", "{:+.3f}"),
]


def read_wave_mono(path: str) -> tuple[np.ndarray, int]:
    """A PCM WAV file (standard library ``wave``) as float64 mono in -1..1, and its rate."""
    import wave

    with wave.open(path, "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        a = np.frombuffer(raw, dtype).astype(np.float64) / (2 ** (8 * width - 1))
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not read here")
    return a.reshape(-1, channels).mean(axis=1), rate


def basic_pitch_windows(audio: np.ndarray) -> np.ndarray:
    """Basic Pitch's framing: BP_PAD zeros before the audio, windows of BP_WINDOW samples
    every BP_HOP (the last one padded with zeros): [windows, BP_WINDOW, 1] float32."""
    padded = np.concatenate([np.zeros(BP_PAD), audio])
    count = int(np.ceil(len(padded) / BP_HOP))
    padded = np.concatenate([padded, np.zeros(count * BP_HOP + BP_WINDOW - len(padded))])
    return np.stack([padded[i * BP_HOP:i * BP_HOP + BP_WINDOW]
                     for i in range(count)])[..., None].astype(np.float32)


def f1_active(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    x, y = a >= threshold, b >= threshold
    total = x.sum() + y.sum()
    return float(2 * (x & y).sum() / total) if total else float("nan")


def basic_pitch_front_end(model: onnx.ModelProto) -> list[str]:
    """Basic Pitch's CQT (Conv1d on the waveform, magnitude) and log-normalisation nodes."""
    return [n.name for n in model.graph.node
            if "/cq_t2010v2_1/" in n.name or "/normalized_log_1/" in n.name]


def basic_pitch_entry(zoo: str) -> TaskEntry:
    path = os.path.join(zoo, "basic_pitch", "vocadito_10.wav")
    audio, rate = read_wave_mono(path)
    notes = []
    if rate == 2 * BP_RATE:
        audio = audio[:len(audio) // 2 * 2].reshape(-1, 2).mean(axis=1)
        how = "resampled 44.1 → 22.05 kHz by averaging sample pairs (no scipy here)"
    elif rate == BP_RATE:
        how = "at 22.05 kHz already"
    else:
        raise ValueError(f"{path}: {rate} Hz; this script resamples 44.1 kHz only")
    x = basic_pitch_windows(audio)
    half = len(x) // 2
    seconds = len(audio) / BP_RATE

    def score(fp32: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, float]:
        out = {}
        for key, name in BP_OUTPUTS.items():
            out[f"{key}_r"] = pearson(fp32[name], q[name])
            out[f"{key}_max"] = float(np.abs(fp32[name] - q[name]).max())
        out["note_f1"] = f1_active(fp32[BP_OUTPUTS["note"]], q[BP_OUTPUTS["note"]], 0.3)
        out["onset_f1"] = f1_active(fp32[BP_OUTPUTS["onset"]], q[BP_OUTPUTS["onset"]], 0.5)
        return out
    notes.append(
        f"Basic Pitch: vocadito_10.wav ({seconds:.1f} s) read with `wave`, mono, {how}; framed as Basic "
        f"Pitch does: {BP_PAD} zeros first, windows of {BP_WINDOW} samples every {BP_HOP} "
        f"({BP_WINDOW} − 2 × {BP_PAD}), the last padded with zeros: {len(x)} windows. "
        "Outputs: `StatefulPartitionedCall:0` contour, `:1` note, `:2` onset (Basic Pitch's "
        "own mapping). Note F1 and onset F1: cells (frame × pitch) at or above Basic Pitch's "
        "default thresholds (note 0.3, onset 0.5), INT8's against FP32's.")
    return TaskEntry(
        name="Basic Pitch (nmp)", group="audio",
        path=os.path.join(zoo, "basic_pitch", "nmp.onnx"),
        calibration=x[:half], evaluation=x[half:],
        calibration_description=f"windows 0–{half - 1} (the first half of the clip)",
        evaluation_description=f"windows {half}–{len(x) - 1} (the second half; the first "
                               f"of them shares {2 * BP_PAD} samples with the last "
                               "calibration window)",
        score=score, notes=notes,
        variants=[("CQT front end in float", basic_pitch_front_end)])


AUDIO_COLUMNS = [
    Column("contour_r", "contour r", "{:.5f}"),
    Column("note_r", "note r", "{:.5f}"),
    Column("onset_r", "onset r", "{:.5f}"),
    Column("contour_max", "contour max abs diff", "{:.4f}"),
    Column("note_max", "note max abs diff", "{:.4f}"),
    Column("onset_max", "onset max abs diff", "{:.4f}"),
    Column("note_f1", "note F1 (≥ 0.3)", "{:.3f}"),
    Column("onset_f1", "onset F1 (≥ 0.5)", "{:.3f}"),
]

#: task key -> builder(zoo) -> entries; table groups follow this order.
TASKS: dict[str, Callable[[str], list[TaskEntry]]] = {
    "face": face_entries,
    "superres": lambda zoo: [superres_entry(zoo)],
    "basic_pitch": lambda zoo: [basic_pitch_entry(zoo)],
}
TASK_GROUPS = {
    "detector": ("Face detectors: INT8 detections against FP32's", DETECTOR_COLUMNS),
    "superres": ("Super-resolution: PSNR", SUPERRES_COLUMNS),
    "audio": ("Basic Pitch: output correlation", AUDIO_COLUMNS),
}


# ---- measurement

def run_outputs(model: onnx.ModelProto, x: np.ndarray, threads: int | None
                ) -> dict[str, np.ndarray]:
    """Every output of a one-input model, QDQ emulated, for each ``x[i:i+1]``: name ->
    outputs stacked along axis 0."""
    session = make_session(model, emulate=True, threads=threads)
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
    fp32_out = run_outputs(model, entry.evaluation, args.threads)
    runs: list[TaskRun] = []

    def evaluate(run: TaskRun, q: onnx.ModelProto) -> None:
        try:
            out = run_outputs(q, entry.evaluation, args.threads)
        except Exception as e:  # noqa: BLE001 - recorded in the report
            run.error = f"running the INT8 model: {first_line(e)}"
        else:
            run.metrics = entry.score(fp32_out, out)
        runs.append(run)

    t = time.perf_counter()
    methods = [oq.CalibrationMethod[m] for m in args.task_methods]
    try:
        ranges = our_ranges(model, entry.calibration, oq.QuantOptions(), methods)
    except Exception as e:  # noqa: BLE001 - e.g. the Calibrator refusing the model
        ranges = {m.name: e for m in methods}
    log(f"  onnxquant calibration ({len(entry.calibration)} samples): "
        f"{time.perf_counter() - t:.1f} s")
    for m in args.task_methods:
        r = ranges[m]
        if isinstance(r, Exception):
            runs.append(TaskRun("onnxquant", m, error=first_line(r)))
            continue
        try:
            q = oq.quantize(model, r)
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
            r = our_ranges(model, entry.calibration, options,
                           [oq.CalibrationMethod[method]])[method]
            if isinstance(r, Exception):
                raise r
            q = oq.quantize(model, r, options=options)
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
        log(f"  {run.tool} {run.method}: " + (run.error or ", ".join(
            f"{k} {v:.4g}" for k, v in run.metrics.items())))
    return TaskResult(entry, entry.score(fp32_out, fp32_out), runs,
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


def render(results: list[ModelResult], args: argparse.Namespace, seconds: float,
           tasks: list[TaskResult] | None = None,
           skipped: list[tuple[str, str]] | None = None,
           skipped_tasks: list[tuple[str, str]] | None = None) -> str:
    """The report: the classifier sections (unless ``--tasks-only``), the task section
    (unless ``--no-tasks``), then the classifiers' activation ranges. ``skipped`` and
    ``skipped_tasks``: (entry name, why) for entries that were not measured."""
    cpu, flags, cpus = cpu_description()
    from PIL import __version__ as pillow

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
    ]
    if not args.tasks_only:
        lines += render_classifiers(results, args, cpu, flags, skipped or [])
    if args.tasks:
        lines += render_tasks(tasks or [], args, skipped_tasks or [])
    if not args.tasks_only:
        lines += render_ranges(results)
    return "\n".join(lines).rstrip() + "\n"


def render_classifiers(results: list[ModelResult], args: argparse.Namespace, cpu: str,
                       flags: list[str], skipped: list[tuple[str, str]]) -> list[str]:
    our = [c.label for c in args.configs]
    lines = [
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
                     f"{e.test.description}"
                     + (f"; methods run (to keep the run short; the others show —): "
                        f"onnxquant {', '.join(e.methods or ['all'])}, ONNX Runtime "
                        f"{', '.join(e.ort_methods or ['all'])}"
                        if e.methods is not None or e.ort_methods is not None else "")
                     + ("" if e.kernel_checks else "; no integer-kernel or int8 runs")
                     + ".")
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
        if not r.entry.kernel_checks:
            continue
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
    if notes or errors or missing or skipped:
        lines += ["", "## Notes", ""]
        lines += [f"- {name}: not measured: {why}." for name, why in skipped]
        if missing:
            lines.append(f"- Not built in this onnxquant (`compute_range` raised "
                         f"NotImplementedError): {', '.join(missing)}.")
        lines += [f"- {name}: {n}" for name, n in notes]
        lines += [f"- {name}: {run.label} ({run.kernels}, {run.activations}) failed: "
                  f"`{run.error.splitlines()[0]}`" for name, run in errors]
    return lines + [""]


def fmt_metric(column: Column, value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return column.fmt.format(value)


def render_tasks(results: list[TaskResult], args: argparse.Namespace,
                 skipped: list[tuple[str, str]]) -> list[str]:
    ours, theirs = ", ".join(args.task_methods), ", ".join(args.task_ort_methods)
    lines = [
        "## Detectors, super-resolution and audio",
        "",
        ("Models of `../shared/zoo` without labels here: each INT8 model is compared with "
         "its FP32 model on the same evaluation samples, in the metric of its task (FP32's "
         "outputs serve as pseudo-labels). As for the classifiers, the graph normalised by "
         "`onnxquant.optimize_model` is the FP32 reference and the input of both tools; "
         f"onnxquant: one `Calibrator` collection, `compute_range(method)` for {ours}, then "
         "`quantize` with its defaults; ONNX Runtime: `quant_pre_process`"
         + ("" if args.ort_preprocess else " (skipped: `--no-ort-preprocess`)") +
         ", then `quantize_static` (QDQ, per-channel, QUInt8 activations, QInt8 weights, "
         f"its default options) with {theirs}; the same calibration samples, one `[1, ...]` "
         "sample per `get_next()`. INT8 runs with QDQ emulated in float "
         "(`session.disable_quant_qdq = 1`), every sample fed alone."),
        "",
        (f"- Face detectors: a detection is a box whose face score is at least "
         f"{FACE_SCORE_THRESHOLD} after greedy NMS at IoU {FACE_NMS_IOU} (Ultra-Light: "
         "`scores[..., 1]`, `boxes` × (320, 240); YuNet: score √(cls · obj), each clamped to "
         "0..1, boxes decoded anchor-free as OpenCV's FaceDetectorYN does: centre ((col, "
         "row) + bbox[0:2]) · stride, size exp(bbox[2:4]) · stride, strides 8/16/32). INT8 "
         "detections, highest score first, are matched greedily to FP32's at IoU ≥ "
         f"{FACE_MATCH_IOU}: precision = matched / INT8 detections, recall = matched / FP32 "
         "detections, F1, mean IoU of the matched pairs. Score r: Pearson correlation of "
         "the face score of every anchor (4420 or 2100 per image) over the evaluation "
         "images, with the largest absolute difference."),
    ]
    seen = set()
    for r in results:
        for n in r.entry.notes:
            if n not in seen:
                seen.add(n)
                lines.append(f"- {n}")
    for r in results:
        e = r.entry
        lines.append(f"- **{e.name}**: `{os.path.relpath(e.path, REPO)}`; calibration: "
                     f"{e.calibration_description}; evaluation: "
                     f"{e.evaluation_description}.")
    for group, (title, columns) in TASK_GROUPS.items():
        group_results = [r for r in results if r.entry.group == group]
        if not group_results:
            continue
        lines += ["", f"### {title}", ""]
        rows = []
        for r in group_results:
            fp32_row = [r.entry.name, "—", "FP32"] + [
                fmt_metric(c, r.fp32.get(c.key)) if c.fp32 else "" for c in columns]
            rows.append(fp32_row)
            if r.entry.reference:
                rows.append([r.entry.name, "—", "bicubic (no model)"] + [
                    fmt_metric(c, r.entry.reference.get(c.key)) if c.key in
                    r.entry.reference else "" for c in columns])
            for run in r.runs:
                cells = (["failed"] + [""] * (len(columns) - 1) if run.error else
                         [fmt_metric(c, run.metrics.get(c.key)) for c in columns])
                rows.append([r.entry.name, run.tool, run.method] + cells)
        lines += table(["model", "tool", "method"] + [c.header for c in columns], rows,
                       ["---", "---", "---"] + ["---:"] * len(columns))
    errors = [(r.entry.name, run) for r in results for run in r.runs if run.error]
    notes = [(r.entry.name, n) for r in results for n in r.notes if n not in r.entry.notes]
    if skipped or errors or notes:
        lines += ["", "### Notes on these models", ""]
        lines += [f"- {name}: not measured: `{why}`." for name, why in skipped]
        lines += [f"- {name}: {n}" for name, n in notes]
        lines += [f"- {name}: {run.tool} {run.method} failed: `{run.error}`"
                  for name, run in errors]
    return lines + [""]


def render_ranges(results: list[ModelResult]) -> list[str]:
    lines = ["", "## Activation ranges per tensor", "",
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
    return lines


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    methods = [m.name for m in oq.CalibrationMethod]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=DEFAULT_ZOO,
                    help="the zoo folder (default $ONNXQUANT_ZOO or ../shared/zoo)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                    help="classifier entries to run (default: all but the -dynamo ones); an "
                         "entry whose model file is missing is skipped with a note")
    labels = [c.label for c in our_configs(True)]
    ap.add_argument("--cifar-methods", nargs="+", choices=labels, default=list(CIFAR_METHODS),
                    metavar="METHOD",
                    help="onnxquant columns run on the models/cifar networks (default "
                         "%(default)s; a label with a keyword is quoted whole)")
    ap.add_argument("--cifar-ort-methods", nargs="+", choices=ORT_METHODS,
                    default=list(CIFAR_ORT_METHODS),
                    help="ONNX Runtime methods run on the models/cifar networks "
                         "(default %(default)s)")
    ap.add_argument("--no-cifar-kernels", dest="cifar_kernels", action="store_false",
                    help="leave out the integer-kernel and int8 runs on the models/cifar "
                         "networks")
    ap.add_argument("--no-tasks", dest="tasks", action="store_false",
                    help="leave out the detectors, super-resolution and audio section")
    ap.add_argument("--tasks-only", action="store_true",
                    help="run only the detectors, super-resolution and audio section")
    ap.add_argument("--tasks", dest="task_keys", nargs="+", choices=list(TASKS),
                    default=list(TASKS), help="task entries to run (default all)")
    ap.add_argument("--task-methods", nargs="+", choices=methods, default=list(TASK_METHODS),
                    help="onnxquant methods of the task section (default %(default)s)")
    ap.add_argument("--task-ort-methods", nargs="+", choices=ORT_METHODS,
                    default=list(TASK_ORT_METHODS),
                    help="ONNX Runtime methods of the task section (default %(default)s)")
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
    if args.tasks_only and not args.tasks:
        ap.error("--tasks-only and --no-tasks exclude each other")
    args.configs = our_configs(args.variants)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice and progress
    ort.set_default_logger_severity(3)  # unused-initializer warnings of the zoo's models
    start = time.perf_counter()
    results, skipped = [], []
    for key in [] if args.tasks_only else args.models:
        t = time.perf_counter()
        try:
            entry = MODELS[key](args.zoo)
        except MissingModel as e:
            log(f"{e.name}: skipped: {e}")
            skipped.append((e.name, str(e)))
            continue
        if entry.path.startswith(CIFAR_DIR + os.sep):
            entry = dataclasses.replace(entry, methods=tuple(args.cifar_methods),
                                        ort_methods=tuple(args.cifar_ort_methods),
                                        kernel_checks=args.cifar_kernels)
        if args.quick:
            entry = dataclasses.replace(
                entry, test=entry.test.subset(QUICK_TEST),
                validation=entry.validation.subset(QUICK_VALIDATION) if entry.validation
                else None)
        log(f"{entry.name}: data loaded in {time.perf_counter() - t:.1f} s")
        with tempfile.TemporaryDirectory(prefix="oq-accuracy-") as workdir:
            try:
                results.append(measure(entry, args, workdir))
            except EntryFailed as e:
                log(f"{entry.name}: {e}")
                skipped.append((entry.name, str(e)))
                continue
        log(f"{entry.name}: {results[-1].seconds:.1f} s")
    tasks, skipped_tasks = [], []
    for key in args.task_keys if args.tasks else []:
        t = time.perf_counter()
        try:
            entries = TASKS[key](args.zoo)
        except Exception as e:  # noqa: BLE001 - e.g. a missing zoo file: reported
            log(f"{key}: skipped: {first_line(e)}")
            skipped_tasks.append((key, first_line(e)))
            continue
        log(f"{key}: data loaded in {time.perf_counter() - t:.1f} s")
        for entry in entries:
            log(entry.name)
            with tempfile.TemporaryDirectory(prefix="oq-accuracy-") as workdir:
                try:
                    tasks.append(measure_task(entry, args, workdir))
                except EntryFailed as e:
                    log(f"{entry.name}: {e}")
                    skipped_tasks.append((entry.name, str(e)))
                    continue
            log(f"{entry.name}: {tasks[-1].seconds:.1f} s")
    report = render(results, args, time.perf_counter() - start, tasks, skipped,
                    skipped_tasks)
    print(report, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
