"""int4 weights (issue 11, item 1): per channel and blockwise, checked against
an independent numpy fake-quant reference and run by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq
from onnxquant.demo import default_demo_data

K, HIDDEN, OUT = 64, 48, 10


def _mlp(opset: int = 13) -> onnx.ModelProto:
    """x[N, 64] -> MatMul W1 -> Relu -> MatMul W2 -> y[N, 10]."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.2, (K, HIDDEN)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (HIDDEN, OUT)).astype(np.float32)
    # A few large weights make per-channel scales coarse for their column:
    # blocks keep the rest of the column fine.
    w1[3, :] *= 6.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="module")
def mlp():
    model = oq.optimize_model(_mlp())
    x = np.random.default_rng(4).normal(0, 1, (300, K)).astype(np.float32)
    # The output y quantized too (float_outputs=False), as the numpy reference has it.
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=oq.QuantOptions(float_outputs=False))
    cal.collect_data([x[i:i + 1] for i in range(200)])
    return model, cal, x[200:]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _uint8(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fake uint8 quantization of x for the range [low, high] (widened to 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = np.float32((high - low) / 255.0)
    zp = np.clip(np.round(-low / scale), 0, 255)
    return ((np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)


def _int4_columns(w: np.ndarray, rows: int | None) -> np.ndarray:
    """Fake int4 ([-7, 7]) quantization of a [K, N] weight: one scale per
    column (rows=None) or per block of `rows` rows of a column."""
    out = np.empty_like(w)
    step = rows or w.shape[0]
    for start in range(0, w.shape[0], step):
        block = w[start:start + step]
        scale = (np.abs(block).max(axis=0) / 7.0).astype(np.float32)
        scale[scale == 0] = 1.0
        out[start:start + step] = np.clip(np.round(block / scale), -7, 7) * scale
    return out


def _reference(model: onnx.ModelProto, ranges, x: np.ndarray, rows: int | None) -> np.ndarray:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    xq = _uint8(x, *ranges["x"])
    h = np.maximum(xq @ _int4_columns(inits["w1"], rows), 0.0)
    hq = _uint8(h, *ranges["r"])
    return _uint8(hq @ _int4_columns(inits["w2"], rows), *ranges["y"])


def _weight_dqs(q: onnx.ModelProto):
    inits = {t.name: t for t in q.graph.initializer}
    return [(n, inits[n.input[0]], inits[n.input[1]]) for n in q.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == TensorProto.INT4]


@pytest.mark.parametrize("block_size", [0, 16])
def test_int4_weights_match_a_numpy_reference(mlp, block_size):
    model, cal, x = mlp
    ranges = cal.compute_range()
    q = oq.quantize(model, ranges, weight_type="int4", block_size=block_size, calibrator=cal,
                    float_outputs=False)
    assert oq._opset.default_opset(q) == 21  # converted up for INT4
    dqs = _weight_dqs(q)
    assert len(dqs) == 2
    for node, codes, scale in dqs:
        values = numpy_helper.to_array(codes)
        assert values.min() >= -7 and values.max() <= 7
        assert len(np.unique(values)) > 8  # the codes use the range
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if block_size:
            assert attrs["block_size"] == block_size and attrs["axis"] == 0
            rows = codes.dims[0]
            assert list(scale.dims) == [-(-rows // block_size), codes.dims[1]]
        else:
            assert "block_size" not in attrs and list(scale.dims) == [codes.dims[1]]
    got = _run(q, x)
    want = _reference(model, ranges, x, block_size or None)
    out_step = (max(ranges["y"][1], 0) - min(ranges["y"][0], 0)) / 255.0
    # Float summation order may move a value across a rounding boundary:
    # at most one step of the output, rarely.
    diff = np.abs(got - want)
    assert diff.max() <= 1.01 * out_step, (diff.max(), out_step)
    assert np.mean(diff > 0.5 * out_step) < 0.02
    # And the reference is not trivially close to FP32 (int4 costs accuracy).
    fp32 = _run(model, x)
    assert np.abs(want - fp32).mean() > 2 * np.abs(got - want).mean()


def test_blockwise_beats_per_channel_on_an_outlier_row(mlp):
    model, cal, x = mlp
    ranges = cal.compute_range()
    fp32 = _run(model, x)
    errors = {}
    for block in (0, 16):
        q = oq.quantize(model, ranges, weight_type="int4", block_size=block, calibrator=cal)
        errors[block] = float(np.mean((_run(q, x) - fp32) ** 2))
    assert errors[16] < 0.8 * errors[0], errors


def test_int4_conv_and_gemm_per_channel_keep_accuracy_on_real_data():
    data = default_demo_data(num_calibration=200, seed=0)
    model = oq.optimize_model(data.model)
    cal = oq.Calibrator(model, "MIN_MAX_ASYM")
    cal.collect_data([x[None] for x in data.calibration])
    q = oq.quantize(model, cal.compute_range(), weight_type="int4", calibrator=cal)
    ops = {n.op_type for n in q.graph.node}
    assert {"Conv", "Gemm"} & ops
    dqs = _weight_dqs(q)
    assert len(dqs) >= 3
    for _, codes, scale in dqs:
        values = numpy_helper.to_array(codes)
        assert values.min() >= -7 and values.max() <= 7
        assert len(scale.dims) == 1 and scale.dims[0] > 1  # per channel
    x, y = data.test_inputs[:2000], data.test_labels[:2000]
    fp32 = float(np.mean(_run(model, x).argmax(1) == y))
    int4 = float(np.mean(_run(q, x).argmax(1) == y))
    assert int4 >= fp32 - 0.03, (fp32, int4)


def test_int4_options_are_checked():
    with pytest.raises(oq.InvalidArgumentError, match="weight_type"):
        oq.QuantOptions(weight_type="int2")
    with pytest.raises(oq.InvalidArgumentError, match="block_size"):
        oq.QuantOptions(weight_type="int4", block_size=1)
    with pytest.raises(oq.InvalidArgumentError, match="block_size"):
        oq.QuantOptions(block_size=32)


def test_int4_conversion_names_the_converters_new_nodes():
    """ReduceMean's axes become an input at opset 18: the converter adds
    Constant nodes, which must get unique names for the plan."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.3, (K, HIDDEN)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("ReduceMean", ["h"], ["m1"], name="mean1", axes=[1]),
         helper.make_node("ReduceMean", ["x"], ["m2"], name="mean2", axes=[1]),
         helper.make_node("Add", ["m1", "m2"], ["y"], name="add")],
        "means", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w")])
    model = oq.optimize_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = rng.normal(0, 1, (64, K)).astype(np.float32)
    cal = oq.Calibrator(model, "MIN_MAX_ASYM")
    cal.collect_data([x[i:i + 1] for i in range(64)])
    q = oq.quantize(model, cal.compute_range(), weight_type="int4", calibrator=cal)
    names = [n.name for n in q.graph.node]
    assert len(names) == len(set(names)) and all(names)
    want, got = _run(model, x), _run(q, x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
