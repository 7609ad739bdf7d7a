"""Large models: tensor payloads that travel beside the graph.

Protobuf messages stop at 2 GB, and every serialization of a model copies its
weights. So onnxquant never serializes a model's large initializers: before
the engine or ONNX Runtime sees a model, every initializer of at least
:data:`PAYLOAD_THRESHOLD` bytes is written once to a file in a private
temporary directory (a :class:`Workspace`) and replaced by an external-data
reference with an absolute location. The result, a *skeleton*, is a few
kilobytes to megabytes whatever the weights. The engine reads such references
itself (one tensor at a time, when a pass or the quantizer needs its values),
appends the large tensors it creates to a file of the workspace, and ONNX
Runtime opens skeletons with the workspace as its external-data folder. A
model the user gets back is *materialized*: its payloads read back into
``raw_data``.

A model's own external data (a path loaded with its data files) is referenced
where it lies, read only, never copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
from onnx import TensorProto

from onnxquant.errors import ModelError

__all__ = [
    "LARGE_MODEL_BYTES",
    "PAYLOAD_THRESHOLD",
    "Skeleton",
    "Workspace",
    "external_location",
    "materialize",
    "ort_session",
    "payload_bytes",
    "split_model",
]

#: Initializers holding at least this many bytes travel beside the graph.
#: Smaller ones (shape constants, scales, Clip bounds) stay inline, where
#: shape inference and the passes read them directly.
PAYLOAD_THRESHOLD = 1024

#: Models whose initializers hold at least this many bytes are *large*: the
#: Calibrator opens its ONNX Runtime session only while it runs the model, so
#: that the session and quantization never hold the weights at the same time.
LARGE_MODEL_BYTES = 1 << 30

_CHUNK = 1 << 24


class Workspace:
    """A private temporary directory (``onnxquant-*`` under the system's
    temporary directory) holding payload files.

    Removed by :meth:`close`, when the object is garbage-collected, or when the
    interpreter exits (also on SIGTERM and SIGINT in the command line, which
    turns them into an orderly exit)."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="onnxquant-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)
        self._count = 0

    def new_file(self, stem: str) -> str:
        """The absolute path of a new, empty file in the workspace."""
        self._count += 1
        path = os.path.join(self.path, f"{stem}-{self._count}.bin")
        with open(path, "wb"):
            pass
        return path

    def close(self) -> None:
        """Removes the directory and everything in it."""
        self._finalizer()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _entries(tensor: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def external_location(tensor: TensorProto) -> str | None:
    """The location of an external tensor's payload, or None when the tensor
    holds its payload itself."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    return _entries(tensor).get("location", "")


def payload_bytes(tensor: TensorProto) -> int:
    """The size of a tensor's payload in bytes (an estimate for typed fields)."""
    if tensor.data_location == TensorProto.EXTERNAL:
        length = _entries(tensor).get("length")
        if length is not None and length.isdigit():
            return int(length)
        size = int(np.prod(tensor.dims, dtype=np.int64))
        return size * _itemsize(tensor.data_type)
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return tensor.ByteSize()


def _itemsize(data_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 1


def _is_repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == field.LABEL_REPEATED


#: The fields of a TensorProto that hold or locate its payload.
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                "uint64_data", "string_data", "external_data", "data_location")


def _copy_fields(source, target, skip: str | tuple[str, ...]) -> None:
    """Copies every set field of ``source`` but those in ``skip`` into
    ``target``."""
    skip = (skip,) if isinstance(skip, str) else skip
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if _is_repeated(field):
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key = key
        entry.value = value


def _resolve(tensor: TensorProto, base_dir: str | None, what: str) -> str:
    """The absolute path of an external tensor's data file, checked."""
    location = external_location(tensor) or ""
    if os.path.isabs(location):
        # Only onnxquant's own skeletons hold absolute locations, into a
        # workspace; a model's own data files are named relative to it.
        path = location
        if not _in_a_workspace(path):
            raise ModelError(
                f"{what}: initializer '{tensor.name}' names external data by the absolute "
                f"path '{location}'; ONNX external data is named relative to the model "
                "file. Keep the data files next to the model.")
    elif base_dir is None:
        raise ModelError(
            f"{what}: initializer '{tensor.name}' is stored as external data "
            f"('{location}') that was not loaded. Pass the model's path, or "
            "onnx.load(path), so that its data files are read.")
    else:
        root = os.path.realpath(base_dir)
        path = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, path]) != root:
            raise ModelError(
                f"{what}: initializer '{tensor.name}' names external data "
                f"'{location}' outside the model's directory; keep the data files "
                "next to the model.")
    if not os.path.isfile(path):
        raise ModelError(
            f"{what}: the external data file '{path}' of initializer '{tensor.name}' "
            "does not exist; keep the data files next to the model, under the names "
            "the model gives.")
    return path


def _in_a_workspace(path: str) -> bool:
    folder = os.path.dirname(os.path.realpath(path))
    return (os.path.dirname(folder) == os.path.realpath(tempfile.gettempdir())
            and os.path.basename(folder).startswith("onnxquant-"))


def _payload(tensor: TensorProto) -> bytes:
    """The payload of an inline tensor as little-endian bytes."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = onnx.numpy_helper.to_array(tensor)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _open(stack: contextlib.ExitStack, path: str, name: str):
    """``path`` opened for reading, closed with ``stack``; ModelError naming
    the initializer ``name`` when it cannot be."""
    try:
        return stack.enter_context(open(path, "rb"))
    except OSError as e:
        raise ModelError(
            f"Cannot read the external data of initializer '{name}' from '{path}': "
            f"{e.strerror}.") from e


def _read(path: str, offset: int, length: int, name: str, file=None) -> bytes:
    """The ``length`` bytes at ``offset`` of ``path`` (or of ``file``, the
    same file already open)."""
    try:
        if file is not None:
            file.seek(offset)
            data = file.read(length)
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(length)
    except OSError as e:
        raise ModelError(
            f"Cannot read the external data of initializer '{name}' from '{path}': "
            f"{e.strerror}.") from e
    if len(data) != length:
        raise ModelError(
            f"The external data file '{path}' holds {len(data)} bytes at offset {offset} "
            f"for initializer '{name}', which needs {length}: the file is truncated.")
    return data


def _extent(tensor: TensorProto) -> tuple[int, int]:
    entries = _entries(tensor)
    try:
        offset = int(entries.get("offset", "0") or 0)
        length = int(entries["length"]) if "length" in entries else payload_bytes(tensor)
    except ValueError as e:
        raise ModelError(
            f"Initializer '{tensor.name}' has a malformed external-data offset or "
            "length.") from e
    return offset, length


def _file_chunks(path: str, offset: int, length: int, name: str):
    """Yields the ``length`` bytes at ``offset`` of ``path`` in chunks of at
    most _CHUNK; ModelError naming the initializer when the file ends first."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(left, _CHUNK))
            if not chunk:
                raise ModelError(
                    f"The external data file '{path}' ends before the data of "
                    f"initializer '{name}': the file is truncated.")
            yield chunk
            left -= len(chunk)


@dataclass(frozen=True)
class Skeleton:
    """A model whose large payloads lie in files (absolute external-data
    references). ``fingerprint``: SHA-256 of the model's content (graph and
    every payload, independent of where the payloads lie); ``payload``: bytes
    of initializer payloads, inline and external."""

    model: onnx.ModelProto
    fingerprint: str
    payload: int

    @property
    def large(self) -> bool:
        return self.payload >= LARGE_MODEL_BYTES

    def to_bytes(self) -> bytes:
        from onnxquant._model import model_to_bytes

        return model_to_bytes(self.model)


def split_model(model: onnx.ModelProto, workspace: Workspace, *,
                base_dir: str | None = None, what: str = "The model",
                threshold: int = PAYLOAD_THRESHOLD, fingerprint: bool = True) -> Skeleton:
    """The skeleton of ``model`` (never modified): inline initializers of at
    least ``threshold`` bytes are written to one file of ``workspace``;
    external ones keep their file, resolved against ``base_dir`` (the model
    file's directory) to an absolute path.

    Raises:
        ModelError: external data that was not loaded (no ``base_dir``), that
            lies outside ``base_dir``, or whose file is missing or short.
    """
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    digest = hashlib.sha256()
    payload = 0
    data_path = None
    out = None
    offset = 0
    try:
        for tensor in model.graph.initializer:
            target = skeleton.graph.initializer.add()
            if tensor.data_location == TensorProto.EXTERNAL:
                _copy_fields(tensor, target, skip=_DATA_FIELDS)
                path = _resolve(tensor, base_dir, what)
                start, length = _extent(tensor)
                _set_external(target, path, start, length)
                payload += length
                if fingerprint:
                    digest.update(f"{tensor.name}:{length}\n".encode())
                    for chunk in _file_chunks(path, start, length, tensor.name):
                        digest.update(chunk)
                continue
            size = payload_bytes(tensor)
            payload += size
            if size < threshold or tensor.data_type == TensorProto.STRING:
                target.CopyFrom(tensor)
                continue
            data = _payload(tensor)
            _copy_fields(tensor, target, skip=_DATA_FIELDS)
            if out is None:
                data_path = workspace.new_file("payload")
                out = open(data_path, "wb")  # noqa: SIM115 - closed below
            out.write(data)
            _set_external(target, data_path, offset, len(data))
            offset += len(data)
            if fingerprint:
                digest.update(f"{tensor.name}:{len(data)}\n".encode())
                digest.update(data)
            del data
    except OSError as e:
        raise ModelError(
            f"{what}: cannot write its weights to the temporary directory "
            f"'{workspace.path}': {e.strerror}.") from e
    finally:
        if out is not None:
            out.close()
    if fingerprint:
        digest.update(canonical_bytes(skeleton))
    return Skeleton(skeleton, digest.hexdigest(), payload)


def canonical_bytes(skeleton: onnx.ModelProto) -> bytes:
    """The skeleton's bytes with every external location, offset and length
    left out (they depend on where the payloads lie, not on the model)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(skeleton)
    for tensor in probe.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            del tensor.external_data[:]
    return probe.SerializeToString(deterministic=True)


def materialize(model: onnx.ModelProto, *, only: set[str] | None = None) -> onnx.ModelProto:
    """Reads every external payload of ``model`` (absolute locations) into
    ``raw_data``, in place, one tensor at a time; returns ``model``.
    ``only`` limits it to those initializer names."""
    with contextlib.ExitStack() as stack:
        files = {}  # location -> open file, each opened once
        for tensor in model.graph.initializer:
            location = external_location(tensor)
            if location is None or (only is not None and tensor.name not in only):
                continue
            if not os.path.isabs(location):
                raise ModelError(
                    f"Initializer '{tensor.name}' is stored as external data "
                    f"('{location}') that was not loaded; pass the model's path so that "
                    "its data files are read.")
            start, length = _extent(tensor)
            if location not in files:
                files[location] = _open(stack, location, tensor.name)
            tensor.raw_data = _read(location, start, length, tensor.name, files[location])
            del tensor.external_data[:]
            tensor.ClearField("data_location")
    return model


def _gather(model: onnx.ModelProto, workspace: Workspace) -> None:
    """Copies the payloads of ``model`` that lie outside ``workspace`` into
    one file of it (in chunks), in place."""
    target = None
    offset = 0
    with contextlib.ExitStack() as stack:
        for tensor in model.graph.initializer:
            location = external_location(tensor)
            if not location or os.path.dirname(location) == workspace.path:
                continue
            if target is None:
                path = workspace.new_file("gathered")
                target = stack.enter_context(open(path, "wb"))
            start, length = _extent(tensor)
            for chunk in _file_chunks(location, start, length, tensor.name):
                target.write(chunk)
            _set_external(tensor, path, offset, length)
            offset += length


def _relative_locations(model: onnx.ModelProto) -> None:
    """Cuts every external-data location of ``model`` down to its file name,
    in place, for readers that look for the payloads in one folder."""
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = os.path.basename(entry.value)


def checkable_file(skeleton: onnx.ModelProto, workspace: Workspace,
                   name: str = "checked.onnx") -> str:
    """The skeleton as a file that ONNX's checker takes: it refuses absolute
    external locations and links, and looks for data files beside the model,
    so the model is written into ``workspace`` with the payloads found
    elsewhere (float weights left as they were) copied there."""
    from onnxquant._model import model_to_bytes

    probe = onnx.ModelProto()
    probe.CopyFrom(skeleton)
    _gather(probe, workspace)
    _relative_locations(probe)
    path = os.path.join(workspace.path, name)
    with open(path, "wb") as f:
        f.write(model_to_bytes(probe))
    return path


def ort_session(skeleton: onnx.ModelProto, workspace: Workspace | None, options,
                providers):
    """An ONNX Runtime session of a skeleton. ONNX Runtime refuses absolute
    external-data locations, so the payloads must lie in one directory, which
    becomes its external-data folder; payloads in several directories (the
    model's own files beside files of the workspace) are first copied into
    the workspace."""
    import onnxruntime as ort

    folders = {os.path.dirname(loc) for t in skeleton.graph.initializer
               if (loc := external_location(t))}
    probe = onnx.ModelProto()
    probe.CopyFrom(skeleton)
    own = None
    if len(folders) > 1:
        if workspace is None:
            workspace = own = Workspace()
        _gather(probe, workspace)
        folders = {workspace.path}
    _relative_locations(probe)
    if folders:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", folders.pop())
    try:
        return ort.InferenceSession(probe.SerializeToString(), options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    finally:
        if own is not None:  # ONNX Runtime has read or mapped the payloads
            own.close()
