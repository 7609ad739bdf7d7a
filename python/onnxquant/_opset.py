"""Bringing a model to opset 13: float16 to float32, shape folding, conversion.

QuantizeLinear/DequantizeLinear with per-channel scales need opset 13, so
:func:`onnxquant.optimize_model` converts older models up with ONNX's version
converter. The converter gives up on tensors of unknown shape (Softmax 12 -> 13,
for one), so shape subgraphs (``Shape -> Gather -> Unsqueeze -> Concat ->
Reshape``) are first folded into constants under static input shapes. Where the
converter still fails, the node that blocks it is found by converting node by
node, and named. ONNX Runtime checks that the converted model computes what the
original did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.version_converter
from onnx import TensorProto

from onnxquant._graph_walk import all_graphs, node_bodies
from onnxquant._shapes import graph_inputs, infer_shapes, tensor_shape
from onnxquant.errors import InvalidArgumentError, ModelError, UnsupportedModelError

__all__ = [
    "TARGET_OPSET",
    "assumed_input_shapes",
    "convert_float16",
    "convert_opset",
    "default_opset",
    "fold_shape_subgraphs",
    "verify_same_outputs",
]

TARGET_OPSET = 13
_MIN_IR_VERSION = 7
_DEFAULT_DOMAINS = ("", "ai.onnx")
_NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
    "Multinomial", "Bernoulli",
})
# A folded tensor becomes an initializer only when it is small, or no larger than
# the largest input of its producer (folding must not blow up the model).
_FOLD_MAX_ELEMENTS = 1 << 16
_FOLD_ROUNDS = 8


def default_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default ONNX domain, or 0 when not imported."""
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    return 0


def _node_label(node: onnx.NodeProto, index: int) -> str:
    name = f"'{node.name}'" if node.name else f"#{index} (unnamed)"
    return f"{node.op_type} node {name}"


# --------------------------------------------------------------------------
# float16 -> float32
# --------------------------------------------------------------------------

def _tensor_to_float32(tensor: onnx.TensorProto) -> None:
    name = tensor.name
    try:
        array = onnx.numpy_helper.to_array(tensor).astype(np.float32)
    except (ValueError, TypeError) as e:
        raise ModelError(
            f"float16 tensor '{name}' holds data that does not fit its dims "
            f"{list(tensor.dims)} ({e}); re-export the model.") from e
    tensor.CopyFrom(onnx.numpy_helper.from_array(array, name))


def _retype_value(value: onnx.ValueInfoProto) -> bool:
    ttype = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if ttype is not None and ttype.elem_type == TensorProto.FLOAT16:
        ttype.elem_type = TensorProto.FLOAT
        return True
    return False


def convert_float16(model: onnx.ModelProto) -> bool:
    """Rewrites a float16 model as float32, in place; returns whether it changed.

    Converted: float16 initializers and Constant/ConstantOfShape tensors, the
    ``to`` of Cast nodes and the ``dtype`` of RandomNormal-like and EyeLike
    nodes, and the element type of graph inputs, outputs and value_info, in the
    main graph and every subgraph. bfloat16 is not converted: a model holding it
    raises UnsupportedModelError naming the tensor.
    """
    changed = False
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type == TensorProto.BFLOAT16:
                raise UnsupportedModelError(
                    f"Initializer '{tensor.name}' is bfloat16; onnxquant converts float16 "
                    "models to float32 but not bfloat16 ones. Export the model in float32.")
            if tensor.data_type == TensorProto.FLOAT16:
                _tensor_to_float32(tensor)
                changed = True
        for value in (*graph.input, *graph.output, *graph.value_info):
            changed |= _retype_value(value)
        for node in graph.node:
            attributes = node.attribute
            if not attributes:
                continue
            for attr in attributes:
                if attr.type == onnx.AttributeProto.TENSOR and \
                        attr.t.data_type == TensorProto.FLOAT16:
                    _tensor_to_float32(attr.t)
                    changed = True
                elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") \
                        and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.FLOAT
                    changed = True
    return changed


# --------------------------------------------------------------------------
# Static input shapes
# --------------------------------------------------------------------------

def assumed_input_shapes(model: onnx.ModelProto,
                         input_shapes: dict[str, tuple[int, ...]] | None
                         ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Static shapes for every graph input.

    Returns ``(shapes, assumed)``: ``shapes`` maps each input to a fully static
    shape (the model's own dims; ``input_shapes`` where given; otherwise a
    dynamic first dim is taken as 1); ``assumed`` holds the inputs whose shape
    was not fully static in the model. An input whose rank is unknown, or with
    an unknown dim past the first and no ``input_shapes`` entry, is left out.
    """
    given = dict(input_shapes or {})
    names = {i.name for i in graph_inputs(model)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InvalidArgumentError(
            f"input_shapes names {unknown}, which the model does not take; its inputs are "
            f"{sorted(names)}.")
    shapes: dict[str, tuple[int, ...]] = {}
    assumed: dict[str, tuple[int, ...]] = {}
    for value in graph_inputs(model):
        dims = tensor_shape(value)
        if value.name in given:
            try:
                shape = tuple(int(d) for d in given[value.name])
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(
                    f"input_shapes['{value.name}'] must be a sequence of ints, got "
                    f"{given[value.name]!r}.") from e
            if any(d < 1 for d in shape):
                raise InvalidArgumentError(
                    f"input_shapes['{value.name}'] = {list(shape)} has a dim below 1.")
            if dims is not None and (len(dims) != len(shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(dims, shape))):
                raise InvalidArgumentError(
                    f"input_shapes['{value.name}'] = {list(shape)} does not fit the "
                    f"model's input shape {list(dims)}.")
        elif dims is None:
            continue
        elif all(isinstance(d, int) for d in dims):
            shape = tuple(dims)
        elif all(isinstance(d, int) for d in dims[1:]):
            shape = (1, *dims[1:])
        else:
            continue
        shapes[value.name] = shape
        if dims is None or shape != tuple(dims):
            assumed[value.name] = shape
    return shapes, assumed


def _set_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    for value in model.graph.input:
        if value.name in shapes:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in shapes[value.name]:
                shape.dim.add().dim_value = size


# --------------------------------------------------------------------------
# Folding shape subgraphs
# --------------------------------------------------------------------------

def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = infer_shapes(model)
    shapes = {}
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = tensor_shape(value)
        if dims is not None and all(isinstance(d, int) for d in dims):
            shapes[value.name] = dims
    return shapes


def _is_foldable(node: onnx.NodeProto) -> bool:
    if node.domain not in _DEFAULT_DOMAINS or node.op_type in _NONDETERMINISTIC:
        return False
    return not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute)


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    start, end = 0, len(shape)
    for attr in node.attribute:  # opset 15 adds start/end
        if attr.name == "start":
            start = attr.i
        elif attr.name == "end":
            end = attr.i
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _fold_once(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
               other: dict[str, tuple[int, ...]] | None = None) -> tuple[int, int]:
    """One folding round; returns (nodes removed, Shape nodes among them).

    With ``other`` (the static shapes under a second choice of the dynamic
    dims), a node is folded only when its outputs are the same under both, so
    that what remains keeps depending on the dynamic dims."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    constant = set(initializers)
    shape_values: dict[str, np.ndarray] = {}
    other_values: dict[str, np.ndarray] = {}
    folded: list[int] = []
    for index, node in enumerate(graph.node):
        if not _is_foldable(node) or any(o in outputs for o in node.output):
            continue
        if node.op_type == "Shape" and node.input[0] in shapes and \
                (other is None or node.input[0] in other):
            shape_values[node.output[0]] = _shape_value(node, shapes[node.input[0]])
            if other is not None:
                other_values[node.output[0]] = _shape_value(node, other[node.input[0]])
        elif not all(name == "" or name in constant for name in node.input):
            continue
        folded.append(index)
        constant.update(n for n in node.output if n)
    if not folded:
        return 0, 0
    nodes = [graph.node[i] for i in folded]
    values = _evaluate(model, nodes, initializers, shape_values)
    if values is None:
        return 0, 0
    if other is not None:
        second = _evaluate(model, nodes, initializers, other_values)
        if second is None:
            return 0, 0
        candidates = {o for i in folded for o in graph.node[i].output if o}
        folded = [i for i in folded if all(
            not o or _same_value(values.get(o), second.get(o)) for o in graph.node[i].output)]
        if not folded:
            return 0, 0
        count, shape_count = _replace_folded(model, folded, values)
        return count + _remove_dead(model, candidates) if count else 0, shape_count
    return _replace_folded(model, folded, values)


def _same_value(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.dtype == b.dtype and \
        a.shape == b.shape and np.array_equal(a, b)


def _remove_dead(model: onnx.ModelProto, outputs: set[str]) -> int:
    """Removes, in place, the nodes with an output in ``outputs`` that nothing
    reads any more (a ``Shape`` whose only reader was folded, for one);
    returns how many."""
    graph = model.graph
    removed = 0
    while True:
        read = {i for n in graph.node for i in n.input} | _subgraph_reads(graph)
        read |= {o.name for o in graph.output}
        keep = [n for n in graph.node
                if not any(o in outputs for o in n.output) or any(o in read for o in n.output)]
        if len(keep) == len(graph.node):
            return removed
        removed += len(graph.node) - len(keep)
        del graph.node[:]
        graph.node.extend(keep)


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
              initializers: dict[str, onnx.TensorProto],
              shape_values: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Runs the folded nodes in ONNX Runtime; None when it cannot."""
    import onnxruntime as ort

    compute = [n for n in nodes if n.op_type != "Shape" or n.output[0] not in shape_values]
    values = dict(shape_values)
    if not compute:
        return values
    produced = {o for n in compute for o in n.output if o}
    needed = {i for n in compute for i in n.input if i and i not in produced}
    tensors = [initializers[name] for name in needed if name in initializers]
    tensors += [onnx.numpy_helper.from_array(shape_values[name], name)
                for name in needed if name in shape_values]
    result_names = [o for n in compute for o in n.output if o]
    graph = onnx.helper.make_graph(
        list(compute), "fold", [],
        [onnx.helper.make_empty_tensor_value_info(n) for n in result_names], tensors)
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        results = session.run(result_names, {})
    except Exception:  # noqa: BLE001 - ORT errors derive from Exception; then no folding
        return None
    values.update(zip(result_names, (np.asarray(r) for r in results)))
    return values


def _replace_folded(model: onnx.ModelProto, folded: list[int],
                    values: dict[str, np.ndarray]) -> tuple[int, int]:
    graph = model.graph
    nodes = list(graph.node)
    removed = set(folded)
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    sizes.update((name, int(v.size)) for name, v in values.items())

    def consumers_outside(names: set[str]) -> set[str]:
        used = {i for k, n in enumerate(nodes) if k not in removed for i in n.input}
        used |= {o.name for o in graph.output}
        used |= _subgraph_reads(graph)
        return names & used

    # Keep producers whose boundary output would be large, until stable.
    while True:
        produced = {o: k for k in removed for o in nodes[k].output if o}
        boundary = consumers_outside(set(produced))
        keep = set()
        for name in boundary:
            node = nodes[produced[name]]
            limit = max([_FOLD_MAX_ELEMENTS] + [sizes.get(i, 0) for i in node.input if i])
            if values[name].size > limit:
                keep.add(produced[name])
        if not keep:
            break
        removed -= keep
    if not removed:
        return 0, 0
    existing = {t.name for t in graph.initializer}
    for name in sorted(boundary - existing):
        graph.initializer.append(onnx.numpy_helper.from_array(values[name], name))
    del graph.node[:]
    graph.node.extend(n for k, n in enumerate(nodes) if k not in removed)
    read = {i for n in graph.node for i in n.input} | _subgraph_reads(graph)
    read |= {o.name for o in graph.output}
    dropped = {i for k in removed for i in nodes[k].input} - read
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(removed), sum(nodes[k].op_type == "Shape" for k in removed)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names that subgraph bodies of ``graph``'s nodes read (outer scope included)."""
    names: set[str] = set()
    for node in graph.node:
        for sub in node_bodies(node):
            for inner in all_graphs(sub):
                for n in inner.node:
                    names.update(n.input)
                names.update(o.name for o in inner.output)
    return names


def fold_shape_subgraphs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                         assumed: dict[str, tuple[int, ...]], *,
                         keep_dynamic: Iterable[str] = ()) -> int:
    """Folds constant and shape-only computations into initializers, in place.

    A node is folded when every input is constant, or when it is a ``Shape``
    of a tensor whose shape inference (under ``shapes``) found fully static.
    Folding repeats while it finds something, since a folded ``Reshape`` target
    makes more shapes static.

    If a ``Shape`` was folded, the inputs in ``assumed`` get their assumed
    static shapes in the model, since the folded constants may hold for those
    shapes only; except the inputs named in ``keep_dynamic`` (default none),
    whose assumed batch dim stays dynamic: every value is computed again with
    their batch dim doubled, and only values that do not change are folded.
    Returns the number of nodes removed.
    """
    keep = frozenset(keep_dynamic) & set(assumed)
    other = _doubled(shapes, keep) if keep else None
    total = shape_nodes = 0
    for _ in range(_FOLD_ROUNDS):
        static = _static_shapes(_with_input_shapes(model, shapes))
        second = _static_shapes(_with_input_shapes(model, other)) if other else None
        count, shapes_folded = _fold_once(model, static, second)
        if not count:
            break
        total += count
        shape_nodes += shapes_folded
    pinned = {name: shape for name, shape in assumed.items() if name not in keep}
    if shape_nodes and pinned:
        _set_input_shapes(model, pinned)
    return total


def _doubled(shapes: dict[str, tuple[int, ...]],
             names: frozenset[str]) -> dict[str, tuple[int, ...]]:
    """``shapes`` with the first (batch) dim of the inputs in ``names`` doubled:
    another valid choice of the only dim assumed_input_shapes assumes."""
    return {name: ((2 * shape[0], *shape[1:]) if name in names and shape else shape)
            for name, shape in shapes.items()}


def _with_input_shapes(model: onnx.ModelProto,
                       shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    _set_input_shapes(probe, shapes)
    return probe


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------

def convert_opset(model: onnx.ModelProto, target: int = TARGET_OPSET) -> onnx.ModelProto:
    """Converts ``model`` up to opset ``target`` with ONNX's version converter.

    Sets ``ir_version`` to at least 7. Raises UnsupportedModelError naming the
    node (op type and name) that blocks the conversion.
    """
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises RuntimeError, ValueError...
        raise _blocking_node_error(model, target, e) from e
    converted.ir_version = max(converted.ir_version, _MIN_IR_VERSION)
    return converted


def _blocking_node_error(model: onnx.ModelProto, target: int,
                         cause: Exception) -> UnsupportedModelError:
    """Finds the first node that fails to convert on its own, and names it."""
    source = default_opset(model)
    inferred = infer_shapes(model)
    values = {v.name: v for v in (*inferred.graph.input, *inferred.graph.value_info,
                                  *inferred.graph.output)}
    initializers = {t.name: t for t in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        inputs = [i for i in dict.fromkeys(node.input) if i]
        graph = onnx.helper.make_graph(
            [node], "probe",
            [values.get(i) or onnx.helper.make_empty_tensor_value_info(i)
             for i in inputs if i not in initializers],
            [values.get(o) or onnx.helper.make_empty_tensor_value_info(o)
             for o in node.output if o],
            [initializers[i] for i in inputs if i in initializers])
        probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
        probe.ir_version = model.ir_version
        try:
            onnx.version_converter.convert_version(probe, target)
        except Exception as e:  # noqa: BLE001 - the converter raises several types
            reason = _converter_reason(e)
            return UnsupportedModelError(
                f"Cannot convert the model from opset {source} to {target}: "
                f"{_node_label(node, index)} does not convert ({reason}). Re-export the "
                f"model at opset {target} or later, or replace that op.")
    # No node fails alone: name the first node of an op type the converter names.
    text = str(cause)
    for index, node in enumerate(model.graph.node):
        if re.search(rf"\b{re.escape(node.op_type)}\b", text):
            return UnsupportedModelError(
                f"Cannot convert the model from opset {source} to {target}: "
                f"{_node_label(node, index)} (the first {node.op_type}) blocks it "
                f"({_converter_reason(cause)}). Re-export the model at opset {target} or "
                "later.")
    return UnsupportedModelError(
        f"Cannot convert the model from opset {source} to {target}: "
        f"{_converter_reason(cause)}. Re-export the model at opset {target} or later.")


def _converter_reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "has no registered schema" in text:
        return "the op is not in the ONNX standard any more"
    if "No Adapter" in text:
        return "ONNX's converter has no adapter for it"
    # Drop the converter's source location ("/path/convert.cc:101: ...").
    return text.split(": ", 1)[-1] if text.startswith("/") else text


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------

def _random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
                  ) -> tuple[dict[str, np.ndarray] | None, list[str]]:
    """Random feeds, and the inputs whose unknown dims were guessed as 1.
    Feeds are None when an input's rank is unknown."""
    rng = np.random.default_rng(0)
    feeds, guessed = {}, []
    for value in graph_inputs(model):
        shape = shapes.get(value.name)
        if shape is None:
            dims = tensor_shape(value)
            if dims is None:
                return None, [value.name]
            shape = tuple(d if isinstance(d, int) else 1 for d in dims)
            guessed.append(value.name)
        elem = value.type.tensor_type.elem_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        except (KeyError, ValueError, TypeError) as e:
            raise UnsupportedModelError(
                f"Input '{value.name}' has element type {elem}, which onnxquant cannot "
                "feed to check the opset conversion; declare a standard tensor type for "
                "it.") from e
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds, guessed


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal only: a failure is raised and explained by the caller, and the
    # dynamic-batch attempt of optimize_model expects some.
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def verify_same_outputs(original: onnx.ModelProto, converted: onnx.ModelProto,
                        shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Checks with ONNX Runtime, on a random input, that ``converted`` computes
    what ``original`` did (``numpy.allclose`` with rtol 1e-3 and atol 1e-4
    relative to the output's magnitude). ``what`` describes the change for the
    message. Raises UnsupportedModelError when the outputs differ, or when the
    check cannot run (an input without a shape, or ONNX Runtime rejects a model;
    unknown dims without a static shape are tried as 1).
    """
    feeds, guessed = _random_feeds(original, shapes)
    if feeds is None:
        raise UnsupportedModelError(
            f"Cannot check the {what}: input '{guessed[0]}' has no shape. Pass "
            "input_shapes={name: shape} to optimize_model.")
    try:
        expected = _run(original, feeds)
    except Exception as e:  # ORT raises several types
        hint = (f" Unknown dims of {guessed} were tried as 1: pass input_shapes={{name: "
                "shape}} to optimize_model." if guessed else "")
        raise UnsupportedModelError(
            f"Cannot check the {what}: ONNX Runtime cannot run the original model "
            f"({str(e).strip().splitlines()[0]}).{hint}") from e
    try:
        actual = _run(converted, feeds)
    except Exception as e:  # ORT raises several types
        raise UnsupportedModelError(
            f"The {what} produced a model that ONNX Runtime cannot run "
            f"({str(e).strip().splitlines()[0]}).") from e
    names = [o.name for o in original.graph.output]
    for name, want, got in zip(names, expected, actual):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            raise UnsupportedModelError(
                f"The {what} changed output '{name}': shape {list(got.shape)} instead of "
                f"{list(want.shape)}.")
        if want.dtype.kind in "fc":
            scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=1.0))
            same = np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale, equal_nan=True)
        else:
            same = np.array_equal(got, want)
        if not same:
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            raise UnsupportedModelError(
                f"The {what} changed what the model computes: output '{name}' differs by "
                f"up to {float(np.nanmax(diff)):.3g} on a random input. Re-export the model "
                f"at opset {TARGET_OPSET} or later.")
