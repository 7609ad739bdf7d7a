"""The exceptions onnxquant raises.

Every failure a user can cause is one of these, with a message that names the
node, tensor or file and says what to do. The native engine's errors arrive as
the same classes.
"""

__all__ = [
    "CalibrationDataError",
    "InternalError",
    "InvalidArgumentError",
    "MissingExtraError",
    "ModelError",
    "OnnxQuantError",
    "QemuError",
    "RangeMissingError",
    "UnsupportedModelError",
]


class OnnxQuantError(Exception):
    """Base class of every onnxquant error."""


class ModelError(OnnxQuantError, ValueError):
    """The model is corrupt, truncated, unreadable or inconsistent, or was not
    prepared with :func:`onnxquant.optimize_model`."""


class UnsupportedModelError(OnnxQuantError):
    """The model uses an opset, op or construct onnxquant cannot handle."""


class CalibrationDataError(OnnxQuantError, ValueError):
    """Calibration samples that do not fit the model: none at all, wrong input
    names, shapes or dtypes, or NaN/Inf in the model's inputs."""


class RangeMissingError(OnnxQuantError, KeyError):
    """A planned tensor has no range, or an invalid one, at quantization."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(OnnxQuantError, ValueError):
    """An option or argument outside its domain."""


class QemuError(OnnxQuantError, RuntimeError):
    """ONNX Runtime could not be run on emulated AVX2 kernels: ``qemu-x86_64``
    is not installed, the host is not x86-64, or the emulated run failed."""


class MissingExtraError(OnnxQuantError, ImportError):
    """An optional dependency is missing (matplotlib, pandas; ONNX Runtime,
    which comes with the ``cpu`` or ``gpu`` extra); the message names the
    extra that installs it."""


class InternalError(OnnxQuantError, RuntimeError):
    """A broken invariant inside onnxquant: please report it as a bug."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (a foreign library's errors
    can run to many lines), or its type name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
