"""Calibration data files: reading ``.npz`` sample files, converting the zoo's sets.

A sample file is an ``.npz`` whose keys are the model's input names, each array
in the model's layout and dtype with axis 0 indexing samples, plus an optional
``labels`` array. For an input of shape ``[1, C, H, W]`` (fixed batch 1) the
array is ``[N, C, H, W]`` and sample ``i`` is ``array[i:i+1]``; an array with one
more axis than the input (``[N, 1, C, H, W]``) gives ``array[i]``.

The zoo's sets (``../shared/zoo``) are not in that form (HWC uint8 images, JPEG
bytes): :func:`convert_zoo` and ``python -m onnxquant.data`` write such a file
for a given model.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from collections.abc import Iterator

import numpy as np

from onnxquant._model import ModelLike, load_model, model_files, write_file_atomic
from onnxquant._samples import InputSpec, input_specs
from onnxquant.errors import CalibrationDataError, InvalidArgumentError, OnnxQuantError

__all__ = ["NpzSamples", "convert_zoo", "load_samples", "main", "read_image_set"]

LABELS_KEY = "labels"


def _open_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise CalibrationDataError(f"Calibration data file '{path}' does not exist.")
    try:
        # numpy leaves a path it opened unclosed when the archive is bad: own the file.
        with open(path, "rb") as f:
            archive = np.load(f, allow_pickle=False)
            if not hasattr(archive, "files"):
                raise ValueError("it holds a single array, not named arrays")
            with archive:
                return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CalibrationDataError(
            f"Calibration data file '{path}' is not a readable .npz archive of numeric "
            f"arrays ({e}); write it with numpy.savez.") from e


class NpzSamples:
    """The samples of one ``.npz`` file, as dicts by input name.

    Iterable (each pass yields every sample again, as views into arrays read
    once) and sized; ``labels`` is the file's ``labels`` array or None.
    """

    def __init__(self, path: str, arrays: dict[str, np.ndarray], slice_batch: dict[str, bool],
                 count: int, labels: np.ndarray | None) -> None:
        self.path = path
        self._arrays = arrays
        self._slice = slice_batch
        self._count = count
        self.labels = labels

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self._count):
            yield {name: (a[i:i + 1] if self._slice[name] else a[i])
                   for name, a in self._arrays.items()}


def _check_key(path: str, spec: InputSpec, array: np.ndarray) -> bool:
    """Checks one array against its input; returns whether samples are slices."""
    if spec.dtype is not None and array.dtype != spec.dtype:
        raise CalibrationDataError(
            f"Calibration data file '{path}', key '{spec.name}': expected dtype {spec.dtype} "
            f"(the model's input), got {array.dtype}.")
    if spec.shape is None:
        return array.ndim >= 1
    rank = len(spec.shape)
    if array.ndim == rank and rank > 0:
        rest, sliced = array.shape[1:], True
    elif array.ndim == rank + 1:
        rest, sliced = array.shape[1:], False
    else:
        raise CalibrationDataError(
            f"Calibration data file '{path}', key '{spec.name}': shape {list(array.shape)} "
            f"does not fit the input {spec.shape_text()}; axis 0 indexes samples, then the "
            "input's own layout follows.")
    dims = spec.shape[1:] if sliced else spec.shape
    if any(isinstance(d, int) and d != s for d, s in zip(dims, rest)):
        raise CalibrationDataError(
            f"Calibration data file '{path}', key '{spec.name}': shape {list(array.shape)} "
            f"does not fit the input {spec.shape_text()}.")
    return sliced


def load_samples(npz_path: str | os.PathLike, model: ModelLike, *,
                 max_samples: int | None = None) -> NpzSamples:
    """Reads a sample file for ``model`` (ModelProto, bytes or path).

    Returns an :class:`NpzSamples`: iterate it for the samples (dicts by input
    name), ``len()`` for their number, ``.labels`` for the optional labels.
    ``max_samples`` (default None: all) keeps the first that many.

    Raises:
        CalibrationDataError: the file is missing or unreadable, lacks an input's
            key, has a key that is neither an input nor ``labels``, arrays of
            different lengths, an array whose dtype or shape does not fit
            its input, or an empty array (naming the file and key).
    """
    path = os.fspath(npz_path)
    specs = input_specs(load_model(model, load_external_data=False))
    arrays = _open_npz(path)
    names = [s.name for s in specs]
    for key in arrays:
        if key != LABELS_KEY and key not in names:
            raise CalibrationDataError(
                f"Calibration data file '{path}' has key '{key}', which is not an input of "
                f"the model; expected keys {names} (and optionally '{LABELS_KEY}').")
    for name in names:
        if name not in arrays:
            raise CalibrationDataError(
                f"Calibration data file '{path}' lacks key '{name}' (a model input); it has "
                f"{sorted(arrays)}.")
    lengths = {key: (len(a) if a.ndim else 0) for key, a in arrays.items()}
    count = lengths[names[0]] if names else 0
    for key, length in lengths.items():
        if length != count:
            raise CalibrationDataError(
                f"Calibration data file '{path}': key '{key}' holds {length} samples but "
                f"'{names[0]}' holds {count}; every array indexes the same samples on axis 0.")
    slices = {s.name: _check_key(path, s, arrays[s.name]) for s in specs}
    for spec in specs:
        if arrays[spec.name].size == 0:
            raise CalibrationDataError(
                f"Calibration data file '{path}', key '{spec.name}' holds no values (shape "
                f"{list(arrays[spec.name].shape)}): calibration needs samples with values; "
                "check how the file was written.")
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 0:
            raise InvalidArgumentError(f"max_samples must be an int >= 0, got {max_samples!r}.")
        count = min(count, max_samples)
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        labels = labels[:count]
    return NpzSamples(path, {n: arrays[n] for n in names}, slices, count, labels)


# --------------------------------------------------------------------------
# The zoo's sets -> sample files
# --------------------------------------------------------------------------

def _layout(spec: InputSpec) -> tuple[str, int, int | None, int | None]:
    """(``"NCHW"`` or ``"NHWC"``, channels, height, width) of an image input."""
    shape = spec.shape
    if shape is None or len(shape) != 4:
        raise InvalidArgumentError(
            f"Input '{spec.name}' has shape {spec.shape_text()}; the zoo converter makes "
            "image batches [N, C, H, W] or [N, H, W, C] only.")
    if shape[1] in (1, 3):
        return "NCHW", shape[1], _dim(shape[2]), _dim(shape[3])
    if shape[3] in (1, 3):
        return "NHWC", shape[3], _dim(shape[1]), _dim(shape[2])
    raise InvalidArgumentError(
        f"Input '{spec.name}' has shape {spec.shape_text()}: no channel axis of size 1 or 3.")


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) else None


def _iter_images(arrays: dict[str, np.ndarray], index: np.ndarray,
                 mode: str) -> Iterator[np.ndarray]:
    """Images ``index`` of an image set, one HWC uint8 array each (JPEG
    bytes decoded with Pillow into ``mode``, "RGB" or "L")."""
    if "images" in arrays:
        return (arrays["images"][i] for i in index)
    from PIL import Image

    jpeg, offsets = arrays["jpeg"], arrays["offsets"]
    return (np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes()))
                       .convert(mode)) for i in index)


def _set_size(source: str, arrays: dict[str, np.ndarray]) -> int:
    if "images" in arrays:
        return len(arrays["images"])
    if "jpeg" in arrays and "offsets" in arrays:
        return len(arrays["offsets"]) - 1
    raise CalibrationDataError(
        f"Data set '{source}' has neither an 'images' array nor 'jpeg' and 'offsets'; it "
        f"has {sorted(arrays)}.")


def read_image_set(source: str | os.PathLike, indices: np.ndarray | None = None, *,
                   mode: str = "RGB") -> tuple[np.ndarray, np.ndarray | None]:
    """The images of a zoo image set (an ``.npz`` with ``images`` as HWC uint8,
    or ``jpeg`` bytes with ``offsets``: image i is ``jpeg[offsets[i]:offsets[i+1]]``)
    as one uint8 array [N, H, W, C], with its ``labels`` (or None).

    ``indices`` (default all) picks images in the order given; JPEG images are
    decoded into ``mode`` ("RGB" or "L").

    Raises:
        CalibrationDataError: the file is missing, unreadable, or holds no images.
    """
    source = os.fspath(source)
    arrays = _open_npz(source)
    total = _set_size(source, arrays)
    index = np.arange(total) if indices is None else np.asarray(indices)
    images = np.stack(list(_iter_images(arrays, index, mode)))
    labels = arrays.get(LABELS_KEY)
    return images, None if labels is None else labels[index]


def _read_images(source: str, pick: np.ndarray | None, channels: int
                 ) -> tuple[Iterator[np.ndarray], int, np.ndarray | None]:
    arrays = _open_npz(source)
    total = _set_size(source, arrays)
    index = np.arange(total) if pick is None else pick(total)
    labels = arrays.get(LABELS_KEY)
    mode = "L" if channels == 1 else "RGB"
    return (_iter_images(arrays, index, mode), len(index),
            None if labels is None else labels[index])


def convert_zoo(source: str | os.PathLike, model: ModelLike, output: str | os.PathLike, *,
                count: int | None = None, seed: int = 0, scale: float = 1.0,
                offset: float = 0.0, bgr: bool = False) -> int:
    """Writes a sample file for ``model`` from one of the zoo's image sets.

    ``source`` is an ``.npz`` with ``images`` (uint8 ``[N, H, W, 3]`` or
    ``[N, H, W]``) or with ``jpeg`` bytes and ``offsets`` (image ``i`` is
    ``jpeg[offsets[i]:offsets[i+1]]``), and optionally ``labels``. Each image
    becomes ``(x - offset) * scale`` (defaults 0 and 1: raw 0..255, as the
    zoo's ResNet8 and MNIST models take), with channels reversed when ``bgr``
    (default False), in the model's layout (NCHW or NHWC, read from its one
    input) and dtype; ``labels`` are copied along. ``count`` (default None:
    all) picks that many images at random with
    ``numpy.random.default_rng(seed)`` (default seed 0), in file order. The
    output is written whole or not at all. Returns the number of samples.

    Raises:
        CalibrationDataError: an unreadable source, or images whose size or
            channels do not fit the model.
        InvalidArgumentError: a model that does not take one image batch, or an
            output path that is the image set or the model.
    """
    protected = [os.path.realpath(source)]
    if isinstance(model, (str, os.PathLike)):
        protected += model_files(model)
    if os.path.realpath(output) in protected:
        raise InvalidArgumentError(
            f"Refusing to write '{os.fspath(output)}': it is an input (the image set or the "
            "model), which onnxquant never overwrites. Choose another output path.")
    specs = input_specs(load_model(model, load_external_data=False))
    if len(specs) != 1:
        raise InvalidArgumentError(
            f"The zoo converter fills models with one input; this one has {len(specs)}.")
    spec = specs[0]
    layout, channels, height, width = _layout(spec)
    pick = None
    if count is not None:
        rng = np.random.default_rng(seed)

        def pick(total: int) -> np.ndarray:
            if count > total:
                raise InvalidArgumentError(f"count={count}, but the set holds {total} images.")
            return np.sort(rng.choice(total, size=count, replace=False))

    images, n, labels = _read_images(os.fspath(source), pick, channels)
    dtype = spec.dtype if spec.dtype is not None else np.dtype(np.float32)
    out = None
    for k, image in enumerate(images):
        hwc = image[:, :, None] if image.ndim == 2 else image
        if hwc.shape[2] != channels:
            raise CalibrationDataError(
                f"Image {k} of '{source}' has {hwc.shape[2]} channels; the model takes "
                f"{channels}.")
        if (height and hwc.shape[0] != height) or (width and hwc.shape[1] != width):
            raise CalibrationDataError(
                f"Image {k} of '{source}' is {hwc.shape[0]}x{hwc.shape[1]}; the model takes "
                f"{height}x{width} (the converter does not resize).")
        x = (hwc.astype(np.float32) - offset) * scale
        if bgr:
            x = x[:, :, ::-1]
        if layout == "NCHW":
            x = x.transpose(2, 0, 1)
        if out is None:
            out = np.empty((n, *x.shape), dtype=dtype)
        out[k] = x
    if out is None:
        raise CalibrationDataError(f"Data set '{source}' holds no images.")
    arrays = {spec.name: out}
    if labels is not None:
        arrays[LABELS_KEY] = labels
    _savez_atomic(os.fspath(output), arrays)
    return n


def _savez_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    write_file_atomic(path, lambda f: np.savez(f, **arrays))


def main(argv: list[str] | None = None) -> int:
    """``python -m onnxquant.data``: convert a zoo set into a sample file."""
    parser = argparse.ArgumentParser(
        prog="python -m onnxquant.data",
        description="Convert one of the zoo's image sets (.npz with 'images', or 'jpeg' and "
                    "'offsets') into a calibration sample file for a model: the model's input "
                    "name as key, its layout and dtype, axis 0 indexing samples.")
    parser.add_argument("source", help="the zoo's .npz, e.g. cifar10/cifar10_train_jpeg.npz")
    parser.add_argument("--model", required=True, help="the .onnx model the samples are for")
    parser.add_argument("-o", "--output", required=True, help="the .npz file to write")
    parser.add_argument("--count", type=int, default=None,
                        help="pick this many images at random (default: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of numpy.random.default_rng for --count (default 0)")
    parser.add_argument("--offset", type=float, default=0.0,
                        help="subtracted from each pixel value (default 0)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies each pixel value after --offset (default 1: raw 0..255)")
    parser.add_argument("--bgr", action="store_true",
                        help="reverse the channel order (RGB to BGR), e.g. for YuNet")
    args = parser.parse_args(argv)
    from onnxquant._signals import Terminated, orderly_termination

    try:
        with orderly_termination():
            n = convert_zoo(args.source, args.model, args.output, count=args.count,
                            seed=args.seed, scale=args.scale, offset=args.offset, bgr=args.bgr)
    except OnnxQuantError as e:
        print(f"onnxquant.data: error: {e}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"onnxquant.data: stopped by signal {e.signum}; no partial file left",
              file=sys.stderr)
        return 128 + e.signum
    print(f"wrote {n} samples to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
