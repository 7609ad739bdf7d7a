"""Attention masks through calibration and quantization: float32's extremes
(|x| >= 1e30, as (1 - mask) * finfo(float32).min holds) are left out of the
ranges and reported; by default the nodes that carry them stay float, so the
mask keeps masking. Checked against numpy and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnx.parser
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant.quantize import mask_nodes

LOWEST = float(np.finfo(np.float32).min)


def _model(fill: float = LOWEST) -> onnx.ModelProto:
    """Softmax(x @ w + (1 - m) * fill): an attention block's scores, masked."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 8] x, int64[4, 8] m) => (float[4, 8] y) {
            s = MatMul(x, w)
            mf = Cast <to = 1> (m)
            keep = Sub(one, mf)
            additive = Mul(keep, lowest)
            t = Add(s, additive)
            y = Softmax <axis = -1> (t)
        }""")
    model.graph.initializer.extend([
        onh.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w"),
        onh.from_array(np.array(1.0, np.float32), "one"),
        onh.from_array(np.array(fill, np.float32), "lowest")])
    return oq.optimize_model(model)


def _samples(rng, count: int) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(count):
        lengths = rng.integers(2, 9, 4)
        m = (np.arange(8)[None, :] < lengths[:, None]).astype(np.int64)
        out.append({"x": rng.normal(size=(4, 8)).astype(np.float32), "m": m})
    return out


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in feeds]


def _quantized_tensors(model: onnx.ModelProto) -> set[str]:
    """The tensors a QuantizeLinear reads (quantize renames a quantized
    tensor's float producer output to <name>_float)."""
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.fixture(scope="module")
def calibrated():
    model = _model()
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1)
    samples = _samples(np.random.default_rng(1), 6)
    calibrator.collect_data(samples)
    return model, calibrator, samples


def test_extremes_are_left_out_of_the_range_and_reported(calibrated):
    model, calibrator, samples = calibrated
    # The Add's values, computed in numpy: the scores where attended.
    w = onh.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    scores = np.concatenate([(f["x"] @ w)[f["m"] == 1] for f in samples])
    low, high = calibrator.compute_range()["t"]
    assert low == pytest.approx(min(0.0, scores.min()), rel=1e-5)
    assert high == pytest.approx(max(0.0, scores.max()), rel=1e-5)
    padded = sum(int((f["m"] == 0).sum()) for f in samples)
    total = sum(f["m"].size for f in samples)
    counts = {c.tensor: c for c in calibrator.report.nonfinite}
    assert set(counts) == {"additive", "t"}
    for name in ("additive", "t"):
        assert counts[name].neg_extreme == padded and counts[name].pos_extreme == 0
        assert counts[name].nan == counts[name].neg_inf == 0
        assert counts[name].share == pytest.approx(padded / total)
    assert calibrator.statistics()["t"]["neg_extreme"] == padded
    assert "1e30" in str(calibrator.report)


def test_mask_nodes_stay_float_and_the_mask_still_masks(calibrated):
    model, calibrator, _ = calibrated
    quantized, report = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                                    return_report=True)
    assert not {"t", "t_float", "additive", "additive_float"} & _quantized_tensors(quantized)
    assert {"s", "s_float"} & _quantized_tensors(quantized)
    assert any("masks" in note and "'t'" in note for note in report.notes)
    assert any(n.op_type == "MatMul" for n in report.quantized_nodes)
    feeds = _samples(np.random.default_rng(2), 4)
    for got, want, feed in zip(_run(quantized, feeds), _run(model, feeds), feeds):
        padded = feed["m"] == 0
        assert np.all(got[padded] < 1e-30)  # exp(-3.4e38) underflows to 0
        np.testing.assert_allclose(got, want, atol=0.05)


def test_mask_nodes_are_no_user_exclusion(calibrated, monkeypatch):
    """masks="float" keeps the mask's nodes float through the engine's own
    mask_nodes option: after a default calibration quantize is not refused,
    the report gives those nodes the mask's reason, and the options'
    exclude_nodes stay what the user passed (none)."""
    import importlib

    quantize_module = importlib.import_module("onnxquant.quantize")

    model, calibrator, _ = calibrated
    seen = []
    real = quantize_module._require_planned_ranges

    def spy(data, dtypes, options, native, *args, **kwargs):
        seen.append((options.exclude_nodes, list(native.exclude_nodes),
                     list(native.mask_nodes)))
        return real(data, dtypes, options, native, *args, **kwargs)

    monkeypatch.setattr(quantize_module, "_require_planned_ranges", spy)
    _, report = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                            return_report=True)
    (user, excluded, masked), = seen
    assert user == () and excluded == []
    assert "Add_4" in masked and "MatMul_0" not in masked
    reasons = {f.node: f.reason for f in report.float_nodes}
    assert "attention mask" in reasons["Add_4"]
    assert not any("user" in reasons[n] for n in masked)


def test_option_mismatch_message_names_no_mask_node(calibrated):
    model, _, samples = calibrated
    mask = set(mask_nodes(model)) | {"Add_4", "Softmax_5"}
    # The Calibrator kept the MatMul float, so it never observed x, which
    # quantize's default options (MatMul quantized) need.
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1,
                               options=oq.QuantOptions(exclude_nodes=["MatMul_0"]))
    calibrator.collect_data(samples)
    with pytest.raises(oq.InvalidArgumentError, match="exclude_nodes") as error:
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)
    message = str(error.value)
    assert "MatMul_0" in message and "'x'" in message
    assert not [n for n in mask if n in message], message
    # Ranges missing a tensor under the same options: a missing range, not
    # an option mismatch (the mask nodes are no option the user changed).
    default = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1)
    default.collect_data(samples)
    ranges = {t: r for t, r in default.compute_range().items() if t != "x"}
    with pytest.raises(oq.RangeMissingError, match="'x'") as error:
        oq.quantize(model, ranges, calibrator=default)
    assert not [n for n in mask if n in str(error.value)]


def test_saturated_masks_stop_masking(calibrated):
    """The reason for the default: quantized, the extremes saturate to the end
    of a range calibrated on the other values, and padded positions get
    weight."""
    model, calibrator, _ = calibrated
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                            masks="saturate")
    assert {"t", "t_float"} & _quantized_tensors(quantized)
    feeds = _samples(np.random.default_rng(2), 4)
    leaked = max(float(got[feed["m"] == 0].max())
                 for got, feed in zip(_run(quantized, feeds), feeds))
    assert leaked > 1e-3


def test_masks_option_is_checked():
    with pytest.raises(oq.InvalidArgumentError, match="masks"):
        oq.QuantOptions(masks="drop")


@pytest.mark.parametrize("masks, quantized_mask", [("float", False), ("saturate", True)])
def test_command_line_masks_option(tmp_path, masks, quantized_mask):
    from onnxquant.cli import main

    model_path, data = tmp_path / "m.onnx", tmp_path / "cal.npz"
    onnx.save(_model(), str(model_path))
    samples = _samples(np.random.default_rng(3), 8)
    np.savez(data, x=np.stack([s["x"] for s in samples]),
             m=np.stack([s["m"] for s in samples]))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(model_path), "-o", str(out), "--calibration-data", str(data),
                 "--masks", masks, "-q"]) == 0
    tensors = _quantized_tensors(onnx.load(str(out)))
    assert bool({"t", "t_float"} & tensors) == quantized_mask


@pytest.mark.parametrize("fill", [-10000.0, -1e9])
def test_masks_of_smaller_constants_are_found_in_the_graph(fill):
    """-10000 and -1e9 are no extremes: calibration keeps them in the
    mask's ranges, and the graph tells the mask's nodes apart; quantize keeps
    them float even without a calibrator."""
    model = _model(fill)
    ops = {n.name: n.op_type for n in model.graph.node}
    found = mask_nodes(model)
    assert sorted(ops[n] for n in found) == ["Add", "Cast", "Mul", "Sub"]
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1)
    calibrator.collect_data(_samples(np.random.default_rng(1), 6))
    assert calibrator.report.nonfinite == ()
    assert calibrator.compute_range()["t"][0] == pytest.approx(fill, rel=0.01)
    quantized, report = oq.quantize(model, calibrator.compute_range(), return_report=True)
    assert not {"t", "t_float", "additive", "additive_float"} & _quantized_tensors(quantized)
    assert any("attention mask" in note for note in report.notes)
    feeds = _samples(np.random.default_rng(2), 4)
    for got, want, feed in zip(_run(quantized, feeds), _run(model, feeds), feeds):
        assert np.all(got[feed["m"] == 0] < 1e-30)
        np.testing.assert_allclose(got, want, atol=0.05)


def test_a_constant_bias_before_softmax_is_no_mask():
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 8] x) => (float[4, 8] y) {
            s = MatMul(x, w)
            t = Add(s, bias)
            y = Softmax <axis = -1> (t)
        }""")
    model.graph.initializer.extend([
        onh.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w"),
        onh.from_array(rng.normal(size=(8,)).astype(np.float32), "bias")])
    assert mask_nodes(oq.optimize_model(model)) == []
