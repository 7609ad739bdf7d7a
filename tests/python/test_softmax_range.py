"""A Softmax between quantized neighbours runs as ONNX Runtime's QLinearSoftmax, which
overflows when floor(1 / output scale) exceeds about e^5 * D (D: the softmax axis's
length) and then returns 0 for the largest probabilities. Nearly uniform attention
(largest probability about 1/D) calibrates to such a scale. The output of every
Softmax takes the TFLite spec's fixed parameters (scale 1/256) instead."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq

WIDTH, D = 16, 18


def _attention_like_model() -> onnx.ModelProto:
    """x [N, D, WIDTH] -> MatMul -> Softmax over D -> MatMul: both MatMuls have
    constant weights, so the plan quantizes the Softmax's input and output and ONNX
    Runtime fuses it. Small weights keep the logits near 0: nearly uniform rows."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(0, 0.02, (WIDTH, D)).astype(np.float32)
    w2 = rng.normal(0, 1.0, (D, WIDTH)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["logits"], name="mm1"),
             helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(
        nodes, "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, D, WIDTH])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _samples(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (1, D, WIDTH)).astype(np.float32) for _ in range(count)]


def _softmax_output_qparams(quantized: onnx.ModelProto) -> tuple[float, int]:
    consts = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    softmax = next(n for n in quantized.graph.node if n.op_type == "Softmax")
    q = next(n for n in quantized.graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0])
    return float(consts[q.input[1]]), int(consts[q.input[2]])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_nearly_uniform_softmax_runs_right_on_fused_kernels(run_model):
    model = oq.optimize_model(_attention_like_model())
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data([{"x": x} for x in _samples(16, 1)])
    ranges = calibrator.compute_range()
    # The premise: the calibrated largest probability is far below 1, a scale that
    # the fused kernel cannot take (floor(1 / scale) above e^5 * D, about 2 671).
    assert ranges["p"][1] < 0.1
    assert np.floor(255 / ranges["p"][1]) > np.exp(5) * D
    quantized, report = oq.quantize(model, ranges, calibrator=calibrator,
                                    return_report=True)
    assert "softmax" in {n.node for n in report.quantized_nodes}
    # TFLite 8-bit spec: Softmax output scale 1/256, zero point 0 (uint8).
    assert _softmax_output_qparams(quantized) == (1 / 256, 0)
    for x in _samples(4, 2):
        (want,) = run_model(model, {"x": x})
        (got,) = run_model(quantized, {"x": x})  # default options: QLinearSoftmax
        assert _cosine(got, want) > 0.99, _cosine(got, want)


def test_int8_activations_take_the_spec_zero_point():
    model = oq.optimize_model(_attention_like_model())
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data([{"x": x} for x in _samples(4, 1)])
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                            activation_type="int8")
    assert _softmax_output_qparams(quantized) == (1 / 256, -128)
