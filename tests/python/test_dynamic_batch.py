"""A dynamic batch stays dynamic through optimize_model's opset conversion;
where it cannot, a FixedShapeWarning and the quantization report say so and
name input_shapes= as the remedy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxquant as oq
from onnxquant._model import get_metadata
from onnxquant.optimize import FIXED_INPUTS_KEY

_W = ", ".join(f"{(i % 7 - 3) / 7:.4f}" for i in range(48 * 10))

# Opset 11, dynamic batch, the batch read back by Shape -> Gather for a Reshape
# (a flatten that keeps the batch), then a MatMul and a Softmax (12 -> 13).
FLATTEN_BY_SHAPE = f"""
<ir_version: 6, opset_import: ["" : 11]>
g (float[N, 3, 4, 4] x) => (float[N, 10] y)
<float[48, 10] w = {{{_W}}}, int64[1] zero = {{0}}, int64[1] minus_one = {{-1}}> {{
    s = Shape(x)
    n = Gather<axis = 0>(s, zero)
    target = Concat<axis = 0>(n, minus_one)
    f = Reshape(x, target)
    h = MatMul(f, w)
    y = Softmax<axis = 1>(h)
}}
"""

# Declares a dynamic batch, but a constant Reshape target hard-codes batch 1
# (as some exporters write), beside a Shape chain: it runs only at batch 1.
HARD_CODED_BATCH = """
<ir_version: 6, opset_import: ["" : 11]>
g (float[N, 4, 3] x) => (float[1, 12] y)
<int64[1] zero = {0}, int64[1] twelve = {12}, int64[2] one_row = {1, 12}> {
    s = Shape(x)
    n = Gather<axis = 0>(s, zero)
    target = Concat<axis = 0>(n, twelve)
    flat = Reshape(x, target)
    row = Reshape(flat, one_row)
    y = Softmax<axis = 1>(row)
}
"""


def _dims(model: onnx.ModelProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_dynamic_batch_survives_conversion_and_quantization(parse_model, run_model):
    model = parse_model(FLATTEN_BY_SHAPE)
    optimized = oq.optimize_model(model)  # no warning: pytest turns one into an error
    assert _dims(optimized) == ["N", 3, 4, 4]
    assert get_metadata(optimized, FIXED_INPUTS_KEY) is None
    rng = np.random.default_rng(0)
    calibrator = oq.Calibrator(optimized, "MIN_MAX_ASYM")
    calibrator.collect_data([rng.random((1, 3, 4, 4), dtype=np.float32) for _ in range(8)])
    quantized, report = oq.quantize(optimized, calibrator.compute_range(),
                                    calibrator=calibrator, return_report=True)
    assert not any("fixed" in note for note in report.notes)
    x = rng.random((4, 3, 4, 4), dtype=np.float32)  # failed in ORT at batch 4 before
    (want,), (got,) = run_model(model, {"x": x}), run_model(quantized, {"x": x})
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, want, atol=0.05)


def test_batch_that_cannot_stay_dynamic_is_fixed_with_a_warning(parse_model):
    model = parse_model(HARD_CODED_BATCH)
    with pytest.warns(oq.FixedShapeWarning) as record:
        optimized = oq.optimize_model(model)
    message = str(record[0].message)
    assert "optimize_model fixed input 'x' to [1, 4, 3] (declared ['N', 4, 3])" in message
    assert "input_shapes={'x': (B, 4, 3)}" in message
    assert _dims(optimized) == [1, 4, 3]
    assert json.loads(get_metadata(optimized, FIXED_INPUTS_KEY)) == {
        "x": {"declared": ["N", 4, 3], "fixed": [1, 4, 3]}}
    calibrator = oq.Calibrator(optimized, "MIN_MAX_ASYM")
    calibrator.collect_data([np.ones((1, 4, 3), np.float32)])
    _, report = oq.quantize(optimized, calibrator.compute_range(), calibrator=calibrator,
                            return_report=True)
    (note,) = [n for n in report.notes if "optimize_model fixed" in n]
    assert "input 'x' to [1, 4, 3]" in note and "input_shapes=" in note
    assert note in str(report) and note in report.to_dict()["notes"]


def test_input_shapes_fix_the_batch_without_a_warning(parse_model):
    model = parse_model(FLATTEN_BY_SHAPE)
    optimized = oq.optimize_model(model, input_shapes={"x": (2, 3, 4, 4)})
    assert _dims(optimized) == [2, 3, 4, 4]
    assert get_metadata(optimized, FIXED_INPUTS_KEY) is None


def test_batch_independent_shape_values_are_still_folded(parse_model, run_model):
    model = parse_model("""
        <ir_version: 6, opset_import: ["" : 11]>
        g (float[N, 4, 3] x) => (float[N, 12] y)
        <int64[1] zero = {0}, int64[1] one = {1}, int64[1] two = {2}> {
            s = Shape(x)
            n = Gather<axis = 0>(s, zero)
            c = Gather<axis = 0>(s, one)
            d = Gather<axis = 0>(s, two)
            cd = Mul(c, d)
            target = Concat<axis = 0>(n, cd)
            flat = Reshape(x, target)
            y = Softmax<axis = 1>(flat)
        }
    """)
    optimized = oq.optimize_model(model)
    ops = [n.op_type for n in optimized.graph.node]
    assert "Mul" not in ops and ops.count("Gather") == 1  # 4 * 3 folded to 12
    assert _dims(optimized) == ["N", 4, 3]
    x = np.random.default_rng(2).random((5, 4, 3), dtype=np.float32)
    np.testing.assert_allclose(run_model(optimized, {"x": x})[0],
                               run_model(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,match", [
    ("abc", r"input_shapes\['x'\] must be a sequence of ints, got 'abc'"),
    ((0, 3, 4, 4), r"input_shapes\['x'\] = \[0, 3, 4, 4\] has a dim below 1"),
])
def test_malformed_input_shapes_are_invalid_arguments(parse_model, shape, match):
    with pytest.raises(oq.InvalidArgumentError, match=match):
        oq.optimize_model(parse_model(FLATTEN_BY_SHAPE), input_shapes={"x": shape})
