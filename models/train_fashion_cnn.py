#!/usr/bin/env python3
"""Train a small CNN on Fashion-MNIST and export it to ONNX (opset 13).

The exported model is the FP32 reference that onnxquant quantizes in its
examples and tests.  It deliberately keeps ``BatchNormalization`` nodes (to
exercise batch-norm folding) and contains a residual ``Add``.

Model contract:
    input  ``image``:  float32 [N, 1, 28, 28], pixels scaled as ``x / 255``
    output ``logits``: float32 [N, 10], unnormalised class scores

Usage::

    python models/train_fashion_cnn.py --out python/onnxquant/models/fashion_cnn.onnx \
        [--epochs N] [--data-root /usr/share/datasets/fashion-mnist]

Besides the ``.onnx`` file, a ``.json`` file with the same stem records the
training metadata and the ONNX Runtime test accuracy.  Requires
``torch==2.13.0`` (CPU build), onnx, onnxruntime and the Debian package
``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
import warnings
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

SEED = 0
NUM_THREADS = 2
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 1000
MAX_LR = 3e-3
WEIGHT_DECAY = 1e-4
OPSET = 13
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
PREPROCESSING = "x / 255, NCHW float32"
# ONNX Runtime and PyTorch top-1 may differ by at most this many points.
MAX_TOP1_GAP_POINTS = 0.05

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS_PY = os.path.join(REPO_ROOT, "python", "onnxquant", "datasets.py")


def load_datasets_module() -> ModuleType:
    """Load ``onnxquant/datasets.py`` straight from its file.

    Loading by path avoids running ``onnxquant/__init__.py``, which may need
    the native extension that is not built when this script runs.
    """
    spec = importlib.util.spec_from_file_location(
        "_onnxquant_datasets", DATASETS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preprocess(images: np.ndarray) -> np.ndarray:
    """Map uint8 [N, 28, 28] images to float32 [N, 1, 28, 28] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def conv_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias) followed by batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class ResidualBlock(nn.Module):
    """Two conv-BN layers with an identity shortcut: relu(x + f(x))."""

    def __init__(self, channels: int) -> None:
        """Create a block that keeps ``channels`` and the spatial size."""
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        y = self.relu(self.conv1(x))
        return self.relu(x + self.conv2(y))


class FashionCNN(nn.Module):
    """Small residual CNN for 28x28 grey-scale images (about 43k weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        """Create the network with ``num_classes`` output logits."""
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16), nn.ReLU(), nn.MaxPool2d(2),    # 16 x 14 x 14
            conv_bn(16, 32), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 7 x 7
            ResidualBlock(32),                             # 32 x 7 x 7
            conv_bn(32, 64), nn.ReLU(),                    # 64 x 7 x 7
            nn.AdaptiveAvgPool2d(1),                       # 64 x 1 x 1
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [N, num_classes] for images [N, 1, 28, 28]."""
        return self.classifier(torch.flatten(self.features(x), 1))


def set_determinism() -> np.random.Generator:
    """Fix seeds and thread count; return the numpy generator for shuffling."""
    torch.manual_seed(SEED)
    torch.set_num_threads(NUM_THREADS)
    return np.random.default_rng(SEED)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
          rng: np.random.Generator) -> float:
    """Train with AdamW and a one-cycle schedule; return seconds spent."""
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR,
                                  weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, epochs=epochs,
        steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total_loss / len(x):.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return time.perf_counter() - start


def top1_percent(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def predict_torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Run the model in eval mode over ``x`` in batches; return logits."""
    model.eval()
    with torch.no_grad():
        chunks = [model(x[i:i + EVAL_BATCH_SIZE]).numpy()
                  for i in range(0, len(x), EVAL_BATCH_SIZE)]
    return np.concatenate(chunks)


def predict_onnxruntime(path: str, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model with ONNX Runtime (CPU) over ``x``; return logits."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(path, options,
                                   providers=["CPUExecutionProvider"])
    chunks = [
        session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + EVAL_BATCH_SIZE]})[0]
        for i in range(0, len(x), EVAL_BATCH_SIZE)
    ]
    return np.concatenate(chunks)


def export_onnx(model: nn.Module, path: str) -> None:
    """Export with the TorchScript exporter, keeping BatchNormalization.

    Constant folding is disabled because, in eval mode, it also runs the
    exporter's peephole pass that fuses BatchNorm into the preceding Conv;
    onnxquant's own batch-norm folding should see the unfused graph.
    """
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    torch.onnx.export(
        model, (dummy,), path,
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        training=torch.onnx.TrainingMode.EVAL,
        do_constant_folding=False,
    )


def annotate_and_check(src: str, dst: str) -> None:
    """Add doc string and preprocessing metadata, check, save to ``dst``."""
    model = onnx.load(src)
    model.doc_string = (
        "Small residual CNN trained on Fashion-MNIST by "
        "models/train_fashion_cnn.py. Input 'image': float32 [N,1,28,28], "
        f"preprocessing: {PREPROCESSING}. Output 'logits': float32 [N,10].")
    onnx.helper.set_model_props(model, {
        "preprocessing": PREPROCESSING,
        "dataset": "Fashion-MNIST",
        "classes": "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,"
                   "Sneaker,Bag,Ankle boot",
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, dst)


def count_ops(path: str) -> dict[str, int]:
    """Return how many nodes of each op type the ONNX graph holds."""
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def write_metadata(path: str, epochs: int, train_seconds: float,
                   ort_top1: float, torch_top1: float) -> None:
    """Write the training metadata JSON next to the ONNX file."""
    meta = {
        "torch_version": torch.__version__,
        "seed": SEED,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "fp32_test_top1_onnxruntime": round(ort_top1, 2),
        "fp32_test_top1_pytorch": round(torch_top1, 2),
        "accuracy_unit": "percent, 10000 Fashion-MNIST test images",
        "input": {"name": INPUT_NAME, "dtype": "float32",
                  "shape": ["N", 1, 28, 28]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32",
                   "shape": ["N", 10]},
        "preprocessing": PREPROCESSING,
        "opset": OPSET,
        "command": shlex.join(["python", *sys.argv]),
    }
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=2)
        stream.write("\n")


def filter_known_warnings() -> None:
    """Silence specific, understood third-party warnings (nothing else)."""
    # torch 2.13 flags the TorchScript exporter as legacy; it is chosen on
    # purpose (dynamo=False) so that onnxscript is not needed.
    warnings.filterwarnings(
        "ignore", message=r"You are using the legacy TorchScript-based ONNX",
        category=DeprecationWarning)
    # Raised from inside that exporter about one of its own helpers.
    warnings.filterwarnings(
        "ignore", message=r"The feature will be removed\. Please remove usage",
        category=DeprecationWarning, module=r"torch\.onnx\.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True,
                        help="output ONNX path, e.g. python/onnxquant/models/fashion_cnn.onnx "
                             "(metadata goes to the same stem + .json)")
    parser.add_argument("--epochs", type=int, default=5,
                        help="training epochs (default: 5)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the Fashion-MNIST .gz IDX files "
                             "(default: /usr/share/datasets/fashion-mnist)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, export, verify with ONNX Runtime, and write metadata."""
    args = parse_args(argv)
    if args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    filter_known_warnings()
    rng = set_determinism()

    datasets = load_datasets_module()
    root = args.data_root or datasets.FASHION_MNIST_ROOT
    try:
        train_x, train_y = datasets.load_fashion_mnist("train", root)
        test_x, test_y = datasets.load_fashion_mnist("test", root)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    train_x = torch.from_numpy(preprocess(train_x))
    train_y = torch.from_numpy(train_y.astype(np.int64))
    test_x = preprocess(test_x)

    model = FashionCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params} parameters, training {args.epochs} epochs on "
          f"{len(train_x)} images", flush=True)
    train_seconds = train(model, train_x, train_y, args.epochs, rng)
    torch_top1 = top1_percent(
        predict_torch(model, torch.from_numpy(test_x)), test_y)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw_path = os.path.join(tmp, "raw.onnx")
        export_onnx(model, raw_path)
        annotate_and_check(raw_path, args.out)

    ort_top1 = top1_percent(predict_onnxruntime(args.out, test_x), test_y)
    print(f"test top-1: PyTorch {torch_top1:.2f}%, "
          f"ONNX Runtime {ort_top1:.2f}%", flush=True)
    print(f"ops: {count_ops(args.out)}; "
          f"{os.path.getsize(args.out)} bytes", flush=True)
    if abs(ort_top1 - torch_top1) > MAX_TOP1_GAP_POINTS:
        raise SystemExit(f"ONNX Runtime top-1 {ort_top1:.2f} differs from "
                         f"PyTorch {torch_top1:.2f} by more than "
                         f"{MAX_TOP1_GAP_POINTS} points")

    json_path = os.path.splitext(args.out)[0] + ".json"
    write_metadata(json_path, args.epochs, train_seconds, ort_top1,
                   torch_top1)
    print(f"wrote {args.out} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
