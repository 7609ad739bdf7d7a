"""Types and shapes of a model's tensors, from ONNX inference and ONNX Runtime.

The engine needs to know which tensors are float: :func:`infer_dtypes` gives it
a map from tensor name to ONNX element type. ONNX shape inference (with data
propagation) finds most types; only where it leaves a node output untyped does
an ONNX Runtime session fill in the rest.
"""

from __future__ import annotations

import onnx
import onnx.helper
import onnx.shape_inference
from onnx import TensorProto

__all__ = [
    "graph_inputs",
    "infer_dtypes",
    "infer_shapes",
    "tensor_shape",
]

# ONNX Runtime's type strings for tensor outputs.
_ORT_TYPES = {
    "tensor(float)": TensorProto.FLOAT,
    "tensor(float16)": TensorProto.FLOAT16,
    "tensor(bfloat16)": TensorProto.BFLOAT16,
    "tensor(double)": TensorProto.DOUBLE,
    "tensor(int8)": TensorProto.INT8,
    "tensor(uint8)": TensorProto.UINT8,
    "tensor(int16)": TensorProto.INT16,
    "tensor(uint16)": TensorProto.UINT16,
    "tensor(int32)": TensorProto.INT32,
    "tensor(uint32)": TensorProto.UINT32,
    "tensor(int64)": TensorProto.INT64,
    "tensor(uint64)": TensorProto.UINT64,
    "tensor(bool)": TensorProto.BOOL,
    "tensor(string)": TensorProto.STRING,
}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are real inputs (not initializers listed as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation, never strict.

    Returns an inferred copy; on an inference failure returns the model as is
    (the callers treat missing shapes as unknown).
    """
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return model


def tensor_shape(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    """The shape of a tensor ValueInfoProto: ints for known dims, the dim_param
    string (or None) for unknown ones; None when even the rank is unknown."""
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in ttype.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _collect(model: onnx.ModelProto) -> dict[str, int]:
    dtypes: dict[str, int] = {}
    _collect_graph(model.graph, dtypes)
    return dtypes


def _collect_graph(graph: onnx.GraphProto, dtypes: dict[str, int]) -> None:
    """Adds the types ``graph`` and its subgraph bodies declare to ``dtypes``
    (tensor names are unique across scopes)."""
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            dtypes[value.name] = int(value.type.tensor_type.elem_type)
    for tensor in graph.initializer:
        dtypes[tensor.name] = int(tensor.data_type)
    for node in graph.node:  # Constant nodes, in case inference could not run
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    dtypes[node.output[0]] = int(attr.t.data_type)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_graph(attr.g, dtypes)


def infer_dtypes(model: onnx.ModelProto, *, providers: list[str] | None = None,
                 workspace=None) -> dict[str, int]:
    """Maps every tensor of the main graph and of its subgraph bodies to its
    ONNX element type.

    Types come from ``onnx.shape_inference.infer_shapes(data_prop=True,
    strict_mode=False)`` plus the graph's inputs, outputs and initializers.
    Only if some node output is still untyped, a copy of the model with those
    tensors as extra outputs is opened in ONNX Runtime (``providers``, default
    the CPU provider) and the types it reports fill the gaps. Tensors that stay
    unknown are left out (the engine never quantizes them). ``model`` may be
    a skeleton (``onnxquant._payloads``); ``workspace`` is then where
    payloads may be gathered for that session.
    """
    dtypes = _collect(infer_shapes(model))
    missing = [name for node in model.graph.node for name in node.output
               if name and name not in dtypes]
    if missing:
        dtypes.update(_ort_dtypes(model, missing, providers, workspace))
    return dtypes


def _ort_dtypes(model: onnx.ModelProto, names: list[str],
                providers: list[str] | None, workspace) -> dict[str, int]:
    import onnxruntime as ort

    from onnxquant._payloads import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort_session(probe, workspace, options, providers)
    except Exception:  # noqa: BLE001 - ORT errors derive from Exception; types stay unknown
        return {}
    wanted = set(names)
    return {o.name: _ORT_TYPES[o.type] for o in session.get_outputs()
            if o.name in wanted and o.type in _ORT_TYPES}
