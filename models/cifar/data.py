"""CIFAR-10 data for the models in ``models/cifar``: loading, the validation split, preprocessing.

The data is the JPEG copy of CIFAR-10 in the shared model zoo (``../shared/zoo/cifar10`` beside the
project checkout; see its README):

* ``cifar10_train_jpeg.npz``: the 50 000 training images as JPEG bytes (``jpeg``, ``offsets``,
  ``labels``, ``classes``). They are decoded once with Pillow and the decoded uint8 array is cached
  in the temporary directory (never in the repository).
* ``cifar10_test.npz``: the 10 000 test images, ``images`` uint8 [10000, 32, 32, 3], ``labels``.

Validation split: 5 000 of the training images, ``numpy.random.default_rng(0).permutation(50000)
[:5000]`` (:func:`validation_indices`); the models are trained on the other 45 000.

Preprocessing, the same for every model (and written into each exported model's
``metadata_props["preprocessing"]``): RGB uint8 NHWC -> float32 NCHW,
``(x / 255 - mean) / std`` per channel with the CIFAR-10 training-set statistics
:data:`CIFAR_MEAN` and :data:`CIFAR_STD` (:func:`preprocess`).

Only numpy and Pillow are needed here (no torch), so the accuracy benchmark can import this module.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

import numpy as np

#: Per-channel (R, G, B) mean and standard deviation of the CIFAR-10 training images in [0, 1].
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

#: The preprocessing string stored in each exported model's ``metadata_props["preprocessing"]``.
PREPROCESSING = (
    "RGB uint8 NHWC -> float32 NCHW [N,3,32,32]; (x / 255 - mean) / std per channel, "
    f"mean = {list(CIFAR_MEAN)}, std = {list(CIFAR_STD)}"
)

NUM_TRAIN = 50_000
VAL_SIZE = 5_000
VAL_SEED = 0

TRAIN_FILE = "cifar10_train_jpeg.npz"
TEST_FILE = "cifar10_test.npz"

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_zoo_dir() -> str:
    """``$ONNXQUANT_ZOO`` if set, else ``../shared/zoo`` beside the project checkout."""
    return os.environ.get("ONNXQUANT_ZOO",
                          os.path.join(os.path.dirname(_REPO_ROOT), "shared", "zoo"))


def _cifar_path(zoo_dir: str | None, name: str) -> str:
    path = os.path.join(zoo_dir or default_zoo_dir(), "cifar10", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}")
    return path


def validation_indices(n: int = NUM_TRAIN, size: int = VAL_SIZE, seed: int = VAL_SEED) -> np.ndarray:
    """Indices (into the 50 000 training images) of the validation split."""
    return np.random.default_rng(seed).permutation(n)[:size]


def _decode_jpegs(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode every JPEG of ``cifar10_train_jpeg.npz``; return (images uint8 NHWC, labels)."""
    from PIL import Image

    with np.load(path) as data:
        jpeg, offsets, labels = data["jpeg"], data["offsets"], data["labels"]
    images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(images)):
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as im:
            images[i] = np.asarray(im.convert("RGB"))
    return images, labels.astype(np.uint8)


def load_train_images(zoo_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 50 000 decoded training images (uint8 [50000,32,32,3]) and labels (uint8).

    The decoded array is cached in the temporary directory under a name derived from the npz
    file's size and modification time, so a changed file is decoded again.
    """
    path = _cifar_path(zoo_dir, TRAIN_FILE)
    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = os.path.join(tempfile.gettempdir(),
                         f"onnxquant_cifar10_train_decoded_{key.hexdigest()[:12]}.npz")
    if os.path.isfile(cache):
        try:
            with np.load(cache) as data:
                return data["images"], data["labels"]
        except (OSError, ValueError, KeyError):
            pass  # damaged cache: decode again
    images, labels = _decode_jpegs(path)
    tmp = f"{cache}.{os.getpid()}.tmp.npz"
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, cache)
    return images, labels


def load_train_val(zoo_dir: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_val, y_val, val_indices)``.

    ``x_*`` are uint8 [N,32,32,3] (NHWC, RGB), ``y_*`` uint8; 45 000 training and 5 000 validation
    images; ``val_indices`` are the validation images' indices in the 50 000 training images.
    """
    images, labels = load_train_images(zoo_dir)
    val = validation_indices(len(images))
    mask = np.ones(len(images), dtype=bool)
    mask[val] = False
    return images[mask], labels[mask], images[val], labels[val], val


def load_test(zoo_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the 10 000 test images (uint8 [10000,32,32,3], NHWC RGB) and labels (uint8)."""
    with np.load(_cifar_path(zoo_dir, TEST_FILE)) as data:
        return data["images"], data["labels"].astype(np.uint8)


def load_classes(zoo_dir: str | None = None) -> list[str]:
    """The 10 class names, in label order."""
    with np.load(_cifar_path(zoo_dir, TEST_FILE)) as data:
        return [str(c) for c in data["classes"]]


def preprocess(x_uint8: np.ndarray) -> np.ndarray:
    """Map uint8 [N,32,32,3] RGB images to the models' float32 [N,3,32,32] input."""
    mean = np.asarray(CIFAR_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    x = x_uint8.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
