"""Mixed precision driven by sensitivity (issue 11, item 3): on a model built
with one layer that int4 weights ruin, that layer is the one promoted and the
budget is met."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq

WIDTH, LAYERS, SENSITIVE = 32, 4, 2


def _on_int4_grid(rng, rows: int, cols: int) -> np.ndarray:
    """A weight int4 per-channel quantization leaves exact: per column, codes
    in [-7, 7] times a scale, with a 7 in every column (so max|w| / 7 is the
    scale)."""
    codes = rng.integers(-7, 8, (rows, cols)).astype(np.float32)
    codes[0, :] = 7
    return codes * rng.uniform(0.02, 0.05, cols).astype(np.float32)


def _model() -> onnx.ModelProto:
    """LAYERS MatMul+Relu layers (the last without Relu); layer SENSITIVE has
    Gaussian weights with one large weight per column, so that int4's
    max|w| / 7 step rounds the others to zero."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(LAYERS):
        if i == SENSITIVE:
            w = rng.normal(0, 0.05, (WIDTH, WIDTH)).astype(np.float32)
            w[rng.integers(0, WIDTH, WIDTH), np.arange(WIDTH)] = 1.0
        else:
            w = _on_int4_grid(rng, WIDTH, WIDTH)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"layer{i}"))
        x = f"h{i}"
        if i < LAYERS - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def setup():
    model = oq.optimize_model(_model())
    x = np.abs(np.random.default_rng(1).normal(0, 1, (700, WIDTH))).astype(np.float32)
    options = oq.QuantOptions(weight_type="int4")
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    cal.collect_data([x[i:i + 1] for i in range(200)])
    held_out = x[200:]
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = s.run(None, {"x": held_out})[0].argmax(1)

    def agreement(m: onnx.ModelProto) -> float:
        """Top-1 agreement with FP32 on held-out inputs, in %."""
        q = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return 100.0 * float(np.mean(q.run(None, {"x": held_out})[0].argmax(1) == labels))

    return model, cal, [x[i:i + 1] for i in range(64)], options, agreement


@pytest.mark.parametrize("sensitivity", ["promote", "analyze"])
def test_the_sensitive_layer_is_promoted_and_the_budget_met(setup, sensitivity):
    model, cal, samples, options, agreement = setup
    result = oq.mixed_precision(model, cal, samples, agreement, budget=2.0, max_share=1.0,
                                options=options, sensitivity=sensitivity)
    _check_one_promotion(result, agreement)
    # Its input is int16 now.
    inits = {t.name: t for t in result.model.graph.initializer}
    layer = next(n for n in result.model.graph.node if n.name == f"layer{SENSITIVE}")
    producers = {o: n for n in result.model.graph.node for o in n.output}
    assert inits[producers[layer.input[0]].input[2]].data_type == TensorProto.INT16
    # The options reproduce the model.
    again = oq.quantize(model, cal.compute_range(), options=result.options, calibrator=cal)
    assert agreement(again) == result.final_metric


def test_promotion_to_int8_weights_keeps_8_bit_activations(setup):
    model, cal, samples, options, agreement = setup
    result = oq.mixed_precision(model, cal, samples, agreement, budget=2.0, max_share=1.0,
                                options=options, promote_to="int8")
    _check_one_promotion(result, agreement)
    inits = {t.name: t for t in result.model.graph.initializer}
    assert all(inits[n.input[2]].data_type == TensorProto.UINT8
               for n in result.model.graph.node if n.op_type == "QuantizeLinear")


def _check_one_promotion(result, agreement):
    # Without promotion, int4 costs far more than the budget.
    assert result.fp32_metric == 100.0
    assert result.base_metric < 90.0, result.base_metric
    assert result.budget_met and result.final_metric >= 98.0, str(result)
    assert [p.node for p in result.promoted] == [f"layer{SENSITIVE}"], str(result)
    assert result.ranking[0].node == f"layer{SENSITIVE}"
    assert "dB" in result.promoted[0].reason
    # The result model: that layer's weight is int8, the others keep int4
    # weights; ONNX Runtime ran it (the metric above).
    inits = {t.name: t for t in result.model.graph.initializer}
    layer = next(n for n in result.model.graph.node if n.name == f"layer{SENSITIVE}")
    producers = {o: n for n in result.model.graph.node for o in n.output}
    assert inits[producers[layer.input[1]].input[0]].data_type == TensorProto.INT8
    int4 = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT4]
    assert len(int4) == LAYERS - 1


def test_share_budget_without_metric_promotes_the_top_of_the_ranking(setup):
    model, cal, samples, options, _ = setup
    result = oq.mixed_precision(model, cal, samples, budget=1.0, max_share=0.25,
                                options=options)
    assert [p.node for p in result.promoted] == [f"layer{SENSITIVE}"]
    assert result.final_metric is None and result.budget_met


def test_bad_arguments_are_typed_errors(setup):
    model, cal, samples, options, agreement = setup
    with pytest.raises(oq.InvalidArgumentError, match="promote_to"):
        oq.mixed_precision(model, cal, samples, agreement, promote_to="int32")
    with pytest.raises(oq.InvalidArgumentError, match="sensitivity"):
        oq.mixed_precision(model, cal, samples, agreement, sensitivity="guess")
    with pytest.raises(oq.InvalidArgumentError, match="max_share"):
        oq.mixed_precision(model, cal, samples, agreement, max_share=1.5)


def test_a_matmul_of_two_activations_is_promoted_without_a_weight_type():
    """Attention's MatMul of two activations has no weight: its promotion
    changes activations only."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
         helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[1, 0]),
         helper.make_node("MatMul", ["h", "ht"], ["y"], name="scores")],
        "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [numpy_helper.from_array(w, "w")])
    model = oq.optimize_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = rng.normal(0, 1, (40, 4, WIDTH)).astype(np.float32)
    options = oq.QuantOptions(weight_type="int4")
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    cal.collect_data(list(x))
    result = oq.mixed_precision(model, cal, list(x[:8]), max_share=1.0, options=options)
    assert {p.node for p in result.promoted} == {"proj", "scores"}
    assert result.options.overrides["scores"] == {"activation_type": "int16"}
    assert result.options.overrides["proj"] == {"activation_type": "int16",
                                                "weight_type": "int8"}


def test_a_drop_of_exactly_the_budget_in_decimal_meets_it(setup):
    model, cal, samples, options, _ = setup

    def metric(m: onnx.ModelProto) -> float:  # 61.1 - 60.1 > 1.0 in binary
        return 60.1 if any(n.op_type == "QuantizeLinear" for n in m.graph.node) else 61.1

    result = oq.mixed_precision(model, cal, samples, metric, budget=1.0, max_share=1.0,
                                options=options)
    assert result.budget_met and not result.promoted
