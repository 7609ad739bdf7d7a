"""Mixed precision driven by sensitivity: :func:`mixed_precision`.

The layers (quantized Conv, ConvTranspose, Gemm and MatMul nodes) are ranked
by sensitivity, measured on a few samples in one of two ways:

- ``sensitivity="promote"`` (default): the SQNR of the model's outputs
  against FP32 gained by promoting that layer alone in the base quantized
  model (one quantized model and one run of the samples per layer; an output
  made by Softmax, LogSoftmax or Sigmoid is compared at its input, the
  logits, since probabilities saturate);
- ``sensitivity="analyze"``: the SQNR the layer loses in the base quantized
  model, from :func:`onnxquant.analyze` (one run): accumulated SQNR of its
  input minus that of its output. Cheaper, but once the error has built up
  (int4 weights everywhere), later layers lose little in dB whatever their
  share of the error, and the ranking misleads (ResNet8 W4A8: docs/accuracy.md).

The most sensitive are promoted one at a time (``promote_to``:
``"int16"``, 16-bit activations around the layer and int8 weights; ``"int8"``,
int8 weights in place of int4; or ``"float"``) until the budget is met:

- with a ``metric`` (a callable scoring a model, higher is better, e.g. top-1
  on held-out data): until ``metric(fp32) - metric(quantized) <= budget``,
  measuring the metric after each promotion, and never past ``max_share`` of
  the layers;
- without one: the ``max_share`` most sensitive layers are promoted.

This follows the automatic mixed precision of TI's TIDL and the search of AMD
Quark, in its simplest form: a greedy walk down one ranking, which costs the
ranking and one quantization and metric call per promotion (plus two metric
calls).

With ``candidates="auto"``, the analysis also nominates tensors: the quantized
tensors that LayerNormalization (single, or decomposed as the plan finds it:
ReduceMean ... Sqrt, Div, Mul, Add) and Softmax read or write (those ops stay
float in the plan; their neighbours carry Q/DQ pairs), where the analysis
shows that they dominate the error: a tensor whose accumulated SQNR drop (that of its
nearest quantized ancestors minus that of its nearest quantized descendants:
what its Q/DQ pair costs as its readers see it) is at least ``dominance``
times the largest such drop of any quantized tensor. The nominated tensors
whose promotion alone raises the output SQNR by at least 0.1 dB are promoted
first, largest drop first. Such a tensor competes in the same ranking as the
layers; promoted, it gets int16 (or, with ``promote_to="float"``, no Q/DQ
pair) through a tensor override, and its promotion's reason gives its drop.
Transformers' LayerNorm outlier channels and sharp attention probabilities
are where this happens (a uint8 range over a few channels 20-50 times the
others, or over probabilities in [0, 1] that are mostly near 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxquant.errors import InvalidArgumentError

__all__ = ["LayerSensitivity", "MixedPrecisionResult", "Promotion", "mixed_precision",
           "rank_layers"]

_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PROMOTIONS = ("int16", "int8", "float")
_SENSITIVITIES = ("promote", "analyze")
_CANDIDATES = ("layers", "auto")
# Float ops whose quantized neighbours candidates="auto" considers.
_NEIGHBOURED_OPS = ("LayerNormalization", "Softmax")
# The ops of a decomposed LayerNorm (besides its Div, Sqrt and eps Add).
_LAYER_NORM_OPS = frozenset(("ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div", "Mul", "Cast"))
# A nominated neighbour goes before the layers when promoting it alone gains
# at least this much output SQNR (dB); below it, it ranks by its gain.
_HELPS_DB = 0.1
# An exact tensor (no quantization noise, e.g. integer pixels at scale 1) has
# an infinite SQNR; rankings and reasons use this instead.
_EXACT_DB = 100.0
# Activations a layer's output range may absorb: their output is the layer's.
_ABSORBED_OPS = ("Relu", "Clip")


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's rank figures. With ``sensitivity="analyze"``: the
    accumulated SQNR (dB) of its input and output in the base quantized
    model, and ``sensitivity_db`` their difference. With ``"promote"``:
    ``input_db`` the base model's output SQNR, ``output_db`` the output SQNR
    with this layer alone promoted, ``sensitivity_db`` the gain."""

    node: str
    op_type: str
    input_db: float
    output_db: float
    sensitivity_db: float
    kind: str = "layer"


@dataclass(frozen=True)
class Promotion:
    """A promoted layer: its sensitivity, the metric after promoting it (None
    without a metric), and why it was promoted, in words. ``kind``:
    ``"layer"`` (``node`` is a node name) or ``"tensor"`` (with
    ``candidates="auto"``: ``node`` is a tensor that a LayerNormalization or
    Softmax reads or writes, ``op_type`` that op's type)."""

    node: str
    op_type: str
    sensitivity_db: float
    metric_after: float | None
    reason: str
    kind: str = "layer"


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
        lines.append(f"{len(self.promoted)} of {len(self.ranking)} candidates promoted")
        lines += [f"  {p.node} ({p.op_type}{' neighbour' if p.kind == 'tensor' else ''}): "
                  f"{p.reason}" for p in self.promoted]
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
        out_db = _finite(output.accumulated_db, _EXACT_DB)
        inputs = [by_tensor[i] for i in node.input if i in by_tensor]
        in_db = _finite(inputs[0].accumulated_db, _EXACT_DB) if inputs else out_db + 60.0
        out.append((index, LayerSensitivity(node.name, node.op_type, in_db, out_db,
                                            in_db - out_db)))
    out.sort(key=lambda p: (-p[1].sensitivity_db, p[0]))
    return tuple(s for _, s in out)


def _reach(model: onnx.ModelProto, by_tensor: Mapping[str, float]) -> dict[str, float]:
    """Per tensor of ``model``: the lowest accumulated SQNR (``by_tensor``)
    of its nearest quantized ancestors, found through float nodes; absent
    for a tensor with none (a graph input, a tensor of constants only)."""
    constants = {i.name for i in model.graph.initializer}
    reach: dict[str, float] = {}
    for node in model.graph.node:  # in topological order
        levels = [by_tensor[i] if i in by_tensor else reach[i]
                  for i in node.input if i and i not in constants
                  and (i in by_tensor or i in reach)]
        if levels:
            for o in node.output:
                reach[o] = min(levels)
    return reach


def through_drops(model: onnx.ModelProto, analysis) -> dict[str, LayerSensitivity]:
    """Per quantized tensor of ``analysis`` that has a quantized ancestor:
    the accumulated SQNR (dB) lost from its nearest quantized ancestors (the
    lowest of theirs) to its nearest quantized descendants (the lowest of
    theirs; its own when it has none), both found through float nodes, as
    ``LayerSensitivity(tensor, "", dB before, dB after, drop)``. It counts
    what the tensor's Q/DQ pair costs as its readers see it: a LayerNorm
    output whose outlier channels set the range looks fine as a whole
    tensor, while the MatMuls reading it, whose weights scale those channels
    down, lose what the other channels lost."""
    by_tensor = {r.tensor: _finite(r.accumulated_db, _EXACT_DB) for r in analysis}
    reach = _reach(model, by_tensor)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    out = {}
    for tensor in by_tensor:
        if tensor not in reach:
            continue
        after, seen, stack = [], {tensor}, [tensor]
        while stack:  # the nearest quantized descendants
            for node in readers.get(stack.pop(), ()):
                for o in node.output:
                    if o and o not in seen:
                        seen.add(o)
                        (after if o in by_tensor else stack).append(o)
        low = min((by_tensor[d] for d in after), default=by_tensor[tensor])
        out[tensor] = LayerSensitivity(tensor, "", reach[tensor], low, reach[tensor] - low)
    return out


def _decomposed_layer_norms(model: onnx.ModelProto, quantized: Iterable[str]
                            ) -> list[list[onnx.NodeProto]]:
    """The nodes of each decomposed LayerNorm of ``model`` (the plan's
    pattern: a Div whose divisor is Sqrt(Add(ReduceMean(...), eps))), with
    the nodes of its ops (ReduceMean, Sub, Pow, Add, Sqrt, Div, Mul, Cast)
    connected to it through tensors without a Q/DQ pair (not in
    ``quantized``): the mean, the centring, the variance, gamma and beta."""
    quantized = set(quantized)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    constants = {i.name for i in model.graph.initializer}

    def made_by(tensor: str, op_type: str) -> onnx.NodeProto | None:
        node = producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    groups, taken = [], set()
    for div in model.graph.node:
        if div.op_type != "Div" or len(div.input) < 2 or div.name in taken:
            continue
        sqrt = made_by(div.input[1], "Sqrt")
        add = made_by(sqrt.input[0], "Add") if sqrt is not None else None
        if add is None or not any(made_by(i, "ReduceMean") for i in add.input):
            continue
        group, stack = {div.name: div}, [div]
        while stack and len(group) < 32:  # a LayerNorm has about ten nodes
            node = stack.pop()
            for t in (*node.input, *node.output):
                if not t or t in quantized or t in constants:
                    continue
                for other in (producer.get(t), *readers.get(t, ())):
                    if other is not None and other.name not in group and \
                            other.op_type in _LAYER_NORM_OPS:
                        group[other.name] = other
                        stack.append(other)
        taken.update(group)
        groups.append(list(group.values()))
    return groups


def dominant_neighbours(model: onnx.ModelProto, analysis, dominance: float
                        ) -> tuple[LayerSensitivity, ...]:
    """The quantized tensors that a LayerNormalization (single or decomposed)
    or Softmax of ``model`` reads or writes whose drop
    (:func:`through_drops`) is positive and at least ``dominance`` times the
    largest drop of any quantized tensor, largest first, as
    ``LayerSensitivity(tensor, op type, dB before, dB after, drop,
    kind="tensor")``."""
    drops = through_drops(model, analysis)
    if not drops:
        return ()
    largest = max(d.sensitivity_db for d in drops.values())
    groups = [(n.op_type, [n]) for n in model.graph.node if n.op_type in _NEIGHBOURED_OPS]
    groups += [("LayerNormalization", nodes)
               for nodes in _decomposed_layer_norms(model, (r.tensor for r in analysis))]
    out, seen = [], set()
    for op_type, nodes in groups:
        for t in (t for n in nodes for t in (*n.input, *n.output)):
            if t not in drops or t in seen:
                continue
            seen.add(t)
            d = drops[t]
            if d.sensitivity_db > 0 and d.sensitivity_db >= dominance * largest:
                out.append(replace(d, op_type=op_type, kind="tensor"))
    return tuple(sorted(out, key=lambda r: -r.sensitivity_db))


# Outputs of these ops saturate (probabilities): their SQNR says little about
# the scores a metric reads; the SQNR is taken on their input instead.
_SATURATING_OPS = ("Softmax", "LogSoftmax", "Sigmoid")


def compared_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors whose SQNR stands for the model's output: each graph
    output, or the input of the Softmax/LogSoftmax/Sigmoid that produces it
    (the logits)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for o in model.graph.output:
        node = producer.get(o.name)
        out.append(node.input[0] if node is not None and node.op_type in _SATURATING_OPS
                   else o.name)
    return out


def _run_tensors(model: onnx.ModelProto, names: list[str], feeds: list[dict]):
    import onnxruntime as ort

    from onnxquant.analysis import _session_with_outputs

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = _session_with_outputs(model, names, options)
    return [session.run(names, feed) for feed in feeds]


def _output_sqnr_db(reference: list[list[np.ndarray]], model: onnx.ModelProto,
                    names: list[str], feeds: list[dict]) -> float:
    """SQNR (dB) of ``model``'s tensors ``names`` on ``feeds`` against
    ``reference`` (the FP32 ones), all tensors and samples together, run as
    deployed (ONNX Runtime's default session)."""
    signal = noise = 0.0
    for want, got in zip(reference, _run_tensors(model, names, feeds)):
        for w, g in zip(want, got):
            w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
            signal += float(np.sum(w64 * w64))
            noise += float(np.sum((w64 - g64) ** 2))
    if noise == 0.0:
        return _EXACT_DB
    return min(_EXACT_DB, 10.0 * math.log10(max(signal, 1e-300) / noise))


def rank_by_promotion(model: onnx.ModelProto, base: onnx.ModelProto, layers, samples,
                      build) -> tuple[LayerSensitivity, ...]:
    """``layers`` ((node, op_type, override) triples) ranked by the output
    SQNR (:func:`compared_tensors`) that promoting each alone in ``base``
    gains (``build(node, override)`` returns that model), most first (ties in
    the given order)."""
    from onnxquant._samples import batch_samples, input_specs

    feeds = [feed for feed, _ in batch_samples(samples, input_specs(model), 32, 0)]
    names = compared_tensors(model)
    reference = _run_tensors(model, names, feeds)
    base_db = _output_sqnr_db(reference, base, names, feeds)
    out = []
    for index, (node, op_type, override) in enumerate(layers):
        db = _output_sqnr_db(reference, build(node, override), names, feeds)
        out.append((index, LayerSensitivity(node, op_type, base_db, db, db - base_db)))
    out.sort(key=lambda p: (-p[1].sensitivity_db, p[0]))
    return tuple(s for _, s in out)


def weighted_layers(quantized: onnx.ModelProto) -> set[str]:
    """The nodes of ``quantized`` that read a quantized weight: an input made
    by a DequantizeLinear of an initializer (not a bias: an int32 one)."""
    inits = {t.name: t.data_type for t in quantized.graph.initializer}
    weights = {n.output[0] for n in quantized.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]] != onnx.TensorProto.INT32}
    return {n.name for n in quantized.graph.node
            if n.op_type in _LAYER_OPS and any(i in weights for i in n.input)}


def _override(node: str, promote_to: str, weighted: set[str]) -> dict[str, str]:
    """The override promoting ``node`` (a node, or a candidate tensor: never
    in ``weighted``)."""
    if promote_to == "float":
        return {"activation_type": "float"}
    if promote_to == "int8":
        return {"weight_type": "int8"}
    entry = {"activation_type": "int16"}
    if node in weighted:
        entry["weight_type"] = "int8"
    return entry


def _position(model: onnx.ModelProto, name: str) -> int:
    """The index of node ``name``, or of the first node that reads tensor
    ``name``."""
    return next(i for i, n in enumerate(model.graph.node)
                if n.name == name or name in n.input or name in n.output)


def mixed_precision(model, calibrator, samples: Iterable[object],
                    metric: Callable[[onnx.ModelProto], float] | None = None, *,
                    budget: float = 1.0, max_share: float = 0.25,
                    options=None, promote_to: str = "int16",
                    sensitivity: str = "promote",
                    ranges: Mapping[str, tuple[float, float]] | None = None,
                    candidates: str = "layers", dominance: float = 0.5
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
            by the layer, int8 weights), ``"int8"`` (int8 weights only, for a
            base with int4 weights: the layer stays in integer kernels) or
            ``"float"``.
        sensitivity: ``"promote"`` (default) or ``"analyze"``: how layers
            are ranked (module docstring).
        ranges: the ranges to quantize with (default:
            ``calibrator.compute_range()``).
        candidates: what may be promoted: ``"layers"`` (default: the
            quantized Conv, ConvTranspose, Gemm and MatMul nodes) or
            ``"auto"``: those and the tensors that LayerNormalization and
            Softmax read or write whose accumulated SQNR drop dominates
            (module docstring; not with ``promote_to="int8"``, which
            promotes weights).
        dominance: with ``candidates="auto"``, the share of the largest
            drop of any quantized tensor that a neighbour's drop must reach
            (default 0.5), in (0, 1].

    Returns:
        A :class:`MixedPrecisionResult`.

    Raises:
        InvalidArgumentError: an argument outside its domain.
    """
    from onnxquant.analyze import analyze
    from onnxquant.quantize import options_or_default, quantize

    if candidates not in _CANDIDATES:
        raise InvalidArgumentError(
            f"candidates must be 'layers' or 'auto', got {candidates!r}.")
    if isinstance(dominance, bool) or not isinstance(dominance, (int, float)) or \
            not 0.0 < dominance <= 1.0:
        raise InvalidArgumentError(f"dominance must be a share in (0, 1], got {dominance!r}.")
    if candidates == "auto" and promote_to == "int8":
        raise InvalidArgumentError(
            "candidates='auto' nominates activation tensors, which promote_to='int8' "
            "(int4 weights to int8) cannot promote; promote to 'int16' or 'float'.")
    if sensitivity not in _SENSITIVITIES:
        raise InvalidArgumentError(
            f"sensitivity must be 'promote' or 'analyze', got {sensitivity!r}.")
    if promote_to not in _PROMOTIONS:
        raise InvalidArgumentError(
            f"promote_to must be 'int16', 'int8' or 'float', got {promote_to!r}.")
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
    options = options_or_default(calibrator.options if options is None else options)
    if promote_to == "int8" and not options.uses_int4:
        raise InvalidArgumentError(
            "promote_to='int8' promotes int4 weights to int8; the options have none "
            "(pass options=QuantOptions(weight_type='int4', ...), or promote to 'int16').")
    if ranges is None:
        ranges = calibrator.compute_range()
    samples = list(samples)

    def build(opts):
        return quantize(model, ranges, options=opts, calibrator=calibrator)

    base = build(options)
    weighted = weighted_layers(base)
    analysis = analyze(model, base, samples, calibrator=calibrator, methods=(), warn=False)
    ranking = rank_layers(model, analysis)
    if promote_to == "int8":  # only layers with a weight can be promoted
        ranking = tuple(r for r in ranking if r.node in weighted)
    neighbours = dominant_neighbours(model, analysis, dominance) \
        if candidates == "auto" else ()
    drops = {r.node: r for r in neighbours}
    if sensitivity == "analyze":
        # The neighbours that dominate the error go first, largest drop first.
        ranking = (*neighbours, *ranking)
    else:
        def alone(node: str, override: dict[str, str]) -> onnx.ModelProto:
            return build(replace(options, overrides={**options.overrides, node: override}))

        layers = [(r.node, r.op_type, _override(r.node, promote_to, weighted))
                  for r in sorted((*ranking, *neighbours),
                                  key=lambda r: _position(model, r.node))]
        gains = [replace(r, kind="tensor") if r.node in drops else r
                 for r in rank_by_promotion(model, base, layers, samples, alone)]
        # The dominating neighbours whose promotion alone helps go first,
        # largest drop first; the rest by their gain.
        first = sorted((r for r in gains
                        if r.kind == "tensor" and r.sensitivity_db >= _HELPS_DB),
                       key=lambda r: -drops[r.node].sensitivity_db)
        ranking = (*first, *(r for r in gains if r not in first))
    limit = math.ceil(max_share * len(ranking) - 1e-9)
    fp32_metric = float(metric(model)) if metric is not None else None
    base_metric = float(metric(base)) if metric is not None else None
    current, current_metric = base, base_metric
    overrides = dict(options.overrides)
    promoted: list[Promotion] = []

    def within(value: float | None) -> bool:
        # Scores such as 61.1 and 60.1 (a drop of exactly 1 in decimal) differ
        # by a little more than 1 in binary: a relative tolerance absorbs it.
        tolerance = 1e-9 * max(1.0, abs(fp32_metric)) if value is not None else 0.0
        return value is not None and fp32_metric - value <= budget + tolerance

    for rank, layer in enumerate(ranking[:limit], start=1):
        if metric is not None and within(current_metric):
            break
        overrides[layer.node] = _override(layer.node, promote_to, weighted)
        opts = replace(options, overrides=dict(overrides))
        current = build(opts)
        current_metric = float(metric(current)) if metric is not None else None
        if sensitivity == "promote":
            why = (f"rank {rank} of {len(ranking)}: promoting it alone raises the output SQNR "
                   f"by {layer.sensitivity_db:.1f} dB ({layer.input_db:.1f} -> "
                   f"{layer.output_db:.1f} dB)")
            if layer.kind == "tensor":
                drop = drops[layer.node]
                why += (f"; a {layer.op_type} neighbour whose Q/DQ loses "
                        f"{drop.sensitivity_db:.1f} dB of accumulated SQNR "
                        f"({drop.input_db:.1f} -> {drop.output_db:.1f} dB), which "
                        f"dominates the error (>= {dominance:g} x the largest drop)")
        elif layer.kind == "tensor":
            why = (f"rank {rank} of {len(ranking)}: a {layer.op_type} neighbour whose Q/DQ "
                   f"loses {layer.sensitivity_db:.1f} dB of accumulated SQNR "
                   f"({layer.input_db:.1f} -> {layer.output_db:.1f} dB), which dominates "
                   f"the error (>= {dominance:g} x the largest drop)")
        else:
            why = (f"rank {rank} of {len(ranking)}: loses {layer.sensitivity_db:.1f} dB of "
                   f"SQNR ({layer.input_db:.1f} dB in, {layer.output_db:.1f} dB out)")
        if metric is not None:
            why += (f"; promoted to {promote_to} because the drop was "
                    f"{fp32_metric - (promoted[-1].metric_after if promoted else base_metric):.3g}"
                    f" > budget {budget:g}; drop after: {fp32_metric - current_metric:.3g}")
        else:
            why += f"; promoted to {promote_to} (within max_share {max_share:g})"
        promoted.append(Promotion(layer.node, layer.op_type, layer.sensitivity_db,
                                  current_metric, why, kind=layer.kind))
        options_now = opts
    final_options = options_now if promoted else options
    return MixedPrecisionResult(
        model=current, options=final_options, promoted=tuple(promoted), ranking=ranking,
        fp32_metric=fp32_metric, base_metric=base_metric, final_metric=current_metric,
        budget_met=True if metric is None else within(current_metric))
