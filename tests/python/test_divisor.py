"""A divisor stays float: h / max(||g||, eps), as cosine attention (Swin V2)
normalises its queries and keys. Rounding a norm near zero to an 8-bit step
would make an unbounded error in the quotient; the plan keeps the nodes that
only compute a Div's divisor (here from a second input, whose rows have norms
from 0.01 to 10) in float."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq

WIDTH = 16


def _normalize_model() -> onnx.ModelProto:
    rng = np.random.default_rng(11)
    w1 = rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["s", "w2"], ["g"], name="mm2"),
        helper.make_node("ReduceL2", ["g"], ["n"], name="norm", axes=[-1], keepdims=1),
        helper.make_node("Clip", ["n", "eps"], ["c"], name="clamp"),
        helper.make_node("Expand", ["c", "shape"], ["e"], name="expand"),
        helper.make_node("Div", ["h", "e"], ["y"], name="div"),
    ]
    graph = helper.make_graph(
        nodes, "normalize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
         numpy_helper.from_array(np.array([1, WIDTH], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _samples(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x: rows of norm 4; s: rows whose norms spread log-uniformly over 0.01 to 10."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 1, (count, WIDTH))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    s *= 10 ** rng.uniform(-2, 1, (count, 1))
    x = rng.normal(0, 1, (count, WIDTH))
    x *= 4 / np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), s.astype(np.float32)


def test_divisor_nodes_stay_float_and_small_norms_keep_their_direction(run_model):
    model = oq.optimize_model(_normalize_model())
    x, s = _samples(128, 1)
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data([{"x": x[i:i + 1], "s": s[i:i + 1]} for i in range(len(x))])
    quantized, report = oq.quantize(model, calibrator.compute_range(),
                                    calibrator=calibrator, return_report=True)
    floats = {f.node: f.reason for f in report.float_nodes}
    # mm2 too: its output only makes the norm, and its output's rounding would
    # reach the divisor the same way.
    for name in ("mm2", "norm", "clamp", "expand"):
        assert "divisor of a Div" in floats.get(name, ""), (name, floats.get(name))
    assert "mm1" in {n.node for n in report.quantized_nodes}

    x, s = _samples(256, 2)
    (want,) = run_model(model, {"x": x, "s": s})
    (got,) = run_model(quantized, {"x": x, "s": s})
    # Each output row is h's row over one norm: its error relative to its own
    # size is h's rounding error, whatever the norm. A quantized norm of a
    # 0.01-norm row (step about 1/255 of the largest norm) would be off by tens
    # of percent, or zero (the quotient then infinite).
    error = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    small = np.linalg.norm(s, axis=1) < 0.1
    assert small.sum() >= 50
    assert np.isfinite(got).all()
    assert error[small].max() < 0.1, error[small].max()
    assert np.median(error[small]) < 2 * np.median(error[~small]) + 0.01
