"""A Softmax between quantized neighbours runs as ONNX Runtime's QLinearSoftmax, which
overflows when floor(1 / output scale) exceeds about e^5 * D (D: the softmax axis's
length) and then returns 0 for the largest probabilities. Nearly uniform attention
(largest probability about 1/D) calibrates to such a scale. The output of every
Softmax takes the TFLite spec's fixed parameters (scale 1/256) instead."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq
from onnxquant.analyze import analyze
from onnxquant.errors import InvalidArgumentError

WIDTH, D = 16, 18


def _attention_like_model(softmax_is_output: bool = False,
                          logit_scale: float = 0.02) -> onnx.ModelProto:
    """x [N, D, WIDTH] -> MatMul -> Softmax over D -> MatMul: both MatMuls have
    constant weights, so the plan quantizes the Softmax's input and output and ONNX
    Runtime fuses it. Small weights keep the logits near 0: nearly uniform rows.
    ``softmax_is_output``: the Softmax's output is the graph output (no second
    MatMul), so the plan keeps the Softmax float. ``logit_scale``: the spread
    of the first weight (large: confident rows, largest probability near 1)."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(0, logit_scale, (WIDTH, D)).astype(np.float32)
    w2 = rng.normal(0, 1.0, (D, WIDTH)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["logits"], name="mm1"),
             helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "w2"], ["y"], name="mm2")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, D, WIDTH])
    weights = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    if softmax_is_output:
        nodes, weights = nodes[:2], weights[:1]
        output = helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, D, D])
    graph = helper.make_graph(
        nodes, "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D, WIDTH])],
        [output], weights)
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


@pytest.mark.parametrize("how", ["activation_type", "override"])
def test_int16_output_keeps_probabilities_near_one(run_model, how):
    # Confident rows: largest probabilities above 255/256, which the 8-bit fixed
    # range would clip. A 16-bit output takes [0, 65535/65536]: scale 1/65536.
    model = oq.optimize_model(_attention_like_model(logit_scale=3.0))
    samples = _samples(8, 1)
    options = oq.QuantOptions(activation_type="int16") if how == "activation_type" else \
        oq.QuantOptions(overrides={"softmax": {"activation_type": "int16"}})
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    calibrator.collect_data([{"x": x} for x in samples])
    ranges = calibrator.compute_range()
    assert ranges["p"][1] > 255 / 256  # the premise: confident rows
    quantized = oq.quantize(model, ranges, calibrator=calibrator, options=options)
    scale, zero_point = _softmax_output_qparams(quantized)
    assert (scale, zero_point) == (1 / 65536, -32768)
    # The dequantized probabilities, read after the Softmax's Q/DQ pair, match
    # the softmax of what the Softmax read to the 16-bit step, the largest ones
    # included (the 8-bit fixed range would cut them to 255/256).
    softmax = next(n for n in quantized.graph.node if n.op_type == "Softmax")
    q = next(n for n in quantized.graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0])
    dq = next(n for n in quantized.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    probed = _with_output(_with_output(quantized, softmax.input[0]), dq.output[0])
    logits, got = run_model(probed, {"x": samples[0]})[-2:]
    logits = logits.astype(np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert expected.max() > 255 / 256 + 1 / 512
    assert np.max(np.abs(got - expected)) <= 1 / 65536


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def _calibrated(count: int = 4):
    model = oq.optimize_model(_attention_like_model())
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data([{"x": x} for x in _samples(count, 1)])
    return model, calibrator


_OPT_OUT = {"softmax": {"output_range": "calibrated"}}


def test_report_lists_the_fixed_range_and_the_calibrated_one():
    model, calibrator = _calibrated()
    ranges = calibrator.compute_range()
    # compute_range reports what calibration observed: the largest probability.
    assert ranges["p"][1] == pytest.approx(float(calibrator.statistics()["p"]["max"]))
    _, report = oq.quantize(model, ranges, calibrator=calibrator, return_report=True)
    (entry,) = report.softmax_ranges
    assert (entry.tensor, entry.node, entry.fixed, entry.graph) == ("p", "softmax", True, "")
    assert entry.calibrated == ranges["p"]
    assert entry.used == (0.0, 255 / 256)
    text = str(report)
    assert "Softmax output ranges" in text and "[0, 0.9961] fixed" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["softmax_ranges"] == [{"tensor": "p", "node": "softmax",
                                       "calibrated": list(ranges["p"]),
                                       "used": [0.0, 255 / 256], "fixed": True, "graph": ""}]


def test_ranges_from_elsewhere_take_the_fixed_range_too():
    model, calibrator = _calibrated()
    ranges = {**calibrator.compute_range(), "p": (0.0, 0.5)}  # e.g. a file's
    quantized, report = oq.quantize(model, ranges, return_report=True)
    assert _softmax_output_qparams(quantized) == (1 / 256, 0)
    assert report.softmax_ranges[0].calibrated == (0.0, 0.5)


def test_opt_out_keeps_the_calibrated_scale():
    model, calibrator = _calibrated()
    ranges = calibrator.compute_range()
    options = oq.QuantOptions(overrides=_OPT_OUT)
    quantized, report = oq.quantize(model, ranges, options=options, calibrator=calibrator,
                                    return_report=True)
    low, high = ranges["p"]
    want = np.float32((np.float64(max(high, 0.0)) - min(low, 0.0)) / 255)
    scale, zero_point = _softmax_output_qparams(quantized)
    assert scale == pytest.approx(float(want), rel=1e-6) and zero_point == 0
    assert scale < 1 / 256 / 10
    (entry,) = report.softmax_ranges
    assert not entry.fixed and entry.used == entry.calibrated == ranges["p"]
    assert any("output_range='calibrated'" in n and "'p'" in n and "QLinearSoftmax" in n
               for n in report.notes)
    # What the opt-out is for: a runtime that runs the QDQ model as written
    # (here ONNX Runtime with the Q/DQ emulated in float) gets the finer scale.
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(quantized.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    for x in _samples(2, 2):
        (want_y,) = _run_float(model, x)
        (got,) = session.run(None, {"x": x})
        assert _cosine(got, want_y) > 0.99


def test_opt_out_of_a_16_bit_output_gives_no_8_bit_warning():
    # The warning is about ONNX Runtime's 8-bit QLinearSoftmax: a 16-bit output
    # kept at its calibrated range runs as DQ -> Softmax -> Q, and the report
    # does not warn about it (nor call its scale 8-bit).
    model = oq.optimize_model(_attention_like_model())
    options = oq.QuantOptions(overrides={"softmax": {"output_range": "calibrated",
                                                     "activation_type": "int16"}})
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    calibrator.collect_data([{"x": x} for x in _samples(4, 1)])
    ranges = calibrator.compute_range()
    quantized, report = oq.quantize(model, ranges, options=options, calibrator=calibrator,
                                    return_report=True)
    (entry,) = report.softmax_ranges
    assert not entry.fixed and entry.used == ranges["p"]
    scale, _ = _softmax_output_qparams(quantized)
    assert scale < 1 / 65536 * 4  # a 16-bit scale, from the calibrated range
    assert not any("QLinearSoftmax" in n or "8-bit scale" in n for n in report.notes)
    # The same opt-out in 8 bits still warns.
    eight = oq.QuantOptions(overrides=_OPT_OUT)
    _, report8 = oq.quantize(model, ranges, options=eight, calibrator=calibrator,
                             return_report=True)
    assert any("8-bit scale" in n and "'p'" in n for n in report8.notes)


def _run_float(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_explicit_fixed_is_the_default():
    model, calibrator = _calibrated()
    options = oq.QuantOptions(overrides={"softmax": {"output_range": "fixed"}})
    quantized = oq.quantize(model, calibrator.compute_range(), options=options)
    assert _softmax_output_qparams(quantized) == (1 / 256, 0)


@pytest.mark.parametrize("overrides, words", [
    ({"softmax": {"output_range": "observed"}}, ["overrides['softmax']['output_range']",
                                                  "'fixed'", "'calibrated'", "'observed'"]),
    ({"mm1": {"output_range": "calibrated"}}, ["node 'mm1' (MatMul)", "Softmax node"]),
    ({"p": {"output_range": "calibrated"}}, ["tensor 'p'", "node 'softmax'", "name the node"]),
])
def test_output_range_errors_name_the_entry(overrides, words):
    model, calibrator = _calibrated()
    with pytest.raises(InvalidArgumentError) as e:
        oq.quantize(model, calibrator.compute_range(),
                    options=oq.QuantOptions(overrides=overrides))
    for word in words:
        assert word in str(e.value), str(e.value)
    with pytest.raises(InvalidArgumentError):  # the Calibrator checks them too
        oq.Calibrator(model, "MIN_MAX_ASYM", options=oq.QuantOptions(overrides=overrides))


def test_output_range_on_a_float_softmax_is_refused():
    model = oq.optimize_model(_attention_like_model(softmax_is_output=True))
    with pytest.raises(InvalidArgumentError, match="Softmax node 'softmax', whose output "
                                                   "the plan does not quantize"):
        oq.Calibrator(model, "MIN_MAX_ASYM", options=oq.QuantOptions(overrides=_OPT_OUT))


def test_analyze_shows_the_range_used():
    model, calibrator = _calibrated(8)
    ranges = calibrator.compute_range()
    samples = [{"x": x} for x in _samples(4, 3)]
    fixed = analyze(model, oq.quantize(model, ranges), samples, calibrator=calibrator,
                    methods=["MIN_MAX_ASYM"], warn=False).record("p")
    assert fixed.fixed_range and (fixed.low, fixed.high) == (0.0, 255 / 256)
    # The method's range is what calibration gave, shown beside the one used.
    assert fixed.method_ranges["MIN_MAX_ASYM"] == ranges["p"]
    kept = analyze(model, oq.quantize(model, ranges, overrides=_OPT_OUT), samples,
                   calibrator=calibrator, methods=["MIN_MAX_ASYM"], warn=False).record("p")
    assert not kept.fixed_range
    assert kept.high == pytest.approx(ranges["p"][1], rel=1e-5)


def test_analyze_remedy_for_a_clipping_fixed_range_is_the_override():
    """Confident rows put probabilities above 255/256, which the fixed range
    clips; no calibration method changes that range, so the remedy names the
    override, not a method."""
    model = oq.optimize_model(_attention_like_model(logit_scale=3.0))
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    samples = [{"x": x} for x in _samples(8, 1)]
    calibrator.collect_data(samples)
    probabilities = np.concatenate([_probabilities(model, s["x"]) for s in samples])
    above = float(np.mean(probabilities > 255 / 256 + 1 / 512))
    assert above > 0.01  # the premise: more than analyze's default clip_limit
    quantized = oq.quantize(model, calibrator.compute_range())
    record = analyze(model, quantized, samples, calibrator=calibrator, warn=False).record("p")
    assert record.fixed_range and "clips" in record.flags
    assert record.clipped == pytest.approx(above, abs=0.01)
    assert record.remedy_methods == ()
    assert "{'softmax': {'output_range': 'calibrated'}}" in record.remedy
    assert "exclude_nodes=['mm2', 'softmax']" in record.remedy


def _probabilities(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The Softmax's output p, computed here from the model's weight."""
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    logits = x.astype(np.float64) @ w1.astype(np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).ravel()


def test_power_of_two_ranges_leave_a_fixed_softmax_output_alone():
    # Rows confident enough that the power-of-two search would lower the output's
    # top (as it does under the opt-out); with the fixed range, quantize replaces
    # that range anyway, so it is neither changed nor counted as lowered.
    model = oq.optimize_model(_attention_like_model(logit_scale=1.0))
    lowered_by_options = {}
    for label, options in (("fixed", None), ("calibrated", oq.QuantOptions(overrides=_OPT_OUT))):
        calibrator = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
        calibrator.collect_data([{"x": x} for x in _samples(16, 1)])
        ranges = calibrator.compute_range()
        out, lowered = oq.power_of_two_activation_ranges(calibrator, ranges)
        lowered_by_options[label] = lowered
        if label == "fixed":
            assert out["p"] == ranges["p"]
    assert "p" in lowered_by_options["calibrated"]
    assert "p" not in lowered_by_options["fixed"]


def test_check_kernels_with_default_options_sees_the_fixed_range():
    # Called on its own with calibrated ranges, the kernel check judges the
    # Softmax's reader with the range quantize uses (the fixed one), not with the
    # calibrated one, whose 255 codes for a largest probability of about 0.07
    # would report pair sums that the quantized model never computes.
    from onnxquant.kernel_check import check_kernels

    model, calibrator = _calibrated(8)
    feeds = [{"x": x} for x in _samples(8, 1)]
    ranges = calibrator.compute_range()
    fixed = dict(ranges, p=(0.0, 255 / 256))
    got = {c.node: c for c in check_kernels(model, ranges, feeds).nodes}
    expected = {c.node: c for c in check_kernels(model, fixed, feeds).nodes}
    assert got["mm2"] == expected["mm2"]
    assert got["mm2"].peak < 8 * 127 * 16  # codes of at most 0.07 * 256, not 255
