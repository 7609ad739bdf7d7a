"""Export a trained CIFAR-10 model to ONNX twice, check both exports, and record the results.

Usage (from the repository root, after ``python -m models.cifar.train --model NAME``)::

    python -m models.cifar.export --model NAME [--zoo ../shared/zoo]

Writes, next to this file:

* ``NAME.onnx``: TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), opset
  :data:`TORCHSCRIPT_OPSET`;
* ``NAME.dynamo.onnx``: the default (dynamo) exporter, opset :data:`DYNAMO_OPSET`, one file (no
  external data);
* ``NAME.json``: training and export record (torch version, seed, epochs, training seconds, CPU
  threads, FP32 top-1 on validation and test images with PyTorch and ONNX Runtime for both exports,
  parameters, file sizes, opsets, command).

Both exports: input ``image`` float32 [N,3,32,32] (dynamic batch N, preprocessing in
``data.PREPROCESSING``, also stored in ``metadata_props["preprocessing"]``), output ``logits``
float32 [N,10]. Both are exported exactly as a user would: no graph surgery here; whatever cleanup
an export needs is ``onnxquant.optimize_model``'s job. Only metadata (doc string, metadata_props)
is added. Each export must pass ``onnx.checker.check_model(full_check=True)`` and score, with ONNX
Runtime on the 10 000 test images, within :data:`MAX_TOP1_GAP_POINTS` of PyTorch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from models.cifar import data, nets

TORCHSCRIPT_OPSET = 13
DYNAMO_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
EVAL_BATCH_SIZE = 500
NUM_THREADS = 1  # see train.NUM_THREADS
MAX_TOP1_GAP_POINTS = 0.05
MAX_BYTES = 5_000_000
HERE = os.path.dirname(os.path.abspath(__file__))

DESCRIPTIONS = {
    "resnet": "ResNet-8-like CNN (Conv, BatchNormalization, Relu, residual Add)",
    "mobilenetv2": "MobileNetV2 width 0.5 (depthwise Conv, ReLU6, inverted residuals)",
    "efficientnet": "EfficientNet-B0 scaled down (SiLU, squeeze-and-excitation, depthwise Conv)",
    "convnext": "ConvNeXt (7x7 depthwise Conv, LayerNorm, GELU, layer scale)",
    "vit": "Vision Transformer, 4x4 patches (MatMul attention, Softmax, LayerNorm, GELU)",
}


def filter_known_warnings() -> None:
    """Silence specific, understood third-party warnings (nothing else)."""
    # torch flags the TorchScript exporter as legacy; it is exported with on purpose, beside dynamo.
    warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX",
                            category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"The feature will be removed\. Please remove usage",
                            category=DeprecationWarning, module=r"torch\.onnx\.")
    # torch.export's pytree code, while the dynamo exporter runs its decompositions.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # The dynamo exporter logs that torchvision's ops (nms, roi_align, ...) cannot be registered
    # when torchvision is not installed; these models use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def predict_torch(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """FP32 PyTorch logits of preprocessed images ``x``."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + EVAL_BATCH_SIZE])).numpy()
                               for i in range(0, len(x), EVAL_BATCH_SIZE)])


def predict_onnxruntime(path: str, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU) logits of preprocessed images ``x``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + EVAL_BATCH_SIZE]})[0]
                           for i in range(0, len(x), EVAL_BATCH_SIZE)])


def export_torchscript(model: torch.nn.Module, path: str) -> None:
    """``torch.onnx.export`` with the TorchScript exporter, dynamic batch.

    ``do_constant_folding=False``: with constant folding on, the exporter (in eval mode) also fuses
    BatchNormalization into the preceding Conv, and so does the dynamo exporter's default graph
    optimisation; this export keeps BatchNormalization (and the unfolded shape arithmetic) so that
    onnxquant's own folding is exercised, while the dynamo export shows the fused form.
    """
    torch.onnx.export(
        model, (torch.zeros(1, 3, 32, 32),), path,
        dynamo=False,
        opset_version=TORCHSCRIPT_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        do_constant_folding=False,
    )


def export_dynamo(model: torch.nn.Module, path: str) -> None:
    """``torch.onnx.export`` with the default (dynamo) exporter and its default optimisation."""
    batch = torch.export.Dim("N", min=1, max=65536)
    torch.onnx.export(
        model, (torch.zeros(2, 3, 32, 32),), path,
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )


def finish(src: str, dst: str, name: str, exporter: str) -> None:
    """Load ``src`` (with any external data), add metadata, check, save to ``dst`` as one file."""
    model = onnx.load(src)  # pulls in external data files, if the exporter wrote any
    model.doc_string = (
        f"{DESCRIPTIONS[name]} trained on CIFAR-10 (JPEG copy) by models/cifar/train.py, exported "
        f"with the {exporter} exporter. Input '{INPUT_NAME}': float32 [N,3,32,32], preprocessing: "
        f"{data.PREPROCESSING}. Output '{OUTPUT_NAME}': float32 [N,10] logits.")
    onnx.helper.set_model_props(model, {
        "preprocessing": data.PREPROCESSING,
        "dataset": "CIFAR-10 (JPEG copy, ../shared/zoo/cifar10)",
        "classes": ",".join(data.load_classes()),
        "model": name,
        "exporter": exporter,
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, dst)


def op_counts(path: str) -> dict[str, int]:
    """How many nodes of each op type the main graph holds."""
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def opset(path: str) -> int:
    """The model's default-domain opset."""
    return next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(nets.MODELS))
    parser.add_argument("--zoo", default=None,
                        help="model zoo folder (default: $ONNXQUANT_ZOO or ../shared/zoo)")
    parser.add_argument("--checkpoint", default=None,
                        help="trained weights (default: where train.py saved them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    filter_known_warnings()
    torch.set_num_threads(NUM_THREADS)
    from models.cifar.train import checkpoint_path
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        ckpt = torch.load(args.checkpoint or checkpoint_path(args.model), map_location="cpu")
    model = nets.build(args.model)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    stats = ckpt["stats"]

    _, _, x_val, y_val, _ = data.load_train_val(args.zoo)
    x_test, y_test = data.load_test(args.zoo)
    x_val, x_test = data.preprocess(x_val), data.preprocess(x_test)
    result = {"pytorch": {"val_top1": top1(predict_torch(model, x_val), y_val),
                          "test_top1": top1(predict_torch(model, x_test), y_test)}}
    print(f"{args.model} PyTorch FP32: val {result['pytorch']['val_top1']:.2f}%, "
          f"test {result['pytorch']['test_top1']:.2f}%", flush=True)

    files = {"torchscript": f"{args.model}.onnx", "dynamo": f"{args.model}.dynamo.onnx"}
    exporters = {"torchscript": export_torchscript, "dynamo": export_dynamo}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, fname in files.items():
            raw = os.path.join(tmp, f"{kind}.onnx")
            dst = os.path.join(HERE, fname)
            exporters[kind](model, raw)
            finish(raw, dst, args.model, kind)
            val = top1(predict_onnxruntime(dst, x_val), y_val)
            test = top1(predict_onnxruntime(dst, x_test), y_test)
            size = os.path.getsize(dst)
            result[kind] = {"file": fname, "opset": opset(dst), "bytes": size,
                            "val_top1": val, "test_top1": test, "ops": op_counts(dst)}
            print(f"{fname}: opset {opset(dst)}, {size} bytes, ONNX Runtime val {val:.2f}%, "
                  f"test {test:.2f}%\n  ops {result[kind]['ops']}", flush=True)
            gap = abs(test - result["pytorch"]["test_top1"])
            if gap > MAX_TOP1_GAP_POINTS:
                failures.append(f"{fname}: ONNX Runtime test top-1 differs from PyTorch by "
                                f"{gap:.2f} points")
            if size > MAX_BYTES:
                failures.append(f"{fname}: {size} bytes, over {MAX_BYTES}")

    record = {
        "model": args.model,
        "description": DESCRIPTIONS[args.model],
        "torch_version": str(stats["torch_version"]),
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "seed": stats["seed"],
        "epochs": stats["epochs"],
        "steps": stats["steps"],
        "train_seconds": stats["train_seconds"],
        "cpu_threads": stats["threads"],
        "budget": stats["budget"],
        "params": stats["params"],
        "batch_size": stats["batch_size"],
        "optimizer": stats["recipe"],
        "label_smoothing": stats["label_smoothing"],
        "augmentation": stats["augmentation"],
        "precision": stats["precision"],
        "data": {"train": "cifar10_train_jpeg.npz minus the validation split (45 000 images)",
                 "val": "5 000 images: numpy.random.default_rng(0).permutation(50000)[:5000]",
                 "test": "cifar10_test.npz (10 000 images)"},
        "preprocessing": data.PREPROCESSING,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 3, 32, 32]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", 10]},
        "accuracy_unit": "top-1 percent, FP32",
        "fp32_top1": {k: {m: round(v, 2) for m, v in r.items() if m.endswith("top1")}
                      for k, r in result.items()},
        "exports": {k: {m: v for m, v in r.items() if not m.endswith("top1")}
                    for k, r in result.items() if k != "pytorch"},
        "command": stats["command"],
        "export_command": "python -m models.cifar.export --model " + args.model,
    }
    with open(os.path.join(HERE, f"{args.model}.json"), "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=2)
        stream.write("\n")
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
