"""AdaRound (onnxquant.recovery.adaround, the AdaRound recipe step) checked
against torch computations written here (the layer outputs, the loss), and
against what quantize() writes (the integers)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import onnxquant as oq
from onnxquant import _core, recovery

# The test extras install torch; the lower-bounds smoke environment has none
# (and no AdaRound test is in the smoke subset).
torch = pytest.importorskip("torch")
F = torch.nn.functional


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """x [N,4,8,8] -> Conv a (4->8, 3x3, stride 2 in width, grouped by 2)
    -> Relu -> Conv b (depthwise 8, 3x3) -> Relu -> GlobalAveragePool ->
    Flatten -> MatMul (8x6) -> Relu -> Gemm (transB, 6->5) -> y."""
    inits = [
        onh.from_array(rng.normal(size=(8, 2, 3, 3)).astype(np.float32) * 0.3, "wa"),
        onh.from_array(rng.normal(size=8).astype(np.float32) * 0.1, "ba"),
        onh.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32) * 0.3, "wb"),
        onh.from_array(rng.normal(size=8).astype(np.float32) * 0.1, "bb"),
        onh.from_array(rng.normal(size=(8, 6)).astype(np.float32) * 0.3, "wm"),
        onh.from_array(rng.normal(size=(5, 6)).astype(np.float32) * 0.3, "wg"),
        onh.from_array(rng.normal(size=5).astype(np.float32) * 0.1, "bg"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1],
                     strides=[1, 2], group=2),
        oh.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        oh.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", pads=[1, 1, 1, 1],
                     group=8),
        oh.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        oh.make_node("GlobalAveragePool", ["rb"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["f"], name="flatten"),
        oh.make_node("MatMul", ["f", "wm"], ["m"], name="matmul"),
        oh.make_node("Relu", ["m"], ["rm"], name="relu_m"),
        oh.make_node("Gemm", ["rm", "wg", "bg"], ["y"], name="gemm", transB=1),
    ]
    graph = oh.make_graph(
        nodes, "ada", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def _samples(seed: int, n: int = 24) -> list[np.ndarray]:
    """Smooth, correlated inputs (one [1,4,8,8] array per sample)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    out = []
    for _ in range(n):
        a, b, c = rng.normal(size=(3, 4, 1, 1))
        x = c + a * np.sin(0.5 * yy) + b * np.cos(0.4 * xx) + 0.2 * rng.normal(size=(4, 8, 8))
        out.append(x[None].astype(np.float32))
    return out


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onh.to_array(t) for t in model.graph.initializer if t.name == name)


def _quantized_codes(q: onnx.ModelProto, node_name: str) -> np.ndarray:
    """The integer weight quantize() wrote for node ``node_name``."""
    producers = {o: n for n in q.graph.node for o in n.output}
    node = next(n for n in q.graph.node if n.name == node_name)
    dq = producers[node.input[1]]
    assert dq.op_type == "DequantizeLinear"
    return _init(q, dq.input[0]).astype(np.int32)


def _quantize(model: onnx.ModelProto, samples, options: oq.QuantOptions) -> onnx.ModelProto:
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    cal.collect_data(samples)
    return oq.quantize(model, cal.compute_range(), options=options, calibrator=cal)


# int8 with target="exact": "portable" may lower the largest code of channels
# that would saturate AVX2 kernels, which it decides from the calibrated
# ranges, after AdaRound (documented); int4 weights get no such remedy.
OPTIONS = [
    oq.QuantOptions(target="exact"),
    oq.QuantOptions(target="exact", weight_range="mse"),
    oq.QuantOptions(target="exact", per_channel=False, power_of_two="ceil"),
    oq.QuantOptions(target="exact", per_channel=False, power_of_two="ceil",
                    weight_range="mse"),
    oq.QuantOptions(target="exact", reduce_weight_range=True),
    oq.QuantOptions(weight_type="int4"),
    oq.QuantOptions(weight_type="int4", weight_range="mse"),
    oq.QuantOptions(weight_type="int4", block_size=4),  # MatMul: a scale per 4 rows
]


@pytest.mark.parametrize("options", OPTIONS, ids=[
    "int8", "int8-mse", "pow2-tensor", "pow2-tensor-mse", "int7", "int4", "int4-mse",
    "int4-blocks"])
def test_quantize_reproduces_the_integers(options):
    rng = np.random.default_rng(0)
    samples = _samples(1)
    model, rec = recovery.adaround(_model(rng), samples, options=options, iterations=200,
                                   progress=False)
    assert [layer.node for layer in rec.layers] == ["conv_a", "conv_b", "matmul", "gemm"]
    q = _quantize(model, samples, options)
    changed = 0
    for layer in rec.layers:
        codes = _quantized_codes(q, layer.node)
        np.testing.assert_array_equal(codes, layer.codes, err_msg=layer.node)
        changed += layer.share_changed
    assert changed > 0  # AdaRound did move some weights off nearest rounding


def _conv_a_output(w: np.ndarray, samples) -> torch.Tensor:
    x = torch.from_numpy(np.concatenate(samples))
    return F.conv2d(x, torch.from_numpy(np.array(w)), padding=1, stride=(1, 2), groups=2)


def test_loss_and_held_out_error_against_torch():
    rng = np.random.default_rng(3)
    fp = oq.optimize_model(_model(rng))
    train, held_out = _samples(5, 32), _samples(6, 32)
    options = oq.QuantOptions(weight_type="int4")
    model, rec = recovery.adaround(fp, train, options=options, iterations=500, progress=False)
    w = _init(fp, "wa")
    # Nearest rounding computed here: per output channel, scale max|w| / 7.
    s = np.abs(w).reshape(8, -1).max(axis=1).astype(np.float32) / np.float32(7)
    nearest = np.clip(np.round(w / s[:, None, None, None]), -7, 7) * s[:, None, None, None]
    ada = _init(model, "wa")
    layer = rec.layers[0]
    np.testing.assert_allclose(ada, layer.codes * s[:, None, None, None], rtol=1e-6)

    def err(weights, data):  # summed over channels, mean over positions
        d = _conv_a_output(weights.astype(np.float32), data) - _conv_a_output(w, data)
        return float((d ** 2).sum(dim=1).mean())

    assert layer.loss_nearest == pytest.approx(err(nearest, train), rel=1e-3)
    assert layer.loss_final == pytest.approx(err(ada, train), rel=1e-3)
    assert layer.loss_final < 0.9 * layer.loss_nearest
    assert err(ada, held_out) < err(nearest, held_out)
    up = np.mean(layer.codes > np.floor(w / s[:, None, None, None]))
    assert layer.share_up == pytest.approx(up)


def test_deterministic_and_thread_independent():
    rng = np.random.default_rng(4)
    fp = oq.optimize_model(_model(rng))
    runs = [recovery.adaround(fp, _samples(7), iterations=100, threads=t, progress=False)[0]
            for t in (1, 2, 2)]
    for name in ("wa", "wb", "wm", "wg"):
        np.testing.assert_array_equal(_init(runs[0], name), _init(runs[1], name))
        np.testing.assert_array_equal(_init(runs[1], name), _init(runs[2], name))


def test_progress_goes_to_stderr_without_tqdm(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    recovery.adaround(_model(np.random.default_rng(0)), _samples(1, 4), iterations=20,
                      progress=True)
    assert "AdaRound: 4.00/4 layers" in capsys.readouterr().err


def test_typed_errors():
    model = _model(np.random.default_rng(0))
    samples = _samples(1, 4)
    with pytest.raises(oq.InvalidArgumentError, match="iterations"):
        recovery.adaround(model, samples, iterations=0)
    with pytest.raises(oq.InvalidArgumentError, match="beta"):
        recovery.adaround(model, samples, beta=(1.0, 2.0))
    with pytest.raises(oq.InvalidArgumentError, match="QuantOptions"):
        recovery.adaround(model, samples, options={"per_channel": False})
    with pytest.raises(oq.CalibrationDataError):
        recovery.adaround(model, [])
    with pytest.raises(oq.CalibrationDataError):
        recovery.adaround(model, [np.zeros((1, 3, 8, 8), np.float32)])
    q = _quantize(oq.optimize_model(model), samples, oq.QuantOptions())
    with pytest.raises(oq.UnsupportedModelError):
        recovery.adaround(q, samples)
    # The engine names the node whose cached input does not fit.
    fp = oq.optimize_model(model)
    data = fp.SerializeToString()
    from onnxquant._shapes import infer_dtypes
    native = oq.QuantOptions().to_native()
    dtypes = infer_dtypes(fp)
    planned = _core.AdaRoundModel(data, dtypes, native)
    assert [layer["node"] for layer in planned.layers] == ["conv_a", "conv_b", "matmul", "gemm"]
    grams = _core.AdaRoundGrams(planned, "conv_b")
    with pytest.raises(oq.InvalidArgumentError, match="conv_b"):
        grams.add([np.zeros((2, 5, 8, 4), np.float32)])
    with pytest.raises(oq.InvalidArgumentError, match="float32 C-contiguous"):
        grams.add([np.zeros((2, 8, 8, 4), np.float64)])
    grams.add([np.ones((2, 8, 8, 4), np.float32)])
    with pytest.raises(oq.InvalidArgumentError, match="conv_b.*some batches"):
        grams.add([np.ones((2, 8, 8, 4), np.float32)], [np.ones((2, 8, 8, 4), np.float32)])
    with pytest.raises(oq.InvalidArgumentError, match="conv_b.*no values"):
        _core.adaround_layer(_core.AdaRoundGrams(planned, "conv_b"))
    # An exception in the progress callback (Ctrl-C) stops the engine and is raised.

    def interrupt(done, total):
        raise KeyboardInterrupt

    grams = _core.AdaRoundGrams(planned, "conv_a")
    grams.add([np.ascontiguousarray(np.concatenate(samples))])
    with pytest.raises(KeyboardInterrupt):
        _core.adaround_layer(grams, iterations=10_000_000, progress=interrupt)
    with pytest.raises(oq.InvalidArgumentError, match="relu_a"):
        _core.AdaRoundGrams(planned, "relu_a")


def test_recipe_step_round_trip_and_report(tmp_path):
    step = oq.AdaRound(iterations=50, reg_weight=0.02, max_samples=8)
    recipe = oq.Recipe(steps=(oq.CrossLayerEqualization(), step, oq.BiasCorrection()),
                       options=oq.QuantOptions(weight_type="int4"), name="mine")
    path = tmp_path / "r.json"
    recipe.to_json(path)
    assert oq.Recipe.from_json(path) == recipe
    with pytest.raises(oq.InvalidArgumentError, match="cross_layer_equalization first"):
        oq.Recipe(steps=(step, oq.CrossLayerEqualization()))
    with pytest.raises(oq.InvalidArgumentError, match="before bias_correction"):
        oq.Recipe(steps=(oq.BiasCorrection(), step))
    with pytest.raises(oq.InvalidArgumentError, match="iterations"):
        oq.Recipe(steps=(dataclasses.replace(step, iterations=0),))
    with pytest.raises(oq.InvalidArgumentError, match="unknown key"):
        oq.Recipe.from_dict({"steps": [{"technique": "adaround", "iters": 3}]})
    model = _model(np.random.default_rng(0))
    samples = _samples(2, 12)
    result = oq.apply_recipe(model, samples, oq.Recipe(steps=(step,), options=recipe.options))
    entry = next(t for t in result.report.techniques if t.technique == "adaround")
    rec = entry.record
    assert rec.samples == 8 and entry.values["layers"] == 4
    for layer in rec.layers:
        assert entry.values[f"share_up/{layer.node}"] == layer.share_up
        assert entry.values[f"share_changed/{layer.node}"] == layer.share_changed
    # The quantized model holds AdaRound's integers.
    for layer in rec.layers:
        np.testing.assert_array_equal(_quantized_codes(result.model, layer.node), layer.codes)


def test_quantized_inputs_loss_against_torch():
    """inputs="quantized": conv_b learns on the input the AdaRounded conv_a
    gives, against the FP32 output; the recorded loss is that error."""
    rng = np.random.default_rng(8)
    fp = oq.optimize_model(_model(rng))
    train = _samples(9, 16)
    options = oq.QuantOptions(weight_type="int4")
    model, rec = recovery.adaround(fp, train, options=options, iterations=300,
                                   inputs="quantized", progress=False)
    x = torch.from_numpy(np.concatenate(train))

    def conv_b_input(wa: np.ndarray) -> torch.Tensor:
        ba = torch.from_numpy(np.array(_init(fp, "ba")))
        return torch.relu(F.conv2d(x, torch.from_numpy(np.array(wa)), ba, padding=1,
                                   stride=(1, 2), groups=2))

    target = F.conv2d(conv_b_input(_init(fp, "wa")), torch.from_numpy(np.array(_init(fp, "wb"))),
                      padding=1, groups=8)
    xq = conv_b_input(_init(model, "wa"))
    got = F.conv2d(xq, torch.from_numpy(np.array(_init(model, "wb"))), padding=1, groups=8)
    layer = next(r for r in rec.layers if r.node == "conv_b")
    assert layer.loss_final == pytest.approx(float(((got - target) ** 2).sum(dim=1).mean()),
                                             rel=1e-3)
    assert layer.loss_final < layer.loss_nearest
    q = _quantize(model, train, options)
    for layer in rec.layers:
        np.testing.assert_array_equal(_quantized_codes(q, layer.node), layer.codes)
    with pytest.raises(oq.InvalidArgumentError, match="inputs"):
        recovery.adaround(fp, train, inputs="int8")


def _deconv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x [N,4,8,8] -> ConvTranspose t1 (4->6, 3x3, stride 2, pads 1,
    output_padding 1) -> Relu -> ConvTranspose t2 (6->4, 2x2, grouped by 2,
    dilation 2) -> y."""
    inits = [
        onh.from_array(rng.normal(size=(4, 6, 3, 3)).astype(np.float32) * 0.3, "w1"),
        onh.from_array(rng.normal(size=6).astype(np.float32) * 0.1, "b1"),
        onh.from_array(rng.normal(size=(6, 2, 2, 2)).astype(np.float32) * 0.3, "w2"),
    ]
    nodes = [
        oh.make_node("ConvTranspose", ["x", "w1", "b1"], ["t"], name="t1", strides=[2, 2],
                     pads=[1, 1, 1, 1], output_padding=[1, 1]),
        oh.make_node("Relu", ["t"], ["r"], name="relu"),
        oh.make_node("ConvTranspose", ["r", "w2"], ["y"], name="t2", group=2,
                     dilations=[2, 2]),
    ]
    graph = oh.make_graph(
        nodes, "deconv", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 18, 18])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[2], OPTIONS[5]],
                         ids=["int8", "pow2-tensor", "int4"])
def test_conv_transpose_integers_and_loss_against_torch(options):
    """ConvTranspose layers (per channel on axis 1, grouped per tensor):
    quantize() writes AdaRound's integers, the loss is the error of torch's
    transposed convolution, and it beats nearest rounding on held-out
    inputs."""
    fp = oq.optimize_model(_deconv_model(np.random.default_rng(8)))
    train, held_out = _samples(9, 32), _samples(10, 32)
    model, rec = recovery.adaround(fp, train, options=options, iterations=400, progress=False)
    assert [layer.node for layer in rec.layers] == ["t1", "t2"]
    q = _quantize(model, train, options)
    for layer in rec.layers:
        np.testing.assert_array_equal(_quantized_codes(q, layer.node), layer.codes,
                                      err_msg=layer.node)
    w = _init(fp, "w1")
    qmax = 7 if options.uses_int4 else 127
    if options.per_channel:  # one scale per output channel: axis 1
        s = (np.abs(w).max(axis=(0, 2, 3)).astype(np.float32) / np.float32(qmax))[
            None, :, None, None]
    else:
        s = np.float32(2.0) ** np.ceil(np.log2(np.abs(w).max() / qmax))
    nearest = np.clip(np.round(w / s), -qmax, qmax) * s
    ada = _init(model, "w1")
    layer = rec.layers[0]
    np.testing.assert_allclose(ada, layer.codes * s, rtol=1e-6)

    def out(weights, data):
        x = torch.from_numpy(np.concatenate(data))
        return F.conv_transpose2d(x, torch.from_numpy(np.array(weights, np.float32)),
                                  stride=2, padding=1, output_padding=1)

    def err(weights, data):  # summed over channels, mean over positions
        return float(((out(weights, data) - out(w, data)) ** 2).sum(dim=1).mean())

    assert layer.loss_nearest == pytest.approx(err(nearest, train), rel=1e-3)
    assert layer.loss_final == pytest.approx(err(ada, train), rel=1e-3)
    assert layer.loss_final < layer.loss_nearest
    assert err(ada, held_out) < err(nearest, held_out)


def test_batches_sum_to_the_same_problem():
    """The Gram matrices are summed batch by batch (one batch of a layer's
    inputs in memory at a time): batches of 3 samples pose the problem that
    one batch of 24 does, up to float rounding of the sums."""
    fp = oq.optimize_model(_model(np.random.default_rng(11)))
    samples = _samples(12)
    small = recovery.adaround(fp, samples, iterations=200, batch_size=3, progress=False)[1]
    whole = recovery.adaround(fp, samples, iterations=200, batch_size=24, progress=False)[1]
    for a, b in zip(small.layers, whole.layers):
        assert a.loss_nearest == pytest.approx(b.loss_nearest, rel=1e-5), a.node
        assert a.loss_final == pytest.approx(b.loss_final, rel=1e-3), a.node
        assert np.mean(a.codes == b.codes) > 0.99, a.node


def test_one_parsed_model_serves_every_layer():
    """One AdaRoundModel (one parse and plan) gives each layer's Grams, which
    keep what they read of it: rounding after the model object is gone gives
    the codes adaround() gives, for every layer."""
    import gc

    from onnxquant._shapes import infer_dtypes

    rng = np.random.default_rng(0)
    samples = _samples(1, 8)
    fp = oq.optimize_model(_model(rng))
    _, rec = recovery.adaround(fp, samples, iterations=30, threads=1, progress=False)
    planned = _core.AdaRoundModel(fp.SerializeToString(), infer_dtypes(fp),
                                  oq.QuantOptions().to_native())
    x = np.ascontiguousarray(np.concatenate(samples))
    grams = _core.AdaRoundGrams(planned, "conv_a")
    grams.add([x], [], 1)
    del planned
    gc.collect()
    _, codes, stats = _core.adaround_layer(grams, iterations=30, threads=1)
    assert stats["weight"] == "wa"
    np.testing.assert_array_equal(codes, rec.layers[0].codes)
