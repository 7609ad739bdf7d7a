"""Dynamic quantization of MatMul and Gemm: :func:`quantize_dynamic`.

Weights are quantized once, to int8 per output column; activations are
quantized at run time, per run, with the scale and zero point of the values
at hand (``DynamicQuantizeLinear``), so no calibration is needed and no range
can be wrong for a batch: what CPU users of transformers reach for when
static ranges fail (masks, outliers, lengths that vary). Each node becomes

    x -> DynamicQuantizeLinear -> (x_q, x_scale, x_zero_point)
    MatMulInteger(x_q, w_q, x_zero_point, w_zero_point) -> Cast(float)
      -> Mul(Mul(x_scale, w_scale)) [-> Add(bias) for Gemm]

the pattern ONNX Runtime's CPU provider fuses into ``DynamicQuantizeMatMul``
(``MatMulIntegerToFloat`` where the weight is not constant) at its default
optimization level. The MatMulInteger keeps the original node's name, so
that :func:`onnxquant.analysis.mac_share` counts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.checker
from onnx import TensorProto, helper, numpy_helper

from onnxquant._graph_walk import all_nodes
from onnxquant._model import QUANTIZED_KEY, ModelLike, load_model, set_metadata
from onnxquant.errors import InvalidArgumentError
from onnxquant.quantize import _names, require_normalized

__all__ = ["DynamicReport", "quantize_dynamic"]

_OP_TYPES = ("MatMul", "Gemm")
# uint8 activations times int8 weights: on x86 CPUs without VNNI, ONNX
# Runtime adds pairs of products in 16 bits with saturation; 255 * 63 * 2 <
# 2^15 - 1, 255 * 127 * 2 is not. "exact" kernels take full-range weights.
_WEIGHT_QMAX = {"portable": 63, "exact": 127}


@dataclass(frozen=True)
class DynamicReport:
    """What :func:`quantize_dynamic` did: ``quantized``: the MatMul/Gemm nodes
    now run as MatMulInteger (by name); ``float_nodes``: ``(node, reason)``
    for the MatMul/Gemm nodes left float; ``weight_qmax``: the largest
    weight code (63 for ``target="portable"``, 127 for ``"exact"``)."""

    quantized: tuple[str, ...] = ()
    float_nodes: tuple[tuple[str, str], ...] = ()
    weight_qmax: int = 127

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the report."""
        return {"quantized": list(self.quantized),
                "float_nodes": [{"node": n, "reason": r} for n, r in self.float_nodes],
                "weight_qmax": self.weight_qmax}

    def __str__(self) -> str:
        lines = [f"Dynamic quantization: {len(self.quantized)} nodes as MatMulInteger, "
                 f"weights in [-{self.weight_qmax}, {self.weight_qmax}] per column"]
        lines += [f"  float: {node} ({reason})" for node, reason in self.float_nodes]
        return "\n".join(lines)


def quantize_dynamic(model: ModelLike, *, op_types: Iterable[str] = _OP_TYPES,
                     exclude_nodes: Iterable[str] = (), per_channel: bool = True,
                     quantize_activation_matmul: bool = True, target: str = "portable",
                     return_report: bool = False):
    """Returns ``model`` with its MatMul and Gemm nodes quantized dynamically.

    Args:
        model: the output of :func:`~onnxquant.optimize_model` (ModelProto,
            bytes or path; never modified).
        op_types: which of ``"MatMul"`` and ``"Gemm"`` to quantize (default
            both).
        exclude_nodes: names of nodes kept in float (default none).
        per_channel: one weight scale per output column (default True), or
            one per weight.
        quantize_activation_matmul: also quantize MatMul of two activations
            (attention's Q.K^T and scores.V), both sides dynamically, as
            uint8 x uint8 (default True).
        target: ``"portable"`` (default): weights in [-63, 63], so that ONNX
            Runtime's uint8 x int8 kernels cannot saturate on x86 CPUs
            without VNNI; ``"exact"``: [-127, 127], for CPUs whose kernels
            accumulate exactly (VNNI, AMX, ARM64).
        return_report: also return a :class:`DynamicReport` (default False).

    Returns:
        The quantized ``onnx.ModelProto`` (stamped ``onnxquant.quantized``),
        or ``(model, report)`` with ``return_report=True``. A MatMul whose
        constant weight is not 2-D, a Gemm with ``transA`` or without a
        constant weight, and a MatMul of two activations with
        ``quantize_activation_matmul=False`` stay float; the report says
        why.

    Raises:
        ModelError: the model was not normalised by optimize_model.
        UnsupportedModelError: the model is already quantized.
        InvalidArgumentError: an option outside its domain, or an excluded
            node the model lacks.
    """
    op_types = _names("op_types", op_types)
    unknown = [t for t in op_types if t not in _OP_TYPES]
    if unknown:
        raise InvalidArgumentError(
            f"quantize_dynamic quantizes MatMul and Gemm; op_types holds {unknown[0]!r}. "
            "Quantize other ops statically with onnxquant.quantize.")
    if target not in _WEIGHT_QMAX:
        raise InvalidArgumentError(
            f"target must be 'portable' (every CPU) or 'exact' (kernels that accumulate "
            f"exactly: VNNI, AMX, ARM64), got {target!r}.")
    for name, value in (("per_channel", per_channel),
                        ("quantize_activation_matmul", quantize_activation_matmul)):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{name} must be True or False, got {value!r}.")
    excluded = set(_names("exclude_nodes", exclude_nodes))
    work = load_model(model)
    require_normalized(work, "quantize_dynamic")
    missing = sorted(excluded - {n.name for n in work.graph.node})
    if missing:
        raise InvalidArgumentError(
            f"exclude_nodes names {missing[0]!r}, which is not a node of the model's main "
            "graph; pass names of its nodes (as optimize_model named them).")
    result = onnx.ModelProto()
    result.CopyFrom(work)
    rewriter = _Rewriter(result.graph, _WEIGHT_QMAX[target], per_channel)
    quantized, floats = [], []
    nodes = list(result.graph.node)
    del result.graph.node[:]
    for node in nodes:
        reason = None
        if node.op_type in op_types and node.name not in excluded:
            reason = rewriter.rewrite(node, quantize_activation_matmul)
        if reason is None and node.op_type in op_types and node.name not in excluded:
            quantized.append(node.name)
            continue
        if node.op_type in _OP_TYPES:
            floats.append((node.name, reason or "excluded"))
        rewriter.emit(node)
    rewriter.finish()
    set_metadata(result, QUANTIZED_KEY, _version())
    onnx.checker.check_model(result)
    report = DynamicReport(tuple(quantized), tuple(floats), _WEIGHT_QMAX[target])
    return (result, report) if return_report else result


def _version() -> str:
    from onnxquant import __version__
    return __version__


def quantize_weight(weight: np.ndarray, qmax: int, per_channel: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, scale)``: int8 codes in [-qmax, qmax] of a [K, N] weight,
    symmetric, with one float32 scale per column N (or one in all); a column
    of zeros gets scale 1."""
    w = weight.astype(np.float32)
    peak = np.abs(w).max(axis=0) if per_channel else np.array(np.abs(w).max())
    scale = (peak / np.float32(qmax)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return codes, scale


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """The names the nodes of ``graph`` and of every body in it read."""
    return {name for node in all_nodes(graph) for name in node.input}


class _Rewriter:
    """Writes the nodes of one graph anew, replacing MatMul/Gemm by the
    dynamic pattern."""

    def __init__(self, graph: onnx.GraphProto, qmax: int, per_channel: bool) -> None:
        self.graph, self.qmax, self.per_channel = graph, qmax, per_channel
        self.initializers = {i.name: i for i in graph.initializer}
        self.used = {n for node in graph.node for n in (*node.input, *node.output)}
        self.used |= set(self.initializers) | {i.name for i in graph.input}
        self.quantized_inputs: dict[str, tuple[str, str, str]] = {}
        self.new_initializers: list[TensorProto] = []
        self.replaced: set[str] = set()

    def emit(self, node: onnx.NodeProto) -> None:
        self.graph.node.append(node)

    def finish(self) -> None:
        """Adds the new initializers and drops the float weights replaced
        that nothing reads any more (in any graph, bodies included)."""
        self.graph.initializer.extend(self.new_initializers)
        read = {o.name for o in self.graph.output} | _read_names(self.graph)
        kept = [i for i in self.graph.initializer
                if i.name in read or i.name not in self.replaced]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def _constant(self, base: str, array: np.ndarray) -> str:
        name = self._fresh(base)
        self.new_initializers.append(numpy_helper.from_array(array, name))
        return name

    def _dynamic_input(self, tensor: str) -> tuple[str, str, str]:
        """The (codes, scale, zero point) of ``tensor``, quantized at run time;
        one DynamicQuantizeLinear per tensor however many nodes read it."""
        if tensor not in self.quantized_inputs:
            outs = tuple(self._fresh(f"{tensor}_{s}") for s in ("quantized", "scale", "zero"))
            self.emit(helper.make_node("DynamicQuantizeLinear", [tensor], list(outs),
                                       name=self._fresh(f"{tensor}_DynamicQuantizeLinear")))
            self.quantized_inputs[tensor] = outs
        return self.quantized_inputs[tensor]

    def _weight(self, node: onnx.NodeProto) -> np.ndarray | str:
        """The node's constant weight as [K, N] (alpha folded in), or why it
        has none that fits."""
        init = self.initializers.get(node.input[1])
        if init is None:
            return "its weight is not a constant"
        w = numpy_helper.to_array(init)
        if init.data_type != TensorProto.FLOAT or w.ndim != 2:
            return f"its weight is {w.ndim}-D {TensorProto.DataType.Name(init.data_type)}, " \
                   "not a 2-D float matrix"
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                return "Gemm with transA"
            if attrs.get("transB", 0):
                w = w.T
            w = w * np.float32(attrs.get("alpha", 1.0))
        return np.ascontiguousarray(w, dtype=np.float32)

    def rewrite(self, node: onnx.NodeProto, activation_matmul: bool) -> str | None:
        """Emits the dynamic form of ``node`` and returns None, or returns why
        it stays float (emitting nothing)."""
        weight = self._weight(node)
        bias = None
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            c = self.initializers.get(node.input[2])
            if c is None:
                return "its bias C is not a constant"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            bias = numpy_helper.to_array(c).astype(np.float32) * np.float32(
                attrs.get("beta", 1.0))
        if isinstance(weight, str):
            if node.op_type != "MatMul" or node.input[1] in self.initializers:
                return weight
            if not activation_matmul:
                return "MatMul of two activations (quantize_activation_matmul=False)"
            b_codes, b_scale, b_zero = self._dynamic_input(node.input[1])
        else:
            codes, scale = quantize_weight(weight, self.qmax, self.per_channel)
            base = node.input[1]
            self.replaced.add(base)
            b_codes = self._constant(f"{base}_quantized", codes)
            b_scale = self._constant(f"{base}_scale", scale)
            b_zero = self._constant(f"{base}_zero_point", np.zeros(scale.shape, np.int8))
        a_codes, a_scale, a_zero = self._dynamic_input(node.input[0])
        out = node.output[0]
        accumulated = self._fresh(f"{out}_int32")
        self.emit(helper.make_node("MatMulInteger", [a_codes, b_codes, a_zero, b_zero],
                                   [accumulated], name=node.name))
        as_float = self._fresh(f"{out}_int32_float")
        self.emit(helper.make_node("Cast", [accumulated], [as_float],
                                   name=self._fresh(f"{node.name}_Cast"), to=TensorProto.FLOAT))
        scale_out = self._fresh(f"{out}_scale")
        self.emit(helper.make_node("Mul", [a_scale, b_scale], [scale_out],
                                   name=self._fresh(f"{node.name}_scale_Mul")))
        scaled = out if bias is None else self._fresh(f"{out}_no_bias")
        self.emit(helper.make_node("Mul", [as_float, scale_out], [scaled],
                                   name=self._fresh(f"{node.name}_Mul")))
        if bias is not None:
            bias_name = self._constant(f"{node.input[2]}_scaled", bias)
            self.replaced.add(node.input[2])
            self.emit(helper.make_node("Add", [scaled, bias_name], [out],
                                       name=self._fresh(f"{node.name}_bias_Add")))
        return None
