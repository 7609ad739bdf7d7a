"""Options given to quantize but not to the Calibrator: refused naming the
option, unless the Calibrator observed every float tensor (collect="all")."""

from __future__ import annotations

import numpy as np
import pytest

import onnxquant as oq

_W = ", ".join(f"{(i % 7 - 3) / 7:.4f}" for i in range(64))
_V = ", ".join(f"{(i % 5 - 2) / 5:.4f}" for i in range(64))

ATTENTION = f"""
<ir_version: 8, opset_import: ["" : 13]>
attention (float[N, 4, 8] x) => (float[N, 4, 4] y)
<float[8, 8] wq = {{{_W}}}, float[8, 8] wk = {{{_V}}}> {{
    q = MatMul(x, wq)
    k = MatMul(x, wk)
    kt = Transpose<perm = [0, 2, 1]>(k)
    y = MatMul(q, kt)
}}
"""

SILU = f"""
<ir_version: 8, opset_import: ["" : 13]>
silu (float[N, 8] x) => (float[N, 8] y) <float[8, 8] w = {{{_W}}}> {{
    h = MatMul(x, w)
    s = Sigmoid(h)
    y = Mul(h, s)
}}
"""


def _calibrated(model, shape, **kwargs):
    optimized = oq.optimize_model(model)
    rng = np.random.default_rng(3)
    calibrator = oq.Calibrator(optimized, "MIN_MAX_ASYM", **kwargs)
    calibrator.collect_data([rng.standard_normal(shape).astype(np.float32)
                             for _ in range(6)])
    return optimized, calibrator


@pytest.fixture()
def cnn(small_cnn_model):
    return _calibrated(small_cnn_model, (1, 3, 8, 8))


@pytest.mark.parametrize("option,value,tensor", [
    ("op_types", ("Conv",), "c1"),          # Relu no longer absorbed into the Conv
    ("exclude_nodes", ("Conv_0",), "c1"),
])
def test_cnn_option_not_given_to_the_calibrator_is_named(cnn, option, value, tensor):
    model, calibrator = cnn
    with pytest.raises(oq.InvalidArgumentError) as info:
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                    **{option: value})
    message = str(info.value)
    assert f"differ from the Calibrator's in {option} " in message
    assert f"{option}={value!r} here" in message
    assert f"needs tensor '{tensor}'" in message
    assert "Pass the same options to both" in message and "collect='all'" in message


def test_long_option_value_is_abbreviated_in_the_message(cnn):
    """Excluding a whole block names a few nodes and the count, not every name."""
    model, calibrator = cnn
    names = ("Conv_0", "Relu_1", "Conv_2", "GlobalAveragePool_4")
    with pytest.raises(oq.InvalidArgumentError) as info:
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                    exclude_nodes=names)
    message = str(info.value)
    shown = ", ".join(repr(n) for n in names[:3])
    assert f"exclude_nodes=({shown}, ... {len(names)} in all) here" in message
    assert repr(names[3]) not in message.split(" here")[0]


def test_quantize_silu_not_given_to_the_calibrator_is_named(parse_model):
    model, calibrator = _calibrated(parse_model(SILU), (1, 8))
    with pytest.raises(oq.InvalidArgumentError,
                       match=r"in quantize_silu \(quantize_silu=True here, False in the "
                             r"Calibrator\).*needs tensor 's'"):
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                    quantize_silu=True)


def test_activation_matmul_option_not_given_to_quantize_is_named(parse_model):
    options = oq.QuantOptions(quantize_activation_matmul=False)
    model, calibrator = _calibrated(parse_model(ATTENTION), (1, 4, 8), options=options)
    with pytest.raises(oq.InvalidArgumentError,
                       match=r"in quantize_activation_matmul \(quantize_activation_matmul="
                             r"True here, False in the Calibrator\).*needs tensor 'y'"):
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)


def test_ranges_without_calibrator_say_what_to_do(cnn):
    model, calibrator = cnn
    with pytest.raises(oq.RangeMissingError) as info:
        oq.quantize(model, calibrator.compute_range(), op_types=["Conv"])
    message = str(info.value)
    assert "No range for planned tensor 'c1'" in message
    assert "same options as quantize" in message and "calibrator=" in message


def test_same_options_given_to_both_work(cnn, small_cnn_model):
    options = oq.QuantOptions(op_types=("Conv",))
    model, calibrator = _calibrated(small_cnn_model, (1, 3, 8, 8), options=options)
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                            options=options)
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) > 0


@pytest.mark.parametrize("options", [
    oq.QuantOptions(op_types=("Conv",)),
    oq.QuantOptions(exclude_nodes=("Conv_0",)),
    oq.QuantOptions(op_types=("Gemm",)),
    oq.QuantOptions(activation_type="int8", op_types=("Conv", "Gemm")),
])
def test_collect_all_takes_any_options_and_matches_a_calibration_with_them(
        small_cnn_model, options):
    model, everything = _calibrated(small_cnn_model, (1, 3, 8, 8), collect="all")
    assert everything.collect == "all"
    assert {"c1", "c2", "flat"} <= set(everything.tensors)
    _, matched = _calibrated(small_cnn_model, (1, 3, 8, 8), options=options)
    assert set(matched.tensors) <= set(everything.tensors)
    from_all = oq.quantize(model, everything.compute_range(), calibrator=everything,
                           options=options)
    from_matched = oq.quantize(model, matched.compute_range(), calibrator=matched,
                               options=options)
    assert from_all.SerializeToString() == from_matched.SerializeToString()


def test_collect_all_covers_silu_and_attention(parse_model):
    for text, shape, options in (
            (SILU, (1, 8), oq.QuantOptions(quantize_silu=True)),
            (ATTENTION, (1, 4, 8), oq.QuantOptions(quantize_activation_matmul=False)),
            (ATTENTION, (1, 4, 8), oq.QuantOptions(op_types=("MatMul",)))):
        model, calibrator = _calibrated(parse_model(text), shape, collect="all")
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                    options=options)


def test_float_kernel_remedy_needs_the_ranges_it_plans(small_cnn_model):
    # Large inputs make the first layers saturate; keeping them float un-absorbs
    # their Relu, so their outputs need ranges the plan did not calibrate.
    model, calibrator = _calibrated(small_cnn_model, (1, 3, 8, 8))
    with pytest.raises(oq.InvalidArgumentError,
                       match=r"kernel_remedy='float' keeps 'Conv_0'.*tensor 'c1'.*"
                             r"collect='all'"):
        oq.quantize(model, calibrator.compute_range(), kernel_remedy="float")
    model, calibrator = _calibrated(small_cnn_model, (1, 3, 8, 8), collect="all")
    _, report = oq.quantize(model, calibrator.compute_range(), kernel_remedy="float",
                            return_report=True)
    assert any(r.remedy == "float" for r in report.kernels.remedies)


def test_collect_must_be_plan_or_all(cnn):
    model, _ = cnn
    with pytest.raises(oq.InvalidArgumentError, match="collect must be 'plan'.*'all'"):
        oq.Calibrator(model, "MIN_MAX_ASYM", collect="everything")


def test_vit_activation_matmul_kept_float_after_a_default_calibration():
    # The case reported: models/cifar's ViT, quantize_activation_matmul=False
    # after a default calibration raised RangeMissingError ("pass every range").
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "cifar", "vit.onnx")
    model = oq.optimize_model(path)
    rng = np.random.default_rng(0)
    feeds = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(2)]
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data(feeds)
    with pytest.raises(oq.InvalidArgumentError,
                       match=r"differ from the Calibrator's in quantize_activation_matmul "
                             r"\(quantize_activation_matmul=False here, True in the "
                             r"Calibrator\), and with them the plan needs tensor '.*attn"):
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                    quantize_activation_matmul=False)
    everything = oq.Calibrator(model, "MIN_MAX_ASYM", collect="all")
    everything.collect_data(feeds)
    quantized = oq.quantize(model, everything.compute_range(), calibrator=everything,
                            quantize_activation_matmul=False)
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) > 10


def test_collect_all_state_round_trips_and_is_refused_for_plan(tmp_path, small_cnn_model):
    model, calibrator = _calibrated(small_cnn_model, (1, 3, 8, 8), collect="all")
    path = tmp_path / "state.oqcal"
    calibrator.save(path)
    loaded = oq.Calibrator.load(path, model, "MIN_MAX_ASYM", collect="all")
    assert loaded.compute_range() == calibrator.compute_range()
    with pytest.raises(oq.CalibrationDataError,
                       match=r"saved by a Calibrator with collect='all'.*load it with "
                             r"collect='all'"):
        oq.Calibrator.load(path, model, "MIN_MAX_ASYM")
