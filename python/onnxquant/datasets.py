"""Dataset readers used for calibration and evaluation.

This module depends only on the standard library and numpy, and imports
nothing else from ``onnxquant``, so it can be loaded on its own (for example
by ``models/train_fashion_cnn.py`` before the native extension is built).

Fashion-MNIST is read from the IDX files shipped by the Debian package
``dataset-fashion-mnist``::

    /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
    /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
    /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
    /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "load_fashion_mnist",
    "read_idx",
]

#: Default install location of the Debian package ``dataset-fashion-mnist``.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: Class names, indexed by label value.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# File-name prefix for each accepted split name.
_SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}

# IDX element-type codes (third byte of the magic number).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    The IDX format is a 4-byte magic number ``00 00 <type> <ndim>``, then
    ``ndim`` big-endian uint32 dimension sizes, then the data in C order.

    Args:
        path: Path to a ``.idx*-ubyte`` or ``.idx*-ubyte.gz`` file.

    Returns:
        The array, with the shape stored in the file and a native-endian
        dtype.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the header is malformed or the data size is wrong.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in
                  np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(
            f"{path}: expected {expected} data bytes for shape {shape}, "
            f"found {len(raw) - header_size}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _split_paths(split: str, root: str) -> tuple[str, str]:
    """Return the (images, labels) file paths for a Fashion-MNIST split."""
    try:
        prefix = _SPLIT_PREFIX[split]
    except KeyError:
        raise ValueError(
            f"unknown Fashion-MNIST split {split!r}; "
            f"expected one of {sorted(_SPLIT_PREFIX)}") from None
    images = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    labels = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels


def _require_files(paths: tuple[str, ...], root: str) -> None:
    """Raise a helpful FileNotFoundError if any dataset file is missing."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            "Fashion-MNIST files not found: " + ", ".join(missing) + ". "
            "Install them with `apt-get install dataset-fashion-mnist` "
            f"(default location {FASHION_MNIST_ROOT}), or pass the folder "
            f"that holds them as root= (got {root!r}).")


def load_fashion_mnist(
        split: str,
        root: str = FASHION_MNIST_ROOT,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST from gzip-compressed IDX files.

    Args:
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000 images;
            ``"t10k"`` is accepted as an alias).
        root: Folder holding the four files
            ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``. Defaults
            to where the Debian package ``dataset-fashion-mnist`` installs
            them.

    Returns:
        ``(images, labels)``: ``images`` is uint8 ``[N, 28, 28]`` with raw
        pixel values 0..255 (no scaling), ``labels`` is uint8 ``[N]`` with
        class indices 0..9 (see ``FASHION_MNIST_CLASSES``).

    Raises:
        FileNotFoundError: If the files are missing; the message says how to
            install them.
        ValueError: If ``split`` is unknown or the files are inconsistent.
    """
    images_path, labels_path = _split_paths(split, root)
    _require_files((images_path, labels_path), root)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 [N, H, W] images, "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 [N] labels, "
                         f"got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but "
                         f"{labels.shape[0]} labels")
    return images, labels
