"""Bad models and bad files: each raises a typed error whose message names the
file, node or tensor."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import pytest

import onnxquant as oq
from onnxquant import _core
from onnxquant._model import load_model


def _model_with_weights(parse_model) -> onnx.ModelProto:
    del parse_model  # w is added below, so the text alone does not check
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 64] x) => (float[1, 64] y) {
            y = MatMul(x, w)
        }
    """)
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    return model


def test_errors_share_one_base_class():
    for cls in (oq.ModelError, oq.UnsupportedModelError, oq.CalibrationDataError,
                oq.RangeMissingError, oq.InvalidArgumentError, oq.QemuError,
                oq.InternalError):
        assert issubclass(cls, oq.OnnxQuantError)
    assert str(oq.RangeMissingError("Tensor 'a' has no range.")) == "Tensor 'a' has no range."


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(oq.ModelError, match="absent.onnx.*does not exist"):
        oq.optimize_model(str(path))


def test_corrupt_file_names_the_file_and_says_malformed(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 20)
    with pytest.raises(oq.ModelError, match=r"corrupt\.onnx.*malformed or truncated"):
        oq.optimize_model(path)


def test_truncated_file_names_the_file_and_says_truncated(tmp_path, parse_model):
    data = _model_with_weights(parse_model).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(oq.ModelError, match=r"truncated\.onnx.*truncated"):
        oq.optimize_model(path)


def test_truncated_bytes_say_truncated(parse_model):
    data = _model_with_weights(parse_model).SerializeToString()
    with pytest.raises(oq.ModelError, match="truncated"):
        load_model(data[: len(data) - 7])


def test_model_missing_its_weights_is_malformed(tmp_path, parse_model):
    model = _model_with_weights(parse_model)
    del model.graph.initializer[:]  # as if cut at a field boundary
    path = tmp_path / "cut.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(oq.ModelError, match=r"cut\.onnx.*tensor 'w'"):
        load_model(path)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(oq.ModelError, match="directory"):
        load_model(tmp_path)


def test_wrong_argument_type():
    with pytest.raises(oq.InvalidArgumentError, match="ModelProto"):
        load_model(42)


def test_external_data_is_loaded_and_files_untouched(tmp_path, parse_model):
    model = _model_with_weights(parse_model)
    path = tmp_path / "external.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.data", size_threshold=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    loaded = load_model(path)
    w = onnx.numpy_helper.to_array(loaded.graph.initializer[0])
    assert w.shape == (64, 64) and float(w[1, 0]) == pytest.approx(64 / 4096)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_missing_external_data_is_a_model_error(tmp_path, parse_model):
    model = _model_with_weights(parse_model)
    path = tmp_path / "external.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(oq.ModelError, match="external data"):
        load_model(path)


def test_opset_conversion_failure_names_the_node(parse_model):
    # ImageScaler left the standard at opset 10: the converter cannot take it to 13.
    model = onnx.parser.parse_model("""
        <ir_version: 3, opset_import: ["" : 8]>
        g (float[1, 3, 4, 4] x) => (float[1, 3, 4, 4] y) {
            t = Relu(x)
            y = ImageScaler<scale = 2.0, bias = [1.0, 2.0, 3.0]>(t)
        }
    """)
    model.graph.node[1].name = "legacy_scaler"
    with pytest.raises(oq.UnsupportedModelError) as info:
        oq.optimize_model(model)
    message = str(info.value)
    assert "ImageScaler" in message and "'legacy_scaler'" in message
    assert "opset 8 to 13" in message


def test_unnamed_blocking_node_is_named_by_index(parse_model):
    model = onnx.parser.parse_model("""
        <ir_version: 3, opset_import: ["" : 8]>
        g (float[4] x) => (float[4] y) {
            t = Relu(x)
            y = ScaledTanh<alpha = 1.0, beta = 1.0>(t)
        }
    """)
    with pytest.raises(oq.UnsupportedModelError, match=r"ScaledTanh node #1"):
        oq.optimize_model(model)


def test_bfloat16_model_is_unsupported(parse_model):
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] y) {
            y = Add(x, c)
        }
    """)
    del parse_model
    c = onnx.helper.make_tensor("c", onnx.TensorProto.BFLOAT16, [2], [1.0, 2.0])
    model.graph.initializer.append(c)
    with pytest.raises(oq.UnsupportedModelError, match="'c' is bfloat16"):
        oq.optimize_model(model)


def test_native_errors_arrive_as_typed_exceptions():
    with pytest.raises(oq.ModelError, match="malformed"):
        _core.run_passes(b"\x08\x01garbage", [])
    with pytest.raises(oq.InvalidArgumentError, match="Unknown pass"):
        model = onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
        _core.run_passes(model.SerializeToString(), ["no_such_pass"])


def test_unnormalised_model_is_refused(scale_shift_model):
    with pytest.raises(oq.ModelError, match="optimize_model"):
        oq.Calibrator(scale_shift_model, oq.CalibrationMethod.MIN_MAX_ASYM)
    with pytest.raises(oq.ModelError, match="optimize_model"):
        oq.quantize(scale_shift_model, {})


def test_bad_input_shapes_are_invalid_arguments(parse_model):
    model = parse_model("""
        <ir_version: 6, opset_import: ["" : 11]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """)
    with pytest.raises(oq.InvalidArgumentError, match="'nope'.*'x'"):
        oq.optimize_model(model, input_shapes={"nope": (1, 4)})
    with pytest.raises(oq.InvalidArgumentError, match=r"\[2, 5\].*does not fit"):
        oq.optimize_model(model, input_shapes={"x": (2, 5)})
