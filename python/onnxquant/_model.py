"""Loading, copying, serialising and saving ONNX models.

Every public entry point of onnxquant accepts a model as an ``onnx.ModelProto``,
serialized bytes, or a path; :func:`load_model` turns any of them into a private
``ModelProto`` so that nothing the caller owns (object or file) is ever modified.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import onnx
import onnx.checker
import onnx.external_data_helper
from google.protobuf.message import DecodeError

from onnxquant.errors import InvalidArgumentError, ModelError, UnsupportedModelError

__all__ = [
    "NORMALIZED_KEY",
    "QUANTIZED_KEY",
    "ModelLike",
    "get_metadata",
    "load_model",
    "model_to_bytes",
    "save_model_atomic",
    "set_metadata",
    "write_bytes_atomic",
    "write_file_atomic",
]

ModelLike = onnx.ModelProto | bytes | str | os.PathLike

#: metadata_props key that optimize_model stamps on a normalised model.
NORMALIZED_KEY = "onnxquant.normalized"
#: metadata_props key that quantize stamps on its output.
QUANTIZED_KEY = "onnxquant.quantized"

_MALFORMED = ("is malformed or truncated (it does not parse as an ONNX model, or "
              "parts of it are missing); re-export the model or check that the file "
              "was copied whole")


def load_model(model: ModelLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Returns a private copy of ``model`` as an ``onnx.ModelProto``.

    ``model`` is a ``ModelProto`` (copied, never modified), serialized bytes, or
    a path to an ``.onnx`` file. For a path, tensors stored as external data
    next to the file are loaded into the copy (``load_external_data=True``,
    the default); the file itself is only read.

    Raises:
        ModelError: the file does not exist or cannot be read, or the bytes
            are malformed or truncated (the message names the file).
        InvalidArgumentError: ``model`` is of another type.
    """
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        _check_structure(copy, "The model")
        return copy
    if isinstance(model, (bytes, bytearray, memoryview)):
        copy = _parse(bytes(model), "The model bytes")
        _check_structure(copy, "The model bytes")
        return copy
    if isinstance(model, (str, os.PathLike)):
        return _load_path(os.fspath(model), load_external_data)
    raise InvalidArgumentError(
        f"Expected an onnx.ModelProto, model bytes or a path, got {type(model).__name__}.")


def _load_path(path: str, load_external_data: bool) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise ModelError(f"Model file '{path}' does not exist.")
    if os.path.isdir(path):
        raise ModelError(f"Model path '{path}' is a directory, not an .onnx file.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelError(f"Model file '{path}' cannot be read: {e.strerror}.") from e
    what = f"Model file '{path}'"
    model = _parse(data, what)
    if load_external_data:
        try:
            onnx.external_data_helper.load_external_data_for_model(
                model, os.path.dirname(os.path.abspath(path)))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise ModelError(
                f"{what}: its external data cannot be loaded ({e}); keep the data "
                "files next to the model, under the names the model gives.") from e
    _check_structure(model, what)
    return model


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{what} {_MALFORMED}.") from e
    return model


def _check_structure(model: onnx.ModelProto, what: str) -> None:
    """Cheap consistency checks that catch truncation at a field boundary."""
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{what} {_MALFORMED}: it holds no graph.")
    if not model.opset_import:
        raise ModelError(f"{what} {_MALFORMED}: it declares no opset.")
    # Order-independent: some exporters write nodes out of topological order.
    known = {i.name for i in model.graph.input}
    known.update(t.name for t in model.graph.initializer)
    known.update(t.values.name for t in model.graph.sparse_initializer)
    for node in model.graph.node:
        known.update(node.output)
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            if name and name not in known:
                label = node.name or f"#{index}"
                raise ModelError(
                    f"{what} {_MALFORMED}: node '{label}' ({node.op_type}) reads "
                    f"tensor '{name}', which no node, input or initializer provides.")
    for out in model.graph.output:
        if out.name not in known:
            raise ModelError(
                f"{what} {_MALFORMED}: graph output '{out.name}' is produced by no node.")


def model_to_bytes(model: onnx.ModelProto) -> bytes:
    """Serializes ``model``; raises UnsupportedModelError past protobuf's 2 GB limit."""
    try:
        return model.SerializeToString()
    except ValueError as e:
        raise UnsupportedModelError(
            "The model exceeds protobuf's 2 GB limit; onnxquant cannot pass it to "
            "its engine in one piece yet.") from e


def get_metadata(model: onnx.ModelProto, key: str) -> str | None:
    """The value of metadata_props entry ``key``, or None."""
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Sets (adds or replaces) metadata_props entry ``key`` in place."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = key
    entry.value = value


def write_file_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on a temporary file in the directory of ``path``,
    flushes it to disk, then renames it to ``path``: a crash or a full disk
    leaves either the old file or the new one, never a partial file.

    Raises:
        OSError: the directory does not exist or is not writable, or the write
            failed (the temporary file is removed).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnxquant-", suffix=".tmp", dir=directory)
    try:
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` whole or not at all (see write_file_atomic)."""
    write_file_atomic(path, lambda f: f.write(data))


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Writes ``model`` to ``path`` whole or not at all.

    Raises:
        ModelError: the directory does not exist or is not writable.
        UnsupportedModelError: the model exceeds protobuf's 2 GB limit.
    """
    path = os.fspath(path)
    data = model_to_bytes(model)
    try:
        write_bytes_atomic(path, data)
    except OSError as e:
        raise ModelError(f"Cannot write '{path}': {e.strerror}.") from e
