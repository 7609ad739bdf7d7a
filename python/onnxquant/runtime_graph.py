"""What ONNX Runtime actually runs: integer kernels and float islands.

A QDQ model says what *may* run in INT8; ONNX Runtime's CPU provider decides
what does, when it fuses DequantizeLinear -> op -> QuantizeLinear groups into
integer kernels (QLinearConv, QGemm, QLinearAdd, ...) while optimizing the
graph. Whatever it cannot fuse keeps its DequantizeLinear and QuantizeLinear
and runs in float between them: a *float island*, which costs the dequantize,
the float op and the requantize at every run.

:func:`inspect_runtime_graph` builds a CPU session with
``optimized_model_filepath`` at ONNX Runtime's default level (``ORT_ENABLE_ALL``)
or at ``ORT_ENABLE_EXTENDED``, reads back the graph it saved and sorts its nodes:

* **integer**: ops that compute on 8-bit (or int32 accumulator) data: the
  fused kernels (``QLinear*``, ``QGemm``, ``MatMulInteger``, ...) and data
  movement left on 8-bit tensors (Transpose, Reshape, MaxPool, ...);
* **quantize** / **dequantize**: the QuantizeLinear and DequantizeLinear left;
* **float**: ops that read or write float tensors;
* **other**: index and shape arithmetic (int64, bool).

The saved graph has no types for intermediate tensors, so they are propagated
here: a DequantizeLinear gives float, a QuantizeLinear or an integer kernel an
integer tensor, Shape/Size/ArgMax an index, Cast its ``to`` type, and any
other op the class of its data input (input 0, Where's input 1).

Only the main graph is read: nodes inside If/Loop/Scan bodies are not sorted.
Float nodes that share tensors form islands, each with where its float data
comes from and where it goes (:class:`FloatIsland`). At ``ORT_ENABLE_ALL`` the
graph is also rewritten for the CPU's layout: quantized convolutions become
``com.microsoft`` QLinearConv in NHWC with uint8 Transposes at the edges
(counted as integer ops), float convolutions become ``com.microsoft.nchwc``
Conv between ReorderInput/ReorderOutput (counted as float). Those rewrites
depend on the CPU; the graph read back is the one this machine would run.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import onnx
import onnxruntime as ort
from onnx import TensorProto

from onnxquant._model import ModelLike, load_skeleton
from onnxquant._payloads import PAYLOAD_THRESHOLD, Workspace, ort_session

__all__ = ["FloatIsland", "RuntimeGraph", "inspect_runtime_graph", "optimized_graph"]

#: The optimization levels that can be inspected, by name.
LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}

# Tensor classes.
_FLOAT, _INTEGER, _INDEX = "float", "integer", "index"

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                TensorProto.BFLOAT16}
_INTEGER_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16,
                  TensorProto.UINT16, TensorProto.INT4, TensorProto.UINT4}

#: Integer kernels by name (besides every op named QLinear* or NhwcQLinear*),
#: each with the outputs it writes in float (by index).
_INTEGER_KERNELS: dict[str, tuple[int, ...]] = {
    "QGemm": (),  # float output without y_scale: see _float_outputs
    "QAttention": (0,),
    "QEmbedLayerNormalization": (0, 1),
    "QOrderedMatMul": (),
    "MatMulInteger": (),
    "ConvInteger": (),
    "MatMulIntegerToFloat": (0,),
    "DynamicQuantizeMatMul": (0,),
    "DynamicQuantizeLinear": (1,),
    "DynamicQuantizeLSTM": (0, 1, 2),
}
#: Ops whose output is an index or a shape whatever their input.
_INDEX_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}


@dataclass(frozen=True)
class FloatIsland:
    """Nodes ONNX Runtime runs in float that are connected by float tensors.

    ``nodes`` and ``op_types`` are in graph order (names are those of ONNX
    Runtime's optimized graph; op types of domains other than the default are
    written ``domain:op``). ``sources`` are where the island's float inputs
    come from: ``"DequantizeLinear"`` (of activations),
    ``"DequantizeLinear (constant)"`` (of weights), ``"graph input"``, or an
    integer kernel with a float output. ``sinks`` are where its float outputs
    go: ``"QuantizeLinear"``, ``"graph output"``, or the reading op.

    ``kind``:

    * ``"between"``: dequantized data in, requantized out: float between
      integer ops (the costly case: a kernel ONNX Runtime could not fuse);
    * ``"tail"``: dequantized data in, no QuantizeLinear out (a float end of
      the model, e.g. a Softmax before the output);
    * ``"head"``: float from the graph inputs into a QuantizeLinear;
    * ``"float"``: neither (an unquantized model or part).
    """

    nodes: tuple[str, ...]
    op_types: tuple[str, ...]
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    kind: str

    def __str__(self) -> str:
        ops = Counter(self.op_types)
        body = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.items())
        return (f"{self.kind}: {body} (from {', '.join(self.sources) or 'constants'}; "
                f"to {', '.join(self.sinks) or 'nothing'})")


@dataclass(frozen=True)
class RuntimeGraph:
    """The nodes of ONNX Runtime's optimized graph, sorted (see the module doc).

    ``level`` is ``"all"`` or ``"extended"``. ``integer_ops``, ``float_ops``
    and ``other_ops`` count nodes per op type (``domain:op`` outside the
    default domain); ``quantize`` and ``dequantize`` count the QuantizeLinear
    and DequantizeLinear left. ``float_islands`` lists every island, in graph
    order of its first node.
    """

    level: str
    integer_ops: dict[str, int]
    float_ops: dict[str, int]
    other_ops: dict[str, int]
    quantize: int
    dequantize: int
    float_islands: tuple[FloatIsland, ...]
    #: Per named node of the optimized graph: (op type as above, kind:
    #: "integer", "float", "quantize", "dequantize" or "other"). ONNX Runtime
    #: keeps a node's name when it fuses it (a Conv between DQ and Q becomes
    #: the QLinearConv of the same name).
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)

    def runs_as(self, node: str) -> tuple[str, str] | None:
        """``(op type, kind)`` of the node named ``node`` in the optimized
        graph, or None when ONNX Runtime removed it (absorbed into another
        node, or dropped)."""
        return self.nodes.get(node)

    @property
    def islands_on_dequantized_data(self) -> tuple[FloatIsland, ...]:
        """The islands of kind ``"between"`` and ``"tail"``: float arithmetic
        on data that was quantized."""
        return tuple(i for i in self.float_islands if i.kind in ("between", "tail"))

    def __str__(self) -> str:
        def counts(ops: dict[str, int]) -> str:
            return ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) or "none"

        lines = [f"ONNX Runtime graph at ORT_ENABLE_{self.level.upper()}:",
                 f"  integer ops: {counts(self.integer_ops)}",
                 f"  float ops: {counts(self.float_ops)}",
                 f"  QuantizeLinear {self.quantize}, DequantizeLinear {self.dequantize}",
                 f"  float islands: {len(self.float_islands)}"]
        lines += [f"    {island}" for island in self.float_islands]
        return "\n".join(lines)


def optimized_graph(model: ModelLike, *, level: str = "all") -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``model`` (a
    ``ModelProto``, bytes or a path) at optimization level ``level``
    (``"all"``, the session default, or ``"extended"``), as it saves it with
    ``SessionOptions.optimized_model_filepath``. It is the graph, not the
    weights: initializers of 1 KiB or more are external-data references to a
    file that no longer exists.

    Raises:
        InvalidArgumentError: an unknown ``level``.
        ModelError: ``model`` cannot be read.
        onnxruntime's own exception: ONNX Runtime cannot load the model.
    """
    from onnxquant.errors import InvalidArgumentError

    if level not in LEVELS:
        raise InvalidArgumentError(
            f"Unknown optimization level {level!r}: use one of {sorted(LEVELS)}.")
    # The weights travel beside the graph (onnxquant._payloads), both into
    # ONNX Runtime and back out of it, so that models past 2 GB work too.
    with Workspace() as workspace:
        skeleton = load_skeleton(model, workspace, fingerprint=False).model
        path = os.path.join(workspace.path, "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = LEVELS[level]
        so.optimized_model_filepath = path
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.data")
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(PAYLOAD_THRESHOLD))
        so.intra_op_num_threads = 1
        so.log_severity_level = 3  # ORT warns that level "all" is CPU-specific
        ort_session(skeleton, workspace, so, None)
        return onnx.load(path, load_external_data=False)


def inspect_runtime_graph(model: ModelLike, *, level: str = "all") -> RuntimeGraph:
    """Which nodes of ``model`` ONNX Runtime's CPU provider runs as integer
    kernels and which in float, at optimization level ``level`` (``"all"``,
    the session default, or ``"extended"``). See the module doc for the rules
    and :class:`RuntimeGraph` for the result.

    Raises what :func:`optimized_graph` raises.
    """
    return _classify(optimized_graph(model, level=level), level)


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def _is_integer_kernel(node: onnx.NodeProto) -> bool:
    return (node.op_type.startswith(("QLinear", "NhwcQLinear"))
            or node.op_type in _INTEGER_KERNELS)


def _class_of_type(elem_type: int) -> str | None:
    if elem_type in _FLOAT_TYPES:
        return _FLOAT
    if elem_type in _INTEGER_TYPES:
        return _INTEGER
    return _INDEX if elem_type else None


def _float_outputs(node: onnx.NodeProto) -> tuple[int, ...]:
    if node.op_type == "QGemm":  # y_scale (input 7) absent: the output is float
        return () if len(node.input) > 7 and node.input[7] else (0,)
    return _INTEGER_KERNELS.get(node.op_type, ())


def _output_classes(node: onnx.NodeProto, known: dict[str, str]) -> list[str | None]:
    """The class of each output of ``node`` given the classes ``known``."""
    n = len(node.output)
    if node.op_type == "DequantizeLinear":
        return [_FLOAT] * n
    if node.op_type == "QuantizeLinear":
        return [_INTEGER] * n
    if _is_integer_kernel(node):
        floats = _float_outputs(node)
        return [_FLOAT if k in floats else _INTEGER for k in range(n)]
    if node.op_type in _INDEX_OPS:
        return [_INDEX] * n
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), 0)
        return [_class_of_type(to)] * n
    if node.op_type in ("Constant", "ConstantOfShape"):
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return [_class_of_type(value.data_type) if value is not None else _FLOAT] * n
    data = list(node.input[1:2] if node.op_type == "Where" else node.input)
    for name in data:
        if name and known.get(name) is not None:
            return [known[name]] * n
    return [None] * n


def _classify(graph_model: onnx.ModelProto, level: str) -> RuntimeGraph:
    """Sorts the nodes of an ONNX Runtime optimized graph (see
    :func:`inspect_runtime_graph`, which calls this on the graph it reads back).
    """
    graph = graph_model.graph
    known: dict[str, str | None] = {}
    constants = {t.name for t in graph.initializer}
    for value in graph.input:
        known[value.name] = _class_of_type(value.type.tensor_type.elem_type)
    for tensor in graph.initializer:
        known[tensor.name] = _class_of_type(tensor.data_type)
    kinds: list[str] = []
    for node in graph.node:  # ONNX Runtime saves its graph in topological order
        for name, cls in zip(node.output, _output_classes(node, known), strict=True):
            known[name] = cls
        if node.op_type == "Constant":
            constants.update(node.output)
        kinds.append(_node_kind(node, known, constants))
    counts: dict[str, Counter] = {k: Counter() for k in ("integer", "float", "other")}
    for node, kind in zip(graph.node, kinds, strict=True):
        if kind in counts:
            counts[kind][_op_name(node)] += 1
    return RuntimeGraph(
        level=level,
        integer_ops=dict(counts["integer"]),
        float_ops=dict(counts["float"]),
        other_ops=dict(counts["other"]),
        quantize=kinds.count("quantize"),
        dequantize=kinds.count("dequantize"),
        float_islands=_islands(graph, kinds, constants),
        nodes={n.name: (_op_name(n), kind) for n, kind in zip(graph.node, kinds, strict=True)
               if n.name},
    )


def _node_kind(node: onnx.NodeProto, known: dict[str, str | None],
               constants: set[str]) -> str:
    if node.op_type == "QuantizeLinear":
        return "quantize"
    if node.op_type == "DequantizeLinear":
        return "dequantize"
    if _is_integer_kernel(node):
        return "integer"
    if node.op_type in _INDEX_OPS or node.op_type == "Constant":
        return "other"
    data_in = [known.get(i) for i in node.input if i and i not in constants]
    out = [known.get(o) for o in node.output if o]
    if _FLOAT in data_in or _FLOAT in out:
        return "float"
    if _INTEGER in out:
        return "integer"
    return "other"


def _islands(graph: onnx.GraphProto, kinds: list[str], constants: set[str]
             ) -> tuple[FloatIsland, ...]:
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(k)
    parent = list(range(len(nodes)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    floats = [k for k, kind in enumerate(kinds) if kind == "float"]
    for k in floats:
        for name in nodes[k].input:
            p = producer.get(name)
            if p is not None and kinds[p] == "float":
                parent[root(k)] = root(p)
    groups: dict[int, list[int]] = {}
    for k in floats:
        groups.setdefault(root(k), []).append(k)
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    islands = []
    for members in groups.values():
        inside = set(members)
        sources: dict[str, None] = {}
        sinks: dict[str, None] = {}
        for k in members:
            for name in nodes[k].input:
                p = producer.get(name)
                if p is not None and p not in inside and kinds[p] != "other":
                    src = nodes[p]
                    label = _op_name(src)
                    if src.op_type == "DequantizeLinear" and src.input[0] in constants:
                        label += " (constant)"
                    sources[label] = None
                elif p is None and name in inputs and name not in constants:
                    sources["graph input"] = None
            for name in nodes[k].output:
                if name in outputs:
                    sinks["graph output"] = None
                for c in consumers.get(name, []):
                    if c not in inside:
                        sinks[_op_name(nodes[c])] = None
        # Quantized data in: a DequantizeLinear of activations, or an integer
        # op's float output (not weights, not the graph's own inputs).
        dequantized = any(s not in ("graph input", "DequantizeLinear (constant)")
                          for s in sources)
        requantized = "QuantizeLinear" in sinks
        kind = ("between" if dequantized and requantized else
                "tail" if dequantized else "head" if requantized else "float")
        islands.append(FloatIsland(
            nodes=tuple(nodes[k].name or f"{nodes[k].op_type}_{k}" for k in members),
            op_types=tuple(_op_name(nodes[k]) for k in members),
            sources=tuple(sources), sinks=tuple(sinks), kind=kind))
    return tuple(islands)
