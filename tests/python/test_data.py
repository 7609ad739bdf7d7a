"""Sample files (.npz) and the zoo converter."""

from __future__ import annotations

import io
import os

import numpy as np
import onnx
import pytest

import onnxquant as oq
from onnxquant.data import convert_zoo, load_samples, main, read_image_set

FIXED_BATCH = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 1, 4, 4] image) => (float[1, 1, 4, 4] y) { y = Relu(image) }
"""

RGB_NCHW = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 3, 2, 3] input) => (float[N, 3, 2, 3] y) { y = Relu(input) }
"""


@pytest.fixture()
def fixed_batch(parse_model):
    return parse_model(FIXED_BATCH)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_samples_keep_the_batch_dim(tmp_path, fixed_batch):
    images = np.arange(5 * 16, dtype=np.float32).reshape(5, 1, 4, 4)
    labels = np.arange(5)
    path = _write(tmp_path / "d.npz", image=images, labels=labels)
    samples = load_samples(path, fixed_batch)
    assert len(samples) == 5
    got = list(samples)
    assert [s["image"].shape for s in got] == [(1, 1, 4, 4)] * 5
    np.testing.assert_array_equal(got[3]["image"][0], images[3])
    np.testing.assert_array_equal(samples.labels, labels)
    assert len(list(samples)) == 5  # iterable again


def test_samples_with_an_extra_axis_are_indexed(tmp_path, fixed_batch):
    images = np.ones((3, 1, 1, 4, 4), np.float32)
    samples = load_samples(_write(tmp_path / "d.npz", image=images), fixed_batch)
    assert [s["image"].shape for s in samples] == [(1, 1, 4, 4)] * 3
    assert samples.labels is None


def test_max_samples(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", image=np.ones((9, 1, 4, 4), np.float32),
                  labels=np.arange(9))
    samples = load_samples(path, fixed_batch, max_samples=4)
    assert len(list(samples)) == 4 and len(samples.labels) == 4


def test_samples_feed_the_calibrator(tmp_path, fixed_batch):
    model = oq.optimize_model(fixed_batch)
    images = np.linspace(-2, 6, 4 * 16, dtype=np.float32).reshape(4, 1, 4, 4)
    samples = oq.load_samples(_write(tmp_path / "d.npz", image=images), model)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(samples)
    assert calibrator.num_samples == 4
    assert calibrator.compute_range()["image"] == (-2.0, 6.0)


def test_missing_file(tmp_path, fixed_batch):
    with pytest.raises(oq.CalibrationDataError, match=r"'.*absent\.npz' does not exist"):
        load_samples(tmp_path / "absent.npz", fixed_batch)


def test_corrupt_file(tmp_path, fixed_batch):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(oq.CalibrationDataError, match=r"bad\.npz.*not a readable \.npz"):
        load_samples(path, fixed_batch)


def test_npy_instead_of_npz(tmp_path, fixed_batch):
    path = tmp_path / "one.npy"
    np.save(path, np.ones((2, 1, 4, 4), np.float32))
    with pytest.raises(oq.CalibrationDataError, match="single array, not named arrays"):
        load_samples(path, fixed_batch)


def test_missing_key(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", labels=np.arange(3))
    with pytest.raises(oq.CalibrationDataError, match=r"d\.npz.*lacks key 'image'"):
        load_samples(path, fixed_batch)


def test_unknown_key(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", image=np.ones((2, 1, 4, 4), np.float32),
                  images=np.ones((2, 1, 4, 4), np.float32))
    with pytest.raises(oq.CalibrationDataError, match=r"key 'images'.*\['image'\]"):
        load_samples(path, fixed_batch)


def test_lengths_differ(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", image=np.ones((2, 1, 4, 4), np.float32),
                  labels=np.arange(3))
    with pytest.raises(oq.CalibrationDataError, match=r"'labels' holds 3 samples.*holds 2"):
        load_samples(path, fixed_batch)


def test_wrong_dtype(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", image=np.ones((2, 1, 4, 4), np.uint8))
    with pytest.raises(oq.CalibrationDataError,
                       match=r"key 'image': expected dtype float32.*got uint8"):
        load_samples(path, fixed_batch)


def test_wrong_shape(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", image=np.ones((2, 28, 28), np.float32))
    with pytest.raises(oq.CalibrationDataError,
                       match=r"key 'image': shape \[2, 28, 28\] does not fit.*\[1, 1, 4, 4\]"):
        load_samples(path, fixed_batch)


def test_empty_sample_file_is_refused_naming_the_key(tmp_path, fixed_batch):
    path = _write(tmp_path / "d.npz", image=np.ones((0, 1, 4, 4), np.float32))
    with pytest.raises(oq.CalibrationDataError,
                       match=r"'.*d\.npz', key 'image' holds no values \(shape \[0, 1, 4, 4\]\)"):
        load_samples(path, fixed_batch)


# ---------------------------------------------------------------------------
# convert_zoo
# ---------------------------------------------------------------------------

def test_convert_hwc_images_to_nchw(tmp_path, parse_model):
    model = parse_model(RGB_NCHW)
    images = np.arange(6 * 2 * 3 * 3, dtype=np.uint8).reshape(6, 2, 3, 3)
    source = _write(tmp_path / "set.npz", images=images, labels=np.arange(6) + 10)
    out = tmp_path / "out.npz"
    assert convert_zoo(source, model, out) == 6
    with np.load(out) as data:
        assert sorted(data.files) == ["input", "labels"]
        x = data["input"]
        assert x.dtype == np.float32 and x.shape == (6, 3, 2, 3)
        np.testing.assert_array_equal(x[4], images[4].transpose(2, 0, 1).astype(np.float32))
        np.testing.assert_array_equal(data["labels"], np.arange(6) + 10)
    assert len(load_samples(out, model)) == 6


def test_convert_refuses_to_overwrite_its_inputs(tmp_path, parse_model):
    model = parse_model(RGB_NCHW)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    source = _write(tmp_path / "set.npz", images=np.zeros((2, 2, 3, 3), np.uint8))
    before = (path.read_bytes(), (tmp_path / "set.npz").read_bytes())
    for output in (source, path):
        with pytest.raises(oq.InvalidArgumentError,
                           match=r"Refusing to write '.*': it is an input \(the image set or "
                                 r"the model\)"):
            convert_zoo(source, str(path), output)
    assert (path.read_bytes(), (tmp_path / "set.npz").read_bytes()) == before


def test_convert_random_subset_is_reproducible(tmp_path, parse_model):
    model = parse_model(RGB_NCHW)
    images = np.arange(20 * 18, dtype=np.uint16).reshape(20, 2, 3, 3).astype(np.uint8)
    labels = np.arange(20)
    source = _write(tmp_path / "set.npz", images=images, labels=labels)
    picks = []
    for name in ("a.npz", "b.npz"):
        convert_zoo(source, model, tmp_path / name, count=5, seed=3, offset=127, scale=1 / 128,
                    bgr=True)
        with np.load(tmp_path / name) as data:
            picks.append((data["labels"].copy(), data["input"].copy()))
    np.testing.assert_array_equal(picks[0][0], picks[1][0])
    chosen = picks[0][0]
    assert len(set(chosen.tolist())) == 5 and list(chosen) == sorted(chosen)
    first = images[chosen[0]].astype(np.float32)
    want = ((first - 127) / 128)[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_allclose(picks[0][1][0], want)


def test_convert_jpeg_set(tmp_path, parse_model):
    from PIL import Image

    model = parse_model(RGB_NCHW)
    blobs = []
    for value in (10, 200):
        buffer = io.BytesIO()
        Image.fromarray(np.full((2, 3, 3), value, np.uint8)).save(buffer, format="JPEG")
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    source = _write(tmp_path / "jpeg.npz", jpeg=np.concatenate(blobs), offsets=offsets)
    out = tmp_path / "out.npz"
    assert convert_zoo(source, model, out) == 2
    with np.load(out) as data:
        x = data["input"]
    assert x.shape == (2, 3, 2, 3)
    assert abs(float(x[0].mean()) - 10) < 3 and abs(float(x[1].mean()) - 200) < 3


def test_read_image_set_both_forms(tmp_path):
    from PIL import Image

    images = np.stack([np.full((2, 3, 3), v, np.uint8) for v in (10, 120, 200)])
    labels = np.array([4, 5, 6], np.uint8)
    plain = _write(tmp_path / "plain.npz", images=images, labels=labels)
    x, y = read_image_set(plain, np.array([2, 0]))
    assert np.array_equal(x, images[[2, 0]]) and y.tolist() == [6, 4]
    blobs = []
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, format="JPEG")
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    jpeg = _write(tmp_path / "jpeg.npz", jpeg=np.concatenate(blobs), offsets=offsets,
                  labels=labels)
    x, y = read_image_set(jpeg, np.array([1]))
    assert x.shape == (1, 2, 3, 3) and y.tolist() == [5]
    assert abs(float(x.mean()) - 120) < 3
    with pytest.raises(oq.CalibrationDataError, match="neither an 'images' array"):
        read_image_set(_write(tmp_path / "none.npz", other=labels))


def test_convert_refuses_wrong_image_size(tmp_path, parse_model):
    model = parse_model(RGB_NCHW)
    source = _write(tmp_path / "set.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(oq.CalibrationDataError, match=r"4x4.*2x3"):
        convert_zoo(source, model, tmp_path / "out.npz")
    assert not os.path.exists(tmp_path / "out.npz")


def test_data_command_line(tmp_path, parse_model, capsys):
    import onnx

    model_path = tmp_path / "m.onnx"
    onnx.save(parse_model(RGB_NCHW), model_path)
    source = _write(tmp_path / "set.npz", images=np.zeros((4, 2, 3, 3), np.uint8))
    out = tmp_path / "out.npz"
    assert main([source, "--model", str(model_path), "-o", str(out), "--count", "3"]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    assert main([str(tmp_path / "none.npz"), "--model", str(model_path), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_convert_zoo_mnist(zoo_dir, tmp_path):
    model = oq.optimize_model(os.path.join(zoo_dir, "mnist", "mnist_cnn.onnx"))
    source = os.path.join(zoo_dir, "mnist", "mnist_test.npz")
    out = tmp_path / "mnist.npz"
    assert convert_zoo(source, model, out, count=16, seed=0) == 16
    samples = load_samples(out, model)
    first = next(iter(samples))["Input3"]
    assert first.shape == (1, 1, 28, 28) and first.dtype == np.float32
    assert 0.0 <= float(first.min()) and float(first.max()) <= 255.0
    assert len(samples.labels) == 16
