"""Normalising a model before quantization: :func:`optimize_model`."""

from __future__ import annotations

import onnx

from onnxquant import _core
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
from onnxquant._payloads import PAYLOAD_THRESHOLD, Workspace, materialize, split_model
from onnxquant._shapes import infer_shapes

__all__ = ["annotate_reduce_mean_inputs", "name_nodes", "optimize_model", "run_passes"]

_MIN_IR_VERSION = 7


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
                passes: list[str] | None = None) -> onnx.ModelProto:
    """run_passes on a skeleton (``onnxquant._payloads``): the large tensors
    the passes create go to a file of ``workspace``, the result is a
    skeleton too."""
    names = list(_core.pass_names()) if passes is None else list(passes)
    data, _changed = _core.run_passes(model_to_bytes(skeleton), names,
                                      workspace.new_file("passes"), PAYLOAD_THRESHOLD)
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
    """Gives every main-graph node a unique name, in place; returns how many
    were renamed. Unnamed nodes become ``<op_type>_<index>``; a repeated name
    gets a ``_<n>`` suffix. Names that were unique are kept."""
    taken = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(model.graph.node):
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


def optimize_model(model: ModelLike, *,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """Returns the normalised form of ``model`` that the rest of onnxquant takes.

    ``model`` is an ``onnx.ModelProto``, bytes or a path; it is never modified.
    Steps:

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
       dim is taken as 1. When shapes were folded under such an assumed shape,
       the returned model's input takes that shape.
    4. The graph passes again, on the converted model, with the shapes of
       ReduceMean inputs declared from ONNX shape inference for the duration
       (the ValueInfo entries added for that are removed afterwards); then
       every node gets a unique name (unnamed ones ``<op_type>_<index>``),
       which reports and ``exclude_nodes`` refer to.
    5. A ``metadata_props`` entry ``onnxquant.normalized`` (the onnxquant
       version) stamps the result; :class:`~onnxquant.Calibrator` and
       :func:`~onnxquant.quantize` require it.

    Raises:
        ModelError: the model cannot be read or is malformed.
        UnsupportedModelError: bfloat16; an opset conversion that fails (the
            message names the node that blocks it) or that changes the outputs.
        InvalidArgumentError: ``input_shapes`` names an unknown input or a shape
            that does not fit the model.
    """
    with Workspace() as workspace:
        return _optimize(model, input_shapes, workspace)


def _optimize(model: ModelLike, input_shapes: dict[str, tuple[int, ...]] | None,
              workspace: Workspace) -> onnx.ModelProto:
    from onnxquant import __version__

    # The weights stay in files (the model's own, or the workspace's) until
    # the end: the engine reads the few it rewrites.
    work = load_skeleton(model, workspace, fingerprint=False).model
    half = {t.name for t in work.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    if half:
        materialize(work, only=half)
    convert_float16(work)
    reference = work
    work = _run_passes(work, workspace)
    opset = default_opset(work)
    if not opset:
        work.opset_import.add(domain="", version=TARGET_OPSET)
    elif opset < TARGET_OPSET:
        # The version converter and ONNX Runtime's check take whole models.
        materialize(reference)
        materialize(work)
        shapes, assumed = assumed_input_shapes(work, input_shapes)
        fold_shape_subgraphs(work, shapes, assumed)
        work = convert_opset(work, TARGET_OPSET)
        verify_same_outputs(reference, work, shapes,
                            f"conversion from opset {opset} to {TARGET_OPSET}")
    elif input_shapes:
        assumed_input_shapes(work, input_shapes)  # validates the names and shapes
    work.ir_version = max(work.ir_version, _MIN_IR_VERSION)
    declared = annotate_reduce_mean_inputs(work)
    work = _run_passes(work, workspace)
    _remove_value_info(work, declared)
    name_nodes(work)
    set_metadata(work, NORMALIZED_KEY, __version__)
    return materialize(work)
