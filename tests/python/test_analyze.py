"""Per-layer analysis (onnxquant.analyze) against independent numpy figures,
and the range guard."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant.analyze import range_shares


def _sqnr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 10 * math.log10(np.sum(x * x) / np.sum((x - y) ** 2))


def _session(model: onnx.ModelProto, outputs=(), emulate=False):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in outputs:
        if name not in {o.name for o in m.graph.output}:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if emulate:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(m.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _dq_params(quantized: onnx.ModelProto, tensor: str) -> tuple[float, int]:
    """Scale and zero point of the DequantizeLinear whose output is ``tensor``."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
    dq = next(n for n in quantized.graph.node
              if n.op_type == "DequantizeLinear" and n.output[0] == tensor)
    return float(init[dq.input[1]]), int(init[dq.input[2]])


def _with_one_pair(model: onnx.ModelProto, tensor: str, scale: float, zp: int):
    """``model`` with one QuantizeLinear/DequantizeLinear pair (uint8) on ``tensor``;
    the dequantized value is exposed as ``tensor + '_qdq'``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(scale, np.float32), "pair_scale"),
        onnx.numpy_helper.from_array(np.array(zp, np.uint8), "pair_zp")])
    m.graph.node.extend([
        onnx.helper.make_node("QuantizeLinear", [tensor, "pair_scale", "pair_zp"], ["pair_q"]),
        onnx.helper.make_node("DequantizeLinear", ["pair_q", "pair_scale", "pair_zp"],
                              [tensor + "_qdq"])])
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor + "_qdq"))
    return m


@pytest.fixture()
def cnn(small_cnn_model):
    """The small CNN normalised, 30 samples, a MIN_MAX calibrator, and its ranges."""
    model = oq.optimize_model(small_cnn_model)
    rng = np.random.default_rng(3)
    samples = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(30)]
    # The logits quantized too (float_outputs=False), so that the output's row
    # checks the accumulated error of every layer.
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1,
                        options=oq.QuantOptions(float_outputs=False))
    cal.collect_data(samples)
    return model, samples, cal, cal.compute_range()


def test_sqnr_matches_numpy_on_models_with_one_pair_and_all_pairs(cnn):
    model, samples, cal, ranges = cnn
    quantized = oq.quantize(model, ranges, calibrator=cal, float_outputs=False)
    result = oq.analyze(model, quantized, samples, calibrator=cal)
    # Every calibrated tensor, and the Flatten output that shares its input's
    # parameters, in graph order.
    assert [r.tensor for r in result] == ["image", "r1", "r2", "pooled", "flat", "logits"]
    assert result.num_samples == len(samples)
    x = np.concatenate(samples)
    node_outputs = {o for n in model.graph.node for o in n.output}
    fp32_all = _session(model, [r.tensor for r in result if r.tensor in node_outputs])
    int8 = _session(quantized, [r.tensor for r in result if r.tensor in node_outputs],
                    emulate=True)
    for r in result:
        scale, zp = _dq_params(quantized, r.tensor) if r.tensor in node_outputs else \
            (r.scale, r.zero_point)
        assert (r.scale, r.zero_point) == pytest.approx((scale, zp))
        # Alone: the FP32 model with only this tensor's Q/DQ pair, run by ONNX Runtime.
        one = _session(_with_one_pair(model, r.tensor, scale, zp),
                       [r.tensor] if r.tensor in node_outputs else [])
        outs = [o.name for o in one.get_outputs()]
        got = dict(zip(outs, one.run(None, {"image": x})))
        ref = got.get(r.tensor, x)
        expected = _sqnr(ref, got[r.tensor + "_qdq"])
        assert r.alone_db == pytest.approx(expected, abs=0.01), r.tensor
        # Accumulated: every layer quantized.
        if r.tensor in node_outputs:
            a = fp32_all.run([r.tensor], {"image": x})[0]
            b = int8.run([r.tensor], {"image": x})[0]
            assert r.accumulated_db == pytest.approx(_sqnr(a, b), abs=0.01), r.tensor
    logits = result.record("logits")
    # The output accumulates the error of every layer before it.
    assert logits.accumulated_db < logits.alone_db
    assert all(r.alone_db > 30 for r in result)  # 8 bits, MIN_MAX: no clipping
    assert not result.flagged()


def test_a_shrunk_range_is_flagged_and_its_shares_match_numpy(cnn):
    model, samples, cal, ranges = cnn
    victim = "r1"
    lo, hi = ranges[victim]
    shrunk = {**ranges, victim: (lo / 4, hi / 4)}
    quantized = oq.quantize(model, shrunk, calibrator=cal)
    with pytest.warns(oq.RangeWarning, match=victim) as caught:
        result = oq.analyze(model, quantized, samples, calibrator=cal, clip_limit=0.01)
    assert len(caught) == len(result.flagged())
    r = result.record(victim)
    assert "clips" in r.flags and "MIN_MAX_ASYM" in r.remedy_methods
    assert min(result, key=lambda x: x.alone_db).tensor == victim
    # The shares against the raw values (the histogram's uniform-in-bin estimate).
    session = _session(model, [victim])
    values = session.run([victim], {"image": np.concatenate(samples)})[0].ravel()
    half = r.scale / 2
    clipped = np.mean((values < r.low - half) | (values > r.high + half))
    nonzero = values[values != 0]
    below = np.mean(np.abs(nonzero) < r.scale)
    assert clipped > 0.01
    assert r.clipped == pytest.approx(clipped, abs=0.01)
    assert r.below_step == pytest.approx(below, abs=0.01)
    # The method ranges are the calibrator's.
    for m in oq.CalibrationMethod:
        assert r.method_ranges[m.name] == cal.compute_range(m)[victim]


def test_without_a_calibrator_the_samples_give_the_histograms(cnn):
    model, samples, cal, ranges = cnn
    quantized = oq.quantize(model, ranges, calibrator=cal)
    result = oq.analyze(model, quantized, iter(samples), methods=["MIN_MAX_ASYM", "MSE_SYM"])
    for r in result:
        assert set(r.method_ranges) == {"MIN_MAX_ASYM", "MSE_SYM"}
        if r.tensor in ranges:
            assert r.method_ranges["MIN_MAX_ASYM"] == pytest.approx(ranges[r.tensor])
            assert r.clipped == 0.0


def test_range_shares_on_a_known_histogram():
    # Bins of width 1 from -2: counts over [-2, -1), [-1, 0), [0, 1), [1, 2).
    histogram = (-2.0, 1.0, np.array([10, 10, 20, 10], np.int64))
    stats = {"count": 50, "min": -2.0, "max": 2.0, "zeros": 10}
    clipped, below = range_shares(histogram, stats, -1.0, 2.0, 0.5)
    assert clipped == pytest.approx(10 * 0.75 / 50)  # [-2, -1.25) of the first bin
    # nonzero: 40; |x| < 0.5: half of [-1, 0) (5) and half of the 10 nonzero in [0, 1).
    assert below == pytest.approx(10 / 40)


SCORES = """
<ir_version: 8, opset_import: ["" : 13]>
detector (float[N, 8] x) => (float[N, 6] out)
<float[8, 4] wb = {WB}, float[8, 2] ws = {WS}> {
    boxes = MatMul (x, wb)
    logit = MatMul (x, ws)
    scores = Sigmoid (logit)
    out = Concat <axis = 1> (boxes, scores)
}
"""


def _detector(parse_model):
    rng = np.random.default_rng(0)
    wb = rng.normal(size=(8, 4)) * 120.0
    ws = rng.normal(size=(8, 2))
    text = SCORES.replace("{WB}", "{" + ", ".join(f"{v:.4f}" for v in wb.ravel()) + "}")
    text = text.replace("{WS}", "{" + ", ".join(f"{v:.4f}" for v in ws.ravel()) + "}")
    model = parse_model(text)
    for i, n in enumerate(model.graph.node):
        n.name = n.name or f"{n.op_type.lower()}_{i}"
    return oq.optimize_model(model), rng


def test_the_guard_flags_a_concat_that_loses_the_scores_and_its_remedy_restores_them(
        parse_model):
    model, rng = _detector(parse_model)
    samples = rng.normal(size=(64, 1, 8)).astype(np.float32)
    test_x = rng.normal(size=(200, 8)).astype(np.float32)
    # collect="all": the ranges serve the remedy's options too.
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", batch_size=16, collect="all")
    cal.collect_data(samples)
    ranges = cal.compute_range()
    quantized = oq.quantize(model, ranges, calibrator=cal)
    fp32 = _session(model).run(None, {"x": test_x})[0]
    int8 = _session(quantized, emulate=True).run(None, {"x": test_x})[0]
    # The shared range is hundreds wide: every score becomes 0 or one step.
    assert np.abs(fp32[:, :4]).max() > 100
    assert np.abs(int8[:, 4:] - fp32[:, 4:]).max() > 0.3
    with pytest.warns(oq.RangeWarning, match="exclude_nodes") as caught:
        result = oq.analyze(model, quantized, samples, calibrator=cal)
    r = result.record("scores")
    assert r.flags == ("shared_resolution",)
    assert r.below_step > 0.9 and r.scale > 1.0 and "boxes" in r.shared_with
    assert len(r.remedy_exclude_nodes) == 1
    concat = r.remedy_exclude_nodes[0]
    assert any(f"exclude_nodes=[{concat!r}]" in str(w.message) for w in caught)
    # The remedy it names: the Concat float. The scores come back with only
    # the error of their own logits' 8-bit range (a step of ~0.06 through a
    # Sigmoid).
    fixed = oq.quantize(model, ranges, calibrator=cal, exclude_nodes=[concat])
    out = _session(fixed, emulate=True).run(None, {"x": test_x})[0]
    np.testing.assert_allclose(out[:, 4:], fp32[:, 4:], atol=0.03)
    assert np.abs(out[:, 4:] - fp32[:, 4:]).mean() < 0.01
    # The boxes keep their 8-bit range (the Concat's, now the MatMul's own).
    np.testing.assert_allclose(out[:, :4], int8[:, :4], atol=2 * r.scale)
    again = oq.analyze(model, fixed, samples, calibrator=cal)  # no warning now
    assert not again.flagged()


def test_the_guard_flags_a_clipped_output_and_the_method_it_names_fixes_it(parse_model):
    model, rng = _detector(parse_model)
    samples = rng.normal(size=(64, 1, 8)).astype(np.float32)
    cal = oq.Calibrator(model, "PERCENTILE_ASYM", percentage=90.0, batch_size=16)
    cal.collect_data(samples)
    quantized = oq.quantize(model, cal.compute_range(), calibrator=cal)
    with pytest.warns(oq.RangeWarning):
        result = oq.analyze(model, quantized, samples, calibrator=cal,
                            methods=["PERCENTILE_ASYM", "MIN_MAX_ASYM"])
    out = result.record("out")
    assert out.feeds_output and "clips_output" in out.flags and out.clipped > 0.01
    assert out.remedy_methods == ("MIN_MAX_ASYM",)
    fixed = oq.quantize(model, cal.compute_range("MIN_MAX_ASYM"), calibrator=cal)
    with pytest.warns(oq.RangeWarning) as caught:  # the scores' Concat still warns
        again = oq.analyze(model, fixed, samples, calibrator=cal)
    assert again.record("out").clipped == 0.0
    assert all("clips" not in r.flags and "clips_output" not in r.flags for r in again)
    assert all("shared_resolution" in str(w.message) for w in caught)


def test_arguments_are_checked(cnn):
    model, samples, cal, ranges = cnn
    quantized = oq.quantize(model, ranges, calibrator=cal)
    with pytest.raises(oq.InvalidArgumentError, match="clip_limit"):
        oq.analyze(model, quantized, samples, calibrator=cal, clip_limit=2.0)
    with pytest.raises(oq.InvalidArgumentError, match="method"):
        oq.analyze(model, quantized, samples, calibrator=cal, methods=["NOPE"])


def test_plots_and_dataframe(cnn, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    import matplotlib

    matplotlib.use("Agg")
    model, samples, cal, ranges = cnn
    quantized = oq.quantize(model, ranges, calibrator=cal)
    result = oq.analyze(model, quantized, samples, calibrator=cal)
    ax = result.plot_sqnr()
    alone, accumulated = ax.get_lines()[:2]
    assert list(alone.get_ydata()) == pytest.approx([r.alone_db for r in result])
    assert list(accumulated.get_ydata()) == pytest.approx([r.accumulated_db for r in result])
    ax = result.plot_histogram("r1")
    assert len([line for line in ax.get_lines()]) == 2 * len(oq.CalibrationMethod)
    frame = result.to_dataframe()
    assert list(frame["tensor"]) == [r.tensor for r in result]
    assert frame.loc[0, "MSE_SYM_max"] == result[0].method_ranges["MSE_SYM"][1]
    assert "alone dB" in str(result)


def test_the_package_imports_without_matplotlib_and_pandas():
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['pandas'] = None\n"
            "import onnxquant as oq\n"
            "from onnxquant.analyze import LayerAnalysis\n"
            "r = LayerAnalysis([], {}, 0)\n"
            "for f in (r.to_dataframe, r.plot_sqnr):\n"
            "    try:\n"
            "        f()\n"
            "    except oq.MissingExtraError as e:\n"
            "        assert 'onnxquant[analysis]' in str(e) and isinstance(e, ImportError)\n"
            "    else:\n"
            "        raise SystemExit('no error')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)


def test_cli_prints_the_table_and_writes_the_figures(cnn, tmp_path):
    pytest.importorskip("matplotlib")
    from onnxquant.cli import main

    model, samples, cal, ranges = cnn
    model_path, q_path = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(model, model_path)
    onnx.save(oq.quantize(model, ranges, calibrator=cal), q_path)
    data = tmp_path / "cal.npz"
    np.savez(data, image=np.concatenate(samples))
    figures = tmp_path / "figures"
    assert main(["analyze", str(model_path), str(q_path), "--calibration-data", str(data),
                 "--figures", str(figures), "--histogram", "r1"]) == 0
    assert (figures / "sqnr.png").stat().st_size > 1000
    assert (figures / "histogram_r1.png").stat().st_size > 1000


def test_the_concat_int16_override_the_guard_names_restores_the_scores(parse_model):
    model, rng = _detector(parse_model)
    samples = rng.normal(size=(64, 1, 8)).astype(np.float32)
    test_x = rng.normal(size=(200, 8)).astype(np.float32)
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", batch_size=16)
    cal.collect_data(samples)
    quantized = oq.quantize(model, cal.compute_range(), calibrator=cal)
    with pytest.warns(oq.RangeWarning) as caught:
        result = oq.analyze(model, quantized, samples, calibrator=cal)
    concat = result.record("scores").remedy_exclude_nodes[0]
    override = f"QuantOptions(overrides={{{concat!r}: {{'activation_type': 'int16'}}}})"
    assert any(override in str(w.message) for w in caught)
    options = oq.QuantOptions(overrides={concat: {"activation_type": "int16"}})
    cal16 = oq.Calibrator(model, "MIN_MAX_ASYM", batch_size=16, options=options)
    cal16.collect_data(samples)
    fixed = oq.quantize(model, cal16.compute_range(), options=options, calibrator=cal16)
    fp32 = _session(model).run(None, {"x": test_x})[0]
    out = _session(fixed).run(None, {"x": test_x})[0]  # as deployed
    # The scores keep only the error of their logits' 8-bit range.
    np.testing.assert_allclose(out[:, 4:], fp32[:, 4:], atol=0.03)
    assert np.abs(out[:, 4:] - fp32[:, 4:]).mean() < 0.01
