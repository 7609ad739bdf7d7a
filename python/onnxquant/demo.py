"""The main job: quantize a model on real data and print FP32 against INT8.

INT8 is evaluated as deployed: ONNX Runtime with its default session options,
which fuse QDQ into this CPU's integer kernels (the headline figure), with the
QDQ-emulated figure beside it as a diagnostic, a warning where the two differ
by more than half a point, and the CPU's ISA flags and kernel path.

With no arguments it runs the embedded default: the project's Fashion-MNIST
CNN (``onnxquant/models/fashion_cnn.onnx``, trained by
``models/train_fashion_cnn.py``), calibrated on 500 training images drawn
with ``numpy.random.default_rng(0)`` and evaluated on the 10 000 test images
of Debian's ``dataset-fashion-mnist``. Any one-input model with a labelled
``.npz`` sample file (docs/user_guide.md) runs the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources

import numpy as np
import onnx

from onnxquant.calibrator import CalibrationMethod, Calibrator
from onnxquant.evaluate import deployed_top1, kernels_description, make_session, predict
from onnxquant.optimize import optimize_model
from onnxquant.quantize import quantize

__all__ = ["DemoData", "default_demo_data", "npz_demo_data", "run_demo"]


@dataclass(frozen=True)
class DemoData:
    """A model and its data: calibration inputs and labelled test inputs,
    each an array whose axis 0 indexes samples (the model's layout)."""

    model: onnx.ModelProto
    name: str
    calibration: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray


def default_model_path() -> str:
    """Path of the embedded Fashion-MNIST CNN."""
    return str(resources.files("onnxquant").joinpath("models/fashion_cnn.onnx"))


def default_demo_data(num_calibration: int = 500, seed: int = 0,
                      data_root: str | None = None) -> DemoData:
    """The embedded default: Fashion-MNIST CNN and Debian's Fashion-MNIST."""
    from onnxquant.datasets import FASHION_MNIST_ROOT, load_fashion_mnist

    root = data_root or FASHION_MNIST_ROOT
    train_x, _ = load_fashion_mnist("train", root)
    test_x, test_y = load_fashion_mnist("test", root)
    pick = np.random.default_rng(seed).choice(len(train_x), num_calibration,
                                              replace=False)

    def prep(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / 255.0)[:, None, :, :]

    return DemoData(model=onnx.load(default_model_path()),
                    name="fashion_cnn (Fashion-MNIST)",
                    calibration=prep(train_x[np.sort(pick)]),
                    test_inputs=prep(test_x), test_labels=test_y.astype(np.int64))


def _npz_array(path: str, key: str) -> np.ndarray:
    from onnxquant.errors import CalibrationDataError

    with np.load(path) as d:
        if key not in d.files:
            raise CalibrationDataError(
                f"'{path}' has no array '{key}' (it holds {', '.join(d.files)}); the keys "
                "must be the model's input names, plus 'labels' for evaluation.")
        return d[key]


def npz_demo_data(model_path: str, calibration_npz: str, test_npz: str,
                  num_calibration: int = 500, seed: int = 0) -> DemoData:
    """A one-input model with sample files in the form of docs/user_guide.md:
    calibration samples drawn at random from ``calibration_npz``, evaluation
    on every sample of ``test_npz``, which must hold ``labels``."""
    model = onnx.load(model_path)
    initializers = {i.name for i in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in initializers)
    x = _npz_array(calibration_npz, name)
    pick = np.random.default_rng(seed).choice(len(x), min(num_calibration, len(x)),
                                              replace=False)
    return DemoData(model=model, name=model_path, calibration=x[np.sort(pick)],
                    test_inputs=_npz_array(test_npz, name),
                    test_labels=_npz_array(test_npz, "labels").astype(np.int64))


def _samples(x: np.ndarray):
    """Calibration samples, one row each ([1, ...]), streamed."""
    for i in range(len(x)):
        yield x[i:i + 1]


def run_demo(data: DemoData, method: str = "MIN_MAX_ASYM",
             output: str | None = None, progress: bool = True,
             print_fn=print) -> dict:
    """Optimizes, calibrates, quantizes and evaluates; prints a summary and
    returns the figures (top-1 in percent, step times in seconds).

    ``int8_top1`` is the model as deployed (ONNX Runtime's default session
    options: fused integer kernels on this CPU); ``int8_emulated_top1``, QDQ
    emulated in float, is a diagnostic; ``kernels_diverge`` is True when they
    differ by more than :data:`onnxquant.evaluate.DIVERGENCE_POINTS`."""
    times = {}
    t = time.perf_counter()
    model = optimize_model(data.model)
    times["optimize"] = time.perf_counter() - t

    t = time.perf_counter()
    calibrator = Calibrator(model, CalibrationMethod[method])
    calibrator.collect_data(_samples(data.calibration), progress=progress)
    times["calibrate"] = time.perf_counter() - t

    t = time.perf_counter()
    ranges = calibrator.compute_range()
    times["compute_range"] = time.perf_counter() - t

    t = time.perf_counter()
    quantized, report = quantize(model, ranges, calibrator=calibrator, return_report=True)
    times["quantize"] = time.perf_counter() - t
    if output:
        from onnxquant._model import save_model_atomic
        save_model_atomic(quantized, output)

    t = time.perf_counter()
    fp32 = predict(make_session(model, emulate=False), data.test_inputs)
    times["evaluate_fp32"] = time.perf_counter() - t
    t = time.perf_counter()
    fused = predict(make_session(quantized, emulate=False), data.test_inputs)
    times["evaluate_int8"] = time.perf_counter() - t
    t = time.perf_counter()
    emulated = predict(make_session(quantized, emulate=True), data.test_inputs)
    times["evaluate_int8_emulated"] = time.perf_counter() - t

    acc = deployed_top1(fp32, emulated, fused, data.test_labels, kernels_description())
    print_fn(str(report))
    print_fn(f"\nmodel: {data.name}; method: {method}; "
             f"{len(data.calibration)} calibration samples, "
             f"{acc.fused.count} test samples")
    for line in acc.lines():
        print_fn("  " + line)
    print_fn(f"  FP32/INT8 agreement (as deployed): {acc.fused.agreement:.2f} %")
    print_fn("  time: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    return {"fp32_top1": acc.fp32, "int8_top1": acc.fused.candidate,
            "int8_emulated_top1": acc.emulated.candidate, "paired_se": acc.fused.paired_se,
            "fused_minus_emulated": acc.gap, "fused_minus_emulated_se": acc.gap_se,
            "kernels_diverge": acc.kernels_diverge, "kernels": acc.kernels,
            "agreement": acc.fused.agreement, "times": times}
