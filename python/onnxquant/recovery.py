"""Accuracy recovery before quantization: cross-layer equalization and
empirical bias correction (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", 2019), and AdaRound (Nagel et al.,
"Up or Down? Adaptive Rounding for Post-Training Quantization", 2020).

Both take a model (normalised by :func:`~onnxquant.optimize_model`, or
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
``bias_correction``, ``weight_range_search``, ``adaround``); bias correction
and AdaRound run the model with ONNX Runtime from here.
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
from onnxquant.errors import CalibrationDataError, InvalidArgumentError
from onnxquant.quantize import QuantOptions

__all__ = [
    "AdaRoundLayer",
    "AdaRoundRecord",
    "BiasCorrectionRecord",
    "EqualizationRecord",
    "EqualizedPair",
    "adaround",
    "correct_bias",
    "equalize_cross_layer",
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
    the accuracy. High-bias absorption is not done.

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
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


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
    feeds = [feed for feed, _ in batch_samples(samples, input_specs(proto), batch_size)]
    if not feeds:
        raise CalibrationDataError("correct_bias got no samples; pass at least one.")
    count = sum(next(iter(f.values())).shape[0] for f in feeds)
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
    feeds = [feed for feed, _ in batch_samples(samples, input_specs(proto), batch_size)]
    if max_samples is not None:
        kept, count = [], 0
        for feed in feeds:
            n = next(iter(feed.values())).shape[0]
            if count >= max_samples:
                break
            take = min(n, max_samples - count)
            kept.append({k: v[:take] for k, v in feed.items()} if take < n else feed)
            count += take
        feeds = kept
    if not feeds:
        raise CalibrationDataError("adaround got no samples; pass at least one.")
    count = sum(next(iter(f.values())).shape[0] for f in feeds)
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
