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

from onnxquant._payloads import (
    PAYLOAD_THRESHOLD,
    Skeleton,
    Workspace,
    external_location,
    payload_bytes,
    split_model,
)
from onnxquant.errors import InvalidArgumentError, ModelError, UnsupportedModelError

__all__ = [
    "NORMALIZED_KEY",
    "QUANTIZED_KEY",
    "ModelLike",
    "get_metadata",
    "load_model",
    "load_skeleton",
    "model_to_bytes",
    "save_model",
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


def load_skeleton(model: ModelLike, workspace: Workspace, *,
                  fingerprint: bool = True) -> Skeleton:
    """Like :func:`load_model`, but the large payloads stay out of memory:
    the model's own external data files are referenced where they lie, and the
    large initializers of a ``ModelProto`` or of bytes are written to
    ``workspace`` (``onnxquant._payloads``). Nothing the caller owns is
    modified or copied whole.

    Raises:
        ModelError, InvalidArgumentError: as :func:`load_model`.
    """
    if isinstance(model, onnx.ModelProto):
        _check_structure(model, "The model")
        return split_model(model, workspace, fingerprint=fingerprint)
    if isinstance(model, (bytes, bytearray, memoryview)):
        parsed = _parse(bytes(model), "The model bytes")
        _check_structure(parsed, "The model bytes")
        return split_model(parsed, workspace, fingerprint=fingerprint)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        parsed = _load_path(path, load_external_data=False)
        return split_model(parsed, workspace, base_dir=os.path.dirname(os.path.abspath(path)),
                           what=f"Model file '{path}'", fingerprint=fingerprint)
    raise InvalidArgumentError(
        f"Expected an onnx.ModelProto, model bytes or a path, got {type(model).__name__}.")


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
    """Serializes ``model``; raises UnsupportedModelError past protobuf's 2 GB limit
    (onnxquant serializes skeletons, whose payloads lie in files; a graph
    whose structure alone exceeds 2 GB cannot be serialized)."""
    try:
        return model.SerializeToString()
    except ValueError as e:
        raise UnsupportedModelError(
            "The model exceeds protobuf's 2 GB limit even without its large weights "
            "(small initializers and nodes alone); store more of it as external data.") from e


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


#: Past this many bytes of payload a saved model needs external data
#: (protobuf's 2 GB limit, with room for the graph).
_INLINE_LIMIT = (1 << 31) - (64 << 20)


def data_file_name(path: str | os.PathLike) -> str:
    """The external data file :func:`save_model` writes beside ``path``:
    ``<file name>.data``."""
    return os.path.basename(os.fspath(path)) + ".data"


def model_files(path: str | os.PathLike) -> list[str]:
    """The real paths of a model file and of the external data files it names
    (those that exist); empty when ``path`` is not a readable model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return []
    files = [os.path.realpath(path)]
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file has no data files
        return files
    base = os.path.dirname(os.path.realpath(path))
    for tensor in model.graph.initializer:
        location = external_location(tensor)
        if location:
            files.append(os.path.realpath(os.path.join(base, location)))
    return list(dict.fromkeys(files))


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None,
               source: str | os.PathLike | None = None) -> None:
    """Writes ``model`` to ``path`` whole or not at all.

    ``external_data``: store initializers of at least 1 KiB in
    ``<file name>.data`` beside ``path`` (True; no data file when there is
    none), inline (False), or (None, the default) only when the model would
    exceed protobuf's 2 GB limit otherwise. The data file is written first and the model last, each
    through a temporary file in the same directory and a rename, so that a
    reader never sees a model whose data is missing or partial.

    ``source``: the path of the model this one was made from. Writing over it,
    or over one of its external data files, is refused (the input model is
    never modified).

    Raises:
        InvalidArgumentError: ``path`` (or its data file) is ``source`` or one
            of its data files.
        ModelError: the directory does not exist or is not writable.
        UnsupportedModelError: the model exceeds protobuf's 2 GB limit with
            ``external_data=False``.
    """
    path = os.fspath(path)
    if external_data is None:
        external_data = sum(payload_bytes(t) for t in model.graph.initializer) > _INLINE_LIMIT
    elif external_data and not any(
            external_location(t) is not None or payload_bytes(t) >= PAYLOAD_THRESHOLD
            for t in model.graph.initializer):
        external_data = False  # nothing to put there: no empty data file
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), data_file_name(path))
    if source is not None:
        protected = model_files(source)
        targets = [path] + ([data_path] if external_data else [])
        for target in targets:
            if os.path.realpath(target) in protected:
                raise InvalidArgumentError(
                    f"Refusing to write '{target}': it is the input model "
                    f"'{os.fspath(source)}' or one of its data files, which onnxquant "
                    "never modifies. Choose another output path.")
    try:
        if not external_data:
            write_bytes_atomic(path, model_to_bytes(model))
            return
        skeleton = _write_payloads(model, data_path)
        write_bytes_atomic(path, model_to_bytes(skeleton))
    except OSError as e:
        raise ModelError(f"Cannot write '{path}': {e.strerror}.") from e


def _write_payloads(model: onnx.ModelProto, data_path: str) -> onnx.ModelProto:
    """Writes the payloads of at least PAYLOAD_THRESHOLD bytes to
    ``data_path`` (whole or not at all) and returns the model with external
    references to it (relative location)."""
    from onnxquant._payloads import _DATA_FIELDS, _copy_fields, _extent, _payload, _set_external

    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    location = os.path.basename(data_path)

    def write(f: BinaryIO) -> None:
        offset = 0
        for tensor in model.graph.initializer:
            target = skeleton.graph.initializer.add()
            source = external_location(tensor)
            if source is None and (payload_bytes(tensor) < PAYLOAD_THRESHOLD
                                   or tensor.data_type == onnx.TensorProto.STRING):
                target.CopyFrom(tensor)
                continue
            _copy_fields(tensor, target, skip=_DATA_FIELDS)
            if source is None:
                data = _payload(tensor)
            else:
                if not os.path.isabs(source):
                    raise ModelError(
                        f"Initializer '{tensor.name}' is stored as external data that "
                        "was not loaded; load the model with its data before saving it.")
                start, length = _extent(tensor)
                with open(source, "rb") as src:
                    src.seek(start)
                    data = src.read(length)
            f.write(data)
            _set_external(target, location, offset, len(data))
            offset += len(data)
            del data

    write_file_atomic(data_path, write)
    return skeleton


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike, **kwargs) -> None:
    """:func:`save_model` (kept for callers of the earlier name)."""
    save_model(model, path, **kwargs)
