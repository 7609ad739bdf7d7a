"""Quantizing a normalised model with calibrated ranges: :func:`quantize`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import onnx
import onnx.checker

from onnxquant import _core
from onnxquant._input_checks import check_with_onnx_checker, refuse_quantized
from onnxquant._model import (
    NORMALIZED_KEY,
    QUANTIZED_KEY,
    ModelLike,
    get_metadata,
    load_skeleton,
    model_to_bytes,
    set_metadata,
)
from onnxquant._payloads import PAYLOAD_THRESHOLD, Workspace, checkable_file, materialize
from onnxquant._shapes import infer_dtypes
from onnxquant._softmax_range import (
    calibrated_softmax_note,
    softmax_range_entries,
    with_softmax_output_ranges,
)
from onnxquant.errors import (
    InternalError,
    InvalidArgumentError,
    ModelError,
    RangeMissingError,
)
from onnxquant.kernel_check import (
    KERNEL_CHECK_HEADROOM,
    KernelCheckResult,
    check_kernels,
    choose_remedies,
)
from onnxquant.overrides import ResolvedOverrides, check_overrides, resolve_overrides
from onnxquant.report import CalibrationReport, QuantizationReport, kernel_summary

if TYPE_CHECKING:
    from onnxquant.calibrator import Calibrator

__all__ = ["QuantOptions", "quantize"]

_ACTIVATION_TYPES = {"uint8": "UINT8", "int8": "INT8", "int16": "INT16"}
_WEIGHT_TYPES = {"int8": "INT8", "int4": "INT4"}
# DequantizeLinear of INT4 (and its block_size attribute) came with opset 21.
INT4_OPSET = 21
_POWER_OF_TWO = {"off": "OFF", "ceil": "CEIL", "mse": "MSE"}
_WEIGHT_RANGES = {"minmax": "MIN_MAX", "mse": "MSE"}
_TARGETS = ("portable", "exact")
_REMEDIES = ("auto", "channel_range", "uint8_weights", "float")
_MODES = ("static", "dynamic")
# The op types mode="dynamic" quantizes.
_DYNAMIC_OPS = ("MatMul", "Gemm")
# Options that mean nothing in mode="dynamic", each with why: leaving them
# at their default is the only value it takes.
_STATIC_ONLY = {
    "activation_type": "activations are quantized at run time to uint8 "
                       "(DynamicQuantizeLinear writes no other type)",
    "weight_type": "dynamic weights are int8 (MatMulInteger takes no int4)",
    "block_size": "dynamic weights are int8 per column (MatMulInteger takes no int4 blocks)",
    "power_of_two": "run-time activation scales are not powers of two",
    "weight_range": "dynamic weights take max|w| per column",
    "kernel_remedy": "there is no per-node kernel check: target='portable' gives every "
                     "weight [-63, 63], which no kernel saturates",
    "quantize_silu": "only MatMul and Gemm are quantized",
    "float_outputs": "every dynamic MatMul/Gemm writes float (there is no output scale)",
    "masks": "there are no calibrated ranges for a mask to saturate; mask nodes "
             "(no MatMul/Gemm) stay float",
    "overrides": "there is no per-tensor precision or method; keep nodes float with "
                 "exclude_nodes",
}


@dataclass(frozen=True)
class QuantOptions:
    """How a model is quantized; shared by :class:`~onnxquant.Calibrator` (it
    decides which tensors are calibrated) and :func:`~onnxquant.quantize`.

    Attributes:
        activation_type: ``"uint8"`` (default), ``"int8"`` or ``"int16"``.
            uint8 lets ONNX Runtime's CPU provider fuse QDQ into integer
            kernels; int8 suits TFLite-style targets and NPUs, with a Q/DQ
            pair per consumer; int16 (with int8 weights: W8A16) keeps 16-bit
            activations, written as ONNX Runtime's own quantizer writes them
            (Q/DQ of the ``com.microsoft`` domain below opset 21), which ONNX
            Runtime runs as DQ -> float op -> Q (no integer kernels: accurate,
            not faster than float).
        per_channel: per-channel weight scales (default True); False gives one
            scale per weight.
        power_of_two: power-of-two scales for weights and activations, as NPUs
            and DSPs need (TI TIDL, AMD XINT8; with ``per_channel=False`` the
            per-tensor power-of-two symmetric mode): ``"off"`` (default);
            ``"ceil"``: each scale is the smallest power of two whose codes
            cover the range (weights symmetric; an activation range with
            negative values symmetric about the middle of the type, a
            non-negative one from the type's lowest code); ``"mse"``: weights
            take that or the next lower power of two, whichever gives the
            smaller squared error over their values (activations as ``"ceil"``:
            choose their clipping with the calibration method, e.g.
            MSE_SYM).
        weight_range: how each weight channel's clipping range is chosen
            (per tensor when ``per_channel=False``): ``"minmax"`` (default)
            takes max|w|; ``"mse"`` searches the clipping that minimises the
            squared quantization error of the channel's weights (10 % to
            100 % of max|w| in 1 % steps, or, with ``power_of_two``, the
            twelve powers of two from the one covering max|w| down), the
            weight range search of the recovery techniques
            (:mod:`onnxquant.recovery`). It applies to int8 and int4 weights
            (codes [-7, 7]), not to blockwise int4 (``block_size``).
        exclude_nodes: names of nodes kept in float (default none).
        op_types: the op types to quantize (default None: every op of the plan's
            table).
        quantize_activation_matmul: quantize MatMul of two activations, as in
            attention (default True); False keeps them float.
        reduce_weight_range: weights in [-63, 63] instead of [-127, 127] in
            every layer (default False). Such weights cannot saturate any
            kernel, at the cost of one bit everywhere; ``target="portable"``
            spends that bit only where the kernels need it.
        target: the integer kernels the model must be right on (default
            ``"portable"``). ``"portable"``: every CPU ONNX Runtime runs on,
            including x86 CPUs without VNNI (AVX2, AVX-512 before VNNI), whose
            uint8 x int8 kernels add pairs of products in 16 bits with
            saturation; nodes that would saturate there get ``kernel_remedy``
            (see :mod:`onnxquant.kernel_check`). ``"exact"``: only kernels
            that accumulate exactly (x86 AVX-VNNI / AVX512-VNNI / AMX, ARM64,
            NPUs): full-range int8 weights everywhere; on AVX2 such a model
            may lose accuracy.
        kernel_remedy: what ``target="portable"`` does to a node that would
            saturate (default ``"auto"``): ``"channel_range"`` lowers the
            largest weight code of just the output channels concerned, to the
            largest value whose pair sums fit (no kernel is slower, those
            channels lose some precision); ``"uint8_weights"`` stores the
            node's weights as uint8 with zero point 128 (the same values, run
            by ONNX Runtime's exact uint8 x uint8 kernels, which are up to 2x
            slower on VNNI CPUs); ``"float"`` keeps the node in float;
            ``"auto"`` gives ``"uint8_weights"`` to the nodes where a smaller
            range would at least double the weights' rounding noise and cost
            most precision for their share of the model's multiply-adds,
            within 3 % of them
            (:func:`onnxquant.kernel_check.choose_remedies`; typically the
            first Conv over image pixels), and ``"channel_range"`` to the
            others.
        quantize_silu: also put a Q/DQ pair between the Sigmoid and the Mul
            of x * sigmoid(x) (SiLU/Swish), so that ONNX Runtime runs both as
            integer ops (default False: only the Mul's output is quantized,
            and the SiLU runs in float between a DequantizeLinear and a
            QuantizeLinear). Measured on models/cifar's EfficientNet: 15 %
            faster on this project's CPU, top-1 within noise
            (docs/benchmarks.md).
        float_outputs: a Gemm or MatMul (constant weight) whose output is a
            graph output and read by nothing else keeps that output float
            (default True): ONNX Runtime runs it as QGemm or
            MatMulIntegerToFloat, integer kernels that write float, so the
            model's outputs are not rounded to 8 bits (no ties between
            logits). False quantizes it too, as a target with integer
            outputs needs (:class:`~onnxquant.ModelEditor`'s
            ``convert_output_type`` converts only a quantized output).
        masks: what becomes of attention masks' nodes: those that read or
            write a tensor in which calibration saw float32's extremes or
            +-Inf (|x| >= 1e30: ``finfo(float32).min`` at padded positions;
            known from the ``calibrator`` or ``calibration_report`` given to
            :func:`quantize`), and those :func:`mask_nodes` finds in the
            graph (masks of any constant, -10000 or -1e9 too). Extremes are
            left out of every range either way. ``"float"`` (default): such
            nodes stay float (the mask's Cast/Sub/Mul and the Add of scores
            and mask; they have no multiply-adds), so the mask keeps its full
            effect, and the report's notes name them; ``"saturate"``: they
            are quantized too, and the extremes saturate to the end of the
            range, which then masks no more than the smallest score does.
        weight_type: ``"int8"`` (default) or ``"int4"``: int4 weights in
            [-7, 7] (symmetric, zero point 0; -8 is left unused so that the
            codes are symmetric as the int8 ones are, and a scale is
            max|w| / 7), per channel (or per tensor with
            ``per_channel=False``), or blockwise for MatMul with
            ``block_size``. INT4 needs opset 21: :func:`quantize` converts
            a model below it up (ONNX's version converter, checked with ONNX
            Runtime) only in this mode. ONNX Runtime's CPU provider runs int4
            weights as DequantizeLinear -> float op (no integer kernels; with
            the activations' Q/DQ around it, not even the blockwise MatMul
            becomes MatMulNBits, checked with onnxruntime 1.23). The portable
            kernel check does not apply to int4 nodes.
        block_size: with ``weight_type="int4"``, the weight of a MatMul with
            a constant [K, N] second operand gets one scale per block of
            ``block_size`` rows of each column (blocks along the reduction
            axis K); 0 (default): per channel. Conv and Gemm stay per
            channel. Block scales are not rounded to powers of two
            (``power_of_two`` applies to per-channel and per-tensor weights).
        overrides: ``{node or tensor name: {"activation_type": ...,
            "method": ..., "weight_type": ...}}`` (default none): precision
            and calibration method per node or tensor (see
            :mod:`onnxquant.overrides`). ``activation_type`` is ``"uint8"``,
            ``"int8"``, ``"int16"`` or ``"float"`` (no Q/DQ on that tensor;
            on a node, the node stays float); ``method`` a
            :class:`~onnxquant.CalibrationMethod` name, used by the
            Calibrator for those tensors; ``weight_type`` (nodes only)
            ``"int8"`` or ``"int4"``; ``output_range`` (Softmax nodes only)
            ``"fixed"`` (the default: the TFLite spec's [0, 255/256]) or
            ``"calibrated"`` (the range :func:`quantize` is given, for
            runtimes other than ONNX Runtime's CPU provider, whose
            QLinearSoftmax may then return zeros). Names are those of the
            normalised model; an unknown one raises InvalidArgumentError
            naming it.
        mode: ``"static"`` (default): activations get fixed scales from
            calibrated ranges (QuantizeLinear/DequantizeLinear pairs);
            ``"dynamic"``: only MatMul and Gemm are quantized, weights to int8
            per column once, activations at run time with the scale and zero
            point of the values at hand (``DynamicQuantizeLinear`` +
            ``MatMulInteger``, which ONNX Runtime fuses into
            ``DynamicQuantizeMatMul``; :mod:`onnxquant.dynamic`). Dynamic
            mode needs no calibration: :func:`quantize` takes ``ranges=None``
            and no calibrator, :class:`~onnxquant.Calibrator` refuses such
            options (there is nothing to observe), and
            :func:`~onnxquant.quantize_model` and
            :func:`~onnxquant.apply_recipe` skip calibration. In it,
            ``per_channel``, ``exclude_nodes``, ``op_types`` (``"MatMul"``,
            ``"Gemm"``), ``quantize_activation_matmul``, ``target`` and
            ``reduce_weight_range`` apply (``"portable"`` or
            ``reduce_weight_range``: weights in [-63, 63]); every other
            option must keep its default (InvalidArgumentError naming it).
    """

    activation_type: str = "uint8"
    per_channel: bool = True
    exclude_nodes: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None
    quantize_activation_matmul: bool = True
    reduce_weight_range: bool = False
    target: str = "portable"
    kernel_remedy: str = "auto"
    quantize_silu: bool = False
    power_of_two: str = "off"
    weight_range: str = "minmax"
    float_outputs: bool = True
    masks: str = "float"
    weight_type: str = "int8"
    block_size: int = 0
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    mode: str = "static"

    def __post_init__(self) -> None:
        if self.activation_type not in _ACTIVATION_TYPES:
            raise InvalidArgumentError(
                f"activation_type must be 'uint8', 'int8' or 'int16', got "
                f"{self.activation_type!r}" +
                (" (int4 is a weight type: weight_type='int4')."
                 if self.activation_type == "int4" else "."))
        if self.weight_type not in _WEIGHT_TYPES:
            raise InvalidArgumentError(
                f"weight_type must be 'int8' or 'int4', got {self.weight_type!r}.")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or \
                self.block_size < 0 or self.block_size == 1:
            raise InvalidArgumentError(
                f"block_size must be 0 (per channel) or an int >= 2, got {self.block_size!r}.")
        if self.block_size and self.weight_type != "int4":
            raise InvalidArgumentError(
                "block_size applies to int4 weights: pass weight_type='int4' with it.")
        object.__setattr__(self, "overrides", check_overrides(self.overrides))
        if self.power_of_two not in _POWER_OF_TWO:
            raise InvalidArgumentError(
                f"power_of_two must be 'off', 'ceil' or 'mse', got {self.power_of_two!r}.")
        if self.weight_range not in _WEIGHT_RANGES:
            raise InvalidArgumentError(
                f"weight_range must be 'minmax' or 'mse', got {self.weight_range!r}.")
        if self.masks not in ("float", "saturate"):
            raise InvalidArgumentError(
                f"masks must be 'float' or 'saturate', got {self.masks!r}.")
        if self.target not in _TARGETS:
            raise InvalidArgumentError(
                f"target must be 'portable' (every CPU) or 'exact' (kernels that accumulate "
                f"exactly: VNNI, AMX, ARM64), got {self.target!r}.")
        if self.kernel_remedy not in _REMEDIES:
            raise InvalidArgumentError(
                f"kernel_remedy must be one of {', '.join(map(repr, _REMEDIES))}, got "
                f"{self.kernel_remedy!r}.")
        for name in ("per_channel", "quantize_activation_matmul", "reduce_weight_range",
                     "quantize_silu", "float_outputs"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(
                    f"{name} must be True or False, got {getattr(self, name)!r}.")
        object.__setattr__(self, "exclude_nodes", _names("exclude_nodes", self.exclude_nodes))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", _names("op_types", self.op_types))
        if self.mode not in _MODES:
            raise InvalidArgumentError(
                f"mode must be 'static' (calibrated ranges) or 'dynamic' (MatMul/Gemm with "
                f"activation scales computed at run time), got {self.mode!r}.")
        if self.mode == "dynamic":
            self._check_dynamic()

    def _check_dynamic(self) -> None:
        """Raises InvalidArgumentError naming the first option that means
        nothing in mode="dynamic"."""
        for name, why in _STATIC_ONLY.items():
            value, default = getattr(self, name), getattr(_DEFAULTS, name)
            if value != default:
                raise InvalidArgumentError(
                    f"{name}={_brief(value)} does not apply to mode='dynamic': {why}. Leave "
                    f"{name} at its default ({default!r}), or use mode='static'.")
        other = [t for t in self.op_types or () if t not in _DYNAMIC_OPS]
        if other:
            raise InvalidArgumentError(
                f"mode='dynamic' quantizes MatMul and Gemm; op_types holds {other[0]!r}. "
                "Quantize other ops with mode='static'.")

    @property
    def uses_int4(self) -> bool:
        """Whether any weight is int4 (by default or by an override)."""
        return self.weight_type == "int4" or any(
            e.get("weight_type") == "int4" for e in self.overrides.values())

    @property
    def dynamic(self) -> bool:
        """Whether ``mode == "dynamic"``."""
        return self.mode == "dynamic"

    def to_native(self, data: bytes | None = None, dtypes: Mapping[str, int] | None = None,
                  model: onnx.ModelProto | None = None) -> _core.QuantOptions:
        """The engine's form of these options, with the overrides resolved
        against the normalised model ``data`` (its bytes) and its ``dtypes``,
        which options with overrides require."""
        return self.resolve(data, dtypes, model)[0]

    def resolve(self, data: bytes | None, dtypes: Mapping[str, int] | None,
                model: onnx.ModelProto | None = None
                ) -> tuple[_core.QuantOptions, ResolvedOverrides]:
        """(The engine's options, the overrides resolved per tensor) for the
        normalised model ``data`` with ``dtypes``. Raises InvalidArgumentError
        naming an override's unknown node or tensor."""
        if self.dynamic:
            raise InternalError("mode='dynamic' has no plan: it never reaches the engine")
        native = self._base_native()
        if not self.overrides:
            return native, ResolvedOverrides()
        if data is None or dtypes is None:
            raise InternalError("options with overrides need the model to resolve them")
        resolved = resolve_overrides(self.overrides, data, dtypes, native, model)
        native.exclude_nodes = list(self.exclude_nodes) + list(resolved.exclude_nodes)
        native.tensor_types = {t: getattr(_core.ActivationType, _ACTIVATION_TYPES[v])
                               for t, v in resolved.tensor_types.items()}
        native.float_tensors = list(resolved.float_tensors)
        native.node_weight_types = {n: getattr(_core.WeightType, _WEIGHT_TYPES[v])
                                    for n, v in resolved.node_weight_types.items()}
        return native, resolved

    def _base_native(self) -> _core.QuantOptions:
        native = _core.QuantOptions()
        native.activation_type = getattr(_core.ActivationType,
                                         _ACTIVATION_TYPES[self.activation_type])
        native.per_channel = self.per_channel
        native.power_of_two = getattr(_core.PowerOfTwo, _POWER_OF_TWO[self.power_of_two])
        native.weight_range = getattr(_core.WeightRange, _WEIGHT_RANGES[self.weight_range])
        native.exclude_nodes = list(self.exclude_nodes)
        native.op_types = list(self.op_types or ())
        native.quantize_activation_matmul = self.quantize_activation_matmul
        native.reduce_weight_range = self.reduce_weight_range
        native.quantize_silu = self.quantize_silu
        native.float_outputs = self.float_outputs
        native.weight_type = getattr(_core.WeightType, _WEIGHT_TYPES[self.weight_type])
        native.block_size = self.block_size
        return native


def _names(option: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidArgumentError(
            f"{option} takes a list of names, not the string {values!r}; write "
            f"{option}=[{values!r}].")
    values = tuple(values)
    bad = [v for v in values if not isinstance(v, str) or not v]
    if bad:
        raise InvalidArgumentError(f"{option} holds {bad[0]!r}, which is not a name.")
    return values


def options_or_default(options: object) -> QuantOptions:
    """``options`` itself when it is a :class:`QuantOptions`, the defaults when
    it is None; InvalidArgumentError naming its type otherwise."""
    if options is None:
        return QuantOptions()
    if not isinstance(options, QuantOptions):
        raise InvalidArgumentError(
            f"options must be a QuantOptions, got {type(options).__name__}.")
    return options


def require_normalized(model: onnx.ModelProto, what: str) -> None:
    """Raises UnsupportedModelError when ``model`` is already quantized (it has
    a quantized node, named in the message, or quantize's stamp), ModelError
    unless it carries optimize_model's stamp."""
    refuse_quantized(model, what, stamped=get_metadata(model, QUANTIZED_KEY) is not None)
    if get_metadata(model, NORMALIZED_KEY) is None:
        raise ModelError(
            f"{what} takes a model normalised by onnxquant.optimize_model; run "
            "model = onnxquant.optimize_model(model) first (ranges are keyed by the "
            "normalised model's tensor names).")


def _native_ranges(ranges: Mapping[str, object]) -> dict[str, tuple[float, float]]:
    if not isinstance(ranges, Mapping):
        raise InvalidArgumentError(
            f"ranges must be a dict {{tensor name: (min, max)}}, got {type(ranges).__name__}.")
    # Non-finite or inverted pairs pass through: the engine raises
    # RangeMissingError naming the tensor, for the planned ones.
    native = {}
    for name, value in ranges.items():
        try:
            low, high = value
            native[str(name)] = (float(low), float(high))
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(
                f"ranges['{name}'] must be a pair of numbers (min, max), got {value!r}.") from e
    return native


_DEFAULTS = QuantOptions()


def quantize(model: ModelLike, ranges: Mapping[str, tuple[float, float]] | None, *,
             activation_type: str = "uint8", per_channel: bool = True,
             exclude_nodes: Iterable[str] = (), op_types: Iterable[str] | None = None,
             quantize_activation_matmul: bool = True, reduce_weight_range: bool = False,
             target: str = "portable", kernel_remedy: str = "auto",
             quantize_silu: bool = False, power_of_two: str = "off",
             weight_range: str = "minmax", float_outputs: bool = True,
             masks: str = "float",
             weight_type: str = "int8", block_size: int = 0,
             overrides: Mapping[str, Mapping[str, str]] | None = None,
             mode: str = "static",
             options: QuantOptions | None = None,
             calibrator: Calibrator | None = None,
             calibration_report: CalibrationReport | None = None,
             return_report: bool = False):
    """Returns the quantized form of a normalised model: QDQ with calibrated
    ranges (``mode="static"``, the default), or MatMul/Gemm quantized
    dynamically (``mode="dynamic"``: no ranges, no calibrator).

    Args:
        model: the output of :func:`~onnxquant.optimize_model` (ModelProto,
            bytes or path; never modified).
        ranges: ``{tensor name: (min, max)}`` as
            :meth:`~onnxquant.Calibrator.compute_range` returns it, for every
            tensor the plan calibrates; with ``mode="dynamic"``, None (a
            mapping given there is not read: scales are computed at run time).
            A Softmax output's range is replaced by [0, 255/256] (scale 1/256,
            the TFLite spec's; see docs/architecture.md; an int16 output's by
            [0, 65535/65536], scale 1/65536), unless ``overrides``
            give its node ``{"output_range": "calibrated"}``; the report's
            ``softmax_ranges`` list both.
        activation_type, per_channel, exclude_nodes, op_types,
        quantize_activation_matmul, reduce_weight_range, target,
        kernel_remedy, quantize_silu, power_of_two, weight_range,
        float_outputs, masks, weight_type, block_size, overrides, mode: see
            :class:`QuantOptions` (defaults: ``"uint8"``, True, none, None =
            all planned ops, True, False, ``"portable"``, ``"auto"``, False,
            ``"off"``, ``"minmax"``, True, ``"float"``, ``"int8"``, 0, none,
            ``"static"``).
        options: a :class:`QuantOptions` instead of the keywords above (then
            the keywords must keep their defaults). Default None.
        calibrator: the :class:`~onnxquant.Calibrator` the ranges came from
            (default None). With ``target="portable"`` its retained samples
            are replayed to find the nodes whose pair sums would saturate on
            CPUs without VNNI, so that only those are changed; without it,
            every node that could saturate on some input in its quantized
            range is changed (the conservative rule). Its report goes into
            the returned report.
        calibration_report: the calibrator's ``report``, to include in the
            returned report (default None: the calibrator's, if given).
        return_report: also return a :class:`~onnxquant.report.QuantizationReport`
            (default False).

    Returns:
        The quantized ``onnx.ModelProto``, or ``(model, report)`` with
        ``return_report=True`` (with ``mode="dynamic"``, the report is a
        :class:`~onnxquant.dynamic.DynamicReport`). The model carries a
        ``metadata_props`` entry ``onnxquant.quantized``.

    Raises:
        ModelError: the model was not normalised by optimize_model.
        UnsupportedModelError: the model is already quantized (the message
            names its first quantized node).
        RangeMissingError: a planned tensor has no range, or a non-finite or
            inverted one (the message names the tensor).
        InvalidArgumentError: an option outside its domain, or an excluded node
            or op type the model does not contain; or options that plan a
            tensor the ``calibrator`` did not observe because its options
            differ (the message names those options: pass the same to both,
            or build the Calibrator with ``collect="all"``); ``ranges=None``
            in static mode; a calibrator or a calibration report in dynamic
            mode, or an option that means nothing there (named).
    """
    keywords = QuantOptions(activation_type, per_channel, exclude_nodes, op_types,
                            quantize_activation_matmul, reduce_weight_range, target,
                            kernel_remedy, quantize_silu, power_of_two, weight_range,
                            float_outputs, masks, weight_type, block_size, overrides or {},
                            mode)
    if options is None:
        options = keywords
    elif keywords != _DEFAULTS:
        changed = [f.name for f in fields(QuantOptions)
                   if getattr(keywords, f.name) != getattr(_DEFAULTS, f.name)]
        raise InvalidArgumentError(
            f"Pass either options=QuantOptions(...) or keyword options, not both "
            f"(got options and {', '.join(changed)}).")
    elif not isinstance(options, QuantOptions):
        raise InvalidArgumentError(
            f"options must be a QuantOptions, got {type(options).__name__}.")
    if options.dynamic:
        return _quantize_dynamic(model, ranges, options, calibrator, calibration_report,
                                 return_report)
    if ranges is None:
        raise InvalidArgumentError(
            "quantize needs ranges in mode='static' (Calibrator.compute_range() returns "
            "them); only mode='dynamic' quantizes without calibration.")
    if calibrator is not None and not hasattr(calibrator, "kernel_check_feeds"):
        raise InvalidArgumentError(
            f"calibrator must be an onnxquant.Calibrator, got {type(calibrator).__name__}.")
    with Workspace() as workspace:
        return _quantize(model, ranges, options, calibrator, calibration_report,
                         return_report, workspace)


def _quantize_dynamic(model, ranges, options: QuantOptions, calibrator, calibration_report,
                      return_report: bool):
    """quantize in mode="dynamic": :func:`onnxquant.dynamic.quantize_dynamic`
    with the options that apply there."""
    from onnxquant.dynamic import quantize_dynamic

    if calibrator is not None or calibration_report is not None:
        given = "calibrator" if calibrator is not None else "calibration_report"
        raise InvalidArgumentError(
            f"quantize got a {given} with mode='dynamic', which computes activation scales "
            f"at run time and uses no calibration; drop the {given}, or use mode='static'.")
    if ranges is not None and not isinstance(ranges, Mapping):
        raise InvalidArgumentError(
            f"ranges must be None (or a dict, unused) with mode='dynamic', got "
            f"{type(ranges).__name__}.")
    target = "portable" if options.reduce_weight_range else options.target
    return quantize_dynamic(model, op_types=options.op_types or _DYNAMIC_OPS,
                            exclude_nodes=options.exclude_nodes,
                            per_channel=options.per_channel,
                            quantize_activation_matmul=options.quantize_activation_matmul,
                            target=target, return_report=return_report)


def _quantize(model, ranges, options: QuantOptions, calibrator, calibration_report,
              return_report: bool, workspace: Workspace):
    # The weights stay in files (the model's own, or the workspace's): the
    # engine reads one node's weight at a time and writes the quantized
    # weights beside the graph; the result is read back at the end.
    skeleton = load_skeleton(model, workspace, fingerprint=False)
    work = skeleton.model
    require_normalized(work, "quantize")
    given = _native_ranges(ranges)
    if options.uses_int4:
        work = upgrade_for_int4(work)
    if calibration_report is None and calibrator is not None:
        calibration_report = calibrator.report
    masked, mask_note = [], ""
    if options.masks == "float":
        masked, mask_note = _masks_kept_float(work, options, calibration_report)
    # The calibrator inferred the types of this very model: reuse them.
    known = getattr(calibrator, "_dtypes_of", None)
    dtypes = known(work) if known is not None else None
    # The calibrator's session runs this very model: the kernel check
    # replays its samples there.
    replay = calibrator._replay if dtypes is not None else None
    if dtypes is None:
        dtypes = infer_dtypes(work, workspace=workspace)
    data = model_to_bytes(work)
    # The overrides are resolved once (each resolution plans the model); the
    # checks and the remedies below work on this one native form.
    native, resolved = options.resolve(data, dtypes, work)

    def sixteen_bit(tensor: str) -> bool:
        return resolved.tensor_types.get(tensor, options.activation_type) == "int16"

    native_ranges = with_softmax_output_ranges(
        work.graph, given, resolved.calibrated_outputs, sixteen_bit)
    native.mask_nodes = masked
    # Bodies (If/Loop/Scan) with tensors no calibration sample reached stay
    # float; the engine says so per node.
    unreached = _unreached(work, data, dtypes, native, native_ranges)
    native.unreached_tensors = unreached
    _require_planned_ranges(data, dtypes, options, native, native_ranges, calibrator,
                            same_graph=replay is not None)
    kernels, remedies, planned = None, {}, None
    if options.target == "portable":
        # Parsed and planned once, for the kernel check and the insertion.
        planned = _core.PlannedModel(data, dtypes, native)
        feeds = calibrator.kernel_check_feeds if calibrator is not None else ()
        kernels = check_kernels(work, native_ranges, feeds, native_options=native,
                                dtypes=dtypes, headroom=KERNEL_CHECK_HEADROOM,
                                workspace=workspace, spill=skeleton.large, model_bytes=data,
                                replay=replay, planned=planned)
        remedies = choose_remedies(kernels, options.kernel_remedy)
        _apply_remedies(native, kernels, remedies)
        if "float" in remedies.values():
            _require_float_remedy_ranges(data, dtypes, native, native_ranges, remedies)
            planned = None  # nodes kept float: another plan
    # Below the large-model size the engine reads every payload back into the
    # result, whose bytes are then the whole model: checked as they are and
    # parsed once. Large models keep their payloads in files until the check
    # (which then takes a file) has passed.
    payload_file = workspace.new_file("quantized") if skeleton.large else ""
    whole = not skeleton.large
    if planned is not None:  # the remedies change weights only, not the plan
        data, native_report = planned.quantize(native_ranges, native.weight_remedies,
                                               payload_file, PAYLOAD_THRESHOLD,
                                               inline_payloads=whole)
        del planned  # the engine's copy of the model
    else:
        data, native_report = _core.quantize(data, dtypes, native, native_ranges,
                                             payload_file, PAYLOAD_THRESHOLD,
                                             inline_payloads=whole)
    fixed = _fixed_inputs_note(work)
    if whole:  # checked in memory, as the user gets it: no file written
        _check_quantized(data, work, workspace)
    result = onnx.ModelProto()
    result.ParseFromString(data)
    del data
    from onnxquant import __version__

    set_metadata(result, QUANTIZED_KEY, __version__)
    if not whole:
        # Past protobuf's limit the checker takes only a file, which must
        # hold the payloads beside it; the weights are read back after.
        _check_quantized(checkable_file(result, workspace), work, workspace)
        materialize(result)
    if not return_report:
        return result
    runtime, note = _runtime_of(result)
    report = QuantizationReport.from_native(
        native_report, calibration_report,
        kernels=kernel_summary(options, kernels, remedies), runtime=runtime,
        runtime_note=note)
    softmax = softmax_range_entries(work.graph, given, native_ranges,
                                    native_report.get("plan", {}).get("qdq", ()),
                                    resolved.calibrated_outputs)
    notes = tuple(n for n in (fixed, mask_note, calibrated_softmax_note(softmax, sixteen_bit))
                  if n)
    report = replace(report, softmax_ranges=softmax, notes=(*report.notes, *notes))
    return result, report


def _check_quantized(checked: bytes | str, work: onnx.ModelProto,
                     workspace: Workspace) -> None:
    """Runs ONNX's checker on the quantized model ``checked`` (its bytes,
    or a file of it). Raises ModelError when the input ``work`` itself fails
    the checker (a model edited after optimize_model: the user's to fix),
    InternalError otherwise (a bug of onnxquant)."""
    try:
        onnx.checker.check_model(checked)
    except onnx.checker.ValidationError as e:
        check_with_onnx_checker(checkable_file(work, workspace), "The model given to quantize")
        raise InternalError(
            f"The quantized model fails ONNX's checker ({str(e).splitlines()[0]}); this is "
            "a bug in onnxquant, please report it with the model.") from e


def _masks_kept_float(model: onnx.ModelProto, options: QuantOptions,
                      calibration: CalibrationReport | None) -> tuple[list[str], str]:
    """The masks' nodes that ``masks="float"`` keeps float (those the user
    did not exclude already), and the report's note on them ("" when there
    are none): the main graph's nodes that read or write a tensor where
    calibration saw +-Inf or float32's extremes, and those :func:`mask_nodes`
    finds in the graph. They go to the engine's own ``mask_nodes`` option,
    never into ``options.exclude_nodes``, which stay what the user passed."""
    masks = {c.tensor: c for c in calibration.nonfinite if c.saturating} \
        if calibration is not None else {}
    seen = [n.name for n in model.graph.node
            if n.name and masks.keys() & {*n.input, *n.output}] if masks else []
    found = [n for n in mask_nodes(model) if n not in seen]
    nodes = [n for n in (*seen, *found) if n not in options.exclude_nodes]
    if not nodes:
        return [], ""
    notes = []
    if seen:
        shares = ", ".join(f"'{t}' ({100 * c.share:.1f} %)" for t, c in sorted(masks.items()))
        notes.append(f"{len(seen)} read or write tensors where calibration saw |x| >= 1e30 "
                     f"or +-Inf, as attention masks hold (share of values, left out of the "
                     f"range): {shares}")
    if found:
        notes.append(f"{len(found)} compute or add an attention mask (computed from the "
                     "model's integer inputs, added to what a Softmax reads)")
    note = (f"{len(nodes)} nodes kept float (masks='float'), so that masks keep masking: "
            f"{'; '.join(notes)}. Nodes: {', '.join(nodes)}.")
    return nodes, note


# Ops that only move or convert values, between a mask's Add and the Softmax.
_MOVES = frozenset(("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast",
                    "Flatten", "Expand"))
_MAC_OPS = frozenset(("Conv", "ConvTranspose", "Gemm", "MatMul"))


def mask_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the main graph's nodes that apply an attention mask,
    whatever its constant (-10000, -1e9 or float32's lowest), found in the
    graph alone: an Add, Sub or Mul that feeds a Softmax (through ops that
    only move values) and whose other input is computed from the model's
    non-float inputs (the attention mask) and constants only, with the nodes
    that compute that input. None of them has multiply-adds."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}  # and tensors computed from them
    fed = {i.name for i in graph.input if i.name not in constants}
    # Tensors computed from non-float inputs (and constants) only.
    from_mask = {i.name for i in graph.input if i.name in fed
                 and i.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT,
                                                         onnx.TensorProto.FLOAT16,
                                                         onnx.TensorProto.DOUBLE)}
    if not from_mask:  # no mask input: nothing is computed from one
        return []
    producer = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        inputs = [i for i in node.input if i]
        if node.op_type in _MAC_OPS or not all(i in from_mask or i in constants
                                               for i in inputs):
            continue
        if any(i in from_mask for i in inputs):
            from_mask.update(o for o in node.output if o)
        else:  # a causal mask's Trilu of constants, for one
            constants.update(o for o in node.output if o)
    marked: list[str] = []

    def mark_computation(tensor: str) -> None:
        stack = [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in marked or not node.name:
                continue
            marked.append(node.name)
            stack.extend(i for i in node.input if i in from_mask)

    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        node = producer.get(softmax.input[0])
        while node is not None and node.op_type in _MOVES:
            node = producer.get(node.input[0])
        while node is not None and node.op_type in ("Add", "Sub", "Mul") and node.name:
            masks = [i for i in node.input if i in from_mask]
            others = [i for i in node.input if i not in from_mask and i not in constants]
            if not masks or len(others) != 1:
                break
            if node.name not in marked:
                marked.append(node.name)
            for tensor in masks:
                mark_computation(tensor)
            node = producer.get(others[0])
    return marked


def upgrade_for_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at opset 21 at least (INT4 DequantizeLinear), converted with
    ONNX's version converter when below it and checked with ONNX Runtime (it
    must compute what ``model`` did); ``model`` itself when already there.
    Raises UnsupportedModelError naming the node that blocks the conversion,
    or when the converted model computes something else."""
    from onnxquant._opset import (
        convert_opset,
        default_opset,
        verify_same_outputs,
    )

    if default_opset(model) >= INT4_OPSET:
        return model
    from onnxquant.optimize import name_nodes

    converted = convert_opset(model, INT4_OPSET)
    # The converter's new nodes (Constants for attributes that became
    # inputs) may be unnamed or share a name: the plan needs unique names.
    name_nodes(converted)
    # ONNX Runtime refuses the skeletons' absolute payload paths: the check
    # runs on copies holding their weights.
    copies = []
    for m in (model, converted):
        copy = onnx.ModelProto()
        copy.CopyFrom(m)
        copies.append(materialize(copy))
    verify_same_outputs(*copies, {}, f"conversion to opset {INT4_OPSET} for int4 weights")
    return converted


def _fixed_inputs_note(model: onnx.ModelProto) -> str:
    """The note on inputs whose dynamic dims optimize_model fixed, or ""."""
    from onnxquant.optimize import FIXED_INPUTS_KEY, fixed_inputs_message

    text = get_metadata(model, FIXED_INPUTS_KEY)
    if not text:
        return ""
    try:
        return fixed_inputs_message(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError):
        return f"optimize_model fixed dynamic input dims: {text}"


# The options that change which tensors the plan calibrates.
_PLAN_OPTIONS = ("activation_type", "exclude_nodes", "op_types",
                 "quantize_activation_matmul", "quantize_silu", "float_outputs",
                 "overrides")


def _unreached(model: onnx.ModelProto, data: bytes, dtypes: Mapping[str, int],
               native: _core.QuantOptions,
               ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """The tensors inside If/Loop/Scan bodies that the plan for ``native``
    calibrates and ``ranges`` lacks: no calibration sample reached them."""
    if not any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node):
        return []  # no bodies: spare a plan
    plan = _core.make_plan(data, dict(dtypes), native)
    return [t for t in plan["body_calibrated"] if t not in ranges]


def _brief(value: object, shown: int = 3) -> str:
    """An option's value for a message: a long sequence (exclude_nodes of a
    whole block, say) shows its first ``shown`` entries and the count."""
    if isinstance(value, (tuple, list)) and len(value) > shown:
        head = ", ".join(repr(v) for v in value[:shown])
        return f"({head}, ... {len(value)} in all)"
    return repr(value)


def _require_planned_ranges(data: bytes, dtypes: Mapping[str, int], options: QuantOptions,
                            native: _core.QuantOptions,
                            ranges: Mapping[str, tuple[float, float]],
                            calibrator: Calibrator | None, same_graph: bool = False) -> None:
    """Raises when the plan for ``native`` (the engine's form of ``options``,
    with the nodes ``masks="float"`` keeps float in its ``mask_nodes``)
    calibrates a tensor ``ranges`` lacks: InvalidArgumentError naming the
    options that differ from the calibrator's, when they do, or the mask
    nodes, when they alone plan it; RangeMissingError naming the tensor
    otherwise. ``same_graph``: the calibrator was made for this very graph
    (its plan for the same options is this plan, so no plan needs computing,
    unless mask nodes are kept float: the calibrator's plan had them)."""
    unreached = list(native.unreached_tensors)
    if calibrator is not None and same_graph and not native.mask_nodes and \
            all(getattr(calibrator.options, f) == getattr(options, f) for f in _PLAN_OPTIONS) \
            and all(t in ranges or t in unreached for t in calibrator.tensors):
        return  # the same plan as the calibrator's, whose every tensor has a range
    missing = _missing_ranges(data, dtypes, native, ranges)
    if not missing:
        return
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    if calibrator is not None:
        theirs = calibrator.options
        differ = [f for f in _PLAN_OPTIONS if getattr(theirs, f) != getattr(options, f)]
        if differ:
            pairs = "; ".join(f"{f}={_brief(getattr(options, f))} here, "
                              f"{_brief(getattr(theirs, f))} in the Calibrator" for f in differ)
            raise InvalidArgumentError(
                f"quantize's options differ from the Calibrator's in {', '.join(differ)} "
                f"({pairs}), and with them the plan needs tensor '{missing[0]}'{more}, "
                "which the Calibrator did not observe. Pass the same options to both "
                "(Calibrator(..., options=opts) and quantize(..., options=opts)), or "
                "build the Calibrator with collect='all' so that any options work after "
                "it.")
        if native.mask_nodes and missing[0] not in calibrator.tensors:
            raise InvalidArgumentError(
                f"masks='float' keeps the attention mask's nodes float: "
                f"{_brief(list(native.mask_nodes))}; and then the plan needs tensor "
                f"'{missing[0]}'{more}, which the Calibrator did not observe. Build the "
                "Calibrator with collect='all', or pass masks='saturate'.")
    raise RangeMissingError(
        f"No range for planned tensor '{missing[0]}'{more}. Pass every range "
        "Calibrator.compute_range() returns, from a Calibrator built with the same "
        "options as quantize (or with collect='all'), and pass that Calibrator as "
        "calibrator= so that quantize can tell which options differ.")


def _missing_ranges(data: bytes, dtypes: Mapping[str, int], native: _core.QuantOptions,
                    ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """The tensors the plan for ``native`` calibrates that ``ranges`` lacks."""
    planned = _core.make_plan(data, dict(dtypes), native)["calibrated"]
    return [t for t in planned if t not in ranges]


def _require_float_remedy_ranges(data: bytes, dtypes: Mapping[str, int],
                                 native: _core.QuantOptions,
                                 ranges: Mapping[str, tuple[float, float]],
                                 remedies: Mapping[str, str]) -> None:
    """Raises InvalidArgumentError when keeping the ``"float"`` remedy's nodes
    float plans a tensor without a range (the output of a node whose Relu the
    plan had absorbed, for one)."""
    missing = _missing_ranges(data, dtypes, native, ranges)
    if missing:
        nodes = sorted(n for n, r in remedies.items() if r == "float")
        raise InvalidArgumentError(
            f"kernel_remedy='float' keeps {', '.join(map(repr, nodes))} float, and then "
            f"the plan needs a range for tensor '{missing[0]}', which the ranges lack "
            "(it was not calibrated under the plan without that remedy). Build the "
            "Calibrator with collect='all', or choose another kernel_remedy.")


def _runtime_of(model: onnx.ModelProto):
    """ONNX Runtime's view of the quantized model (what it fuses), or None and
    why not."""
    from onnxquant.runtime_graph import inspect_runtime_graph

    try:
        return inspect_runtime_graph(model, level="extended"), ""
    except Exception as e:  # ONNX Runtime's errors derive from Exception only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, (f"could not load the quantized model ({first}), so which nodes it "
                      "fuses into integer kernels cannot be told")


def _apply_remedies(native: _core.QuantOptions, kernels: KernelCheckResult,
                    remedies: Mapping[str, str]) -> None:
    """Applies ``remedies`` (node -> remedy) for the nodes ``kernels`` found
    saturating to ``native``, the engine's options with the overrides already
    resolved (so that they are not resolved again)."""
    # Apart from the user's exclude_nodes: the plan gives them their own reason.
    native.kernel_float_nodes = sorted(
        node for node, remedy in remedies.items() if remedy == "float")
    weights = {}
    for node, remedy in remedies.items():
        if remedy == "float":
            continue
        change = _core.WeightRemedy()
        if remedy == "uint8_weights":
            change.encoding = _core.WeightEncoding.UINT8_OFFSET
        else:
            change.channel_qmax = list(kernels.channel_qmax[node])
        weights[node] = change
    native.weight_remedies = weights
