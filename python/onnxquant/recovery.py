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
Cross-layer equalization and bias correction live in this module; SmoothQuant
(``_smooth_quant``), high-bias absorption (``_high_bias``) and AdaRound
(``_adaround``) in their own, with what they share in ``_recovery_runs``; all
are public from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper

from onnxquant import _core
from onnxquant._adaround import AdaRoundLayer, AdaRoundRecord, adaround
from onnxquant._frontier import FrontierRunner
from onnxquant._high_bias import HighBiasRecord, absorb_high_bias
from onnxquant._model import ModelLike, model_to_bytes
from onnxquant._recovery_runs import _feeds, _normalized, _reads, _session, _with_outputs
from onnxquant._shapes import infer_dtypes
from onnxquant._smooth_quant import SmoothQuantGroup, SmoothQuantRecord, smooth_quant
from onnxquant.errors import InvalidArgumentError
from onnxquant.quantize import QuantOptions, options_or_default

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


def _node_upstream(model: onnx.ModelProto, layer_nodes: list[str]) -> list[frozenset[str]]:
    """Per node (graph order), the layer nodes upstream of it, itself
    included if it is one."""
    layers = set(layer_nodes)
    above_of: dict[str, frozenset[str]] = {}  # tensor -> layers upstream, its producer included
    out = []
    for node in model.graph.node:
        above: frozenset[str] = frozenset()
        for t in _reads(node):
            above |= above_of.get(t, frozenset())
        if node.name in layers:
            above = above | {node.name}
        out.append(above)
        for t in node.output:
            above_of[t] = above
    return out


def _channel_means(values: list[list[np.ndarray]], outputs: list[str]) -> dict[str, np.ndarray]:
    """Per output name, the mean of each channel (axis 1) over the batches'
    ``values`` (one list per batch, in ``outputs`` order)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in values:
        for name, v in zip(outputs, batch):
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
    of the layer graph, computing only the layers each run needs, from the
    tensors that no later correction can change (kept per batch between
    runs, up to 2 GiB; past that, from the model's inputs). Activations
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
    options = options_or_default(options)
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
    if outputs:
        session = _session(_with_outputs(prepared, outputs))
        reference = _channel_means([session.run(outputs, f) for f in feeds], outputs)
    biases = {layer["bias"]: onnx.numpy_helper.to_array(t).astype(np.float32)
              for layer in layers for t in prepared.graph.initializer
              if t.name == layer["bias"]}
    node_upstream = _node_upstream(emulated, list(by_node))
    upstream = {node.name: node_upstream[i] - {node.name}
                for i, node in enumerate(emulated.graph.node) if node.name in by_node}
    initializers = {t.name: t for t in emulated.graph.initializer}
    initializers.update({name: onnx.numpy_helper.from_array(value, name)
                         for name, value in biases.items()})
    runner = FrontierRunner(emulated, feeds, node_upstream)
    corrections: dict[str, np.ndarray] = {}
    rounds = 0
    pending = list(by_node)
    while pending:
        # Every layer whose corrected ancestors are all done, measured at
        # once on the part of the emulated model that computes them, from
        # the tensors no correction can change any more.
        ready = [n for n in pending if not (upstream[n] - corrections.keys())]
        wanted = [by_node[n]["output"] for n in ready]
        measured = _channel_means(runner.run(wanted, set(corrections), initializers), wanted)
        rounds += 1
        for n in ready:
            layer = by_node[n]
            delta = (measured[layer["output"]] - reference[layer["output"]]).astype(np.float32)
            biases[layer["bias"]] = (biases[layer["bias"]] - delta).astype(np.float32)
            initializers[layer["bias"]] = onnx.numpy_helper.from_array(biases[layer["bias"]],
                                                                       layer["bias"])
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
