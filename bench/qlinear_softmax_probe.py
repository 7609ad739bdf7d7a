"""ONNX Runtime's fused QLinearSoftmax against the QDQ semantics (a probe for docs/coverage.md).

ONNX Runtime fuses DequantizeLinear -> Softmax -> QuantizeLinear into its
``com.microsoft.QLinearSoftmax`` kernel. That kernel (contrib_ops/cpu/quantization/
qlinear_softmax.cc) builds a float table of exp values scaled so that D of them sum
to about FLT_MAX / e^5 (D: the length of the softmax axis), and then multiplies the
largest entry by floor(1 / y_scale) before dividing by the sum. When
floor(1 / y_scale) exceeds about D * e^5 (148 D) the product overflows to inf and
the output code is garbage (0 in practice). A Softmax output quantized over a small
range, as in a random-init transformer whose attention is nearly uniform (max
probability ~1/D), crosses that line: y_scale = max / 255.

Part 1 runs one QDQ Softmax, fused (default session options) and emulated
(``session.disable_quant_qdq``), against numpy for a few output scales and D.
Part 2 (``--models``) lists the Softmax nodes of quantized models whose output
scale crosses the line, with the axis length from ONNX shape inference.

    PYTHONPATH=python .venv/bin/python bench/qlinear_softmax_probe.py --models m.int8.onnx
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def _qdq_softmax(d: int, x_scale: float, x_zp: int, y_scale: float, y_zp: int):
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.float32 if k[0] == "s" else np.uint8), k)
              for k, v in (("sx", x_scale), ("zx", x_zp), ("sy", y_scale), ("zy", y_zp))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("Softmax", ["xd"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "softmax", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, d])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [4, d])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, x: np.ndarray, emulated: bool) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if emulated:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def probe(d: int, y_max: float, x_scale: float = 0.001, x_zp: int = 128) -> tuple[float, float]:
    """The largest error, fused and emulated, against numpy's quantized softmax."""
    rng = np.random.default_rng(0)
    y_scale = y_max / 255
    x = ((rng.integers(0, 256, (4, d)) - x_zp) * x_scale).astype(np.float32)
    xd = x.astype(np.float64)
    p = np.exp(xd - xd.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    reference = np.clip(np.round(p / np.float32(y_scale)), 0, 255) * np.float32(y_scale)
    model = _qdq_softmax(d, x_scale, x_zp, y_scale, 0)
    return (float(np.abs(_run(model, x, False) - reference).max()),
            float(np.abs(_run(model, x, True) - reference).max()))


def risky_softmaxes(path: str) -> list[str]:
    """Softmax nodes of a QDQ model whose output scale crosses 148 * D, or whose D is not
    static (then the message says below which D the kernel overflows)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    q_of = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    found = []
    for n in graph.node:
        if n.op_type != "Softmax" or n.output[0] not in q_of:
            continue
        scale = float(consts.get(q_of[n.output[0]].input[1], np.array(np.nan)).ravel()[0])
        shape = shapes.get(n.input[0]) or []
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
        d = shape[axis] if shape else None
        shortest_safe = math.floor(1 / scale) / math.exp(5)
        if d is None or d < shortest_safe:
            found.append(f"{n.name}: y_scale {scale:.3g}, overflows for D < "
                         f"{shortest_safe:.1f} (D {d or 'not static'})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[])
    args = parser.parse_args()
    print("D | output range max | 1/y_scale | limit 148 D | max error fused | emulated")
    for d in (18, 64, 197):
        for y_max in (1.0, 2.0 / d, 1.0 / d):
            fused, emulated = probe(d, y_max)
            print(f"{d} | {y_max:.4f} | {255 / y_max:.0f} | {d * math.exp(5):.0f} | "
                  f"{fused:.4f} | {emulated:.4f}", flush=True)
    for path in args.models:
        print(path, risky_softmaxes(path) or "none")


if __name__ == "__main__":
    main()
