"""Where quantization loses accuracy: per-tensor error of an INT8 model
against its FP32 original, on the same samples (:func:`tensor_sqnr`); and how
much of the model's arithmetic runs in INT8 (:func:`mac_share`).

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
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnxquant._model import ModelLike, load_model
from onnxquant._payloads import Workspace, ort_session, split_model
from onnxquant._samples import batch_samples, input_specs
from onnxquant._shapes import infer_shapes, tensor_shape

__all__ = ["MacShare", "mac_counts", "mac_share", "tensor_sqnr"]


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


#: The ops whose multiply-accumulates :func:`mac_counts` counts.
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Integer ops that replace a MAC node under its name (quantize_dynamic).
_INTEGER_OPS = ("MatMulInteger", "ConvInteger")

# Initializers up to this size keep their values for shape inference (shape
# constants of Reshape, Slice, ...); larger ones travel as typed inputs.
_SMALL_INITIALIZER = 1024


@dataclass(frozen=True)
class MacShare:
    """The multiply-accumulates of a model's Conv, ConvTranspose, Gemm and
    MatMul nodes (main graph), and how many of them run in INT8.

    ``total``: MACs of the nodes whose shapes are known; ``int8``: MACs of
    those that run in INT8; ``float_nodes``: ``{node: MACs}`` of the counted
    nodes left in float, largest first; ``unknown``: nodes whose MACs could
    not be told from the inferred shapes (left out of both figures).
    """

    total: int = 0
    int8: int = 0
    float_nodes: dict[str, int] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()

    @property
    def share(self) -> float:
        """``int8 / total``; NaN when the model has no counted MACs."""
        return self.int8 / self.total if self.total else math.nan


def _shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model``'s main graph for shape inference: large
    initializers become graph inputs of the same type and shape, so that
    their payload is not copied."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.node.extend(model.graph.node)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        external = init.data_location == onnx.TensorProto.EXTERNAL
        if not external and init.ByteSize() <= _SMALL_INITIALIZER:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims)))
    return skeleton


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """``{tensor: shape}`` of every tensor of the main graph whose dims are
    all known after ONNX shape inference (data propagation on)."""
    inferred = infer_shapes(_shape_skeleton(model)).graph
    shapes: dict[str, tuple[int, ...]] = {}
    for value in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        dims = tensor_shape(value)
        if dims is not None and all(isinstance(d, int) for d in dims):
            shapes[value.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The multiply-accumulates of one MAC op, or None when a shape it needs
    is unknown."""
    def shape(k: int) -> tuple[int, ...] | None:
        return shapes.get(node.input[k]) if len(node.input) > k else None

    out = shapes.get(node.output[0])
    weight = shape(1)
    if node.op_type == "Conv":
        if out is None or weight is None:
            return None
        return math.prod(out) * math.prod(weight[1:])  # weight: [M, C/group, k...]
    if node.op_type == "ConvTranspose":
        x = shape(0)
        if x is None or weight is None:
            return None
        # Each input element meets (M / group) * prod(k) weights: weight [C, M/group, k...].
        return math.prod(x) * math.prod(weight[1:])
    a = shape(0)
    if out is None or a is None or not a:
        return None
    if node.op_type == "Gemm":
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[-1])
    return math.prod(out) * a[-1]  # MatMul: K is A's last dim (A 1-D included)


def mac_counts(model: ModelLike) -> tuple[dict[str, int], tuple[str, ...]]:
    """``({node: MACs}, unknown)`` for the Conv, ConvTranspose, Gemm and
    MatMul nodes of ``model``'s main graph (by node name; unnamed nodes are
    skipped), from ONNX shape inference with data propagation. ``unknown``:
    the nodes whose MACs cannot be told because a shape is not known
    (a dynamic dimension, or inference stopped early)."""
    m = load_model(model, load_external_data=False)
    shapes = _known_shapes(m)
    counts: dict[str, int] = {}
    unknown: list[str] = []
    for node in m.graph.node:
        if node.op_type not in MAC_OPS or not node.name:
            continue
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name)
        else:
            counts[node.name] = macs
    return counts, tuple(unknown)


def _int8_nodes(quantized: onnx.ModelProto) -> set[str]:
    """The MAC nodes of a QDQ model whose data input and weight (inputs 0
    and 1) are both DequantizeLinear outputs: ONNX Runtime may run them on
    integer kernels; and the MatMulInteger/ConvInteger nodes of a
    dynamically quantized model."""
    dequantized = {n.output[0] for n in quantized.graph.node
                   if n.op_type == "DequantizeLinear"}
    qdq = {n.name for n in quantized.graph.node
           if n.op_type in MAC_OPS and len(n.input) >= 2
           and n.input[0] in dequantized and n.input[1] in dequantized}
    # quantize_dynamic's MatMulInteger keeps the name of the node it replaces.
    return qdq | {n.name for n in quantized.graph.node if n.op_type in _INTEGER_OPS}


def _runs_integer(report) -> set[str] | None:
    """The nodes ONNX Runtime runs on integer kernels according to a
    :class:`~onnxquant.QuantizationReport`, or None when it does not say."""
    if report is None or report.runtime is None:
        return None
    return {n.node for n in report.quantized_nodes + report.float_nodes
            if not n.graph and n.runs_as.endswith("(integer)")}


def mac_share(model: ModelLike, quantized: ModelLike, report=None) -> MacShare:
    """How many of ``model``'s multiply-accumulates run in INT8 in
    ``quantized``.

    ``model``: the FP32 model ``quantized`` was made from (the output of
    :func:`~onnxquant.optimize_model`: node names must match); its shapes give
    each Conv, ConvTranspose, Gemm and MatMul node's MACs
    (:func:`mac_counts`). A node counts as INT8 when, in ``quantized``, its
    input 0 and its weight (input 1) both come from a DequantizeLinear, or
    a MatMulInteger or ConvInteger of the same name replaced it
    (:func:`~onnxquant.quantize_dynamic`). With
    ``report`` (the :class:`~onnxquant.QuantizationReport` of ``quantize``),
    it must moreover be run on an integer kernel by ONNX Runtime's CPU
    provider (its ``runs_as``), unless the report could not tell.
    Only the main graph is counted (not If/Loop/Scan bodies).
    """
    counts, unknown = mac_counts(model)
    int8 = _int8_nodes(load_model(quantized, load_external_data=False))
    runs_integer = _runs_integer(report)
    if runs_integer is not None:
        int8 &= runs_integer
    floats = {n: c for n, c in counts.items() if n not in int8}
    return MacShare(total=sum(counts.values()),
                    int8=sum(c for n, c in counts.items() if n in int8),
                    float_nodes=dict(sorted(floats.items(), key=lambda kv: -kv[1])),
                    unknown=unknown)
