"""ModelEditor, TensorType, get_pure_input_names / get_output_names and
fold_preprocessing, checked numerically against the unedited models on
Fashion-MNIST (Debian's dataset-fashion-mnist) and the zoo's ResNet8."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant.datasets import FASHION_MNIST_ROOT, load_fashion_mnist

pytestmark = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_ROOT),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """ONNX Runtime as deployed: default session options (fused integer kernels)."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@pytest.fixture(scope="module")
def fashion():
    """(normalised float model, raw uint8 test images [512, 1, 28, 28],
    raw uint8 calibration images [100, 1, 28, 28])."""
    from onnxquant.demo import default_model_path

    model = oq.optimize_model(onnx.load(default_model_path()))
    test, _ = load_fashion_mnist("test")
    train, _ = load_fashion_mnist("train")
    pick = np.sort(np.random.default_rng(0).choice(len(train), 100, replace=False))
    return model, test[:512, None], train[pick][:, None]


@pytest.fixture(scope="module")
def quantized(fashion):
    """The Fashion-MNIST CNN quantized (uint8, portable; its output quantized too, as an
    integer-output target asks with float_outputs=False) and its float test inputs."""
    model, test, train = fashion
    options = oq.QuantOptions(float_outputs=False)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, options=options)
    calibrator.collect_data(train[i:i + 1].astype(np.float32) / 255 for i in range(len(train)))
    return oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                       options=options), test.astype(np.float32) / 255


def test_default_float_output_is_refused_naming_the_option(fashion):
    """By default the last Gemm writes float logits: nothing to convert, and the
    refusal says how to get a quantized output."""
    model, _, train = fashion
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(train[i:i + 1].astype(np.float32) / 255 for i in range(8))
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)
    output = quantized.graph.output[0].name
    with pytest.raises(oq.UnsupportedModelError, match=r"float_outputs=False"):
        oq.ModelEditor(quantized).convert_output_type(output, oq.TensorType.UINT8)


def test_names_follow_furiosa():
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4]),
         onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    model = onnx.helper.make_model(graph)
    assert oq.get_pure_input_names(model) == ["x"]  # the initializer listed as input is not
    assert oq.get_output_names(model) == ["y"]
    assert oq.TensorType(onnx.TensorProto.UINT8) is oq.TensorType.UINT8
    assert {t.name for t in oq.TensorType} >= {"UINT8", "INT8", "FLOAT32"}


def test_uint8_input_is_bit_exact(quantized):
    model, x = quantized
    edited = _copy(model)
    q = oq.ModelEditor(edited).convert_input_type("image", oq.TensorType.UINT8)
    assert (q.type, q.kind) == (oq.TensorType.UINT8, "input")
    assert edited.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not any(n.op_type == "QuantizeLinear" and "image" in n.input
                   for n in edited.graph.node)
    want = _session(model).run(None, {"image": x})[0]
    got = _session(edited).run(None, {"image": q.quantize(x)})[0]
    np.testing.assert_array_equal(got, want)
    # Recorded in the metadata, under the documented key, and read back.
    record = json.loads(oq._model.get_metadata(edited, "onnxquant.input.image"))
    assert record == {"type": "uint8", "scale": q.scale, "zero_point": q.zero_point}
    assert oq.io_quantization(edited) == {"image": q}
    # Converting again is idempotent.
    assert oq.ModelEditor(edited).convert_input_type("image", oq.TensorType.UINT8) == q


def test_int8_input_shifts_codes(quantized):
    """The model quantizes its input to uint8; asking for int8 moves the zero
    point by -128 (exact arithmetic), within one output step as deployed."""
    model, x = quantized
    edited = _copy(model)
    q = oq.ModelEditor(edited).convert_input_type("image", oq.TensorType.INT8)
    assert q.type == oq.TensorType.INT8 and q.zero_point == -128
    codes = q.quantize(x)
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes.astype(np.int16) + 128,
                                  oq.TensorQuantization("image", "input", oq.TensorType.UINT8,
                                                        q.scale, 0).quantize(x))
    want = _session(model).run(None, {"image": x})[0]
    got = _session(edited).run(None, {"image": codes})[0]
    step = oq.ModelEditor(_copy(model)).convert_output_type("logits", oq.TensorType.UINT8).scale
    assert np.abs(got - want).max() <= step * 1.001


@pytest.mark.parametrize("tensor_type", [oq.TensorType.UINT8, oq.TensorType.INT8])
def test_output_codes_dequantize_to_the_original(quantized, tensor_type):
    model, x = quantized
    edited = _copy(model)
    q = oq.ModelEditor(edited).convert_output_type("logits", tensor_type)
    assert edited.graph.output[0].type.tensor_type.elem_type == tensor_type
    codes = _session(edited).run(None, {"image": x})[0]
    assert codes.dtype == q.dtype
    want = _session(model).run(None, {"image": x})[0]
    # The uint8 form is the model's own; int8 may change ORT's kernel choice.
    tolerance = 0.0 if tensor_type == oq.TensorType.UINT8 else q.scale * 1.001
    assert np.abs(q.dequantize(codes) - want).max() <= tolerance
    assert oq.io_quantization(edited)["logits"] == q


def test_output_with_a_new_range(quantized):
    model, x = quantized
    edited = _copy(model)
    q = oq.ModelEditor(edited).convert_output_type("logits", oq.TensorType.UINT8, (-10.0, 30.0))
    assert q.scale == pytest.approx(40 / 255) and q.zero_point == 64
    want = np.clip(_session(model).run(None, {"image": x})[0], -10, 30)
    got = q.dequantize(_session(edited).run(None, {"image": x})[0])
    old = oq.ModelEditor(_copy(model)).convert_output_type("logits", oq.TensorType.UINT8).scale
    assert np.abs(got - want).max() <= (q.scale + old) / 2 * 1.001


def test_both_ends_and_back_to_float(quantized):
    model, x = quantized
    edited = _copy(model)
    editor = oq.ModelEditor(edited)
    qi = editor.convert_input_type("image", oq.TensorType.UINT8)
    qo = editor.convert_output_type("logits", oq.TensorType.UINT8)
    want = _session(model).run(None, {"image": x})[0]
    got = qo.dequantize(_session(edited).run(None, {"image": qi.quantize(x)})[0])
    np.testing.assert_array_equal(got, want)
    assert editor.convert_input_type("image", oq.TensorType.FLOAT32) is None
    assert editor.convert_output_type("logits", oq.TensorType.FLOAT32) is None
    assert oq.io_quantization(edited) == {}
    np.testing.assert_array_equal(_session(edited).run(None, {"image": x})[0], want)


def test_errors_name_the_tensor(quantized):
    model, _ = quantized
    edited = _copy(model)
    editor = oq.ModelEditor(edited)
    with pytest.raises(oq.InvalidArgumentError, match=r"no input 'img'.*'image'"):
        editor.convert_input_type("img", oq.TensorType.UINT8)
    with pytest.raises(oq.InvalidArgumentError, match=r"no output 'probs'.*'logits'"):
        editor.convert_output_type("probs", oq.TensorType.UINT8)
    with pytest.raises(oq.InvalidArgumentError, match="tensor_type must be"):
        editor.convert_input_type("image", "float16")
    with pytest.raises(oq.InvalidArgumentError, match="tensor_range"):
        editor.convert_output_type("logits", oq.TensorType.UINT8, (1.0, -1.0))
    with pytest.raises(oq.InvalidArgumentError, match="ModelProto"):
        oq.ModelEditor(model.SerializeToString())
    assert edited == model  # refused conversions leave the model as it was


def test_float_inputs_and_outputs_are_refused(small_cnn_model, image_batches):
    model = oq.optimize_model(small_cnn_model)
    # Only the Conv nodes quantized: the Gemm keeps the output float, and with the
    # first Conv excluded, its float input too.
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    options = oq.QuantOptions(op_types=("Conv",), exclude_nodes=(first_conv,), target="exact")
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, options=options)
    calibrator.collect_data(image_batches)
    quantized = oq.quantize(model, calibrator.compute_range(), options=options)
    editor = oq.ModelEditor(quantized)
    with pytest.raises(oq.UnsupportedModelError,
                       match=r"Output 'logits' is not quantized: .*Gemm"):
        editor.convert_output_type("logits", oq.TensorType.UINT8)
    with pytest.raises(oq.UnsupportedModelError,
                       match=rf"Input 'image' is not quantized: .*'{first_conv}' \(Conv\)"):
        editor.convert_input_type("image", oq.TensorType.UINT8)
    # FLOAT32 on a float tensor: nothing to do.
    assert editor.convert_input_type("image", oq.TensorType.FLOAT32) is None


# ------------------------------------------------------------------ fold_preprocessing

# Fashion-MNIST's pixel statistics: the folded model computes the CNN on
# (x / 255 - mean) / std, whatever the CNN was trained on.
_MEAN, _STD = 0.2860, 0.3530


@pytest.mark.parametrize("border", ["auto", "prefix"])
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (_MEAN, _STD)])
def test_fold_computes_the_normalised_model(fashion, border, mean, std):
    """The first Conv pads by 1: "auto" folds into the weights plus a border
    map, "prefix" adds Mul/Add. Both equal the float model on normalised
    input within float32 rounding: 1e-6 of the outputs' largest magnitude."""
    model, test, _ = fashion
    folded = oq.fold_preprocessing(model, [mean], [std], border=border)
    ops = [n.op_type for n in folded.graph.node[:3]]
    assert ops == (["Cast", "Conv", "Add"] if border == "auto" else ["Cast", "Mul", "Add"])
    assert folded.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    want = _session(model).run(
        None, {"image": ((test / 255.0 - mean) / std).astype(np.float32)})[0]
    got = _session(folded).run(None, {"image": test})[0]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    record = json.loads(oq._model.get_metadata(folded, "onnxquant.preprocessing"))
    assert record["folded_into"] == ("weights+border_map" if border == "auto" else "prefix")
    assert oq.pixel_tensor_name(folded) == record["pixels"]


def test_fold_without_padding_needs_no_border_map(parse_model):
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 3, 6, 6] x) => (float[1, 2, 4, 4] y)
        <float[2, 3, 3, 3] w = {""" + ", ".join(f"{(i % 7 - 3) / 5:.2f}" for i in range(54))
                        + """}> { y = Conv <kernel_shape = [3, 3]> (x, w) }""")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    folded = oq.fold_preprocessing(model, mean, std)
    assert [n.op_type for n in folded.graph.node] == ["Cast", "Conv"]
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 6, 6), dtype=np.uint8)
    norm = ((x / 255.0 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1)))
    want = _session(model).run(None, {"x": norm.astype(np.float32)})[0]
    got = _session(folded).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_fold_refuses_other_first_layers(scale_shift_model):
    with pytest.raises(oq.UnsupportedModelError, match=r"Input 'x' is read by .*Mul"):
        oq.fold_preprocessing(scale_shift_model, [0.5], [0.25])
    with pytest.raises(oq.InvalidArgumentError, match="border"):
        oq.fold_preprocessing(scale_shift_model, [0.5], [0.25], border="mean")


def test_folded_pixels_quantize_portable_and_go_straight_in(fashion):
    """Raw pixels in [0, 255] with zero point 0 meet full-range int8 weights in the
    folded first Conv: the saturation case of CPUs without VNNI. target="portable"
    remedies it; then the editor feeds the pixels to the model unchanged."""
    model, test, train = fashion
    folded = oq.fold_preprocessing(model, [_MEAN], [_STD])
    calibrator = oq.Calibrator(folded, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(train[i:i + 1] for i in range(len(train)))
    ranges = calibrator.compute_range()
    ranges[oq.pixel_tensor_name(folded)] = (0.0, 255.0)
    quantized, report = oq.quantize(folded, ranges, calibrator=calibrator, return_report=True)
    first_conv = next(n.name for n in folded.graph.node if n.op_type == "Conv")
    assert first_conv in {r.node for r in report.kernels.remedies}
    edited = _copy(quantized)
    q = oq.ModelEditor(edited).convert_input_type("image", oq.TensorType.UINT8)
    assert (q.scale, q.zero_point) == (1.0, 0)
    assert not any(n.op_type in ("Cast", "QuantizeLinear") and "image" in n.input
                   for n in edited.graph.node)
    np.testing.assert_array_equal(_session(edited).run(None, {"image": test})[0],
                                  _session(quantized).run(None, {"image": test})[0])


def test_zoo_resnet8_uint8_input(zoo_dir):
    """ResNet8 (CIFAR-10, raw 0..255 float input): the uint8 input gives the
    outputs of the float-input model, bit for bit, as deployed."""
    model = oq.optimize_model(os.path.join(zoo_dir, "cifar10", "resnet8_cifar10.onnx"))
    with np.load(os.path.join(zoo_dir, "cifar10", "cifar10_test.npz")) as d:
        images = d["images"][:96].transpose(0, 3, 1, 2).astype(np.float32)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(images[i:i + 1] for i in range(64))
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)
    name = oq.get_pure_input_names(quantized)[0]
    edited = _copy(quantized)
    q = oq.ModelEditor(edited).convert_input_type(name, oq.TensorType.UINT8)
    test = images[64:]
    want = _session(quantized).run(None, {name: test})[0]
    got = _session(edited).run(None, {name: q.quantize(test)})[0]
    np.testing.assert_array_equal(got, want)
