"""optimize_model: passes, opset conversion with shape folding, float16, stamp;
and the model loading/saving it relies on."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import pytest

import onnxquant as oq
from onnxquant._model import NORMALIZED_KEY, get_metadata, load_model, save_model_atomic
from onnxquant._opset import default_opset

pytestmark = pytest.mark.smoke  # also run at the lower bounds (scripts/test_lower_bounds.sh)

# Opset 11, dynamic batch: the Reshape target is computed from Shape -> Gather,
# the Softmax (12 -> 13 changes its semantics) needs the folded shape.
SHAPE_CHAIN = """
<ir_version: 6, opset_import: ["" : 11]>
shape_chain (float[N, 4, 3] x) => (float[N, 12] y)
<int64 zero = {0}, int64[1] minus_one = {-1}> {
    s = Shape(x)
    batch = Gather<axis = 0>(s, zero)
    batch1 = Unsqueeze<axes = [0]>(batch)
    target = Concat<axis = 0>(batch1, minus_one)
    flat = Reshape(x, target)
    y = Softmax<axis = 1>(flat)
}
"""


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _input_dims(model: onnx.ModelProto, index: int = 0) -> list:
    dims = model.graph.input[index].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def test_stamps_and_keeps_a_recent_opset(parse_model):
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) { t = Identity(x) y = Relu(t) }
    """)
    original = model.SerializeToString()
    result = oq.optimize_model(model)
    assert get_metadata(result, NORMALIZED_KEY) == oq.__version__
    assert default_opset(result) == 17  # never downgraded
    assert _ops(result) == ["Relu"]  # the engine's passes ran
    assert model.SerializeToString() == original  # the input is untouched
    onnx.checker.check_model(result, full_check=True)


def test_shape_chain_is_converted_keeping_the_dynamic_batch(parse_model, run_model):
    model = parse_model(SHAPE_CHAIN)
    result = oq.optimize_model(model)
    assert default_opset(result) == 13 and result.ir_version >= 7
    # The batch-dependent Shape -> Gather chain stays; the batch stays dynamic.
    assert "Shape" in _ops(result) and "Gather" in _ops(result)
    assert _input_dims(result) == ["N", 4, 3]
    for batch in (1, 4):
        x = np.random.default_rng(batch).random((batch, 4, 3), dtype=np.float32)
        np.testing.assert_allclose(run_model(result, {"x": x})[0],
                                   run_model(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    onnx.checker.check_model(result, full_check=True)


def test_input_shapes_set_the_folding_shape(parse_model, run_model):
    model = parse_model(SHAPE_CHAIN)
    result = oq.optimize_model(model, input_shapes={"x": (5, 4, 3)})
    assert _input_dims(result) == [5, 4, 3]
    x = np.random.default_rng(1).random((5, 4, 3), dtype=np.float32)
    np.testing.assert_allclose(run_model(result, {"x": x})[0],
                               run_model(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_dynamic_batch_stays_dynamic_without_shape_nodes(parse_model):
    model = parse_model("""
        <ir_version: 6, opset_import: ["" : 10]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """)
    result = oq.optimize_model(model)
    assert default_opset(result) == 13
    assert _input_dims(result) == ["N", 4]


def test_initializers_listed_as_inputs_convert(run_model):
    # Old exporters list weights in graph.input; passes remove them first.
    model = onnx.parser.parse_model("""
        <ir_version: 3, opset_import: ["" : 8]>
        g (float[1, 4] x, float[4, 2] w) => (float[1, 2] y) { y = MatMul(x, w) }
    """)
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    result = oq.optimize_model(model)
    assert [i.name for i in result.graph.input] == ["x"]
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(run_model(result, {"x": x})[0], x @ w)


def test_float16_model_becomes_float32(run_model):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Mul", ["x", "c"], ["t"]),
         onnx.helper.make_node("Cast", ["t"], ["y"], to=onnx.TensorProto.FLOAT16)],
        "half",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [2, 3])],
        [onnx.numpy_helper.from_array(np.array([1.5, -2.0, 0.25], np.float16), "c")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    result = oq.optimize_model(model)
    float32 = onnx.TensorProto.FLOAT
    assert result.graph.input[0].type.tensor_type.elem_type == float32
    assert result.graph.output[0].type.tensor_type.elem_type == float32
    assert all(t.data_type == float32 for t in result.graph.initializer)
    x = np.array([[1, 2, 3], [-1, 0, 4]], np.float32)
    (y,) = run_model(result, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x * np.array([1.5, -2.0, 0.25], np.float32))


def test_optimize_is_idempotent(small_cnn_model):
    once = oq.optimize_model(small_cnn_model)
    twice = oq.optimize_model(once)
    assert [(n.name, n.op_type) for n in twice.graph.node] == \
        [(n.name, n.op_type) for n in once.graph.node]
    names = [n.name for n in once.graph.node]
    assert all(names) and len(set(names)) == len(names)  # unique node names


def test_infer_dtypes_from_onnx_inference(scale_shift_model, monkeypatch):
    from onnxquant import _shapes

    def no_runtime(*args, **kwargs):
        raise AssertionError("ONNX Runtime asked although inference typed everything")

    monkeypatch.setattr(_shapes, "_ort_dtypes", no_runtime)
    dtypes = _shapes.infer_dtypes(scale_shift_model)
    assert {name: dtypes[name] for name in ("x", "t", "y", "two")} == \
        dict.fromkeys(("x", "t", "y", "two"), onnx.TensorProto.FLOAT)


def test_infer_dtypes_falls_back_to_onnx_runtime():
    from onnxquant._shapes import infer_dtypes

    # com.microsoft.Gelu: ONNX's inference does not know it, ONNX Runtime does.
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13, "com.microsoft" : 1]>
        g (float[2, 3] x) => (float[2, 3] y) {
            g = com.microsoft.Gelu(x)
            y = Relu(g)
        }
    """)
    assert infer_dtypes(model)["g"] == onnx.TensorProto.FLOAT


def test_save_model_atomic_replaces_whole(tmp_path, scale_shift_model):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old contents")
    save_model_atomic(scale_shift_model, path)
    assert onnx.load(path).SerializeToString() == scale_shift_model.SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary file left


def test_save_model_atomic_failure_keeps_old_file(tmp_path, scale_shift_model, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old contents")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(oq.ModelError, match="No space left"):
        save_model_atomic(scale_shift_model, path)
    assert path.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_load_model_copies_the_proto(scale_shift_model):
    copy = load_model(scale_shift_model)
    copy.graph.node[0].name = "changed"
    assert scale_shift_model.graph.node[0].name != "changed"


# ---------------------------------------------------------------------------
# Real models of the zoo
# ---------------------------------------------------------------------------

def test_mnist_opset8_converts_and_matches(zoo_dir, run_model):
    path = os.path.join(zoo_dir, "mnist", "mnist_cnn.onnx")
    with open(path, "rb") as f:
        before = f.read()
    original = onnx.load(path)
    assert default_opset(original) == 8
    result = oq.optimize_model(path)
    assert default_opset(result) == 13 and result.ir_version >= 7
    onnx.checker.check_model(result, full_check=True)
    images = np.load(os.path.join(zoo_dir, "mnist", "mnist_test.npz"))["images"][:8]
    for image in images.astype(np.float32):
        x = image[None, None]
        np.testing.assert_allclose(run_model(result, {"Input3": x})[0],
                                   run_model(original, {"Input3": x})[0],
                                   rtol=1e-4, atol=1e-3)
    with open(path, "rb") as f:
        assert f.read() == before  # the file is only read


# What each old-opset zoo model does: "converts" (outputs must match) or
# "unsupported" (UnsupportedModelError naming a node).
ZOO_OLD_OPSETS = [
    ("face/version-RFB-320.onnx", 9, "converts"),
    ("face/version-slim-320.onnx", 9, "converts"),
    ("face/yunet_n_320_320.onnx", 11, "converts"),
    ("superres/super_resolution.onnx", 10, "converts"),
]


@pytest.mark.parametrize("relative, opset, outcome", ZOO_OLD_OPSETS)
def test_old_opset_zoo_models(zoo_dir, run_model, relative, opset, outcome):
    path = os.path.join(zoo_dir, relative)
    original = onnx.load(path)
    assert default_opset(original) == opset
    if outcome == "unsupported":
        with pytest.raises(oq.UnsupportedModelError, match=r"node ('|#)"):
            oq.optimize_model(path)
        return
    result = oq.optimize_model(path)
    assert default_opset(result) == 13
    assert "Shape" not in _ops(result)  # the shape chains were folded
    feeds = {}
    rng = np.random.default_rng(3)
    for value in result.graph.input:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.random(dims, dtype=np.float32)
    for want, got in zip(run_model(original, feeds), run_model(result, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(want).max()))
