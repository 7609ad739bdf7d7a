"""Power-of-two activation scales chosen by squared error.

With ``QuantOptions(power_of_two=...)`` every activation scale is the
smallest power of two whose codes cover the tensor's range (``"ceil"``): a
range just above a power of two wastes half the codes. Per tensor,
:func:`power_of_two_activation_ranges` compares that scale with the next
lower power of two (which clips the top of the range) on the calibrator's
histogram and keeps whichever gives the smaller squared error, returning
ranges that ``quantize`` turns into that scale.

    ranges = calibrator.compute_range()
    ranges, lowered = oq.power_of_two_activation_ranges(calibrator, ranges)
    quantized = oq.quantize(model, ranges, options=options, calibrator=calibrator)

The error of a scale s over the histogram: each value inside the codes'
reach adds s² / 12 (rounding), each value beyond it its distance to the
edge, squared (clipping).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from onnxquant.errors import InvalidArgumentError

__all__ = ["power_of_two_activation_ranges"]

# Codes of each activation type: (lowest, highest, zero point of a range with
# negative values, which power-of-two mode makes symmetric about it).
_CODES = {"uint8": (0, 255, 128), "int8": (-128, 127, 0), "int16": (-32768, 32767, 0)}


def _ceil_power(x: float) -> float:
    return 2.0 ** math.ceil(math.log2(x))


def _squared_error(centers: np.ndarray, counts: np.ndarray, low: float, high: float,
                   scale: float) -> float:
    """Rounding noise inside [low, high], clipping error outside."""
    inside = (centers >= low) & (centers <= high)
    clip = np.where(centers > high, centers - high, np.where(centers < low, low - centers, 0.0))
    return float(np.sum(counts[inside]) * scale * scale / 12.0 + np.sum(counts * clip * clip))


def power_of_two_activation_ranges(
        calibrator, ranges: Mapping[str, tuple[float, float]], *,
        activation_type: str = "uint8") -> tuple[dict[str, tuple[float, float]], list[str]]:
    """``ranges`` with each tensor's top lowered where the next lower power of
    two scale quantizes its histogram with less squared error than the
    scale ``"ceil"`` gives (module docstring).

    Args:
        calibrator: the :class:`~onnxquant.Calibrator` the ranges came from
            (its histograms are read).
        ranges: ``{tensor: (min, max)}`` as ``compute_range`` returns them.
        activation_type: ``"uint8"`` (default), ``"int8"`` or ``"int16"``: the
            activations' type in ``quantize``'s options.

    Returns:
        (the ranges, the tensors whose range was lowered). A tensor the
        calibrator has no histogram for, or an empty one, is kept as it is,
        and so is a Softmax output whose range :func:`~onnxquant.quantize`
        fixes (scale 1/256, already a power of two; not one whose node's
        ``overrides`` entry says ``{"output_range": "calibrated"}``).

    Raises:
        InvalidArgumentError: an unknown activation_type.
    """
    if activation_type not in _CODES:
        raise InvalidArgumentError(
            f"activation_type must be one of {', '.join(_CODES)}, got {activation_type!r}.")
    qmin, qmax, signed_zero = _CODES[activation_type]
    # quantize gives Softmax outputs a fixed range of its own (power of two
    # already): lowering theirs here would change nothing.
    known = set(calibrator.tensors) - getattr(calibrator, "_fixed_softmax", frozenset())
    out: dict[str, tuple[float, float]] = {}
    lowered: list[str] = []
    for name, (lo, hi) in ranges.items():
        out[name] = (lo, hi)
        if name not in known or not (hi > 0 or lo < 0):
            continue
        first, width, counts = calibrator.histogram(name)
        counts = np.asarray(counts, dtype=np.float64)
        if counts.size == 0 or counts.sum() == 0:
            continue
        centers = first + width * (np.arange(counts.size) + 0.5)
        if lo < 0:  # symmetric about the zero point
            steps = min(signed_zero - qmin, qmax - signed_zero)
            ceil = _ceil_power(max(-lo, hi) / steps)
            reach = lambda s: (-s * steps, s * steps)  # noqa: E731
        else:  # from the lowest code up
            steps = qmax - qmin
            ceil = _ceil_power(hi / steps)
            reach = lambda s: (0.0, s * steps)  # noqa: E731
        half = ceil / 2.0
        if _squared_error(centers, counts, *reach(half), half) < \
                _squared_error(centers, counts, *reach(ceil), ceil):
            a, b = reach(half)
            out[name] = (a if lo < 0 else lo, b)
            lowered.append(name)
    return out, lowered
