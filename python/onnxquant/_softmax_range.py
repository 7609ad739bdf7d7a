"""The fixed output range of Softmax.

ONNX Runtime runs DequantizeLinear -> Softmax -> QuantizeLinear as its
``QLinearSoftmax`` kernel, which scales a table of exp values up to about
FLT_MAX / (e^5 D) (D: the length of the softmax axis) and multiplies the largest by
floor(1 / output scale): past floor(1 / scale) > e^5 D the product overflows and the
largest probabilities come out as 0 (bench/qlinear_softmax_probe.py). A calibrated
range does that wherever attention is nearly uniform (largest probability about
1 / D). The TFLite 8-bit specification fixes a Softmax's output parameters at scale
1/256 (zero point 0 in uint8, -128 in int8), which the kernel handles for every
D >= 2: every Softmax output gets the range [0, 255/256], whose 8-bit scale is
exactly 1/256, unless the options' ``overrides`` give its node
``{"output_range": "calibrated"}`` (for runtimes without that kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

import onnx

from onnxquant._graph_walk import all_nodes
from onnxquant.report import SoftmaxRange

#: [0, 255/256]: scale (255/256) / 255 = 1/256 exactly, zero point at 0.
SOFTMAX_OUTPUT_RANGE = (0.0, 255.0 / 256.0)
#: The same for a 16-bit output: [0, 65535/65536], scale 1/65536 exactly, zero point
#: -32768. The 8-bit range would clip every probability above 255/256 there.
SOFTMAX_OUTPUT_RANGE_16 = (0.0, 65535.0 / 65536.0)


def softmax_outputs(graph: onnx.GraphProto) -> dict[str, str]:
    """``{output tensor: node name}`` of every Softmax of the default domain in
    ``graph`` and its bodies."""
    return {node.output[0]: node.name for node in all_nodes(graph)
            if node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and node.output}


def with_softmax_output_ranges(
        graph: onnx.GraphProto, ranges: Mapping[str, tuple[float, float]],
        keep_calibrated: Collection[str] = (),
        sixteen_bit: Callable[[str], bool] = lambda tensor: False
        ) -> dict[str, tuple[float, float]]:
    """``ranges`` with the range of every Softmax output it holds (main graph and
    bodies) replaced by :data:`SOFTMAX_OUTPUT_RANGE`, or by
    :data:`SOFTMAX_OUTPUT_RANGE_16` where ``sixteen_bit(tensor)`` (an int16
    output), except the tensors in ``keep_calibrated``; a new dict, the others
    unchanged."""
    fixed = dict(ranges)
    for tensor in softmax_outputs(graph):
        if tensor in fixed and tensor not in keep_calibrated:
            fixed[tensor] = SOFTMAX_OUTPUT_RANGE_16 if sixteen_bit(tensor) \
                else SOFTMAX_OUTPUT_RANGE
    return fixed


def softmax_range_entries(graph: onnx.GraphProto, given: Mapping[str, tuple[float, float]],
                          used: Mapping[str, tuple[float, float]],
                          qdq: Iterable[tuple[str, str, str]],
                          keep_calibrated: Collection[str] = ()) -> tuple[SoftmaxRange, ...]:
    """The report's entry for each Softmax output whose range the quantized
    model uses: ``given`` are the ranges passed to quantize, ``used`` those
    the engine got, ``qdq`` the plan's ``(tensor, source, scope)`` triples
    (a range is used when its tensor is a source), ``keep_calibrated`` the
    outputs the overrides keep at their calibrated range."""
    scopes: dict[str, str] = {}
    for tensor, source, scope in qdq:
        if tensor == source or source not in scopes:
            scopes[source] = scope
    entries = []
    for tensor, node in softmax_outputs(graph).items():
        if tensor in scopes and tensor in given:
            entries.append(SoftmaxRange(tensor, node, tuple(given[tensor]),
                                        tuple(used[tensor]), tensor not in keep_calibrated,
                                        scopes[tensor]))
    return tuple(entries)


def calibrated_softmax_note(entries: Iterable[SoftmaxRange],
                            sixteen_bit: Callable[[str], bool] = lambda tensor: False) -> str:
    """The report's warning for 8-bit Softmax outputs kept at their calibrated
    range ("" when there are none). Outputs where ``sixteen_bit(tensor)`` are
    left out: ONNX Runtime has no 16-bit QLinearSoftmax, so it runs them as
    DequantizeLinear -> Softmax -> QuantizeLinear, which the warning's
    overflow does not reach."""
    kept = [e for e in entries if not e.fixed and not sixteen_bit(e.tensor)]
    if not kept:
        return ""
    names = ", ".join(f"'{e.tensor}' (node '{e.node}', 8-bit scale "
                      f"{(max(e.used[1], 0.0) - min(e.used[0], 0.0)) / 255:.3g})" for e in kept)
    return (f"Softmax outputs kept at their calibrated range (overrides "
            f"output_range='calibrated'): {names}. ONNX Runtime's CPU kernel QLinearSoftmax "
            "returns 0 for the largest probabilities once floor(1 / scale) exceeds e^5 times "
            "the softmax axis's length (bench/qlinear_softmax_probe.py); the default fixed "
            "range (scale 1/256) never does.")
