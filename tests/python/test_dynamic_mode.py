"""QuantOptions(mode="dynamic"): dynamic quantization reached through the
same paths as the static mode (quantize, quantize_model, recipes, the command
line), without calibration; ONNX Runtime runs each result, compared to FP32
and to the numpy computation of DynamicQuantizeLinear and MatMulInteger as the
ONNX specification defines them (test_dynamic's reference)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_dynamic import _check_outputs, _inputs, _model, _reference

import onnxquant as oq


@pytest.mark.parametrize("target, reduce, qmax",
                         [("portable", False, 63), ("exact", False, 127),
                          ("exact", True, 63)])
def test_quantize_in_dynamic_mode_needs_no_ranges(target, reduce, qmax):
    options = oq.QuantOptions(mode="dynamic", target=target, reduce_weight_range=reduce)
    quantized, report = oq.quantize(_model(), None, options=options, return_report=True)
    assert report.weight_qmax == qmax and len(report.quantized) == 3
    assert [n.op_type for n in quantized.graph.node].count("QuantizeLinear") == 0
    _check_outputs(quantized, qmax)
    # The keyword form is the same model.
    keyword = oq.quantize(_model(), None, mode="dynamic", target=target,
                          reduce_weight_range=reduce)
    assert keyword.SerializeToString() == quantized.SerializeToString()


def test_dynamic_mode_options_that_apply():
    options = oq.QuantOptions(mode="dynamic", op_types=["MatMul"], exclude_nodes=[],
                              quantize_activation_matmul=False, per_channel=False)
    _, report = oq.quantize(_model(), None, options=options, return_report=True)
    # Only the MatMul with a constant weight: the Gemm is not an op type
    # asked for, and the MatMul of two activations stays float.
    assert len(report.quantized) == 1
    assert any("two activations" in why for _, why in report.float_nodes)


@pytest.mark.parametrize("kwargs, name", [
    ({"activation_type": "int8"}, "activation_type"),
    ({"activation_type": "int16"}, "activation_type"),
    ({"weight_type": "int4"}, "weight_type"),
    ({"power_of_two": "ceil"}, "power_of_two"),
    ({"weight_range": "mse"}, "weight_range"),
    ({"kernel_remedy": "float"}, "kernel_remedy"),
    ({"quantize_silu": True}, "quantize_silu"),
    ({"float_outputs": False}, "float_outputs"),
    ({"masks": "saturate"}, "masks"),
    ({"overrides": {"MatMul_0": {"activation_type": "int16"}}}, "overrides"),
    ({"op_types": ["Conv"]}, "'Conv'"),
])
def test_options_meaningless_in_dynamic_mode_are_typed_errors(kwargs, name):
    with pytest.raises(oq.InvalidArgumentError, match="dynamic") as error:
        oq.QuantOptions(mode="dynamic", **kwargs)
    assert name in str(error.value)
    oq.QuantOptions(**kwargs)  # the same option is fine in static mode


def test_mode_is_checked():
    with pytest.raises(oq.InvalidArgumentError, match="mode must be"):
        oq.QuantOptions(mode="online")


def test_calibration_is_refused_or_needed_as_the_mode_says():
    model = _model()
    options = oq.QuantOptions(mode="dynamic")
    # A Calibrator has nothing to observe in dynamic mode: refused, naming
    # what to call instead.
    with pytest.raises(oq.InvalidArgumentError, match="nothing to calibrate"):
        oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    static = oq.Calibrator(model, "MIN_MAX_ASYM")
    static.collect_data([_inputs(seed) for seed in range(4)])
    with pytest.raises(oq.InvalidArgumentError, match="calibrator"):
        oq.quantize(model, static.compute_range(), options=options, calibrator=static)
    with pytest.raises(oq.InvalidArgumentError, match="mode='static'"):
        oq.quantize(model, None)


def test_quantize_model_in_dynamic_mode(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_model(), str(path))
    report = oq.quantize_model(str(path), str(out), mode="dynamic", target="exact")
    assert report.weight_qmax == 127
    _check_outputs(onnx.load(str(out)), 127)
    with pytest.raises(oq.InvalidArgumentError, match="samples"):
        oq.quantize_model(str(path), str(tmp_path / "s.onnx"))  # static needs samples


def test_recipe_in_dynamic_mode():
    recipe = oq.Recipe(options=oq.QuantOptions(mode="dynamic", target="exact"),
                       name="dynamic")
    again = oq.Recipe.from_dict(recipe.to_dict())
    assert again.options == recipe.options
    result = oq.apply_recipe(_model(), None, again)
    _check_outputs(result.model, 127)
    assert "MatMulInteger" in str(result.report)
    with pytest.raises(oq.InvalidArgumentError, match="bias_correction"):
        oq.Recipe(steps=(oq.BiasCorrection(),), options=oq.QuantOptions(mode="dynamic"))


def test_command_line_dynamic_refuses_static_flags(tmp_path):
    from onnxquant.cli import main

    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_model(), str(path))
    code = main(["quantize", str(path), "-o", str(out), "--dynamic",
                 "--activation-type", "int8", "-q"])
    assert code != 0 and not out.exists()
    assert main(["quantize", str(path), "-o", str(out), "--dynamic", "-q"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    h, z = session.run(None, _inputs())
    h_ref, z_ref = _reference(_inputs(), 63)
    np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-4 * np.abs(h_ref).max())
