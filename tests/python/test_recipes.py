"""Recipes (onnxquant.recipes): presets run end to end and ONNX Runtime runs
the result; the report's figures are checked against what changed in the
models, computed here with numpy; JSON round trip; typed errors naming the
bad key; the CLI's --recipe."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant.cli import main


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onh.to_array(t) for t in model.graph.initializer}


def _chain_model(seed: int = 0) -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv a (3->8) -> Relu -> Conv b (8->8) -> Relu -> Conv c
    (8->4, 1x1) -> GlobalAveragePool -> Flatten -> Gemm -> y [N,5]; Conv a's
    channel ranges spread over two decades, Conv b has heavy-tailed weights."""
    rng = np.random.default_rng(seed)
    wa = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    wa *= np.geomspace(0.03, 3, 8).astype(np.float32)[:, None, None, None]
    inits = [
        onh.from_array(wa, "wa"),
        onh.from_array(rng.normal(size=8).astype(np.float32), "ba"),
        onh.from_array(rng.standard_t(3, size=(8, 8, 3, 3)).astype(np.float32) * 0.3, "wb"),
        onh.from_array(rng.normal(size=8).astype(np.float32) * 0.1, "bb"),
        onh.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), "wc"),
        onh.from_array(rng.normal(size=4).astype(np.float32), "bc"),
        onh.from_array(rng.normal(size=(4, 5)).astype(np.float32), "wg"),
        onh.from_array(rng.normal(size=5).astype(np.float32), "bg"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        oh.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        oh.make_node("Conv", ["rb", "wc", "bc"], ["c"], name="conv_c"),
        oh.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["f"], name="flatten"),
        oh.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="gemm"),
    ]
    graph = oh.make_graph(nodes, "chain",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                     ["N", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
                          inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _samples(n: int = 32, seed: int = 1) -> list[np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)
    return [x[i:i + 1] for i in range(n)]


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


# --- presets end to end -------------------------------------------------------

@pytest.mark.parametrize("name", ["cpu_default", "npu_pow2", "w4a8"])
def test_preset_runs_end_to_end_and_ort_runs_the_result(name):
    model = _chain_model()
    result = oq.apply_recipe(model, _samples(), name)
    x = np.random.default_rng(7).normal(size=(16, 3, 8, 8)).astype(np.float32)
    want = _session(model).run(None, {"x": x})[0]
    got = _session(result.model).run(None, {"x": x})[0]
    # The quantized model computes the float one: its error is small beside the logits.
    assert np.sqrt(np.mean((got - want) ** 2)) < 0.2 * np.std(want)
    kinds = [t.technique for t in result.report.techniques]
    expected = {"cpu_default": [],
                "npu_pow2": ["cross_layer_equalization", "bias_correction",
                             "weight_range_search"],
                "w4a8": ["cross_layer_equalization", "adaround", "bias_correction",
                         "weight_range_search"]}[name]
    assert kinds == expected
    assert name in str(result.report)


def test_samples_as_one_array_or_a_generator_give_the_same_model():
    model = _chain_model()
    listed = oq.apply_recipe(model, _samples(), "npu_pow2").model
    # One axis more than the input [N, 3, 8, 8]: samples along axis 0.
    array = oq.apply_recipe(model, np.stack(_samples()), "npu_pow2").model
    generated = oq.apply_recipe(model, (s for s in _samples()), "npu_pow2").model
    assert _inits(array).keys() == _inits(listed).keys() == _inits(generated).keys()
    for name, value in _inits(listed).items():
        np.testing.assert_array_equal(_inits(array)[name], value)
        np.testing.assert_array_equal(_inits(generated)[name], value)


def test_presets_are_listed_and_set_their_modes():
    presets = oq.recipes()
    assert set(presets) == {"cpu_default", "npu_pow2", "w4a8"}
    npu = oq.Recipe.preset("npu_pow2")
    assert (npu.options.per_channel, npu.options.power_of_two, npu.options.weight_range) == \
        (False, "ceil", "mse")
    assert npu.steps[0] == oq.CrossLayerEqualization(power_of_two=True)
    w4a8 = oq.Recipe.preset("w4a8")
    assert (w4a8.options.weight_type, w4a8.options.weight_range) == ("int4", "mse")
    assert [s.kind for s in w4a8.steps] == ["cross_layer_equalization", "adaround",
                                            "bias_correction"]
    with pytest.raises(oq.InvalidArgumentError, match="'npu'"):
        oq.Recipe.preset("npu")


def test_npu_pow2_writes_power_of_two_per_tensor_weight_scales():
    result = oq.apply_recipe(_chain_model(), _samples(), "npu_pow2")
    inits = _inits(result.model)
    scales = [inits[n.input[1]] for n in result.model.graph.node
              if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
              and inits[n.input[0]].dtype == np.int8]
    assert scales and all(s.size == 1 for s in scales)
    for s in scales:
        assert float(s) == 2.0 ** np.round(np.log2(float(s)))


# --- the report against the models ---------------------------------------------

def test_equalization_entry_matches_the_weights():
    model = _chain_model()
    recipe = oq.Recipe(steps=[oq.CrossLayerEqualization()])
    result = oq.apply_recipe(model, _samples(), recipe)
    entry = result.report.techniques[0]
    before, after = _inits(oq.optimize_model(model)), _inits(result.float_model)

    def channel_max(w, axis):
        return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)

    # Pair a -> b divided Conv a's output channels by its scales; pair b -> c
    # multiplied Conv c's input channels by its own (Conv b took both).
    s_ab = channel_max(before["wa"], 0) / channel_max(after["wa"], 0)
    s_bc = channel_max(after["wc"], 1) / channel_max(before["wc"], 1)
    assert [(p.first, p.second) for p in entry.record.pairs] == [("conv_a", "conv_b"),
                                                               ("conv_b", "conv_c")]
    assert entry.values["pairs"] == 2
    want = np.mean([np.mean(np.abs(np.log(s_ab))), np.mean(np.abs(np.log(s_bc)))])
    assert entry.values["mean_abs_log_scale"] == pytest.approx(want, rel=1e-4)
    assert entry.values["mean_abs_log_scale"] > 0.1  # Conv a's spread was two decades


def test_bias_entry_matches_the_bias_differences():
    model = _chain_model()
    recipe = oq.Recipe(steps=[oq.BiasCorrection()],
                       options=oq.QuantOptions(per_channel=False, power_of_two="ceil"))
    result = oq.apply_recipe(model, _samples(), recipe)
    entry = result.report.techniques[0]
    before, after = _inits(oq.optimize_model(model)), _inits(result.float_model)
    deltas = []
    for name in ("conv_a", "conv_b", "conv_c", "gemm"):
        bias = _node(result.float_model, name).input[2]
        deltas.append(np.abs(after[bias] - before[bias]))
    assert entry.values["biases_corrected"] == 4
    assert entry.values["mean_abs_delta"] == pytest.approx(
        float(np.mean(np.concatenate(deltas))), rel=1e-5)
    assert entry.values["mean_abs_delta"] > 0


def test_weight_search_entry_counts_the_clipped_channels():
    model = _chain_model()
    # max|w| = 1.01 just above 127 * 2^-7 in Conv b's channels 0-3: the
    # power-of-two ceiling gives them 2^-6, the search 2^-7, which clips.
    wb = np.random.default_rng(3).uniform(-1, 1, size=(8, 8, 3, 3)).astype(np.float32)
    wb[:4, 0, 0, 0] = 1.01
    next(t for t in model.graph.initializer if t.name == "wb").CopyFrom(
        onh.from_array(wb, "wb"))
    recipe = oq.Recipe(options=oq.QuantOptions(weight_range="mse", power_of_two="ceil",
                                               target="exact"))
    result = oq.apply_recipe(model, _samples(), recipe)
    entry = result.report.techniques[0]
    assert entry.technique == "weight_range_search"
    floats, q = _inits(oq.optimize_model(model)), _inits(result.model)
    clipped = channels = 0
    for node, axis in (("conv_a", 0), ("conv_b", 0), ("conv_c", 0), ("gemm", 1)):
        w = np.moveaxis(floats[_node(model, node).input[1]], axis, 0)
        dq = next(n for n in result.model.graph.node if n.op_type == "DequantizeLinear"
                  and n.output[0] == _node(result.model, node).input[1])
        scale = q[dq.input[1]]
        # A channel is clipped when its range, 127 codes times its scale, lies
        # below its largest |w|.
        top = np.abs(w.reshape(len(w), -1)).max(axis=1)
        channels += len(top)
        clipped += int(np.sum(top > 127 * scale * (1 + 1e-6)))
    assert entry.values == {"channels_clipped": clipped, "channels": channels}
    assert clipped >= 4


def test_weight_search_applies_to_int4_weights():
    model = _chain_model()
    scales = {}
    for rule in ("minmax", "mse"):
        recipe = oq.Recipe(options=oq.QuantOptions(weight_type="int4", weight_range=rule))
        result = oq.apply_recipe(model, _samples(), recipe)
        q = _inits(result.model)
        dq = next(n for n in result.model.graph.node if n.op_type == "DequantizeLinear"
                  and n.output[0] == _node(result.model, "conv_b").input[1])
        scales[rule] = q[dq.input[1]]
    w = _inits(oq.optimize_model(model))["wb"]
    top = np.abs(w.reshape(len(w), -1)).max(axis=1)
    np.testing.assert_allclose(scales["minmax"], top / 7, rtol=1e-6)
    # At 4 bits the squared-error optimum clips the heavy-tailed channels.
    clipped = int(np.sum(top > 7 * scales["mse"] * (1 + 1e-6)))
    assert clipped > 0
    entry = result.report.techniques[0]
    assert entry.values["channels_clipped"] >= clipped


# --- JSON and errors ------------------------------------------------------------

def test_json_round_trip(tmp_path):
    recipe = oq.Recipe(steps=[oq.CrossLayerEqualization(replace_relu6=True, max_sweeps=7),
                              oq.BiasCorrection(batch_size=4)],
                       options=oq.QuantOptions(per_channel=False, power_of_two="mse",
                                               exclude_nodes=("gemm",)),
                       method="PERCENTILE_ASYM", name="mine")
    path = tmp_path / "r.json"
    recipe.to_json(path)
    data = json.loads(path.read_text())
    assert data["steps"][0] == {"technique": "cross_layer_equalization", "replace_relu6": True,
                                "power_of_two": False, "max_sweeps": 7, "tolerance": 1e-4,
                                "absorb_high_bias": False, "high_bias_sigmas": 3.0}
    assert data["options"] == {"per_channel": False, "power_of_two": "mse",
                               "exclude_nodes": ["gemm"]}
    assert oq.Recipe.from_json(path) == recipe
    for preset in oq.recipes().values():
        preset.to_json(path)
        assert oq.Recipe.from_json(path) == preset


@pytest.mark.parametrize("data, words", [
    ({"stepz": []}, "'stepz'"),
    ({"options": {"weight_rnge": "mse"}}, "'weight_rnge'"),
    ({"options": {"power_of_two": "floor"}}, "power_of_two"),
    ({"options": {"per_channel": "no"}}, "'per_channel'"),
    ({"steps": [{"technique": "fast_finetuning"}]}, "'fast_finetuning'"),
    ({"steps": [{"technique": "bias_correction", "batch": 3}]}, "'batch'"),
    ({"steps": [{"technique": "cross_layer_equalization", "max_sweeps": 0}]},
     "'max_sweeps'"),
    ({"steps": [{"technique": "bias_correction"},
                {"technique": "cross_layer_equalization"}]}, "cross_layer_equalization first"),
    ({"method": "MINMAX"}, "'MINMAX'"),
])
def test_bad_recipe_keys_give_typed_errors_naming_them(tmp_path, data, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(oq.InvalidArgumentError, match=words):
        oq.Recipe.from_json(path)


def test_recipe_file_errors_are_typed(tmp_path):
    with pytest.raises(oq.InvalidArgumentError, match="does not exist"):
        oq.Recipe.load(tmp_path / "none.json")
    path = tmp_path / "broken.json"
    path.write_text("{\"steps\": [}")
    with pytest.raises(oq.InvalidArgumentError, match="line 1"):
        oq.Recipe.from_json(path)


# --- quantize_model and the CLI ----------------------------------------------

def test_quantize_model_takes_a_recipe(tmp_path):
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_chain_model(), model)
    report = oq.quantize_model(model, out, _samples(), recipe="npu_pow2")
    assert isinstance(report, oq.RecipeReport)
    assert [t.technique for t in report.techniques][:2] == ["cross_layer_equalization",
                                                           "bias_correction"]
    _session(onnx.load(out))
    with pytest.raises(oq.InvalidArgumentError, match="per_channel"):
        oq.quantize_model(model, out, _samples(), recipe="npu_pow2", per_channel=True)


def test_cli_recipe(tmp_path, capsys):
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_chain_model(), model)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.concatenate(_samples()))
    recipe = oq.Recipe(steps=[oq.BiasCorrection()],
                       options=oq.QuantOptions(per_channel=False, power_of_two="ceil"),
                       name="file_recipe")
    recipe.to_json(tmp_path / "r.json")
    report = tmp_path / "report.json"
    for given, name in (("npu_pow2", "npu_pow2"), (str(tmp_path / "r.json"), "file_recipe")):
        assert main(["quantize", str(model), "-o", str(out), "--calibration-data", str(data),
                     "-q", "--recipe", given, "--report-json", str(report)]) == 0
        printed = capsys.readouterr().out
        assert f"recipe {name}" in printed and "biases corrected" in printed
        assert json.loads(report.read_text())["report"]["recipe"]["name"] == name
        quantized = onnx.load(out)
        inits = _inits(quantized)
        scales = [inits[n.input[1]] for n in quantized.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].dtype == np.int8]
        assert scales and all(s.size == 1 for s in scales)  # per tensor, from the recipe
    assert main(["quantize", str(model), "-o", str(out), "--calibration-data", str(data),
                 "-q", "--recipe", "npu_pow2", "--weight-range", "mse"]) == 2
    assert "--weight-range" in capsys.readouterr().err
    assert main(["quantize", str(model), "-o", str(out), "--calibration-data", str(data),
                 "-q", "--recipe", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
