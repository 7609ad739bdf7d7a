"""Activation ranges in and out of files.

- :func:`save_ranges` / :func:`load_ranges`: onnxquant's own JSON, keyed by
  tensor name, with the calibration method and the fingerprint of the model
  the ranges belong to, so that ranges are never applied to another model.
- :func:`save_tensorrt_cache`: TensorRT's calibration cache (scales of
  symmetric ranges).
- :func:`load_ort_calibration`: the ``calibration.json`` that ONNX Runtime's
  ``write_calibration_table`` writes.

Every file is written whole or not at all. A range is a pair ``(min, max)`` of
finite floats with ``min <= max``, as :meth:`~onnxquant.Calibrator.compute_range`
returns it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import struct
from collections.abc import Mapping

import numpy as np
import onnx

from onnxquant._model import ModelLike, load_skeleton, write_bytes_atomic
from onnxquant._payloads import Workspace
from onnxquant.errors import CalibrationDataError, InvalidArgumentError

__all__ = [
    "RANGES_FORMAT",
    "load_ort_calibration",
    "load_ranges",
    "save_ranges",
    "save_tensorrt_cache",
]

#: The ``format`` field of the files :func:`save_ranges` writes.
RANGES_FORMAT = "onnxquant.ranges/1"

#: The smallest scale written to a TensorRT cache (a zero range gets it): the
#: engine's floor on activation scales (``kMinActivationScale``).
_MIN_TRT_SCALE = 1e-8

_CONTROL_FLOW = ("If", "Loop", "Scan")

Ranges = dict[str, tuple[float, float]]


def _pair(value: object) -> tuple[float, float] | None:
    """``value`` as ``(min, max)`` floats, or None when it is not a pair of
    finite numbers with min <= max."""
    if isinstance(value, (str, bytes, Mapping)):
        return None
    try:
        low, high = value  # type: ignore[misc]
    except (TypeError, ValueError):
        return None
    # Numbers only (numpy's scalars are numbers.Real too): not bools, not
    # strings that float() would parse.
    if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
               for v in (low, high)):
        return None
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        return None
    return low, high


def _checked(ranges: object, where: str, error: type[Exception]) -> Ranges:
    """``ranges`` as ``{name: (min, max)}`` of floats; ``error`` naming the
    tensor and ``where`` for the first that is not a valid range."""
    if not isinstance(ranges, Mapping):
        raise error(f"{where}: ranges must be a dict {{tensor name: (min, max)}}, got "
                    f"{type(ranges).__name__}.")
    result: Ranges = {}
    for name, value in ranges.items():
        if not isinstance(name, str) or not name:
            raise error(f"{where}: {name!r} is not a tensor name.")
        pair = _pair(value)
        if pair is None:
            raise error(
                f"{where}: the range of tensor '{name}' is {value!r}; a range is a pair of "
                "finite numbers [min, max] with min <= max.")
        result[name] = pair
    return result


def _value_names(model: onnx.ModelProto) -> set[str]:
    """The activations of a model: the inputs and node outputs of its graph
    and of its If/Loop/Scan bodies (initializers are weights, not ranges)."""
    names: set[str] = set()

    def visit(graph) -> None:
        initializers = {t.name for t in graph.initializer}
        names.update(v.name for v in graph.input if v.name not in initializers)
        for node in graph.node:
            names.update(o for o in node.output if o)
            if node.op_type in _CONTROL_FLOW and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        visit(attr.g)

    visit(model.graph)
    return names


def _model_identity(model: object, what: str) -> tuple[str, set[str], str | None]:
    """The fingerprint and activation names of a normalised model, and the
    method when ``model`` is a Calibrator."""
    from onnxquant.calibrator import Calibrator
    from onnxquant.quantize import require_normalized

    if isinstance(model, Calibrator):
        # The calibrator fingerprinted its model already, and typed every
        # tensor of it.
        return (model._fingerprint, set(model._dtypes) | set(model.tensors),
                model.method.name)
    with Workspace() as workspace:
        skeleton = load_skeleton(model, workspace)  # type: ignore[arg-type]
        require_normalized(skeleton.model, what)
        return skeleton.fingerprint, _value_names(skeleton.model), None


def _method_name(method: object) -> str | None:
    if method is None:
        return None
    from onnxquant.calibrator import _method

    return _method(method).name


def _write(path: str | os.PathLike, text: str) -> None:
    try:
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as e:
        raise InvalidArgumentError(
            f"Cannot write '{os.fspath(path)}': {e.strerror}.") from e


def save_ranges(path: str | os.PathLike, ranges: Mapping[str, tuple[float, float]], *,
                method: object = None, model: ModelLike | object = None) -> None:
    """Writes ``ranges`` to ``path`` as JSON, whole or not at all.

    The file holds ``format`` (:data:`RANGES_FORMAT`), ``method`` (the
    calibration method's name, or null), ``model_sha256`` (the fingerprint
    of the normalised model: SHA-256 of its graph and every weight, the one
    :meth:`~onnxquant.Calibrator.save` records; null without ``model``) and
    ``ranges``: ``{tensor name: [min, max]}``, one tensor a line, in the
    order given. Floats are written so that they read back exactly.

    Args:
        path: the file to write (replaced if it exists).
        ranges: ``{tensor name: (min, max)}`` as
            :meth:`~onnxquant.Calibrator.compute_range` returns it.
        method: the :class:`~onnxquant.CalibrationMethod` (or its name or
            value) the ranges were computed with (default None: the
            calibrator's when ``model`` is a Calibrator, else unrecorded).
        model: the normalised model the ranges belong to (ModelProto, bytes
            or path), or the :class:`~onnxquant.Calibrator` they came from
            (default None: no fingerprint, and :func:`load_ranges` can then
            check only the tensor names).

    Raises:
        InvalidArgumentError: a range that is not a pair of finite numbers
            with min <= max, or a tensor name ``model`` does not have (each
            named); an unknown method; a path that cannot be written.
        ModelError: ``model`` was not normalised by ``optimize_model``.
    """
    where = f"save_ranges('{os.fspath(path)}')"
    checked = _checked(ranges, where, InvalidArgumentError)
    method_name = _method_name(method)
    fingerprint = None
    if model is not None:
        fingerprint, names, calibrated = _model_identity(model, "save_ranges")
        unknown = [n for n in checked if n not in names]
        if unknown:
            raise InvalidArgumentError(
                f"{where}: tensor '{unknown[0]}' is not a tensor of the model"
                f"{_more(unknown)}; pass the normalised model the ranges were computed on.")
        if method_name is None:
            method_name = calibrated
    lines = ["{", f' "format": {json.dumps(RANGES_FORMAT)},',
             f' "method": {json.dumps(method_name)},',
             f' "model_sha256": {json.dumps(fingerprint)},']
    entries = [f"  {json.dumps(name)}: [{low!r}, {high!r}]"
               for name, (low, high) in checked.items()]
    if entries:
        lines += [' "ranges": {', ",\n".join(entries), " }", "}"]
    else:
        lines += [' "ranges": {}', "}"]
    _write(path, "\n".join(lines) + "\n")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def _read_json(path: str | os.PathLike, what: str) -> object:
    """The JSON document at ``path``; CalibrationDataError naming the file
    when it is missing, unreadable, not JSON, or names a key twice."""
    path = os.fspath(path)

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise CalibrationDataError(
                    f"{what} '{path}' names '{key}' twice; write it again.")
            seen[key] = value
        return seen

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CalibrationDataError(f"{what} '{path}' cannot be read: {e.strerror}.") from e
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (ValueError, UnicodeDecodeError) as e:
        raise CalibrationDataError(
            f"{what} '{path}' is not JSON ({e}); it is truncated or not a range file.") from e


def _is_ort_table(document: object) -> bool:
    if not isinstance(document, dict):
        return False
    if document.get("CLS") == "TensorsData":
        return True
    return bool(document) and "format" not in document and all(
        isinstance(v, dict) and v.get("CLS") == "TensorData" for v in document.values())


def load_ranges(path: str | os.PathLike, model: ModelLike | object = None) -> Ranges:
    """Reads a range file :func:`save_ranges` wrote: ``{tensor name: (min,
    max)}`` of Python floats, in the file's order, ready for
    :func:`~onnxquant.quantize`.

    Every range is checked: a pair of finite numbers with min <= max. With
    ``model`` (the normalised model, as ModelProto, bytes or path, or the
    :class:`~onnxquant.Calibrator` of that model), the file's fingerprint
    must be the model's, when the file has one, and every tensor it names
    must be a tensor of the model. Whether the ranges cover every tensor
    the plan needs depends on the options, and ``quantize`` checks it
    (``RangeMissingError`` naming the tensor).

    Raises:
        CalibrationDataError: the file is missing, unreadable, not JSON, not
            an onnxquant range file (ONNX Runtime's ``calibration.json`` is
            read by :func:`load_ort_calibration`), or of a newer format; a
            range that is not valid (naming the tensor and the file); with
            ``model``, a file saved for another model, or a tensor the model
            does not have (naming it and the file).
        ModelError: ``model`` was not normalised by ``optimize_model``.
    """
    path = os.fspath(path)
    what = "Range file"
    document = _read_json(path, what)
    if _is_ort_table(document):
        raise CalibrationDataError(
            f"'{path}' is ONNX Runtime's calibration table, not an onnxquant range file; "
            "read it with onnxquant.load_ort_calibration.")
    if not isinstance(document, dict) or not str(document.get("format", "")).startswith(
            "onnxquant.ranges/"):
        raise CalibrationDataError(
            f"'{path}' is not an onnxquant range file (no 'format': "
            f"'{RANGES_FORMAT}'); write it with onnxquant.save_ranges.")
    if document["format"] != RANGES_FORMAT:
        raise CalibrationDataError(
            f"Range file '{path}' has format {document['format']!r}, which this onnxquant "
            f"does not read ({RANGES_FORMAT}).")
    fingerprint = document.get("model_sha256")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise CalibrationDataError(
            f"Range file '{path}' is corrupt: 'model_sha256' is {fingerprint!r}, not a "
            "string.")
    ranges = _checked(document.get("ranges"), f"Range file '{path}'", CalibrationDataError)
    if model is not None:
        _check_fits(path, ranges, fingerprint, model)
    return ranges


def _check_fits(path: str, ranges: Ranges, fingerprint: str | None, model: object) -> None:
    own, names, _ = _model_identity(model, "load_ranges")
    if fingerprint is not None and fingerprint != own:
        raise CalibrationDataError(
            f"Range file '{path}' was saved for another model (its fingerprint, over the "
            "normalised model's graph and weights, differs from this model's): load it "
            "with the normalised model it was saved with, or calibrate this model.")
    unknown = [n for n in ranges if n not in names]
    if unknown:
        raise CalibrationDataError(
            f"Range file '{path}' has a range for tensor '{unknown[0]}'{_more(unknown)}, "
            "which the model does not have: the ranges belong to another model (or to "
            "the model before optimize_model).")


def save_tensorrt_cache(path: str | os.PathLike, ranges: Mapping[str, tuple[float, float]],
                        *, version: int = 8601,
                        algorithm: str = "EntropyCalibration2") -> None:
    """Writes ``ranges`` as a TensorRT calibration cache, whole or not at all.

    The first line is ``TRT-<version>-<algorithm>`` (TensorRT reads a cache
    only when both match the builder's: ``version`` is TensorRT's version
    number, 8601 for 8.6.1, the default; ``algorithm`` the calibrator's,
    ``EntropyCalibration2`` by default, ``MinMaxCalibration`` and
    ``EntropyCalibration`` being the others). Then one line per tensor,
    ``<name>: <scale>``, where ``<scale>`` is the float32 scale as 8
    big-endian hexadecimal digits (its IEEE 754 bits).

    TensorRT's INT8 is symmetric: the scale is ``amax / 127``, with
    ``amax = max(|min|, |max|)``, so an asymmetric range ``(min, max)`` is
    widened to ``[-amax, amax]``: for ``(-0.5, 1.27)``, amax 1.27 and scale
    0.01 (``3c23d70a``). A range of zero (amax 0) gets the scale 1e-8,
    the floor onnxquant's engine applies. Tensor names are those of the
    normalised model: give TensorRT that model (``onnxquant.save_model``),
    so that its tensor names are the cache's.

    Raises:
        InvalidArgumentError: a range that is not a pair of finite numbers
            with min <= max, or a tensor name with a line break (each
            named); ``version`` not a positive int; ``algorithm`` not a word;
            a path that cannot be written.
    """
    where = f"save_tensorrt_cache('{os.fspath(path)}')"
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise InvalidArgumentError(
            f"version must be TensorRT's version number as a positive int (8601 for "
            f"8.6.1), got {version!r}.")
    if not isinstance(algorithm, str) or not algorithm.isalnum():
        raise InvalidArgumentError(
            f"algorithm must be the name of a TensorRT calibrator, such as "
            f"'EntropyCalibration2', got {algorithm!r}.")
    checked = _checked(ranges, where, InvalidArgumentError)
    lines = [f"TRT-{version}-{algorithm}"]
    for name, (low, high) in checked.items():
        if "\n" in name or "\r" in name:
            raise InvalidArgumentError(
                f"{where}: tensor name {name!r} holds a line break, which a calibration "
                "cache cannot hold.")
        lines.append(f"{name}: {tensorrt_scale_hex(max(abs(low), abs(high)))}")
    _write(path, "\n".join(lines) + "\n")


def tensorrt_scale_hex(amax: float) -> str:
    """The scale ``amax / 127`` (floored at 1e-8) as a TensorRT cache writes
    it: the big-endian hexadecimal of its float32 bits (1.27 -> ``3c23d70a``)."""
    scale = max(float(amax) / 127.0, _MIN_TRT_SCALE)
    return struct.pack(">f", scale).hex()


def _ort_number(value: object, field: str, name: str, where: str) -> float:
    """One of ONNX Runtime's encoded values: a number, a one-element list, or
    ``{"data": ..., "CLS": "numpy.array"}`` holding either."""
    if isinstance(value, dict):
        value = value.get("data")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationDataError(
            f"{where}: tensor '{name}' has no number as '{field}' (got {value!r}); the "
            "file is not ONNX Runtime's calibration table, or it is corrupt.")
    return float(value)


def load_ort_calibration(path: str | os.PathLike,
                         model: ModelLike | object = None) -> Ranges:
    """Reads the ``calibration.json`` that ONNX Runtime's
    ``onnxruntime.quantization.write_calibration_table`` writes (from a
    ``TensorsData`` or from a dict of ``TensorData``; also the older
    ``{name: [min, max]}`` form): ``{tensor name: (lowest, highest)}`` as
    Python floats, checked like :func:`load_ranges`. ``path`` may also be the
    directory the table was written to.

    ONNX Runtime calibrates the model before onnxquant's normalisation, whose
    passes remove some tensors (a folded BatchNormalization's input, for
    one). So with ``model`` (the normalised model, or its Calibrator), the
    ranges of tensors the model does not have are left out, and only a file
    that shares no tensor with the model is refused; ``quantize`` names any
    planned tensor still without a range. Without ``model`` every range is
    returned.

    Raises:
        CalibrationDataError: the file is missing, unreadable, not JSON or
            not such a table; a range that is not a pair of finite numbers
            with lowest <= highest (naming the tensor and the file); with
            ``model``, no tensor in common with the model.
        ModelError: ``model`` was not normalised by ``optimize_model``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "calibration.json")
    where = f"ONNX Runtime calibration table '{path}'"
    document = _read_json(path, "ONNX Runtime calibration table")
    if isinstance(document, dict) and document.get("CLS") == "TensorsData":
        document = document.get("data")
    if not isinstance(document, dict) or not document:
        raise CalibrationDataError(
            f"{where} holds no tensor ranges: it is not the calibration.json "
            "write_calibration_table writes.")
    raw: dict[str, object] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            if "lowest" not in value or "highest" not in value:
                raise CalibrationDataError(
                    f"{where}: tensor '{name}' has no 'lowest' and 'highest' (it has "
                    f"{', '.join(sorted(value)) or 'nothing'}); it is not a range table.")
            raw[name] = (_ort_number(value["lowest"], "lowest", name, where),
                         _ort_number(value["highest"], "highest", name, where))
        else:
            raw[name] = value
    ranges = _checked(raw, where, CalibrationDataError)
    if model is None:
        return ranges
    _, names, _ = _model_identity(model, "load_ort_calibration")
    kept = {n: r for n, r in ranges.items() if n in names}
    if not kept:
        raise CalibrationDataError(
            f"{where} has no tensor of the model (it names '{next(iter(ranges))}' and "
            f"{len(ranges) - 1} others): it was written for another model.")
    return kept
