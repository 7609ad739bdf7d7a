"""Normalising a model before quantization: :func:`optimize_model`."""

from __future__ import annotations

import json
import os
import warnings

import onnx

from onnxquant import _core
from onnxquant._graph_walk import all_graphs
from onnxquant._input_checks import (
    check_with_onnx_checker,
    densify_sparse_initializers,
    fit_ir_version,
    refuse_quantized,
)
from onnxquant._model import (
    NORMALIZED_KEY,
    ModelLike,
    load_skeleton,
    model_to_bytes,
    set_metadata,
)
from onnxquant._opset import (
    TARGET_OPSET,
    assumed_input_shapes,
    convert_float16,
    convert_opset,
    default_opset,
    fold_shape_subgraphs,
    verify_same_outputs,
)
from onnxquant._payloads import (
    PAYLOAD_THRESHOLD,
    Workspace,
    checkable_file,
    materialize,
    split_model,
)
from onnxquant._shapes import graph_inputs, infer_shapes, tensor_shape
from onnxquant.errors import UnsupportedModelError

__all__ = [
    "FIXED_INPUTS_KEY",
    "FixedShapeWarning",
    "annotate_reduce_mean_inputs",
    "name_nodes",
    "optimize_model",
    "run_passes",
]

_MIN_IR_VERSION = 7
#: metadata_props key listing the inputs whose dynamic dims optimize_model
#: fixed (JSON: {input: {"declared": dims, "fixed": dims}}).
FIXED_INPUTS_KEY = "onnxquant.fixed_inputs"


class FixedShapeWarning(UserWarning):
    """optimize_model fixed a dynamic input dim (the batch) to a static size."""


def run_passes(model: onnx.ModelProto, passes: list[str] | None = None) -> onnx.ModelProto:
    """Runs the engine's graph passes (default: all, in their registered order)
    on a copy of ``model`` and returns it.

    The passes read shapes only from the model's own ValueInfo entries
    (``graph.input``, ``graph.value_info``, ``graph.output``):
    ``reduce_mean_to_global_average_pool`` rewrites only a ReduceMean whose
    input is declared 4-D there. :func:`optimize_model` declares them from ONNX
    shape inference first (:func:`annotate_reduce_mean_inputs`)."""
    with Workspace() as workspace:
        skeleton = split_model(model, workspace, fingerprint=False).model
        return materialize(_run_passes(skeleton, workspace, passes))


def _run_passes(skeleton: onnx.ModelProto, workspace: Workspace,
                passes: list[str] | None = None, times: int = 1) -> onnx.ModelProto:
    """run_passes on a skeleton (``onnxquant._payloads``): the large tensors
    the passes create go to a file of ``workspace``, the result is a
    skeleton too. ``times``: the passes run that many times in a row, in
    one parse of the model (as that many calls would)."""
    names = list(_core.pass_names()) if passes is None else list(passes)
    data, _changed = _core.run_passes(model_to_bytes(skeleton), names,
                                      workspace.new_file("passes"), PAYLOAD_THRESHOLD,
                                      times)
    result = onnx.ModelProto()
    result.ParseFromString(data)
    return result


def annotate_reduce_mean_inputs(model: onnx.ModelProto) -> list[str]:
    """Declares the shape of each main-graph ReduceMean's data input, in place.

    For every ReduceMean input without a shaped ValueInfo entry, the entry that
    ONNX shape inference (with data propagation, never strict) finds is added to
    ``graph.value_info``; inputs it cannot shape stay undeclared. Returns the
    names added, so that the caller can remove them again.
    """
    graph = model.graph
    shaped = {v.name for v in (*graph.input, *graph.value_info, *graph.output)
              if v.type.tensor_type.HasField("shape")}
    wanted = {n.input[0] for n in graph.node
              if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")
              and n.input and n.input[0] and n.input[0] not in shaped}
    if not wanted:
        return []
    inferred = infer_shapes(model).graph.value_info
    added = [v for v in inferred
             if v.name in wanted and v.type.tensor_type.HasField("shape")]
    graph.value_info.extend(added)
    return [v.name for v in added]


def _remove_value_info(model: onnx.ModelProto, names: list[str]) -> None:
    gone = set(names)
    kept = [v for v in model.graph.value_info if v.name not in gone]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def name_nodes(model: onnx.ModelProto) -> int:
    """Gives every node a unique name, in place, the nodes of subgraph bodies
    too (unique across all graphs, so that a name tells one node); returns how
    many were renamed. Unnamed nodes become ``<op_type>_<index>``; a repeated
    name gets a ``_<n>`` suffix. Names that were unique are kept."""
    graphs = list(all_graphs(model.graph))
    nodes = [node for graph in graphs for node in graph.node]
    taken = {n.name for n in nodes if n.name}
    seen: set[str] = set()
    renamed = 0
    for graph in graphs:
        for index, node in enumerate(graph.node):
            if node.name and node.name not in seen:
                seen.add(node.name)
                continue
            base = node.name or f"{node.op_type}_{index}"
            name, k = base, 1
            while name in taken or name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            seen.add(name)
            taken.add(name)
            renamed += 1
    return renamed


def _convert(work: onnx.ModelProto, reference: onnx.ModelProto, opset: int,
             input_shapes: dict[str, tuple[int, ...]] | None) -> onnx.ModelProto:
    """Folds shape subgraphs and converts ``work`` to TARGET_OPSET, keeping the
    dynamic batch dims that ``input_shapes`` does not set where the converted
    model then computes what ``reference`` does at two batch sizes; else with
    those dims fixed, a warning and a FIXED_INPUTS_KEY stamp."""
    what = f"conversion from opset {opset} to {TARGET_OPSET}"
    shapes, assumed = assumed_input_shapes(work, input_shapes)
    dynamic = [name for name in assumed if name not in (input_shapes or {})]
    declared = {v.name: tensor_shape(v) for v in graph_inputs(work)}
    if dynamic:
        attempt = onnx.ModelProto()
        attempt.CopyFrom(work)
        try:
            fold_shape_subgraphs(attempt, shapes, assumed, keep_dynamic=dynamic)
            attempt = convert_opset(attempt, TARGET_OPSET)
            verify_same_outputs(reference, attempt, shapes, what)
            batch3 = {n: ((3, *s[1:]) if n in dynamic else s) for n, s in shapes.items()}
            verify_same_outputs(reference, attempt, batch3, what)
            return attempt
        except UnsupportedModelError:
            pass  # fixed below, with a warning
    fold_shape_subgraphs(work, shapes, assumed)
    work = convert_opset(work, TARGET_OPSET)
    verify_same_outputs(reference, work, shapes, what)
    now = {v.name: tensor_shape(v) for v in graph_inputs(work)}
    fixed = {name: (declared[name], now[name]) for name in dynamic
             if name in now and now[name] != declared.get(name)}
    if fixed:
        _note_fixed_inputs(work, fixed, opset)
    return work


def _note_fixed_inputs(model: onnx.ModelProto, fixed: dict[str, tuple], opset: int) -> None:
    entries = {name: {"declared": [d if d is not None else "?" for d in was],
                      "fixed": list(now)} for name, (was, now) in fixed.items()}
    set_metadata(model, FIXED_INPUTS_KEY, json.dumps(entries, sort_keys=True))
    warnings.warn(fixed_inputs_message(entries, opset), FixedShapeWarning, stacklevel=5)


def fixed_inputs_message(entries: dict[str, dict], opset: int | None = None) -> str:
    """The sentence that says which inputs optimize_model fixed, and the remedy."""
    which = "; ".join(f"input '{name}' to {e['fixed']} (declared {e['declared']})"
                      for name, e in sorted(entries.items()))
    example = ", ".join(f"'{name}': ({', '.join(['B'] + [str(d) for d in e['fixed'][1:]])})"
                        for name, e in sorted(entries.items()))
    source = f"opset {opset}" if opset else "an opset below 13"
    return (f"optimize_model fixed {which}: converting the model from {source} to "
            f"{TARGET_OPSET} needed its shape subgraphs folded under a static shape, and "
            "the converted model takes only that shape. Pass input_shapes={"
            f"{example}}} to optimize_model for batch size B, or re-export the model at "
            f"opset {TARGET_OPSET} or later to keep the batch dynamic.")


def optimize_model(model: ModelLike, *,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """Returns the normalised form of ``model`` that the rest of onnxquant takes.

    ``model`` is an ``onnx.ModelProto``, bytes or a path; it is never modified.
    Steps:

    0. **Checks** (:mod:`onnxquant._input_checks`): an already quantized
       model (QDQ, ``QLinear*`` ops, dynamically quantized ops such as
       ``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeLinear``,
       ``MatMulNBits``) is refused naming its first such node; sparse
       initializers become dense ones (the same values); a model that
       ``onnx.checker`` rejects is refused; an IR version newer than the
       installed ONNX Runtime loads is lowered to one it loads when nothing in
       the model needs the newer one (opsets, element types, functions).
    1. **float16**: a float16 model is converted to float32 (initializers,
       Constant tensors, Cast targets, and the element types of graph inputs,
       outputs and value_info). QuantizeLinear accepts float16 only from opset
       19 on, and calibration statistics are float32 anyway; so the returned
       model, and the quantized model made from it, take and return float32.
       bfloat16 models raise UnsupportedModelError.
    2. **Graph passes** of the engine: initializers removed from graph.input,
       Constant nodes lifted to initializers, a Transpose of a constant folded
       into the transposed constant (so MatMul(x, Transpose(W)) has a constant
       weight), Identity and unused-mask Dropout
       removed, BatchNormalization folded into Conv/ConvTranspose/Gemm, a
       Gemm's constant [1, N] bias reshaped to [N] (so that it is quantized
       and the Gemm fuses), and a ReduceMean over the spatial axes {2, 3} of a
       4-D float tensor rewritten as GlobalAveragePool (followed by a Squeeze
       where ``keepdims=0``), which ONNX Runtime runs as an integer kernel once
       quantized. That rewrite needs the input's rank: declared in the model,
       or (step 4) found by ONNX shape inference; a ReduceMean whose input rank
       stays unknown is kept.
    3. **Opset**: kept when it is 13 or more (never downgraded). Below 13,
       shape subgraphs (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``
       and other computations on constants) are folded into initializers under
       static input shapes, then ONNX's version converter takes the model to
       opset 13 and ``ir_version`` to at least 7, and ONNX Runtime checks on a
       random input that the converted model computes what the original did.
       The static shapes are the model's own; ``input_shapes`` (default None:
       none given) sets them per input name, and an unset dynamic first (batch)
       dim is taken as 1. A dynamic batch dim that ``input_shapes`` does not
       set stays dynamic: only values that are the same at batch 1 and batch
       2 are folded, and the converted model is checked at batch 1 and 3.
       Where that fails (the converter needs a shape that depends on the
       batch, or the model does not compute the same at another batch), the
       shapes are folded under the assumed batch 1, the input takes that
       shape, a :class:`FixedShapeWarning` says so naming ``input_shapes=``
       as the remedy, and a ``metadata_props`` entry ``onnxquant.fixed_inputs``
       records it for :func:`~onnxquant.quantize`'s report. Inputs set by
       ``input_shapes`` take the shape given when shapes were folded.
    4. The graph passes again, on the converted model, with the shapes of
       ReduceMean inputs declared from ONNX shape inference for the duration
       (the ValueInfo entries added for that are removed afterwards); then
       every node gets a unique name (unnamed ones ``<op_type>_<index>``),
       which reports and ``exclude_nodes`` refer to.
    5. A ``metadata_props`` entry ``onnxquant.normalized`` (the onnxquant
       version) stamps the result; :class:`~onnxquant.Calibrator` and
       :func:`~onnxquant.quantize` require it.

    Raises:
        ModelError: the model cannot be read or is malformed, or fails
            ``onnx.checker`` as given (the message says so).
        UnsupportedModelError: the model is already quantized (names the first
            quantized node); an IR version ONNX Runtime cannot load that cannot
            be lowered without loss; bfloat16; an opset conversion that fails
            (the message names the node that blocks it) or that changes the
            outputs.
        InvalidArgumentError: ``input_shapes`` names an unknown input or a shape
            that does not fit the model.
    """
    with Workspace() as workspace:
        return _optimize(model, input_shapes, workspace)


def _optimize(model: ModelLike, input_shapes: dict[str, tuple[int, ...]] | None,
              workspace: Workspace) -> onnx.ModelProto:
    # The weights stay in files (the model's own, or the workspace's) until
    # the end: the engine reads the few it rewrites.
    work = load_skeleton(model, workspace, fingerprint=False).model
    is_path = isinstance(model, (str, os.PathLike))
    what = f"Model file '{os.fspath(model)}'" if is_path else "The model"
    refuse_quantized(work, "optimize_model")
    densify_sparse_initializers(work)
    fit_ir_version(work, what)
    # The checker sees the model as given: the file itself (its external
    # data beside it), or the skeleton written where its payloads lie.
    check_with_onnx_checker(os.fspath(model) if is_path else checkable_file(work, workspace),
                            what)
    half = {t.name for t in work.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    if half:
        materialize(work, only=half)
    convert_float16(work)
    reference = work
    opset = default_opset(work)  # the passes change no opset
    if opset >= TARGET_OPSET and not _has_reduce_mean(work):
        # Nothing to convert and no ReduceMean input to declare between the
        # two runs of step 2 and 4 (no pass makes a ReduceMean, and only the
        # ReduceMean pass reads the opset or the shapes): both runs go in one
        # call, which parses and serializes the model once.
        work = _run_passes(work, workspace, times=2)
        if input_shapes:
            assumed_input_shapes(work, input_shapes)  # validates the names and shapes
        work.ir_version = max(work.ir_version, _MIN_IR_VERSION)
        return _finish(work)
    work = _run_passes(work, workspace)
    if not opset:
        work.opset_import.add(domain="", version=TARGET_OPSET)
    elif opset < TARGET_OPSET:
        # The version converter and ONNX Runtime's check take whole models.
        materialize(reference)
        materialize(work)
        work = _convert(work, reference, opset, input_shapes)
    elif input_shapes:
        assumed_input_shapes(work, input_shapes)  # validates the names and shapes
    work.ir_version = max(work.ir_version, _MIN_IR_VERSION)
    declared = annotate_reduce_mean_inputs(work)
    work = _run_passes(work, workspace)
    _remove_value_info(work, declared)
    return _finish(work)


def _has_reduce_mean(model: onnx.ModelProto) -> bool:
    """Whether the main graph holds a ReduceMean of the default domain."""
    return any(n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")
               for n in model.graph.node)


def _finish(work: onnx.ModelProto) -> onnx.ModelProto:
    """Step 4's naming and step 5's stamp; the weights read back."""
    from onnxquant import __version__

    name_nodes(work)
    set_metadata(work, NORMALIZED_KEY, __version__)
    return materialize(work)
