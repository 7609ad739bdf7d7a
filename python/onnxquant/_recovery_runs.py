"""What the recovery techniques share: loading and normalising the model,
feeding the samples in batches, and running parts of the model with ONNX
Runtime to measure the tensors a technique needs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort

from onnxquant._graph_walk import all_nodes, node_bodies
from onnxquant._input_checks import refuse_quantized
from onnxquant._model import NORMALIZED_KEY, QUANTIZED_KEY, ModelLike, get_metadata, load_model
from onnxquant._samples import batch_samples, input_specs
from onnxquant.errors import CalibrationDataError, UnsupportedModelError


def _normalized(model: ModelLike, what: str) -> tuple[onnx.ModelProto, bool]:
    """``model`` loaded; normalised by optimize_model unless it already is."""
    from onnxquant.optimize import optimize_model

    proto = load_model(model)
    refuse_quantized(proto, what, stamped=get_metadata(proto, QUANTIZED_KEY) is not None)
    if get_metadata(proto, NORMALIZED_KEY) is not None:
        return proto, False
    return optimize_model(proto), True


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the float tensors ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return out


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads: its inputs and every name read inside its
    subgraph bodies (If, Loop, Scan; a superset of the outer-scope reads)."""
    names = {i for i in node.input if i}
    for body in node_bodies(node):
        names.update(i for inner in all_nodes(body) for i in inner.input if i)
    return names


def _prefix(model: onnx.ModelProto, outputs: list[str],
            biases: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` (its only outputs), with
    the bias initializers ``biases`` set to the given values."""
    needed = set(outputs)
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= _reads(node)
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    graph = out.graph
    graph.name = model.graph.name
    graph.node.extend(reversed(keep))
    graph.input.extend(i for i in model.graph.input if i.name in needed)
    for t in model.graph.initializer:
        if t.name not in needed:
            continue
        graph.initializer.append(onnx.numpy_helper.from_array(biases[t.name], t.name)
                                 if t.name in biases else t)
    graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                        for name in outputs)
    return out


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    # No spinning: the bias-correction runs share the CPU with whatever else
    # runs (as calibration does).
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's errors derive from Exception only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load the model '{model.graph.name}' to measure what the "
            f"technique needs ({first}); check that ONNX Runtime runs the FP32 model.") from e


def _feeds(proto: onnx.ModelProto, samples: Iterable[object], batch_size: int,
           what: str) -> tuple[list[dict[str, np.ndarray]], int]:
    """The samples as batches of feeds for ``proto``, and their count;
    CalibrationDataError when there are none."""
    feeds = [feed for feed, _ in batch_samples(samples, input_specs(proto), batch_size)]
    if not feeds:
        raise CalibrationDataError(f"{what} got no samples; pass at least one.")
    return feeds, sum(next(iter(f.values())).shape[0] for f in feeds)
