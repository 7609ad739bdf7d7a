"""Folding an image model's input normalisation into the model:
:func:`fold_preprocessing`.

A model trained on ``(x * pixel_scale - mean) / std`` per channel (usually
``x / 255``) is rewritten to take the raw pixels ``x`` (uint8 by default,
cast to float inside), with the normalisation folded into its first Conv:
``W'[o, c] = W[o, c] * pixel_scale / std[c]`` and
``b'[o] = b[o] - sum W[o, c, k] * mean[c] / std[c]``.

Borders: where that Conv zero-pads, the padding now adds raw zeros, whose
normalised value is ``-mean / std``, not 0. The folded Conv is followed by
an ``Add`` of a constant border map that restores the normalised zeros
exactly (zero in the interior; it needs the input's spatial dims to be
static). Where they are not static, or with ``border="prefix"``, the
weights stay as they were and the normalisation runs as a ``Mul``/``Add``
prefix before the Conv (exact too; the first Conv then sees normalised
values). The result is a float model: quantize it as usual, with the pixel
tensor's range set to (0, 255) so that :class:`~onnxquant.ModelEditor`
can hand the pixels to the model unchanged (user guide, "Raw pixel inputs").
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxquant._model import ModelLike, get_metadata, load_model, set_metadata
from onnxquant.errors import InvalidArgumentError, UnsupportedModelError

__all__ = ["PREPROCESSING_KEY", "fold_preprocessing", "pixel_tensor_name"]

#: metadata_props key recording a folded normalisation (JSON).
PREPROCESSING_KEY = "onnxquant.preprocessing"

_BORDERS = ("auto", "prefix")
_INPUT_TYPES = {"uint8": onnx.TensorProto.UINT8, "float32": onnx.TensorProto.FLOAT}


def pixel_tensor_name(model: onnx.ModelProto) -> str:
    """The float tensor of raw pixels in a model :func:`fold_preprocessing`
    made (the Cast's output, or the input itself for float input): the
    tensor whose calibration range should be (0, 255).

    Raises:
        InvalidArgumentError: the model was not made by fold_preprocessing.
    """
    text = get_metadata(model, PREPROCESSING_KEY)
    if text is None:
        raise InvalidArgumentError(
            f"The model has no metadata_props['{PREPROCESSING_KEY}']: it was not made by "
            "onnxquant.fold_preprocessing.")
    return json.loads(text)["pixels"]


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _initializer_index(graph: onnx.GraphProto, name: str) -> int:
    return next((k for k, t in enumerate(graph.initializer) if t.name == name), -1)


def _static_shape(info: onnx.ValueInfoProto) -> list[int] | None:
    dims = info.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims[2:]):
        return None
    return [d.dim_value if d.HasField("dim_value") else 1 for d in dims]


def _border_map(node: onnx.NodeProto, weight: np.ndarray, offset: np.ndarray,
                shape: list[int], pads: list[int], opset: int) -> np.ndarray:
    """What the zero padding of raw pixels misses, per output position:
    ``-sum over the taps that fall in the padding of W * offset``. Computed as
    the Conv ``node`` without padding (ONNX Runtime, float32) of the padded
    image that holds ``-offset`` in the padding and exactly 0 inside, so
    that the interior of the map is exactly 0."""
    import onnxruntime as ort

    spatial = len(shape) - 2
    begin, end = pads[:spatial], pads[spatial:]
    padded = [1, shape[1]] + [s + b + e for s, b, e in zip(shape[2:], begin, end)]
    image = np.broadcast_to((-offset).reshape([1, -1] + [1] * spatial), padded).copy()
    image[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in
                                             zip(begin, shape[2:]))] = 0.0
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"])
    conv.attribute.extend(a for a in node.attribute if a.name not in ("pads", "auto_pad"))
    graph = onnx.helper.make_graph(
        [conv], "border",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, padded)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weight.astype(np.float32), "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": image.astype(np.float32)})[0]


def fold_preprocessing(model: ModelLike, mean: Sequence[float], std: Sequence[float], *,
                       input_name: str | None = None, pixel_scale: float = 1.0 / 255.0,
                       input_type: str = "uint8", border: str = "auto") -> onnx.ModelProto:
    """Returns ``model`` rewritten to take raw pixels instead of
    ``(x * pixel_scale - mean) / std`` (per channel, channel axis 1).

    Args:
        model: a float model (ModelProto, bytes or path; never modified),
            best the output of :func:`~onnxquant.optimize_model` (its stamp
            is kept), whose input is read by one Conv with constant weights.
        mean, std: per channel (one value each, or one per input channel).
        input_name: the input (default: the only one that is not an
            initializer).
        pixel_scale: the scale before the normalisation (default 1/255).
        input_type: ``"uint8"`` (default: the input becomes uint8, cast to
            float inside) or ``"float32"`` (raw pixel values as floats).
        border: ``"auto"`` (default): fold into the Conv's weights and bias,
            plus a constant border map where the Conv pads (exact); a
            ``Mul``/``Add`` prefix where that map needs spatial dims the
            model leaves dynamic. ``"prefix"``: always the prefix.

    Records ``metadata_props["onnxquant.preprocessing"]`` (JSON: input,
    pixels tensor, mean, std, pixel_scale, how it was folded).

    Raises:
        InvalidArgumentError: an unknown input, a std of 0, mean/std of the
            wrong length, an unknown ``input_type`` or ``border``.
        UnsupportedModelError: the input is not read by a single Conv with
            constant weights (the message names its readers).
    """
    if border not in _BORDERS:
        raise InvalidArgumentError(f"border must be 'auto' or 'prefix', got {border!r}.")
    if input_type not in _INPUT_TYPES:
        raise InvalidArgumentError(
            f"input_type must be 'uint8' or 'float32', got {input_type!r}.")
    model = load_model(model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if input_name is None:
        if len(inputs) != 1:
            raise InvalidArgumentError(
                f"The model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                "pass input_name=.")
        input_name = inputs[0].name
    info = next((i for i in inputs if i.name == input_name), None)
    if info is None:
        raise InvalidArgumentError(
            f"The model has no input '{input_name}' (its inputs: "
            f"{', '.join(i.name for i in inputs)}).")
    readers = [n for n in graph.node if input_name in n.input]
    conv = readers[0] if len(readers) == 1 else None
    if (conv is None or conv.op_type != "Conv" or conv.input[0] != input_name
            or _initializer_index(graph, conv.input[1]) < 0
            or (len(conv.input) > 2 and conv.input[2]
                and _initializer_index(graph, conv.input[2]) < 0)):
        names = ", ".join(f"'{n.name}' ({n.op_type})" for n in readers) or "no node"
        raise UnsupportedModelError(
            f"Input '{input_name}' is read by {names}; fold_preprocessing needs it read by "
            "one Conv with constant weights (run optimize_model first, which folds "
            "BatchNormalization and lifts Constant weights).")
    w_index = _initializer_index(graph, conv.input[1])
    weight = onnx.numpy_helper.to_array(graph.initializer[w_index]).astype(np.float64)
    out_channels, group_width = weight.shape[0], weight.shape[1]
    group = int(_attr(conv, "group", 1))
    channels = group_width * group
    mean_c = np.broadcast_to(np.asarray(mean, np.float64).reshape(-1), (channels,)) \
        if np.size(mean) in (1, channels) else None
    std_c = np.broadcast_to(np.asarray(std, np.float64).reshape(-1), (channels,)) \
        if np.size(std) in (1, channels) else None
    if mean_c is None or std_c is None:
        raise InvalidArgumentError(
            f"mean and std need 1 or {channels} values (the channels of input "
            f"'{input_name}'), got {np.size(mean)} and {np.size(std)}.")
    if np.any(std_c == 0) or not np.all(np.isfinite(std_c)) or not np.all(np.isfinite(mean_c)):
        raise InvalidArgumentError("std must be finite and non-zero, and mean finite.")
    gain = pixel_scale / std_c          # normalised = gain * x + offset
    offset = -mean_c / std_c
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    # The input becomes raw pixels; a Cast makes them float where they are uint8.
    taken = {o for n in graph.node for o in n.output} | initializers | {input_name}
    pixels = input_name
    new_nodes = []
    if input_type == "uint8":
        pixels = _fresh(f"{input_name}_pixels", taken)
        new_nodes.append(onnx.helper.make_node(
            "Cast", [input_name], [pixels], name=f"{input_name}_Cast",
            to=onnx.TensorProto.FLOAT))
        info.type.tensor_type.elem_type = onnx.TensorProto.UINT8

    pads = list(_attr(conv, "pads", []))
    auto_pad = _attr(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    padded = any(pads) or auto_pad in ("SAME_UPPER", "SAME_LOWER")
    shape = _static_shape(info)
    how = "weights" if not padded else "weights+border_map"
    # auto_pad SAME: the pads depend on the input size; the prefix handles it.
    if border == "prefix" or (padded and (shape is None or not any(pads))):
        how = "prefix"
        shape_c = [1, channels] + [1] * (weight.ndim - 2)
        g_name = _add(graph, f"{input_name}_norm_gain", gain.reshape(shape_c), taken)
        o_name = _add(graph, f"{input_name}_norm_offset", offset.reshape(shape_c), taken)
        scaled = _fresh(f"{input_name}_scaled", taken)
        normalised = _fresh(f"{input_name}_normalised", taken)
        new_nodes += [
            onnx.helper.make_node("Mul", [pixels, g_name], [scaled],
                                  name=f"{input_name}_norm_Mul"),
            onnx.helper.make_node("Add", [scaled, o_name], [normalised],
                                  name=f"{input_name}_norm_Add")]
        conv.input[0] = normalised
    else:
        # The input channel each weight column reads, per output channel.
        per_out = out_channels // group
        column = (np.arange(out_channels)[:, None] // per_out) * group_width \
            + np.arange(group_width)[None, :]
        expand = (slice(None), slice(None)) + (None,) * (weight.ndim - 2)
        folded = weight * gain[column][expand]
        shift = (weight * offset[column][expand]).sum(axis=tuple(range(1, weight.ndim)))
        if len(conv.input) > 2 and conv.input[2]:
            b_index = _initializer_index(graph, conv.input[2])
            bias = onnx.numpy_helper.to_array(graph.initializer[b_index]).astype(np.float64)
            graph.initializer[b_index].CopyFrom(onnx.numpy_helper.from_array(
                (bias + shift).astype(np.float32), graph.initializer[b_index].name))
        else:
            b_name = _add(graph, f"{conv.name or input_name}_folded_bias", shift, taken)
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = b_name
        graph.initializer[w_index].CopyFrom(onnx.numpy_helper.from_array(
            folded.astype(np.float32), graph.initializer[w_index].name))
        conv.input[0] = pixels
        if padded:
            border_map = _border_map(conv, weight, offset, shape, pads, opset)
            m_name = _add(graph, f"{input_name}_border_map", border_map, taken)
            conv_out = conv.output[0]
            raw = _fresh(f"{conv_out}_unbordered", taken)
            conv.output[0] = raw
            position = list(graph.node).index(conv)
            graph.node.insert(position + 1, onnx.helper.make_node(
                "Add", [raw, m_name], [conv_out], name=f"{conv.name or conv_out}_border"))
    for k, node in enumerate(new_nodes):
        graph.node.insert(k, node)
    set_metadata(model, PREPROCESSING_KEY, json.dumps({
        "input": input_name, "pixels": pixels, "mean": [float(v) for v in mean_c],
        "std": [float(v) for v in std_c], "pixel_scale": float(pixel_scale),
        "input_type": input_type, "folded_into": how}))
    onnx.checker.check_model(model)
    return model


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _add(graph: onnx.GraphProto, base: str, value: np.ndarray, taken: set[str]) -> str:
    name = _fresh(base, taken)
    graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name
