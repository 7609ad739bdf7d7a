"""Per-layer analysis of an INT8 model against its FP32 original: :func:`analyze`.

For every tensor the quantized model carries through a QuantizeLinear /
DequantizeLinear pair, on the same samples:

- ``alone_db``: the SQNR of that tensor when only its own Q/DQ pair is in the
  FP32 model (the FP32 tensor against its quantize-dequantize with the scale
  and zero point the quantized model gives it): the error its range alone
  adds, rounding and clipping;
- ``accumulated_db``: the SQNR of the quantized model's tensor (every layer
  quantized, QDQ emulated in float) against the FP32 model's: the error
  carried from the input up to it;
- the range each calibration method would choose for it, from the
  calibrator's histograms (one collection serves every method);
- the range guard: the share of the observed values the quantized range
  clips, and the share of the nonzero ones smaller than one quantization
  step (both from the histogram). A range that clips a tensor feeding a graph
  output, clips more than ``clip_limit`` of any tensor, or, shared by a
  Concat, leaves more than ``resolution_limit`` of one input's nonzero values
  below one step, is flagged and warned about (:class:`RangeWarning`) with a
  remedy that works.

SQNR = ``10 log10(sum x^2 / sum (x - x_q)^2)`` in dB over all samples; lower
is worse. Plots need matplotlib and ``to_dataframe`` pandas (the ``analysis``
extra: ``pip install onnxquant[analysis]``); the rest does not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx
import onnx.numpy_helper

from onnxquant import _core
from onnxquant._model import NORMALIZED_KEY, ModelLike, get_metadata, load_model
from onnxquant._samples import batch_samples, input_specs
from onnxquant._softmax_range import SOFTMAX_OUTPUT_RANGE
from onnxquant.calibrator import _BOUNDED_OUTPUT_OPS, CalibrationMethod, Calibrator
from onnxquant.errors import InvalidArgumentError, MissingExtraError

__all__ = [
    "LayerAnalysis",
    "MissingExtraError",
    "RangeWarning",
    "TensorAnalysis",
    "analyze",
    "fake_quantize",
    "figure_name",
    "range_shares",
    "sqnr_db",
]

#: Every calibration method, the default of ``analyze(methods=...)``.
ALL_METHODS = tuple(CalibrationMethod)

_QTYPES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
           onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767)}


class RangeWarning(UserWarning):
    """A quantized range clips a tensor feeding a graph output, clips more than
    the allowed share of a tensor, or (shared by a Concat) loses the
    resolution of one of its inputs. The message names the tensor and a
    remedy."""


def _require(module: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            "pip install 'onnxquant[analysis]' (or pip install "
            f"{module.split('.')[0]}).") from e


@dataclass(frozen=True)
class TensorAnalysis:
    """One quantized tensor's figures (see the module's docstring).

    ``low``/``high``: the range the quantized model represents
    (``(qmin - zero_point) * scale``, ``(qmax - zero_point) * scale``).
    ``clipped``: share of the histogram's values outside that range by more
    than half a step. ``below_step``: share of its nonzero values with
    ``|x| < scale``, which quantize to at most one step. ``feeds_output``: a
    graph output, or a tensor that reaches one through ops that only move or
    map its values (Concat, Reshape, Transpose, Slice, Relu, Sigmoid, ...). ``method_ranges``:
    ``{method name: (min, max)}``. ``shared_with``: the other tensors of a
    Concat that share its parameters. ``range_of``: the tensor whose range
    sets its parameters (itself, or the input of a MaxPool/Reshape/... or the
    output of a Concat it shares them with): the key of ``ranges`` to change,
    and the tensor ``method_ranges`` are given for. ``flags``: ``"clips_output"``,
    ``"clips"``, ``"shared_resolution"``; ``remedy``: what to do about them
    ("" when unflagged), in words and as data: ``remedy_exclude_nodes`` (pass
    them to ``quantize(exclude_nodes=...)``) and ``remedy_methods`` (methods
    whose range would not be flagged for clipping). NaN where no histogram of
    the tensor exists. ``fixed_range``: its parameters are those
    :func:`~onnxquant.quantize` fixes for a Softmax output (the range
    [0, 255/256], scale 1/256 in 8 bits; 1/65536 in int16), taken whatever
    calibration gave:
    ``low``/``high`` show that range, ``method_ranges`` what each method
    would have given (which quantize replaces unless the Softmax node's
    ``overrides`` entry says ``{"output_range": "calibrated"}``).
    """

    tensor: str
    node: str
    op_type: str
    scale: float
    zero_point: int
    low: float
    high: float
    alone_db: float
    accumulated_db: float
    clipped: float
    below_step: float
    feeds_output: bool
    shared_with: tuple[str, ...] = ()
    range_of: str = ""
    method_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    remedy: str = ""
    remedy_exclude_nodes: tuple[str, ...] = ()
    remedy_methods: tuple[str, ...] = ()
    fixed_range: bool = False


class LayerAnalysis(list):
    """The list of :class:`TensorAnalysis` records :func:`analyze` returns, in
    graph order, with helpers: :meth:`flagged`, :meth:`to_dataframe`,
    :meth:`plot_sqnr`, :meth:`plot_histogram`; ``str()`` is a table.

    ``histograms``: ``{tensor: (low edge, bin width, counts)}`` the guard and
    the method ranges were read from; ``num_samples``: the samples the SQNRs
    were measured on."""

    def __init__(self, records: Iterable[TensorAnalysis], histograms, num_samples: int):
        super().__init__(records)
        self.histograms = histograms
        self.num_samples = num_samples

    def record(self, tensor: str) -> TensorAnalysis:
        """The record of ``tensor``; KeyError when it is not quantized."""
        for r in self:
            if r.tensor == tensor:
                return r
        raise KeyError(tensor)

    def flagged(self) -> list[TensorAnalysis]:
        """The records the range guard flagged."""
        return [r for r in self if r.flags]

    def to_dataframe(self):
        """A pandas DataFrame, one row per tensor (method ranges as
        ``<METHOD>_min``/``<METHOD>_max`` columns). Needs pandas."""
        pd = _require("pandas", "LayerAnalysis.to_dataframe")
        rows = []
        for r in self:
            row = {k: v for k, v in asdict(r).items() if k != "method_ranges"}
            row["shared_with"] = ",".join(r.shared_with)
            row["flags"] = ",".join(r.flags)
            for m, (lo, hi) in r.method_ranges.items():
                row[f"{m}_min"], row[f"{m}_max"] = lo, hi
            rows.append(row)
        return pd.DataFrame(rows)

    def plot_sqnr(self, ax=None):
        """SQNR per tensor in graph order: alone and accumulated. Returns the
        matplotlib Axes. Needs matplotlib."""
        plt = _require("matplotlib.pyplot", "LayerAnalysis.plot_sqnr")
        if ax is None:
            _, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(self) + 2), 4))
        x = np.arange(len(self))
        clip = 150.0  # inf (an exact tensor) drawn at the top
        alone = [min(r.alone_db, clip) for r in self]
        acc = [min(r.accumulated_db, clip) for r in self]
        ax.plot(x, alone, "o-", label="alone (only this tensor quantized)")
        ax.plot(x, acc, "s-", label="accumulated (every layer quantized)")
        for i, r in enumerate(self):
            if r.flags:
                ax.axvline(i, color="red", alpha=0.25, lw=6)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r.tensor} ({r.op_type})" for r in self], rotation=70,
                           ha="right", fontsize=7)
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(f"SQNR per tensor, {self.num_samples} samples (red: flagged range)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax

    def plot_histogram(self, tensor: str, ax=None, methods: Sequence[str] | None = None):
        """``tensor``'s histogram (log counts) with each method's range
        (dashed) and the quantized model's range (shaded). Needs matplotlib."""
        plt = _require("matplotlib.pyplot", "LayerAnalysis.plot_histogram")
        r = self.record(tensor)
        if tensor not in self.histograms:
            raise InvalidArgumentError(f"No histogram of tensor '{tensor}' was collected.")
        lo, width, counts = self.histograms[tensor]
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3.5))
        edges = lo + width * np.arange(len(counts) + 1)
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, alpha=0.5, color="grey",
                  baseline=0.5)
        ax.set_yscale("log")
        ax.axvspan(r.low, r.high, color="tab:green", alpha=0.12, label="quantized range")
        names = list(r.method_ranges) if methods is None else list(methods)
        cmap = plt.get_cmap("tab10")
        for i, name in enumerate(names):
            a, b = r.method_ranges[name]
            style = {"color": cmap(i % 10), "ls": "--" if i % 2 else ":", "lw": 1.2}
            ax.axvline(a, **style, label=f"{name} [{a:.3g}, {b:.3g}]")
            ax.axvline(b, **style)
        ax.set_title(f"{tensor} ({r.op_type}): clipped {r.clipped:.2%}, "
                     f"below one step {r.below_step:.2%}")
        ax.set_xlabel("value")
        ax.set_ylabel("count")
        ax.legend(fontsize=6, loc="upper right")
        ax.figure.tight_layout()
        return ax

    def __str__(self) -> str:
        head = (f"{'tensor':32s} {'op':14s} {'alone dB':>9s} {'accum dB':>9s} "
                f"{'min':>10s} {'max':>10s} {'clipped':>8s} {'<1 step':>8s}  flags")
        lines = [head]
        def share(x: float) -> str:
            return f"{'-':>8s}" if math.isnan(x) else f"{x:8.2%}"

        for r in self:
            lines.append(f"{r.tensor[:32]:32s} {r.op_type[:14]:14s} {r.alone_db:9.2f} "
                         f"{r.accumulated_db:9.2f} {r.low:10.4g} {r.high:10.4g} "
                         f"{share(r.clipped)} {share(r.below_step)}  {','.join(r.flags)}")
        for r in self.flagged():
            lines.append(f"! {r.tensor}: {r.remedy}")
        fixed = [r.tensor for r in self if r.fixed_range]
        if fixed:
            lines.append("Fixed Softmax output range, [0, 255/256] or [0, 65535/65536] in "
                         "int16 (quantize; no calibration "
                         f"method changes it): {', '.join(fixed)}")
        if any(math.isnan(r.clipped) for r in self):
            lines.append("- : no histogram of that tensor (it shares its producer's "
                         "parameters, or the calibrator did not observe it)")
        return "\n".join(lines)


def figure_name(tensor: str) -> str:
    """``histogram_<tensor>.png`` with characters other than letters, digits,
    ``-``, ``_`` and ``.`` replaced by ``_``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tensor)
    return f"histogram_{safe}.png"


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; inf for no noise, -inf for no signal."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int = 0,
                  qmax: int = 255) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear, as ONNX Runtime computes them in
    float32: ``(clip(rint(x / scale) + zp, qmin, qmax) - zp) * scale``."""
    s = np.float32(scale)
    q = np.clip(np.rint(np.asarray(x, np.float32) / s) + np.float32(zero_point), qmin, qmax)
    return ((q - np.float32(zero_point)) * s).astype(np.float32)


@dataclass(frozen=True)
class _QParams:
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def low(self) -> float:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def high(self) -> float:
        return (self.qmax - self.zero_point) * self.scale


def _qparams(int8: onnx.ModelProto, carried: Mapping[str, str]) -> dict[str, _QParams]:
    """FP32 tensor -> the scale and zero point of the DequantizeLinear that
    carries it in the quantized model (per-tensor activations)."""
    consts = {t.name: t for t in int8.graph.initializer}
    for n in int8.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    by_output = {n.output[0]: n for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for tensor, dq_name in carried.items():
        dq = by_output.get(dq_name)
        if dq is None or dq.input[1] not in consts:
            continue
        scale = onnx.numpy_helper.to_array(consts[dq.input[1]])
        if scale.size != 1:
            continue
        zp, elem = 0, onnx.TensorProto.UINT8
        if len(dq.input) > 2 and dq.input[2] in consts:
            zp_tensor = consts[dq.input[2]]
            zp, elem = int(onnx.numpy_helper.to_array(zp_tensor).reshape(-1)[0]), \
                zp_tensor.data_type
        qmin, qmax = _QTYPES.get(elem, (0, 255))
        out[tensor] = _QParams(float(scale.reshape(-1)[0]), zp, qmin, qmax)
    return out


def _spread(lo: float, width: float, counts: np.ndarray, vmin: float, vmax: float):
    """Each bin's interval, narrowed to the observed [vmin, vmax] (values taken
    as uniform within it)."""
    k = np.arange(len(counts))
    a = np.maximum(lo + k * width, vmin)
    b = np.minimum(lo + (k + 1) * width, vmax)
    return a, np.maximum(b, a)


def _share_inside(a: np.ndarray, b: np.ndarray, counts: np.ndarray, x0: float,
                  x1: float) -> float:
    """How many of the counts fall in (x0, x1), each bin's spread uniformly over
    [a, b] (a point where a == b)."""
    span = b - a
    overlap = np.clip(np.minimum(b, x1) - np.maximum(a, x0), 0, None)
    frac = np.where(span > 0, overlap / np.where(span > 0, span, 1),
                    ((a > x0) & (a < x1)).astype(float))
    return float(np.sum(counts * frac))


def range_shares(histogram, stats: Mapping[str, float], low: float, high: float,
                 step: float) -> tuple[float, float]:
    """``(clipped, below_step)`` of one tensor's histogram (``(low edge, bin
    width, counts)``, with the calibrator's ``stats`` of that tensor) under a
    range ``[low, high]`` of quantization step ``step``: the share of its
    values outside ``[low - step/2, high + step/2]``, and the share of its
    nonzero values with ``|x| < step``. Values are taken as uniform within a
    bin, and within the exact observed [min, max]."""
    lo, width, counts = histogram
    counts = np.asarray(counts, dtype=np.float64)
    total = float(stats["count"])
    if total == 0 or len(counts) == 0:
        return math.nan, math.nan
    vmin, vmax = float(stats["min"]), float(stats["max"])
    a, b = _spread(lo, width, counts, vmin, vmax)
    half = step / 2
    if vmin >= low - half and vmax <= high + half:
        clipped = 0.0
    else:
        clipped = 1.0 - _share_inside(a, b, counts, low - half, high + half) / total
    nonzero = counts.copy()
    zero_bin = math.floor(-lo / width) if width > 0 else -1
    zeros = float(stats.get("zeros", 0))
    if 0 <= zero_bin < len(nonzero):
        nonzero[zero_bin] -= zeros
    if total - zeros <= 0:
        return max(clipped, 0.0), 0.0
    below = _share_inside(a, b, nonzero, -step, step) / (total - zeros)
    return max(clipped, 0.0), min(max(below, 0.0), 1.0)


def _fp32_model(model: ModelLike) -> onnx.ModelProto:
    fp32 = load_model(model)
    if get_metadata(fp32, NORMALIZED_KEY) is None:
        from onnxquant.optimize import optimize_model

        fp32 = optimize_model(fp32)
    return fp32


def _samples_list(samples) -> object:
    if isinstance(samples, (np.ndarray, Sequence)):
        return samples
    return list(samples)


def analyze(model: ModelLike, quantized: ModelLike, samples: Iterable[object], *,
            calibrator: Calibrator | None = None,
            methods: Iterable[CalibrationMethod | str] = ALL_METHODS,
            clip_limit: float = 0.01, resolution_limit: float = 0.5,
            warn: bool = True, batch_size: int = 32) -> LayerAnalysis:
    """Per-layer analysis of ``quantized`` against ``model`` on ``samples``.

    Args:
        model: the FP32 model ``quantized`` was made from: the output of
            :func:`~onnxquant.optimize_model` (a model without its stamp is
            normalised first, which gives the same tensor names).
        quantized: the output of :func:`~onnxquant.quantize`.
        samples: as :meth:`Calibrator.collect_data` takes them; the SQNRs are
            measured on them (an iterator is read into a list).
        calibrator: the :class:`~onnxquant.Calibrator` the ranges came from
            (default None). Its histograms give the method ranges and the
            guard's shares (the calibration data's values). Tensors it did not
            observe (those that take another tensor's parameters, such as the
            inputs of a Concat), and all tensors without it, get histograms
            of their FP32 values on ``samples``.
        methods: the calibration methods whose ranges are reported (default:
            all ten).
        clip_limit: the share of a tensor's values its range may clip before
            it is flagged (default 0.01). A tensor feeding a graph output is
            flagged when its range clips any value.
        resolution_limit: the share of a Concat input's nonzero values that
            may fall below one step of the Concat's shared range before it is
            flagged (default 0.5).
        warn: issue a :class:`RangeWarning` for each flagged tensor (default
            True).
        batch_size: samples run together where the batch dim is dynamic.

    Returns:
        A :class:`LayerAnalysis`: one :class:`TensorAnalysis` per tensor the
        quantized model quantizes, in graph order.

    Raises:
        InvalidArgumentError: a limit outside [0, 1] or an unknown method.
        CalibrationDataError: a sample that does not fit the model.
    """
    for name, value in (("clip_limit", clip_limit), ("resolution_limit", resolution_limit)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value <= 1.0:
            raise InvalidArgumentError(f"{name} must be a share in [0, 1], got {value!r}.")
    method_names = []
    for m in methods:
        try:
            method_names.append(CalibrationMethod[m.upper()].name if isinstance(m, str)
                                else CalibrationMethod(m).name)
        except (KeyError, ValueError) as e:
            raise InvalidArgumentError(
                f"Unknown calibration method {m!r}; choose among "
                f"{', '.join(x.name for x in CalibrationMethod)}.") from e
    from onnxquant.analysis import _dequantized_names

    fp32, int8 = _fp32_model(model), load_model(quantized)
    samples = _samples_list(samples)
    carried = _dequantized_names(fp32, int8)
    qparams = _qparams(int8, carried)
    order = [v.name for v in fp32.graph.input] + \
        [o for n in fp32.graph.node for o in n.output]
    names = [t for t in order if t in qparams]
    producer = {o: n for n in fp32.graph.node for o in n.output}
    # Histograms: the calibrator's; those it lacks (tensors that take another
    # tensor's parameters, such as a Concat's inputs, or all without one) are
    # collected from the FP32 values of the samples, in the same pass as the
    # SQNRs.
    known = calibrator.statistics() if calibrator is not None else {}
    missing = [t for t in names if t not in known]
    own = _core.HistogramSet(missing) if missing else None
    alone_sig, alone_noise, acc_noise, count = _measure(fp32, int8, names, carried, qparams,
                                                        samples, batch_size, own)
    stats = {t: known[t] for t in names if t in known}
    histograms = {t: calibrator.histogram(t) for t in stats}
    method_ranges = {m: calibrator.compute_range(m) for m in method_names} \
        if calibrator is not None else {m: {} for m in method_names}
    if own is not None:
        stats.update(own.stats())
        histograms.update({t: own.histogram(t) for t in missing})
        percentage = getattr(calibrator, "_percentage", 99.99)
        zero_spike = getattr(calibrator, "_ignore_zero_spike", True)
        clip_bounded = getattr(calibrator, "_clip_bounded_outputs", False)
        for m in method_names:
            found = own.compute_ranges(int(CalibrationMethod[m]), percentage, zero_spike, 1)
            if not clip_bounded and not m.startswith("MIN_MAX"):
                whole = own.compute_ranges(int(CalibrationMethod[
                    "MIN_MAX_SYM" if m.endswith("_SYM") else "MIN_MAX_ASYM"]), 1)
                found.update({t: whole[t] for t in missing if producer.get(t) is not None
                              and producer[t].op_type in _BOUNDED_OUTPUT_OPS})
            method_ranges[m].update({t: (float(a), float(b)) for t, (a, b) in found.items()
                                     if stats[t]["count"] > 0})
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    feeds_output = _feeding_outputs(fp32, consumers)
    shared = _shared_groups(fp32, qparams)
    owner = _range_owners(fp32, qparams, names)
    records = []
    for t in names:
        q = qparams[t]
        clipped, below = (range_shares(histograms[t], stats[t], q.low, q.high, q.scale)
                          if t in histograms else (math.nan, math.nan))
        node = producer.get(t)
        group = shared.get(t)
        r = TensorAnalysis(
            tensor=t, node=node.name if node is not None else "",
            op_type=node.op_type if node is not None else "input", scale=q.scale,
            zero_point=q.zero_point, low=q.low, high=q.high,
            alone_db=sqnr_db(alone_sig[t], alone_noise[t]),
            accumulated_db=sqnr_db(alone_sig[t], acc_noise[t]), clipped=clipped,
            below_step=below, feeds_output=t in feeds_output,
            shared_with=tuple(x for x in group[1] if x != t) if group else (),
            range_of=owner[t],
            method_ranges={m: r[owner[t]] for m, r in method_ranges.items() if owner[t] in r},
            fixed_range=_fixed_softmax_range(producer.get(owner[t]), q))
        flags, remedy, exclude, better = _guard(
            r, group, consumers, histograms.get(t), stats.get(t), clip_limit,
            resolution_limit, producer[owner[t]].name if r.fixed_range else "")
        if flags:
            r = replace(r, flags=flags, remedy=remedy, remedy_exclude_nodes=exclude,
                        remedy_methods=better)
        records.append(r)
    result = LayerAnalysis(records, histograms, count)
    if warn:
        for r in result.flagged():
            warnings.warn(f"Range of tensor '{r.tensor}' [{r.low:.4g}, {r.high:.4g}] "
                          f"({', '.join(r.flags)}): {r.remedy}", RangeWarning, stacklevel=2)
    return result


def _measure(fp32, int8, names, carried, qparams, samples, batch_size, histograms):
    """Signal, noise of the tensor's own Q/DQ pair, and noise of the whole
    quantized model, per tensor, accumulated over the samples; the FP32
    values of the tensors ``histograms`` (a HistogramSet or None) names go
    into it."""
    import onnxruntime as ort

    from onnxquant.analysis import _session_with_outputs

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    quant_options = ort.SessionOptions()
    quant_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    quant_options.add_session_config_entry("session.disable_quant_qdq", "1")
    quant_options.log_severity_level = 3
    inputs = {v.name for v in fp32.graph.input}
    fetch = [t for t in names if t not in inputs]
    int8_names = [carried[t] for t in names]
    ref = _session_with_outputs(fp32, fetch, options) if fetch else None
    cand = _session_with_outputs(int8, int8_names, quant_options)
    signal = dict.fromkeys(names, 0.0)
    alone = dict.fromkeys(names, 0.0)
    acc = dict.fromkeys(names, 0.0)
    count = 0
    for feed, n in batch_samples(samples, input_specs(fp32), batch_size, 0):
        count += n
        values = dict(zip(fetch, ref.run(fetch, feed))) if ref is not None else {}
        values.update({t: feed[t] for t in names if t in inputs})
        quant = dict(zip(names, cand.run(int8_names, feed)))
        if histograms is not None:
            histograms.update({t: np.ascontiguousarray(values[t], dtype=np.float32)
                               for t in histograms.names})
        for t in names:
            x = np.asarray(values[t], np.float32)
            q = qparams[t]
            x64 = x.astype(np.float64)
            signal[t] += float(np.sum(x64 * x64))
            own = fake_quantize(x, q.scale, q.zero_point, q.qmin, q.qmax)
            alone[t] += float(np.sum((x64 - own) ** 2))
            acc[t] += float(np.sum((x64 - quant[t]) ** 2))
    return signal, alone, acc, count


# Ops whose output is made of their input's values, moved or mapped one by one:
# a tensor that reaches a graph output through them is what the output shows.
_PASS_THROUGH_OPS = frozenset({
    "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice",
    "Gather", "Split", "Expand", "Tile", "Cast", "Relu", "Clip", "Sigmoid", "Tanh", "Softmax",
    "LogSoftmax", "MaxPool"})


def _feeding_outputs(fp32: onnx.ModelProto, consumers) -> set[str]:
    """The graph outputs, and the tensors that reach one through
    _PASS_THROUGH_OPS only."""
    found = {o.name for o in fp32.graph.output}
    for n in reversed(fp32.graph.node):
        if n.op_type in _PASS_THROUGH_OPS and any(o in found for o in n.output):
            found.update(i for i in n.input[:1 if n.op_type != "Concat" else None] if i)
    return found


# Ops whose output takes its input's parameters (no requantization).
_SHARING_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
                          "Slice", "Gather", "Resize", "Pad"})


def _range_owners(fp32: onnx.ModelProto, qparams: Mapping[str, _QParams],
                  names: Sequence[str]) -> dict[str, str]:
    """Tensor -> the tensor whose range sets its parameters (the key of
    ``ranges`` to change): tensors joined by a sharing op or a Concat with
    equal parameters share one; it is the Concat's output where there is one,
    else the first in graph order."""
    parent = {t: t for t in names}

    def find(t: str) -> str:
        while parent[t] != t:
            t = parent[t]
        return t

    concat_outputs = set()
    for n in fp32.graph.node:
        if n.op_type == "Concat":
            concat_outputs.add(n.output[0])
            ins = [i for i in n.input if i]
        elif n.op_type in _SHARING_OPS:
            ins = n.input[:1]
        else:
            continue
        out = n.output[0]
        for i in ins:
            if i in qparams and out in qparams and qparams[i] == qparams[out]:
                a, b = find(i), find(out)
                if a != b:
                    parent[b] = a
    order = {t: k for k, t in enumerate(names)}
    members: dict[str, list[str]] = {}
    for t in names:
        members.setdefault(find(t), []).append(t)
    owner = {}
    for group in members.values():
        chosen = next((t for t in group if t in concat_outputs),
                      min(group, key=order.__getitem__))
        owner.update({t: chosen for t in group})
    return owner


def _shared_groups(fp32: onnx.ModelProto, qparams: Mapping[str, _QParams]):
    """Tensor -> (Concat node, its tensors) for the inputs and output of each
    quantized Concat whose inputs carry the output's parameters."""
    groups = {}
    for n in fp32.graph.node:
        if n.op_type != "Concat" or n.output[0] not in qparams:
            continue
        out = qparams[n.output[0]]
        members = [i for i in n.input if i in qparams and qparams[i] == out]
        if not members:
            continue
        members.append(n.output[0])
        for t in members:
            groups[t] = (n, tuple(members))
    return groups


def _fixed_softmax_range(node: onnx.NodeProto | None, q: _QParams) -> bool:
    """Whether the quantized range ``q`` of ``node``'s output is the one
    quantize fixes for a Softmax output (to half a step)."""
    return node is not None and node.op_type == "Softmax" and q.low == 0.0 and \
        abs(q.high - SOFTMAX_OUTPUT_RANGE[1]) <= 0.5 * q.scale


def _guard(r: TensorAnalysis, group, consumers, histogram, stats, clip_limit: float,
           resolution_limit: float, softmax_node: str = ""):
    """The flags of one record, and a remedy for them: in words, the nodes to
    keep float, the methods that would not clip. ``softmax_node``: the
    Softmax whose fixed output range the record's tensor takes, if any."""
    if histogram is None:
        return (), "", (), ()
    flags = []
    if r.feeds_output and r.clipped > 0:
        flags.append("clips_output")
    elif r.clipped > clip_limit:
        flags.append("clips")
    if group is not None and r.tensor != group[0].output[0] and \
            r.below_step > resolution_limit:
        flags.append("shared_resolution")
    if not flags:
        return (), "", (), ()
    remedies, exclude, better = [], [], []
    if "shared_resolution" in flags:
        concat = group[0]
        exclude.append(concat.name)
        remedies.append(
            f"{r.below_step:.0%} of its nonzero values are below one step ({r.scale:.3g}) of "
            f"the range Concat '{concat.name}' shares with {', '.join(r.shared_with)}, so "
            "they quantize to 0 or one step; no calibration method helps, since the shared "
            f"range must cover every input: keep the Concat float with "
            f"exclude_nodes=[{concat.name!r}] (each input then keeps its own range), or use "
            "16-bit activations (activation_type='int16': 256 times finer steps), for this "
            f"Concat alone with QuantOptions(overrides={{{concat.name!r}: "
            "{'activation_type': 'int16'}})")
    if ("clips_output" in flags or "clips" in flags) and r.fixed_range:
        nodes = sorted({*([r.node] if r.node else []),
                        *(c.name for c in consumers.get(r.tensor, ()))})
        exclude.extend(n for n in nodes if n not in exclude)
        remedies.append(
            f"it clips {r.clipped:.2%} of its observed values, with the fixed range "
            f"[0, 255/256] that quantize gives every Softmax output (no calibration method "
            f"changes it); for the calibrated range instead, QuantOptions(overrides="
            f"{{{softmax_node!r}: {{'output_range': 'calibrated'}}}}) (ONNX Runtime's CPU "
            f"QLinearSoftmax "
            f"may then return 0 for the largest probabilities), or keep it float with "
            f"exclude_nodes={nodes!r}")
    elif "clips_output" in flags or "clips" in flags:
        limit = 0.0 if "clips_output" in flags else clip_limit
        for m, (lo, hi) in r.method_ranges.items():
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            if range_shares(histogram, stats, lo, hi, (hi - lo) / 255)[0] <= limit:
                better.append(m)
        nodes = sorted({*([r.node] if r.node else []),
                        *(c.name for c in consumers.get(r.tensor, ()))})
        exclude.extend(n for n in nodes if n not in exclude)
        where = "a tensor feeding a graph output" if "clips_output" in flags else \
            "more than the allowed share"
        text = f"it clips {r.clipped:.2%} of its observed values ({where})"
        whose = "it" if r.range_of == r.tensor else \
            f"'{r.range_of}' (whose range it takes)"
        if better:
            text += (f"; calibrate {whose} with a method that does not: {', '.join(better)}"
                     f" (for this tensor alone: QuantOptions(overrides={{{r.range_of!r}: "
                     f"{{'method': {better[0]!r}}}}}))")
        text += f"; or keep it float with exclude_nodes={nodes!r}"
        remedies.append(text)
    text = "; ".join(remedies)
    if exclude:
        text += (" (a Calibrator built with the same exclude_nodes in its options, or with "
                 "collect='all', gives the ranges that plan needs)")
    return tuple(flags), text, tuple(exclude), tuple(better)
