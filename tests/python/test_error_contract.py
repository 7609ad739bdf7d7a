"""The error contract at the edges: IR versions ONNX Runtime does not load,
models onnx.checker rejects, sparse initializers, and ONNX Runtime failing to
load a model. Nothing from onnx, onnxruntime or protobuf escapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant._input_checks import ort_max_ir_version


def _matmul_model(opset: int = 17, ir_version: int | None = None) -> onnx.ModelProto:
    """y = x @ w on [1, 4], written by make_model (IR 14 with onnx 1.23)."""
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 16 - 0.5
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(w, "w")])
    kwargs = {} if ir_version is None else {"ir_version": ir_version}
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], **kwargs)


def _samples() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(8)]


def _ort_max_ir() -> int:
    return ort_max_ir_version(onnx.IR_VERSION)


def test_ir_version_newer_than_ort_reads_is_lowered_and_calibrates():
    model = _matmul_model(ir_version=onnx.IR_VERSION)
    if _ort_max_ir() >= onnx.IR_VERSION:
        pytest.skip("this onnxruntime loads every IR version the installed onnx writes")
    optimized = oq.optimize_model(model)
    assert optimized.ir_version == _ort_max_ir()
    calibrator = oq.Calibrator(optimized, "MIN_MAX_ASYM")  # raised ORT's Fail before
    calibrator.collect_data(_samples())
    quantized = oq.quantize(optimized, calibrator.compute_range())
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


def test_ir_version_that_cannot_be_lowered_is_refused_naming_what_needs_it():
    newest = max(row[2] for row in onnx.helper.VERSION_TABLE)
    needs = next(row[1] for row in onnx.helper.VERSION_TABLE if row[2] == newest)
    if _ort_max_ir() >= needs:
        pytest.skip("this onnxruntime loads the newest opset's IR version")
    model = _matmul_model(opset=newest, ir_version=needs)
    with pytest.raises(oq.UnsupportedModelError) as info:
        oq.optimize_model(model)
    message = str(info.value)
    assert f"IR version {needs}" in message
    assert f"opset {newest} of ai.onnx needs IR version {needs}" in message
    assert f"onnxruntime {ort.__version__}" in message and "Upgrade onnxruntime" in message


def test_ir_version_newer_than_onnx_knows_is_refused():
    model = _matmul_model(ir_version=onnx.IR_VERSION + 1)
    with pytest.raises(oq.UnsupportedModelError,
                       match=rf"IR version {onnx.IR_VERSION + 1}, newer than the "
                             "installed onnx"):
        oq.optimize_model(model)


def test_model_failing_the_checker_is_a_model_error_that_says_so():
    model = _matmul_model(ir_version=8)
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("bogus", 3))
    with pytest.raises(oq.ModelError) as info:
        oq.optimize_model(model)
    message = str(info.value)
    assert "fails ONNX's checker before onnxquant changes anything" in message
    assert "Unrecognized attribute: bogus for operator MatMul" in message
    assert not isinstance(info.value, oq.InternalError)


def _sparse_model() -> tuple[onnx.ModelProto, np.ndarray]:
    dense = np.zeros((4, 4), np.float32)
    dense[0, 1], dense[2, 3], dense[3, 0] = 1.5, -2.0, 0.25
    flat = np.flatnonzero(dense)
    sparse = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(dense.reshape(-1)[flat], "w"),
        onnx.numpy_helper.from_array(flat.astype(np.int64), "w_indices"), [4, 4])
    model = _matmul_model(ir_version=8)
    del model.graph.initializer[:]
    model.graph.sparse_initializer.append(sparse)
    onnx.checker.check_model(model)
    return model, dense


def test_sparse_initializer_is_densified():
    model, dense = _sparse_model()
    optimized = oq.optimize_model(model)  # raised AttributeError: name before
    assert not optimized.graph.sparse_initializer
    (weight,) = [t for t in optimized.graph.initializer if t.name == "w"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), dense)
    calibrator = oq.Calibrator(optimized, "MIN_MAX_ASYM")
    calibrator.collect_data(_samples())
    oq.quantize(optimized, calibrator.compute_range())


def test_sparse_initializer_with_indices_outside_its_dims_is_named():
    model, _ = _sparse_model()
    indices = model.graph.sparse_initializer[0].indices
    indices.CopyFrom(onnx.numpy_helper.from_array(np.array([1, 11, 99], np.int64),
                                                  "w_indices"))
    with pytest.raises(oq.ModelError, match=r"Sparse initializer 'w' is malformed \(an "
                                            r"index outside the dims\)"):
        oq.optimize_model(model)


def test_onnx_runtime_refusing_the_model_at_calibration_is_typed():
    # A stamped model whose op ONNX Runtime has no kernel for (a custom domain).
    model = oq.optimize_model(_matmul_model(ir_version=8))
    node = onnx.helper.make_node("Mystery", ["y"], ["z"], domain="example.custom",
                                 name="mystery")
    model.graph.node.append(node)
    model.opset_import.append(onnx.helper.make_opsetid("example.custom", 1))
    model.graph.output[0].name = "z"
    with pytest.raises(oq.UnsupportedModelError,
                       match=r"ONNX Runtime cannot load the model to calibrate it \(.*"
                             "Mystery"):
        oq.Calibrator(model, "MIN_MAX_ASYM")


def test_model_edited_after_optimize_into_an_invalid_one_is_a_model_error():
    # quantize used to blame itself (InternalError) when its output failed the
    # checker because its input did.
    model = oq.optimize_model(_matmul_model(ir_version=8))
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data(_samples())
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.zeros(2, np.float32), "unused"))
    model.graph.initializer[-1].dims[0] = -1
    with pytest.raises(oq.ModelError) as info:
        oq.quantize(model, calibrator.compute_range())
    # The engine's entry check names the tensor before anything runs.
    message = str(info.value)
    assert "Initializer 'unused' has a negative dim (-1)" in message
    assert not isinstance(info.value, oq.InternalError)


def test_float16_tensor_whose_data_does_not_fit_its_dims_is_named():
    model = _matmul_model(ir_version=8)
    half = onnx.numpy_helper.from_array(np.ones(8, np.float16), "half")
    half.dims[0] = 4  # 8 values for 4 elements
    model.graph.initializer.append(half)
    with pytest.raises(oq.ModelError, match=r"float16 tensor 'half' holds data that does "
                                            r"not fit its dims \[4\]"):
        oq.optimize_model(model)


def test_input_of_undefined_type_is_named_at_conversion(parse_model):
    model = parse_model("""
        <ir_version: 6, opset_import: ["" : 11]>
        g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }
    """)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    with pytest.raises(oq.UnsupportedModelError, match=r"Input 'x' has element type 0"):
        oq.optimize_model(model)


@pytest.mark.parametrize("after_optimize", [False, True])
def test_mutated_models_raise_only_onnxquant_errors(after_optimize):
    # In a process of its own: a native crash must not take pytest down.
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "pipeline_fuzz.py")
    args = [sys.executable, script, "--cases", "60", "--seed", "1"]
    if after_optimize:
        args.append("--after-optimize")
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["escapes"] == []
    # The mutants reach every stage, so the contract is checked along the pipeline.
    assert sum(result["stages"].values()) == 60
    assert result["stages"].get("done", 0) > 0 and len(result["stages"]) >= 3


def test_cli_quantizes_an_ir_version_ort_does_not_load(tmp_path, capsys):
    from onnxquant.cli import main

    path = tmp_path / "ir.onnx"
    onnx.save(_matmul_model(ir_version=onnx.IR_VERSION), path)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.stack(_samples())[:, 0])
    out = tmp_path / "ir.int8.onnx"
    assert main(["quantize", str(path), "-o", str(out), "--calibration-data", str(data),
                 "-q"]) == 0
    quantized = onnx.load(out)
    assert quantized.ir_version <= _ort_max_ir()
    ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])


def test_checker_refusal_names_the_file(tmp_path):
    model = _matmul_model(ir_version=8)
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("bogus", 3))
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(oq.ModelError,
                       match=r"Model file '.*bad\.onnx' fails ONNX's checker before"):
        oq.optimize_model(path)
