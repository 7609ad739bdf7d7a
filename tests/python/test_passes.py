"""The normalisation passes, checked against ONNX Runtime.

Each test builds a small model, runs one pass through ``onnxquant._core``,
compares the outputs of ONNX Runtime (optimizations off, so that it folds
nothing itself) before and after on random inputs, and asserts on the nodes
left.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant import _core

RNG_SEED = 20240607


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _apply(model: onnx.ModelProto, *names: str) -> tuple[onnx.ModelProto, list[str]]:
    data, changed = _core.run_passes(model.SerializeToString(), list(names))
    return onnx.load_from_string(data), changed


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Random float32 values for the model's inputs that are not initializers."""
    rng = np.random.default_rng(RNG_SEED)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _check_pass(model: onnx.ModelProto, name: str, expect_changed: bool = True) -> onnx.ModelProto:
    """Runs pass `name`; checks the result against the original in ONNX Runtime.

    Returns the rewritten model.
    """
    onnx.checker.check_model(model, full_check=True)
    after, changed = _apply(model, name)
    assert changed == ([name] if expect_changed else [])
    onnx.checker.check_model(after, full_check=True)
    assert [o.name for o in after.graph.output] == [o.name for o in model.graph.output]
    feeds = _feeds(model)
    for want, got in zip(_run(model, feeds), _run(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    again, changed_again = _apply(after, name)  # a fixed point
    assert changed_again == []
    assert again == after
    return after


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _init(name: str, values: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _model(
    nodes, inputs, outputs, initializers=(), opset: int = 13, ir_version: int = 8
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _bn_params(prefix: str, channels: int, rng) -> list[TensorProto]:
    return [
        _init(prefix + "_scale", rng.uniform(0.5, 2.0, channels)),
        _init(prefix + "_bias", rng.standard_normal(channels)),
        _init(prefix + "_mean", rng.standard_normal(channels)),
        _init(prefix + "_var", rng.uniform(0.1, 3.0, channels)),
    ]


def _bn(x: str, y: str, prefix: str = "bn", epsilon: float = 1e-3) -> onnx.NodeProto:
    names = [prefix + s for s in ("_scale", "_bias", "_mean", "_var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, epsilon=epsilon)


# ---------------------------------------------------------------------------
# fold_batch_norm


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_conv_batch_norm(with_bias: bool) -> None:
    rng = np.random.default_rng(1)
    inits = [_init("w", rng.standard_normal((4, 3, 3, 3)))]
    conv_inputs = ["x", "w"]
    if with_bias:
        inits.append(_init("b", rng.standard_normal(4)))
        conv_inputs.append("b")
    inits += _bn_params("bn", 4, rng)
    model = _model(
        [
            helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
            _bn("c", "n"),
            helper.make_node("Relu", ["n"], ["y"]),
        ],
        [_vi("x", [2, 3, 8, 8])],
        [_vi("y", [2, 4, 8, 8])],
        inits,
    )
    after = _check_pass(model, "fold_batch_norm")
    assert _op_types(after) == ["Conv", "Relu"]
    conv = after.graph.node[0]
    assert conv.output[0] == "n"
    assert len(conv.input) == 3
    assert {t.name for t in after.graph.initializer} == set(conv.input[1:])


def test_fold_depthwise_conv_batch_norm_into_graph_output() -> None:
    rng = np.random.default_rng(2)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="dw", group=3, pads=[1, 1, 1, 1]),
            _bn("c", "y"),
        ],
        [_vi("x", [1, 3, 6, 6])],
        [_vi("y", [1, 3, 6, 6])],
        [_init("w", rng.standard_normal((3, 1, 3, 3))), *_bn_params("bn", 3, rng)],
    )
    after = _check_pass(model, "fold_batch_norm")
    assert _op_types(after) == ["Conv"]
    assert after.graph.node[0].output[0] == "y"


def test_fold_conv_transpose_group2_batch_norm() -> None:
    # Weight [C_in=4, C_out/group=3, 3, 3] with group 2: 6 output channels.
    rng = np.random.default_rng(3)
    model = _model(
        [
            helper.make_node(
                "ConvTranspose", ["x", "w", "b"], ["c"], name="convt", group=2, strides=[2, 2]
            ),
            _bn("c", "y"),
        ],
        [_vi("x", [2, 4, 5, 5])],
        [_vi("y", [2, 6, 11, 11])],
        [
            _init("w", rng.standard_normal((4, 3, 3, 3))),
            _init("b", rng.standard_normal(6)),
            *_bn_params("bn", 6, rng),
        ],
    )
    after = _check_pass(model, "fold_batch_norm")
    assert _op_types(after) == ["ConvTranspose"]


@pytest.mark.parametrize(("trans_b", "bias_shape"), [(1, (6,)), (0, None), (1, ()), (0, (1, 6))])
def test_fold_gemm_batch_norm(trans_b: int, bias_shape) -> None:
    rng = np.random.default_rng(4)
    b_shape = (6, 8) if trans_b else (8, 6)
    inits = [_init("B", rng.standard_normal(b_shape))]
    gemm_inputs = ["x", "B"]
    if bias_shape is not None:
        inits.append(_init("C", rng.standard_normal(bias_shape)))
        gemm_inputs.append("C")
    inits += _bn_params("bn", 6, rng)
    gemm = helper.make_node(
        "Gemm", gemm_inputs, ["g"], name="gemm", transB=trans_b, alpha=0.5, beta=2.0
    )
    model = _model([gemm, _bn("g", "y")], [_vi("x", [5, 8])], [_vi("y", [5, 6])], inits)
    after = _check_pass(model, "fold_batch_norm")
    assert _op_types(after) == ["Gemm"]
    beta = next(a for a in after.graph.node[0].attribute if a.name == "beta")
    assert beta.f == 1.0


def test_no_fold_when_conv_output_has_two_readers() -> None:
    rng = np.random.default_rng(5)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            _bn("c", "y"),
            helper.make_node("Relu", ["c"], ["z"]),
        ],
        [_vi("x", [1, 2, 4, 4])],
        [_vi("y", [1, 2, 4, 4]), _vi("z", [1, 2, 4, 4])],
        [_init("w", rng.standard_normal((2, 2, 1, 1))), *_bn_params("bn", 2, rng)],
    )
    after = _check_pass(model, "fold_batch_norm", expect_changed=False)
    assert _op_types(after) == ["Conv", "BatchNormalization", "Relu"]


def test_fold_raises_model_error_naming_the_node() -> None:
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), _bn("c", "y", "bad_bn")],
        [_vi("x", [1, 2, 4, 4])],
        [_vi("y", [1, 2, 4, 4])],
        [_init("w", np.ones((2, 2, 1, 1)))]
        + [_init("bad_bn" + s, np.ones(3)) for s in ("_scale", "_bias", "_mean", "_var")],
    )
    with pytest.raises(onnxquant.ModelError, match="bad_bn"):
        _apply(model, "fold_batch_norm")


# ---------------------------------------------------------------------------
# remove_identity


def test_remove_identity_feeding_a_graph_output() -> None:
    model = _model(
        [
            helper.make_node("Identity", ["x"], ["i0"]),
            helper.make_node("Relu", ["i0"], ["a"], name="relu"),
            helper.make_node("Identity", ["a"], ["y"]),
            helper.make_node("Neg", ["a"], ["z"], name="neg"),
        ],
        [_vi("x", [3, 4])],
        [_vi("y", [3, 4]), _vi("z", [3, 4])],
    )
    after = _check_pass(model, "remove_identity")
    assert _op_types(after) == ["Relu", "Neg"]
    relu, neg = after.graph.node
    assert list(relu.input) == ["x"] and list(relu.output) == ["y"]
    assert list(neg.input) == ["y"]


def test_identity_from_input_to_output_stays() -> None:
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])])
    after = _check_pass(model, "remove_identity", expect_changed=False)
    assert _op_types(after) == ["Identity"]


def test_identity_read_by_subgraph_keeps_names() -> None:
    body = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [], [_vi("t", [2])])
    other = helper.make_graph([helper.make_node("Relu", ["a"], ["e"])], "else", [], [_vi("e", [2])])
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu"),
            helper.make_node("Identity", ["a"], ["y"]),
            helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=other),
        ],
        [_vi("x", [2]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [_vi("y", [2]), _vi("z", [2])],
    )
    after, changed = _apply(model, "remove_identity")
    assert changed == []
    assert after.graph.node[0].output[0] == "a"
    feeds = {"x": np.array([-1.0, 2.0], np.float32), "cond": np.array(True)}
    for want, got in zip(_run(model, feeds), _run(after, feeds), strict=True):
        np.testing.assert_allclose(got, want)


# ---------------------------------------------------------------------------
# remove_dropout


def test_remove_dropout_with_unused_mask() -> None:
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu"),
            helper.make_node("Dropout", ["a", "ratio"], ["d", "mask"]),
            helper.make_node("Dropout", ["d"], ["y"]),
        ],
        [_vi("x", [4, 5])],
        [_vi("y", [4, 5])],
        [_init("ratio", np.array(0.3))],
    )
    after = _check_pass(model, "remove_dropout")
    assert _op_types(after) == ["Relu"]
    assert after.graph.node[0].output[0] == "y"
    assert not after.graph.initializer  # `ratio` was read only by the Dropout


def test_dropout_with_used_mask_stays() -> None:
    model = _model(
        [
            helper.make_node("Dropout", ["x"], ["y", "mask"]),
            helper.make_node("Not", ["mask"], ["m"]),
        ],
        [_vi("x", [4])],
        [_vi("y", [4]), helper.make_tensor_value_info("m", TensorProto.BOOL, [4])],
    )
    after = _check_pass(model, "remove_dropout", expect_changed=False)
    assert _op_types(after) == ["Dropout", "Not"]


# ---------------------------------------------------------------------------
# remove_initializers_from_inputs


def test_remove_initializers_from_inputs_of_an_opset8_model() -> None:
    rng = np.random.default_rng(6)
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
            helper.make_node("Relu", ["g"], ["y"]),
        ],
        [_vi("x", [3, 4]), _vi("w", [5, 4]), _vi("b", [5])],
        [_vi("y", [3, 5])],
        [_init("w", rng.standard_normal((5, 4))), _init("b", rng.standard_normal(5))],
        opset=8,
        ir_version=3,
    )
    after = _check_pass(model, "remove_initializers_from_inputs")
    assert [i.name for i in after.graph.input] == ["x"]
    assert after.ir_version == 4
    assert _op_types(after) == ["Gemm", "Relu"]


# ---------------------------------------------------------------------------
# lift_constants


def test_lift_constants() -> None:
    model = _model(
        [
            helper.make_node(
                "Constant", [], ["k"], value=_init("", np.arange(6).reshape(2, 3) / 4)
            ),
            helper.make_node("Constant", [], ["shape"], value_ints=[3, 2]),
            helper.make_node("Constant", [], ["half"], value_float=0.5),
            helper.make_node("Add", ["x", "k"], ["s"]),
            helper.make_node("Mul", ["s", "half"], ["m"]),
            helper.make_node("Reshape", ["m", "shape"], ["y"]),
        ],
        [_vi("x", [2, 3])],
        [_vi("y", [3, 2])],
    )
    after = _check_pass(model, "lift_constants")
    assert _op_types(after) == ["Add", "Mul", "Reshape"]
    inits = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    assert inits["shape"].dtype == np.int64 and inits["shape"].tolist() == [3, 2]
    assert inits["half"].shape == () and inits["half"] == np.float32(0.5)


def test_constant_feeding_a_graph_output_stays() -> None:
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
            helper.make_node("Relu", ["x"], ["y"]),
        ],
        [_vi("x", [2])],
        [_vi("y", [2]), _vi("c", [2])],
    )
    after = _check_pass(model, "lift_constants", expect_changed=False)
    assert _op_types(after) == ["Constant", "Relu"]


# ---------------------------------------------------------------------------
# flatten_gemm_bias


@pytest.mark.parametrize("shared", [False, True])
def test_flatten_gemm_bias(shared: bool) -> None:
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="gemm", transB=1)]
    outputs = [_vi("y", [5, 3])]
    if shared:
        nodes.append(helper.make_node("Neg", ["C"], ["z"], name="neg"))
        outputs.append(_vi("z", [1, 3]))
    model = _model(nodes, [_vi("x", [5, 4])], outputs,
                   [_init("B", rng.standard_normal((3, 4))),
                    _init("C", rng.standard_normal((1, 3)))])
    after = _check_pass(model, "flatten_gemm_bias")
    inits = {t.name: list(t.dims) for t in after.graph.initializer}
    assert inits[after.graph.node[0].input[2]] == [3]
    assert inits["C"] == ([1, 3] if shared else [3])


def test_a_per_element_gemm_bias_stays() -> None:
    rng = np.random.default_rng(10)
    model = _model([helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="gemm")],
                   [_vi("x", [5, 4])], [_vi("y", [5, 3])],
                   [_init("B", rng.standard_normal((4, 3))),
                    _init("C", rng.standard_normal((5, 3)))])
    after = _check_pass(model, "flatten_gemm_bias", expect_changed=False)
    assert [list(t.dims) for t in after.graph.initializer] == [[4, 3], [5, 3]]


# ---------------------------------------------------------------------------
# prelu_to_leaky_relu


def test_prelu_with_one_slope_becomes_a_leaky_relu() -> None:
    model = _model([helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")],
                   [_vi("x", [2, 3, 4, 4])], [_vi("y", [2, 3, 4, 4])],
                   [_init("slope", [0.2])])
    after = _check_pass(model, "prelu_to_leaky_relu")
    assert _op_types(after) == ["LeakyRelu"]
    assert [t.name for t in after.graph.initializer] == []


def test_prelu_with_a_slope_per_channel_stays() -> None:
    model = _model([helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")],
                   [_vi("x", [2, 3, 4, 4])], [_vi("y", [2, 3, 4, 4])],
                   [_init("slope", [[[0.1]], [[0.2]], [[0.3]]])])
    after = _check_pass(model, "prelu_to_leaky_relu", expect_changed=False)
    assert _op_types(after) == ["PRelu"]


# ---------------------------------------------------------------------------
# fold_pad_into_conv


def _pad_conv(pads, mode: str = "constant") -> onnx.ModelProto:
    rng = np.random.default_rng(12)
    return _model([helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
                   helper.make_node("Conv", ["p", "W"], ["y"], name="conv", pads=[1, 0, 0, 1])],
                  [_vi("x", [2, 3, 6, 6])], [_vi("y", None)],
                  [numpy_helper.from_array(np.asarray(pads, dtype=np.int64), "pads"),
                   _init("W", rng.standard_normal((4, 3, 3, 3)))])


def test_a_zero_pad_before_a_conv_is_folded_into_it() -> None:
    model = _pad_conv([0, 0, 2, 1, 0, 0, 0, 3])
    model.graph.output[0].CopyFrom(_vi("y", [2, 4, 7, 9]))
    after = _check_pass(model, "fold_pad_into_conv")
    assert _op_types(after) == ["Conv"]
    assert list(after.graph.node[0].attribute[0].ints) == [3, 1, 0, 4]


def test_a_reflect_pad_stays() -> None:
    model = _pad_conv([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")
    model.graph.output[0].CopyFrom(_vi("y", [2, 4, 7, 7]))
    after = _check_pass(model, "fold_pad_into_conv", expect_changed=False)
    assert _op_types(after) == ["Pad", "Conv"]


# ---------------------------------------------------------------------------
# fold_constant_transpose


def test_fold_constant_transpose_gives_the_matmul_a_constant_weight() -> None:
    # A Linear layer on a 3-D input as PyTorch exports it without constant folding.
    rng = np.random.default_rng(11)
    model = _model([helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0]),
                    helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm")],
                   [_vi("x", [2, 5, 4])], [_vi("y", [2, 5, 3])],
                   [_init("W", rng.standard_normal((3, 4)))])
    after = _check_pass(model, "fold_constant_transpose")
    assert [n.op_type for n in after.graph.node] == ["MatMul"]
    assert {t.name: list(t.dims) for t in after.graph.initializer} == {"Wt": [4, 3]}
    normalised = onnxquant.optimize_model(model)
    plan = {q.node: q.weight_axis for q in onnxquant.quantize(
        normalised, {"x": (-3.0, 3.0), "y": (-9.0, 9.0)}, target="exact",
        return_report=True)[1].quantized_nodes}
    assert plan == {"mm": 1}  # per output channel, as a weight


# ---------------------------------------------------------------------------
# reduce_mean_to_global_average_pool


def _spatial_mean(axes, keepdims: int, opset: int, declare_rank: bool = True
                  ) -> onnx.ModelProto:
    """x [2, 6, 5, 7] -> Relu -> r -> ReduceMean -> y (a graph output) -> Neg -> z."""
    inits = []
    mean_inputs = ["r"]
    attrs = {"keepdims": keepdims}
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), "axes"))
        mean_inputs.append("axes")
        attrs["noop_with_empty_axes"] = 0
    else:
        attrs["axes"] = axes
    reduced = {a % 4 for a in axes}
    out_shape = [1 if k in reduced else d for k, d in enumerate([2, 6, 5, 7])
                 if keepdims or k not in reduced]
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("ReduceMean", mean_inputs, ["y"], name="mean", **attrs),
            helper.make_node("Neg", ["y"], ["z"], name="neg"),
        ],
        [_vi("x", [2, 6, 5, 7])],
        [_vi("y", out_shape), _vi("z", out_shape)],
        inits,
        opset=opset,
    )
    if declare_rank:
        model.graph.value_info.append(_vi("r", ["N", 6, 5, 7]))
    return model


@pytest.mark.parametrize(("axes", "keepdims", "opset"),
                         [([2, 3], 0, 13), ([-2, -1], 1, 13), ([3, 2], 0, 18),
                          ([-1, 2], 1, 18)])
def test_spatial_reduce_mean_becomes_global_average_pool(axes, keepdims, opset) -> None:
    model = _spatial_mean(axes, keepdims, opset)
    after = _check_pass(model, "reduce_mean_to_global_average_pool")
    want = ["Relu", "GlobalAveragePool"] + ([] if keepdims else ["Squeeze"]) + ["Neg"]
    assert _op_types(after) == want
    producer = {o: n for n in after.graph.node for o in n.output}
    assert producer["y"].op_type == ("GlobalAveragePool" if keepdims else "Squeeze")
    assert "axes" not in {t.name for t in after.graph.initializer}


@pytest.mark.parametrize(("axes", "declare_rank"), [([2, 3], False), ([1, 2], True),
                                                    ([1, 2, 3], True)])
def test_reduce_mean_stays_without_rank_or_over_other_axes(axes, declare_rank) -> None:
    model = _spatial_mean(axes, 0, 13, declare_rank=declare_rank)
    after = _check_pass(model, "reduce_mean_to_global_average_pool", expect_changed=False)
    assert "ReduceMean" in _op_types(after)


def test_reduce_mean_with_noop_and_no_axes_stays() -> None:
    model = _model(
        [helper.make_node("ReduceMean", ["x"], ["y"], name="mean", noop_with_empty_axes=1)],
        [_vi("x", [2, 6, 5, 7])],
        [_vi("y", [2, 6, 5, 7])],
        opset=18,
    )
    after = _check_pass(model, "reduce_mean_to_global_average_pool", expect_changed=False)
    assert _op_types(after) == ["ReduceMean"]


def test_optimize_model_finds_the_rank_by_shape_inference() -> None:
    """No value_info in the model (as the TorchScript exporter writes it): the
    rank comes from ONNX shape inference, whose entries are not left behind."""
    rng = np.random.default_rng(8)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("ReduceMean", ["c"], ["y"], name="mean", axes=[2, 3],
                             keepdims=0),
        ],
        [_vi("x", ["N", 3, 6, 6])],
        [_vi("y", ["N", 4])],
        [_init("w", rng.standard_normal((4, 3, 3, 3)))],
    )
    assert not model.graph.value_info
    after = onnxquant.optimize_model(model)
    onnx.checker.check_model(after, full_check=True)
    assert _op_types(after) == ["Conv", "GlobalAveragePool", "Squeeze"]
    assert [o.name for o in after.graph.output] == ["y"]
    assert not after.graph.value_info
    feeds = {"x": rng.standard_normal((3, 3, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(_run(after, feeds)[0], _run(model, feeds)[0],
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# all passes together


def test_all_passes_in_their_default_order() -> None:
    rng = np.random.default_rng(7)
    model = _model(
        [
            helper.make_node(
                "Constant", [], ["w"], value=_init("", rng.standard_normal((4, 3, 1, 1)))
            ),
            helper.make_node("Identity", ["x"], ["xi"]),
            helper.make_node("Pad", ["xi", "pads"], ["xp"]),
            helper.make_node("Conv", ["xp", "w"], ["c"], name="conv"),
            helper.make_node("Dropout", ["c"], ["cd"]),
            helper.make_node("Identity", ["cd"], ["ci"]),
            _bn("ci", "n"),
            helper.make_node("Identity", ["n"], ["ni"]),
            helper.make_node("ReduceMean", ["ni"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("Transpose", ["fc_t"], ["fc"]),
            helper.make_node("Gemm", ["m", "fc", "fc_b"], ["g"]),
            helper.make_node("PRelu", ["g", "slope"], ["y"]),
        ],
        [_vi("x", [1, 3, 4, 4]), _vi("bn_var", [4])],
        [_vi("y", [1, 3])],
        [*_bn_params("bn", 4, rng), _init("fc_t", rng.standard_normal((3, 4))),
         _init("fc_b", rng.standard_normal((1, 3))), _init("slope", [0.3]),
         numpy_helper.from_array(np.asarray([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")],
        opset=13,
    )
    model.graph.value_info.append(_vi("n", [1, 4, 6, 6]))  # Identity removal drops "ni"'s
    names = _core.pass_names()
    after, changed = _apply(model, *names)
    assert set(changed) == set(names)
    assert _op_types(after) == ["Conv", "GlobalAveragePool", "Squeeze", "Gemm", "LeakyRelu"]
    assert list(after.graph.node[0].input[:1]) == ["x"]
    assert after.graph.node[-1].output[0] == "y"
    onnx.checker.check_model(after, full_check=True)
    feeds = _feeds(model)
    for want, got in zip(_run(model, feeds), _run(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_run_passes_times_two_is_two_calls() -> None:
    """times=2 runs the list twice in one call, as two calls would: here the
    second run folds a Transpose that reads a weight through an Identity,
    which the first run removes only after fold_constant_transpose ran."""
    rng = np.random.default_rng(RNG_SEED)
    w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["w_id"], name="id"),
         helper.make_node("Transpose", ["w_id"], ["w_t"], name="tr", perm=[1, 0]),
         helper.make_node("MatMul", ["x", "w_t"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = list(_core.pass_names())
    data = model.SerializeToString()
    once, _ = _core.run_passes(data, names)
    twice_by_calls, _ = _core.run_passes(once, names)
    twice, changed = _core.run_passes(data, names, times=2)
    assert twice == twice_by_calls
    assert [n.op_type for n in onnx.load_from_string(once).graph.node] == \
        ["Transpose", "MatMul"]
    assert [n.op_type for n in onnx.load_from_string(twice).graph.node] == ["MatMul"]
    assert "fold_constant_transpose" in changed and "remove_identity" in changed
    feeds = _feeds(model)
    np.testing.assert_allclose(_run(onnx.load_from_string(twice), feeds)[0],
                               _run(model, feeds)[0], rtol=1e-6, atol=1e-6)
