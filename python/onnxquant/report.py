"""What calibration and quantization did: :class:`CalibrationReport` and
:class:`QuantizationReport`, immutable, printable and JSON-serialisable."""

from __future__ import annotations

import dataclasses
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
    "kernel_summary",
]


class QuantizedNode(NamedTuple):
    """A node computed in INT8. ``weight_axis`` is the per-channel axis of its
    weight, -1 for a per-tensor weight or a node without one."""

    node: str
    op_type: str
    weight_axis: int = -1


class FloatNode(NamedTuple):
    """A node left in float, and why."""

    node: str
    op_type: str
    reason: str


class AbsorbedActivation(NamedTuple):
    """A Relu/Clip removed because its producer's output range absorbs it."""

    node: str
    producer: str


class NonFiniteCount(NamedTuple):
    """NaN and +-Inf values seen in one intermediate tensor during calibration
    (left out of its statistics, not raised)."""

    tensor: str
    nan: int
    pos_inf: int
    neg_inf: int


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
    ``nonfinite``: tensors that held NaN or Inf (counts); ``degraded``: tensors
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
            "nonfinite": [c._asdict() for c in self.nonfinite],
            "degraded": list(self.degraded),
        }

    def __str__(self) -> str:
        lines = [f"Calibration: {self.num_samples} samples, {self.method}"]
        lines += _table("Tensors with NaN/Inf (left out of the statistics)",
                        ("tensor", "NaN", "+Inf", "-Inf"), list(self.nonfinite))
        if self.degraded:
            lines.append(f"Tensors without a finite value, range (0, 0): "
                         f"{', '.join(self.degraded)}")
        return "\n".join(lines)


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
        return (f"{_count(check.saturated)} of {_count(check.pair_sums)} pair sums "
                f"({share:.3g} %) saturated on {samples} samples (peak {_count(check.peak)} "
                f"> 32 767; error {check.error_ratio:.3g} x the output's rounding noise)")
    return f"could reach {_count(check.bound)} > 32 767 (no sample reached it)"


def kernel_summary(options: Any, kernels: Any) -> KernelReport:
    """The :class:`KernelReport` of a :func:`~onnxquant.quantize` call with
    these :class:`~onnxquant.QuantOptions` and kernel check result (None when
    nothing was checked)."""
    if kernels is None:
        return KernelReport(target=options.target)
    remedies = []
    for check in kernels.nodes:  # in graph order
        node = check.node
        if node not in kernels.channel_qmax:
            continue
        qmax = kernels.channel_qmax[node]
        if options.kernel_remedy == "float":
            change = "kept in float"
        elif options.kernel_remedy == "uint8_weights":
            change = "uint8 weights, zero point 128 (uint8 x uint8 kernels)"
        else:
            lowered = [q for q in qmax if q < 127]
            span = (f"{min(lowered)}" if min(lowered) == max(lowered)
                    else f"{min(lowered)}-{max(lowered)}")
            change = (f"largest weight code {span} instead of 127 on {len(lowered)} of "
                      f"{len(qmax)} channels" if len(qmax) > 1 else
                      f"largest weight code {span} instead of 127")
        remedies.append(KernelRemedy(node, check.op_type, options.kernel_remedy, change,
                                     _remedy_reason(check, kernels.samples)))
    return KernelReport(target=options.target, samples=kernels.samples,
                        checked=sum(c.kind == "pair_sums" for c in kernels.nodes),
                        remedies=tuple(remedies), checks=kernels.nodes)


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`~onnxquant.quantize` did, node by node.

    ``quantized_nodes`` and ``float_nodes`` (with the reason) cover the main
    graph; ``absorbed``: Relu/Clip folded into their producer's range;
    ``qdq_tensors``: tensors given a QuantizeLinear/DequantizeLinear pair;
    ``floored``: tensors whose zero range got a floored scale; ``enlarged``:
    weights whose scale was enlarged so the int32 bias fits; ``notes``: other
    remarks of the engine (e.g. subgraphs left in float); ``calibration``: the
    calibrator's report when it was passed to ``quantize``, else None.
    """

    quantized_nodes: tuple[QuantizedNode, ...] = ()
    float_nodes: tuple[FloatNode, ...] = ()
    absorbed: tuple[AbsorbedActivation, ...] = ()
    qdq_tensors: tuple[str, ...] = ()
    floored: tuple[str, ...] = ()
    enlarged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    calibration: CalibrationReport | None = field(default=None)
    kernels: KernelReport | None = field(default=None)

    @property
    def nonfinite(self) -> tuple[NonFiniteCount, ...]:
        """NaN/Inf counts of calibration (empty without a calibration report)."""
        return self.calibration.nonfinite if self.calibration is not None else ()

    @classmethod
    def from_native(cls, report: Mapping[str, Any],
                    calibration: CalibrationReport | None = None,
                    kernels: KernelReport | None = None) -> QuantizationReport:
        """Builds the report from the dict ``_core.quantize`` returns."""
        plan = report.get("plan", {})
        return cls(
            quantized_nodes=tuple(QuantizedNode(n["node"], n["op_type"],
                                                int(n.get("weight_axis", -1)))
                                  for n in plan.get("quantized_nodes", ())),
            float_nodes=tuple(FloatNode(*f) for f in plan.get("float_nodes", ())),
            absorbed=tuple(AbsorbedActivation(*a) for a in plan.get("absorbed", ())),
            qdq_tensors=tuple(t for t, _source in plan.get("qdq", ())),
            floored=tuple(report.get("floored", ())),
            enlarged=tuple(report.get("enlarged", ())),
            notes=tuple(plan.get("notes", ())),
            calibration=calibration,
            kernels=kernels,
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
            "notes": list(self.notes),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "kernels": self.kernels.to_dict() if self.kernels else None,
        }

    def __str__(self) -> str:
        total = len(self.quantized_nodes) + len(self.float_nodes)
        head = (f"Quantization: {len(self.quantized_nodes)} of {total} planned nodes in INT8, "
                f"{len(self.qdq_tensors)} Q/DQ pairs")
        lines = [head]
        lines += _table("Quantized nodes", ("node", "op", "weight axis"),
                        [(n.node, n.op_type, "-" if n.weight_axis < 0 else n.weight_axis)
                         for n in self.quantized_nodes])
        lines += _table("Float nodes", ("node", "op", "reason"), list(self.float_nodes))
        lines += _table("Absorbed activations", ("node", "into"), list(self.absorbed))
        if self.floored:
            lines.append(f"Zero ranges, scale floored: {', '.join(self.floored)}")
        if self.enlarged:
            lines.append(f"Weight scales enlarged for the int32 bias: {', '.join(self.enlarged)}")
        lines += [f"Note: {n}" for n in self.notes]
        if self.kernels is not None:
            lines.append(str(self.kernels))
        if self.calibration is not None:
            lines.append(str(self.calibration))
        return "\n".join(lines)
