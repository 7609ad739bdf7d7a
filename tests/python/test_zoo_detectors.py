"""The zoo's face detectors (opset 9 and 11, shape chains before Softmax, box
decoding in the graph) go through optimize_model, calibration on real photos
and quantize; the INT8 detections agree with FP32's."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest

import onnxquant as oq
from onnxquant.evaluate import make_session


def _photos(zoo: str, size: tuple[int, int], bgr: bool, normalise: bool) -> np.ndarray:
    from PIL import Image

    paths = sorted(glob.glob(os.path.join(zoo, "face", "images", "*.jpg")))
    out = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB").resize(size), dtype=np.float32)
        if bgr:
            img = img[:, :, ::-1]
        if normalise:
            img = (img - 127.0) / 128.0
        out.append(img.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


DETECTORS = [
    # file, (width, height), BGR, normalised, index of the score output
    ("version-RFB-320.onnx", (320, 240), False, True, 0),
    ("version-slim-320.onnx", (320, 240), False, True, 0),
    ("yunet_n_320_320.onnx", (320, 320), True, False, None),
]


@pytest.mark.parametrize("name, size, bgr, normalise, score_output", DETECTORS)
def test_face_detector_quantizes_and_agrees_with_fp32(zoo_dir, name, size, bgr, normalise,
                                                      score_output):
    """Each detector converts and quantizes (none raises
    UnsupportedModelError); calibrated on 16 photos, on the other 8 the INT8
    face scores track FP32's (correlation > 0.95 over all anchors, and the
    highest-scoring anchor's score within 0.1)."""
    model = oq.optimize_model(os.path.join(zoo_dir, "face", name))
    assert model.opset_import[0].version >= 13
    photos = _photos(zoo_dir, size, bgr, normalise)
    calib, held_out = photos[:16], photos[16:]
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(calib[i:i + 1] for i in range(len(calib)))
    quantized, report = oq.quantize(model, cal.compute_range(), return_report=True)
    onnx.checker.check_model(quantized, full_check=True)
    assert len(report.quantized_nodes) > 10
    fp32, int8 = make_session(model), make_session(quantized, emulate=True)
    inp = model.graph.input[0].name
    for x in held_out:
        a = fp32.run(None, {inp: x[None]})
        b = int8.run(None, {inp: x[None]})
        if score_output is None:  # YuNet: every output, flattened
            a, b = np.concatenate([o.ravel() for o in a]), np.concatenate([o.ravel() for o in b])
        else:
            a, b = a[score_output][..., 1].ravel(), b[score_output][..., 1].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.95
        top = int(np.argmax(a))
        assert abs(a[top] - b[top]) < 0.1
