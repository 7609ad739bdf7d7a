"""Quantization modes beyond the default (issue 11, item 1): power-of-two
scales and int16 activations, each run by ONNX Runtime on real data."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxquant as oq
from onnxquant.demo import default_demo_data

pytestmark = pytest.mark.smoke  # also run at the lower bounds (scripts/test_lower_bounds.sh)


@pytest.fixture(scope="module")
def demo():
    data = default_demo_data(num_calibration=200, seed=0)
    model = oq.optimize_model(data.model)
    cal = oq.Calibrator(model, "MIN_MAX_ASYM")
    cal.collect_data([x[None] for x in data.calibration])
    return data, model, cal


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 256]})[0]
                           for i in range(0, len(x), 256)])


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def _scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every Q/DQ node's scale, by node name."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


def _is_power_of_two(values: np.ndarray) -> bool:
    return all(v > 0 and math.frexp(float(v))[0] == 0.5 for v in np.ravel(values))


@pytest.mark.parametrize("rule", ["ceil", "mse"])
def test_per_tensor_power_of_two_scales_run_and_keep_accuracy(demo, rule):
    data, model, cal = demo
    ranges = cal.compute_range("MIN_MAX_SYM")
    q = oq.quantize(model, ranges, per_channel=False, power_of_two=rule, calibrator=cal)
    scales = _scales(q)
    assert len(scales) > 10
    for name, s in scales.items():
        assert _is_power_of_two(s), (name, s)
        # Per tensor: one scale per weight too (the bias's is their product).
        assert np.size(s) == 1, (name, s)
    x, y = data.test_inputs[:2000], data.test_labels[:2000]
    fp32 = _top1(_run(model, x), y)
    pow2 = _top1(_run(q, x), y)
    assert pow2 >= fp32 - 1.5, (fp32, pow2)


def test_power_of_two_per_channel_weights(demo):
    data, model, cal = demo
    q = oq.quantize(model, cal.compute_range(), power_of_two="ceil", calibrator=cal)
    per_channel = [s for s in _scales(q).values() if np.size(s) > 1]
    assert per_channel and all(_is_power_of_two(s) for s in per_channel)


def test_int16_activations_run_and_track_fp32_closer_than_uint8(demo):
    data, model, cal = demo
    ranges = cal.compute_range()
    q16, report = oq.quantize(model, ranges, activation_type="int16", calibrator=cal,
                              return_report=True)
    q8 = oq.quantize(model, ranges, calibrator=cal)
    act = [n for n in q16.graph.node if n.op_type == "QuantizeLinear"]
    assert act and all(n.domain == "com.microsoft" for n in act)
    assert any(o.domain == "com.microsoft" for o in q16.opset_import)
    inits = {t.name: t for t in q16.graph.initializer}
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.INT16 for n in act)
    # No 16-bit integer kernels: the kernel check has nothing to change.
    assert not report.kernels.remedies
    x, y = data.test_inputs[:1000], data.test_labels[:1000]
    ref, out16, out8 = _run(model, x), _run(q16, x), _run(q8, x)
    err16 = float(np.mean((out16 - ref) ** 2))
    err8 = float(np.mean((out8 - ref) ** 2))
    # The int8 weights' rounding remains; the activations' is nearly gone.
    assert err16 < 0.6 * err8, (err16, err8)
    assert _top1(out16, y) >= _top1(ref, y) - 0.2


def test_bad_power_of_two_is_a_typed_error():
    with pytest.raises(oq.InvalidArgumentError, match="power_of_two"):
        oq.QuantOptions(power_of_two="floor")
