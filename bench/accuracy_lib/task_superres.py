"""Super-resolution (sub-pixel CNN ×3): PSNR against FP32 and against a reference."""

from __future__ import annotations

import os

import numpy as np

from .task_faces import FACE_CALIBRATION, _split_description, face_photos
from .tasks import Column, TaskEntry

SR_SCALE = 3


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per image (axis 0) of images in 0..1 (both clipped to 0..1 first)."""
    d = np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1).astype(np.float64)
    mse = (d * d).reshape(len(d), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))


def superres_entry(zoo: str) -> TaskEntry:
    """Each photo centre-cropped to a square and resized (bicubic) to 672×672: the reference;
    that image resized (bicubic) to 224×224 is the input; its Y channel (Pillow's YCbCr)
    scaled to 0..1 is what the model sees and the reference's Y what its output is compared
    with."""
    from PIL import Image

    paths = face_photos(zoo)
    cal_text, eval_text, split = _split_description(paths)
    size = 224
    lows, highs, bicubic = [], [], []

    def y(image) -> np.ndarray:
        return np.asarray(image.convert("YCbCr"), np.float32)[..., 0] / 255.0
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            high = im.crop((left, top, left + side, top + side)).resize(
                (size * SR_SCALE,) * 2, Image.BICUBIC)
        low = high.resize((size, size), Image.BICUBIC)
        lows.append(y(low)[None])
        highs.append(y(high)[None])
        bicubic.append(np.asarray(low.convert("YCbCr").split()[0].resize(
            high.size, Image.BICUBIC), np.float32)[None] / 255.0)
    x, ref, bic = np.stack(lows), np.stack(highs)[FACE_CALIBRATION:], \
        np.stack(bicubic)[FACE_CALIBRATION:]

    def score(fp32: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, float]:
        a, b = fp32["output"], q["output"]
        vs_fp32 = psnr(a, b) if a is not b else np.full(len(a), np.inf)
        return {"psnr_fp32": float(vs_fp32.mean()), "psnr_fp32_min": float(vs_fp32.min()),
                "psnr_ref": float(psnr(ref, b).mean()),
                "psnr_ref_delta": float((psnr(ref, b) - psnr(ref, a)).mean())}
    return TaskEntry(
        name="Sub-pixel CNN ×3", group="superres",
        path=os.path.join(zoo, "superres", "super_resolution.onnx"),
        calibration=x[:FACE_CALIBRATION], evaluation=x[FACE_CALIBRATION:],
        calibration_description=cal_text,
        evaluation_description=eval_text,
        score=score, reference={"psnr_ref": float(psnr(ref, bic).mean())},
        notes=[split, ("Super-resolution: each photo centre-cropped to a square and resized "
                "(bicubic) to 672×672 is the reference; that image resized (bicubic) to 224×224 is the input. The "
                "model sees the Y channel (Pillow's YCbCr) / 255 and is compared on Y; "
                "outputs are clipped to 0..1 before PSNR (peak 1). PSNR is per image, then "
                "averaged.")])


SUPERRES_COLUMNS = [
    Column("psnr_fp32", "PSNR vs FP32 (dB, mean)", "{:.2f}"),
    Column("psnr_fp32_min", "PSNR vs FP32 (dB, worst image)", "{:.2f}"),
    Column("psnr_ref", "PSNR vs 672×672 reference (dB)", "{:.2f}", fp32=True),
    Column("psnr_ref_delta", "vs reference: INT8 − FP32 (dB)", "{:+.3f}"),
]
