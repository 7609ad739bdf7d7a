"""If, Loop and Scan bodies are planned, calibrated and quantized like the
main graph (issue 10, item 2): a real network inside both branches of an If,
on real data; a branch no sample takes stays float, saying why; Loop and Scan
bodies accumulate statistics over every iteration."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq
from onnxquant.demo import default_demo_data


def _session(model: onnx.ModelProto, **kw) -> ort.InferenceSession:
    so = ort.SessionOptions()
    for k, v in kw.items():
        setattr(so, k, v)
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def _runtime_ops(model: onnx.ModelProto, tmp_path) -> dict[str, collections.Counter]:
    """The ops ONNX Runtime runs (default session options), per body name."""
    path = str(tmp_path / "runtime.onnx")
    _session(model, optimized_model_filepath=path,
             graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    ops = {}

    def walk(graph):
        ops[graph.name] = collections.Counter(n.op_type for n in graph.node)
        for n in graph.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
    walk(onnx.load(path).graph)
    return ops


def _branch(graph: onnx.GraphProto, prefix: str, image: str) -> onnx.GraphProto:
    """``graph``'s nodes as an If branch with names prefixed: it reads
    ``image`` and the weights from the outer scope."""
    weights = {t.name for t in graph.initializer}
    inputs = {graph.input[0].name: image}

    def rename(name: str) -> str:
        if not name or name in weights:
            return name
        return inputs.get(name, prefix + name)

    nodes = []
    for n in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = prefix + n.name
        copy.input[:] = [rename(i) for i in n.input]
        copy.output[:] = [rename(o) for o in n.output]
        nodes.append(copy)
    out = rename(graph.output[0].name)
    return helper.make_graph(nodes, prefix + "branch", [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


@pytest.fixture(scope="module")
def demo():
    return default_demo_data(num_calibration=300, seed=0)


@pytest.fixture(scope="module")
def if_model(demo):
    """The embedded Fashion-MNIST CNN (normalised), whole inside both
    branches of an If chosen by the image's mean brightness: a model whose
    network sits entirely in subgraph bodies."""
    plain = oq.optimize_model(demo.model)
    g = plain.graph
    image = g.input[0].name
    threshold = float(np.median(demo.calibration.mean(axis=(1, 2, 3))))
    nodes = [
        helper.make_node("ReduceMean", [image], ["brightness"], keepdims=0, name="brightness"),
        helper.make_node("Greater", ["brightness", "threshold"], ["bright"], name="is_bright"),
        helper.make_node("If", ["bright"], [g.output[0].name], name="by_brightness",
                         then_branch=_branch(g, "bright_", image),
                         else_branch=_branch(g, "dark_", image)),
    ]
    graph = helper.make_graph(
        nodes, "if_cnn", [helper.make_tensor_value_info(image, TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info(g.output[0].name, TensorProto.FLOAT, [1, 10])],
        [*g.initializer, numpy_helper.from_array(np.array(threshold, np.float32), "threshold")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, threshold


def _top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    s = _session(model)  # default options: Q/DQ pairs run as integer kernels
    name = s.get_inputs()[0].name
    pred = [int(np.argmax(s.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))]
    return 100.0 * float(np.mean(np.array(pred) == y))


def test_if_bodies_run_as_int8_with_fp32_accuracy(if_model, demo, tmp_path):
    model, threshold = if_model
    normal = oq.optimize_model(model)
    cal = oq.Calibrator(normal, "MIN_MAX_ASYM")
    samples = demo.calibration
    bright = samples.mean(axis=(1, 2, 3)) > threshold
    assert 0 < bright.sum() < len(samples)  # both branches taken
    cal.collect_data([s[None] for s in samples])
    ranges = cal.compute_range()
    q, report = oq.quantize(normal, ranges, calibrator=cal, return_report=True)

    quantized = {(n.node, n.graph) for n in report.quantized_nodes}
    for side in ("bright_", "dark_"):
        body = f"by_brightness.{'then' if side == 'bright_' else 'else'}_branch"
        convs = {n for n, g in quantized if g == body and n.startswith(side)}
        assert len(convs) >= 5, (side, convs)
    ops = _runtime_ops(q, tmp_path)
    for branch in ("bright_branch", "dark_branch"):
        assert ops[branch]["QLinearConv"] == 5, ops[branch]
        assert ops[branch]["Conv"] == 0, ops[branch]
        assert ops[branch]["QLinearMatMul"] + ops[branch]["MatMulInteger"] + \
            ops[branch]["QGemm"] >= 1, ops[branch]

    n = len(demo.test_inputs)  # all 10 000
    x, y = demo.test_inputs, demo.test_labels
    fp32 = _top1(model, x, y)
    int8 = _top1(q, x, y)
    print(f"FP32 {fp32:.2f} %, INT8 fused {int8:.2f} % on {n} test images")
    assert fp32 > 85.0
    assert int8 >= fp32 - 1.0, (fp32, int8)
    # Both branches matter on the test set too.
    taken = x.mean(axis=(1, 2, 3)) > threshold
    assert 0.2 < taken.mean() < 0.8


def test_branch_no_sample_takes_stays_float_with_reason(if_model, demo):
    model, threshold = if_model
    normal = oq.optimize_model(model)
    samples = demo.calibration
    bright = samples[samples.mean(axis=(1, 2, 3)) > threshold][:50]
    cal = oq.Calibrator(normal, "MIN_MAX_ASYM")
    cal.collect_data([s[None] for s in bright])
    ranges = cal.compute_range()
    assert not any(t.startswith("dark_") for t in ranges)
    q, report = oq.quantize(normal, ranges, calibrator=cal, return_report=True)
    dark = [n for n in report.float_nodes if n.graph == "by_brightness.else_branch"]
    assert dark and all("no calibration sample ran body 'else_branch'" in n.reason
                        for n in dark)
    assert not any(n.graph == "by_brightness.else_branch" for n in report.quantized_nodes)
    assert sum(n.graph == "by_brightness.then_branch" for n in report.quantized_nodes) >= 5
    # The float branch still computes what the model says.
    x = demo.test_inputs[:200]
    dark_x = x[x.mean(axis=(1, 2, 3)) <= threshold][:20]
    a, b = _session(model), _session(q)
    for s in dark_x:
        np.testing.assert_allclose(b.run(None, {"image": s[None]})[0],
                                   a.run(None, {"image": s[None]})[0], rtol=1e-4, atol=1e-4)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _rnn_scan(rng) -> onnx.ModelProto:
    """An Elman RNN as a Scan over 6 steps, then a MatMul head."""
    W = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    U = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    V = rng.normal(0, 0.5, (16, 4)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "W"], ["xw"], name="xw"),
         helper.make_node("MatMul", ["h", "U"], ["hu"], name="hu"),
         helper.make_node("Add", ["xw", "hu"], ["pre"], name="pre"),
         helper.make_node("Tanh", ["pre"], ["h_next"], name="tanh"),
         helper.make_node("Identity", ["h_next"], ["y_t"], name="y_id")],
        "rnn_step",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("h_next", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, 16])])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["h0", "xs"], ["h_last", "ys"], name="rnn", body=body,
                          num_scan_inputs=1),
         helper.make_node("MatMul", ["h_last", "V"], ["out"], name="head")],
        "rnn", [helper.make_tensor_value_info("xs", TensorProto.FLOAT, [6, 1, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, [6, 1, 16])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(U, "U"),
         numpy_helper.from_array(V, "V"),
         numpy_helper.from_array(np.zeros((1, 16), np.float32), "h0")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rnn_reference(model, xs):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = inits["h0"]
    pres = []
    for x_t in xs:
        pre = x_t @ inits["W"] + h @ inits["U"]
        pres.append(pre)
        h = np.tanh(pre)
    return np.stack(pres)


def test_scan_body_statistics_cover_every_iteration():
    rng = np.random.default_rng(3)
    model = _rnn_scan(rng)
    normal = oq.optimize_model(model)
    samples = [rng.normal(size=(6, 1, 8)).astype(np.float32) for _ in range(20)]
    cal = oq.Calibrator(normal, "MIN_MAX_ASYM")
    cal.collect_data(samples)
    stats = cal.statistics()
    pres = np.stack([_rnn_reference(model, s) for s in samples])
    assert stats["pre"]["count"] == pres.size  # 20 samples x 6 steps x 16
    assert stats["pre"]["min"] == pytest.approx(float(pres.min()), rel=1e-5)
    assert stats["pre"]["max"] == pytest.approx(float(pres.max()), rel=1e-5)
    ranges = cal.compute_range()
    q, report = oq.quantize(normal, ranges, calibrator=cal, return_report=True)
    in_body = {n.node for n in report.quantized_nodes if n.graph == "rnn.body"}
    assert {"xw", "hu"} <= in_body
    a, b = _session(normal), _session(q)
    for s in samples[:5]:
        ref, got = a.run(["out"], {"xs": s})[0], b.run(["out"], {"xs": s})[0]
        assert _cosine(ref, got) > 0.99


def test_loop_body_statistics_cover_every_iteration():
    rng = np.random.default_rng(4)
    W = rng.normal(0, 0.4, (16, 16)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="step_mm"),
         helper.make_node("Relu", ["xw"], ["x_next"], name="step_relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_next", TensorProto.FLOAT, [1, 16])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x0"], ["x_last"], name="repeat", body=body)],
        "loop", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("x_last", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(4), "trips")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    normal = oq.optimize_model(model)
    samples = [np.abs(rng.normal(size=(1, 16))).astype(np.float32) for _ in range(10)]
    cal = oq.Calibrator(normal, "MIN_MAX_ASYM")
    cal.collect_data(samples)
    xws = []
    for x in samples:
        for _ in range(4):
            xw = x @ W
            xws.append(xw)
            x = np.maximum(xw, 0)
    xws = np.stack(xws)
    stats = cal.statistics()
    name = next(t for t in stats if t.startswith("xw"))
    assert stats[name]["count"] == xws.size  # 10 samples x 4 iterations x 16
    assert stats[name]["max"] == pytest.approx(float(xws.max()), rel=1e-5)
    q, report = oq.quantize(normal, cal.compute_range(), calibrator=cal, return_report=True)
    assert "step_mm" in {n.node for n in report.quantized_nodes if n.graph == "repeat.body"}
    a, b = _session(normal), _session(q)
    for x in samples[:5]:
        ref, got = a.run(None, {"x0": x})[0], b.run(None, {"x0": x})[0]
        assert _cosine(ref, got) > 0.99
