"""Where an INT8 classifier loses: per-tensor error figures of one quantized model.

For every activation tensor onnxquant quantized, on a few hundred test images:

- *own* SQNR: the FP32 tensor against its own fake-quantization with the range it was
  given (uint8, asymmetric, as ``quantize`` makes it), i.e. the error that tensor's range
  alone adds;
- *accumulated* SQNR: the INT8 model's tensor (QDQ emulated) against the FP32 model's
  (``onnxquant.analysis.tensor_sqnr``), i.e. the error carried from the input up to it.

SQNR = 10 log10(sum x^2 / sum (x - x_q)^2) in dB; lower is worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxquant.analysis import _with_outputs, tensor_sqnr

IMAGES = 256  # test images the figures are taken on (the first ones)
SHOWN = 5     # tensors listed per model: the lowest own SQNR


@dataclass
class TensorError:
    tensor: str
    op_type: str          # the producing node's op ("input" for a graph input)
    own_db: float
    accumulated_db: float


@dataclass
class ModelErrors:
    method: str
    images: int
    tensors: list[TensorError]   # every quantized activation, lowest own SQNR first
    output: str
    output_db: float             # accumulated SQNR of the model's (first) output


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _fake_quant(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 asymmetric quantize-dequantize of x with the range [low, high] (0 inside)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        return np.zeros_like(x, dtype=np.float64)
    scale = (high - low) / 255.0
    zero = round(-low / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return (q - zero) * scale


def _own_sqnr(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
              x: np.ndarray, threads: int | None) -> dict[str, float]:
    inputs = {i.name for i in model.graph.input}
    names = [t for t in ranges if t not in inputs]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(_with_outputs(model, names), options,
                                   providers=["CPUExecutionProvider"])
    input_name = model.graph.input[0].name
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    step = fixed or 32  # a fixed batch dim (MNIST's 1) is fed as it is
    signal = dict.fromkeys(ranges, 0.0)
    noise = dict.fromkeys(ranges, 0.0)
    for start in range(0, len(x) - len(x) % step, step):
        feed = x[start:start + step]
        values = dict(zip(names, session.run(names, {input_name: feed})))
        if input_name in ranges:
            values[input_name] = feed
        for name, v in values.items():
            v64 = v.astype(np.float64)
            signal[name] += float(np.sum(v64 * v64))
            noise[name] += float(np.sum((v64 - _fake_quant(v64, *ranges[name])) ** 2))
    return {n: _sqnr(signal[n], noise[n]) for n in ranges}


def tensor_errors(model: onnx.ModelProto, quantized: onnx.ModelProto,
                  ranges: dict[str, tuple[float, float]], x: np.ndarray, method: str,
                  threads: int | None = None) -> ModelErrors:
    """The figures above for ``quantized`` (made from ``model`` with ``ranges``) on the
    first ``IMAGES`` samples of ``x``."""
    x = x[:IMAGES]
    own = _own_sqnr(model, ranges, x, threads)
    output = model.graph.output[0].name
    accumulated = tensor_sqnr(model, quantized, [x[i:i + 1] for i in range(len(x))],
                              tensors=[*ranges, output] if output not in ranges else ranges)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    rows = [TensorError(t, producer.get(t, "input"), own[t], accumulated.get(t, math.nan))
            for t in ranges]
    rows.sort(key=lambda r: r.own_db)
    return ModelErrors(method, len(x), rows, output, accumulated.get(output, math.nan))


def render_errors(results) -> list[str]:
    """The report section: per model, the SHOWN tensors with the lowest own SQNR."""
    with_errors = [r for r in results if getattr(r, "errors", None) is not None]
    if not with_errors:
        return []
    first = with_errors[0].errors
    lines = [
        "",
        (f"## Where INT8 loses: per-tensor error ({first.method}, first {first.images} test "
         "images)"),
        "",
        ("Own SQNR: each activation tensor of the FP32 model against its own uint8 "
         "quantize-dequantize with the range it was given (the error that range alone adds). "
         "Accumulated SQNR: the INT8 model's tensor (QDQ emulated) against the FP32 model's "
         "(`onnxquant.analysis.tensor_sqnr`: error carried from the input up to it). "
         f"SQNR = 10 log10(Σx² / Σ(x − x_q)²), dB; lower is worse. The {SHOWN} tensors with "
         "the lowest own SQNR per model, then the model's output."),
        "",
        "| model | tensor | op | own SQNR (dB) | accumulated SQNR (dB) |",
        "|---|---|---|---:|---:|",
    ]
    for r in with_errors:
        e = r.errors
        for t in e.tensors[:SHOWN]:
            lines.append(f"| {r.entry.name} | `{t.tensor}` | {t.op_type} | {t.own_db:.1f} | "
                         f"{t.accumulated_db:.1f} |")
        lines.append(f"| {r.entry.name} | output `{e.output}` | — | — | {e.output_db:.1f} |")
    return lines
