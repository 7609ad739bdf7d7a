"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models", 2023) for MatMul
models: the arithmetic in ``cpp/onnxquant/smooth_quant*``, the statistics
measured here with ONNX Runtime. Public through :mod:`onnxquant.recovery`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxquant import _core
from onnxquant._model import ModelLike, model_to_bytes
from onnxquant._recovery_runs import _feeds, _normalized, _session, _with_outputs
from onnxquant.errors import CalibrationDataError, InvalidArgumentError
from onnxquant.quantize import QuantOptions, options_or_default


@dataclass(frozen=True)
class SmoothQuantGroup:
    """One group of MatMul/Gemm nodes that read the same activation and
    share one smoothing factor per input channel.

    ``absorb`` says where X / s went: ``"LayerNormalization"`` (its scale and
    bias), ``"constants"`` (a constant Mul, and the constant Adds between it
    and X: the decomposed LayerNorm's gamma and beta, the 0.5 of a GELU) or
    ``"inserted Mul"``. ``alpha`` is the one chosen (searched or given);
    ``error_before`` and ``error_after`` the relative squared output error
    (sum |Yq - Y|^2 / sum |Y|^2 on the sampled rows) of the group's MatMuls
    quantized (symmetric weights as the options quantize them, uint8
    per-tensor MIN_MAX activations) without and with the factors; ``applied`` is False where
    the search found no alpha that lowers the error and left the group as it
    was. ``scale_min`` and ``scale_max``: the range of the factors."""

    activation: str
    nodes: tuple[str, ...]
    producer: str
    absorb: str
    alpha: float
    applied: bool
    scale_min: float
    scale_max: float
    error_before: float
    error_after: float
    scales: np.ndarray


@dataclass(frozen=True)
class SmoothQuantRecord:
    """What :func:`smooth_quant` changed: the groups (applied or not), the
    activations it could not smooth with the reason, the samples and rows
    the statistics and the search used."""

    groups: tuple[SmoothQuantGroup, ...]
    skipped: tuple[tuple[str, str], ...]
    samples: int
    rows: int
    seconds: float
    normalized_here: bool


def _activation_stats(model: onnx.ModelProto, activations: dict[str, int],
                      feeds: list[dict[str, np.ndarray]], rows: int,
                      seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per activation (name -> channels), over every sample: the minimum and
    maximum per channel (last axis; reduced in the engine, no copy), and up
    to ``rows`` rows drawn evenly from every run."""
    names = list(activations)
    session = _session(_with_outputs(model, names))
    rng = np.random.default_rng(seed)
    per_run = -(-rows // len(feeds))
    ranges = {n: (np.zeros(0, np.float32), np.zeros(0, np.float32)) for n in names}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            k = activations[name]
            if value.ndim < 1 or value.shape[-1] != k:
                raise CalibrationDataError(
                    f"SmoothQuant: tensor '{name}' has shape {value.shape}, not {k} "
                    "channels on its last axis; check the samples' shapes.")
            flat = np.ascontiguousarray(value, dtype=np.float32).reshape(-1, k)
            ranges[name] = _core.accumulate_channel_range(flat, *ranges[name])
            take = min(per_run, len(flat))
            kept[name].append(flat[np.sort(rng.choice(len(flat), take, replace=False))])
    return {n: (np.ascontiguousarray(np.concatenate(kept[n])[:rows]), *ranges[n])
            for n in names}


def smooth_quant(model: ModelLike, samples: Iterable[object], *,
                 alpha: float | None = None, alpha_steps: int = 20,
                 insert_mul: bool = False, search_rows: int = 512,
                 batch_size: int = 32,
                 options: QuantOptions | None = None,
                 alpha_scope: str = "group"
                 ) -> tuple[onnx.ModelProto, SmoothQuantRecord]:
    """SmoothQuant: moves the per-channel outliers of MatMul inputs into the
    weights.

    For each group of MatMul/Gemm nodes with constant 2-D weights that read
    the same activation X (Q, K and V share one), per input channel j::

        s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

    with max|X_j| over ``samples`` and max|W_j| over the group's weights;
    X / s is folded into X's producer (a LayerNormalization's scale and
    bias; a constant Mul, with the constant Adds between it and X) and
    input channel j of each weight is multiplied by s_j. The FP32 function
    is unchanged; per-tensor activation quantization then loses less to a
    few large channels. Where X cannot absorb the factor (X is also read by
    another node, e.g. a residual Add, or comes from a Reshape),
    ``insert_mul=True`` inserts a Mul by 1 / s before the group; otherwise
    the group is skipped and listed in ``record.skipped`` with the reason.
    An inserted Mul is quantized like any Mul, so X is still quantized once
    on its way in: it pays off where X's other readers stay float (e.g.
    ``QuantOptions(op_types=("MatMul", "Gemm"))``).

    ``alpha=None`` searches it per group over ``alpha_steps + 1`` values in
    [0, 1] by the output error of the group's MatMuls quantized in the
    engine (symmetric weights as ``options`` quantize them: int8 or, with
    ``weight_type="int4"``, codes [-7, 7]; per output channel, or per tensor
    with ``per_channel=False``; uint8 per-tensor activations over the
    calibration min and max, as MIN_MAX_ASYM chooses them) on up to
    ``search_rows`` rows of X drawn from the samples; a group for which no
    alpha lowers that error is left unchanged (``applied=False``). With
    ``alpha_scope="model"`` one alpha serves every group: the grid value
    with the lowest sum of the groups' errors (all groups applied, or none
    when no alpha lowers the sum). A float alpha is applied to every group.

    Args:
        model: ModelProto, bytes or path (never modified); normalised first
            unless it already is.
        samples: calibration samples, as :meth:`~onnxquant.Calibrator.collect_data`
            takes them.
        alpha: None (search, the default) or a value in [0, 1] (0.5 in the
            paper).
        alpha_steps: grid steps of the search (default 20: alpha = 0, 0.05,
            ..., 1).
        insert_mul: insert a Mul where X cannot absorb the factor (default
            False: skip such groups).
        search_rows: rows of X the search measures the error on (default
            512; the ranges use every row).
        batch_size: samples stacked per run where the batch dim is dynamic
            (default 32).
        options: the :class:`~onnxquant.QuantOptions` the model will be
            quantized with (default ``QuantOptions()``): ``weight_type`` and
            ``per_channel`` decide how the search emulates the weights
            (power-of-two scales, blockwise int4, the weight range search and
            the remedies of ``target="portable"`` are not emulated).
        alpha_scope: ``"group"`` (default: alpha searched per group) or
            ``"model"`` (one alpha for all).

    Returns:
        (the smoothed FP32 model, normalised, :class:`SmoothQuantRecord`).

    Raises:
        CalibrationDataError: no samples, or samples that do not fit the model.
        InvalidArgumentError: alpha outside [0, 1], alpha_steps, search_rows
            or batch_size < 1, options that are not a QuantOptions, an
            alpha_scope other than "group" or "model".
        ModelError: MatMuls that read one activation with different channel
            counts (names them).
        UnsupportedModelError: an already quantized model.
    """
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0.0 <= float(alpha) <= 1.0):
        raise InvalidArgumentError(f"alpha must be None (search) or a number in [0, 1], "
                                   f"got {alpha!r}.")
    for name, value in (("alpha_steps", alpha_steps), ("search_rows", search_rows),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}.")
    if alpha_scope not in ("group", "model"):
        raise InvalidArgumentError(
            f"alpha_scope must be 'group' or 'model', got {alpha_scope!r}.")
    options = options_or_default(options)
    start = time.perf_counter()
    proto, normalized_here = _normalized(model, "smooth_quant")
    feeds, count = _feeds(proto, samples, batch_size, "smooth_quant")
    data = model_to_bytes(proto)
    groups, _ = _core.smooth_quant_groups(data, bool(insert_mul))
    activations = {g["activation"]: int(g["channels"]) for g in groups}
    stats = (_activation_stats(proto, activations, feeds, search_rows, 0)
             if activations else {})
    grid = ([float(alpha)] if alpha is not None else
            [i / alpha_steps for i in range(alpha_steps + 1)])
    out, records, skipped = _core.smooth_quant(
        data, bool(insert_mul), stats, grid, alpha is None,
        7 if options.weight_type == "int4" else 127, bool(options.per_channel),
        alpha_scope == "model")
    result = onnx.ModelProto()
    result.ParseFromString(out)
    rows = max((len(v[0]) for v in stats.values()), default=0)
    entries = tuple(
        SmoothQuantGroup(r["activation"], tuple(r["nodes"]), r["producer"], r["absorb"],
                         float(r["alpha"]), bool(r["applied"]),
                         float(np.min(r["scales"])) if len(r["scales"]) else 1.0,
                         float(np.max(r["scales"])) if len(r["scales"]) else 1.0,
                         float(r["error_before"]), float(r["error_after"]),
                         np.asarray(r["scales"], dtype=np.float32))
        for r in records)
    record = SmoothQuantRecord(entries, tuple(tuple(s) for s in skipped), count, rows,
                               time.perf_counter() - start, normalized_here)
    return result, record
