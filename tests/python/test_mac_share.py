"""MAC counts and the share of them that runs in INT8 (onnxquant.analysis)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnx.parser
import pytest

import onnxquant as oq
from onnxquant.analysis import mac_counts, mac_share


def _parse(text: str) -> onnx.ModelProto:
    """onnx.parser's model, each node named by its ``_name`` attribute."""
    model = onnx.parser.parse_model(text)
    for node in model.graph.node:
        names = [a for a in node.attribute if a.name == "_name"]
        node.name = names[0].s.decode()
        node.attribute.remove(names[0])
    return model


def _two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 8] x) => (float[1, 4, 2] y) {
            h = MatMul <_name="mm1"> (x, w1)
            r = Relu <_name="relu"> (h)
            y = MatMul <_name="mm2"> (r, w2)
        }""")
    model.graph.initializer.extend([
        onh.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
        onh.from_array(rng.normal(size=(16, 2)).astype(np.float32), "w2")])
    return model


def _quantize(model: onnx.ModelProto, **options):
    model = oq.optimize_model(model)
    rng = np.random.default_rng(1)
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1)
    cal.collect_data([rng.normal(size=(1, 4, 8)).astype(np.float32) for _ in range(4)])
    quantized, report = oq.quantize(model, cal.compute_range(), calibrator=cal,
                                    return_report=True, **options)
    return model, quantized, report


def test_macs_of_matmuls_come_from_shapes():
    counts, unknown = mac_counts(_two_matmuls())
    assert counts == {"mm1": 4 * 16 * 8, "mm2": 4 * 2 * 16}
    assert unknown == ()


def test_macs_of_conv_conv_transpose_and_gemm():
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 8, 8] x, float[1, 4, 5, 5] z, float[3, 5] a)
            => (float[1, 6, 8, 8] y, float[1, 3, 10, 10] t, float[5, 7] c) {
            y = Conv <_name="conv", group=2, pads=[1, 1, 1, 1]> (x, wc)
            t = ConvTranspose <_name="deconv", strides=[2, 2]> (z, wt)
            c = Gemm <_name="gemm", transA=1> (a, wg)
        }""")
    model.graph.initializer.extend([
        onh.from_array(np.ones((6, 2, 3, 3), np.float32), "wc"),
        onh.from_array(np.ones((4, 3, 2, 2), np.float32), "wt"),
        onh.from_array(np.ones((3, 7), np.float32), "wg")])
    counts, _ = mac_counts(model)
    assert counts == {"conv": 6 * 8 * 8 * 2 * 3 * 3,  # outputs x (C/group) x kernel
                      "deconv": 4 * 5 * 5 * 3 * 2 * 2,  # inputs x (M/group) x kernel
                      "gemm": 5 * 7 * 3}  # K is A's first dim with transA


def test_dynamic_dimension_is_unknown_not_zero():
    model = _two_matmuls()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    counts, unknown = mac_counts(model)
    assert counts == {} and set(unknown) == {"mm1", "mm2"}


def test_share_counts_only_the_quantized_matmul():
    model, quantized, report = _quantize(_two_matmuls(), exclude_nodes=["mm2"])
    share = mac_share(model, quantized)
    assert (share.total, share.int8) == (512 + 128, 512)
    assert share.share == pytest.approx(0.8)
    assert share.float_nodes == {"mm2": 128}
    # ONNX Runtime fuses the quantized MatMul: the report agrees.
    assert mac_share(model, quantized, report).int8 == 512


def test_share_of_float_model_is_zero_and_of_empty_model_nan():
    model = oq.optimize_model(_two_matmuls())
    assert mac_share(model, model).share == 0.0
    empty = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu <_name="r"> (x) }""")
    assert math.isnan(mac_share(empty, empty).share)
