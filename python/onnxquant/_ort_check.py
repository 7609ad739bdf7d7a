"""Which ONNX Runtime the environment has, checked when onnxquant is imported.

ONNX Runtime ships as several distributions that install the same
``onnxruntime`` package: ``onnxruntime`` (CPU), ``onnxruntime-gpu``,
``onnxruntime-openvino``, ``onnxruntime-directml``, ... Two of them in one
environment overwrite each other's files, and which one answers
``import onnxruntime`` then depends on the order they were installed in. So
onnxquant's base requirements name none of them: the extras ``onnxquant[cpu]``
and ``onnxquant[gpu]`` do, and any other build can be installed beside a bare
``onnxquant``. This module raises :class:`OnnxRuntimeMissingError` when no
ONNX Runtime is importable and warns with :class:`OnnxRuntimeConflictWarning`
when more than one distribution provides it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings

from onnxquant.errors import MissingExtraError

__all__ = ["OnnxRuntimeConflictWarning", "OnnxRuntimeMissingError", "check_onnxruntime",
           "onnxruntime_distributions"]

#: Distribution names under which ONNX Runtime builds are published start
#: with one of these; a candidate counts when it installs the top-level
#: package ``onnxruntime`` (``onnxruntime-extensions`` and
#: ``onnxruntime-genai`` share the prefix but not the package).
_PREFIXES = ("onnxruntime", "ort-nightly", "ort_nightly")


class OnnxRuntimeMissingError(MissingExtraError):
    """No ONNX Runtime is importable: install ``onnxquant[cpu]``,
    ``onnxquant[gpu]`` or another ONNX Runtime build."""


class OnnxRuntimeConflictWarning(UserWarning):
    """More than one distribution installs the ``onnxruntime`` package."""


def _provides_onnxruntime(dist: importlib.metadata.Distribution) -> bool:
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        return "onnxruntime" in top_level.split()
    return any(str(f).replace("\\", "/") == "onnxruntime/__init__.py"
               for f in dist.files or ())


def onnxruntime_distributions() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` package,
    by name, sorted (each once, whatever the number of paths it is seen on)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith(_PREFIXES) and _provides_onnxruntime(dist):
            found.add(name)
    return sorted(found)


def check_onnxruntime() -> None:
    """Raises :class:`OnnxRuntimeMissingError` when ``onnxruntime`` cannot be
    imported; warns when several distributions provide it."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise OnnxRuntimeMissingError(
            "onnxquant needs ONNX Runtime, which is not installed: pip install "
            "'onnxquant[cpu]' (the onnxruntime package) or 'onnxquant[gpu]' "
            "(onnxruntime-gpu), or install the ONNX Runtime build of your platform "
            "(onnxruntime-openvino, onnxruntime-directml, ...) beside onnxquant.")
    dists = onnxruntime_distributions()
    if len(dists) > 1:
        warnings.warn(
            f"Several ONNX Runtime distributions are installed ({', '.join(dists)}): they "
            "install the same onnxruntime package over each other, so which one runs is "
            "undefined. Keep one: pip uninstall " + " ".join(dists) + ", then install one "
            "of them again (onnxquant[cpu] is onnxruntime, onnxquant[gpu] onnxruntime-gpu).",
            OnnxRuntimeConflictWarning, stacklevel=3)
