"""Editing the inputs and outputs of a quantized model: :class:`ModelEditor`.

In the style of FuriosaAI's ``furiosa.quantizer.ModelEditor`` (0.10), but
applied to the QDQ model :func:`onnxquant.quantize` returns:

- ``convert_input_type(name, TensorType.UINT8)`` removes the input's
  QuantizeLinear: the model then takes the quantized codes directly, and the
  DequantizeLinear that followed reads the graph input. The caller quantizes
  on its side (or, for image pixels with scale 1 and zero point 0, does
  nothing at all).
- ``convert_output_type(name, TensorType.UINT8)`` removes the output's
  DequantizeLinear: the model returns the codes of its last QuantizeLinear.

Both return the :class:`TensorQuantization` (scale, zero point, type) that
maps codes to real values, and record it in the model's ``metadata_props``
under ``onnxquant.input.<name>`` / ``onnxquant.output.<name>`` (JSON:
``{"type": "uint8", "scale": s, "zero_point": z}``).

The editor changes the ``ModelProto`` it was given, in place, as furiosa's
does; each conversion is applied whole or not at all (a refused conversion
leaves the model as it was).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.checker
import onnx.helper
import onnx.numpy_helper

from onnxquant._graph_walk import all_nodes, node_bodies
from onnxquant._model import get_metadata
from onnxquant.errors import InvalidArgumentError, ModelError, UnsupportedModelError

__all__ = [
    "INPUT_KEY_PREFIX",
    "OUTPUT_KEY_PREFIX",
    "ModelEditor",
    "TensorQuantization",
    "TensorType",
    "get_output_names",
    "get_pure_input_names",
    "io_quantization",
]

#: metadata_props key prefix of a converted input: ``onnxquant.input.<name>``.
INPUT_KEY_PREFIX = "onnxquant.input."
#: metadata_props key prefix of a converted output: ``onnxquant.output.<name>``.
OUTPUT_KEY_PREFIX = "onnxquant.output."


class TensorType(enum.IntEnum):
    """Element type of a model input or output; the values are ONNX's
    ``TensorProto`` data types (``TensorType(value_info_elem_type)`` works)."""

    FLOAT32 = onnx.TensorProto.FLOAT
    UINT8 = onnx.TensorProto.UINT8
    INT8 = onnx.TensorProto.INT8


_NUMPY = {TensorType.UINT8: np.uint8, TensorType.INT8: np.int8}
_LIMITS = {TensorType.UINT8: (0, 255), TensorType.INT8: (-128, 127)}


@dataclass(frozen=True)
class TensorQuantization:
    """How the integer codes of a converted input or output map to real
    values: ``real = (code - zero_point) * scale`` (per tensor).

    ``kind`` is ``"input"`` or ``"output"``; ``type`` is
    ``TensorType.UINT8`` or ``TensorType.INT8``."""

    name: str
    kind: str
    type: TensorType
    scale: float
    zero_point: int

    @property
    def dtype(self) -> type:
        """The numpy dtype of the codes."""
        return _NUMPY[self.type]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Codes of real values ``x`` as ONNX's QuantizeLinear computes them:
        ``saturate(round_half_even(x / scale) + zero_point)`` in float32."""
        low, high = _LIMITS[self.type]
        scaled = np.asarray(x, np.float32) / np.float32(self.scale)
        return np.clip(np.rint(scaled) + self.zero_point, low, high).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Real values of codes ``q``, as DequantizeLinear computes them."""
        return ((np.asarray(q).astype(np.int32) - self.zero_point).astype(np.float32)
                * np.float32(self.scale))

    def to_json(self) -> str:
        return json.dumps({"type": self.type.name.lower(), "scale": self.scale,
                           "zero_point": self.zero_point})


def get_pure_input_names(model: onnx.ModelProto) -> list[str]:
    """The names of ``model``'s graph inputs that are not initializers, in
    order (furiosa's semantics: old exporters also list weights as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def get_output_names(model: onnx.ModelProto) -> list[str]:
    """The names of ``model``'s graph outputs, in order."""
    return [o.name for o in model.graph.output]


def io_quantization(model: onnx.ModelProto) -> dict[str, TensorQuantization]:
    """The converted inputs and outputs recorded in ``model``'s
    metadata_props, by tensor name (empty when none was converted)."""
    found = {}
    for prop in model.metadata_props:
        for prefix, kind in ((INPUT_KEY_PREFIX, "input"), (OUTPUT_KEY_PREFIX, "output")):
            if prop.key.startswith(prefix):
                name = prop.key[len(prefix):]
                try:
                    d = json.loads(prop.value)
                    found[name] = TensorQuantization(name, kind, TensorType[d["type"].upper()],
                                                     float(d["scale"]), int(d["zero_point"]))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    raise ModelError(
                        f"metadata_props['{prop.key}'] is not a valid quantization record "
                        f"({prop.value!r}); remove it, or convert the tensor again.") from e
    return found


def _tensor_type(value, what: str) -> TensorType:
    try:
        return TensorType(value) if not isinstance(value, str) else TensorType[value.upper()]
    except (ValueError, KeyError):
        raise InvalidArgumentError(
            f"{what} must be TensorType.UINT8, TensorType.INT8 or TensorType.FLOAT32, "
            f"got {value!r}.") from None


class ModelEditor:
    """Converts the inputs and outputs of a quantized (QDQ) model between
    float and their integer codes.

    ``model``: the ``onnx.ModelProto`` that :func:`onnxquant.quantize`
    returned; edited in place (pass a copy to keep the original).

    Raises:
        InvalidArgumentError: ``model`` is not an ``onnx.ModelProto``.
    """

    def __init__(self, model: onnx.ModelProto):
        if not isinstance(model, onnx.ModelProto):
            raise InvalidArgumentError(
                f"ModelEditor edits an onnx.ModelProto in place, got {type(model).__name__}; "
                "load the model first (onnx.load).")
        self._model = model

    @property
    def model(self) -> onnx.ModelProto:
        """The model being edited (the object given to the constructor)."""
        return self._model

    def convert_input_type(self, tensor_name: str,
                           tensor_type: TensorType) -> TensorQuantization | None:
        """Makes input ``tensor_name`` take ``tensor_type``.

        UINT8 / INT8: the input's QuantizeLinear is removed; the model takes
        the codes ``round(x / scale) + zero_point`` of what it took before,
        and returns that :class:`TensorQuantization` (also recorded under
        ``metadata_props["onnxquant.input.<name>"]``). Where the model's
        quantization of the input has the other 8-bit type, the codes are
        shifted by 128 (the zero point moves with them; exact). An input of
        8-bit type that is cast to float and quantized with scale 1 and
        zero point 0 (:func:`fold_preprocessing`'s pixels) loses its Cast and
        QuantizeLinear (exact). FLOAT32: undoes an earlier conversion
        (returns None; nothing to do on a float input).

        Raises:
            InvalidArgumentError: no such input (the message lists them), or
                a type other than these three.
            UnsupportedModelError: the input is not quantized (a consumer
                other than QuantizeLinear reads it, or its quantization is
                not per tensor with constant parameters), naming the node.
        """
        tensor_type = _tensor_type(tensor_type, "tensor_type")
        inputs = get_pure_input_names(self._model)
        if tensor_name not in inputs:
            raise InvalidArgumentError(
                f"The model has no input '{tensor_name}' (its inputs: "
                f"{', '.join(repr(n) for n in inputs)}); pass one of these names "
                "(onnxquant.get_pure_input_names(model)).")
        work = onnx.ModelProto()
        work.CopyFrom(self._model)
        result = _convert_input(work, tensor_name, tensor_type)
        _commit(self._model, work)
        return result

    def convert_output_type(self, tensor_name: str, tensor_type: TensorType,
                            tensor_range: tuple[float, float] | None = None
                            ) -> TensorQuantization | None:
        """Makes output ``tensor_name`` return ``tensor_type``.

        UINT8 / INT8: the output's DequantizeLinear is removed; the model
        returns the codes of the QuantizeLinear before it, and this returns
        the :class:`TensorQuantization` that dequantizes them (also recorded
        under ``metadata_props["onnxquant.output.<name>"]``).
        ``tensor_range``: a new (min, max) for the output (widened to
        contain 0), which requantizes that tensor everywhere the model reads
        it; default None keeps the calibrated one. Where the model's
        quantization has the other 8-bit type, codes and zero point are
        shifted by 128 (exact). FLOAT32: undoes an earlier conversion.

        Raises:
            InvalidArgumentError: no such output (the message lists them), a
                type other than these three, or an invalid ``tensor_range``.
            UnsupportedModelError: the output is not produced by a per-tensor
                DequantizeLinear (it stays float: the message names the node
                that produces it).
        """
        tensor_type = _tensor_type(tensor_type, "tensor_type")
        outputs = get_output_names(self._model)
        if tensor_name not in outputs:
            raise InvalidArgumentError(
                f"The model has no output '{tensor_name}' (its outputs: "
                f"{', '.join(repr(n) for n in outputs)}); pass one of these names "
                "(onnxquant.get_output_names(model)).")
        if tensor_range is not None:
            tensor_range = _check_range(tensor_range)
        work = onnx.ModelProto()
        work.CopyFrom(self._model)
        result = _convert_output(work, tensor_name, tensor_type, tensor_range)
        _commit(self._model, work)
        return result


# ----------------------------------------------------------------------------- helpers


def _commit(model: onnx.ModelProto, work: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(work)
    except onnx.checker.ValidationError as e:
        from onnxquant.errors import InternalError

        raise InternalError(
            f"The edited model fails ONNX's checker ({str(e).splitlines()[0]}); this is a "
            "bug in onnxquant, please report it with the model.") from e
    model.CopyFrom(work)


def _check_range(value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"tensor_range must be a pair (min, max) of numbers, got {value!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise InvalidArgumentError(
            f"tensor_range must be finite with min <= max, got ({low}, {high}).")
    return low, high


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in graph.node if name in n.output), None)


def _read_by_bodies(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    """The If/Loop/Scan node whose body reads ``name`` from the outer scope."""
    for node in graph.node:
        if any(name in n.input for body in node_bodies(node) for n in all_nodes(body)):
            return node
    return None


def _label(node: onnx.NodeProto) -> str:
    return f"'{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"


def _initializer(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    return None


def _qparams(graph: onnx.GraphProto, node: onnx.NodeProto, what: str
             ) -> tuple[float, int, TensorType]:
    """Per-tensor (scale, zero point, type) of a QuantizeLinear or
    DequantizeLinear node whose parameters are initializers."""
    scale = _initializer(graph, node.input[1])
    zero = _initializer(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or (len(node.input) > 2 and node.input[2] and zero is None):
        raise UnsupportedModelError(
            f"{what}: its {node.op_type} {_label(node)} takes its scale or zero point from "
            "another node, not a constant; only quantize's per-tensor parameters can be "
            "converted.")
    if scale.size != 1 or (zero is not None and zero.size != 1):
        raise UnsupportedModelError(
            f"{what}: its {node.op_type} {_label(node)} is per channel; only per-tensor "
            "quantized inputs and outputs can be converted.")
    if zero is None:
        return float(scale.reshape(())), 0, TensorType.UINT8
    kind = {np.dtype(np.uint8): TensorType.UINT8, np.dtype(np.int8): TensorType.INT8}.get(
        zero.dtype)
    if kind is None:
        raise UnsupportedModelError(
            f"{what}: its {node.op_type} {_label(node)} quantizes to {zero.dtype}; only uint8 "
            "and int8 can be converted.")
    return float(scale.reshape(())), int(zero.reshape(())), kind


def _add_initializer(graph: onnx.GraphProto, base: str, value: np.ndarray) -> str:
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    names |= {i.name for i in graph.input}
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    return name


def _zero_point_array(value: int, kind: TensorType) -> np.ndarray:
    return np.array(value, dtype=_NUMPY[kind])


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _drop_value_info(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    names = set(names)
    keep = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _drop_unused_initializers(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    used = {i for n in graph.node for i in n.input}
    for name in set(names):
        if name and name not in used:
            for k, t in enumerate(graph.initializer):
                if t.name == name:
                    del graph.initializer[k]
                    break


def _set_metadata(model: onnx.ModelProto, key: str, value: str | None) -> None:
    for k, prop in enumerate(model.metadata_props):
        if prop.key == key:
            if value is None:
                del model.metadata_props[k]
            else:
                prop.value = value
            return
    if value is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _retype_zero_points(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], zero: int,
                        kind: TensorType, base: str) -> None:
    """Gives ``nodes`` (Q/DQ sharing one tensor's quantization) a new zero
    point ``zero`` of type ``kind``."""
    name = _add_initializer(graph, base, _zero_point_array(zero, kind))
    for node in nodes:
        if len(node.input) < 3:
            node.input.append(name)
        else:
            node.input[2] = name


def _shift(zero: int, source: TensorType, target: TensorType) -> int:
    """The zero point of the same codes moved to ``target``'s range."""
    if source == target:
        return zero
    return zero - 128 if target == TensorType.INT8 else zero + 128


def _value_info(graph_values, name: str) -> onnx.ValueInfoProto:
    return next(v for v in graph_values if v.name == name)


# ----------------------------------------------------------------------------- inputs


def _convert_input(model: onnx.ModelProto, name: str, target: TensorType
                   ) -> TensorQuantization | None:
    graph = model.graph
    what = f"Input '{name}'"
    key = INPUT_KEY_PREFIX + name
    info = _value_info(graph.input, name)
    current = info.type.tensor_type.elem_type
    body = _read_by_bodies(graph, name)
    if body is not None:
        raise UnsupportedModelError(
            f"{what} is read inside the body of {_label(body)}, which needs float values; "
            "it cannot be converted.")
    if target == TensorType.FLOAT32:
        if current == onnx.TensorProto.FLOAT:
            return None
        return _restore_input(model, name)
    if current == target and get_metadata(model, key) is not None:
        return io_quantization(model)[name]
    # Where the Q reads the input itself, or a Cast of an 8-bit input (pixels).
    source, cast = name, None
    if current in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
        users = _consumers(graph, name)
        cast = users[0] if len(users) == 1 and users[0].op_type == "Cast" else None
        if cast is None:
            raise UnsupportedModelError(
                f"{what} already has type {onnx.TensorProto.DataType.Name(current).lower()} "
                "and is not quantized by the model; convert_input_type changes float inputs "
                "(or 8-bit inputs cast to float and quantized with scale 1, zero point 0).")
        source = cast.output[0]
    elif current != onnx.TensorProto.FLOAT:
        raise UnsupportedModelError(
            f"{what} has type {onnx.TensorProto.DataType.Name(current).lower()}; only float "
            "inputs quantized by the model can be converted.")
    quantizers = _consumers(graph, source)
    if name in get_output_names(model) or source in get_output_names(model):
        raise UnsupportedModelError(
            f"{what} is also a graph output, which must keep its float values; it cannot "
            "be converted.")
    if not quantizers:
        raise UnsupportedModelError(f"{what} is read by no node; nothing to convert.")
    for node in quantizers:
        if node.op_type != "QuantizeLinear" or node.input[0] != source:
            raise UnsupportedModelError(
                f"{what} is not quantized: it is read by {_label(node)}, which needs float "
                "values. Quantize that node too (e.g. drop it from exclude_nodes), or keep "
                "the input float.")
    params = {_qparams(graph, q, what) for q in quantizers}
    if len(params) > 1:
        raise UnsupportedModelError(
            f"{what} is quantized by {len(quantizers)} QuantizeLinear nodes with different "
            "parameters; one integer input cannot feed them all.")
    scale, zero, kind = params.pop()
    if cast is not None:
        pixel = TensorType(current)
        if (scale, zero, kind) != (1.0, 0, pixel):
            raise UnsupportedModelError(
                f"{what} ({pixel.name.lower()}) is cast to float and quantized with scale "
                f"{scale:g} and zero point {zero} ({kind.name.lower()}), not 1 and 0: its codes "
                f"are not its values. Calibrate tensor '{source}' as (0.0, 255.0) for uint8 "
                f"pixels (ranges['{source}'] = (0.0, 255.0) before quantize).")
    # Every reader of the removed codes is a DequantizeLinear.
    codes = [q.output[0] for q in quantizers]
    dequantizers = [n for c in codes for n in _consumers(graph, c)]
    for node in dequantizers:
        if node.op_type != "DequantizeLinear":
            raise UnsupportedModelError(
                f"{what}: its quantized codes are read by {_label(node)}, not a "
                "DequantizeLinear; this input cannot be converted.")
    if any(c in get_output_names(model) for c in codes):
        raise UnsupportedModelError(f"{what}: its quantized codes are a graph output.")
    new_zero = _shift(zero, kind, target)
    if kind != target:
        _retype_zero_points(graph, dequantizers, new_zero, target,
                            f"{name}_zero_point_{target.name.lower()}")
    removed = list(quantizers) + ([cast] if cast is not None else [])
    old_params = [i for q in quantizers for i in q.input[1:]]
    for node in removed:
        graph.node.remove(node)
    for code in codes:
        _rename_uses(graph, code, name)
    _drop_value_info(graph, codes + [source])
    _drop_unused_initializers(graph, old_params)
    info.type.tensor_type.elem_type = int(target)
    result = TensorQuantization(name, "input", target, scale, new_zero)
    _set_metadata(model, key, result.to_json())
    return result


def _conversion_record(model: onnx.ModelProto, name: str, what: str,
                       key: str) -> TensorQuantization:
    """The record ModelEditor stored for a converted input or output."""
    record = io_quantization(model).get(name)
    if record is None:
        raise UnsupportedModelError(
            f"{what} '{name}' has an integer type but no record under metadata_props['{key}'] "
            "(it was not converted by ModelEditor); it cannot be made float.")
    return record


def _free_codes_name(graph: onnx.GraphProto, name: str) -> str:
    """``<name>_quantized`` (or with a ``_<k>`` suffix): no tensor of ``graph`` has it."""
    codes = f"{name}_quantized"
    existing = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    k = 1
    while codes in existing:
        codes, k = f"{name}_quantized_{k}", k + 1
    return codes


def _restore_input(model: onnx.ModelProto, name: str) -> None:
    graph = model.graph
    key = INPUT_KEY_PREFIX + name
    record = _conversion_record(model, name, "Input", key)
    codes = _free_codes_name(graph, name)
    _rename_uses(graph, name, codes)
    scale = _add_initializer(graph, f"{name}_scale", np.array(record.scale, np.float32))
    zero = _add_initializer(graph, f"{name}_zero_point",
                            _zero_point_array(record.zero_point, record.type))
    graph.node.insert(0, onnx.helper.make_node("QuantizeLinear", [name, scale, zero], [codes],
                                               name=f"{name}_QuantizeLinear"))
    _value_info(graph.input, name).type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    _set_metadata(model, key, None)
    return None


# ----------------------------------------------------------------------------- outputs


def _range_params(low: float, high: float, kind: TensorType) -> tuple[float, int]:
    """Asymmetric per-tensor (scale, zero point) of [low, high] widened to
    contain 0 (the TFLite spec), in float32 as quantize stores it."""
    low, high = min(low, 0.0), max(high, 0.0)
    qmin, qmax = _LIMITS[kind]
    scale = float(np.float32((high - low) / (qmax - qmin)))
    if scale == 0.0:
        scale = float(np.finfo(np.float32).tiny)
    zero = int(np.clip(np.rint(qmin - low / scale), qmin, qmax))
    return scale, zero


def _convert_output(model: onnx.ModelProto, name: str, target: TensorType,
                    tensor_range: tuple[float, float] | None) -> TensorQuantization | None:
    graph = model.graph
    what = f"Output '{name}'"
    key = OUTPUT_KEY_PREFIX + name
    info = _value_info(graph.output, name)
    current = info.type.tensor_type.elem_type
    if target == TensorType.FLOAT32:
        if current == onnx.TensorProto.FLOAT:
            return None
        return _restore_output(model, name)
    if current != onnx.TensorProto.FLOAT:
        if current == target and get_metadata(model, key) is not None and tensor_range is None:
            return io_quantization(model)[name]
        raise UnsupportedModelError(
            f"{what} already returns {onnx.TensorProto.DataType.Name(current).lower()}; "
            "convert it back with TensorType.FLOAT32 first.")
    dq = _producer(graph, name)
    if dq is None or dq.op_type != "DequantizeLinear":
        producer = f"by {_label(dq)}, whose output is float" if dq is not None else \
            "by no node"
        raise UnsupportedModelError(
            f"{what} is not quantized: it is produced {producer}. Only outputs produced "
            "by a DequantizeLinear (a quantized node's output) can be converted; keep it "
            "float, or convert an output of a quantized node. A Gemm or MatMul output "
            "stays float by default: quantize with float_outputs=False (CLI "
            "--quantized-outputs) to have it quantized.")
    scale, zero, kind = _qparams(graph, dq, what)
    codes = dq.input[0]
    quantizer = _producer(graph, codes)
    if (kind != target or tensor_range is not None) and (
            quantizer is None or quantizer.op_type != "QuantizeLinear"):
        raise UnsupportedModelError(
            f"{what}: its codes come from no QuantizeLinear, so their type or range "
            "cannot be changed; convert it to its own type without tensor_range.")
    if codes in get_output_names(model) or codes in [i.name for i in graph.input]:
        raise UnsupportedModelError(f"{what}: its codes '{codes}' are already a graph "
                                    "input or output.")
    # The nodes sharing the codes' quantization: their Q and every DQ of them.
    sharing = ([quantizer] if quantizer is not None else []) + [
        n for n in _consumers(graph, codes) if n.op_type == "DequantizeLinear"]
    if tensor_range is not None:
        scale, zero = _range_params(*tensor_range, target)
        s_name = _add_initializer(graph, f"{name}_scale_new", np.array(scale, np.float32))
        for node in sharing:
            node.input[1] = s_name
        _retype_zero_points(graph, sharing, zero, target, f"{name}_zero_point_new")
    elif kind != target:
        zero = _shift(zero, kind, target)
        _retype_zero_points(graph, sharing, zero, target,
                            f"{name}_zero_point_{target.name.lower()}")
    # Internal readers of the float output keep a DequantizeLinear of their own.
    readers = _consumers(graph, name)
    if readers:
        inner = f"{name}_dequantized"
        dq.output[0] = inner
        for node in readers:
            for i, n in enumerate(node.input):
                if n == name:
                    node.input[i] = inner
    else:
        graph.node.remove(dq)
    # The codes take the output's name.
    producer = _producer(graph, codes)
    for i, n in enumerate(producer.output):
        if n == codes:
            producer.output[i] = name
    _rename_uses(graph, codes, name)
    _drop_value_info(graph, [codes, name])
    _drop_unused_initializers(graph, [i for i in dq.input[1:]])
    info.type.tensor_type.elem_type = int(target)
    result = TensorQuantization(name, "output", target, scale, zero)
    _set_metadata(model, key, result.to_json())
    return result


def _restore_output(model: onnx.ModelProto, name: str) -> None:
    graph = model.graph
    key = OUTPUT_KEY_PREFIX + name
    record = _conversion_record(model, name, "Output", key)
    codes = _free_codes_name(graph, name)
    producer = _producer(graph, name)
    for i, n in enumerate(producer.output):
        if n == name:
            producer.output[i] = codes
    _rename_uses(graph, name, codes)
    scale = _add_initializer(graph, f"{name}_scale", np.array(record.scale, np.float32))
    zero = _add_initializer(graph, f"{name}_zero_point",
                            _zero_point_array(record.zero_point, record.type))
    graph.node.append(onnx.helper.make_node("DequantizeLinear", [codes, scale, zero], [name],
                                            name=f"{name}_DequantizeLinear"))
    _value_info(graph.output, name).type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    _set_metadata(model, key, None)
    return None
