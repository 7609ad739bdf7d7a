"""Latency of a uint8 model input (``ModelEditor.convert_input_type``) on the zoo's image models.

For each model: ``optimize_model``, one MIN_MAX_ASYM ``Calibrator`` on ``--calibration``
images, ``quantize`` (defaults: uint8 activations, target "portable"); then a copy whose input
is converted to uint8. Both run in ONNX Runtime CPU sessions with the default options
(ORT_ENABLE_ALL; ``--threads`` sets the intra-op threads, default ONNX Runtime's), batch 1,
on the same images. Three paths, per image:

- ``float``: the FP32 image into the quantized model (its QuantizeLinear runs inside);
- ``uint8 + CPU quantize``: ``round(x / scale) + zero_point`` of the FP32 image in numpy
  (``TensorQuantization.quantize``, counted), then the uint8 model;
- ``uint8``: the uint8 model on codes computed beforehand (where the codes are the
  camera's pixels: raw 0..255 inputs quantize with scale 1 and zero point 0, or after
  ``fold_preprocessing``).

The three take turns in rotating order, each round timing ``--block`` runs of each after a
warm-up; reported: the median over ``--rounds`` rounds of the time per run, and the median of
the per-round ratios against ``float``. Also checked: the uint8 model's outputs equal the float
model's (max |difference|). Only measures: the capability is ``onnxquant.ModelEditor``.

    PYTHONPATH=python .venv/bin/python bench/editor_latency.py
    PYTHONPATH=python .venv/bin/python bench/editor_latency.py --models resnet8 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

import onnxquant as oq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ZOO = os.environ.get("ONNXQUANT_ZOO", os.path.join(REPO, "..", "shared", "zoo"))


def _faces(zoo: str, size: tuple[int, int], bgr: bool, count: int) -> np.ndarray:
    from PIL import Image

    folder = os.path.join(zoo, "face", "images")
    names = sorted(os.listdir(folder))[:count]
    images = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as im:
            a = np.asarray(im.convert("RGB").resize(size), np.float32)
        images.append((a[..., ::-1] if bgr else a).transpose(2, 0, 1))
    return np.stack(images)


def load(name: str, zoo: str, count: int) -> tuple[str, np.ndarray]:
    """(model path, float images [count, C, H, W] in the model's own input form)."""
    if name == "mnist":
        with np.load(os.path.join(zoo, "mnist", "mnist_test.npz")) as d:
            x = d["images"][:count, None].astype(np.float32)
        return os.path.join(zoo, "mnist", "mnist_cnn.onnx"), x
    if name == "resnet8":
        with np.load(os.path.join(zoo, "cifar10", "cifar10_test.npz")) as d:
            x = d["images"][:count].transpose(0, 3, 1, 2).astype(np.float32)
        return os.path.join(zoo, "cifar10", "resnet8_cifar10.onnx"), x
    if name == "rfb320":
        x = (_faces(zoo, (320, 240), False, count) - 127.0) / 128.0
        return os.path.join(zoo, "face", "version-RFB-320.onnx"), x.astype(np.float32)
    if name == "yunet":
        x = _faces(zoo, (320, 320), True, count)
        return os.path.join(zoo, "face", "yunet_n_320_320.onnx"), x
    raise SystemExit(f"unknown model {name!r}")


def session(model: onnx.ModelProto, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def measure(name: str, zoo: str, calibration: int, rounds: int, block: int,
            threads: int | None) -> dict:
    path, images = load(name, zoo, max(calibration, 8))
    model = oq.optimize_model(path)
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(images[i:i + 1] for i in range(min(calibration, len(images))))
    quantized = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)
    input_name = oq.get_pure_input_names(quantized)[0]
    edited = onnx.ModelProto()
    edited.CopyFrom(quantized)
    q = oq.ModelEditor(edited).convert_input_type(input_name, oq.TensorType.UINT8)
    float_session, uint8_session = session(quantized, threads), session(edited, threads)
    samples = [images[i:i + 1] for i in range(len(images))]
    codes = [q.quantize(x) for x in samples]
    difference = max(float(np.abs(a - b).max()) for x, c in zip(samples[:8], codes[:8])
                     for a, b in zip(float_session.run(None, {input_name: x}),
                                     uint8_session.run(None, {input_name: c})))

    def run_float(i):
        float_session.run(None, {input_name: samples[i % len(samples)]})

    def run_quantize(i):
        uint8_session.run(None, {input_name: q.quantize(samples[i % len(samples)])})

    def run_uint8(i):
        uint8_session.run(None, {input_name: codes[i % len(codes)]})

    paths = {"float": run_float, "uint8 + CPU quantize": run_quantize, "uint8": run_uint8}
    for run in paths.values():  # warm-up
        for i in range(max(block, 10)):
            run(i)
    times = {k: [] for k in paths}
    order = list(paths)
    for r in range(rounds):
        for key in order[r % 3:] + order[:r % 3]:
            start = time.perf_counter()
            for i in range(block):
                paths[key](i)
            times[key].append((time.perf_counter() - start) / block)
        print(f"  {name}: round {r + 1}/{rounds}", file=sys.stderr)
    ratios = {k: statistics.median(t / f for t, f in zip(times[k], times["float"]))
              for k in paths}
    return {"name": name, "shape": "x".join(map(str, images.shape[1:])), "scale": q.scale,
            "zero_point": q.zero_point, "difference": difference,
            "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}, "ratio": ratios}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=DEFAULT_ZOO)
    parser.add_argument("--models", nargs="+", default=["mnist", "resnet8", "rfb320", "yunet"])
    parser.add_argument("--calibration", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: ONNX Runtime's, all cores)")
    args = parser.parse_args(argv)
    rows = [measure(m, args.zoo, args.calibration, args.rounds, args.block, args.threads)
            for m in args.models]
    threads = f"{args.threads} intra-op threads" if args.threads else "default threads"
    print(f"onnxruntime {ort.__version__}; batch 1; default session options, {threads}; median of "
          f"{args.rounds} rounds of {args.block} runs\n")
    print("| model | input | input scale, zero point | float ms | uint8 + CPU quantize ms "
          "(ratio) | uint8 ms (ratio) | max output difference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms, ratio = r["ms"], r["ratio"]
        print(f"| {r['name']} | {r['shape']} | {r['scale']:.4g}, {r['zero_point']} | "
              f"{ms['float']:.3f} | {ms['uint8 + CPU quantize']:.3f} "
              f"({ratio['uint8 + CPU quantize']:.3f}) | {ms['uint8']:.3f} "
              f"({ratio['uint8']:.3f}) | {r['difference']:.3g} |")


if __name__ == "__main__":
    main()
