"""SmoothQuant (onnxquant.recovery.smooth_quant and the recipe step) checked
against ONNX Runtime running the models and against numpy written here."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant import recovery
from onnxquant.cli import main

K = 32
OUTLIERS = (3, 7, 20)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _block(rng: np.random.Generator, factor: float = 40.0) -> onnx.ModelProto:
    """x [N, 16, K] -> LayerNormalization (gamma x``factor`` on three channels)
    -> h -> MatMul q, k, v (Q, K, V: one group); x -> Mul(gamma2) -> Add(beta2)
    -> MatMul -> Relu -> MatMul (the second reads a Relu: skipped)."""
    gamma = rng.uniform(0.5, 1.5, K).astype(np.float32)
    gamma[list(OUTLIERS)] *= factor
    inits = [onh.from_array(gamma, "gamma"),
             onh.from_array(rng.normal(size=K).astype(np.float32) * 0.1, "beta"),
             onh.from_array(rng.uniform(0.5, 1.5, K).astype(np.float32) * np.where(
                 np.isin(np.arange(K), OUTLIERS), factor, 1).astype(np.float32), "gamma2"),
             onh.from_array(rng.normal(size=K).astype(np.float32) * 0.1, "beta2")]
    for name, shape in (("wq", (K, K)), ("wk", (K, K)), ("wv", (K, K)), ("w1", (K, 48)),
                        ("w2", (48, 8))):
        inits.append(onh.from_array(
            (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), name))
    nodes = [
        oh.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        oh.make_node("MatMul", ["h", "wq"], ["q"], name="mq"),
        oh.make_node("MatMul", ["h", "wk"], ["k"], name="mk"),
        oh.make_node("MatMul", ["h", "wv"], ["v"], name="mv"),
        oh.make_node("Mul", ["x", "gamma2"], ["g"], name="mul_gamma"),
        oh.make_node("Add", ["g", "beta2"], ["b"], name="add_beta"),
        oh.make_node("MatMul", ["b", "w1"], ["m"], name="m1"),
        oh.make_node("Relu", ["m"], ["r"], name="relu"),
        oh.make_node("MatMul", ["r", "w2"], ["y"], name="m2"),
    ]
    outs = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 16, K if n != "y" else 8])
            for n in "qkvy"]
    graph = oh.make_graph(nodes, "block",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                     ["N", 16, K])], outs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.normal(size=(1, 16, K)).astype(np.float32) for _ in range(n)]


def _quantized(model: onnx.ModelProto, samples) -> onnx.ModelProto:
    cal = oq.Calibrator(model, "MIN_MAX_ASYM")
    cal.collect_data(samples)
    return oq.quantize(model, cal.compute_range(), calibrator=cal)


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return _session(model).run(None, {"x": x})


def test_smoothed_model_computes_the_same_function_in_ort():
    rng = np.random.default_rng(0)
    model = _block(rng)
    smoothed, record = recovery.smooth_quant(model, _samples(rng, 32))
    x = rng.normal(size=(8, 16, K)).astype(np.float32)
    for a, b in zip(_outputs(model, x), _outputs(smoothed, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    groups = {g.activation: g for g in record.groups}
    assert set(groups) == {"h", "b"}
    assert groups["h"].nodes == ("mq", "mk", "mv")
    assert groups["h"].absorb == "LayerNormalization"
    assert groups["b"].absorb == "constants"
    assert dict(record.skipped)["r"].find("Relu node 'relu'") >= 0
    # The weights did change: the factors are not all 1.
    assert groups["h"].applied and groups["h"].scale_max / groups["h"].scale_min > 2


def test_fixed_alpha_gives_the_factors_of_the_formula():
    rng = np.random.default_rng(1)
    model = _block(rng)
    samples = _samples(rng, 16)
    smoothed, record = recovery.smooth_quant(model, samples, alpha=0.5)
    # max |h_j| over the samples, from ORT with h as an output.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(oh.make_tensor_value_info("h", onnx.TensorProto.FLOAT,
                                                        ["N", 16, K]))
    session = _session(probe)
    h = np.concatenate([session.run(["h"], {"x": s})[0].reshape(-1, K) for s in samples])
    w = np.concatenate([onh.to_array(t) for n in ("wq", "wk", "wv")
                        for t in model.graph.initializer if t.name == n], axis=1)
    want = np.sqrt(np.abs(h).max(axis=0)) / np.sqrt(np.abs(w).max(axis=1))
    group = next(g for g in record.groups if g.activation == "h")
    assert group.alpha == 0.5 and group.applied
    np.testing.assert_allclose(group.scales, want, rtol=1e-5)
    wq = next(onh.to_array(t) for t in smoothed.graph.initializer if t.name == "wq")
    np.testing.assert_allclose(wq, onh.to_array(model.graph.initializer[4]) * want[:, None],
                               rtol=1e-5)


def test_int8_error_is_lower_with_smooth_quant_on_outlier_channels():
    rng = np.random.default_rng(2)
    model = oq.optimize_model(_block(rng))
    samples = _samples(rng, 64)
    smoothed, record = recovery.smooth_quant(model, samples)
    x = rng.normal(size=(32, 16, K)).astype(np.float32)
    reference = _outputs(model, x)
    errors = {}
    for name, m in (("plain", model), ("smooth", smoothed)):
        got = _outputs(_quantized(m, samples), x)  # default session: fused kernels
        errors[name] = [float(np.mean((g - r) ** 2) / np.mean(r ** 2))
                        for g, r in zip(got, reference)]
    # q, k, v (one group) and y (its first MatMul smoothed) lose clearly less
    # (measured: 4 to 6 times less).
    for i in range(4):
        assert errors["smooth"][i] < 0.5 * errors["plain"][i], errors
    for g in record.groups:
        assert g.error_after <= g.error_before


def test_search_keeps_the_grid_minimum_and_skips_groups_it_cannot_improve():
    rng = np.random.default_rng(3)
    model = _block(rng, factor=1.0)  # no outliers: little to gain
    samples = _samples(rng, 16)
    _, searched = recovery.smooth_quant(model, samples, alpha_steps=4)
    for g in searched.groups:
        fixed = {a: next(h for h in recovery.smooth_quant(model, samples, alpha=a)[1].groups
                         if h.activation == g.activation)
                 for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
        best = min(fixed, key=lambda a: fixed[a].error_after)
        if g.applied:
            assert g.alpha == best
            assert g.error_after == pytest.approx(fixed[best].error_after)
        else:
            assert fixed[best].error_after >= g.error_before


def test_insert_mul_smooths_an_activation_read_elsewhere():
    rng = np.random.default_rng(4)
    model = _block(rng)
    # h also feeds a residual Add: it cannot absorb the factors.
    model.graph.node.append(oh.make_node("Add", ["h", "x"], ["res"], name="residual"))
    model.graph.output.append(oh.make_tensor_value_info("res", onnx.TensorProto.FLOAT,
                                                        ["N", 16, K]))
    samples = _samples(rng, 16)
    _, skipped = recovery.smooth_quant(model, samples)
    assert "'residual'" in dict(skipped.skipped)["h"]
    inserted, record = recovery.smooth_quant(model, samples, insert_mul=True, alpha=0.5)
    group = next(g for g in record.groups if g.activation == "h")
    assert group.absorb == "inserted Mul"
    x = rng.normal(size=(4, 16, K)).astype(np.float32)
    for a, b in zip(_outputs(model, x), _outputs(inserted, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_the_search_emulates_the_weights_the_options_give():
    rng = np.random.default_rng(8)
    model = _block(rng)
    samples = _samples(rng, 8)
    errors = {}
    for label, options in (("int8", None), ("int4", oq.QuantOptions(weight_type="int4")),
                           ("per tensor", oq.QuantOptions(per_channel=False))):
        _, rec = recovery.smooth_quant(model, samples, alpha=0.5, options=options)
        errors[label] = next(g for g in rec.groups if g.activation == "h").error_after
    # 15 levels lose far more than 255; one scale per weight more than one per column.
    assert errors["int4"] > 10 * errors["int8"], errors
    assert errors["per tensor"] > errors["int8"], errors


def test_one_alpha_per_model_minimises_the_summed_error():
    rng = np.random.default_rng(9)
    model = _block(rng)
    samples = _samples(rng, 16)
    _, rec = recovery.smooth_quant(model, samples, alpha_steps=4, alpha_scope="model")
    assert len({g.alpha for g in rec.groups}) == 1
    sums = {a: sum(g.error_after for g in
                   recovery.smooth_quant(model, samples, alpha=a)[1].groups)
            for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert rec.groups[0].alpha == min(sums, key=sums.get)
    assert sum(g.error_after for g in rec.groups) == pytest.approx(min(sums.values()))


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"alpha": -0.1}, {"alpha": True},
                                    {"alpha_steps": 0}, {"search_rows": 0},
                                    {"options": "int8"}, {"alpha_scope": "layer"}])
def test_bad_arguments_are_typed_errors(kwargs):
    rng = np.random.default_rng(5)
    with pytest.raises(oq.InvalidArgumentError):
        recovery.smooth_quant(_block(rng), _samples(rng, 2), **kwargs)


def test_no_samples_is_a_calibration_data_error():
    with pytest.raises(oq.CalibrationDataError):
        recovery.smooth_quant(_block(np.random.default_rng(6)), [])


def test_recipe_step_round_trips_and_reports(tmp_path):
    rng = np.random.default_rng(7)
    recipe = oq.Recipe(steps=(oq.SmoothQuant(alpha=0.5), oq.BiasCorrection()), name="sq")
    path = tmp_path / "sq.json"
    recipe.to_json(path)
    assert oq.Recipe.from_json(path) == recipe
    searched = oq.Recipe(steps=(oq.SmoothQuant(alpha_scope="model"),))
    assert oq.Recipe.from_dict(searched.to_dict()) == searched
    result = oq.apply_recipe(_block(rng), _samples(rng, 16), recipe)
    entry = result.report.techniques[0]
    assert entry.technique == "smooth_quant"
    assert entry.values["groups_smoothed"] == 2 and entry.values["skipped"] == 1
    assert "2 of 2 MatMul groups smoothed" in str(result.report)
    x = rng.normal(size=(2, 16, K)).astype(np.float32)
    _session(result.model).run(None, {"x": x})


@pytest.mark.parametrize("data,words", [
    ({"steps": [{"technique": "smooth_quant", "alpha": 2}]}, "'alpha'"),
    ({"steps": [{"technique": "smooth_quant", "insert_mul": 1}]}, "'insert_mul'"),
    ({"steps": [{"technique": "smooth_quant", "alpha_scope": "all"}]}, "'alpha_scope'"),
    ({"steps": [{"technique": "bias_correction"}, {"technique": "smooth_quant"}]},
     "before smooth_quant"),
])
def test_bad_smooth_quant_steps_are_typed_errors(data, words):
    with pytest.raises(oq.InvalidArgumentError, match=words):
        oq.Recipe.from_dict(data)


def test_cli_runs_a_recipe_file_with_smooth_quant(tmp_path, capsys):
    rng = np.random.default_rng(10)
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_block(rng), model)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.concatenate(_samples(rng, 16)))
    oq.Recipe(steps=(oq.SmoothQuant(),), name="sq").to_json(tmp_path / "r.json")
    report = tmp_path / "report.json"
    assert main(["quantize", str(model), "-o", str(out), "--calibration-data", str(data),
                 "-q", "--recipe", str(tmp_path / "r.json"), "--report-json", str(report)]) == 0
    assert "smooth_quant: 2 of 2 MatMul groups smoothed" in capsys.readouterr().out
    entry = json.loads(report.read_text())["report"]["techniques"][0]
    assert entry["technique"] == "smooth_quant" and entry["values"]["groups_smoothed"] == 2
    x = rng.normal(size=(2, 16, K)).astype(np.float32)
    assert _session(onnx.load(out)).run(None, {"x": x})[0].shape == (2, 16, K)
