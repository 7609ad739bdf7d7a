"""onnxquant.runtime_graph: integer kernels and float islands of the graph
ONNX Runtime runs, on small QDQ models built with onnx.helper."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant as oq
from onnxquant.runtime_graph import inspect_runtime_graph, optimized_graph

LEVELS = ["all", "extended"]


def _const(name: str, values, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _qdq(tensor: str, prefix: str, scale: float, nodes: list, inits: list) -> str:
    """Appends QuantizeLinear -> DequantizeLinear (uint8) of ``tensor``; returns
    the dequantized name."""
    inits += [_const(f"{prefix}_s", scale, np.float32), _const(f"{prefix}_z", 128, np.uint8)]
    nodes += [
        helper.make_node("QuantizeLinear", [tensor, f"{prefix}_s", f"{prefix}_z"],
                         [f"{prefix}_q"], name=f"{prefix}_quantize"),
        helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_s", f"{prefix}_z"],
                         [f"{prefix}_dq"], name=f"{prefix}_dequantize"),
    ]
    return f"{prefix}_dq"


def _model(nodes, inits, out_shape, out: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _qdq_conv(nodes: list, inits: list) -> str:
    """x -> Q/DQ -> Conv (int8 weight, int32 bias, both dequantized) -> Q/DQ."""
    rng = np.random.default_rng(0)
    xd = _qdq("x", "x", 0.02, nodes, inits)
    inits += [
        _const("w", rng.integers(-127, 128, (4, 3, 3, 3)), np.int8),
        _const("w_s", 0.01, np.float32), _const("w_z", 0, np.int8),
        _const("b", rng.integers(-500, 500, 4), np.int32),
        _const("b_s", 0.0002, np.float32), _const("b_z", 0, np.int32),
    ]
    nodes += [
        helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["w_dq"], name="w_dq"),
        helper.make_node("DequantizeLinear", ["b", "b_s", "b_z"], ["b_dq"], name="b_dq"),
        helper.make_node("Conv", [xd, "w_dq", "b_dq"], ["c"], name="conv", pads=[1] * 4),
    ]
    return _qdq("c", "c", 0.05, nodes, inits)


@pytest.mark.parametrize("level", LEVELS)
def test_a_qdq_conv_runs_as_an_integer_kernel(level: str) -> None:
    nodes, inits = [], []
    cd = _qdq_conv(nodes, inits)  # the output is dequantized: no float op after it
    graph = inspect_runtime_graph(_model(nodes, inits, [1, 4, 8, 8], out=cd), level=level)
    assert sum(n for op, n in graph.integer_ops.items() if op.endswith("QLinearConv")) == 1
    assert not any(op.endswith("Conv") and "QLinear" not in op for op in graph.float_ops)
    assert graph.float_islands == ()
    assert graph.level == level


@pytest.mark.parametrize("level", LEVELS)
def test_a_reduce_mean_between_dq_and_q_is_a_float_island(level: str) -> None:
    nodes, inits = [], []
    cd = _qdq_conv(nodes, inits)
    nodes.append(helper.make_node("ReduceMean", [cd], ["m"], name="mean", axes=[2, 3]))
    md = _qdq("m", "m", 0.05, nodes, inits)
    graph = inspect_runtime_graph(_model(nodes, inits, [1, 4, 1, 1], out=md), level=level)
    between = [i for i in graph.float_islands if i.kind == "between"]
    assert [i.op_types for i in between] == [("ReduceMean",)]
    assert between[0].sources == ("DequantizeLinear",)
    assert between[0].sinks == ("QuantizeLinear",)
    assert graph.float_ops.get("ReduceMean") == 1
    assert "ReduceMean" in str(graph)


def test_a_float_end_is_a_tail() -> None:
    nodes, inits = [], []
    cd = _qdq_conv(nodes, inits)
    nodes.append(helper.make_node("Softmax", [cd], ["y"], name="softmax", axis=1))
    graph = inspect_runtime_graph(_model(nodes, inits, [1, 4, 8, 8]))
    [tail] = graph.islands_on_dequantized_data
    assert tail.kind == "tail"
    assert tail.op_types == ("Softmax",)
    assert tail.sinks == ("graph output",)


def test_an_fp32_model_is_one_float_island() -> None:
    rng = np.random.default_rng(1)
    inits = [_const("w", rng.standard_normal((4, 3, 3, 3)), np.float32)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = inspect_runtime_graph(_model(nodes, inits, [1, 4, 8, 8]))
    assert graph.integer_ops == {}
    [island] = graph.float_islands
    assert island.kind == "float"
    assert island.sources == ("graph input",) and island.sinks == ("graph output",)
    assert any(op.endswith("Conv") for op in island.op_types)  # NCHWc or fused


def test_quantized_spatial_mean_runs_as_qlinear_global_average_pool() -> None:
    """optimize_model's reduce_mean_to_global_average_pool leaves ONNX Runtime
    nothing to run in float in a Conv -> Relu -> x.mean((2, 3)) -> Gemm net."""
    rng = np.random.default_rng(2)
    inits = [_const("w", rng.standard_normal((4, 3, 3, 3)) / 4, np.float32),
             _const("fc", rng.standard_normal((5, 4)), np.float32),
             _const("fc_b", rng.standard_normal(5), np.float32)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[2, 3],
                              keepdims=0),
             helper.make_node("Gemm", ["m", "fc", "fc_b"], ["y"], name="fc", transB=1)]
    model = oq.optimize_model(_model(nodes, inits, [1, 5]))
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
                            for _ in range(4))
    quantized = oq.quantize(model, calibrator.compute_range())
    graph = inspect_runtime_graph(quantized)
    assert graph.integer_ops.get("com.microsoft:QLinearGlobalAveragePool") == 1
    assert graph.islands_on_dequantized_data == (), graph


def test_optimized_graph_rejects_an_unknown_level() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = _model(nodes, [], [1, 3, 8, 8])
    with pytest.raises(oq.InvalidArgumentError, match="basic"):
        optimized_graph(model, level="basic")
    assert [n.op_type for n in optimized_graph(model).graph.node] == ["Relu"]


def test_the_zoo_mnist_cnn_runs_without_a_float_island(zoo_dir) -> None:
    """Its Gemm bias is [1, 10] (CNTK): flatten_gemm_bias makes it [10], so the
    plan quantizes it to int32 and ONNX Runtime fuses the Gemm into QGemm."""
    import os

    model = oq.optimize_model(os.path.join(zoo_dir, "mnist", "mnist_cnn.onnx"))
    images = np.load(os.path.join(zoo_dir, "mnist", "mnist_test.npz"))["images"][:20]
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(images[i:i + 1, None].astype(np.float32) for i in range(20))
    graph = inspect_runtime_graph(oq.quantize(model, calibrator.compute_range()))
    assert graph.integer_ops.get("com.microsoft:QGemm") == 1, graph
    assert graph.islands_on_dequantized_data == (), graph
