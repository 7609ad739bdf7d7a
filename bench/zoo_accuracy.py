"""FP32 against INT8 (MIN_MAX) on the zoo's classifiers, full evaluation sets.

ResNet8 (../shared/zoo/cifar10): 500 calibration images of
cifar10_train_jpeg.npz drawn with numpy.random.default_rng(0), all 10 000
images of cifar10_test.npz. MNIST CNN (../shared/zoo/mnist): calibration on
test images 0-499, evaluation on 500-9999. INT8 is run with QDQ emulated
(session.disable_quant_qdq = 1) and with ONNX Runtime's integer kernels.

    .venv/bin/python bench/zoo_accuracy.py [--zoo ../shared/zoo]
"""

from __future__ import annotations

import argparse
import io
import os
import platform

import numpy as np
import onnxruntime as ort

import onnxquant as oq
from onnxquant.evaluate import compare_top1, make_session, predict

DEFAULT_ZOO = os.environ.get(
    "ONNXQUANT_ZOO", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                  "shared", "zoo"))


def cifar_jpeg_sample(zoo: str, count: int, seed: int = 0) -> np.ndarray:
    """``count`` training images decoded from the zoo's JPEG set, NCHW float 0..255."""
    from PIL import Image

    d = np.load(os.path.join(zoo, "cifar10", "cifar10_train_jpeg.npz"))
    jpeg, offsets = d["jpeg"], d["offsets"]
    pick = np.random.default_rng(seed).choice(len(offsets) - 1, count, replace=False)
    images = [np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes()))
                         .convert("RGB")) for i in pick]
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)


def evaluate(model_path: str, calib: np.ndarray, x: np.ndarray, y: np.ndarray,
             method: str, activation_type: str) -> dict:
    model = oq.optimize_model(model_path)
    cal = oq.Calibrator(model, oq.CalibrationMethod[method])
    cal.collect_data(calib[i:i + 1] for i in range(len(calib)))
    q = oq.quantize(model, cal.compute_range(), activation_type=activation_type)
    fp32 = predict(make_session(model), x)
    emulated = compare_top1(fp32, predict(make_session(q, emulate=True), x), y)
    fused = compare_top1(fp32, predict(make_session(q, emulate=False), x), y)
    return {"emulated": emulated, "fused": fused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=DEFAULT_ZOO)
    ap.add_argument("--methods", nargs="+", default=["MIN_MAX_ASYM", "MIN_MAX_SYM"])
    args = ap.parse_args()
    zoo = args.zoo
    test = np.load(os.path.join(zoo, "cifar10", "cifar10_test.npz"))
    mnist = np.load(os.path.join(zoo, "mnist", "mnist_test.npz"))
    mx = mnist["images"].astype(np.float32)[:, None]
    cases = {
        "ResNet8 (CIFAR-10)": (os.path.join(zoo, "cifar10", "resnet8_cifar10.onnx"),
                               cifar_jpeg_sample(zoo, 500),
                               test["images"].transpose(0, 3, 1, 2).astype(np.float32),
                               test["labels"].astype(np.int64)),
        "MNIST CNN": (os.path.join(zoo, "mnist", "mnist_cnn.onnx"), mx[:500], mx[500:],
                      mnist["labels"][500:].astype(np.int64)),
    }
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    print(f"# onnxquant {oq.__version__}, onnxruntime {ort.__version__}, "
          f"{platform.machine()} ({' '.join(isa)})")
    print("| model | method | activations | images | FP32 top-1 | INT8 top-1 (emulated) "
          "| drop ± paired SE | INT8 top-1 (integer kernels) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, (path, calib, x, y) in cases.items():
        for method in args.methods:
            for act in ("uint8", "int8"):
                r = evaluate(path, calib, x, y, method, act)
                e, f = r["emulated"], r["fused"]
                print(f"| {name} | {method} | {act} | {e.count} | {e.reference:.2f} | "
                      f"{e.candidate:.2f} | {e.drop:+.2f} ± {e.paired_se:.2f} | "
                      f"{f.candidate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
