"""Accuracy recovery before quantization: cross-layer equalization and
empirical bias correction (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", 2019), and SmoothQuant (Xiao et
al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models", 2023) for MatMul models, high-bias absorption, and
AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", 2020).

Each takes a model (normalised by :func:`~onnxquant.optimize_model`, or
normalised here first) and return a new FP32 model plus a record of what
changed; the model then goes through calibration and
:func:`~onnxquant.quantize` as usual. The third technique, the per-channel
weight range search, is an option of quantization:
``QuantOptions(weight_range="mse")``.

    model = oq.optimize_model("model.onnx")
    model, cle = oq.recovery.equalize_cross_layer(model, power_of_two=True)
    options = oq.QuantOptions(per_channel=False, power_of_two="ceil", weight_range="mse")
    model, bc = oq.recovery.correct_bias(model, samples, options=options)
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    ...

The arithmetic runs in the engine (``cpp/onnxquant/cross_layer_equalization``,
``bias_correction``, ``weight_range_search``, ``smooth_quant``,
``high_bias_absorption``, ``adaround``); bias correction, SmoothQuant,
high-bias absorption and AdaRound run the model with ONNX Runtime from here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from onnxquant import _core
from onnxquant._input_checks import refuse_quantized
from onnxquant._model import (
    NORMALIZED_KEY,
    QUANTIZED_KEY,
    ModelLike,
    get_metadata,
    load_model,
    model_to_bytes,
)
from onnxquant._samples import batch_samples, input_specs
from onnxquant._shapes import infer_dtypes
from onnxquant.errors import CalibrationDataError, InvalidArgumentError, UnsupportedModelError
from onnxquant.quantize import QuantOptions

__all__ = [
    "AdaRoundLayer",
    "AdaRoundRecord",
    "BiasCorrectionRecord",
    "EqualizationRecord",
    "EqualizedPair",
    "HighBiasRecord",
    "SmoothQuantGroup",
    "SmoothQuantRecord",
    "absorb_high_bias",
    "adaround",
    "correct_bias",
    "equalize_cross_layer",
    "smooth_quant",
]


@dataclass(frozen=True)
class EqualizedPair:
    """One Conv -> activation -> Conv pair that cross-layer equalization
    rescaled: ``scales[c]`` divided output channel c of ``first`` (weights
    and bias) and multiplied input channel c of ``second``. ``spread_before``
    and ``spread_after``: max / min of ``first``'s per-output-channel weight
    ranges (nonzero channels)."""

    first: str
    second: str
    activation: str
    scales: np.ndarray
    spread_before: float
    spread_after: float


@dataclass(frozen=True)
class EqualizationRecord:
    """What :func:`equalize_cross_layer` changed."""

    pairs: tuple[EqualizedPair, ...]
    clips_replaced: tuple[str, ...]  # Clip nodes now Relu (replace_relu6=True)
    clips_stopped: tuple[str, ...]   # Clip nodes that ended a chain
    sweeps: int
    converged: bool
    seconds: float
    normalized_here: bool  # the model was not normalised: optimize_model ran first


@dataclass(frozen=True)
class BiasCorrectionRecord:
    """What :func:`correct_bias` changed: per corrected node, the value
    subtracted from each channel's bias (the mean output error measured with
    quantized weights, per channel); the nodes it could not correct, with the
    reason; the model runs it took."""

    corrections: dict[str, np.ndarray]
    skipped: tuple[tuple[str, str], ...]
    rounds: int
    samples: int
    seconds: float
    normalized_here: bool


@dataclass(frozen=True)
class HighBiasRecord:
    """What :func:`absorb_high_bias` changed: per first Conv of a chain, the
    amount taken off each channel's bias (and added, through the next Conv's
    weights, to that Conv's bias); the chains given no amount above zero are
    left out. ``candidates`` counts the chains found, ``samples`` the samples
    measured."""

    amounts: dict[str, np.ndarray]
    candidates: int
    samples: int
    seconds: float
    normalized_here: bool


def _normalized(model: ModelLike, what: str) -> tuple[onnx.ModelProto, bool]:
    """``model`` loaded; normalised by optimize_model unless it already is."""
    from onnxquant.optimize import optimize_model

    proto = load_model(model)
    refuse_quantized(proto, what, stamped=get_metadata(proto, QUANTIZED_KEY) is not None)
    if get_metadata(proto, NORMALIZED_KEY) is not None:
        return proto, False
    return optimize_model(proto), True


def equalize_cross_layer(model: ModelLike, *, replace_relu6: bool = False,
                         power_of_two: bool = False, max_sweeps: int = 100,
                         tolerance: float = 1e-4) -> tuple[onnx.ModelProto, EqualizationRecord]:
    """Cross-layer equalization of every Conv -> Relu/LeakyRelu/PRelu -> Conv
    chain (depthwise and grouped Convs included; also Conv -> Conv).

    Per channel c of the pair, s_c = sqrt(r1_c r2_c) / r2_c with r1_c the
    range (max |w|) of the first Conv's output channel c and r2_c that of the
    second Conv's input channel c; the first is divided by s_c, the second
    multiplied: the FP32 function is unchanged, and both ranges become
    sqrt(r1_c r2_c), which per-tensor weight quantization loses less on.
    Sweeps over all pairs repeat until every scale is within ``tolerance``
    of 1 (or ``max_sweeps``).

    Clip (ReLU6) is not positively homogeneous and its bounds are scalars:
    by default it ends a chain (listed in ``clips_stopped``).
    ``replace_relu6=True`` replaces each Clip with lower bound 0 that sits in
    such a chain by a Relu first (as Nagel et al. did for MobileNetV2), which
    changes the FP32 function where values exceeded the upper bound: check
    the accuracy. High-bias absorption, which needs data here, is
    :func:`absorb_high_bias` (run it after this).

    ``power_of_two=True`` is for per-tensor power-of-two weights
    (``QuantOptions(per_channel=False, power_of_two=...)``): equalization
    leaves each pair a free common factor, and a power-of-two scale wastes
    up to half its codes when max|w| / 127 lies just above a power of two.
    After the sweeps, each pair in graph order gets one more factor in
    [1, 2) on all its channels so that its first Conv's max|w| / 127 is a
    power of two (the function is still unchanged).

    Args:
        model: ModelProto, bytes or path (never modified); run through
            :func:`~onnxquant.optimize_model` first unless it is already
            normalised (batch norm must be folded for the pairs to match).
        replace_relu6: see above (default False).
        power_of_two: see above (default False).
        max_sweeps: at most this many sweeps (default 100).
        tolerance: convergence threshold on |s - 1| (default 1e-4).

    Returns:
        (the equalized, normalised model, :class:`EqualizationRecord`).

    Raises:
        InvalidArgumentError: max_sweeps < 1 or tolerance < 0.
        ModelError: a Conv weight that does not fit its group (names it).
        UnsupportedModelError: an already quantized model.
    """
    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise InvalidArgumentError(f"max_sweeps must be an integer >= 1, got {max_sweeps!r}.")
    if not tolerance >= 0:
        raise InvalidArgumentError(f"tolerance must be >= 0, got {tolerance!r}.")
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "equalize_cross_layer")
    data, rep = _core.equalize_cross_layer(model_to_bytes(proto), max_sweeps,
                                           float(tolerance), bool(replace_relu6),
                                           127 if power_of_two else 0)
    result = onnx.ModelProto()
    result.ParseFromString(data)
    pairs = tuple(EqualizedPair(p["first"], p["second"], p["activation"],
                                np.asarray(p["scales"], dtype=np.float32),
                                float(p["spread_before"]), float(p["spread_after"]))
                  for p in rep["pairs"])
    record = EqualizationRecord(pairs, tuple(rep["clips_replaced"]),
                                tuple(rep["clips_stopped"]), int(rep["sweeps"]),
                                bool(rep["converged"]), time.perf_counter() - start,
                                normalized_here)
    return result, record


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the float tensors ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return out


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads: its inputs and every name read inside its
    subgraph bodies (If, Loop, Scan; a superset of the outer-scope reads)."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                     list(attr.graphs)):
            for inner in body.node:
                names |= _reads(inner)
    return names


def _prefix(model: onnx.ModelProto, outputs: list[str],
            biases: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` (its only outputs), with
    the bias initializers ``biases`` set to the given values."""
    needed = set(outputs)
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= _reads(node)
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    graph = out.graph
    graph.name = model.graph.name
    graph.node.extend(reversed(keep))
    graph.input.extend(i for i in model.graph.input if i.name in needed)
    for t in model.graph.initializer:
        if t.name not in needed:
            continue
        graph.initializer.append(onnx.numpy_helper.from_array(biases[t.name], t.name)
                                 if t.name in biases else t)
    graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                        for name in outputs)
    return out


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    # No spinning: the bias-correction runs share the CPU with whatever else
    # runs (as calibration does).
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's errors derive from Exception only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load the model '{model.graph.name}' to measure what the "
            f"technique needs ({first}); check that ONNX Runtime runs the FP32 model.") from e


def _feeds(proto: onnx.ModelProto, samples: Iterable[object], batch_size: int,
           what: str) -> tuple[list[dict[str, np.ndarray]], int]:
    """The samples as batches of feeds for ``proto``, and their count;
    CalibrationDataError when there are none."""
    feeds = [feed for feed, _ in batch_samples(samples, input_specs(proto), batch_size)]
    if not feeds:
        raise CalibrationDataError(f"{what} got no samples; pass at least one.")
    return feeds, sum(next(iter(f.values())).shape[0] for f in feeds)


def _upstream_layers(model: onnx.ModelProto, layer_nodes: list[str]) -> dict[str, set[str]]:
    """Per layer node, the other layer nodes upstream of it."""
    position = {name: i for i, name in enumerate(layer_nodes)}
    producers_of: dict[str, set[str]] = {}  # tensor -> layers upstream, included
    upstream: dict[str, set[str]] = {}
    for node in model.graph.node:
        above: set[str] = set()
        for t in _reads(node):
            above |= producers_of.get(t, set())
        if node.name in position:
            upstream[node.name] = set(above)
            above = above | {node.name}
        for t in node.output:
            producers_of[t] = above
    return upstream


def _channel_means(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]],
                   outputs: list[str]) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        values = session.run(outputs, feed)
        for name, v in zip(outputs, values):
            v = np.ascontiguousarray(v, dtype=np.float32)
            s = _core.channel_sums(v)
            sums[name] = sums.get(name, 0.0) + s
            counts[name] = counts.get(name, 0) + v.size // v.shape[1]
    return {name: sums[name] / counts[name] for name in outputs}


def correct_bias(model: ModelLike, samples: Iterable[object], *,
                 options: QuantOptions | None = None,
                 batch_size: int = 32) -> tuple[onnx.ModelProto, BiasCorrectionRecord]:
    """Empirical bias correction, layer by layer in topological order.

    For each Conv and Gemm the plan for ``options`` quantizes, the model with
    every such weight replaced by its quantized value (emulated: int8 code
    times scale, with the scales ``options`` give; layers above already
    corrected) and the FP32 model run on ``samples``; the mean of the
    layer's output error per output channel is subtracted from its float
    bias (a zero bias is added where the node has none). A layer is corrected
    once every corrected layer above it is, so the model runs once per level
    of the layer graph, computing only the layers each run needs. Activations
    are not quantized in these runs: this corrects the bias that weight
    quantization introduces.

    The weights are emulated without the int32-bias floor on their scales,
    and without the kernel remedies of ``target="portable"`` (which lower
    the largest code of a few channels); both touch few channels.

    Args:
        model: ModelProto, bytes or path (never modified); normalised first
            unless it already is.
        samples: calibration samples, as :meth:`~onnxquant.Calibrator.collect_data`
            takes them (a list of feeds, or one array with samples on axis 0
            for a one-input model); read once and kept in memory.
        options: the :class:`~onnxquant.QuantOptions` the model will be
            quantized with (default ``QuantOptions()``): they decide the
            weight scales (per_channel, power_of_two, weight_range,
            reduce_weight_range).
        batch_size: samples stacked per run where the batch dim is dynamic
            (default 32).

    Returns:
        (the model with corrected biases, normalised, :class:`BiasCorrectionRecord`).

    Raises:
        CalibrationDataError: no samples, or samples that do not fit the model.
        InvalidArgumentError: options that are not a QuantOptions, batch_size < 1.
        UnsupportedModelError: an already quantized model.
    """
    if options is None:
        options = QuantOptions()
    if not isinstance(options, QuantOptions):
        raise InvalidArgumentError(
            f"options must be a QuantOptions, got {type(options).__name__}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "correct_bias")
    feeds, count = _feeds(proto, samples, batch_size, "correct_bias")
    native = options.to_native()
    dtypes = infer_dtypes(proto)
    data, layers, skipped = _core.prepare_bias_correction(model_to_bytes(proto), dtypes,
                                                          native)
    prepared = onnx.ModelProto()
    prepared.ParseFromString(data)
    for layer in layers:
        dtypes[layer["bias"]] = onnx.TensorProto.FLOAT
    emulated_bytes, _ = _core.emulate_quantized_weights(data, dtypes, native)
    emulated = onnx.ModelProto()
    emulated.ParseFromString(emulated_bytes)
    by_node = {layer["node"]: layer for layer in layers}
    outputs = [layer["output"] for layer in layers]
    reference = (_channel_means(_session(_with_outputs(prepared, outputs)), feeds, outputs)
                 if outputs else {})
    biases = {layer["bias"]: onnx.numpy_helper.to_array(t).astype(np.float32)
              for layer in layers for t in prepared.graph.initializer
              if t.name == layer["bias"]}
    upstream = _upstream_layers(prepared, list(by_node))
    corrections: dict[str, np.ndarray] = {}
    rounds = 0
    pending = list(by_node)
    while pending:
        # Every layer whose corrected ancestors are all done, measured at
        # once on the part of the emulated model that computes them.
        ready = [n for n in pending if not (upstream[n] - corrections.keys())]
        wanted = [by_node[n]["output"] for n in ready]
        measured = _channel_means(_session(_prefix(emulated, wanted, biases)), feeds, wanted)
        rounds += 1
        for n in ready:
            layer = by_node[n]
            delta = (measured[layer["output"]] - reference[layer["output"]]).astype(np.float32)
            biases[layer["bias"]] = (biases[layer["bias"]] - delta).astype(np.float32)
            corrections[n] = delta
        pending = [n for n in pending if n not in corrections]
    result = onnx.ModelProto()
    result.CopyFrom(prepared)
    for t in result.graph.initializer:
        if t.name in biases:
            t.CopyFrom(onnx.numpy_helper.from_array(biases[t.name], t.name))
    record = BiasCorrectionRecord(corrections, tuple(tuple(s) for s in skipped), rounds, count,
                                  time.perf_counter() - start, normalized_here)
    return result, record


@dataclass(frozen=True)
class SmoothQuantGroup:
    """One group of MatMul/Gemm nodes that read the same activation and
    share one smoothing factor per input channel.

    ``absorb`` says where X / s went: ``"LayerNormalization"`` (its scale and
    bias), ``"constants"`` (a constant Mul, and the constant Adds between it
    and X: the decomposed LayerNorm's gamma and beta, the 0.5 of a GELU) or
    ``"inserted Mul"``. ``alpha`` is the one chosen (searched or given);
    ``error_before`` and ``error_after`` the relative squared output error
    (sum |Yq - Y|^2 / sum |Y|^2 on the sampled rows) of the group's MatMuls
    quantized (symmetric weights as the options quantize them, uint8
    per-tensor MIN_MAX activations) without and with the factors; ``applied`` is False where
    the search found no alpha that lowers the error and left the group as it
    was. ``scale_min`` and ``scale_max``: the range of the factors."""

    activation: str
    nodes: tuple[str, ...]
    producer: str
    absorb: str
    alpha: float
    applied: bool
    scale_min: float
    scale_max: float
    error_before: float
    error_after: float
    scales: np.ndarray


@dataclass(frozen=True)
class SmoothQuantRecord:
    """What :func:`smooth_quant` changed: the groups (applied or not), the
    activations it could not smooth with the reason, the samples and rows
    the statistics and the search used."""

    groups: tuple[SmoothQuantGroup, ...]
    skipped: tuple[tuple[str, str], ...]
    samples: int
    rows: int
    seconds: float
    normalized_here: bool


def _activation_stats(model: onnx.ModelProto, activations: dict[str, int],
                      feeds: list[dict[str, np.ndarray]], rows: int,
                      seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per activation (name -> channels), over every sample: the minimum and
    maximum per channel (last axis; reduced in the engine, no copy), and up
    to ``rows`` rows drawn evenly from every run."""
    names = list(activations)
    session = _session(_with_outputs(model, names))
    rng = np.random.default_rng(seed)
    per_run = -(-rows // len(feeds))
    ranges = {n: (np.zeros(0, np.float32), np.zeros(0, np.float32)) for n in names}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            k = activations[name]
            if value.ndim < 1 or value.shape[-1] != k:
                raise CalibrationDataError(
                    f"SmoothQuant: tensor '{name}' has shape {value.shape}, not {k} "
                    "channels on its last axis; check the samples' shapes.")
            flat = np.ascontiguousarray(value, dtype=np.float32).reshape(-1, k)
            ranges[name] = _core.accumulate_channel_range(flat, *ranges[name])
            take = min(per_run, len(flat))
            kept[name].append(flat[np.sort(rng.choice(len(flat), take, replace=False))])
    return {n: (np.ascontiguousarray(np.concatenate(kept[n])[:rows]), *ranges[n])
            for n in names}


def smooth_quant(model: ModelLike, samples: Iterable[object], *,
                 alpha: float | None = None, alpha_steps: int = 20,
                 insert_mul: bool = False, search_rows: int = 512,
                 batch_size: int = 32,
                 options: QuantOptions | None = None,
                 alpha_scope: str = "group"
                 ) -> tuple[onnx.ModelProto, SmoothQuantRecord]:
    """SmoothQuant: moves the per-channel outliers of MatMul inputs into the
    weights.

    For each group of MatMul/Gemm nodes with constant 2-D weights that read
    the same activation X (Q, K and V share one), per input channel j::

        s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

    with max|X_j| over ``samples`` and max|W_j| over the group's weights;
    X / s is folded into X's producer (a LayerNormalization's scale and
    bias; a constant Mul, with the constant Adds between it and X) and
    input channel j of each weight is multiplied by s_j. The FP32 function
    is unchanged; per-tensor activation quantization then loses less to a
    few large channels. Where X cannot absorb the factor (X is also read by
    another node, e.g. a residual Add, or comes from a Reshape),
    ``insert_mul=True`` inserts a Mul by 1 / s before the group; otherwise
    the group is skipped and listed in ``record.skipped`` with the reason.
    An inserted Mul is quantized like any Mul, so X is still quantized once
    on its way in: it pays off where X's other readers stay float (e.g.
    ``QuantOptions(op_types=("MatMul", "Gemm"))``).

    ``alpha=None`` searches it per group over ``alpha_steps + 1`` values in
    [0, 1] by the output error of the group's MatMuls quantized in the
    engine (symmetric weights as ``options`` quantize them: int8 or, with
    ``weight_type="int4"``, codes [-7, 7]; per output channel, or per tensor
    with ``per_channel=False``; uint8 per-tensor activations over the
    calibration min and max, as MIN_MAX_ASYM chooses them) on up to
    ``search_rows`` rows of X drawn from the samples; a group for which no
    alpha lowers that error is left unchanged (``applied=False``). With
    ``alpha_scope="model"`` one alpha serves every group: the grid value
    with the lowest sum of the groups' errors (all groups applied, or none
    when no alpha lowers the sum). A float alpha is applied to every group.

    Args:
        model: ModelProto, bytes or path (never modified); normalised first
            unless it already is.
        samples: calibration samples, as :meth:`~onnxquant.Calibrator.collect_data`
            takes them.
        alpha: None (search, the default) or a value in [0, 1] (0.5 in the
            paper).
        alpha_steps: grid steps of the search (default 20: alpha = 0, 0.05,
            ..., 1).
        insert_mul: insert a Mul where X cannot absorb the factor (default
            False: skip such groups).
        search_rows: rows of X the search measures the error on (default
            512; the ranges use every row).
        batch_size: samples stacked per run where the batch dim is dynamic
            (default 32).
        options: the :class:`~onnxquant.QuantOptions` the model will be
            quantized with (default ``QuantOptions()``): ``weight_type`` and
            ``per_channel`` decide how the search emulates the weights
            (power-of-two scales, blockwise int4, the weight range search and
            the remedies of ``target="portable"`` are not emulated).
        alpha_scope: ``"group"`` (default: alpha searched per group) or
            ``"model"`` (one alpha for all).

    Returns:
        (the smoothed FP32 model, normalised, :class:`SmoothQuantRecord`).

    Raises:
        CalibrationDataError: no samples, or samples that do not fit the model.
        InvalidArgumentError: alpha outside [0, 1], alpha_steps, search_rows
            or batch_size < 1, options that are not a QuantOptions, an
            alpha_scope other than "group" or "model".
        ModelError: MatMuls that read one activation with different channel
            counts (names them).
        UnsupportedModelError: an already quantized model.
    """
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0.0 <= float(alpha) <= 1.0):
        raise InvalidArgumentError(f"alpha must be None (search) or a number in [0, 1], "
                                   f"got {alpha!r}.")
    for name, value in (("alpha_steps", alpha_steps), ("search_rows", search_rows),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}.")
    if alpha_scope not in ("group", "model"):
        raise InvalidArgumentError(
            f"alpha_scope must be 'group' or 'model', got {alpha_scope!r}.")
    if options is None:
        options = QuantOptions()
    if not isinstance(options, QuantOptions):
        raise InvalidArgumentError(
            f"options must be a QuantOptions, got {type(options).__name__}.")
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "smooth_quant")
    feeds, count = _feeds(proto, samples, batch_size, "smooth_quant")
    data = model_to_bytes(proto)
    groups, _ = _core.smooth_quant_groups(data, bool(insert_mul))
    activations = {g["activation"]: int(g["channels"]) for g in groups}
    stats = (_activation_stats(proto, activations, feeds, search_rows, 0)
             if activations else {})
    grid = ([float(alpha)] if alpha is not None else
            [i / alpha_steps for i in range(alpha_steps + 1)])
    out, records, skipped = _core.smooth_quant(
        data, bool(insert_mul), stats, grid, alpha is None,
        7 if options.weight_type == "int4" else 127, bool(options.per_channel),
        alpha_scope == "model")
    result = onnx.ModelProto()
    result.ParseFromString(out)
    rows = max((len(v[0]) for v in stats.values()), default=0)
    entries = tuple(
        SmoothQuantGroup(r["activation"], tuple(r["nodes"]), r["producer"], r["absorb"],
                         float(r["alpha"]), bool(r["applied"]),
                         float(np.min(r["scales"])) if len(r["scales"]) else 1.0,
                         float(np.max(r["scales"])) if len(r["scales"]) else 1.0,
                         float(r["error_before"]), float(r["error_after"]),
                         np.asarray(r["scales"], dtype=np.float32))
        for r in records)
    record = SmoothQuantRecord(entries, tuple(tuple(s) for s in skipped), count, rows,
                               time.perf_counter() - start, normalized_here)
    return result, record


def _channel_moments(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]],
                     outputs: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per output tensor [N, C, ...]: each channel's mean and standard
    deviation over the samples and positions."""
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        for name, v in zip(outputs, session.run(outputs, feed)):
            v = np.ascontiguousarray(v, dtype=np.float32)
            v64 = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + v64.sum(axis=1)
            squares[name] = squares.get(name, 0.0) + np.square(v64).sum(axis=1)
            counts[name] = counts.get(name, 0) + v64.shape[1]
    out = {}
    for name in outputs:
        mean = sums[name] / counts[name]
        var = np.maximum(squares[name] / counts[name] - mean * mean, 0.0)
        out[name] = (mean, np.sqrt(var))
    return out


def absorb_high_bias(model: ModelLike, samples: Iterable[object], *, sigmas: float = 3.0,
                     batch_size: int = 32) -> tuple[onnx.ModelProto, HighBiasRecord]:
    """High-bias absorption (Nagel et al. 2019, section 4.1), usually after
    :func:`equalize_cross_layer`.

    For each Conv -> Relu/LeakyRelu/PRelu (or nothing) -> Conv chain, the
    first Conv's output (the pre-activation h) is measured on ``samples``:
    per channel c, a_c = max(0, mean_c - sigmas * std_c) (Nagel et al. take
    beta - 3 gamma of the batch norm; folding drops those, so they are
    measured). a_c is taken off the first Conv's bias and W2 a added to the
    second's: the function is unchanged wherever h_c >= a_c, and the
    activation's range shrinks by a_c, which its per-tensor scale gains.
    Equalization can leave large biases on channels it scaled up; this is
    what takes them back out of the activation.

    Where h_c < a_c (beyond ``sigmas`` standard deviations below the mean)
    the output changes, and a second Conv with zero padding sees its border
    taps shifted by a_c: both are the approximation of the paper.

    Args:
        model: ModelProto, bytes or path (never modified); normalised first
            unless it already is.
        samples: calibration samples, as :func:`correct_bias` takes them.
        sigmas: how many standard deviations below the mean (default 3).
        batch_size: samples stacked per run (default 32).

    Returns:
        (the model, normalised, :class:`HighBiasRecord`).

    Raises:
        CalibrationDataError: no samples, or samples that do not fit.
        InvalidArgumentError: sigmas < 0 or not finite, batch_size < 1.
        UnsupportedModelError: an already quantized model.
    """
    if isinstance(sigmas, bool) or not isinstance(sigmas, (int, float)) or \
            not np.isfinite(sigmas) or sigmas < 0:
        raise InvalidArgumentError(f"sigmas must be a finite number >= 0, got {sigmas!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "absorb_high_bias")
    feeds, count = _feeds(proto, samples, batch_size, "absorb_high_bias")
    data = model_to_bytes(proto)
    candidates = _core.high_bias_candidates(data)
    outputs = [c["output"] for c in candidates]
    moments = (_channel_moments(_session(_with_outputs(proto, outputs)), feeds, outputs)
               if outputs else {})
    amounts = {}
    for c in candidates:
        mean, std = moments[c["output"]]
        a = np.maximum(mean - float(sigmas) * std, 0.0).astype(np.float32)
        if np.any(a > 0):
            amounts[c["first"]] = a
    result = proto
    if amounts:
        out, _, _ = _core.absorb_high_bias(data, {k: v.tolist() for k, v in amounts.items()})
        result = onnx.ModelProto()
        result.ParseFromString(out)
    record = HighBiasRecord(amounts, len(candidates), count, time.perf_counter() - start,
                            normalized_here)
    return result, record


@dataclass(frozen=True)
class AdaRoundLayer:
    """One node :func:`adaround` rounded: the share of its weights rounded
    up (code above floor(w / scale)) and the share whose code differs from
    nearest rounding; the reconstruction loss (squared error of the node's
    output summed over output channels, averaged over the cached input
    positions) with nearest rounding and with AdaRound's; its int32 codes
    (the weight's layout), which quantize() reproduces; its time."""

    node: str
    weight: str
    share_up: float
    share_changed: float
    loss_nearest: float
    loss_final: float
    codes: np.ndarray
    seconds: float


@dataclass(frozen=True)
class AdaRoundRecord:
    """What :func:`adaround` changed: one :class:`AdaRoundLayer` per node
    rounded (graph order), the planned nodes it left with the reason, the
    samples and settings it used."""

    layers: tuple[AdaRoundLayer, ...]
    skipped: tuple[tuple[str, str], ...]
    samples: int
    iterations: int
    seconds: float
    normalized_here: bool


class _ProgressLine:
    """A progress bar over the layers: tqdm when installed, else one line
    rewritten on stderr."""

    def __init__(self, layers: int, enabled: bool) -> None:
        self.layers, self.enabled, self.bar = layers, enabled, None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=layers, unit="layer", desc="AdaRound",
                                bar_format="{l_bar}{bar}| {n:.2f}/{total} [{elapsed}<{remaining}]")
            except ImportError:
                self.bar = None

    def callback(self, index: int, node: str) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            if not self.enabled:
                return
            position = index + (done / total if total else 1.0)
            if self.bar is not None:
                self.bar.n = position
                self.bar.set_postfix_str(node, refresh=False)
                self.bar.refresh()
            else:
                sys.stderr.write(f"\rAdaRound: {position:.2f}/{self.layers} layers ({node})")
                sys.stderr.flush()
        return report

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = self.layers
            self.bar.refresh()
            self.bar.close()
        else:
            sys.stderr.write("\n")


def adaround(model: ModelLike, samples: Iterable[object], *,
             options: QuantOptions | None = None, iterations: int = 1000,
             reg_weight: float = 0.01, beta: tuple[float, float] = (20.0, 2.0),
             warmup: float = 0.2, learning_rate: float = 3e-2,
             max_samples: int | None = None, batch_size: int = 32,
             threads: int | None = None, inputs: str = "fp32",
             progress: bool = True) -> tuple[onnx.ModelProto, AdaRoundRecord]:
    """AdaRound: learned rounding of the weight of every Conv (grouped and
    depthwise included), Gemm and MatMul with a constant weight that the plan
    for ``options`` quantizes, layer by layer in graph order.

    Each weight is rounded up or down, with the scales
    :func:`~onnxquant.quantize` will give it under ``options`` (per channel or
    per tensor, power of two, int4 or int8, weight range search), so that the
    codes minimise the squared error of the layer's output (before its
    activation) on the samples, instead of each weight's own rounding error.
    The soft rounding h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1) starts at the
    fractional part of w / scale and is optimized with Adam for
    ``iterations`` steps, with the regularizer ``reg_weight`` * sum(1 -
    |2 h - 1|^beta) from the end of the ``warmup`` share, beta annealed from
    ``beta[0]`` to ``beta[1]``; each weight is then rounded up where h >= 0.5.
    The returned model holds scale * code: quantizing it with the same
    options gives back these codes (``record.layers[i].codes``), except in
    a channel whose scale quantize() enlarges for its int32 bias, or whose
    kernel remedy ``target="portable"`` chooses afterwards.

    With ``inputs="fp32"`` (default) the layer's inputs come from the FP32
    model (all layers above unchanged): the loss is E[((W~ - W) x)^2], one run
    of the model per layer caches x and the layers are independent. With
    ``inputs="quantized"`` (Nagel et al.'s asymmetric reconstruction) the
    layer also sees xq, its input in the model whose layers above already
    hold AdaRound's weights, and the loss is E[(W x - W~ xq)^2]: the layer
    learns to make up for the error above it (two runs per layer). The engine
    keeps only Gram matrices of the inputs, so every cached position enters
    every step. Activations are not quantized in these runs.

    Args:
        model: ModelProto, bytes or path (never modified); normalised first
            unless it already is.
        samples: calibration samples, as :meth:`~onnxquant.Calibrator.collect_data`
            takes them; read once and kept in memory.
        options: the :class:`~onnxquant.QuantOptions` the model will be
            quantized with (default ``QuantOptions()``).
        iterations: Adam steps per layer (default 1000).
        reg_weight: lambda of the rounding regularizer (default 0.01).
        beta: (start, end) of the annealed exponent (default (20, 2)).
        warmup: share of the steps without regularizer (default 0.2).
        learning_rate: Adam's step size (default 0.03; chosen on ResNet8 W4A8 among 0.01 and 0.03).
        max_samples: use only the first this many samples (default all).
        batch_size: samples stacked per model run where the batch dimension
            is dynamic (default 32).
        threads: native threads (default: the CPUs this process may use).
        inputs: ``"fp32"`` or ``"quantized"``, see above (default "fp32").
        progress: progress bar over the layers (tqdm if installed, else a
            line on stderr; default True).

    Returns:
        (the model with rounded weights, normalised, :class:`AdaRoundRecord`).

    Raises:
        CalibrationDataError: no samples, or samples that do not fit the model.
        InvalidArgumentError: options that are not a QuantOptions, or a
            setting out of its domain (named).
        ModelError: a node whose attributes do not fit its weight (named).
        UnsupportedModelError: an already quantized model.
        KeyboardInterrupt: raised from the progress callback; the engine stops.
    """
    if options is None:
        options = QuantOptions()
    if not isinstance(options, QuantOptions):
        raise InvalidArgumentError(
            f"options must be a QuantOptions, got {type(options).__name__}.")
    for name, value, ok in (
            ("iterations", iterations, isinstance(iterations, int) and iterations >= 1),
            ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1),
            ("max_samples", max_samples, max_samples is None or (
                isinstance(max_samples, int) and max_samples >= 1)),
            ("threads", threads, threads is None or (isinstance(threads, int) and threads >= 1)),
            ("reg_weight", reg_weight, reg_weight >= 0),
            ("learning_rate", learning_rate, learning_rate > 0),
            ("warmup", warmup, 0 <= warmup < 1),
            ("beta", beta, len(beta) == 2 and beta[0] >= beta[1] > 0),
            ("inputs", inputs, inputs in ("fp32", "quantized"))):
        if not ok:
            raise InvalidArgumentError(
                f"adaround: {name}={value!r} is out of its domain (iterations, batch_size, "
                "max_samples, threads >= 1; reg_weight >= 0; learning_rate > 0; "
                "0 <= warmup < 1; beta = (start, end) with start >= end > 0; inputs "
                "'fp32' or 'quantized').")
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "adaround")
    if options.uses_int4:
        from onnxquant.quantize import upgrade_for_int4
        proto = upgrade_for_int4(proto)
    feeds, count = _feeds(proto, samples, batch_size, "adaround")
    if max_samples is not None and count > max_samples:
        kept, count = [], 0
        for feed in feeds:
            n = next(iter(feed.values())).shape[0]
            if count >= max_samples:
                break
            take = min(n, max_samples - count)
            kept.append({k: v[:take] for k, v in feed.items()} if take < n else feed)
            count += take
        feeds = kept
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    data = model_to_bytes(proto)
    dtypes = infer_dtypes(proto)
    native = options.to_native(data, dtypes, proto)
    layers, skipped = _core.adaround_targets(data, dtypes, native)
    graph_inputs = {i.name for i in proto.graph.input}
    bar = _ProgressLine(len(layers), progress)
    rounded: dict[str, np.ndarray] = {}
    current = proto  # with AdaRound's weights so far (inputs="quantized")
    done = []

    def cache(model: onnx.ModelProto, name: str) -> list[np.ndarray]:
        session = _session(_prefix(model, [name], {}))
        return [np.ascontiguousarray(session.run([name], f)[0], dtype=np.float32)
                for f in feeds]

    try:
        for index, layer in enumerate(layers):
            t0 = time.perf_counter()
            name = layer["input"]
            quantized = []
            if name in graph_inputs:
                cached = [np.ascontiguousarray(f[name], dtype=np.float32) for f in feeds]
            else:
                cached = cache(proto, name)
                if inputs == "quantized" and rounded:
                    quantized = cache(current, name)
            weight, codes, stats = _core.adaround_layer(
                data, dtypes, native, layer["node"], cached, iterations, float(reg_weight),
                float(beta[0]), float(beta[1]), float(warmup), float(learning_rate),
                threads, bar.callback(index, layer["node"]), quantized)
            del cached, quantized
            rounded[layer["weight"]] = weight
            if inputs == "quantized":
                if current is proto:
                    current = onnx.ModelProto()
                    current.CopyFrom(proto)
                for t in current.graph.initializer:
                    if t.name == layer["weight"]:
                        t.CopyFrom(onnx.numpy_helper.from_array(weight, t.name))
            done.append(AdaRoundLayer(layer["node"], layer["weight"], stats["share_up"],
                                      stats["share_changed"], stats["loss_nearest"],
                                      stats["loss_final"], codes,
                                      time.perf_counter() - t0))
    finally:
        bar.close()
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    for t in result.graph.initializer:
        if t.name in rounded:
            t.CopyFrom(onnx.numpy_helper.from_array(rounded[t.name], t.name))
    record = AdaRoundRecord(tuple(done), tuple(tuple(s) for s in skipped), count, iterations,
                            time.perf_counter() - start, normalized_here)
    return result, record
