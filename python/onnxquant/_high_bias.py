"""High-bias absorption (Nagel et al. 2019, section 4.1): the arithmetic in
``cpp/onnxquant/high_bias_absorption``, the pre-activation moments measured
here with ONNX Runtime. Public through :mod:`onnxquant.recovery`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxquant import _core
from onnxquant._model import ModelLike, model_to_bytes
from onnxquant._recovery_runs import _feeds, _normalized, _session, _with_outputs
from onnxquant.errors import InvalidArgumentError


@dataclass(frozen=True)
class HighBiasRecord:
    """What :func:`absorb_high_bias` changed: per first Conv of a chain, the
    amount taken off each channel's bias (and added, through the next Conv's
    weights, to that Conv's bias); the chains given no amount above zero are
    left out. ``candidates`` counts the chains found, ``samples`` the samples
    measured."""

    amounts: dict[str, np.ndarray]
    candidates: int
    samples: int
    seconds: float
    normalized_here: bool


def _channel_moments(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]],
                     outputs: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per output tensor [N, C, ...]: each channel's mean and standard
    deviation over the samples and positions."""
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        for name, v in zip(outputs, session.run(outputs, feed)):
            v = np.ascontiguousarray(v, dtype=np.float32)
            v64 = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + v64.sum(axis=1)
            squares[name] = squares.get(name, 0.0) + np.square(v64).sum(axis=1)
            counts[name] = counts.get(name, 0) + v64.shape[1]
    out = {}
    for name in outputs:
        mean = sums[name] / counts[name]
        var = np.maximum(squares[name] / counts[name] - mean * mean, 0.0)
        out[name] = (mean, np.sqrt(var))
    return out


def absorb_high_bias(model: ModelLike, samples: Iterable[object], *, sigmas: float = 3.0,
                     batch_size: int = 32) -> tuple[onnx.ModelProto, HighBiasRecord]:
    """High-bias absorption (Nagel et al. 2019, section 4.1), usually after
    :func:`equalize_cross_layer`.

    For each Conv -> Relu/LeakyRelu/PRelu (or nothing) -> Conv chain, the
    first Conv's output (the pre-activation h) is measured on ``samples``:
    per channel c, a_c = max(0, mean_c - sigmas * std_c) (Nagel et al. take
    beta - 3 gamma of the batch norm; folding drops those, so they are
    measured). a_c is taken off the first Conv's bias and W2 a added to the
    second's: the function is unchanged wherever h_c >= a_c, and the
    activation's range shrinks by a_c, which its per-tensor scale gains.
    Equalization can leave large biases on channels it scaled up; this is
    what takes them back out of the activation.

    Where h_c < a_c (beyond ``sigmas`` standard deviations below the mean)
    the output changes, and a second Conv with zero padding sees its border
    taps shifted by a_c: both are the approximation of the paper.

    Args:
        model: ModelProto, bytes or path (never modified); normalised first
            unless it already is.
        samples: calibration samples, as :func:`correct_bias` takes them.
        sigmas: how many standard deviations below the mean (default 3).
        batch_size: samples stacked per run (default 32).

    Returns:
        (the model, normalised, :class:`HighBiasRecord`).

    Raises:
        CalibrationDataError: no samples, or samples that do not fit.
        InvalidArgumentError: sigmas < 0 or not finite, batch_size < 1.
        UnsupportedModelError: an already quantized model.
    """
    if isinstance(sigmas, bool) or not isinstance(sigmas, (int, float)) or \
            not np.isfinite(sigmas) or sigmas < 0:
        raise InvalidArgumentError(f"sigmas must be a finite number >= 0, got {sigmas!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "absorb_high_bias")
    feeds, count = _feeds(proto, samples, batch_size, "absorb_high_bias")
    data = model_to_bytes(proto)
    candidates = _core.high_bias_candidates(data)
    outputs = [c["output"] for c in candidates]
    moments = (_channel_moments(_session(_with_outputs(proto, outputs)), feeds, outputs)
               if outputs else {})
    amounts = {}
    for c in candidates:
        mean, std = moments[c["output"]]
        a = np.maximum(mean - float(sigmas) * std, 0.0).astype(np.float32)
        if np.any(a > 0):
            amounts[c["first"]] = a
    result = proto
    if amounts:
        out, _, _ = _core.absorb_high_bias(data, {k: v.tolist() for k, v in amounts.items()})
        result = onnx.ModelProto()
        result.ParseFromString(out)
    record = HighBiasRecord(amounts, len(candidates), count, time.perf_counter() - start,
                            normalized_here)
    return result, record
