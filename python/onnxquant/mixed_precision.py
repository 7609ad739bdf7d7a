"""Mixed precision driven by sensitivity: :func:`mixed_precision`.

The layers (quantized Conv, ConvTranspose, Gemm and MatMul nodes) are ranked
by the SQNR each loses in the base quantized model, from :func:`onnxquant.analyze`:
``sensitivity_db = accumulated SQNR of the layer's input - accumulated SQNR of
its output``, the error the layer itself adds (its weights' rounding and its
output's). The most sensitive are promoted one at a time (``promote_to``:
``"int16"``, 16-bit activations around the layer and int8 weights; or
``"float"``) until the budget is met:

- with a ``metric`` (a callable scoring a model, higher is better, e.g. top-1
  on held-out data): until ``metric(fp32) - metric(quantized) <= budget``,
  measuring the metric after each promotion, and never past ``max_share`` of
  the layers;
- without one: the ``max_share`` most sensitive layers are promoted.

This follows the automatic mixed precision of TI's TIDL and the search of AMD
Quark, in its simplest form: a greedy walk down one ranking, which costs one
analysis and one metric call per promotion (plus two).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import onnx

from onnxquant.errors import InvalidArgumentError

__all__ = ["LayerSensitivity", "MixedPrecisionResult", "Promotion", "mixed_precision",
           "rank_layers"]

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PROMOTIONS = ("int16", "float")
# Activations a layer's output range may absorb: their output is the layer's.
_ABSORBED_OPS = ("Relu", "Clip")


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's rank figures: the accumulated SQNR (dB) of its input and
    output in the base quantized model, and their difference."""

    node: str
    op_type: str
    input_db: float
    output_db: float
    sensitivity_db: float


@dataclass(frozen=True)
class Promotion:
    """A promoted layer: its sensitivity, the metric after promoting it (None
    without a metric), and why it was promoted, in words."""

    node: str
    op_type: str
    sensitivity_db: float
    metric_after: float | None
    reason: str


@dataclass(frozen=True)
class MixedPrecisionResult:
    """What :func:`mixed_precision` found.

    ``model``: the quantized model with the promotions; ``options``: the
    :class:`~onnxquant.QuantOptions` that give it (the base options with one
    override per promoted layer: pass them to ``quantize`` again);
    ``promoted``: the promotions, in order; ``ranking``: every layer, most
    sensitive first; ``fp32_metric``, ``base_metric``, ``final_metric``: the
    metric of the FP32 model, the base quantized one and the result (None
    without a metric); ``budget_met``: whether the drop is within ``budget``
    (with a metric; True without one).
    """

    model: onnx.ModelProto
    options: object
    promoted: tuple[Promotion, ...]
    ranking: tuple[LayerSensitivity, ...]
    fp32_metric: float | None
    base_metric: float | None
    final_metric: float | None
    budget_met: bool

    def __str__(self) -> str:
        lines = []
        if self.fp32_metric is not None:
            lines.append(f"metric: FP32 {self.fp32_metric:.4g}, base {self.base_metric:.4g}, "
                         f"final {self.final_metric:.4g} (budget "
                         f"{'met' if self.budget_met else 'not met'})")
        lines.append(f"{len(self.promoted)} of {len(self.ranking)} layers promoted")
        lines += [f"  {p.node} ({p.op_type}): {p.reason}" for p in self.promoted]
        return "\n".join(lines)


def _finite(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


def rank_layers(model: onnx.ModelProto, analysis) -> tuple[LayerSensitivity, ...]:
    """The layers of ``model`` (the normalised FP32 model) that ``analysis``
    (:func:`onnxquant.analyze` of a quantized form of it) covers, most
    sensitive first (ties in graph order). A layer's input SQNR is that of its
    first quantized input (60 dB above its output when none is quantized, so
    that such a layer ranks by its output alone); its output is its own
    output, or that of the Relu/Clip absorbed into it."""
    by_tensor = {r.tensor: r for r in analysis}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in _LAYER_OPS or not node.output:
            continue
        output = by_tensor.get(node.output[0])
        if output is None:
            after = consumers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type in _ABSORBED_OPS:
                output = by_tensor.get(after[0].output[0])
        if output is None:
            continue  # not quantized, or its output stays float
        out_db = _finite(output.accumulated_db, 200.0)
        inputs = [by_tensor[i] for i in node.input if i in by_tensor]
        in_db = _finite(inputs[0].accumulated_db, 200.0) if inputs else out_db + 60.0
        out.append((index, LayerSensitivity(node.name, node.op_type, in_db, out_db,
                                            in_db - out_db)))
    out.sort(key=lambda p: (-p[1].sensitivity_db, p[0]))
    return tuple(s for _, s in out)


def _override(node: onnx.NodeProto, promote_to: str,
              initializers: set[str]) -> dict[str, str]:
    if promote_to == "float":
        return {"activation_type": "float"}
    entry = {"activation_type": "int16"}
    if any(i in initializers for i in node.input[:2]):
        entry["weight_type"] = "int8"
    return entry


def mixed_precision(model, calibrator, samples: Iterable[object],
                    metric: Callable[[onnx.ModelProto], float] | None = None, *,
                    budget: float = 1.0, max_share: float = 0.25,
                    options=None, promote_to: str = "int16",
                    ranges: Mapping[str, tuple[float, float]] | None = None
                    ) -> MixedPrecisionResult:
    """Promotes the most sensitive layers of a quantized model to higher
    precision until a budget is met (module docstring).

    Args:
        model: the normalised FP32 model (:func:`~onnxquant.optimize_model`'s
            output, a ModelProto).
        calibrator: the :class:`~onnxquant.Calibrator` of ``model`` built with
            ``options`` (with ``promote_to="float"``, with ``collect="all"``:
            a float layer changes which tensors are planned).
        samples: the samples the sensitivities are measured on (as
            :func:`~onnxquant.analyze` takes them; a few dozen suffice).
        metric: scores a model (an ``onnx.ModelProto``), higher is better, in
            the unit of ``budget`` (e.g. top-1 % on held-out data). None: the
            budget is ``max_share`` alone.
        budget: the largest drop of ``metric`` from FP32 allowed (default 1.0).
        max_share: the largest share of the layers promoted, in [0, 1]
            (default 0.25); without a metric, exactly that share (rounded up).
        options: the base :class:`~onnxquant.QuantOptions` (default: the
            calibrator's), e.g. ``QuantOptions(weight_type="int4")``.
        promote_to: ``"int16"`` (default: int16 activations read and written
            by the layer, int8 weights) or ``"float"``.
        ranges: the ranges to quantize with (default:
            ``calibrator.compute_range()``).

    Returns:
        A :class:`MixedPrecisionResult`.

    Raises:
        InvalidArgumentError: an argument outside its domain.
    """
    from onnxquant.analyze import analyze
    from onnxquant.quantize import QuantOptions, quantize

    if promote_to not in _PROMOTIONS:
        raise InvalidArgumentError(
            f"promote_to must be 'int16' or 'float', got {promote_to!r}.")
    if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or \
            not 0.0 <= max_share <= 1.0:
        raise InvalidArgumentError(f"max_share must be a share in [0, 1], got {max_share!r}.")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or \
            not math.isfinite(budget) or budget < 0:
        raise InvalidArgumentError(f"budget must be a number >= 0, got {budget!r}.")
    if metric is not None and not callable(metric):
        raise InvalidArgumentError(
            f"metric must be a callable scoring a model, got {type(metric).__name__}.")
    if not isinstance(model, onnx.ModelProto):
        raise InvalidArgumentError(
            f"model must be the onnx.ModelProto optimize_model returned, got "
            f"{type(model).__name__}.")
    if options is None:
        options = calibrator.options
    elif not isinstance(options, QuantOptions):
        raise InvalidArgumentError(
            f"options must be a QuantOptions, got {type(options).__name__}.")
    if ranges is None:
        ranges = calibrator.compute_range()
    samples = list(samples)

    def build(opts):
        return quantize(model, ranges, options=opts, calibrator=calibrator)

    base = build(options)
    analysis = analyze(model, base, samples, calibrator=calibrator, methods=(), warn=False)
    ranking = rank_layers(model, analysis)
    nodes = {n.name: n for n in model.graph.node}
    initializers = {t.name for t in model.graph.initializer}
    limit = math.ceil(max_share * len(ranking) - 1e-9)
    fp32_metric = float(metric(model)) if metric is not None else None
    base_metric = float(metric(base)) if metric is not None else None
    current, current_metric = base, base_metric
    overrides = dict(options.overrides)
    promoted: list[Promotion] = []

    def within(value: float | None) -> bool:
        return value is not None and fp32_metric - value <= budget

    for rank, layer in enumerate(ranking[:limit], start=1):
        if metric is not None and within(current_metric):
            break
        overrides[layer.node] = _override(nodes[layer.node], promote_to, initializers)
        opts = replace(options, overrides=dict(overrides))
        current = build(opts)
        current_metric = float(metric(current)) if metric is not None else None
        why = (f"rank {rank} of {len(ranking)}: loses {layer.sensitivity_db:.1f} dB of SQNR "
               f"({layer.input_db:.1f} dB in, {layer.output_db:.1f} dB out)")
        if metric is not None:
            why += (f"; promoted to {promote_to} because the drop was "
                    f"{fp32_metric - (promoted[-1].metric_after if promoted else base_metric):.3g}"
                    f" > budget {budget:g}; drop after: {fp32_metric - current_metric:.3g}")
        else:
            why += f"; promoted to {promote_to} (within max_share {max_share:g})"
        promoted.append(Promotion(layer.node, layer.op_type, layer.sensitivity_db,
                                  current_metric, why))
        options_now = opts
    final_options = options_now if promoted else options
    return MixedPrecisionResult(
        model=current, options=final_options, promoted=tuple(promoted), ranking=ranking,
        fp32_metric=fp32_metric, base_metric=base_metric, final_metric=current_metric,
        budget_met=True if metric is None else within(current_metric))
