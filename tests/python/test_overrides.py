"""Per-node and per-tensor overrides of precision and method (issue 11, item 1):
the written model's types and scales, and ONNX Runtime running it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import onnxquant as oq
from onnxquant.demo import default_demo_data


@pytest.fixture(scope="module")
def demo():
    data = default_demo_data(num_calibration=100, seed=0)
    model = oq.optimize_model(data.model)
    return data, model


def _calibrate(model, data, options):
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    cal.collect_data([x[None] for x in data.calibration])
    return cal


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _pairs(model: onnx.ModelProto) -> dict[str, tuple[float, int, int]]:
    """Per activation tensor (the DQ's output): (scale, zero point, code type)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            zp = inits[n.input[2]]
            out[n.output[0]] = (float(numpy_helper.to_array(inits[n.input[1]])),
                                int(numpy_helper.to_array(zp)), zp.data_type)
    return out


def _nodes(model):
    return [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def test_tensor_override_to_int16_and_method(demo):
    data, model = demo
    plain = _calibrate(model, data, None)
    minmax, mse = plain.compute_range(), plain.compute_range("MSE_SYM")
    inputs = {i.name for i in model.graph.input}
    # A calibrated tensor inside the network whose two ranges differ.
    tensor = next(t for t in minmax if t not in inputs and minmax[t] != mse[t])
    options = oq.QuantOptions(overrides={tensor: {"activation_type": "int16",
                                                  "method": "MSE_SYM"}})
    cal = _calibrate(model, data, options)
    ranges = cal.compute_range()
    # This tensor's range comes from MSE_SYM, the others' from MIN_MAX_ASYM.
    assert ranges[tensor] == mse[tensor]
    others = [t for t in ranges if t != tensor]
    assert others and all(ranges[t] == minmax[t] for t in others)
    q = oq.quantize(model, ranges, options=options, calibrator=cal)
    pairs = _pairs(q)
    scale, zp, dtype = pairs[tensor]
    assert dtype == TensorProto.INT16
    low, high = mse[tensor]
    a = max(-low, high)
    if low < 0:  # symmetric [-a, a]: a / 32767, zero point 0
        assert zp == 0 and np.isclose(scale, a / 32767, rtol=1e-6)
    else:  # [0, a]: the type's lowest code
        assert zp == -32768 and np.isclose(scale, a / 65535, rtol=1e-6)
    assert all(pairs[t][2] == TensorProto.UINT8 for t in others if t in pairs)
    x = data.test_inputs[:500]
    ref = _run(model, x)
    assert np.mean(_run(q, x).argmax(1) == ref.argmax(1)) > 0.97


def test_node_overrides_float_and_int16(demo):
    data, model = demo
    first, second = _nodes(model)[:2]
    options = oq.QuantOptions(overrides={first.name: {"activation_type": "float"},
                                         second.name: {"activation_type": "int16"}})
    cal = _calibrate(model, data, options)
    q, report = oq.quantize(model, cal.compute_range(), options=options, calibrator=cal,
                            return_report=True)
    assert first.name in {f.node for f in report.float_nodes}
    inits = {t.name for t in q.graph.initializer}
    node = next(n for n in q.graph.node if n.name == first.name)
    assert node.input[1] in inits  # its weight stays float
    pairs = _pairs(q)
    # The tensors the int16 node reads and writes are int16.
    second_q = next(n for n in q.graph.node if n.name == second.name)
    assert pairs[second_q.input[0]][2] == TensorProto.INT16
    x = data.test_inputs[:500]
    assert np.mean(_run(q, x).argmax(1) == _run(model, x).argmax(1)) > 0.97


def test_tensor_override_float_drops_its_pair_and_keeps_bias_float(demo):
    data, model = demo
    conv = _nodes(model)[1]
    options = oq.QuantOptions(overrides={conv.input[0]: {"activation_type": "float"}})
    cal = _calibrate(model, data, options)
    q = oq.quantize(model, cal.compute_range(), options=options, calibrator=cal)
    assert conv.input[0] not in _pairs(q)
    node = next(n for n in q.graph.node if n.name == conv.name)
    producers = {o: n for n in q.graph.node for o in n.output}
    # Its weight is still int8 (a DQ), its bias float (no input scale).
    assert producers[node.input[1]].op_type == "DequantizeLinear"
    if len(node.input) > 2:
        assert node.input[2] in {t.name for t in q.graph.initializer}
    x = data.test_inputs[:200]
    assert np.mean(_run(q, x).argmax(1) == _run(model, x).argmax(1)) > 0.97


def test_node_weight_type_int4(demo):
    data, model = demo
    conv = _nodes(model)[0]
    options = oq.QuantOptions(overrides={conv.name: {"weight_type": "int4"}})
    cal = _calibrate(model, data, options)
    q = oq.quantize(model, cal.compute_range(), options=options, calibrator=cal)
    inits = {t.name: t for t in q.graph.initializer}
    int4 = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
            and inits.get(n.input[0]) is not None
            and inits[n.input[0]].data_type == TensorProto.INT4]
    assert len(int4) == 1
    producers = {o: n for n in q.graph.node for o in n.output}
    node = next(n for n in q.graph.node if n.name == conv.name)
    assert producers[node.input[1]] is int4[0] or producers[node.input[1]].name == int4[0].name
    _run(q, data.test_inputs[:10])


@pytest.mark.parametrize("overrides, match", [
    ({"no_such_thing": {"activation_type": "int16"}}, "'no_such_thing'"),
    ({"x": {"precision": "int16"}}, "precision"),
    ({"x": {"activation_type": "int3"}}, "int3"),
    ({"x": {"method": "BEST"}}, "BEST"),
])
def test_bad_overrides_are_typed_errors_naming_the_entry(demo, overrides, match):
    data, model = demo
    with pytest.raises(oq.InvalidArgumentError, match=match):
        options = oq.QuantOptions(overrides=overrides)
        oq.Calibrator(model, "MIN_MAX_ASYM", options=options)


def test_override_naming_an_unquantized_tensor(demo):
    data, model = demo
    weight = _nodes(model)[0].input[1]
    options = oq.QuantOptions(overrides={weight: {"activation_type": "int16"}})
    with pytest.raises(oq.InvalidArgumentError, match=f"'{weight}'"):
        oq.Calibrator(model, "MIN_MAX_ASYM", options=options)


def test_overrides_are_resolved_once_per_quantize(demo, monkeypatch):
    # Each resolution plans the model: quantize resolves the overrides once,
    # and the kernel remedies (target="portable") reuse that resolution.
    import importlib

    quantize_module = importlib.import_module("onnxquant.quantize")

    data, model = demo
    first = _nodes(model)[0]
    options = oq.QuantOptions(overrides={first.name: {"activation_type": "int16"}})
    cal = _calibrate(model, data, options)
    ranges = cal.compute_range()
    calls = []
    real = quantize_module.resolve_overrides

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantize_module, "resolve_overrides", counting)
    q, report = oq.quantize(model, ranges, options=options, calibrator=cal,
                            return_report=True)
    assert len(calls) == 1
    assert report.kernels is not None  # the portable check (and its remedies) ran
    # The override still holds in the written model.
    node = next(n for n in q.graph.node if n.name == first.name)
    assert _pairs(q)[node.input[0]][2] == TensorProto.INT16
