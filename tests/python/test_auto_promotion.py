"""mixed_precision(candidates="auto"): the analysis nominates the quantized
neighbours of LayerNormalization and Softmax whose accumulated SQNR drop
dominates, and they are promoted first. Checked on a small transformer-like
block built to have one dominating LayerNorm output (outlier gamma channels,
as trained transformers have), with ONNX Runtime and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq

D, T, OUT = 32, 8, 16
OUTLIERS = (3, 17)  # gamma channels x50


def _layer_norm_nodes(decomposed: bool) -> list[onnx.NodeProto]:
    """LayerNorm of h into ln: one LayerNormalization, or its decomposed form
    as exporters write it (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div,
    Mul, Add)."""
    if not decomposed:
        return [helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["ln"],
                                 name="norm", axis=-1)]
    make = helper.make_node
    return [make("ReduceMean", ["h"], ["mean"], name="mean", axes=[-1]),
            make("Sub", ["h", "mean"], ["centred"], name="centre"),
            make("Pow", ["centred", "two"], ["squared"], name="square"),
            make("ReduceMean", ["squared"], ["var"], name="variance", axes=[-1]),
            make("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
            make("Sqrt", ["var_eps"], ["std"], name="std"),
            make("Div", ["centred", "std"], ["normed"], name="normalize"),
            make("Mul", ["normed", "gamma"], ["scaled"], name="gamma_mul"),
            make("Add", ["scaled", "beta"], ["ln"], name="beta_add")]


def _model(decomposed: bool = False) -> onnx.ModelProto:
    """x -> MatMul -> LayerNorm (two gamma channels x50) -> two MatMuls (the
    weights' rows for the outlier channels /50, so that those channels weigh
    as much as the others downstream) -> Add -> MatMul."""
    rng = np.random.default_rng(0)
    gamma = np.ones(D, np.float32)
    gamma[list(OUTLIERS)] = 50.0
    inits = {"w0": rng.normal(0, D ** -0.5, (D, D)), "gamma": gamma,
             "beta": np.zeros(D), "wo": rng.normal(0, D ** -0.5, (D, OUT)),
             "two": np.array(2.0), "eps": np.array(1e-5)}
    for name in ("wq", "wv"):
        w = rng.normal(0, D ** -0.5, (D, D))
        w[list(OUTLIERS)] /= 50.0
        inits[name] = w
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="proj"),
        *_layer_norm_nodes(decomposed),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="query"),
        helper.make_node("MatMul", ["ln", "wv"], ["v"], name="value"),
        helper.make_node("Add", ["q", "v"], ["s"], name="sum"),
        helper.make_node("MatMul", ["s", "wo"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, OUT])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return oq.optimize_model(helper.make_model(graph,
                                               opset_imports=[helper.make_opsetid("", 17)]))


def _layer_norm(h: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    return (h - mean) / np.sqrt(var + 1e-5) * gamma


def _sqnr_db(x: np.ndarray, levels: int) -> float:
    """SQNR of x quantized asymmetrically over its own [min, max] (with 0)."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / (levels - 1)
    zero = np.rint(-lo / scale)
    q = (np.clip(np.rint(x / scale) + zero, 0, levels - 1) - zero) * scale
    return float(10 * np.log10(np.sum(x ** 2) / np.sum((x - q) ** 2)))


@pytest.fixture(scope="module", params=[False, True], ids=["LayerNormalization", "decomposed"])
def setup(request):
    model = _model(request.param)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (400, 1, T, D)).astype(np.float32)
    cal = oq.Calibrator(model, "MIN_MAX_ASYM")
    cal.collect_data(list(x[:100]))
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    held_out = x[100:]
    want = np.stack([fp32.run(None, {"x": h})[0] for h in held_out]).ravel()

    def cosine(m: onnx.ModelProto) -> float:
        """100 x the cosine of the outputs to FP32's on held-out inputs."""
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        got = np.stack([s.run(None, {"x": h})[0] for h in held_out]).ravel()
        return 100.0 * float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))

    return model, cal, list(x[:32]), cosine, x


def test_the_layer_norm_output_dominates_in_numpy(setup):
    """The premise, computed in numpy: uint8 over the LayerNorm output, whose
    range the outlier channels set, leaves the other channels a few levels;
    int16 does not."""
    model, _, _, _, x = setup
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ln = _layer_norm(x[:100].reshape(-1, D) @ w["w0"], w["gamma"])
    normal = np.delete(ln, list(OUTLIERS), axis=1)
    lo, hi = min(0.0, float(ln.min())), max(0.0, float(ln.max()))
    assert (hi - lo) / 255 > 0.3 * np.abs(normal).mean()  # a step of a third of a value
    assert _sqnr_db(ln, 256) > 30  # the whole tensor looks fine ...
    # ... but what the downstream weights read (outliers scaled back) does not.
    scaled = ln.copy()
    scaled[:, list(OUTLIERS)] /= 50
    step = (hi - lo) / 255
    zero = np.rint(-lo / step)
    q = (np.clip(np.rint(ln / step) + zero, 0, 255) - zero) * step
    q[:, list(OUTLIERS)] /= 50
    assert 10 * np.log10(np.sum(scaled ** 2) / np.sum((scaled - q) ** 2)) < 15


def test_auto_promotes_the_dominating_layer_norm_neighbour_first(setup):
    model, cal, samples, agreement, _ = setup
    result = oq.mixed_precision(model, cal, samples, agreement, budget=1.0, max_share=0.5,
                                candidates="auto")
    assert result.base_metric < result.fp32_metric - 1.0  # the base misses the budget
    assert result.budget_met and result.final_metric >= result.fp32_metric - 1.0
    first = result.promoted[0]
    assert (first.kind, first.node, first.op_type) == ("tensor", "ln", "LayerNormalization")
    assert len(result.promoted) == 1
    # The LayerNorm's input, whose drop is half the output's, is not nominated.
    assert [r.node for r in result.ranking if r.kind == "tensor"] == ["ln"]
    assert "LayerNormalization" in first.reason and "dominates" in first.reason
    assert result.options.overrides == {"ln": {"activation_type": "int16"}}
    # The promoted tensor is int16 in the written model, the others 8-bit.
    inits = {t.name: t for t in result.model.graph.initializer}
    types = {n.output[0]: inits[n.input[2]].data_type for n in result.model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] not in inits
             and len(n.input) > 2}
    assert types["ln"] == TensorProto.INT16
    assert types["h"] == TensorProto.UINT8 and types["s"] == TensorProto.UINT8
    assert "tensor" not in {p.kind for p in oq.mixed_precision(
        model, cal, samples, agreement, budget=1.0, max_share=0.5).promoted}


def test_auto_with_the_analysis_ranking(setup):
    model, cal, samples, agreement, _ = setup
    result = oq.mixed_precision(model, cal, samples, agreement, budget=1.0, max_share=0.5,
                                candidates="auto", sensitivity="analyze")
    assert result.ranking[0].kind == "tensor" and result.ranking[0].node == "ln"
    assert result.promoted[0].node == "ln" and result.budget_met
    assert "dB of accumulated SQNR" in result.promoted[0].reason


@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": "tensors"}, "candidates"),
    ({"candidates": "auto", "dominance": 0.0}, "dominance"),
    ({"candidates": "auto", "dominance": 1.5}, "dominance"),
])
def test_bad_arguments_are_typed_errors(setup, kwargs, match):
    model, cal, samples, _, _ = setup
    with pytest.raises(oq.InvalidArgumentError, match=match):
        oq.mixed_precision(model, cal, samples, **kwargs)
