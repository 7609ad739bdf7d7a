"""Recipes: an ordered list of accuracy-recovery techniques with their
settings, plus the quantization options, applied in one call.

    recipe = oq.Recipe.preset("npu_pow2")
    result = oq.apply_recipe("model.onnx", samples, recipe)
    print(result.report)            # what each technique changed
    onnx.save(result.model, "model.int8.onnx")

A recipe is plain data: :meth:`Recipe.to_json` / :meth:`Recipe.from_json`
write and read it as a JSON file, and :func:`recipes` lists the named
presets. The steps run on the float model, in order, after
:func:`~onnxquant.optimize_model`; then the model is calibrated and
quantized with the recipe's options (``options.weight_range="mse"`` is the
weight range search, which runs inside quantization).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.numpy_helper

from onnxquant._model import ModelLike, model_to_bytes
from onnxquant.errors import InvalidArgumentError
from onnxquant.quantize import QuantOptions
from onnxquant.report import QuantizationReport

if TYPE_CHECKING:
    from onnxquant.dynamic import DynamicReport

__all__ = [
    "AdaRound",
    "BiasCorrection",
    "CrossLayerEqualization",
    "Recipe",
    "RecipeReport",
    "RecipeResult",
    "SmoothQuant",
    "TechniqueEntry",
    "apply_recipe",
    "recipes",
]


@dataclass(frozen=True)
class CrossLayerEqualization:
    """The step :func:`onnxquant.recovery.equalize_cross_layer`, with its
    arguments (same defaults)."""

    replace_relu6: bool = False
    power_of_two: bool = False
    max_sweeps: int = 100
    tolerance: float = 1e-4
    #: Then :func:`onnxquant.recovery.absorb_high_bias` on the recipe's samples.
    absorb_high_bias: bool = False
    high_bias_sigmas: float = 3.0

    kind = "cross_layer_equalization"


@dataclass(frozen=True)
class BiasCorrection:
    """The step :func:`onnxquant.recovery.correct_bias`, run with the
    recipe's quantization options on the recipe's samples."""

    batch_size: int = 32

    kind = "bias_correction"


@dataclass(frozen=True)
class SmoothQuant:
    """The step :func:`onnxquant.recovery.smooth_quant` on the recipe's
    samples, with its arguments (same defaults: ``alpha=None`` searches
    alpha per group) and the recipe's options (which decide how the search
    emulates the weights)."""

    alpha: float | None = None
    alpha_steps: int = 20
    insert_mul: bool = False
    search_rows: int = 512
    batch_size: int = 32
    alpha_scope: str = "group"

    kind = "smooth_quant"


@dataclass(frozen=True)
class AdaRound:
    """The step :func:`onnxquant.recovery.adaround`, run with the recipe's
    quantization options on the recipe's samples (same defaults;
    ``max_samples`` 0: all samples). It goes after cross-layer equalization
    (which changes the weights it rounds) and before bias correction (which
    then corrects the mean error of the rounded weights)."""

    iterations: int = 1000
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    learning_rate: float = 0.03
    max_samples: int = 0
    batch_size: int = 32
    inputs: str = "fp32"

    kind = "adaround"


_STEPS = {cls.kind: cls for cls in (CrossLayerEqualization, SmoothQuant, AdaRound,
                                     BiasCorrection)}
_ORDER = tuple(_STEPS)  # the order steps run in


def _check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Raises InvalidArgumentError naming the first key of ``values`` that
    is not a field of ``cls``, or a value of the wrong type."""
    if not isinstance(values, Mapping):
        raise InvalidArgumentError(f"{where} must be a JSON object, got {values!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise InvalidArgumentError(
                f"{where} has an unknown key '{key}'; its keys are: "
                f"{', '.join(fields)}.")
        default = fields[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise InvalidArgumentError(f"{where} key '{key}' must be true or false, "
                                       f"got {value!r}.")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidArgumentError(f"{where} key '{key}' must be a number, got {value!r}.")


def _check_step(step: object, index: int) -> None:
    where = f"recipe step {index}"
    if isinstance(step, CrossLayerEqualization):
        if not isinstance(step.max_sweeps, int) or step.max_sweeps < 1:
            raise InvalidArgumentError(
                f"{where} (cross_layer_equalization) key 'max_sweeps' must be an integer "
                f">= 1, got {step.max_sweeps!r}.")
        if not step.tolerance >= 0:
            raise InvalidArgumentError(
                f"{where} (cross_layer_equalization) key 'tolerance' must be >= 0, got "
                f"{step.tolerance!r}.")
        sigmas = step.high_bias_sigmas
        if isinstance(sigmas, bool) or not isinstance(sigmas, (int, float)) or \
                not (sigmas >= 0 and np.isfinite(sigmas)):
            raise InvalidArgumentError(
                f"{where} (cross_layer_equalization) key 'high_bias_sigmas' must be a finite "
                f"number >= 0, got {step.high_bias_sigmas!r}.")
    elif isinstance(step, BiasCorrection):
        if not isinstance(step.batch_size, int) or step.batch_size < 1:
            raise InvalidArgumentError(
                f"{where} (bias_correction) key 'batch_size' must be an integer >= 1, got "
                f"{step.batch_size!r}.")
    elif isinstance(step, SmoothQuant):
        a = step.alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float))
                              or not 0.0 <= a <= 1.0):
            raise InvalidArgumentError(
                f"{where} (smooth_quant) key 'alpha' must be null (search) or a number in "
                f"[0, 1], got {a!r}.")
        for key in ("alpha_steps", "search_rows", "batch_size"):
            v = getattr(step, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(
                    f"{where} (smooth_quant) key '{key}' must be an integer >= 1, got {v!r}.")
        if step.alpha_scope not in ("group", "model"):
            raise InvalidArgumentError(
                f"{where} (smooth_quant) key 'alpha_scope' must be \"group\" or \"model\", "
                f"got {step.alpha_scope!r}.")
        if not isinstance(step.insert_mul, bool):
            raise InvalidArgumentError(
                f"{where} (smooth_quant) key 'insert_mul' must be true or false, got "
                f"{step.insert_mul!r}.")
    elif isinstance(step, AdaRound):
        checks = (("iterations", isinstance(step.iterations, int) and step.iterations >= 1),
                  ("max_samples", isinstance(step.max_samples, int) and step.max_samples >= 0),
                  ("batch_size", isinstance(step.batch_size, int) and step.batch_size >= 1),
                  ("reg_weight", step.reg_weight >= 0),
                  ("learning_rate", step.learning_rate > 0),
                  ("warmup", 0 <= step.warmup < 1),
                  ("beta_end", step.beta_end > 0),
                  ("beta_start", step.beta_start >= step.beta_end),
                  ("inputs", step.inputs in ("fp32", "quantized")))
        for key, ok in checks:
            if not ok:
                raise InvalidArgumentError(
                    f"{where} (adaround) key '{key}' is out of its domain, got "
                    f"{getattr(step, key)!r} (iterations, batch_size >= 1; max_samples >= 0; "
                    "reg_weight >= 0; learning_rate > 0; 0 <= warmup < 1; "
                    "beta_start >= beta_end > 0; inputs 'fp32' or 'quantized').")
    else:
        raise InvalidArgumentError(
            f"{where} is a {type(step).__name__}; a step is CrossLayerEqualization, "
            "SmoothQuant, AdaRound or BiasCorrection.")


@dataclass(frozen=True)
class Recipe:
    """Techniques in order, and the options the model is quantized with.

    Attributes:
        steps: :class:`CrossLayerEqualization`, :class:`SmoothQuant`,
            :class:`AdaRound` and :class:`BiasCorrection`, each at most once,
            run in this order on the float model: each later technique works
            on the weights the earlier ones change, and bias correction
            corrects the error of the rounding AdaRound finds.
        options: the :class:`~onnxquant.QuantOptions` of calibration, bias
            correction and quantization (``weight_range="mse"`` is the
            weight range search).
        method: the calibration method's name (default ``"MIN_MAX_ASYM"``).
        name: a label, printed in the report (default ``""``).
        activation_power_of_two: with power-of-two ``options``, how each
            activation's scale is chosen from its range: ``"ceil"`` (default:
            the smallest power of two that covers it) or ``"mse"`` (that or
            the next lower one, whichever quantizes the calibration histogram
            with less squared error:
            :func:`~onnxquant.power_of_two_activation_ranges`). Ignored
            without power-of-two options.

    Raises:
        InvalidArgumentError: a step of another type, a step twice, bias
            correction before equalization, an option out of its domain, or
            an unknown method (each named).
    """

    steps: tuple[object, ...] = ()
    options: QuantOptions = field(default_factory=QuantOptions)
    method: str = "MIN_MAX_ASYM"
    name: str = ""
    activation_power_of_two: str = "ceil"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not isinstance(self.name, str):
            raise InvalidArgumentError(f"Recipe name must be a string, got {self.name!r}.")
        if self.activation_power_of_two not in ("ceil", "mse"):
            raise InvalidArgumentError(
                f"Recipe activation_power_of_two must be 'ceil' or 'mse', got "
                f"{self.activation_power_of_two!r}.")
        if not isinstance(self.options, QuantOptions):
            raise InvalidArgumentError(
                f"Recipe options must be a QuantOptions, got {type(self.options).__name__}.")
        from onnxquant.calibrator import CalibrationMethod

        methods = [m.name for m in CalibrationMethod]
        if self.method not in methods:
            raise InvalidArgumentError(
                f"Recipe method {self.method!r} is not a calibration method; use one of "
                f"{', '.join(methods)}.")
        kinds = []
        for i, step in enumerate(self.steps):
            _check_step(step, i)
            if step.kind in kinds:
                raise InvalidArgumentError(f"recipe step {i} repeats {step.kind}; give each "
                                           "technique once.")
            kinds.append(step.kind)
        if self.options.dynamic and "bias_correction" in kinds:
            raise InvalidArgumentError(
                "recipe has bias_correction with options mode='dynamic'; bias correction "
                "corrects the error of static quantization's ranges, which dynamic mode does "
                "not have: drop the step, or use mode='static'.")
        if ("bias_correction" in kinds and "adaround" in kinds and
                kinds.index("adaround") > kinds.index("bias_correction")):
            raise InvalidArgumentError(
                "recipe puts adaround after bias_correction: the correction was measured "
                "for nearest rounding and AdaRound changes the rounding (ResNet8 W4A8: 63.25 "
                "against 73.10 the other way round); put adaround before bias_correction.")
        for i, kind in enumerate(kinds):
            late = [k for k in kinds[:i] if _ORDER.index(k) > _ORDER.index(kind)]
            if late:
                raise InvalidArgumentError(
                    f"recipe puts {late[0]} before {kind}, which changes the weights "
                    f"{late[0]} works on; put {kind} first (the order is "
                    f"{', '.join(_ORDER)}).")

    @classmethod
    def preset(cls, name: str) -> Recipe:
        """The named preset (see :func:`recipes`). Raises
        InvalidArgumentError naming an unknown one."""
        if name not in _PRESETS:
            raise InvalidArgumentError(
                f"No recipe preset named {name!r}; the presets are: {', '.join(_PRESETS)}.")
        return _PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"name", "method", "options": {...}, "steps":
        [{"technique": ..., settings...}]}``; options list only the fields
        that differ from QuantOptions' defaults."""
        defaults = QuantOptions()
        options = {}
        for f in dataclasses.fields(QuantOptions):
            value = getattr(self.options, f.name)
            if value != getattr(defaults, f.name):
                options[f.name] = (list(value) if isinstance(value, tuple) else
                                   {k: dict(v) for k, v in value.items()}
                                   if f.name == "overrides" else value)
        steps = [{"technique": s.kind, **dataclasses.asdict(s)} for s in self.steps]
        out = {"name": self.name, "method": self.method, "options": options, "steps": steps}
        if self.activation_power_of_two != "ceil":
            out["activation_power_of_two"] = self.activation_power_of_two
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe of :meth:`to_dict`'s form. Raises InvalidArgumentError
        naming an unknown or mistyped key."""
        _check_fields(_RecipeKeys, data, "recipe")
        options = data.get("options", {})
        _check_fields(QuantOptions, options, "recipe 'options'")
        steps = []
        for i, entry in enumerate(data.get("steps", [])):
            if not isinstance(entry, Mapping) or "technique" not in entry:
                raise InvalidArgumentError(
                    f"recipe step {i} must be an object with a 'technique' key (one of "
                    f"{', '.join(_STEPS)}), got {entry!r}.")
            kind = entry["technique"]
            if kind not in _STEPS:
                raise InvalidArgumentError(
                    f"recipe step {i} has an unknown technique {kind!r}; the techniques are: "
                    f"{', '.join(_STEPS)}.")
            settings = {k: v for k, v in entry.items() if k != "technique"}
            _check_fields(_STEPS[kind], settings, f"recipe step {i} ({kind})")
            steps.append(_STEPS[kind](**settings))
        try:
            opts = QuantOptions(**options)
        except TypeError as e:  # a value QuantOptions cannot take
            raise InvalidArgumentError(f"recipe 'options': {e}") from None
        return cls(steps=tuple(steps), options=opts,
                   method=data.get("method", "MIN_MAX_ASYM"), name=data.get("name", ""),
                   activation_power_of_two=data.get("activation_power_of_two", "ceil"))

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_dict` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Recipe:
        """The recipe in the JSON file ``path``. Raises InvalidArgumentError
        for a missing file, invalid JSON (with its line), or a bad key."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise InvalidArgumentError(f"Recipe file '{os.fspath(path)}' does not exist; "
                                       f"name a JSON file or a preset ({', '.join(_PRESETS)}).")\
                from None
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"Recipe file '{os.fspath(path)}' is not valid JSON: "
                                       f"{e.msg} at line {e.lineno}.") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Recipe:
        """A preset by name, else the JSON file at that path."""
        if isinstance(name_or_path, str) and name_or_path in _PRESETS:
            return _PRESETS[name_or_path]
        return cls.from_json(name_or_path)


@dataclass(frozen=True)
class _RecipeKeys:  # the keys of a recipe file, for _check_fields
    name: str = ""
    method: str = ""
    activation_power_of_two: str = ""
    options: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)


_PRESETS: dict[str, Recipe] = {
    "cpu_default": Recipe(name="cpu_default"),
    "npu_pow2": Recipe(
        steps=(CrossLayerEqualization(power_of_two=True), BiasCorrection()),
        options=QuantOptions(per_channel=False, power_of_two="ceil", weight_range="mse"),
        name="npu_pow2"),
    # No weight range search at int4: the weights' squared error is minimised by
    # clipping 80-95 % of the channels (to about 2.5 standard deviations), which
    # never helped and cost up to a point of top-1 (docs/accuracy.md, "Recipes").
    "w4a8": Recipe(
        steps=(CrossLayerEqualization(), AdaRound(), BiasCorrection()),
        options=QuantOptions(weight_type="int4", weight_range="mse"),
        name="w4a8"),
}


def recipes() -> dict[str, Recipe]:
    """The named presets: ``"cpu_default"`` (W8A8, per-channel weights, no
    technique), ``"npu_pow2"`` (per-tensor power-of-two scales, CLE aligned
    to powers of two, weight range search, bias correction) and ``"w4a8"``
    (int4 per-channel weights, weight range search, CLE, AdaRound, bias
    correction; without AdaRound the int4 weight search did not help, with it
    ResNet8 gains 2 points)."""
    return dict(_PRESETS)


@dataclass(frozen=True)
class TechniqueEntry:
    """What one technique changed: ``technique`` its name, ``summary`` one
    line, ``values`` the figures (``pairs`` and ``mean_abs_log_scale`` for
    CLE; ``biases_corrected`` and ``mean_abs_delta`` for bias correction;
    ``channels_clipped`` and ``channels`` for the weight range search;
    ``layers``, ``share_up``, ``share_changed``, ``loss_ratio`` and per node
    ``share_up/<node>``, ``share_changed/<node>`` for AdaRound),
    ``record`` the technique's own record (or None), ``seconds`` its time."""

    technique: str
    summary: str
    values: Mapping[str, float]
    record: object
    seconds: float


@dataclass(frozen=True)
class RecipeReport:
    """The recipe applied: one :class:`TechniqueEntry` per technique, in
    order, and the quantization's report (a
    :class:`~onnxquant.dynamic.DynamicReport` when the options have
    ``mode="dynamic"``)."""

    recipe: Recipe
    techniques: tuple[TechniqueEntry, ...]
    quantization: QuantizationReport | DynamicReport

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(),
                "techniques": [{"technique": t.technique, "summary": t.summary,
                                "values": dict(t.values), "seconds": t.seconds}
                               for t in self.techniques],
                "quantization": self.quantization.to_dict()}

    def __str__(self) -> str:
        lines = [f"recipe {self.recipe.name or '(unnamed)'}:"]
        lines += [f"  {t.technique}: {t.summary} ({t.seconds:.2f} s)" for t in self.techniques]
        if not self.techniques:
            lines.append("  no technique")
        return "\n".join(lines) + "\n" + str(self.quantization)


@dataclass(frozen=True)
class RecipeResult:
    """:func:`apply_recipe`'s result: the quantized ``model``, the
    ``float_model`` the techniques produced (what was calibrated), and the
    ``report``."""

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    report: RecipeReport


def _equalization_entry(record, seconds: float) -> TechniqueEntry:
    logs = [float(np.mean(np.abs(np.log(p.scales)))) for p in record.pairs]
    mean = float(np.mean(logs)) if logs else 0.0
    summary = (f"{len(record.pairs)} pairs rescaled, mean |log scale| {mean:.4f}, "
               f"{record.sweeps} sweeps" + ("" if record.converged else " (not converged)"))
    if record.clips_replaced:
        summary += f", {len(record.clips_replaced)} Clip -> Relu"
    if record.clips_stopped:
        summary += f", {len(record.clips_stopped)} Clip ended a chain"
    return TechniqueEntry("cross_layer_equalization", summary,
                          {"pairs": len(record.pairs), "mean_abs_log_scale": mean},
                          record, seconds)


def _absorption_entry(record, seconds: float) -> TechniqueEntry:
    values = [np.asarray(a) for a in record.amounts.values()]
    moved = int(sum(np.count_nonzero(a) for a in values))
    channels = int(sum(a.size for a in values))
    summary = (f"high-bias absorption: {len(record.amounts)} of {record.candidates} chains, "
               f"{moved} of {channels} channels, mean amount "
               f"{float(np.mean(np.concatenate(values))) if values else 0.0:.3g}")
    return TechniqueEntry("high_bias_absorption", summary,
                          {"chains": len(record.amounts), "channels_moved": moved},
                          record, seconds)


def _bias_entry(record, seconds: float) -> TechniqueEntry:
    deltas = [np.abs(d) for d in record.corrections.values()]
    mean = float(np.mean(np.concatenate(deltas))) if deltas else 0.0
    summary = (f"{len(record.corrections)} biases corrected, mean |delta| {mean:.3g}, "
               f"{record.rounds} runs x {record.samples} samples")
    if record.skipped:
        summary += f", {len(record.skipped)} skipped"
    return TechniqueEntry("bias_correction", summary,
                          {"biases_corrected": len(record.corrections),
                           "mean_abs_delta": mean}, record, seconds)


def _smooth_entry(record, seconds: float) -> TechniqueEntry:
    applied = [g for g in record.groups if g.applied]
    alphas = [g.alpha for g in applied]
    before = float(np.mean([g.error_before for g in applied])) if applied else 0.0
    after = float(np.mean([g.error_after for g in applied])) if applied else 0.0
    summary = (f"{len(applied)} of {len(record.groups)} MatMul groups smoothed"
               + (f", alpha {min(alphas):.2f}..{max(alphas):.2f}, mean relative error "
                  f"{before:.3g} -> {after:.3g}" if applied else "")
               + (f", {len(record.skipped)} activations skipped" if record.skipped else ""))
    return TechniqueEntry("smooth_quant", summary,
                          {"groups_smoothed": len(applied), "groups": len(record.groups),
                           "skipped": len(record.skipped),
                           "mean_error_before": before, "mean_error_after": after},
                          record, seconds)


def _adaround_entry(record, seconds: float) -> TechniqueEntry:
    sizes = np.array([layer.codes.size for layer in record.layers], dtype=np.float64)
    total = float(sizes.sum()) or 1.0
    up = float(sum(layer.share_up * n for layer, n in zip(record.layers, sizes)) / total)
    changed = float(sum(layer.share_changed * n for layer, n in zip(record.layers, sizes))
                    / total)
    ratios = [layer.loss_final / layer.loss_nearest for layer in record.layers
              if layer.loss_nearest > 0]
    ratio = float(np.mean(ratios)) if ratios else 1.0
    summary = (f"{len(record.layers)} layers rounded, {100 * up:.1f} % of weights rounded up, "
               f"{100 * changed:.1f} % differ from nearest, output loss x{ratio:.2f} of "
               f"nearest's (mean), {record.iterations} steps x {record.samples} samples")
    if record.skipped:
        summary += f", {len(record.skipped)} skipped"
    values: dict[str, float] = {"layers": len(record.layers), "share_up": up,
                                "share_changed": changed, "loss_ratio": ratio}
    for layer in record.layers:
        values[f"share_up/{layer.node}"] = layer.share_up
        values[f"share_changed/{layer.node}"] = layer.share_changed
    return TechniqueEntry("adaround", summary, values, record, seconds)


def _channel_axis(node: onnx.NodeProto, ndim: int) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "MatMul":
        return ndim - 1
    return 0


def _channel_max(w: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return np.array([np.abs(w).max()]) if w.size else np.zeros(0)
    return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)


def _search_entry(model: onnx.ModelProto, options: QuantOptions) -> TechniqueEntry:
    """The channels whose range the weight range search set below the
    min-max range: the largest |value| of each weight channel quantized
    (emulated) with the search, against the same without it."""
    from onnxquant import _core
    from onnxquant._shapes import infer_dtypes

    start = time.perf_counter()
    data, dtypes = model_to_bytes(model), infer_dtypes(model)
    plain = dataclasses.replace(options, weight_range="minmax")
    emulated = []
    for opts in (options, plain):
        out, _ = _core.emulate_quantized_weights(data, dtypes, opts.to_native(data, dtypes,
                                                                              model))
        proto = onnx.ModelProto()
        proto.ParseFromString(out)
        emulated.append({t.name: t for t in proto.graph.initializer})
    searched, minmax = emulated
    clipped = channels = 0
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in searched:
            continue
        name = node.input[1]
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        a = onnx.numpy_helper.to_array(searched[name]).astype(np.float32)
        b = onnx.numpy_helper.to_array(minmax[name]).astype(np.float32)
        if np.array_equal(a, b) and options.weight_range == "minmax":
            continue
        axis = _channel_axis(node, a.ndim) if options.per_channel else None
        ma, mb = _channel_max(a, axis), _channel_max(b, axis)
        channels += len(ma)
        clipped += int(np.sum(ma < mb * (1 - 1e-6)))
    share = clipped / channels if channels else 0.0
    return TechniqueEntry(
        "weight_range_search",
        f"{clipped} of {channels} weight {'channels' if options.per_channel else 'tensors'} "
        f"clipped below max|w| ({100 * share:.1f} %)",
        {"channels_clipped": clipped, "channels": channels}, None,
        time.perf_counter() - start)


def apply_recipe(model: ModelLike, samples: object, recipe: Recipe | str, *,
                 input_shapes: Mapping[str, object] | None = None,
                 percentage: float = 99.99, progress: bool = False) -> RecipeResult:
    """Runs ``recipe`` on ``model``: :func:`~onnxquant.optimize_model`, each
    step on the float model in order (equalization, SmoothQuant on
    ``samples``, then bias correction on ``samples`` with the recipe's
    options), calibration on ``samples`` with
    the recipe's method, and :func:`~onnxquant.quantize` with its options.

    Args:
        model: ModelProto, bytes or path (never modified).
        samples: calibration samples as :meth:`~onnxquant.Calibrator.collect_data`
            takes them (a list of samples, one array with samples on axis 0 for
            a one-input model, or an ONNX Runtime ``CalibrationDataReader``);
            read by both bias correction and calibration, so an iterator is
            read once into a list. With options ``mode="dynamic"`` (no
            calibration, no bias correction) they are not read and may be
            None.
        recipe: a :class:`Recipe`, a preset's name, or a JSON file's path.
        input_shapes: passed to :func:`~onnxquant.optimize_model`.
        percentage: the percentile of PERCENTILE methods (default 99.99).
        progress: progress bar while calibrating (default False).

    Returns:
        :class:`RecipeResult`: the quantized model, the float model the
        steps produced, and the :class:`RecipeReport` (one entry per
        technique, the weight range search included when
        ``options.weight_range="mse"``).

    Raises:
        InvalidArgumentError: an unknown preset, a bad recipe file or key.
        CalibrationDataError, ModelError, UnsupportedModelError: as the
            steps, the calibrator and quantize raise them.
    """
    from onnxquant.calibrator import Calibrator
    from onnxquant.optimize import optimize_model
    from onnxquant.pipeline import _samples
    from onnxquant.quantize import quantize, upgrade_for_int4
    from onnxquant.recovery import (absorb_high_bias, adaround, correct_bias,
                                    equalize_cross_layer, smooth_quant)

    if not isinstance(recipe, Recipe):
        if not isinstance(recipe, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"recipe must be a Recipe, a preset's name or a JSON path, got "
                f"{type(recipe).__name__}.")
        recipe = Recipe.load(recipe)
    # One array (samples on axis 0) is taken as it is; anything else is read
    # into a list, since bias correction and calibration both read it.
    dynamic = recipe.options.dynamic
    feed = None if dynamic else \
        samples if isinstance(samples, np.ndarray) else list(_samples(samples))
    float_model = optimize_model(model, input_shapes=input_shapes)
    if recipe.options.uses_int4:
        # INT4 DequantizeLinear needs opset 21, which bias correction's
        # emulated weights need too: convert before the steps.
        float_model = upgrade_for_int4(float_model)
    entries = []
    for step in recipe.steps:
        start = time.perf_counter()
        if isinstance(step, CrossLayerEqualization):
            float_model, rec = equalize_cross_layer(
                float_model, replace_relu6=step.replace_relu6, power_of_two=step.power_of_two,
                max_sweeps=step.max_sweeps, tolerance=step.tolerance)
            entries.append(_equalization_entry(rec, time.perf_counter() - start))
            if step.absorb_high_bias:
                start = time.perf_counter()
                float_model, rec = absorb_high_bias(float_model, feed,
                                                    sigmas=step.high_bias_sigmas)
                entries.append(_absorption_entry(rec, time.perf_counter() - start))
        elif isinstance(step, SmoothQuant):
            float_model, rec = smooth_quant(
                float_model, feed, alpha=step.alpha, alpha_steps=step.alpha_steps,
                insert_mul=step.insert_mul, search_rows=step.search_rows,
                batch_size=step.batch_size, options=recipe.options,
                alpha_scope=step.alpha_scope)
            entries.append(_smooth_entry(rec, time.perf_counter() - start))
        elif isinstance(step, AdaRound):
            float_model, rec = adaround(
                float_model, feed, options=recipe.options, iterations=step.iterations,
                reg_weight=step.reg_weight, beta=(step.beta_start, step.beta_end),
                warmup=step.warmup, learning_rate=step.learning_rate,
                max_samples=step.max_samples or None, batch_size=step.batch_size,
                inputs=step.inputs, progress=progress)
            entries.append(_adaround_entry(rec, time.perf_counter() - start))
        else:
            float_model, rec = correct_bias(float_model, feed, options=recipe.options,
                                            batch_size=step.batch_size)
            entries.append(_bias_entry(rec, time.perf_counter() - start))
    if dynamic:
        quantized, qreport = quantize(float_model, None, options=recipe.options,
                                      return_report=True)
    else:
        calibrator = Calibrator(float_model, recipe.method, percentage=percentage,
                                options=recipe.options)
        calibrator.collect_data(feed, progress=progress)
        ranges = calibrator.compute_range()
        if recipe.activation_power_of_two == "mse" and recipe.options.power_of_two != "off":
            from onnxquant.pow2_ranges import power_of_two_activation_ranges

            start = time.perf_counter()
            ranges, lowered = power_of_two_activation_ranges(
                calibrator, ranges, activation_type=recipe.options.activation_type)
            entries.append(TechniqueEntry(
                "power_of_two_activation_mse",
                f"{len(lowered)} of {len(ranges)} activation scales lowered one power of two",
                {"lowered": len(lowered), "tensors": len(ranges)}, tuple(lowered),
                time.perf_counter() - start))
        quantized, qreport = quantize(float_model, ranges, options=recipe.options,
                                      calibrator=calibrator, return_report=True)
    if recipe.options.weight_range == "mse":
        entries.append(_search_entry(float_model, recipe.options))
    return RecipeResult(quantized, float_model, RecipeReport(recipe, tuple(entries), qreport))
