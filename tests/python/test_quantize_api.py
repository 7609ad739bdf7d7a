"""quantize(): the public pipeline, options, report, and its errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest

import onnxquant as oq
from onnxquant._model import QUANTIZED_KEY, get_metadata
from onnxquant.report import QuantizationReport


@pytest.fixture()
def calibrated(small_cnn_model, image_batches):
    model = oq.optimize_model(small_cnn_model)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(image_batches)  # iterating [40, 1, ...] gives [1, ...] samples
    return model, calibrator


def _op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph.node)


def test_pipeline_gives_a_valid_qdq_model(calibrated, image_batches, run_model):
    model, calibrator = calibrated
    before = model.SerializeToString()
    ranges = calibrator.compute_range()
    quantized = oq.quantize(model, ranges)
    assert model.SerializeToString() == before  # the input is untouched
    onnx.checker.check_model(quantized, full_check=True)
    assert _op_count(quantized, "QuantizeLinear") >= 3
    assert _op_count(quantized, "DequantizeLinear") >= 3
    assert get_metadata(quantized, QUANTIZED_KEY) == oq.__version__
    x = image_batches[:, 0]
    (want,) = run_model(model, {"image": x})
    (got,) = run_model(quantized, {"image": x})
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_report(calibrated):
    model, calibrator = calibrated
    quantized, report = oq.quantize(model, calibrator.compute_range(),
                                    calibration_report=calibrator.report, return_report=True)
    assert isinstance(quantized, onnx.ModelProto)
    assert isinstance(report, QuantizationReport)
    assert {n.op_type for n in report.quantized_nodes} >= {"Conv", "Gemm"}
    assert {n.weight_axis for n in report.quantized_nodes if n.op_type == "Conv"} == {0}
    assert report.calibration.num_samples == 40
    text = str(report)
    assert "Quantized nodes" in text and "Conv" in text and "40 samples" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["calibration"]["method"] == "MIN_MAX_ASYM"
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.floored = ()


def test_missing_range_names_the_tensor(calibrated):
    model, calibrator = calibrated
    ranges = calibrator.compute_range()
    name = calibrator.tensors[1]
    del ranges[name]
    with pytest.raises(oq.RangeMissingError, match=f"'{name}'"):
        oq.quantize(model, ranges)


def test_inverted_range_names_the_tensor(calibrated):
    model, calibrator = calibrated
    ranges = calibrator.compute_range()
    name = calibrator.tensors[0]
    ranges[name] = (1.0, -1.0)
    with pytest.raises(oq.RangeMissingError, match=f"'{name}'"):
        oq.quantize(model, ranges)


def test_ranges_must_be_pairs(calibrated):
    model, calibrator = calibrated
    ranges = calibrator.compute_range()
    ranges[calibrator.tensors[0]] = 3.0
    with pytest.raises(oq.InvalidArgumentError, match="pair of numbers"):
        oq.quantize(model, ranges)
    with pytest.raises(oq.InvalidArgumentError, match="dict"):
        oq.quantize(model, [("x", (0, 1))])


def test_already_quantized_model_is_refused(calibrated):
    model, calibrator = calibrated
    ranges = calibrator.compute_range()
    quantized = oq.quantize(model, ranges)
    with pytest.raises(oq.UnsupportedModelError, match="already quantized"):
        oq.quantize(quantized, ranges)


def test_int8_activations(calibrated):
    model, calibrator = calibrated
    quantized = oq.quantize(model, calibrator.compute_range(), activation_type="int8")
    onnx.checker.check_model(quantized, full_check=True)
    zero_points = {n.input[2] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    types = {t.data_type for t in quantized.graph.initializer if t.name in zero_points}
    assert types == {onnx.TensorProto.INT8}


def test_exclude_node_keeps_it_float(calibrated):
    model, calibrator = calibrated
    gemm = next(n.name for n in model.graph.node if n.op_type == "Gemm")
    assert gemm, "the optimized model names its nodes"
    options = oq.QuantOptions(exclude_nodes=[gemm])
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, options=options)
    calibrator.collect_data([np.zeros((1, 3, 8, 8), np.float32)])
    _, report = oq.quantize(model, calibrator.compute_range(), options=options,
                            return_report=True)
    assert gemm in {f.node for f in report.float_nodes}
    assert gemm not in {n.node for n in report.quantized_nodes}


def test_unknown_excluded_node_is_an_invalid_argument(calibrated):
    model, calibrator = calibrated
    with pytest.raises(oq.InvalidArgumentError, match="no_such_node"):
        oq.quantize(model, calibrator.compute_range(), exclude_nodes=["no_such_node"])


def test_options_dataclass():
    options = oq.QuantOptions()
    assert (options.activation_type, options.per_channel, options.exclude_nodes,
            options.op_types) == ("uint8", True, (), None)
    assert oq.QuantOptions(op_types=["Conv"]).op_types == ("Conv",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.per_channel = False
    with pytest.raises(oq.InvalidArgumentError, match="'int8' or 'int16'.*weight_type='int4'"):
        oq.QuantOptions(activation_type="int4")
    with pytest.raises(oq.InvalidArgumentError, match=r"exclude_nodes=\['conv1'\]"):
        oq.QuantOptions(exclude_nodes="conv1")
    with pytest.raises(oq.InvalidArgumentError, match="True or False"):
        oq.QuantOptions(per_channel="yes")


def test_options_and_keywords_together_are_refused(calibrated):
    model, calibrator = calibrated
    with pytest.raises(oq.InvalidArgumentError, match="per_channel"):
        oq.quantize(model, calibrator.compute_range(), options=oq.QuantOptions(),
                    per_channel=False)


@pytest.mark.parametrize("activation_type, zero_point", [("uint8", 128), ("int8", 0)])
def test_symmetric_range_gets_a_centred_zero_point(calibrated, activation_type, zero_point):
    # A _SYM range [-a, a]: scale a / 127 (float32), zero point at the middle of
    # the type, and -a, a quantize to zero point -/+ 127 exactly.
    model, calibrator = calibrated
    ranges = calibrator.compute_range(oq.CalibrationMethod.MIN_MAX_SYM)
    symmetric = {t: r for t, r in ranges.items() if r[0] < 0 and r[0] == -r[1]}
    assert symmetric, "the fixture should have a tensor with negative values"
    quantized = oq.quantize(model, ranges, activation_type=activation_type)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    checked = 0
    for node in quantized.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in symmetric:
            continue
        a = np.float32(symmetric[node.input[0]][1])
        scale, zp = inits[node.input[1]], inits[node.input[2]]
        assert scale.dtype == np.float32 and scale == a / np.float32(127)
        assert int(zp) == zero_point
        codes = np.rint(np.array([-a, a], np.float64) / np.float64(scale)) + int(zp)
        assert codes.tolist() == [zero_point - 127, zero_point + 127]
        checked += 1
    assert checked >= 1


def test_report_says_what_onnx_runtime_runs(calibrated):
    model, calibrator = calibrated
    _, report = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                            return_report=True)
    runs = {n.op_type: n.runs_as for n in report.quantized_nodes}
    assert runs["Conv"] == "QLinearConv (integer)"
    assert runs["Gemm"] == "com.microsoft:QGemm (integer)"
    assert report.runtime is not None and report.runs_float == ()
    assert "ONNX Runtime runs" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["runtime"]["level"] == "extended"


def test_sigmoid_between_quantized_tensors_runs_as_qlinear_sigmoid(sigmoid_gate_model,
                                                                   gate_samples):
    model = oq.optimize_model(sigmoid_gate_model)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(gate_samples)
    ranges = calibrator.compute_range()
    _, report = oq.quantize(model, ranges, return_report=True)
    (sigmoid,) = [n for n in report.quantized_nodes if n.op_type == "Sigmoid"]
    assert sigmoid.runs_as == "com.microsoft:QLinearSigmoid (integer)"
    assert not report.float_nodes
    # Excluded, it is float in the plan, but its neighbours still quantize both
    # sides, so ONNX Runtime fuses it anyway: the report says so.
    _, excluded = oq.quantize(model, ranges, exclude_nodes=[sigmoid.node], return_report=True)
    (kept,) = excluded.float_nodes
    assert kept.runs_as.endswith("(integer)") and excluded.runs_integer == (kept,)
    assert "Planned float but fused" in str(excluded)


@pytest.fixture()
def silu_model(parse_model):
    """MatMul, then x * sigmoid(x), then MatMul, normalised."""
    return oq.optimize_model(parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 8] x) => (float[N, 8] z) <float[8, 8] w = {%s}> {
            y = MatMul (x, w)
            s = Sigmoid (y)
            m = Mul (y, s)
            z = MatMul (m, w)
        }
    """ % ", ".join("0.1" for _ in range(64))))


def test_silu_runs_in_float(silu_model):
    model = silu_model
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 1, 8))
    _, report = oq.quantize(model, calibrator.compute_range(), return_report=True)
    assert [n.op_type for n in report.runs_float] == ["Mul"]
    assert [i.op_types for i in report.runtime.islands_on_dequantized_data] == \
        [("Sigmoid", "Mul")]


def test_quantize_silu_runs_the_silu_on_integer_kernels(silu_model):
    model = silu_model
    options = oq.QuantOptions(quantize_silu=True)  # the Sigmoid's output is calibrated too
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, options=options)
    calibrator.collect_data(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 1, 8))
    _, report = oq.quantize(model, calibrator.compute_range(), options=options,
                            calibrator=calibrator, return_report=True)
    runs = {n.op_type: n.runs_as for n in report.quantized_nodes}
    assert runs["Sigmoid"].endswith("QLinearSigmoid (integer)")
    assert runs["Mul"].endswith("QLinearMul (integer)")
    assert report.runtime.islands_on_dequantized_data == ()


def test_long_chain_of_constant_adds(run_model):
    """2 000 Adds, each with its own constant: every Add is quantized with its
    constant, and the result computes what the float chain does. (Before the
    graph index, quantize scanned the node list per planned node and per
    constant: 60 s at 2 000 nodes.)"""
    from onnx import helper, numpy_helper

    n, width = 2000, 8
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array(
            rng.uniform(-0.01, 0.01, width).astype(np.float32), f"c{i}"))
        out = "y" if i == n - 1 else f"t{i}"
        nodes.append(helper.make_node("Add", [prev, f"c{i}"], [out], name=f"add{i}"))
        prev = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # make_model writes the newest, which ONNX Runtime may not read
    model = oq.optimize_model(model)
    x = rng.standard_normal((1, width)).astype(np.float32)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data([x])
    ranges = calibrator.compute_range()
    quantized = oq.quantize(model, ranges)
    adds = [node for node in quantized.graph.node if node.op_type == "Add"]
    assert len(adds) == n
    producer = {o: node.op_type for node in quantized.graph.node for o in node.output}
    assert all(producer.get(name) == "DequantizeLinear" for node in adds for name in node.input)
    assert _op_count(quantized, "QuantizeLinear") == n + 1  # x and each Add's output
    (want,) = run_model(model, {"x": x})
    (got,) = run_model(quantized, {"x": x})
    # Each of the n requantizations adds a rounding error of standard
    # deviation scale / sqrt(12): four standard deviations of their sum.
    low, high = ranges["y"]
    scale = (max(high, 0.0) - min(low, 0.0)) / 255
    assert np.abs(got - want).max() <= 4 * np.sqrt(n / 12) * scale
