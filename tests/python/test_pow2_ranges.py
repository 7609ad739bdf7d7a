"""Power-of-two activation scales chosen by squared error
(onnxquant.power_of_two_activation_ranges and Recipe.activation_power_of_two):
the choice against the squared error of the actual values computed here with
numpy, and the scale ONNX Runtime's model then carries."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import onnxquant as oq


def _model() -> onnx.ModelProto:
    """x [N,1,4,4] -> Conv 1x1 (weight 1, bias 0) -> y."""
    inits = [onh.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
             onh.from_array(np.zeros(1, np.float32), "b")]
    graph = oh.make_graph(
        [oh.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "one",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _error(x: np.ndarray, scale: float, zero: int = 0) -> float:
    """Squared error of uint8 codes with ``scale`` over the values themselves."""
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return float(np.sum((x - (q - zero) * scale) ** 2))


def _input_scale(quantized: onnx.ModelProto) -> float:
    inits = {t.name: onh.to_array(t) for t in quantized.graph.initializer}
    q = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] == "x")
    return float(inits[q.input[1]])


@pytest.mark.parametrize("top, lowered", [(1.01, True), (1.9, False)])
def test_the_lower_power_is_kept_where_the_values_say_so(top, lowered):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, top, size=(64, 1, 4, 4)).astype(np.float32)
    x[0, 0, 0, 0] = top  # the range's top
    options = oq.QuantOptions(per_channel=False, power_of_two="ceil")
    model = oq.optimize_model(_model())
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    cal.collect_data([x[i:i + 1] for i in range(64)])
    ranges = cal.compute_range()
    adjusted, names = oq.power_of_two_activation_ranges(cal, ranges)
    ceil = 2.0 ** np.ceil(np.log2(top / 255))
    # Which scale the values themselves prefer, independently of the histogram.
    want = _error(x, ceil / 2) < _error(x, ceil)
    assert want == lowered
    assert ("x" in names) == lowered
    plain = oq.quantize(model, ranges, options=options, calibrator=cal)
    chosen = oq.quantize(model, adjusted, options=options, calibrator=cal)
    assert _input_scale(plain) == pytest.approx(ceil)
    assert _input_scale(chosen) == pytest.approx(ceil / 2 if lowered else ceil)


def test_recipe_field_lowers_scales_and_round_trips():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 1.01, size=(32, 1, 4, 4)).astype(np.float32)
    recipe = oq.Recipe(options=oq.QuantOptions(per_channel=False, power_of_two="ceil"),
                       activation_power_of_two="mse")
    result = oq.apply_recipe(_model(), [x[i:i + 1] for i in range(32)], recipe)
    entry = result.report.techniques[-1]
    assert entry.technique == "power_of_two_activation_mse"
    assert entry.values["lowered"] >= 1
    assert _input_scale(result.model) == pytest.approx(2.0 ** -8)
    assert oq.Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(oq.InvalidArgumentError, match="activation_power_of_two"):
        oq.Recipe(activation_power_of_two="floor")
    with pytest.raises(oq.InvalidArgumentError, match="activation_type"):
        oq.power_of_two_activation_ranges(None, {}, activation_type="fp8")
