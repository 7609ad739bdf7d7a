"""What calibration and quantization did: :class:`CalibrationReport` and
:class:`QuantizationReport`, immutable, printable and JSON-serialisable."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "AbsorbedActivation",
    "CalibrationReport",
    "FloatNode",
    "KernelRemedy",
    "KernelReport",
    "NonFiniteCount",
    "QuantizationReport",
    "QuantizedNode",
    "SoftmaxRange",
    "kernel_summary",
]


class QuantizedNode(NamedTuple):
    """A node the plan quantizes. ``weight_axis`` is the per-channel axis of
    its weight, -1 for a per-tensor weight or a node without one.
    ``runs_as``: what ONNX Runtime's CPU provider runs for it (see
    :class:`QuantizationReport`), e.g. ``"QLinearConv (integer)"`` or
    ``"Mul (float)"``; empty when not known."""

    node: str
    op_type: str
    weight_axis: int = -1
    runs_as: str = ""
    graph: str = ""


class FloatNode(NamedTuple):
    """A node the plan leaves in float, why, and what ONNX Runtime runs for
    it (``runs_as``, as for :class:`QuantizedNode`)."""

    node: str
    op_type: str
    reason: str
    runs_as: str = ""
    graph: str = ""


class AbsorbedActivation(NamedTuple):
    """A Relu/Clip removed because its producer's output range absorbs it."""

    node: str
    producer: str


class SoftmaxRange(NamedTuple):
    """The range of a quantized Softmax output: ``calibrated``, the
    ``(min, max)`` passed to :func:`~onnxquant.quantize` (the calibrator's, or
    the user's); ``used``, the range the quantized model's parameters come
    from; ``fixed``: True when that is the TFLite spec's fixed [0, 255/256]
    (scale 1/256; [0, 65535/65536] for an int16 output), False when the node's ``overrides`` entry
    ``{"output_range": "calibrated"}`` kept the calibrated one. ``graph``:
    the body it lies in, as for :class:`QuantizedNode`."""

    tensor: str
    node: str
    calibrated: tuple[float, float]
    used: tuple[float, float]
    fixed: bool = True
    graph: str = ""


class NonFiniteCount(NamedTuple):
    """NaN, +-Inf and float32's extremes seen in one intermediate tensor during
    calibration: left out of its statistics and its range, not raised.

    ``pos_extreme`` and ``neg_extreme`` count finite values of magnitude at
    least 1e30, as attention masks hold (``torch.finfo(float32).min`` at
    padded positions): left out of the range, they saturate on purpose
    where the tensor is quantized. ``values``: every value the tensor held;
    :attr:`share`: the share of them left out (0 when unknown).
    """

    tensor: str
    nan: int
    pos_inf: int
    neg_inf: int
    pos_extreme: int = 0
    neg_extreme: int = 0
    values: int = 0

    @property
    def share(self) -> float:
        """The share of the tensor's values left out of its range."""
        left_out = self.nan + self.pos_inf + self.neg_inf + self.pos_extreme + self.neg_extreme
        return left_out / self.values if self.values else 0.0

    @property
    def saturating(self) -> int:
        """Values that saturate when the tensor is quantized: +-Inf and the
        extremes (a mask's values)."""
        return self.pos_inf + self.neg_inf + self.pos_extreme + self.neg_extreme


class KernelRemedy(NamedTuple):
    """A node changed so that ONNX Runtime's uint8 x int8 kernels on x86
    CPUs without VNNI compute what the model says: the ``remedy``
    (``channel_range``, ``uint8_weights`` or ``float``), the ``change`` made,
    and the ``reason`` (what the kernel check found)."""

    node: str
    op_type: str
    remedy: str
    change: str
    reason: str


def _count(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def _span(pair: tuple[float, float]) -> str:
    return f"[{pair[0]:.4g}, {pair[1]:.4g}]"


def _table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    if not rows:
        return []
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"{title} ({len(rows)})"]
    for k, row in enumerate(cells):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


@dataclass(frozen=True)
class CalibrationReport:
    """What a :class:`~onnxquant.Calibrator` saw.

    ``num_samples``: samples fed; ``method``: the calibration method's name;
    ``nonfinite``: tensors that held NaN, Inf or float32's extremes (|x| >=
    1e30, as attention masks hold), with counts and the share of the tensor's
    values left out of its range; ``degraded``: tensors
    with no finite value at all, given the range (0, 0) (quantization floors
    their scale).
    """

    num_samples: int = 0
    method: str = ""
    nonfinite: tuple[NonFiniteCount, ...] = ()
    degraded: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        return {
            "num_samples": self.num_samples,
            "method": self.method,
            "nonfinite": [{**c._asdict(), "share": c.share} for c in self.nonfinite],
            "degraded": list(self.degraded),
        }

    def __str__(self) -> str:
        lines = [f"Calibration: {self.num_samples} samples, {self.method}"]
        lines += _table("Tensors with NaN/Inf or |x| >= 1e30, e.g. masks (left out of the "
                        "range; they saturate)",
                        ("tensor", "NaN", "+Inf", "-Inf", ">=1e30", "<=-1e30", "share"),
                        [(*c[:6], f"{100 * c.share:.2f} %") for c in self.nonfinite])
        if self.degraded:
            lines.append(f"Tensors without a finite value, range (0, 0): "
                         f"{', '.join(self.degraded)}")
        return "\n".join(lines)


def _runtime_summary(report: QuantizationReport) -> list[str]:
    runtime = report.runtime
    if runtime is None:
        return [f"ONNX Runtime: {report.runtime_note}"] if report.runtime_note else []
    integer = sum(runtime.integer_ops.values())
    islands = runtime.islands_on_dequantized_data
    lines = [f"ONNX Runtime (CPU provider, ORT_ENABLE_{runtime.level.upper()}) runs "
             f"{integer} nodes on 8-bit data and {sum(runtime.float_ops.values())} in float; "
             f"{len(islands)} float islands on dequantized data"]
    lines += [f"  {island}" for island in islands]
    if report.runs_float:
        lines.append("Planned INT8 but run in float by ONNX Runtime (no integer kernel): "
                     + ", ".join(f"{n.node} ({n.op_type})" for n in report.runs_float))
    if report.runs_integer:
        lines.append("Planned float but fused into integer kernels by ONNX Runtime (its input "
                     "and output are quantized): "
                     + ", ".join(f"{n.node} ({n.runs_as})" for n in report.runs_integer))
    return lines


@dataclass(frozen=True)
class KernelReport:
    """What ``target`` meant for the integer kernels (docs/user_guide.md).

    ``target``: ``"portable"`` or ``"exact"``; ``samples``: calibration
    samples replayed by the kernel check (0: none, so nodes were judged by
    their worst case); ``checked``: nodes with a weight that ONNX Runtime
    runs on uint8 x int8 kernels; ``remedies``: the nodes changed, with the
    remedy and the reason; ``checks``: the check of every node with a weight
    (:class:`onnxquant.kernel_check.KernelCheck`), empty with
    ``target="exact"``.
    """

    target: str = "portable"
    samples: int = 0
    checked: int = 0
    remedies: tuple[KernelRemedy, ...] = ()
    checks: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        return {"target": self.target, "samples": self.samples, "checked": self.checked,
                "remedies": [r._asdict() for r in self.remedies],
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def __str__(self) -> str:
        if self.target == "exact":
            return ("Integer kernels: target 'exact': full-range int8 weights; ONNX Runtime's "
                    "uint8 x int8 kernels on x86 CPUs without VNNI may saturate (not checked).")
        evidence = (f"{self.samples} calibration samples replayed" if self.samples else
                    "no samples: worst case over the quantized ranges")
        lines = [f"Integer kernels: target 'portable': {self.checked} nodes on uint8 x int8 "
                 f"kernels checked for 16-bit saturation on x86 CPUs without VNNI "
                 f"({evidence}); {len(self.remedies)} changed"]
        lines += _table("Kernel remedies", ("node", "op", "remedy", "change", "reason"),
                        list(self.remedies))
        return "\n".join(lines)


def _remedy_reason(check: Any, samples: int) -> str:
    if check.observed:
        share = 100.0 * check.saturated / max(check.pair_sums, 1)
        # A float output (float_outputs) has no rounding noise to compare with.
        error = "its output is float" if math.isinf(check.error_ratio) else \
            f"error {check.error_ratio:.3g} x the output's rounding noise"
        return (f"{_count(check.saturated)} of {_count(check.pair_sums)} pair sums "
                f"({share:.3g} %) saturated on {samples} samples (peak {_count(check.peak)} "
                f"> 32 767; {error})")
    return f"could reach {_count(check.bound)} > 32 767 (no sample reached it)"


def kernel_summary(options: Any, kernels: Any,
                   remedies: Mapping[str, str] | None = None) -> KernelReport:
    """The :class:`KernelReport` of a :func:`~onnxquant.quantize` call with
    these :class:`~onnxquant.QuantOptions`, kernel check result (None when
    nothing was checked) and remedy per node (default: the option's)."""
    if kernels is None:
        return KernelReport(target=options.target)
    changes = []
    for check in kernels.nodes:  # in graph order
        node = check.node
        if node not in kernels.channel_qmax:
            continue
        qmax = kernels.channel_qmax[node]
        remedy = (remedies or {}).get(node, options.kernel_remedy)
        if remedy == "float":
            change = "kept in float"
        elif remedy == "uint8_weights":
            change = "uint8 weights, zero point 128 (uint8 x uint8 kernels)"
        else:
            lowered = [q for q in qmax if q < 127]
            span = (f"{min(lowered)}" if min(lowered) == max(lowered)
                    else f"{min(lowered)}-{max(lowered)}")
            change = (f"largest weight code {span} instead of 127 on {len(lowered)} of "
                      f"{len(qmax)} channels" if len(qmax) > 1 else
                      f"largest weight code {span} instead of 127")
        changes.append(KernelRemedy(node, check.op_type, remedy, change,
                                    _remedy_reason(check, kernels.samples)))
    return KernelReport(target=options.target, samples=kernels.samples,
                        checked=sum(c.kind == "pair_sums" for c in kernels.nodes),
                        remedies=tuple(changes), checks=kernels.nodes)


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`~onnxquant.quantize` did, node by node.

    ``quantized_nodes`` and ``float_nodes`` (with the reason) cover the main
    graph and the bodies of If, Loop and Scan nodes (a node's ``graph`` names
    its body, ``"<node>.<attribute>"`` with nested bodies joined by ``/``;
    ``""`` for the main graph); ``absorbed``: Relu/Clip folded into their producer's range;
    ``qdq_tensors``: tensors given a QuantizeLinear/DequantizeLinear pair;
    ``floored``: tensors whose zero range got a floored scale; ``enlarged``:
    weights whose scale was enlarged so the int32 bias fits;
    ``softmax_ranges``: each quantized Softmax output with the range it was
    given and the range it uses (:class:`SoftmaxRange`: the fixed
    [0, 255/256] unless overridden); ``notes``: other
    remarks of the engine (e.g. subgraphs left in float); ``calibration``: the
    calibrator's report when it was passed to ``quantize``, else None;
    ``kernels``: the kernel check (:class:`KernelReport`).

    ``runtime``: how ONNX Runtime (CPU provider, ``ORT_ENABLE_EXTENDED``,
    where its QDQ fusions happen) runs the quantized model
    (:class:`onnxquant.runtime_graph.RuntimeGraph`), from which each node's
    ``runs_as`` is filled; None, with the reason in ``runtime_note``, when
    that cannot be told (ONNX Runtime could not load the model).
    """

    quantized_nodes: tuple[QuantizedNode, ...] = ()
    float_nodes: tuple[FloatNode, ...] = ()
    absorbed: tuple[AbsorbedActivation, ...] = ()
    qdq_tensors: tuple[str, ...] = ()
    floored: tuple[str, ...] = ()
    enlarged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    calibration: CalibrationReport | None = field(default=None)
    softmax_ranges: tuple[SoftmaxRange, ...] = ()
    kernels: KernelReport | None = field(default=None)
    runtime: Any = field(default=None)
    runtime_note: str = ""

    @property
    def runs_float(self) -> tuple[QuantizedNode, ...]:
        """Nodes the plan quantizes that ONNX Runtime runs in float (it
        found no integer kernel for them, e.g. the Sigmoid and Mul of a SiLU,
        a ConvTranspose)."""
        return tuple(n for n in self.quantized_nodes if n.runs_as.endswith("(float)"))

    @property
    def runs_integer(self) -> tuple[FloatNode, ...]:
        """Nodes the plan leaves float that ONNX Runtime runs on integer
        kernels all the same (an excluded node between quantized tensors)."""
        return tuple(n for n in self.float_nodes if n.runs_as.endswith("(integer)"))

    @property
    def nonfinite(self) -> tuple[NonFiniteCount, ...]:
        """NaN/Inf counts of calibration (empty without a calibration report)."""
        return self.calibration.nonfinite if self.calibration is not None else ()

    @classmethod
    def from_native(cls, report: Mapping[str, Any],
                    calibration: CalibrationReport | None = None,
                    kernels: KernelReport | None = None, runtime: Any = None,
                    runtime_note: str = "") -> QuantizationReport:
        """Builds the report from the dict ``_core.quantize`` returns, and
        ``runtime`` (a :class:`~onnxquant.runtime_graph.RuntimeGraph` of the
        quantized model, or None)."""
        plan = report.get("plan", {})

        def runs_as(node: str, scope: str = "") -> str:
            if runtime is None or scope:  # bodies are not inspected
                return ""
            found = runtime.runs_as(node)
            return "removed by ONNX Runtime" if found is None else f"{found[0]} ({found[1]})"

        return cls(
            quantized_nodes=tuple(QuantizedNode(n["node"], n["op_type"],
                                                int(n.get("weight_axis", -1)),
                                                runs_as(n["node"], n.get("scope", "")),
                                                n.get("scope", ""))
                                  for n in plan.get("quantized_nodes", ())),
            float_nodes=tuple(FloatNode(*f[:3], runs_as(*f[:1], *f[3:4]), *f[3:4])
                              for f in plan.get("float_nodes", ())),
            absorbed=tuple(AbsorbedActivation(*a[:2]) for a in plan.get("absorbed", ())),
            qdq_tensors=tuple(q[0] for q in plan.get("qdq", ())),
            floored=tuple(report.get("floored", ())),
            enlarged=tuple(report.get("enlarged", ())),
            notes=tuple(plan.get("notes", ())),
            calibration=calibration,
            kernels=kernels,
            runtime=runtime,
            runtime_note=runtime_note,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        return {
            "quantized_nodes": [n._asdict() for n in self.quantized_nodes],
            "float_nodes": [n._asdict() for n in self.float_nodes],
            "absorbed": [a._asdict() for a in self.absorbed],
            "qdq_tensors": list(self.qdq_tensors),
            "floored": list(self.floored),
            "enlarged": list(self.enlarged),
            "softmax_ranges": [{**r._asdict(), "calibrated": list(r.calibrated),
                                "used": list(r.used)} for r in self.softmax_ranges],
            "notes": list(self.notes),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "kernels": self.kernels.to_dict() if self.kernels else None,
            "runtime": None if self.runtime is None else {
                "level": self.runtime.level,
                "integer_ops": dict(self.runtime.integer_ops),
                "float_ops": dict(self.runtime.float_ops),
                "float_islands": [str(i) for i in self.runtime.float_islands]},
            "runtime_note": self.runtime_note,
        }

    def _runtime_lines(self) -> list[str]:
        return _runtime_summary(self)

    def __str__(self) -> str:
        total = len(self.quantized_nodes) + len(self.float_nodes)
        head = (f"Quantization: {len(self.quantized_nodes)} of {total} planned nodes in INT8, "
                f"{len(self.qdq_tensors)} Q/DQ pairs")
        lines = [head]
        known = self.runtime is not None
        bodies = any(n.graph for n in (*self.quantized_nodes, *self.float_nodes))
        where = ("graph",) if bodies else ()
        lines += _table("Quantized nodes",
                        ("node", "op", "weight axis") + where
                        + (("ONNX Runtime runs",) if known else ()),
                        [(n.node, n.op_type, "-" if n.weight_axis < 0 else n.weight_axis)
                         + ((n.graph or "main",) if bodies else ())
                         + ((n.runs_as,) if known else ()) for n in self.quantized_nodes])
        lines += _table("Float nodes",
                        ("node", "op", "reason") + where
                        + (("ONNX Runtime runs",) if known else ()),
                        [(n.node, n.op_type, n.reason)
                         + ((n.graph or "main",) if bodies else ())
                         + ((n.runs_as,) if known else ()) for n in self.float_nodes])
        lines += _table("Absorbed activations", ("node", "into"), list(self.absorbed))
        if self.floored:
            lines.append(f"Zero ranges, scale floored: {', '.join(self.floored)}")
        if self.enlarged:
            lines.append(f"Weight scales enlarged for the int32 bias: {', '.join(self.enlarged)}")
        lines += _table("Softmax output ranges (the TFLite spec's fixed [0, 255/256], scale "
                        "1/256, unless overridden)",
                        ("tensor", "node", "calibrated", "used") + where,
                        [(r.tensor, r.node, _span(r.calibrated),
                          _span(r.used) + (" fixed" if r.fixed else
                                           " calibrated (overrides output_range)"))
                         + ((r.graph or "main",) if bodies else ())
                         for r in self.softmax_ranges])
        lines += [f"Note: {n}" for n in self.notes]
        lines += self._runtime_lines()
        if self.kernels is not None:
            lines.append(str(self.kernels))
        if self.calibration is not None:
            lines.append(str(self.calibration))
        return "\n".join(lines)
