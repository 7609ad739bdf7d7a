"""The plan's op table against ONNX Runtime: every op of ORT's own quantizer is
known, each entry's decision holds when the quantized model runs in ORT
(default session options), and docs/architecture.md lists every entry.

Each op runs in a small model between quantized neighbours: a 1x1 Conv before
it (so its input is quantized) and an Add of a constant after each output (so
its outputs are). The decision then says what ORT must run for the node:

* weighted, quantized, shared, fused_only: an integer kernel, or nothing (a
  Relu absorbed or removed), except where the entry's ``ort_runs`` says
  "float" (ConvTranspose, Pad): then float, as the entry says;
* float: the node runs in float, and the report gives the entry's reason.

And the quantized model's outputs stay close to FP32.
"""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq
from onnxquant import _core
from onnxquant.cpu import cpu_kernels
from onnxquant.runtime_graph import inspect_runtime_graph, optimized_graph

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = {(e["domain"], e["op_type"]): e for e in _core.op_table()}
SHAPE = [1, 4, 8, 8]


def _f(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _i(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


_RNG = np.random.default_rng(11)


def _w(name: str, shape) -> onnx.TensorProto:
    return _f(name, _RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))


def _node(op: str, inputs, outputs=("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), name="target", **attrs)


# Per op: (nodes reading "a" and "b", the two quantized [1, 4, 8, 8] tensors,
# or the graph input "x"; the last node is the op under test, named "target"),
# its initializers, its float outputs (each gets a quantized Add after it),
# and optionally the opset and other outputs.
CASES = {
    "Conv": ([_node("Conv", ["a", "cw", "cb"], pads=[1] * 4)],
             [_w("cw", [4, 4, 3, 3]), _f("cb", [0.1, -0.1, 0.2, 0.0])], ["y"]),
    "ConvTranspose": ([_node("ConvTranspose", ["a", "cw", "cb"], strides=[2, 2])],
                      [_w("cw", [4, 4, 2, 2]), _f("cb", [0.1, -0.1, 0.2, 0.0])], ["y"]),
    "Gemm": ([helper.make_node("Flatten", ["a"], ["f"], name="flat"),
              _node("Gemm", ["f", "gw", "gb"])],
             [_w("gw", [256, 10]), _f("gb", np.linspace(-1, 1, 10))], ["y"]),
    "MatMul": ([_node("MatMul", ["a", "mw"])], [_w("mw", [8, 8])], ["y"]),
    "Add": ([_node("Add", ["a", "b"])], [], ["y"]),
    "Mul": ([_node("Mul", ["a", "b"])], [], ["y"]),
    "AveragePool": ([_node("AveragePool", ["a"], kernel_shape=[2, 2])], [], ["y"]),
    "GlobalAveragePool": ([_node("GlobalAveragePool", ["a"])], [], ["y"]),
    "LeakyRelu": ([_node("LeakyRelu", ["a"], alpha=0.1)], [], ["y"]),
    "Relu": ([_node("Relu", ["a"])], [], ["y"]),
    "Clip": ([_node("Clip", ["a", "lo", "hi"])], [_f("lo", 0.0), _f("hi", 1.0)], ["y"]),
    "Concat": ([_node("Concat", ["a", "b"], axis=1)], [], ["y"]),
    "MaxPool": ([_node("MaxPool", ["a"], kernel_shape=[2, 2])], [], ["y"]),
    "ReduceMax": ([_node("ReduceMax", ["a"], axes=[1])], [], ["y"]),
    "ReduceMin": ([_node("ReduceMin", ["a"], axes=[1])], [], ["y"]),
    "Reshape": ([_node("Reshape", ["a", "shape"])], [_i("shape", [1, 4, 64])], ["y"]),
    "Transpose": ([_node("Transpose", ["a"], perm=[0, 2, 3, 1])], [], ["y"]),
    "Flatten": ([_node("Flatten", ["a"])], [], ["y"]),
    "Squeeze": ([_node("Squeeze", ["a", "axes"])], [_i("axes", [0])], ["y"]),
    "Unsqueeze": ([_node("Unsqueeze", ["a", "axes"])], [_i("axes", [0])], ["y"]),
    "Slice": ([_node("Slice", ["a", "s", "e", "axes"])],
              [_i("s", [1]), _i("e", [3]), _i("axes", [1])], ["y"]),
    "Gather": ([_node("Gather", ["a", "idx"], axis=1)], [_i("idx", [0, 2])], ["y"]),
    "GatherElements": ([_node("GatherElements", ["a", "idx"], axis=1)],
                       [_i("idx", _RNG.integers(0, 4, SHAPE))], ["y"]),
    "Expand": ([_node("Expand", ["a", "shape"])], [_i("shape", [2, 4, 8, 8])], ["y"]),
    "Tile": ([_node("Tile", ["a", "reps"])], [_i("reps", [1, 1, 2, 1])], ["y"]),
    "DepthToSpace": ([_node("DepthToSpace", ["a"], blocksize=2)], [], ["y"]),
    "Split": ([_node("Split", ["a", "split"], ["y0", "y1"], axis=1)],
              [_i("split", [1, 3])], ["y0", "y1"]),
    "Resize": ([_node("Resize", ["a", "", "scales"], mode="nearest")],
               [_f("scales", [1, 1, 2, 2])], ["y"]),
    "Pad": ([_node("Pad", ["a", "pads"])], [_i("pads", [0, 0, 1, 1, 0, 0, 1, 1])], ["y"]),
    "Sigmoid": ([_node("Sigmoid", ["a"])], [], ["y"]),
    "Softmax": ([_node("Softmax", ["a"], axis=1)], [], ["y"]),
    "Where": ([_node("Where", ["mask", "a", "b"])],
              [numpy_helper.from_array(_RNG.random(SHAPE) < 0.5, "mask")], ["y"]),
    "ArgMax": ([_node("ArgMax", ["a"], axis=1)], [], [], 17, ["y"]),
    "LayerNormalization": ([_node("LayerNormalization", ["a", "g", "beta"])],
                           [_f("g", np.ones(8)), _f("beta", np.zeros(8))], ["y"]),
    "InstanceNormalization": ([_node("InstanceNormalization", ["a", "g", "beta"])],
                              [_f("g", np.ones(4)), _f("beta", np.zeros(4))], ["y"]),
    # After a Conv, optimize_model folds it; here it reads the graph input.
    "BatchNormalization": ([_node("BatchNormalization", ["x", "g", "beta", "m", "v"])],
                           [_f("g", [1, 2, 3, 4]), _f("beta", np.zeros(4)),
                            _f("m", [0.1, 0, 0, 0]), _f("v", np.ones(4))], ["y"]),
    "Gelu": ([_node("Gelu", ["a"])], [], ["y"], 20),
    "Exp": ([_node("Exp", ["a"])], [], ["y"]),
    "Log": ([helper.make_node("Exp", ["a"], ["e"], name="exp"), _node("Log", ["e"])],
            [], ["y"]),
    "Div": ([_node("Div", ["a", "two"])], [_f("two", 2.0)], ["y"]),
    "Sub": ([_node("Sub", ["a", "b"])], [], ["y"]),
    "PRelu": ([_node("PRelu", ["a", "slope"])], [_f("slope", np.full((4, 1, 1), 0.2))], ["y"]),
    "HardSigmoid": ([_node("HardSigmoid", ["a"])], [], ["y"]),
    "HardSwish": ([_node("HardSwish", ["a"])], [], ["y"]),
    "SpaceToDepth": ([_node("SpaceToDepth", ["a"], blocksize=2)], [], ["y"]),
    "CumSum": ([_node("CumSum", ["a", "axis"])], [_i("axis", 1, np.int32)], ["y"]),
    "TopK": ([_node("TopK", ["a", "k"], ["y", "top_index"], axis=1)], [_i("k", [2])], ["y"],
             17, ["top_index"]),
}


def _model(op: str) -> onnx.ModelProto:
    nodes, inits, float_outs, *rest = CASES[op]
    opset = rest[0] if rest else 17
    other_outs = rest[1] if len(rest) > 1 else []
    pre = [_w("pre_a", [4, 4, 1, 1]), _w("pre_b", [4, 4, 1, 1])]
    graph_nodes = [helper.make_node("Conv", ["x", "pre_a"], ["a"], name="conv_a"),
                   helper.make_node("Conv", ["x", "pre_b"], ["b"], name="conv_b")]
    graph_nodes += nodes
    outputs = []
    for k, name in enumerate(float_outs):
        graph_nodes.append(helper.make_node("Add", [name, "half"], [f"out{k}"], name=f"post{k}"))
        outputs.append(helper.make_tensor_value_info(f"out{k}", TensorProto.FLOAT, None))
    outputs += [helper.make_tensor_value_info(o, TensorProto.INT64, None) for o in other_outs]
    # conv_b feeds nothing in most cases: a graph output keeps it.
    outputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        graph_nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        outputs, pre + list(inits) + [_f("half", 0.5)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    # Output shapes from a run (the checker wants them).
    results = _outputs(model, np.zeros(SHAPE, np.float32))
    for value, result in zip(model.graph.output, results, strict=True):
        value.CopyFrom(helper.make_tensor_value_info(
            value.name, value.type.tensor_type.elem_type, result.shape))
    onnx.checker.check_model(model, full_check=True)
    return model


def _quantized(op: str):
    model = oq.optimize_model(_model(op))
    rng = np.random.default_rng(3)
    samples = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(16)]
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(samples)
    # Full-range weights where this CPU's kernels are exact; where they add
    # products in saturating 16-bit pairs (x86 without VNNI), the weights
    # that target="portable" narrows, or the accuracy checks below would
    # measure the saturation instead of the op's decision.
    target = "portable" if cpu_kernels().saturates else "exact"
    quantized, report = oq.quantize(model, calibrator.compute_range(), return_report=True,
                                    target=target)
    return model, quantized, report, samples


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _reads_dequantized(model: onnx.ModelProto, node: str) -> bool | None:
    """Whether the node named ``node`` of ORT's optimized graph reads the
    output of a DequantizeLinear (None when ORT removed the node)."""
    graph = optimized_graph(model, level="extended").graph
    producer = {o: n for n in graph.node for o in n.output}
    target = next((n for n in graph.node if n.name == node), None)
    if target is None:
        return None
    return any(producer[i].op_type == "DequantizeLinear"
               for i in target.input if i in producer)


def test_every_op_of_ort_quantizer_is_in_the_table() -> None:
    from onnxruntime.quantization import registry

    ops = set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry)
    assert len(ops) > 20
    known = {op for _, op in TABLE}
    assert sorted(ops - known) == []
    # Ours beyond ORT's list.
    assert {"PRelu", "HardSigmoid", "HardSwish", "Sub", "Div", "Expand", "Tile",
            "DepthToSpace", "SpaceToDepth", "Split", "Where", "LeakyRelu"} <= known


def test_every_entry_says_what_it_does() -> None:
    kinds = {"weighted", "quantized", "shared", "fused_only", "float"}
    for (domain, op), e in TABLE.items():
        assert e["kind"] in kinds, op
        assert e["ort_runs"], op
        if e["kind"] in ("float", "fused_only"):
            assert e["reason"], op
        if e["kind"] == "weighted":
            assert {"weight", "data_or_weight"} & set(e["inputs"]), op
        if e["kind"] == "shared":
            assert e["inputs"][0] == "data", op
        assert domain in ("", "com.microsoft"), op


def test_every_entry_has_a_case_here() -> None:
    """Adding an entry means adding its case to CASES (or to the contrib ops)."""
    assert sorted(op for (d, op) in TABLE if d == "" and op not in CASES) == []


def _doc_rows() -> dict[str, list[str]]:
    with open(os.path.join(_REPO, "docs", "architecture.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("### The op table", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_docs_list_every_entry_with_its_decision() -> None:
    rows = _doc_rows()
    names = {(op if not d else f"{d}:{op}") for d, op in TABLE}
    assert set(rows) == names
    for (d, op), e in TABLE.items():
        row = rows[op if not d else f"{d}:{op}"]
        assert row[1] == e["kind"], (op, row[1])
        assert row[3] == e["ort_runs"], (op, row[3])


def test_the_docs_table_is_the_generated_one() -> None:
    """scripts/op_table_doc.py rewrites it; run it after changing the table."""
    import importlib.util

    path = os.path.join(_REPO, "scripts", "op_table_doc.py")
    spec = importlib.util.spec_from_file_location("op_table_doc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(module.DOC, encoding="utf-8") as f:
        text = f.read()
    assert module.rewritten(text) == text, "run scripts/op_table_doc.py"


@pytest.mark.parametrize("op", sorted(CASES))
def test_the_decision_holds_in_onnx_runtime(op: str) -> None:
    entry = TABLE[("", op)]
    model, quantized, report, samples = _quantized(op)
    graph = inspect_runtime_graph(quantized, level="extended")
    runs = graph.runs_as("target")
    planned = {n.node for n in report.quantized_nodes}
    floats = {n.node: n.reason for n in report.float_nodes}
    if entry["kind"] == "float":
        assert floats.get("target", "").endswith(f"({entry['reason']})"), floats
        # ORT may rewrite the node (HardSwish: HardSigmoid and Mul), never into
        # an integer kernel.
        assert runs is None or runs[1] == "float", runs
        assert runs is not None or graph.float_ops, graph
    else:
        absorbed = {a.node for a in report.absorbed}
        assert "target" in planned or "target" in absorbed, floats
        if entry["ort_runs"].startswith("float"):
            assert runs is not None and runs[1] == "float", runs
        else:
            # ArgMax's output is an index ("other"): what matters is that it
            # reads the 8-bit tensor, not a DequantizeLinear.
            assert runs is None or runs[1] in ("integer", "other"), (runs, str(graph))
            assert _reads_dequantized(quantized, "target") in (False, None)
            # No float arithmetic between the quantized neighbours.
            assert graph.islands_on_dequantized_data == (), str(graph)
    # The deployed model stays close to FP32.
    for x in samples[:4]:
        want, got = _outputs(model, x), _outputs(quantized, x)
        for w, g in zip(want, got, strict=True):
            if w.dtype == np.int64:
                assert np.mean(w == g) >= 0.9, op
                continue
            w, g = w.ravel().astype(np.float64), g.ravel().astype(np.float64)
            cosine = w @ g / (np.linalg.norm(w) * np.linalg.norm(g))
            assert cosine > 0.99, (op, cosine)


def test_fused_only_ops_stay_float_without_quantized_neighbours() -> None:
    """A Where whose output goes to a float Softmax (an attention mask) and a
    Sigmoid at the graph output are not quantized."""
    model = oq.optimize_model(_model("Where"))
    graph = model.graph
    post = next(n for n in graph.node if n.name == "post0")
    post.op_type = "Softmax"
    del post.input[1:]
    post.attribute.append(helper.make_attribute("axis", 1))
    rng = np.random.default_rng(4)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(rng.standard_normal(SHAPE).astype(np.float32) for _ in range(4))
    _, report = oq.quantize(model, calibrator.compute_range(), return_report=True)
    floats = {n.node: n.reason for n in report.float_nodes}
    assert "mask" in floats["target"], floats
    assert "post0" in floats


def test_a_contrib_op_of_the_table_is_float_with_its_reason() -> None:
    e = TABLE[("com.microsoft", "EmbedLayerNormalization")]
    assert e["kind"] == "float"
    assert re.search("QDQ", e["reason"])


@pytest.mark.parametrize("op", ["Pad", "PRelu"])
def test_passes_turn_float_ops_into_integer_ones(op: str) -> None:
    """optimize_model folds a zero Pad that a Conv reads into the Conv
    (fold_pad_into_conv), and rewrites a PRelu with one slope as LeakyRelu
    (prelu_to_leaky_relu): both then run as integer kernels."""
    if op == "Pad":
        nodes = [helper.make_node("Pad", ["a", "pads"], ["p"], name="pad"),
                 _node("Conv", ["p", "cw"])]
        inits = [_i("pads", [0, 0, 1, 1, 0, 0, 1, 1]), _w("cw", [4, 4, 3, 3])]
    else:
        nodes = [_node("PRelu", ["a", "slope"])]
        inits = [_f("slope", [0.2])]
    CASES["_" + op] = (nodes, inits, ["y"])
    try:
        model, quantized, report, samples = _quantized("_" + op)
    finally:
        del CASES["_" + op]
    assert op not in {n.op_type for n in model.graph.node}
    graph = inspect_runtime_graph(quantized, level="extended")
    assert graph.runs_as("target")[1] == "integer", str(graph)
    assert graph.islands_on_dequantized_data == (), str(graph)
    for x in samples[:4]:
        (want, _), (got, _) = _outputs(model, x), _outputs(quantized, x)
        cosine = want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got))
        assert cosine > 0.99
