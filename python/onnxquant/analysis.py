"""Where quantization loses accuracy: per-tensor error of an INT8 model
against its FP32 original, on the same samples.

Each tensor the INT8 model quantizes keeps its name (the DequantizeLinear
output takes it), so both models can be asked for it and compared. The
figure is the signal-to-quantization-noise ratio in dB,
``10 log10(sum x^2 / sum (x - x_int8)^2)`` accumulated over all samples:
the lower, the more that tensor has lost (error accumulated from the input up
to it, not only its own rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort

from onnxquant._model import ModelLike, load_model
from onnxquant._payloads import Workspace, ort_session, split_model
from onnxquant._samples import batch_samples, input_specs

__all__ = ["tensor_sqnr"]


def _dequantized_names(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> dict[str, str]:
    """FP32 tensor -> the INT8 model's DequantizeLinear output carrying it: the
    same name for node outputs, a new one for graph inputs (whose Q reads the
    input itself)."""
    fp32_names = {o for n in fp32.graph.node for o in n.output} | \
        {i.name for i in fp32.graph.input}
    producer = {o: n for n in int8.graph.node for o in n.output}
    out: dict[str, str] = {}
    for n in int8.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        q = producer.get(n.input[0])
        if n.output[0] in fp32_names:
            out.setdefault(n.output[0], n.output[0])
        elif q is not None and q.op_type == "QuantizeLinear" and q.input[0] in fp32_names:
            out.setdefault(q.input[0], n.output[0])
    return out


def _session_with_outputs(model: onnx.ModelProto, names: list[str], options):
    """A session of ``model`` with ``names`` as extra outputs; the weights
    reach ONNX Runtime through a temporary file (``onnxquant._payloads``)."""
    with Workspace() as workspace:
        m = split_model(model, workspace, fingerprint=False).model
        present = {o.name for o in m.graph.output}
        for name in names:
            if name not in present:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        return ort_session(m, workspace, options, ["CPUExecutionProvider"])


def tensor_sqnr(model: ModelLike, quantized: ModelLike, samples: Iterable[object],
                tensors: Iterable[str] | None = None) -> dict[str, float]:
    """``{tensor: SQNR in dB}`` of the INT8 model's tensors against the FP32
    model's, over ``samples`` (as :meth:`Calibrator.collect_data` takes them).

    ``tensors`` defaults to every FP32 tensor the INT8 model quantizes (graph
    inputs included). The INT8 model runs with QDQ emulated in float. A
    tensor that is identical in both gets ``inf``. Sorted from the lowest
    SQNR (the tensor that lost most) up.
    """
    fp32, int8 = load_model(model), load_model(quantized)
    carried = _dequantized_names(fp32, int8)
    names = list(dict.fromkeys(carried if tensors is None else tensors))
    int8_names = [carried.get(n, n) for n in names]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    quant_options = ort.SessionOptions()
    quant_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    quant_options.add_session_config_entry("session.disable_quant_qdq", "1")
    ref = _session_with_outputs(fp32, names, options)
    cand = _session_with_outputs(int8, int8_names, quant_options)
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for feed, _ in batch_samples(samples, input_specs(fp32), 32, 0):
        a = ref.run(names, feed)
        b = cand.run(int8_names, feed)
        for name, x, y in zip(names, a, b):
            x64 = x.astype(np.float64)
            signal[name] += float(np.sum(x64 * x64))
            noise[name] += float(np.sum((x64 - y) ** 2))
    out = {n: (math.inf if noise[n] == 0 else
               10 * math.log10(signal[n] / noise[n]) if signal[n] > 0 else -math.inf)
           for n in names}
    return dict(sorted(out.items(), key=lambda kv: kv[1]))
