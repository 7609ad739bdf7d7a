"""The CIFAR-10 models trained by models/cifar (committed .onnx, both
exporters) still load, run and quantize, and INT8 stays near FP32.

On 400 test images (a fixed random subset): FP32 top-1 must agree with the
figure recorded in the model's JSON within three standard errors, and INT8
(MIN_MAX_ASYM, 300 calibration images, QDQ emulated) must lose at most the
model's allowance plus two paired standard errors. The allowance is 1 point,
or the drop docs/accuracy.md records for that model when it is larger
(models/cifar/<name>.json, key "int8_drop_allowance").
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import onnxquant as oq
from onnxquant.evaluate import compare_top1, make_session, predict

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = sorted(glob.glob(os.path.join(_REPO, "models", "cifar", "*.onnx")))


@pytest.fixture(scope="module")
def cifar(zoo_dir):
    from models.cifar.data import load_test, preprocess

    from onnxquant.data import read_image_set

    x_test, y_test = load_test(zoo_dir)
    pick = np.random.default_rng(1).choice(len(x_test), 400, replace=False)
    calib_idx = np.random.default_rng(0).choice(50000, 300, replace=False)
    calib, _ = read_image_set(os.path.join(zoo_dir, "cifar10", "cifar10_train_jpeg.npz"),
                              calib_idx)
    return preprocess(calib), preprocess(x_test[pick]), y_test[pick].astype(np.int64)


def test_models_are_committed():
    names = {os.path.basename(p).split(".")[0] for p in MODELS}
    assert names, "no model in models/cifar"


def _spatial_means(model) -> int:
    """ReduceMean nodes over axes {2, 3} (``x.mean((2, 3))``) of a 4-D tensor, either
    exporter's form (opset 13: attribute; opset 18: an initializer input)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean":
            continue
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes is None and len(node.input) > 1:
            axes = inits[node.input[1]].tolist()
        count += sorted(a % 4 for a in axes or []) == [2, 3]
    return count


@pytest.mark.parametrize("path", MODELS, ids=os.path.basename)
def test_spatial_means_become_global_average_pools(path):
    original = onnx.load(path)
    model = oq.optimize_model(original)
    pools = sum(n.op_type == "GlobalAveragePool" for n in model.graph.node)
    assert _spatial_means(model) == 0
    assert pools == _spatial_means(original) + sum(
        n.op_type == "GlobalAveragePool" for n in original.graph.node)
    if "resnet" in path or "mobilenetv2" in path or "efficientnet" in path:
        assert pools >= 1  # nets.py: x.mean((2, 3)) before the classifier


@pytest.mark.parametrize("path", MODELS, ids=os.path.basename)
def test_model_loads_runs_and_quantizes(path, cifar):
    calib, x, y = cifar
    stem = os.path.join(os.path.dirname(path), os.path.basename(path).split(".")[0])
    with open(stem + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    exporter = "dynamo" if path.endswith(".dynamo.onnx") else "torchscript"
    recorded = meta["fp32_top1"][exporter]["test_top1"]
    model = oq.optimize_model(path)
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(calib[i:i + 1] for i in range(len(calib)))
    quantized = oq.quantize(model, cal.compute_range())
    acc = compare_top1(predict(make_session(model), x),
                       predict(make_session(quantized, emulate=True), x), y)
    p = recorded / 100
    se = 100 * math.sqrt(p * (1 - p) / len(y))
    assert abs(acc.reference - recorded) <= 3 * se, (acc.reference, recorded)
    allowance = max(1.0, meta.get("int8_drop_allowance", 0.0))
    assert acc.drop <= allowance + 2 * acc.paired_se, acc
