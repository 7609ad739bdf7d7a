"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", 2020): the optimization in ``cpp/onnxquant/adaround*``, each
layer's inputs cached here with ONNX Runtime. Public through
:mod:`onnxquant.recovery`."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper

from onnxquant import _core
from onnxquant._model import ModelLike, model_to_bytes
from onnxquant._recovery_runs import _feeds, _normalized, _prefix, _session
from onnxquant._shapes import infer_dtypes
from onnxquant.errors import InvalidArgumentError
from onnxquant.quantize import QuantOptions, options_or_default


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
    """AdaRound: learned rounding of the weight of every Conv and
    ConvTranspose (1-D or 2-D, grouped and depthwise included; not a
    ConvTranspose with ``output_shape`` or ``auto_pad`` SAME), Gemm and MatMul
    with a constant weight that the plan for ``options`` quantizes, layer by
    layer in graph order.

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
    of the model per layer gives x and the layers are independent. With
    ``inputs="quantized"`` (Nagel et al.'s asymmetric reconstruction) the
    layer also sees xq, its input in the model whose layers above already
    hold AdaRound's weights, and the loss is E[(W x - W~ xq)^2]: the layer
    learns to make up for the error above it (two runs per layer). The engine
    sums the Gram matrices of the inputs (E[x x^T]) batch by batch, so that
    only one batch of a layer's inputs is in memory at a time and every
    input position enters every step. Activations are not quantized in these
    runs.

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
    options = options_or_default(options)
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
    # Parsed and planned once: every layer's Grams (and rounding) reads it.
    planned = _core.AdaRoundModel(data, dtypes, native)
    layers, skipped = planned.layers, planned.skipped
    graph_inputs = {i.name for i in proto.graph.input}
    bar = _ProgressLine(len(layers), progress)
    rounded: dict[str, np.ndarray] = {}
    current = proto  # with AdaRound's weights so far (inputs="quantized")
    done = []

    def grams_of(layer: dict[str, str]) -> _core.AdaRoundGrams:
        """The Gram matrices of the layer's inputs, summed batch by batch:
        one batch of its inputs in memory at a time."""
        name = layer["input"]
        grams = _core.AdaRoundGrams(planned, layer["node"])
        if name in graph_inputs:
            for f in feeds:
                grams.add([np.ascontiguousarray(f[name], dtype=np.float32)], [], threads)
            return grams
        fp = _session(_prefix(proto, [name], {}))
        q = (_session(_prefix(current, [name], {}))
             if inputs == "quantized" and rounded else None)
        for f in feeds:
            x = np.ascontiguousarray(fp.run([name], f)[0], dtype=np.float32)
            xq = ([np.ascontiguousarray(q.run([name], f)[0], dtype=np.float32)]
                  if q is not None else [])
            grams.add([x], xq, threads)
        return grams

    try:
        for index, layer in enumerate(layers):
            t0 = time.perf_counter()
            weight, codes, stats = _core.adaround_layer(
                grams_of(layer), iterations, float(reg_weight), float(beta[0]),
                float(beta[1]), float(warmup), float(learning_rate), threads,
                bar.callback(index, layer["node"]))
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
