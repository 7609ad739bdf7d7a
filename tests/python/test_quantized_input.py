"""Already quantized models are refused by optimize_model, Calibrator and
quantize alike: one error type, UnsupportedModelError, naming the first
quantized node."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest

import onnxquant as oq
from onnxquant._input_checks import is_quantized_op


def _qdq_conv_model(opset: int) -> onnx.ModelProto:
    """Q -> DQ -> Conv with a DQ'd int8 weight, per tensor (valid from opset 10)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    inits = [
        onnx.numpy_helper.from_array(w, "w_q"),
        onnx.numpy_helper.from_array(np.array(0.02, np.float32), "w_scale"),
        onnx.numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        onnx.numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
        onnx.numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
    ]
    nodes = [
        onnx.helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"],
                              name="input_quant"),
        onnx.helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"],
                              name="input_dequant"),
        onnx.helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"],
                              name="weight_dequant"),
        onnx.helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = onnx.helper.make_graph(
        nodes, "qdq",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   ir_version=7 if opset >= 13 else 6)
    onnx.checker.check_model(model)
    return model


def _float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
         onnx.helper.make_node("Relu", ["h"], ["y"], name="relu")], "float",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.numpy_helper.from_array(w, "w")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)],
                                  ir_version=8)


def _dynamic_model(tmp_path) -> onnx.ModelProto:
    """The float model quantized dynamically by ONNX Runtime's own quantizer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(_float_model(), src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return onnx.load(dst)


@pytest.mark.parametrize("opset", [11, 13])
def test_qdq_model_is_refused_by_optimize_model(opset):
    # At opset 11 the refusal comes before the opset conversion, which used to
    # fail with "changed what the model computes".
    with pytest.raises(oq.UnsupportedModelError) as info:
        oq.optimize_model(_qdq_conv_model(opset))
    message = str(info.value)
    assert "already quantized" in message
    assert "node 'input_quant' (QuantizeLinear)" in message
    assert "float model" in message and "opset" not in message


def test_dynamically_quantized_model_is_refused_naming_the_node(tmp_path):
    model = _dynamic_model(tmp_path)
    first = next(n for n in model.graph.node if is_quantized_op(n.op_type))
    assert first.op_type in ("DynamicQuantizeLinear", "MatMulInteger")
    with pytest.raises(oq.UnsupportedModelError,
                       match=rf"already quantized: node '{first.name}' "
                             rf"\({first.op_type}\) is a dynamically quantized op"):
        oq.optimize_model(model)


@pytest.mark.parametrize("op_type,domain", [
    ("ConvInteger", ""), ("MatMulInteger", ""), ("QLinearConv", ""),
    ("QLinearAdd", "com.microsoft"), ("DynamicQuantizeLSTM", "com.microsoft"),
    ("MatMulNBits", "com.microsoft"), ("QGemm", "com.microsoft"),
    ("MatMulIntegerToFloat", "com.microsoft"),
])
def test_every_kind_of_quantized_node_is_refused(op_type, domain):
    model = _float_model()
    # Put the op first, unnamed, so the message names it by index; its
    # output is unused (the refusal looks at op types only).
    node = onnx.helper.make_node(op_type, ["x"], ["unused"], domain=domain)
    model.graph.node.insert(0, node)
    if domain:
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    with pytest.raises(oq.UnsupportedModelError,
                       match=rf"already quantized: node #0 \(unnamed\) \({op_type}\)"):
        oq.optimize_model(model)


def test_quantized_node_inside_a_subgraph_is_found():
    model = _float_model()
    then_graph = onnx.helper.make_graph(
        [onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"],
                               name="inner_dql")], "then", [],
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, [1, 16])])
    else_graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["e"])], "else", [],
        [onnx.helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [1, 16])])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(onnx.helper.make_node(
        "If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph))
    with pytest.raises(oq.UnsupportedModelError, match="node 'inner_dql'"):
        oq.optimize_model(model)


def test_calibrator_and_quantize_refuse_with_the_same_type(tmp_path):
    model = _dynamic_model(tmp_path)
    onnx.helper.set_model_props(model, {"onnxquant.normalized": oq.__version__})
    for call in (lambda: oq.Calibrator(model, "MIN_MAX_ASYM"),
                 lambda: oq.quantize(model, {})):
        with pytest.raises(oq.UnsupportedModelError, match="already quantized: node '"):
            call()


def test_onnxquant_output_is_refused_naming_its_first_quantized_node(calibrated_scale_shift):
    model, ranges = calibrated_scale_shift
    quantized = oq.quantize(model, ranges)
    first = next(n for n in quantized.graph.node if is_quantized_op(n.op_type))
    for call in (lambda: oq.optimize_model(quantized),
                 lambda: oq.Calibrator(quantized, "MIN_MAX_ASYM"),
                 lambda: oq.quantize(quantized, ranges)):
        with pytest.raises(oq.UnsupportedModelError,
                           match=rf"node '{first.name}' \({first.op_type}\)"):
            call()


def test_float_model_is_not_taken_for_a_quantized_one():
    assert not any(is_quantized_op(op) for op in (
        "Conv", "MatMul", "QuickGelu", "Quantile", "Gemm", "NGramRepeatBlock"))
    optimized = oq.optimize_model(_float_model())
    assert [n.op_type for n in optimized.graph.node] == ["MatMul", "Relu"]


@pytest.fixture()
def calibrated_scale_shift(scale_shift_model):
    model = oq.optimize_model(scale_shift_model)
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data([np.linspace(-1, 1, 8, dtype=np.float32)[None]])
    return model, calibrator.compute_range()


def test_cli_refuses_a_quantized_model_in_one_line(tmp_path, capsys):
    from onnxquant.cli import main

    path = tmp_path / "qdq.onnx"
    onnx.save(_qdq_conv_model(11), path)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.zeros((4, 1, 3, 8, 8), np.float32)[:, 0])
    code = main(["quantize", str(path), "-o", str(tmp_path / "out.onnx"),
                 "--calibration-data", str(data), "-q"])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("onnxquant: error: ")
    assert "already quantized: node 'input_quant' (QuantizeLinear)" in errors[0]
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("quant_format,first_ops", [
    ("QDQ", ("QuantizeLinear", "DequantizeLinear")),
    ("QOperator", ("QuantizeLinear", "QLinearConv")),
])
def test_onnxruntime_static_quantization_is_refused(tmp_path, small_cnn_model, image_batches,
                                                   quant_format, first_ops):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = iter({"image": b} for b in image_batches[:8])

        def get_next(self):
            return next(self._feeds, None)

    src, dst = tmp_path / "float.onnx", tmp_path / "static.onnx"
    onnx.save(small_cnn_model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, quant_format))
    model = onnx.load(dst)
    first = next(n for n in model.graph.node if is_quantized_op(n.op_type))
    assert first.op_type in first_ops
    with pytest.raises(oq.UnsupportedModelError,
                       match=rf"already quantized: node '{first.name}' \({first.op_type}\)"):
        oq.optimize_model(model)
