"""High-bias absorption (onnxquant.recovery.absorb_high_bias and the recipe
field): the amounts against numpy statistics of the pre-activations that ONNX
Runtime computes, the function against ONNX Runtime running the original
model, and the typed errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant import recovery


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _model(seed: int = 0) -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv a (3->6, pad 1; biases near +5) -> Relu -> Conv b
    (6->4, 3x3, no padding) -> y [N,4,6,6]."""
    rng = np.random.default_rng(seed)
    inits = [
        onh.from_array((rng.normal(size=(6, 3, 3, 3)) * 0.1).astype(np.float32), "wa"),
        onh.from_array((5.0 + 0.5 * rng.normal(size=6)).astype(np.float32), "ba"),
        onh.from_array(rng.normal(size=(4, 6, 3, 3)).astype(np.float32), "wb"),
        onh.from_array(rng.normal(size=4).astype(np.float32), "bb"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        oh.make_node("Conv", ["ra", "wb", "bb"], ["y"], name="conv_b"),
    ]
    graph = oh.make_graph(nodes, "hba",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                     ["N", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                     ["N", 4, 6, 6])],
                          inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def _pre_activation(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, None))
    return _session(probe).run(["a"], {"x": x})[0]


def test_amounts_are_mean_less_three_std_and_the_function_is_kept_above_them():
    model = oq.optimize_model(_model())
    cal = _x(64, 1)
    out, record = recovery.absorb_high_bias(model, [cal[i:i + 1] for i in range(64)])
    a = _pre_activation(model, cal)
    want = np.maximum(a.mean(axis=(0, 2, 3)) - 3 * a.std(axis=(0, 2, 3)), 0)
    assert record.candidates == 1
    np.testing.assert_allclose(record.amounts["conv_a"], want, rtol=1e-4, atol=1e-5)
    assert want.min() > 1.0  # biases near +5: something to absorb on every channel
    before = {t.name: onh.to_array(t) for t in model.graph.initializer}
    after = {t.name: onh.to_array(t) for t in out.graph.initializer}
    np.testing.assert_allclose(after["ba"], before["ba"] - want, rtol=1e-4, atol=1e-4)
    # Test images whose pre-activations all stay above the amounts give the same output.
    x = _x(64, 2) * 0.5  # nearer the means: most images stay above
    above = np.all(_pre_activation(model, x) >= want[None, :, None, None], axis=(1, 2, 3))
    assert above.sum() >= 32
    y0 = _session(model).run(None, {"x": x[above]})[0]
    y1 = _session(out).run(None, {"x": x[above]})[0]
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    # The activation's range (what its per-tensor scale covers) shrank by the amounts.
    assert np.maximum(_pre_activation(out, x), 0).max() < \
        np.maximum(_pre_activation(model, x), 0).max() - want.min() + 1e-4


def test_inputs_far_below_the_mean_change_the_output():
    model = oq.optimize_model(_model())
    cal = _x(32, 1)
    out, _ = recovery.absorb_high_bias(model, [cal[i:i + 1] for i in range(32)])
    x = _x(8, 3) * 30  # pre-activations far below mean - 3 std on some channels
    y0 = _session(model).run(None, {"x": x})[0]
    y1 = _session(out).run(None, {"x": x})[0]
    assert np.abs(y1 - y0).max() > 1e-2 * np.abs(y0).max()


def test_recipe_field_runs_it_after_equalization_and_reports_it():
    recipe = oq.Recipe(steps=(oq.CrossLayerEqualization(absorb_high_bias=True),))
    cal = _x(32, 1)
    result = oq.apply_recipe(_model(), [cal[i:i + 1] for i in range(32)], recipe)
    kinds = [t.technique for t in result.report.techniques]
    assert kinds == ["cross_layer_equalization", "high_bias_absorption"]
    assert result.report.techniques[1].values["chains"] == 1
    assert oq.Recipe.from_dict(recipe.to_dict()) == recipe
    y = _session(result.model).run(None, {"x": cal})[0]
    ref = _session(_model()).run(None, {"x": cal})[0]
    assert np.sqrt(np.mean((y - ref) ** 2)) < 0.05 * np.std(ref)


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(oq.InvalidArgumentError, match="sigmas"):
        recovery.absorb_high_bias(_model(), [_x(1, 1)], sigmas=-1.0)
    with pytest.raises(oq.CalibrationDataError):
        recovery.absorb_high_bias(_model(), [])
    with pytest.raises(oq.InvalidArgumentError, match="high_bias_sigmas"):
        oq.Recipe(steps=(oq.CrossLayerEqualization(high_bias_sigmas=float("nan")),))
