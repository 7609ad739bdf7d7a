"""Large models: weights beside the graph, external data in and out, peak
memory, and the files onnxquant writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

import onnxquant as oq
from onnxquant import _payloads
from onnxquant._model import save_model

pytestmark = pytest.mark.smoke  # also run at the lower bounds (scripts/test_lower_bounds.sh)

WIDTH = 64


def _mlp(layers: int, width: int = WIDTH, seed: int = 0) -> onnx.ModelProto:
    """MatMul + Add + Relu blocks on [N, width], opset 17, dynamic batch."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(width) * 0.1).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"),
                  onnx.numpy_helper.from_array(b, f"b{i}")]
        nodes += [oh.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  oh.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  oh.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", 1, ["N", width])],
                          [oh.make_tensor_value_info(x, 1, ["N", width])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(count: int, width: int = WIDTH, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, width), dtype=np.float32) for _ in range(count)]


def _external(model: onnx.ModelProto, path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the weights of what it saves out
    onnx.save(copy, path, save_as_external_data=True, location=os.path.basename(path) + ".w",
              size_threshold=1024)


def _quantized(model, samples, **kwargs):
    normalised = oq.optimize_model(model)
    calibrator = oq.Calibrator(normalised, "MIN_MAX_ASYM", **kwargs)
    calibrator.collect_data(samples)
    return oq.quantize(normalised, calibrator.compute_range(), calibrator=calibrator)


def test_a_model_with_external_data_is_read_from_its_files(tmp_path):
    model = _mlp(3)
    path = tmp_path / "mlp.onnx"
    _external(model, path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    from_path = _quantized(str(path), _samples(8))
    in_memory = _quantized(model, _samples(8))
    assert from_path.SerializeToString() == in_memory.SerializeToString()
    # The input files are only read.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # The result holds its weights itself.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in from_path.graph.initializer)


def test_the_engine_reads_weights_from_files_not_from_the_bytes(tmp_path):
    model = _mlp(2)
    with _payloads.Workspace() as workspace:
        skeleton = _payloads.split_model(model, workspace)
        assert skeleton.payload == sum(len(t.raw_data) for t in model.graph.initializer)
        big = [t for t in skeleton.model.graph.initializer if t.name.startswith("w")]
        assert all(_payloads.external_location(t).startswith(workspace.path) for t in big)
        assert len(skeleton.to_bytes()) < 2048 < model.ByteSize()
        assert os.listdir(workspace.path)
    assert not os.path.exists(workspace.path)  # removed with the workspace


def test_fingerprint_covers_the_weights_not_where_they_lie(tmp_path):
    model = _mlp(2)
    path = tmp_path / "mlp.onnx"
    _external(model, path)
    changed = _mlp(2)
    changed.graph.initializer[0].raw_data = b"\0" * len(changed.graph.initializer[0].raw_data)
    with _payloads.Workspace() as a, _payloads.Workspace() as b:
        from onnxquant._model import load_skeleton

        assert load_skeleton(model, a).fingerprint == load_skeleton(str(path), b).fingerprint
        assert load_skeleton(model, a).fingerprint != load_skeleton(changed, b).fingerprint


def test_unloaded_external_data_is_refused_by_name(tmp_path):
    path = tmp_path / "mlp.onnx"
    _external(_mlp(1), path)
    bare = onnx.load(str(path), load_external_data=False)
    with pytest.raises(oq.ModelError, match=r"initializer 'w0' is stored as external data"):
        oq.optimize_model(bare)
    os.remove(str(path) + ".w")
    with pytest.raises(oq.ModelError, match=r"external data file .*mlp\.onnx\.w' of "
                                            r"initializer 'w0' does not exist"):
        oq.optimize_model(str(path))


def test_large_model_session_is_open_only_while_it_runs(monkeypatch):
    """Above LARGE_MODEL_BYTES the calibrator keeps no session between calls
    (so that quantize does not hold the weights twice); the ranges and the
    quantized model are the same."""
    model, samples = _mlp(3), _samples(12)
    reference = _quantized(model, samples)
    monkeypatch.setattr(_payloads, "LARGE_MODEL_BYTES", 1024)
    normalised = oq.optimize_model(model)
    calibrator = oq.Calibrator(normalised, "MIN_MAX_ASYM")
    assert calibrator._session is None and os.path.isdir(calibrator._workspace.path)
    calibrator.collect_data(samples[:5])
    calibrator.collect_data(samples[5:])
    assert calibrator._session is None
    quantized = oq.quantize(normalised, calibrator.compute_range(), calibrator=calibrator)
    assert quantized.SerializeToString() == reference.SerializeToString()
    folder = calibrator._workspace.path
    del calibrator
    assert not os.path.exists(folder)


def test_save_writes_external_data_first_then_the_model(tmp_path, monkeypatch):
    model = _mlp(2)
    out = tmp_path / "q.onnx"
    renames = []
    replace = os.replace

    def record(src, dst):
        assert os.path.basename(src).startswith(".onnxquant-")  # a temporary file
        renames.append(os.path.basename(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    save_model(model, out, external_data=True)
    assert renames == ["q.onnx.data", "q.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]
    back = onnx.load(str(out))
    assert [t.data_location for t in onnx.load(str(out), load_external_data=False)
            .graph.initializer if t.name.startswith("w")] == [onnx.TensorProto.EXTERNAL] * 2
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        assert a.name == b.name and a.raw_data == b.raw_data
    # A failure while the data is written leaves neither file, nor a temporary one.
    broken = _mlp(2)
    broken.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    broken.graph.initializer[0].external_data.add(key="location", value="nowhere.bin")
    with pytest.raises(oq.ModelError, match="'w0' is stored as external data"):
        save_model(broken, tmp_path / "broken.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]


def test_save_refuses_to_overwrite_its_source(tmp_path):
    model = _mlp(1)
    path = tmp_path / "m.onnx"
    _external(model, path)
    data = tmp_path / "m.onnx.w"
    before = (path.read_bytes(), data.read_bytes())
    with pytest.raises(oq.InvalidArgumentError,
                       match=r"Refusing to write '.*m\.onnx': it is the input model"):
        save_model(model, path, source=path)
    os.symlink(path, tmp_path / "link.onnx")
    with pytest.raises(oq.InvalidArgumentError, match="Refusing to write"):
        save_model(model, tmp_path / "link.onnx", source=path)
    assert (path.read_bytes(), data.read_bytes()) == before
    save_model(model, tmp_path / "other.onnx", source=path)  # any other path is fine


_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxquant as oq

    def peak():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) * 1024

    def reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024

    path, out = sys.argv[1], sys.argv[2]
    import onnx, onnxruntime  # noqa: F401 - imported before the baseline
    import onnxquant._payloads
    # This 100 MB model is handled as models past 1 GiB are.
    onnxquant._payloads.LARGE_MODEL_BYTES = 1 << 20
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((1, 1024), dtype=np.float32) for _ in range(4)]
    steps = {}
    base = rss()  # after the imports: what every step's peak is measured above
    reset()
    model = oq.optimize_model(path)
    steps["optimize"] = peak() - base
    reset()
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data(samples)
    steps["calibrate"] = peak() - base
    reset()
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)
    oq.save_model(quantized, out, source=path)
    steps["quantize"] = peak() - base
    print(json.dumps(steps))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_per_step_stays_within_twice_the_model(tmp_path):
    """A 100 MB model with external data, in a fresh process: each step's peak
    resident memory, above the process's after its imports (so the model the
    caller holds counts), is at most twice the model, plus 32 MiB that do not
    grow with it (the graph, ONNX Runtime's arena, buffers): the 3 GB
    measurement is bench/large_model.py."""
    model = _mlp(24, width=1024)  # 24 x 4 MiB of weights
    path = tmp_path / "m.onnx"
    _external(model, path)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    del model
    out = tmp_path / "q.onnx"
    done = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    import json

    steps = json.loads(done.stdout.strip().splitlines()[-1])
    for step, grown in steps.items():
        assert grown <= 2 * size + (32 << 20), f"{step}: {grown / size:.2f} x the model"
    assert out.exists()


def test_normalised_model_saved_with_external_data_works_from_its_path(tmp_path):
    """The lean pattern for large models: save the normalised model with
    external data, drop it, and give its path to Calibrator and quantize."""
    samples = _samples(10)
    normalised = oq.optimize_model(_mlp(3))
    calibrator = oq.Calibrator(normalised, "MIN_MAX_ASYM")
    calibrator.collect_data(samples)
    ranges = calibrator.compute_range()
    reference = oq.quantize(normalised, ranges, calibrator=calibrator)
    path = tmp_path / "normalised.onnx"
    save_model(normalised, path, external_data=True)
    from_path = oq.Calibrator(str(path), "MIN_MAX_ASYM")
    from_path.collect_data(samples)
    assert from_path.compute_range() == ranges
    assert from_path._fingerprint == calibrator._fingerprint
    quantized = oq.quantize(str(path), ranges, calibrator=from_path)
    assert quantized.SerializeToString() == reference.SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["normalised.onnx", "normalised.onnx.data"]


def test_absolute_external_locations_are_refused(tmp_path):
    model = _mlp(1)
    secret = tmp_path / "elsewhere.bin"
    secret.write_bytes(model.graph.initializer[0].raw_data)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=str(secret))
    with pytest.raises(oq.ModelError, match=r"initializer 'w0' names external data by the "
                                            r"absolute path '.*elsewhere\.bin'"):
        oq.optimize_model(model)


def test_save_with_external_data_writes_no_empty_data_file(tmp_path):
    small = _mlp(1, width=8)  # weights of 256 bytes: below the threshold
    save_model(small, tmp_path / "s.onnx", external_data=True)
    assert os.listdir(tmp_path) == ["s.onnx"]
    assert onnx.load(str(tmp_path / "s.onnx")) == small
