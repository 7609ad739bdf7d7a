"""Classifier entries (rows of the summary tables): ``ModelEntry``, their builders, ``MODELS``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxquant.data import read_image_set

from .common import REPO, LabelledSet, draw


@dataclass
class ModelEntry:
    """One row: a model, its calibration samples, an optional validation set and a test set.

    ``calibration`` holds the samples along axis 0; each is fed as ``calibration[i:i+1]``
    (one ``[1, ...]`` sample) to both tools. The validation set, where present, chooses each
    tool's best method; the test set is what every figure is measured on.
    """

    name: str
    path: str
    calibration: np.ndarray
    calibration_description: str
    test: LabelledSet
    validation: LabelledSet | None = None
    notes: list[str] = field(default_factory=list)
    #: The onnxquant columns (config labels) and ONNX Runtime methods run for this entry;
    #: None: all. The others show "—".
    methods: tuple[str, ...] | None = None
    ort_methods: tuple[str, ...] | None = None
    #: Which test images run on the AVX2 kernels under QEMU (``avx2_subset``): "first", or
    #: "drawn" for a test set sorted by class (cifar10_test.npz: its first 2 000 images are
    #: all airplanes and automobiles).
    avx2_pick: str = "first"


def avx2_subset(entry: ModelEntry, count: int) -> tuple[np.ndarray, str]:
    """Indices into ``entry.test`` of the images run under QEMU, and their description."""
    total = len(entry.test.y)
    if count >= total:
        return np.arange(total), f"all {total} test images"
    if entry.avx2_pick == "drawn":
        return (draw(total, count, seed=0),
                f"{count} of the {total} test images drawn with numpy.random.default_rng(0), "
                "in file order (the set is sorted by class: its first "
                f"{count} cover {len(np.unique(entry.test.y[:count]))} of the "
                f"{len(np.unique(entry.test.y))} classes)")
    return np.arange(count), f"the first {count} of the {total} test images"


def nchw_set(path: str, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``index`` (default all) of a zoo image set (HWC uint8 arrays or JPEG bytes,
    read by ``onnxquant.data.read_image_set``) as NCHW float32 0..255, with int64 labels."""
    images, labels = read_image_set(path, index)
    if images.ndim == 3:  # greyscale [N, H, W]
        images = images[..., None]
    return images.transpose(0, 3, 1, 2).astype(np.float32), labels.astype(np.int64)


def resnet8_cifar10(zoo: str) -> ModelEntry:
    folder = os.path.join(zoo, "cifar10")
    train = os.path.join(folder, "cifar10_train_jpeg.npz")
    with np.load(train) as data:
        total = len(data["offsets"]) - 1
    picked = draw(total, 500, seed=0)
    calibration, _ = nchw_set(train, picked)
    # The validation split of the models/cifar networks, less the calibration images.
    # ResNet8 (MLPerf Tiny) was trained on all 50 000 training images, these included:
    # they choose a method, their top-1 is not an estimate of accuracy.
    held_out = np.setdiff1d(np.sort(cifar_data_module().validation_indices()), picked)
    x_val, y_val = nchw_set(train, held_out)
    x, y = nchw_set(os.path.join(folder, "cifar10_test.npz"))
    return ModelEntry(
        name="ResNet8 (CIFAR-10)",
        path=os.path.join(folder, "resnet8_cifar10.onnx"),
        calibration=calibration,
        calibration_description="500 images of cifar10_train_jpeg.npz drawn with "
                                "numpy.random.default_rng(0) (file order), decoded with Pillow",
        validation=LabelledSet(
            x_val, y_val,
            f"{len(y_val)} images of cifar10_train_jpeg.npz: the models/cifar validation "
            "split less the calibration images (ResNet8 was trained on them: they choose "
            "the method, their top-1 is not an accuracy estimate)"),
        test=LabelledSet(x, y, f"all {len(y)} images of cifar10_test.npz"),
        avx2_pick="drawn",
    )


def mnist_cnn(zoo: str) -> ModelEntry:
    folder = os.path.join(zoo, "mnist")
    x, y = nchw_set(os.path.join(folder, "mnist_test.npz"))
    return ModelEntry(
        name="MNIST CNN",
        path=os.path.join(folder, "mnist_cnn.onnx"),
        calibration=x[:500],
        calibration_description="mnist_test.npz images 0-499",
        test=LabelledSet(x[500:], y[500:], "mnist_test.npz images 500-9999"),
    )


def fashion_cnn(zoo: str) -> ModelEntry:
    """The demo's model and data (``onnxquant.demo.default_demo_data``): Debian's
    Fashion-MNIST, not the zoo."""
    del zoo
    from onnxquant.datasets import FASHION_MNIST_ROOT
    from onnxquant.demo import default_demo_data, default_model_path

    name = "Fashion-MNIST CNN (demo)"
    if not os.path.isdir(FASHION_MNIST_ROOT):
        raise MissingModel(name, f"{FASHION_MNIST_ROOT} does not exist (Debian's "
                                 "dataset-fashion-mnist is not installed)")
    data = default_demo_data()
    return ModelEntry(
        name=name, path=default_model_path(), calibration=data.calibration,
        calibration_description=(
            f"{len(data.calibration)} of the 60000 training images of Debian's "
            "dataset-fashion-mnist drawn with numpy.random.default_rng(0) (file order), / 255 "
            "(`onnxquant.demo.default_demo_data`, as `onnxquant demo`)"),
        test=LabelledSet(data.test_inputs, data.test_labels,
                         f"all {len(data.test_labels)} test images (t10k)"))


class MissingModel(FileNotFoundError):
    """A model entry whose ONNX file does not exist (yet): skipped, with a note."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


CIFAR_DIR = os.path.join(REPO, "models", "cifar")
#: The methods run by default on the models/cifar networks: all ten and ONNX Runtime's
#: three (every method costs a pass over 15 000 images, ViT's about 20 s on an idle CPU and
#: twice that on a busy one, and ONNX Runtime's calibration 5-60 s more per method).
#: ``--cifar-methods`` and ``--cifar-ort-methods`` narrow them for a shorter run; the
#: validation set chooses each tool's best among those run.
CIFAR_METHODS = ("MIN_MAX_ASYM", "MIN_MAX_SYM", "ENTROPY_ASYM", "ENTROPY_SYM",
                 "PERCENTILE_ASYM", "PERCENTILE_SYM", "MSE_ASYM", "MSE_SYM",
                 "SQNR_ASYM", "SQNR_SYM",
                 "ENTROPY_ASYM (clip_bounded_outputs=True)",
                 "ENTROPY_SYM (clip_bounded_outputs=True)")
CIFAR_ORT_METHODS = ("MinMax", "Entropy", "Percentile")
#: The CIFAR-10 networks trained in this repository (models/cifar/nets.py): file stem -> name.
CIFAR_NETS = {
    "resnet": "ResNet",
    "mobilenetv2": "MobileNetV2",
    "efficientnet": "EfficientNet",
    "convnext": "ConvNeXt",
    "vit": "ViT",
}


def cifar_data_module():
    """``models/cifar/data.py`` (numpy and Pillow only), imported from its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnxquant_bench_cifar_data",
                                                  os.path.join(CIFAR_DIR, "data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=2)
def cifar_sets(zoo: str) -> tuple[np.ndarray, str, LabelledSet, LabelledSet]:
    """The calibration samples, their description, the validation set and the test set of
    the models/cifar networks (shared by every entry: decoded and preprocessed once)."""
    data = cifar_data_module()
    x_train, _, x_val, y_val, _ = data.load_train_val(zoo)
    pick = draw(len(x_train), 500, seed=0)
    calibration = data.preprocess(x_train[pick])
    x_test, y_test = data.load_test(zoo)
    val = LabelledSet(data.preprocess(x_val), y_val.astype(np.int64),
                      f"the {len(y_val)} held-out training images of models/cifar/data.py "
                      "(`load_train_val`: not trained on)")
    test = LabelledSet(data.preprocess(x_test), y_test.astype(np.int64),
                       f"all {len(y_test)} images of cifar10_test.npz")
    description = (f"500 of the {len(x_train)} training images of models/cifar/data.py "
                   "(`load_train_val`, the validation images left out) drawn with "
                   "numpy.random.default_rng(0) (file order); `data.preprocess`")
    return calibration, description, val, test


def cifar_entry(stem: str, dynamo: bool = False) -> Callable[[str], ModelEntry]:
    """Builder of the entry of ``models/cifar/<stem>.onnx`` (TorchScript export) or
    ``<stem>.dynamo.onnx`` (``torch.onnx.export(dynamo=True)``)."""
    filename = f"{stem}.dynamo.onnx" if dynamo else f"{stem}.onnx"

    name = f"{CIFAR_NETS[stem]} (CIFAR-10{', dynamo export' if dynamo else ''})"

    def build(zoo: str) -> ModelEntry:
        path = os.path.join(CIFAR_DIR, filename)
        if not os.path.isfile(path):
            raise MissingModel(name, f"{os.path.relpath(path, REPO)} does not exist (yet)")
        calibration, description, val, test = cifar_sets(zoo)
        return ModelEntry(
            name=name, path=path, methods=CIFAR_METHODS, ort_methods=CIFAR_ORT_METHODS,
            avx2_pick="drawn",
            calibration=calibration, calibration_description=description,
            test=test, validation=val)
    return build


#: key -> builder(zoo path) -> ModelEntry. Table rows follow this order.
MODELS: dict[str, Callable[[str], ModelEntry]] = {
    "resnet8": resnet8_cifar10,
    "mnist": mnist_cnn,
    "fashion": fashion_cnn,
    **{f"cifar-{stem}": cifar_entry(stem) for stem in CIFAR_NETS},
    **{f"cifar-{stem}-dynamo": cifar_entry(stem, dynamo=True) for stem in CIFAR_NETS},
}
#: The entries run by default (the dynamo exports hold the same weights: ``--models``).
DEFAULT_MODELS = [k for k in MODELS if not k.endswith("-dynamo")]
