"""Checks on the model a user brings, before onnxquant changes anything.

:func:`onnxquant.optimize_model` runs them in this order:

1. :func:`refuse_quantized`: a model that is already quantized (QDQ,
   QOperator ``QLinear*`` ops, or dynamically quantized ops such as
   ``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeLinear``,
   ``MatMulNBits``) is refused naming its first such node.
2. :func:`densify_sparse_initializers`: sparse initializers become the dense
   initializers they stand for (the same values; ONNX Runtime densifies them
   too when it loads a model).
3. :func:`fit_ir_version`: an IR version newer than the installed ONNX Runtime
   reads is lowered to one it reads when nothing in the model needs the newer
   one, and refused naming what needs it otherwise.
4. :func:`check_with_onnx_checker`: a model that ``onnx.checker`` rejects is
   refused as malformed, saying that the checker rejected the input.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.checker
import onnx.helper
import onnx.numpy_helper

from onnxquant._graph_walk import all_graphs
from onnxquant.errors import ModelError, UnsupportedModelError

__all__ = [
    "check_with_onnx_checker",
    "densify_sparse_initializers",
    "find_quantized_node",
    "fit_ir_version",
    "is_quantized_op",
    "refuse_quantized",
]

# Ops that take or produce quantized tensors, besides the prefixes below.
_QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "QMoE", "QuantizeBFP", "DequantizeBFP",
    "QuantizeWithOrder", "DequantizeWithOrder", "GatherBlockQuantized",
    "MatMulFpQ4",
})
_QUANTIZED_PREFIXES = ("QLinear", "NhwcQLinear", "QOrdered", "MatMulNBits",
                       "MatMulBnb4", "MatMulBlockQuantized")
_DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM",
                          "DynamicQuantizeMatMul"})

# The first IR version that allows each element type (onnx/onnx.proto3).
# FLOAT4E2M1 (23) and FLOAT8E8M0 (24) by their values in the standard: the
# onnx packages before 1.18 and 1.19, within onnxquant's range, lack the names.
_DTYPE_IR = {
    onnx.TensorProto.FLOAT8E4M3FN: 9, onnx.TensorProto.FLOAT8E4M3FNUZ: 9,
    onnx.TensorProto.FLOAT8E5M2: 9, onnx.TensorProto.FLOAT8E5M2FNUZ: 9,
    onnx.TensorProto.UINT4: 10, onnx.TensorProto.INT4: 10,
    23: 11, 24: 12,
}
_DTYPE_IR_UNKNOWN = onnx.IR_VERSION  # types newer than this table: not lowered
_MIN_IR_VERSION = 7


def _label(node: onnx.NodeProto, index: int) -> str:
    name = f"'{node.name}'" if node.name else f"#{index} (unnamed)"
    return f"node {name} ({node.op_type})"


def is_quantized_op(op_type: str) -> bool:
    """Whether ``op_type`` (in any domain) computes on quantized tensors: Q/DQ,
    QOperator ``QLinear*`` ops, integer ops (``ConvInteger``,
    ``MatMulInteger``, ...), dynamic quantization, block-quantized weights."""
    return (op_type in _QUANTIZED_OPS or op_type.startswith(_QUANTIZED_PREFIXES)
            or "Integer" in op_type)


def find_quantized_node(model: onnx.ModelProto) -> tuple[onnx.NodeProto, int] | None:
    """The first node (main graph first, then subgraphs) that computes on
    quantized tensors, with its index in its graph; None when there is none."""
    for graph in all_graphs(model.graph):
        for index, node in enumerate(graph.node):
            if is_quantized_op(node.op_type):
                return node, index
    return None


def refuse_quantized(model: onnx.ModelProto, what: str, *,
                     stamped: bool = False) -> None:
    """Raises UnsupportedModelError when ``model`` is already quantized: it has
    a node :func:`is_quantized_op` matches (the message names the first), or
    ``stamped`` (onnxquant's own ``onnxquant.quantized`` stamp) is set."""
    found = find_quantized_node(model)
    if found is None and not stamped:
        return
    if found is None:
        detail = "it carries onnxquant's 'onnxquant.quantized' stamp"
    else:
        node, index = found
        kind = "dynamically quantized" if node.op_type in _DYNAMIC_OPS or \
            "Integer" in node.op_type else "quantized"
        detail = f"{_label(node, index)} is a {kind} op"
    raise UnsupportedModelError(
        f"{what} takes a float model, and this one is already quantized: {detail}. "
        "Pass the float model it was made from.")


def densify_sparse_initializers(model: onnx.ModelProto) -> int:
    """Replaces every sparse initializer (main graph and subgraphs) by the
    dense initializer holding the same values, in place; returns how many.

    Raises:
        ModelError: a sparse initializer whose indices or values do not fit
            its dims (names the tensor).
    """
    count = 0
    for graph in all_graphs(model.graph):
        if not graph.sparse_initializer:
            continue
        for sparse in graph.sparse_initializer:
            graph.initializer.append(_densify(sparse))
            count += 1
        del graph.sparse_initializer[:]
    return count


def _densify(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    name = sparse.values.name
    try:
        dims = [int(d) for d in sparse.dims]
        if any(d < 0 for d in dims):
            raise ValueError(f"negative dims {dims}")
        size = 1
        for d in dims:
            size *= d
        values = onnx.numpy_helper.to_array(sparse.values).reshape(-1)
        indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            if indices.shape[1] != len(dims):
                raise ValueError(f"indices of rank {indices.shape[1]} for dims {dims}")
            if np.any(indices < 0) or np.any(indices >= np.array(dims, dtype=np.int64)):
                raise ValueError("an index outside the dims")
            indices = np.ravel_multi_index(tuple(indices.T), dims) if size else indices[:, 0]
        elif indices.ndim != 1:
            raise ValueError(f"indices of rank {indices.ndim}")
        if indices.size != values.size:
            raise ValueError(f"{indices.size} indices for {values.size} values")
        if np.any(indices < 0) or np.any(indices >= size):
            raise ValueError("an index outside the dims")
        dense = np.zeros(size, dtype=values.dtype)
        dense[indices] = values
    except (ValueError, TypeError, MemoryError) as e:
        raise ModelError(
            f"Sparse initializer '{name}' is malformed ({e}); re-export the model with "
            "the tensor stored dense.") from e
    return onnx.numpy_helper.from_array(dense.reshape(dims), name)


def check_with_onnx_checker(model: onnx.ModelProto, what: str) -> None:
    """Raises ModelError when ``onnx.checker.check_model`` rejects ``model``
    as it came (the message says so, with the checker's first line). A model
    past protobuf's 2 GB limit, which the checker takes only as a file, is
    not checked here."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        reason = "; ".join(lines[:2]).rstrip(".") if lines else type(e).__name__
        raise ModelError(
            f"{what} fails ONNX's checker before onnxquant changes anything ({reason}). "
            "The model itself is invalid: fix or re-export it "
            "(onnx.checker.check_model(model) shows the same).") from e
    except ValueError as e:
        if "2GB" not in str(e) and "too large" not in str(e):
            raise ModelError(f"{what} cannot be checked by ONNX's checker ({e}).") from e


def _opset_ir(model: onnx.ModelProto) -> tuple[int, str]:
    """The least IR version the model's opset imports need, and why."""
    need, why = _MIN_IR_VERSION, ""
    for entry in model.opset_import:
        column = {"": 2, "ai.onnx": 2, "ai.onnx.ml": 3}.get(entry.domain)
        if column is None:
            continue
        for row in onnx.helper.VERSION_TABLE:
            if len(row) > column and row[column] >= entry.version:
                if row[1] > need:
                    domain = entry.domain or "ai.onnx"
                    need, why = row[1], f"opset {entry.version} of {domain}"
                break
        else:
            return onnx.IR_VERSION, f"opset {entry.version} of {entry.domain or 'ai.onnx'}"
    return need, why


def _content_ir(model: onnx.ModelProto) -> tuple[int, str]:
    """The least IR version the model's element types and features need."""
    need, why = _MIN_IR_VERSION, ""

    def note(version: int, reason: str) -> None:
        nonlocal need, why
        if version > need:
            need, why = version, reason

    if model.functions:
        note(8, f"its local function '{model.functions[0].name}'")
    for graph in all_graphs(model.graph):
        if graph.metadata_props:
            note(10, f"metadata_props on graph '{graph.name}'")
        for tensor in graph.initializer:
            if tensor.data_type > onnx.TensorProto.BFLOAT16:
                note(_DTYPE_IR.get(tensor.data_type, _DTYPE_IR_UNKNOWN),
                     f"initializer '{tensor.name}' of type "
                     f"{onnx.TensorProto.DataType.Name(tensor.data_type)}")
        for value in (*graph.input, *graph.output, *graph.value_info):
            elem = value.type.tensor_type.elem_type
            if elem > onnx.TensorProto.BFLOAT16:
                note(_DTYPE_IR.get(elem, _DTYPE_IR_UNKNOWN),
                     f"tensor '{value.name}' of type {onnx.TensorProto.DataType.Name(elem)}")
        for index, node in enumerate(graph.node):
            if node.metadata_props:
                note(10, f"metadata_props on {_label(node, index)}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and \
                        attr.t.data_type > onnx.TensorProto.BFLOAT16:
                    note(_DTYPE_IR.get(attr.t.data_type, _DTYPE_IR_UNKNOWN),
                         f"a tensor attribute of {_label(node, index)}")
                elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") \
                        and attr.i > onnx.TensorProto.BFLOAT16:
                    note(_DTYPE_IR.get(attr.i, _DTYPE_IR_UNKNOWN),
                         f"the '{attr.name}' type of {_label(node, index)}")
    return need, why


def _ort_accepts_ir(version: int) -> bool:
    import onnxruntime as ort

    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    probe = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])],
                               "ir_probe", [value], [out]),
        opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=version)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(probe.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT's errors derive from Exception only
        return False
    return True


def ort_max_ir_version(upper: int) -> int:
    """The highest IR version at most ``upper`` that the installed ONNX
    Runtime loads (0 when none from 7 up)."""
    for version in range(upper, _MIN_IR_VERSION - 1, -1):
        if _ort_accepts_ir(version):
            return version
    return 0


def fit_ir_version(model: onnx.ModelProto, what: str) -> int | None:
    """Lowers ``model.ir_version``, in place, to the highest version the
    installed ONNX Runtime loads, when the model's is higher and nothing in it
    (opsets, element types, local functions, metadata on nodes) needs more.
    Returns the original version when it was lowered, else None.

    Raises:
        UnsupportedModelError: the model's IR version is newer than the
            installed ``onnx`` knows, or something in the model needs an IR
            version ONNX Runtime does not load (the message names it).
    """
    version = int(model.ir_version)
    if version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{what} has IR version {version}, newer than the installed onnx "
            f"{onnx.__version__} knows (up to {onnx.IR_VERSION}); upgrade onnx and "
            "onnxruntime, or re-export the model with an older exporter.")
    if version <= _MIN_IR_VERSION or _ort_accepts_ir(version):
        return None
    import onnxruntime as ort

    supported = ort_max_ir_version(version - 1)
    need, why = max(_opset_ir(model), _content_ir(model))
    if supported and need <= supported:
        model.ir_version = supported
        return version
    because = f": {why} needs IR version {need}" if why else ""
    raise UnsupportedModelError(
        f"{what} has IR version {version}, which the installed onnxruntime "
        f"{ort.__version__} does not load (it reads up to IR version {supported}), and "
        f"it cannot be lowered without loss{because}. Upgrade onnxruntime, or re-export "
        "the model at an older opset.")
