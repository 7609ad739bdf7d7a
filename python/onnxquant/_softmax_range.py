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
exactly 1/256.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import onnx

#: [0, 255/256]: scale (255/256) / 255 = 1/256 exactly, zero point at 0.
SOFTMAX_OUTPUT_RANGE = (0.0, 255.0 / 256.0)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            bodies = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for body in bodies:
                yield from _nodes(body)


def with_softmax_output_ranges(
        graph: onnx.GraphProto,
        ranges: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``ranges`` with the range of every Softmax output it holds (main graph and
    bodies) replaced by :data:`SOFTMAX_OUTPUT_RANGE`; a new dict, the others
    unchanged."""
    fixed = dict(ranges)
    for node in _nodes(graph):
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx") \
                and node.output and node.output[0] in fixed:
            fixed[node.output[0]] = SOFTMAX_OUTPUT_RANGE
    return fixed
