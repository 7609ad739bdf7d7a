"""Per-node and per-tensor overrides of precision and calibration method.

``QuantOptions(overrides={name: {...}})`` names a node or a tensor of the
normalised model and gives it, instead of the model-wide options:

- ``"activation_type"``: ``"uint8"``, ``"int8"``, ``"int16"`` or ``"float"``.
  On a tensor, its Q/DQ pair (and that of every tensor sharing its
  parameters) takes that type, or is left out for ``"float"``. On a node, the
  quantized tensors it reads and writes take that type; ``"float"`` keeps the
  node float, as ``exclude_nodes`` does.
- ``"method"``: a :class:`~onnxquant.CalibrationMethod` name: the calibrator
  computes the range of that tensor (of the tensors a node reads and writes)
  with it instead of its own method.
- ``"weight_type"`` (nodes only): ``"int8"`` or ``"int4"``.
- ``"output_range"`` (Softmax nodes only): ``"fixed"`` (what every Softmax
  output gets by default: the TFLite spec's [0, 255/256], scale 1/256) or
  ``"calibrated"``: the output keeps the range :func:`~onnxquant.quantize`
  is given, for runtimes other than ONNX Runtime's CPU provider, whose
  QLinearSoftmax may then return 0 for the largest probabilities
  (bench/qlinear_softmax_probe.py).

This module resolves the names against a model's plan into the engine's
per-tensor form (:func:`resolve_overrides`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from onnxquant import _core
from onnxquant.errors import InvalidArgumentError

__all__ = ["OVERRIDE_KEYS", "ResolvedOverrides", "check_overrides", "resolve_overrides"]

_ACTIVATION = ("uint8", "int8", "int16", "float")
_WEIGHT = ("int8", "int4")
_OUTPUT_RANGE = ("fixed", "calibrated")
OVERRIDE_KEYS = ("activation_type", "method", "weight_type", "output_range")


def check_overrides(overrides: object) -> dict[str, dict[str, str]]:
    """Validates an ``overrides`` option and returns a copy of it; raises
    InvalidArgumentError naming the entry at fault."""
    if not isinstance(overrides, Mapping):
        raise InvalidArgumentError(
            f"overrides must be a dict {{node or tensor name: {{'activation_type': ..., "
            f"'method': ..., 'weight_type': ..., 'output_range': ...}}}}, got "
            f"{type(overrides).__name__}.")
    out: dict[str, dict[str, str]] = {}
    for name, entry in overrides.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"overrides holds the key {name!r}, which is not a name.")
        if not isinstance(entry, Mapping) or not entry:
            raise InvalidArgumentError(
                f"overrides['{name}'] must be a non-empty dict with keys among "
                f"{', '.join(OVERRIDE_KEYS)}, got {entry!r}.")
        checked = {}
        for key, value in entry.items():
            if key not in OVERRIDE_KEYS:
                raise InvalidArgumentError(
                    f"overrides['{name}'] has the key {key!r}; the keys are "
                    f"{', '.join(OVERRIDE_KEYS)}.")
            if key == "activation_type" and value not in _ACTIVATION:
                raise InvalidArgumentError(
                    f"overrides['{name}']['activation_type'] must be one of "
                    f"{', '.join(map(repr, _ACTIVATION))}, got {value!r}.")
            if key == "weight_type" and value not in _WEIGHT:
                raise InvalidArgumentError(
                    f"overrides['{name}']['weight_type'] must be 'int8' or 'int4', "
                    f"got {value!r}.")
            if key == "output_range" and value not in _OUTPUT_RANGE:
                raise InvalidArgumentError(
                    f"overrides['{name}']['output_range'] must be 'fixed' (the TFLite spec's "
                    f"[0, 255/256], the default) or 'calibrated' (the range quantize is "
                    f"given), got {value!r}.")
            if key == "method":
                from onnxquant.calibrator import CalibrationMethod

                if isinstance(value, CalibrationMethod):
                    value = value.name
                if not isinstance(value, str) or value.upper() not in CalibrationMethod.__members__:
                    raise InvalidArgumentError(
                        f"overrides['{name}']['method'] must be a calibration method name "
                        f"({', '.join(CalibrationMethod.__members__)}), got {value!r}.")
                value = value.upper()
            checked[key] = value
        out[name] = checked
    return out


@dataclass(frozen=True)
class ResolvedOverrides:
    """The overrides of one model, per calibrated tensor and per node.

    ``tensor_types``: calibrated tensor -> ``"uint8"``/``"int8"``/``"int16"``;
    ``float_tensors``: calibrated tensors left without Q/DQ;
    ``tensor_methods``: calibrated tensor -> method name;
    ``node_weight_types``: node -> ``"int8"``/``"int4"``;
    ``exclude_nodes``: nodes kept float;
    ``calibrated_outputs``: Softmax outputs that keep their calibrated range
    (``output_range="calibrated"``).
    """

    tensor_types: dict[str, str] = field(default_factory=dict)
    float_tensors: tuple[str, ...] = ()
    tensor_methods: dict[str, str] = field(default_factory=dict)
    node_weight_types: dict[str, str] = field(default_factory=dict)
    exclude_nodes: tuple[str, ...] = ()
    calibrated_outputs: tuple[str, ...] = ()


def _set(target: dict[str, str], key: str, value: str, what: str, name: str) -> None:
    if target.get(key, value) != value:
        raise InvalidArgumentError(
            f"overrides give tensor '{key}' two {what}s ({target[key]!r} and {value!r}, the "
            f"latter through '{name}'); tensors that share parameters (a Concat's inputs "
            "and output, a MaxPool's input and output) take one: give them one.")
    target[key] = value


def resolve_overrides(overrides: Mapping[str, Mapping[str, str]], data: bytes,
                      dtypes: Mapping[str, int], native: _core.QuantOptions,
                      model: onnx.ModelProto | None = None) -> ResolvedOverrides:
    """Resolves ``overrides`` (as :func:`check_overrides` returns them) on the
    normalised model ``data`` (its bytes; ``model``: the same, parsed, if at
    hand) under the engine options ``native`` (without overrides).

    Raises:
        InvalidArgumentError: a name that is neither a node nor a tensor of
            the model's main graph, a tensor the plan does not quantize, a
            node that has no quantized tensor (or no weight, for
            ``weight_type``), or two overrides that give a tensor two types or
            methods. The message names the node or tensor.
    """
    if model is None:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    nodes = {n.name: n for n in model.graph.node if n.name}
    excluded = tuple(name for name, e in overrides.items()
                     if name in nodes and e.get("activation_type") == "float")
    native.exclude_nodes = list(native.exclude_nodes) + list(excluded)
    plan = _core.make_plan(data, dict(dtypes), native)
    source = {tensor: src for tensor, src, _ in plan["qdq"]}
    for src in plan["calibrated"]:
        source.setdefault(src, src)
    absorbed_into = {producer: node for node, producer in plan["absorbed"]}
    weighted = {q["node"] for q in plan["quantized_nodes"] if q["weight_input"] >= 0}
    tensors = {o for n in model.graph.node for o in n.output}
    tensors.update(i.name for i in model.graph.input)
    tensors.update(i.name for i in model.graph.initializer)
    types: dict[str, str] = {}
    methods: dict[str, str] = {}
    weights: dict[str, str] = {}
    calibrated: list[str] = []
    for name, entry in overrides.items():
        if "output_range" in entry and (name in nodes or name in tensors):
            output = _softmax_output(name, nodes, source, model)
            if entry["output_range"] == "calibrated":
                calibrated.append(output)
        if name in nodes:
            if name in excluded:
                continue
            node = nodes[name]
            names = list(node.input) + list(node.output)
            if name in absorbed_into:
                names += list(nodes[absorbed_into[name]].output)
            sources = list(dict.fromkeys(source[t] for t in names if t in source))
            if "weight_type" in entry:
                if name not in weighted:
                    raise InvalidArgumentError(
                        f"overrides['{name}'] gives a weight_type, but node '{name}' "
                        f"({node.op_type}) has no quantized weight.")
                weights[name] = entry["weight_type"]
            if ("activation_type" in entry or "method" in entry) and not sources:
                raise InvalidArgumentError(
                    f"overrides['{name}'] names node '{name}' ({node.op_type}), which reads "
                    "and writes no quantized tensor: name a quantized node or tensor (see "
                    "the report's quantized nodes).")
        elif name in tensors:
            if name not in source:
                raise InvalidArgumentError(
                    f"overrides['{name}'] names tensor '{name}', which the plan does not "
                    "quantize (it stays float, or is a weight): name a tensor that gets a "
                    "QuantizeLinear/DequantizeLinear pair.")
            if "weight_type" in entry:
                raise InvalidArgumentError(
                    f"overrides['{name}'] gives a weight_type to tensor '{name}'; "
                    "weight_type goes on the node that reads the weight.")
            sources = [source[name]]
        else:
            raise InvalidArgumentError(
                f"overrides names '{name}', which is neither a node nor a tensor of the "
                "model's main graph: use the names of the normalised model "
                "(onnxquant.optimize_model's output).")
        for src in sources:
            if "activation_type" in entry:
                _set(types, src, entry["activation_type"], "activation type", name)
            if "method" in entry:
                _set(methods, src, entry["method"], "method", name)
    floats = tuple(t for t, v in types.items() if v == "float")
    return ResolvedOverrides(
        tensor_types={t: v for t, v in types.items() if v != "float"},
        float_tensors=floats, tensor_methods=methods, node_weight_types=weights,
        exclude_nodes=excluded, calibrated_outputs=tuple(calibrated))


def _softmax_output(name: str, nodes: Mapping[str, onnx.NodeProto],
                    source: Mapping[str, str], model: onnx.ModelProto) -> str:
    """The quantized output of the Softmax node ``name`` that an
    ``output_range`` override names; raises InvalidArgumentError naming it
    when ``name`` is a tensor, a node of another op, or a Softmax whose
    output stays float."""
    if name not in nodes:
        producer = next((n for n in model.graph.node if name in n.output), None)
        where = f" (written by node '{producer.name}', {producer.op_type})" \
            if producer is not None and producer.name else ""
        raise InvalidArgumentError(
            f"overrides['{name}'] gives an output_range to tensor '{name}'{where}; "
            "output_range goes on a Softmax node: name the node.")
    node = nodes[name]
    if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
        raise InvalidArgumentError(
            f"overrides['{name}'] gives an output_range to node '{name}' ({node.op_type}); "
            "only Softmax outputs have a fixed range: name a Softmax node.")
    if not node.output or source.get(node.output[0]) != node.output[0]:
        raise InvalidArgumentError(
            f"overrides['{name}'] gives an output_range to Softmax node '{name}', whose "
            "output the plan does not quantize (it stays float, or takes the parameters "
            "of another tensor); drop the entry.")
    return node.output[0]
