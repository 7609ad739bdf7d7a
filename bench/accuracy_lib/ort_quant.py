"""ONNX Runtime's side: ``quant_pre_process`` and ``quantize_static``, and its ranges read back."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .common import _samples, first_line


class _Reader:
    """ONNX Runtime CalibrationDataReader over the same ``[1, ...]`` samples."""

    def __init__(self, input_name: str, calibration: np.ndarray) -> None:
        self._items = ({input_name: s} for s in _samples(calibration))

    def get_next(self):
        return next(self._items, None)


def flatten_gemm_bias(model: onnx.ModelProto) -> int:
    """Reshapes Gemm biases of shape [1, N] to [N] (same arithmetic). onnxruntime's
    quantize_static (1.31) fails on a 2-D Gemm bias while adjusting weight scales for the
    int32 bias (microsoft/onnxruntime#24815). Returns the number of biases changed."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        tensor = inits[node.input[2]]
        if len(tensor.dims) == 2 and tensor.dims[0] == 1 and uses[tensor.name] == 1:
            array = numpy_helper.to_array(tensor).reshape(-1)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            changed += 1
    return changed


@dataclass(frozen=True)
class OrtConfig:
    """An ONNX Runtime configuration: a calibration method and ``reduce_range`` (7-bit
    weights, ONNX Runtime's advice for x86 CPUs without VNNI)."""

    method: str
    reduce_range: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} (reduce_range=True)" if self.reduce_range else self.method


def ort_configs(methods: tuple[str, ...] | list[str]) -> list[OrtConfig]:
    """The grid: each method with reduce_range False, then True."""
    return [OrtConfig(m, r) for m in methods for r in (False, True)]


def ort_quantize(source: str, output: str, input_name: str, calibration: np.ndarray,
                 method: str, nodes_to_exclude: list[str] | None = None, *,
                 reduce_range: bool = False, calibration_cache: str | None = None) -> None:
    """``quantize_static`` (QDQ, per-channel, QUInt8 activations, QInt8 weights) of
    ``source`` into ``output``. ``calibration_cache``: ONNX Runtime's
    ``calibration_cache_path`` (a JSON file: written by the first call with it, then read
    instead of calibrating again, e.g. for the same method with the other
    ``reduce_range``)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # quantize_static prints progress on stdout; keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(source, output, _Reader(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        nodes_to_exclude=nodes_to_exclude, reduce_range=reduce_range,
                        calibration_cache_path=calibration_cache)


GEMM_BIAS_NOTE = (
    "onnxruntime's quantize_static fails on this model (`ValueError: The truth "
    "value of an array with more than one element is ambiguous`, in "
    "`_adjust_weight_scale_for_int32_bias`: its Gemm bias has shape [1, N], "
    "microsoft/onnxruntime#24815). ONNX Runtime was given the same graph with "
    "that bias reshaped to [N] (identical arithmetic; its other defaults kept).")


def gemm_bias_workaround(source: str, error: ValueError, workdir: str) -> str | None:
    """Where ``quantize_static(source)`` raised ``error`` for a [1, N] Gemm bias
    (microsoft/onnxruntime#24815), the path of a copy of ``source`` with those biases
    reshaped to [N] (written once into ``workdir``); else None."""
    if "truth value of an array" not in str(error):
        return None
    fixed = onnx.load(source)
    if not flatten_gemm_bias(fixed):
        return None
    path = os.path.join(workdir, "ort_gemm_bias_1d.onnx")
    onnx.save(fixed, path)
    return path


def ort_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """The activation ranges an ONNX Runtime QDQ model encodes: for each QuantizeLinear of
    a non-constant tensor, [(0 - zp) * s, (qmax - zp) * s]."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = float(inits[node.input[1]].reshape(-1)[0])
        zp_array = inits[node.input[2]]
        zp = int(zp_array.reshape(-1)[0])
        qmin, qmax = (0, 255) if zp_array.dtype == np.uint8 else (-128, 127)
        name = node.input[0]
        # A graph output keeps its name on the DequantizeLinear; the Q reads "<name>" + suffix.
        name = name.removesuffix("_QuantizeLinear_Input")
        out[name] = ((qmin - zp) * scale, (qmax - zp) * scale)
    return out


def ort_preprocess(normalised: str, workdir: str, enabled: bool, notes: list[str]) -> str:
    """The file ONNX Runtime quantizes: ``quant_pre_process(normalised)`` with its defaults
    (``enabled``), else ``normalised``. Where pre-processing fails, ``normalised`` is used and
    a note says why."""
    if not enabled:
        return normalised
    from onnxruntime.quantization.shape_inference import quant_pre_process

    output = os.path.join(workdir, "ort_preprocessed.onnx")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(normalised, output)
    except Exception as e:  # noqa: BLE001 - reported, and ONNX Runtime still runs
        notes.append(f"onnxruntime's quant_pre_process failed (`{first_line(e)}`); "
                     "quantize_static was given the normalised graph without it.")
        return normalised
    return output
