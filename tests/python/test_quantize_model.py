"""quantize_model: the whole pipeline in one call, and the PyTorch example."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import onnxquant as oq

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def model_path(tmp_path, small_cnn_model):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn_model, path)
    return str(path)


@pytest.fixture()
def samples(image_batches):
    return [{"image": x} for x in image_batches]  # 40 dicts of [1, 3, 8, 8]


def _steps(model_path, samples, method="MIN_MAX_ASYM", **options):
    """The furiosa-style steps quantize_model stands for."""
    opts = oq.QuantOptions(**options)
    model = oq.optimize_model(model_path)
    calibrator = oq.Calibrator(model, method, options=opts)
    calibrator.collect_data(samples)
    return oq.quantize(model, calibrator.compute_range(), options=opts, calibrator=calibrator,
                       return_report=True)


@pytest.mark.smoke
def test_one_call_equals_the_steps(tmp_path, model_path, samples):
    out = tmp_path / "cnn.int8.onnx"
    report = oq.quantize_model(model_path, out, samples)
    assert isinstance(report, oq.QuantizationReport)
    expected, expected_report = _steps(model_path, samples)
    assert onnx.load(out).SerializeToString() == expected.SerializeToString()
    assert report.calibration.num_samples == 40
    assert report.calibration.method == "MIN_MAX_ASYM"
    assert [n.node for n in report.quantized_nodes] == \
        [n.node for n in expected_report.quantized_nodes]


@pytest.mark.smoke
def test_method_and_options_reach_the_steps(tmp_path, model_path, samples):
    out = tmp_path / "q.onnx"
    report = oq.quantize_model(model_path, out, samples, "PERCENTILE_SYM",
                               activation_type="int8", op_types=["Conv"], target="exact")
    expected, _ = _steps(model_path, samples, "PERCENTILE_SYM", activation_type="int8",
                         op_types=("Conv",), target="exact")
    quantized = onnx.load(out)
    assert quantized.SerializeToString() == expected.SerializeToString()
    assert report.calibration.method == "PERCENTILE_SYM"
    assert {n.op_type for n in report.quantized_nodes} == {"Conv"}
    zero_points = {n.input[2] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    types = {t.data_type for t in quantized.graph.initializer if t.name in zero_points}
    assert types == {onnx.TensorProto.INT8}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol, without its base class."""

    def __init__(self, samples):
        self._samples = iter(samples)
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return next(self._samples, None)


@pytest.mark.smoke
def test_calibration_data_reader(tmp_path, model_path, samples):
    from onnxruntime.quantization import CalibrationDataReader

    class OrtReader(CalibrationDataReader):  # its __len__ raises NotImplementedError
        def __init__(self):
            self._samples = iter(samples)

        def get_next(self):
            return next(self._samples, None)

    plain = _Reader(samples)
    oq.quantize_model(model_path, tmp_path / "a.onnx", plain, progress=True)
    assert plain.calls == len(samples) + 1  # read until None, once
    oq.quantize_model(model_path, tmp_path / "b.onnx", OrtReader(), progress=True)
    oq.quantize_model(model_path, tmp_path / "c.onnx", iter(samples))
    first = onnx.load(tmp_path / "a.onnx").SerializeToString()
    assert first == onnx.load(tmp_path / "b.onnx").SerializeToString()
    assert first == onnx.load(tmp_path / "c.onnx").SerializeToString()


@pytest.mark.smoke
def test_importing_onnxquant_does_not_import_ort_quantization():
    code = ("import sys, onnxquant; "
            "print('onnxruntime.quantization' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.smoke
def test_model_proto_in(tmp_path, small_cnn_model, samples):
    out = tmp_path / "q.onnx"
    oq.quantize_model(small_cnn_model, out, samples)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": samples[0]["image"]})[0].shape == (1, 5)


@pytest.mark.smoke
def test_unknown_option_is_named_before_any_work(tmp_path, model_path, samples):
    reader = _Reader(samples)
    with pytest.raises(oq.InvalidArgumentError, match="unknown option 'activation_typ'"):
        oq.quantize_model(model_path, tmp_path / "q.onnx", reader, activation_typ="int8")
    with pytest.raises(oq.InvalidArgumentError, match="activation_type must be"):
        oq.quantize_model(model_path, tmp_path / "q.onnx", reader, activation_type="int4")
    with pytest.raises(oq.InvalidArgumentError, match="Unknown calibration method"):
        oq.quantize_model(model_path, tmp_path / "q.onnx", reader, "MEDIAN")
    with pytest.raises(oq.InvalidArgumentError, match="samples must be"):
        oq.quantize_model(model_path, tmp_path / "q.onnx", 3)
    assert reader.calls == 0 and not (tmp_path / "q.onnx").exists()


@pytest.mark.smoke
@pytest.mark.parametrize("spelling", ["same", "dotted", "link"])
def test_output_that_is_the_input_is_refused(tmp_path, model_path, samples, spelling):
    with open(model_path, "rb") as f:
        before = f.read()
    target = {"same": model_path,
              "dotted": os.path.join(str(tmp_path), ".", "sub", "..", "cnn.onnx"),
              "link": str(tmp_path / "link.onnx")}[spelling]
    os.makedirs(tmp_path / "sub", exist_ok=True)
    if spelling == "link":
        os.symlink(model_path, target)
    reader = _Reader(samples)
    with pytest.raises(oq.InvalidArgumentError, match="never overwrites"):
        oq.quantize_model(model_path, target, reader)
    assert reader.calls == 0  # refused before calibration
    with open(model_path, "rb") as f:
        assert f.read() == before


def _save_external(model: onnx.ModelProto, path, location: str) -> None:
    """Saves ``model`` with every initializer in the file ``location``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:  # raw_data: what external data is made of
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor),
                                                     tensor.name))
    onnx.save(copy, path, save_as_external_data=True, location=location, size_threshold=0)


@pytest.mark.smoke
def test_output_over_the_input_data_file_is_refused(tmp_path, small_cnn_model, samples):
    # The input keeps its weights in "q.onnx.data", which is where the output
    # "q.onnx" would put its own.
    model = tmp_path / "in.onnx"
    _save_external(small_cnn_model, model, "q.onnx.data")
    data = (tmp_path / "q.onnx.data").read_bytes()
    with pytest.raises(oq.InvalidArgumentError, match="never overwrites"):
        oq.quantize_model(model, tmp_path / "q.onnx", samples)
    assert (tmp_path / "q.onnx.data").read_bytes() == data
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.smoke
def test_external_data_in_gives_external_data_out(tmp_path):
    # A weight of 64 x 64: 16 KiB in float, 4 KiB in int8 (data files take 1 KiB or more).
    rng = np.random.default_rng(3)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "fc",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")])
    model = tmp_path / "in.onnx"
    _save_external(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)],
                                          ir_version=8), model, "in.onnx.data")
    samples = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(8)]
    oq.quantize_model(model, tmp_path / "out.onnx", samples)
    assert (tmp_path / "out.onnx.data").exists()
    skeleton = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in skeleton.graph.initializer)
    session = ort.InferenceSession(str(tmp_path / "out.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": samples[0]})[0].shape == (1, 64)


@pytest.mark.smoke
def test_no_samples_writes_nothing(tmp_path, model_path):
    with pytest.raises(oq.CalibrationDataError, match="empty"):
        oq.quantize_model(model_path, tmp_path / "q.onnx", [])
    with pytest.raises(oq.CalibrationDataError, match="empty"):
        oq.quantize_model(model_path, tmp_path / "q.onnx", _Reader([]))
    assert not (tmp_path / "q.onnx").exists()


def test_torch_export_example(tmp_path):
    for module in ("torch", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            message = f"{module} is not installed (pip install 'onnxquant[cpu,torch]')"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
    script = os.path.join(_REPO, "examples", "torch_export.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, script, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "top-1 agreement: 100.0%" in done.stdout
    assert "Calibration: 64 samples, MIN_MAX_ASYM" in done.stdout
    error = float(done.stdout.split("max |INT8 - FP32| = ")[1].split()[0])
    span = float(done.stdout.split("FP32 logits span ")[1].split(")")[0])
    assert 0 < error < 0.05 * span  # quantized (not bit-exact FP32), and close
    quantized = onnx.load(tmp_path / "model.int8.onnx")
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) >= 3
    assert onnx.load(tmp_path / "model.onnx").graph.input[0].name == "image"
