"""The kernel check and target="portable": which nodes ONNX Runtime's uint8 x
int8 kernels would saturate on x86 CPUs without VNNI, and what quantize does
to them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import parse

import onnxquant as oq
from onnxquant.kernel_check import check_kernels


def _conv_model(weights: list[list[float]]) -> onnx.ModelProto:
    """A 1x1 Conv over four channels, one output channel per row of
    ``weights``, with a Relu so the output range starts at 0."""
    rows = len(weights)
    flat = ", ".join(f"{v:.4f}" for row in weights for v in row)
    return oq.optimize_model(parse(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4, 3, 3] x) => (float[N, {rows}, 3, 3] y)
        <float[{rows}, 4, 1, 1] w = {{{flat}}}> {{
            c = Conv(x, w)
            y = Relu(c)
        }}
    """))


def _samples(count: int = 8, high: float = 1.0) -> list[np.ndarray]:
    # Every input at the top of its range: codes 255 in all four channels.
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        x = rng.uniform(0.0, 0.2, size=(1, 4, 3, 3)).astype(np.float32)
        x[:, :, 1, 1] = high
        out.append(x)
    return out


def _rows(calibrator: oq.Calibrator) -> int:
    """Samples retained (feeds may stack several)."""
    return sum(len(f["x"]) for f in calibrator.kernel_check_feeds)


def _calibrated(model: onnx.ModelProto, **kwargs) -> tuple[oq.Calibrator, dict]:
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, **kwargs)
    calibrator.collect_data(_samples())
    return calibrator, calibrator.compute_range()


def _weight(quantized: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The Conv's weight codes and zero points."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    conv = next(n for n in quantized.graph.node if n.op_type == "Conv")
    dq = next(n for n in quantized.graph.node if n.output[0] == conv.input[1])
    return inits[dq.input[0]], inits[dq.input[2]]


def test_channels_zero_and_one_share_a_pair_and_saturate():
    # Codes 255 x 127 + 255 x 127 = 64 770 > 32 767 in the pair (0, 1).
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    result = check_kernels(model, ranges, calibrator.kernel_check_feeds)
    (node,) = result.nodes
    assert node.kind == "pair_sums"
    assert node.peak == 2 * 255 * 127 and node.saturated > 0
    assert node.bound == 2 * 255 * 127
    assert node.error_ratio > 1
    assert set(result.channel_qmax) == {node.node}


def test_channels_one_and_two_are_in_different_pairs():
    # The same two weights at channels 1 and 2 fall in the pairs (0, 1) and
    # (2, 3): at most 255 x 127 each, so no pair is even worth simulating.
    model = _conv_model([[0.0, 1.0, 1.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    result = check_kernels(model, ranges, calibrator.kernel_check_feeds)
    (node,) = result.nodes
    assert node.saturated == 0 and node.bound == 255 * 127 and not node.can_saturate
    assert result.channel_qmax == {}


def test_opposite_signs_cannot_saturate():
    model = _conv_model([[1.0, -1.0, 0.0, 0.0]])
    _, ranges = _calibrated(model)
    (node,) = check_kernels(model, ranges).nodes
    assert node.bound == 255 * 127 and not node.can_saturate


def test_portable_lowers_the_range_of_the_saturating_channel_only():
    model = _conv_model([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    quantized, report = oq.quantize(model, ranges, calibrator=calibrator, return_report=True)
    codes, zero_points = _weight(quantized)
    assert codes.dtype == np.int8 and not zero_points.any()
    top = np.abs(codes.astype(np.int32)).reshape(2, -1).max(axis=1)
    # Channel 0: the largest code whose pair sums fit (255 x 2 x q <= 32 767).
    assert top[0] < 127 and 2 * 255 * top[0] <= 32767
    assert top[1] == 127
    (remedy,) = report.kernels.remedies
    assert remedy.remedy == "channel_range" and "1 of 2 channels" in remedy.change
    assert report.kernels.samples == _rows(calibrator) == 8
    assert "Kernel remedies" in str(report)
    json.dumps(report.to_dict())


def test_uint8_weights_remedy_keeps_the_values():
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    exact = oq.quantize(model, ranges, target="exact")
    offset = oq.quantize(model, ranges, calibrator=calibrator, kernel_remedy="uint8_weights")
    codes, zero_points = _weight(offset)
    plain, _ = _weight(exact)
    assert codes.dtype == np.uint8 and (zero_points == 128).all()
    np.testing.assert_array_equal(codes.astype(np.int32) - 128, plain.astype(np.int32))


def test_float_remedy_keeps_the_node_float():
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    quantized, report = oq.quantize(model, ranges, calibrator=calibrator,
                                    kernel_remedy="float", return_report=True)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    reasons = {f.node: f.reason for f in report.float_nodes}
    assert "kernel_remedy='float'" in reasons[conv.name]
    assert "excluded by the user" not in reasons[conv.name]
    assert not any(n.op_type == "DequantizeLinear" and "w" in n.input[0]
                   for n in quantized.graph.node)


def test_exact_target_keeps_full_range_weights():
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    quantized, report = oq.quantize(model, ranges, calibrator=calibrator, target="exact",
                                    return_report=True)
    codes, _ = _weight(quantized)
    assert np.abs(codes.astype(np.int32)).max() == 127
    assert report.kernels.target == "exact" and not report.kernels.remedies


def test_without_samples_the_worst_case_decides():
    # No sample reaches codes 255 in both channels, yet the range allows it.
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator, ranges = _calibrated(model, kernel_check_samples=0)
    assert calibrator.kernel_check_feeds == ()
    quantized, report = oq.quantize(model, ranges, calibrator=calibrator, return_report=True)
    (remedy,) = report.kernels.remedies
    assert "no sample reached it" in remedy.reason
    assert report.kernels.samples == 0
    codes, _ = _weight(quantized)
    assert 2 * 255 * np.abs(codes.astype(np.int32)).max() <= 32767


def test_samples_below_the_range_top_change_nothing():
    # Calibrated on inputs reaching 1.0, checked on samples that stay low:
    # the pair sums observed fit, so the weights keep their full range.
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(_samples(8, high=0.3))
    calibrator.collect_data(_samples(1, high=1.0))  # widens the range only
    assert _rows(calibrator) == 9
    low = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, kernel_check_samples=8)
    low.collect_data(_samples(8, high=0.3))
    low.collect_data(_samples(1, high=1.0))
    assert _rows(low) == 8
    quantized, report = oq.quantize(model, calibrator.compute_range(), calibrator=low,
                                    return_report=True)
    assert report.kernels.remedies == ()
    codes, _ = _weight(quantized)
    assert np.abs(codes.astype(np.int32)).max() == 127


def test_depthwise_conv_is_exact():
    model = oq.optimize_model(parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4, 3, 3] x) => (float[N, 4, 3, 3] y)
        <float[4, 1, 1, 1] w = {1.0, 1.0, 1.0, 1.0}> {
            y = Conv <group = 4> (x, w)
        }
    """))
    calibrator, ranges = _calibrated(model)
    (node,) = check_kernels(model, ranges, calibrator.kernel_check_feeds).nodes
    assert node.kind == "exact" and "depthwise" in node.detail


def test_gemm_pairs_adjacent_inputs():
    def gemm(w: str) -> onnx.ModelProto:
        return oq.optimize_model(parse(f"""
            <ir_version: 8, opset_import: ["" : 13]>
            g (float[N, 4] x) => (float[N, 1] y)
            <float[1, 4] w = {{{w}}}> {{
                y = Gemm <transB = 1> (x, w)
            }}
        """))
    samples = [np.full((1, 4), 1.0, np.float32), np.zeros((1, 4), np.float32)]
    for weights, saturates in (("1.0, 1.0, 0.0, 0.0", True), ("0.0, 1.0, 1.0, 0.0", False)):
        model = gemm(weights)
        calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
        calibrator.collect_data(samples)
        result = check_kernels(model, calibrator.compute_range(), calibrator.kernel_check_feeds)
        assert (result.nodes[0].saturated > 0) == saturates, weights


def test_retained_samples_survive_save_load_and_merge(tmp_path):
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator, _ = _calibrated(model, kernel_check_samples=5)
    assert _rows(calibrator) == 5
    path = tmp_path / "state.bin"
    calibrator.save(path)
    loaded = oq.Calibrator.load(path, model, "MIN_MAX_ASYM", kernel_check_samples=5)
    for a, b in zip(loaded.kernel_check_feeds, calibrator.kernel_check_feeds):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert _rows(loaded) == 5
    small, _ = _calibrated(model, kernel_check_samples=2)
    small.merge(calibrator)
    assert _rows(small) == 2
    empty = oq.Calibrator(model, "MIN_MAX_ASYM", kernel_check_samples=3)
    empty.merge(calibrator)
    assert _rows(empty) == 3


def test_retained_samples_are_copies():
    # A generator that refills one buffer must not change what was retained.
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1)
    buffer = np.zeros((1, 4, 3, 3), np.float32)

    def refill():
        for value in (1.0, 2.0, 3.0):
            buffer[...] = value
            yield buffer

    calibrator.collect_data(refill())
    assert [float(f["x"].max()) for f in calibrator.kernel_check_feeds] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("bad", [{"target": "avx2"}, {"kernel_remedy": "clip"},
                                 {"calibrator": object()}])
def test_bad_kernel_options_are_typed_errors(bad):
    model = _conv_model([[1.0, 1.0, 0.0, 0.0]])
    _, ranges = _calibrated(model)
    with pytest.raises(oq.InvalidArgumentError):
        oq.quantize(model, ranges, **bad)


def _check(node: str, pair_sums: int) -> "KernelCheck":
    from onnxquant.kernel_check import KernelCheck

    return KernelCheck(node=node, op_type="Conv", input="x", kind="pair_sums", bound=64770,
                       rows=10, pair_sums=pair_sums, saturated=1, peak=64770)


def test_auto_remedy_runs_the_deepest_cheapest_cuts_exactly():
    from onnxquant.kernel_check import KernelCheckResult, choose_remedies

    # "first": 2 % of the multiply-adds, every channel cut to 64; "deep": 60 %, also cut
    # to 64; "shallow": 38 %, one channel at 120.
    result = KernelCheckResult(
        nodes=(_check("first", 2), _check("deep", 60), _check("shallow", 38)),
        samples=8, channel_qmax={"first": (64, 64), "deep": (64, 64), "shallow": (120, 127)})
    assert choose_remedies(result, "auto") == {
        "first": "uint8_weights", "deep": "channel_range", "shallow": "channel_range"}
    # A budget that holds "shallow" too: its cut (one channel at 120 of two) costs less than
    # the minimum, so it keeps channel_range; without a minimum it runs exactly too.
    assert choose_remedies(result, "auto", budget=0.40)["shallow"] == "channel_range"
    assert choose_remedies(result, "auto", budget=0.40, min_cost=0.0)["shallow"] == \
        "uint8_weights"
    assert choose_remedies(result, "auto", budget=0.0) == {
        n: "channel_range" for n in ("first", "deep", "shallow")}
    assert set(choose_remedies(result, "float").values()) == {"float"}


def test_auto_remedy_without_samples_lowers_ranges():
    from onnxquant.kernel_check import KernelCheck, KernelCheckResult, choose_remedies

    unseen = KernelCheck(node="c", op_type="Conv", input="x", kind="pair_sums", bound=64770)
    result = KernelCheckResult(nodes=(unseen,), samples=0, channel_qmax={"c": (64,)})
    assert choose_remedies(result, "auto") == {"c": "channel_range"}


def test_check_replays_through_the_calibrators_session(monkeypatch):
    """With the calibrator of this very model, quantize's kernel check runs its
    samples in the calibrator's session (no session of its own, whose creation
    dominated quantize on 64k-node graphs), with the same result."""
    from onnxquant import kernel_check

    model = _conv_model([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    calibrator, ranges = _calibrated(model)
    own = check_kernels(model, ranges, calibrator.kernel_check_feeds)
    shared = check_kernels(model, ranges, calibrator.kernel_check_feeds,
                           replay=calibrator._replay)
    assert shared.samples == own.samples == 8
    assert [(n.node, n.pair_sums, n.saturated, n.peak) for n in shared.nodes] == \
        [(n.node, n.pair_sums, n.saturated, n.peak) for n in own.nodes]
    assert shared.nodes[0].saturated > 0
    assert shared.channel_qmax == own.channel_qmax

    def no_own_session(*args, **kwargs):
        raise AssertionError("the kernel check opened a session of its own")

    monkeypatch.setattr(kernel_check, "_own_session", no_own_session)
    _, report = oq.quantize(model, ranges, calibrator=calibrator, return_report=True)
    assert report.kernels.samples == 8
    assert report.kernels.remedies


def test_planned_model_matches_separate_parse_and_plan():
    """quantize parses and plans once (_core.PlannedModel) for the kernel
    check and the insertion: the checker, the plan and the quantized bytes
    are those of the separate calls, which each parse and plan anew, with a
    weight remedy applied; a second quantize of the same object is refused."""
    from onnxquant import _core
    from onnxquant._shapes import infer_dtypes
    from onnxquant.errors import InternalError

    model = _conv_model([[1.0, 1.0, 0.0, 0.0], [0.5, -0.25, 0.125, 1.0]])
    _calibrator, ranges = _calibrated(model)
    data = model.SerializeToString()
    dtypes = infer_dtypes(model)
    native = oq.QuantOptions().to_native()
    planned = _core.PlannedModel(data, dtypes, native)
    plan = planned.plan()
    assert plan == _core.make_plan(data, dtypes, native)
    own = _core.KernelChecker(data, dtypes, native, ranges)
    shared = planned.kernel_checker(ranges)
    assert shared.inputs() == own.inputs() == ["x"]
    for checker in (own, shared):
        checker.add({"x": np.concatenate(_samples())})
    assert shared.results() == own.results()
    qmax = own.channel_qmax(bound_unobserved=True)
    assert qmax == shared.channel_qmax(bound_unobserved=True)
    assert qmax  # the first filter saturates: a remedy to apply
    remedies = {}
    for node, channels in qmax.items():
        remedies[node] = _core.WeightRemedy()
        remedies[node].channel_qmax = channels
    plain, _ = _core.quantize(data, dtypes, native, ranges)
    native.weight_remedies = remedies
    separate, _ = _core.quantize(data, dtypes, native, ranges)
    together, report = planned.quantize(ranges, remedies)
    assert together == separate != plain  # the remedy applied, and the same
    assert report["plan"] == plan
    with pytest.raises(InternalError, match="after its quantize"):
        planned.quantize(ranges, remedies)
