"""The CIFAR-10 models trained by models/cifar (committed .onnx, both
exporters) still load, run and quantize, and INT8 stays near FP32.

On 2 000 test images (a fixed random subset): FP32 top-1 must agree with the
figure recorded in the model's JSON within three standard errors, and INT8
(MIN_MAX_ASYM, 300 calibration images) as deployed, with ONNX Runtime's
default session options (fused integer kernels), must lose at most the
model's allowance plus two paired standard errors. The allowance is 1 point,
or the drop docs/accuracy.md records for that model when it is larger
(models/cifar/<name>.json, key "int8_drop_allowance"). The fused figure must
also stay within max(0.3, 2 paired SE) points of the emulated one. Both hold
on this CPU's kernels and, on the first 200 of those images, on the AVX2
kernels under qemu-x86_64 -cpu Haswell; there, one exporter per family (the
default one, dynamo: both exporters' INT8 models gave the same AVX2 figures)
keeps the emulated run short.
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
from onnxquant.evaluate import evaluate_deployed

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = sorted(glob.glob(os.path.join(_REPO, "models", "cifar", "*.onnx")))
AVX2_MODELS = [p for p in MODELS if p.endswith(".dynamo.onnx")]
AVX2_IMAGES = 200  # 3 to 30 s per model under QEMU


@pytest.fixture(scope="module")
def cifar(zoo_dir):
    from models.cifar.data import load_test, preprocess

    from onnxquant.data import read_image_set

    x_test, y_test = load_test(zoo_dir)
    pick = np.random.default_rng(1).choice(len(x_test), 2000, replace=False)
    calib_idx = np.random.default_rng(0).choice(50000, 300, replace=False)
    calib, _ = read_image_set(os.path.join(zoo_dir, "cifar10", "cifar10_train_jpeg.npz"),
                              calib_idx)
    return preprocess(calib), preprocess(x_test[pick]), y_test[pick].astype(np.int64)


def test_models_are_committed():
    names = {os.path.basename(p).split(".")[0] for p in MODELS}
    assert names, "no model in models/cifar"
    assert AVX2_MODELS, "no dynamo export in models/cifar"


@pytest.fixture(scope="module")
def quantized(cifar):
    """``quantized(path)``: the normalised model and its INT8 form, calibrated
    once per model for the tests below."""
    calib = cifar[0]
    done = {}

    def get(path: str):
        if path not in done:
            model = oq.optimize_model(path)
            cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
            cal.collect_data(calib[i:i + 1] for i in range(len(calib)))
            done[path] = model, oq.quantize(model, cal.compute_range(), calibrator=cal)
        return done[path]

    return get


def _meta(path: str) -> dict:
    stem = os.path.join(os.path.dirname(path), os.path.basename(path).split(".")[0])
    with open(stem + ".json", encoding="utf-8") as f:
        return json.load(f)


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
def test_model_loads_runs_and_quantizes(path, cifar, quantized, deployed_tolerance):
    _, x, y = cifar
    meta = _meta(path)
    exporter = "dynamo" if path.endswith(".dynamo.onnx") else "torchscript"
    recorded = meta["fp32_top1"][exporter]["test_top1"]
    model, int8 = quantized(path)
    acc = evaluate_deployed(model, int8, x, y)
    p = recorded / 100
    se = 100 * math.sqrt(p * (1 - p) / len(y))
    assert abs(acc.fp32 - recorded) <= 3 * se, (acc.fp32, recorded)
    allowance = max(1.0, meta.get("int8_drop_allowance", 0.0))
    assert acc.fused.drop <= allowance + 2 * acc.fused.paired_se, str(acc)
    assert abs(acc.gap) <= deployed_tolerance(acc.gap_se), str(acc)


@pytest.mark.parametrize("path", AVX2_MODELS, ids=os.path.basename)
def test_model_on_avx2_kernels(path, cifar, quantized, avx2_accuracy, deployed_tolerance):
    _, x, y = cifar
    model, int8 = quantized(path)
    acc = evaluate_deployed(model, int8, x[:AVX2_IMAGES], y[:AVX2_IMAGES], kernels="avx2",
                            timeout=300)
    allowance = max(1.0, _meta(path).get("int8_drop_allowance", 0.0))
    assert acc.fused.drop <= allowance + 2 * acc.fused.paired_se, str(acc)
    assert abs(acc.gap) <= deployed_tolerance(acc.gap_se), str(acc)
