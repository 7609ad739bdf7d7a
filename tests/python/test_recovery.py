"""Recovery techniques (onnxquant.recovery, QuantOptions.weight_range) checked
against ONNX Runtime running the models and against numpy computations
written here."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant import _core, recovery


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onh.to_array(t) for t in model.graph.initializer if t.name == name)


def _chain_model(rng: np.random.Generator, act: str = "Relu") -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv a (3->6, 3x3) -> act -> Conv b (depthwise 6) -> PRelu
    -> Conv c (6->4, 1x1) -> GlobalAveragePool -> Flatten -> Gemm -> y [N,5].
    Conv a's channel ranges spread over three decades."""
    wa = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    wa *= np.array([0.01, 0.03, 0.1, 0.3, 1, 3], np.float32)[:, None, None, None]
    inits = [
        onh.from_array(wa, "wa"),
        onh.from_array(rng.normal(size=6).astype(np.float32), "ba"),
        onh.from_array(rng.normal(size=(6, 1, 3, 3)).astype(np.float32), "wb"),
        onh.from_array(rng.normal(size=6).astype(np.float32) * 0.1, "bb"),
        onh.from_array(np.full((6, 1, 1), 0.2, np.float32), "slope"),
        onh.from_array(rng.normal(size=(4, 6, 1, 1)).astype(np.float32), "wc"),
        onh.from_array(rng.normal(size=4).astype(np.float32), "bc"),
        onh.from_array(rng.normal(size=(4, 5)).astype(np.float32), "wg"),
        onh.from_array(rng.normal(size=5).astype(np.float32), "bg"),
        onh.from_array(np.array(0, np.float32), "lo"),
        onh.from_array(np.array(6, np.float32), "hi"),
    ]
    first = (oh.make_node("Clip", ["a", "lo", "hi"], ["ra"], name="act_a") if act == "Clip"
             else oh.make_node(act, ["a"], ["ra"], name="act_a"))
    nodes = [
        oh.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        first,
        oh.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", pads=[1, 1, 1, 1],
                     group=6),
        oh.make_node("PRelu", ["b", "slope"], ["rb"], name="act_b"),
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


def _brute_scale(w: np.ndarray, qmax: int, pow2: bool) -> float:
    """The squared-error optimum over the documented candidate grid, in numpy."""
    a = float(np.abs(w).max())
    if pow2:
        top = 2.0 ** np.ceil(np.log2(a / qmax))
        cands = [top / 2 ** j for j in range(12)]
    else:
        cands = [np.float32(np.float32(a) * np.float32(k) / np.float32(100) / np.float32(qmax))
                 for k in range(100, 9, -1)]
    errs = [float(np.sum((w - np.clip(np.round(w / s), -qmax, qmax) * s) ** 2))
            for s in cands]
    return float(cands[int(np.argmin(errs))])


# --- weight range search ------------------------------------------------------

@pytest.mark.parametrize("pow2", [False, True])
def test_weight_range_search_matches_numpy(pow2):
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(8, 4, 3, 3)).astype(np.float32)
    got = _core.search_weight_scales(w, 0, 127, pow2)
    for c in range(8):
        assert got[c] == pytest.approx(_brute_scale(w[c], 127, pow2), rel=1e-6)
    per_tensor = _core.search_weight_scales(w, -1, 127, pow2)
    assert per_tensor[0] == pytest.approx(_brute_scale(w, 127, pow2), rel=1e-6)


def test_quantize_with_weight_range_mse_stores_the_searched_scale():
    model = oq.optimize_model(_chain_model(np.random.default_rng(1)))
    x = np.random.default_rng(2).normal(size=(16, 3, 8, 8)).astype(np.float32)
    cal = oq.Calibrator(model, "MIN_MAX_ASYM")
    cal.collect_data([x[i:i + 1] for i in range(16)])
    ranges = cal.compute_range()
    weights = {t.name: onh.to_array(t) for t in model.graph.initializer}
    q = oq.quantize(model, ranges, per_channel=False, power_of_two="ceil",
                    weight_range="mse", target="exact")
    plain = oq.quantize(model, ranges, per_channel=False, power_of_two="ceil", target="exact")
    checked = 0
    for qm, mse in ((q, True), (plain, False)):
        inits = {t.name: onh.to_array(t) for t in qm.graph.initializer}
        for node in qm.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] + "" in inits \
                    and inits[node.input[0]].dtype == np.int8:
                source = [n for n in weights if node.output[0].startswith(n)]
                if not source:
                    continue
                w = weights[source[0]]
                scale = float(inits[node.input[1]])
                a = float(np.abs(w).max())
                want = _brute_scale(w, 127, True) if mse else 2.0 ** np.ceil(np.log2(a / 127))
                assert scale == pytest.approx(want), (source[0], mse)
                checked += 1
    assert checked >= 6


def test_weight_range_is_validated():
    with pytest.raises(oq.InvalidArgumentError, match="weight_range"):
        oq.QuantOptions(weight_range="percentile")


# --- cross-layer equalization -------------------------------------------------

def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_cle_preserves_the_function_and_reduces_the_spread():
    rng = np.random.default_rng(3)
    model = oq.optimize_model(_chain_model(rng))
    equalized, record = recovery.equalize_cross_layer(model)
    assert [(p.first, p.second) for p in record.pairs] == [("conv_a", "conv_b"),
                                                            ("conv_b", "conv_c")]
    assert record.converged and record.sweeps > 1
    x = rng.normal(size=(8, 3, 8, 8)).astype(np.float32) * 3
    before = _session(model).run(None, {"x": x})[0]
    after = _session(equalized).run(None, {"x": x})[0]
    assert _max_rel_diff(before, after) < 1e-5
    # The spread of conv_a's channel ranges, measured here.
    def spread(m):
        r = np.abs(_init(m, "wa")).reshape(6, -1).max(axis=1)
        return r.max() / r.min()
    assert spread(model) > 100
    assert spread(equalized) < spread(model) / 10
    assert record.pairs[0].spread_before == pytest.approx(spread(model), rel=1e-5)
    assert record.pairs[0].spread_after == pytest.approx(spread(equalized), rel=1e-5)
    # Equalized: conv_a's output ranges equal conv_b's (depthwise) input ranges.
    ra = np.abs(_init(equalized, "wa")).reshape(6, -1).max(axis=1)
    rb = np.abs(_init(equalized, "wb")).reshape(6, -1).max(axis=1)
    np.testing.assert_allclose(ra, rb, rtol=1e-3)


def test_cle_relu6_stops_the_chain_or_is_replaced():
    rng = np.random.default_rng(4)
    model = oq.optimize_model(_chain_model(rng, act="Clip"))
    x = rng.normal(size=(8, 3, 8, 8)).astype(np.float32) * 3
    kept, record = recovery.equalize_cross_layer(model)
    assert record.clips_stopped == ("act_a",)
    assert [p.first for p in record.pairs] == ["conv_b"]
    np.testing.assert_array_equal(_init(kept, "wa"), _init(model, "wa"))
    assert _max_rel_diff(_session(model).run(None, {"x": x})[0],
                         _session(kept).run(None, {"x": x})[0]) < 1e-5
    replaced, record = recovery.equalize_cross_layer(model, replace_relu6=True)
    assert record.clips_replaced == ("act_a",)
    assert len(record.pairs) == 2
    assert [n.op_type for n in replaced.graph.node].count("Clip") == 0
    # The result computes the Relu version of the model.
    relu = oq.optimize_model(_chain_model(np.random.default_rng(4), act="Relu"))
    assert _max_rel_diff(_session(relu).run(None, {"x": x})[0],
                         _session(replaced).run(None, {"x": x})[0]) < 1e-5


@pytest.mark.parametrize("power_of_two", [False, True])
def test_cle_on_resnet8_preserves_outputs(zoo_dir, power_of_two):
    path = os.path.join(zoo_dir, "cifar10", "resnet8_cifar10.onnx")
    model = oq.optimize_model(path)
    equalized, record = recovery.equalize_cross_layer(path, power_of_two=power_of_two)
    assert record.normalized_here
    assert len(record.pairs) >= 3  # one per residual block
    assert record.converged
    x = np.random.default_rng(5).uniform(0, 255, size=(16, 3, 32, 32)).astype(np.float32)
    # The logits before the Softmax are compared: the graph's last Gemm.
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm").output[0]
    def logits(m):
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        m2.graph.output.append(oh.make_tensor_value_info(gemm, onnx.TensorProto.FLOAT, None))
        return _session(m2).run([gemm], {"input": x})[0]
    assert _max_rel_diff(logits(model), logits(equalized)) < 1e-4
    if power_of_two:  # each pair's first Conv: max|w| / 127 a power of two
        for pair in record.pairs:
            node = next(n for n in equalized.graph.node if n.name == pair.first)
            x = np.abs(_init(equalized, node.input[1])).max() / 127
            assert 1 - 1e-5 < x / 2.0 ** np.ceil(np.log2(x)) <= 1


@pytest.mark.parametrize("stem", ["resnet", "mobilenetv2", "efficientnet"])
def test_cle_on_cifar_models_preserves_outputs(stem):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "cifar", f"{stem}.onnx")
    model = oq.optimize_model(path)
    equalized, record = recovery.equalize_cross_layer(model)
    assert record.pairs and record.converged
    changed = [p.first for p in record.pairs if not np.allclose(p.scales, 1.0)]
    assert changed  # the weights did move
    x = np.random.default_rng(8).normal(size=(8, 3, 32, 32)).astype(np.float32)
    name = model.graph.input[0].name
    before = _session(model).run(None, {name: x})[0]
    after = _session(equalized).run(None, {name: x})[0]
    assert _max_rel_diff(before, after) < 1e-4


def test_cle_rejects_bad_arguments():
    with pytest.raises(oq.InvalidArgumentError, match="max_sweeps"):
        recovery.equalize_cross_layer(_chain_model(np.random.default_rng(0)), max_sweeps=0)


# --- bias correction ----------------------------------------------------------

def _numpy_pow2_per_tensor(w: np.ndarray) -> np.ndarray:
    """Per-tensor power-of-two fake quantization written here."""
    s = 2.0 ** np.ceil(np.log2(np.abs(w).max() / 127))
    return (np.clip(np.round(w / s), -127, 127) * s).astype(np.float32)


def _emulated(model: onnx.ModelProto, weights: set[str]) -> onnx.ModelProto:
    """``model`` with the initializers ``weights`` fake-quantized per tensor
    to powers of two (_numpy_pow2_per_tensor)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(onh.from_array(_numpy_pow2_per_tensor(onh.to_array(t)), t.name))
    return out


def _layer_means(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    outs = _session(m).run(names, {"x": x})
    return [o.mean(axis=tuple(i for i in range(o.ndim) if i != 1)) for o in outs]


def test_bias_correction_removes_the_measured_mean_error():
    rng = np.random.default_rng(6)
    model = oq.optimize_model(_chain_model(rng))
    samples = rng.normal(size=(64, 3, 8, 8)).astype(np.float32) * 2
    options = oq.QuantOptions(per_channel=False, power_of_two="ceil")
    corrected, record = recovery.correct_bias(
        model, [samples[i:i + 1] for i in range(64)], options=options)
    assert set(record.corrections) == {"conv_a", "conv_b", "conv_c", "gemm"}
    assert record.rounds == 4  # a chain: one layer per level
    outputs = ["a", "b", "c", "y"]
    weights = {"wa", "wb", "wc", "wg"}
    reference = _layer_means(model, samples, outputs)
    before = _layer_means(_emulated(model, weights), samples, outputs)
    after = _layer_means(_emulated(corrected, weights), samples, outputs)
    errors_before = [np.abs(b - r).max() for b, r in zip(before, reference)]
    assert max(errors_before) > 1e-3  # weight quantization did bias the layers
    for name, a, r in zip(outputs, after, reference):
        np.testing.assert_allclose(a, r, atol=1e-5 * max(1.0, np.abs(r).max()), err_msg=name)
    # The record holds what was subtracted: the new bias is the old less it.
    np.testing.assert_allclose(_init(corrected, "ba"),
                               _init(model, "ba") - record.corrections["conv_a"], rtol=1e-6)


def test_bias_correction_adds_a_bias_where_none_and_skips_matmul():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    m = rng.normal(size=(4, 2)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         oh.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
         oh.make_node("Flatten", ["p"], ["f"], name="flatten"),
         oh.make_node("MatMul", ["f", "m"], ["y"], name="matmul")],
        "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        [onh.from_array(w, "w"), onh.from_array(m, "m")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    corrected, record = recovery.correct_bias(
        model, list(rng.normal(size=(8, 1, 3, 4, 4)).astype(np.float32)),
        options=oq.QuantOptions(per_channel=False, power_of_two="ceil"))
    assert record.normalized_here
    assert set(record.corrections) == {"conv"}
    assert record.skipped[0][0] == "matmul"
    conv = next(n for n in corrected.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3
    np.testing.assert_allclose(_init(corrected, conv.input[2]), -record.corrections["conv"])


def test_bias_correction_with_a_branch_reading_a_corrected_layer():
    # conv1 -> If (both branches read conv1's output from the outer scope) -> conv2.
    rng = np.random.default_rng(9)
    then_branch = oh.make_graph([oh.make_node("Relu", ["c1"], ["t"])], "then", [],
                                [oh.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    else_branch = oh.make_graph([oh.make_node("Neg", ["c1"], ["e"])], "else", [],
                                [oh.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    graph = oh.make_graph(
        [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
         oh.make_node("If", ["flag"], ["r"], name="branch", then_branch=then_branch,
                      else_branch=else_branch),
         oh.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")],
        "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, 4, 4])],
        [onh.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w1"),
         onh.from_array(rng.normal(size=4).astype(np.float32), "b1"),
         onh.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w2"),
         onh.from_array(rng.normal(size=2).astype(np.float32), "b2"),
         onh.from_array(np.array(True), "flag")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    samples = list(rng.normal(size=(16, 1, 3, 4, 4)).astype(np.float32))
    corrected, record = recovery.correct_bias(
        model, samples, options=oq.QuantOptions(per_channel=False, power_of_two="ceil"))
    assert set(record.corrections) == {"conv1", "conv2"}
    assert record.rounds == 2  # conv2 waits for conv1, read through the branch
    x = np.concatenate(samples)
    before = _session(oq.optimize_model(model)).run(None, {"x": x})[0]
    after = _session(corrected).run(None, {"x": x})[0]
    assert not np.allclose(before, after)  # the biases moved


def test_bias_correction_rejects_no_samples():
    with pytest.raises(oq.CalibrationDataError):
        recovery.correct_bias(_chain_model(np.random.default_rng(0)),
                              [])


def test_a_model_onnx_runtime_cannot_load_gives_a_typed_error():
    # A custom op that ONNX Runtime has no kernel for: bias correction, which runs the
    # model, raises onnxquant's error naming the model, not ONNX Runtime's.
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Mystery", ["c"], ["y"], name="mystery", domain="com.example")]
    model = helper.make_model(helper.make_graph(nodes, "custom", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    samples = [np.ones((1, 2, 4, 4), np.float32)]
    with pytest.raises(oq.UnsupportedModelError, match="'custom'.*Mystery"):
        oq.recovery.correct_bias(model, samples)


def _deep_model(rng: np.random.Generator, depth: int) -> onnx.ModelProto:
    """x [N,4,6,6] -> depth x (Conv 3x3 -> Relu, with a residual Add every
    second layer) -> Shape/Reshape round trip (an int64 tensor that stays
    needed across rounds) -> Conv 1x1 -> y."""
    nodes, inits, cur = [], [], "x"
    for i in range(depth):
        inits += [onh.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.25,
                                 f"w{i}"),
                  onh.from_array(rng.normal(size=4).astype(np.float32) * 0.1, f"b{i}")]
        nodes += [oh.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                               pads=[1, 1, 1, 1]),
                  oh.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        if i % 2 == 1:
            nodes.append(oh.make_node("Add", [f"r{i}", cur], [f"s{i}"], name=f"add{i}"))
            cur = f"s{i}"
        else:
            cur = f"r{i}"
        if i == 0:
            nodes.append(oh.make_node("Shape", [cur], ["shape0"], name="shape"))
    inits += [onh.from_array(rng.normal(size=(3, 4, 1, 1)).astype(np.float32), "wo"),
              onh.from_array(np.array([0, -1], np.int64), "flat")]
    nodes += [oh.make_node("Reshape", [cur, "flat"], ["flat_out"], name="flatten"),
              oh.make_node("Reshape", ["flat_out", "shape0"], ["back"], name="unflatten"),
              oh.make_node("Conv", ["back", "wo"], ["y"], name="conv_out")]
    graph = oh.make_graph(nodes, "deep",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                     ["N", 4, 6, 6])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                     ["N", 3, 6, 6])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_bias_correction_rounds_start_from_kept_tensors(monkeypatch):
    """Each round runs from the tensors no later correction can change, so
    the nodes run over all rounds grow linearly with the depth (quadratically
    when every round starts from the inputs, as with no memory budget), and
    the corrections are the same either way."""
    import onnxquant._frontier as frontier

    runners = []

    class Recording(frontier.FrontierRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    monkeypatch.setattr(recovery, "FrontierRunner", Recording)
    rng = np.random.default_rng(12)
    depth = 16
    model = oq.optimize_model(_deep_model(rng, depth))
    samples = list(rng.normal(size=(24, 1, 4, 6, 6)).astype(np.float32))
    options = oq.QuantOptions(per_channel=False, power_of_two="ceil")
    kept, rec = recovery.correct_bias(model, samples, options=options, batch_size=8)
    assert rec.rounds == depth + 1
    nodes = len(model.graph.node)
    assert runners[-1].node_runs <= 3 * nodes
    monkeypatch.setattr(frontier, "BUDGET_BYTES", 0)
    fresh, rec0 = recovery.correct_bias(model, samples, options=options, batch_size=8)
    assert not runners[-1].keeps()
    assert runners[-1].node_runs > depth * depth  # from the inputs every round
    for name, delta in rec.corrections.items():
        np.testing.assert_allclose(delta, rec0.corrections[name], rtol=1e-5,
                                   atol=1e-6 * np.abs(delta).max(), err_msg=name)
    # And the mean output error of every layer is gone (weights emulated here).
    weights = {t.name for t in model.graph.initializer if t.name.startswith("w")}
    layers = [f"c{i}" for i in range(depth)]
    x = np.concatenate(samples)
    reference = _layer_means(model, x, layers)
    before = _layer_means(_emulated(model, weights), x, layers)
    after = _layer_means(_emulated(kept, weights), x, layers)
    assert max(np.abs(b - r).max() for b, r in zip(before, reference)) > 1e-3
    for name, a, r in zip(layers, after, reference):
        np.testing.assert_allclose(a, r, atol=1e-5 * max(1.0, np.abs(r).max()), err_msg=name)
