"""Face detectors (Ultra-Light, YuNet): INT8 detections matched to FP32's."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx

from .tasks import Column, TaskEntry, pearson

FACE_SCORE_THRESHOLD = 0.7
FACE_NMS_IOU = 0.3
FACE_MATCH_IOU = 0.5
#: Face photos (sorted by file name) that calibrate; the others are evaluated.
FACE_CALIBRATION = 12


def face_photos(zoo: str) -> list[str]:
    folder = os.path.join(zoo, "face", "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith((".jpg", ".jpeg", ".png"))]


def _split_description(paths: list[str]) -> tuple[str, str, str]:
    """Short calibration and evaluation descriptions, and the note listing the files."""
    names = [os.path.basename(p) for p in paths]
    cal, ev = names[:FACE_CALIBRATION], names[FACE_CALIBRATION:]
    note = (f"Face photos (`face/images`, {len(names)} files sorted by name): calibration "
            f"{', '.join(cal)}; evaluation {', '.join(ev)}.")
    return (f"the first {len(cal)} face photos", f"the other {len(ev)}", note)


def face_inputs(paths: list[str], size: tuple[int, int], bgr_raw: bool) -> np.ndarray:
    """Photos resized (bilinear, aspect not kept) to ``size`` (width, height) as
    [N, 1, 3, H, W] float32: RGB (x - 127) / 128, or BGR 0..255 (``bgr_raw``)."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32)
        a = a[..., ::-1] if bgr_raw else (a - 127.0) / 128.0
        out.append(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return np.stack(out)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corner boxes a [n, 4] and b [m, 4] (x1, y1, x2, y2): [n, m]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[:, 2:] - x[:, :2], 0, None).prod(axis=1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[box_iou(boxes[i:i + 1], boxes[order])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def ultraface_scores(out: dict[str, np.ndarray]) -> np.ndarray:
    return out["scores"][..., 1]                           # [N, 4420]: the face class


def ultraface_boxes(out: dict[str, np.ndarray], i: int, keep: np.ndarray) -> np.ndarray:
    return out["boxes"][i, keep] * np.array([320, 240, 320, 240], dtype=np.float32)


YUNET_STRIDES = (8, 16, 32)


def yunet_scores(out: dict[str, np.ndarray]) -> np.ndarray:
    """sqrt(cls * obj), each clamped to [0, 1], over the three strides: [N, 2100]."""
    return np.concatenate([np.sqrt(np.clip(out[f"cls_{s}"][..., 0], 0, 1) *
                                   np.clip(out[f"obj_{s}"][..., 0], 0, 1))
                           for s in YUNET_STRIDES], axis=1)


def yunet_boxes(out: dict[str, np.ndarray], i: int, keep: np.ndarray, size: int = 320
                ) -> np.ndarray:
    """YuNet's anchor-free decoding (as OpenCV's FaceDetectorYN): at grid cell (r, c) of
    stride s, centre ((c, r) + bbox[0:2]) * s, size exp(bbox[2:4]) * s; input pixels."""
    cells, strides, offsets = [], [], []
    for s in YUNET_STRIDES:
        n = (size // s) ** 2
        cells.append(np.arange(n))
        strides.append(np.full(n, s))
        offsets.append(out[f"bbox_{s}"][i])
    cell, stride = np.concatenate(cells)[keep], np.concatenate(strides)[keep]
    b = np.concatenate(offsets)[keep].astype(np.float64)
    cols = size // stride
    cx, cy = (cell % cols + b[:, 0]) * stride, (cell // cols + b[:, 1]) * stride
    w, h = np.exp(b[:, 2]) * stride, np.exp(b[:, 3]) * stride
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def detections(scores: np.ndarray, boxes_of: Callable[[np.ndarray], np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores of one image after the score threshold and NMS."""
    keep = np.flatnonzero(scores >= FACE_SCORE_THRESHOLD)
    boxes = boxes_of(keep)
    kept = nms(boxes, scores[keep], FACE_NMS_IOU)
    return boxes[kept], scores[keep][kept]


def match(ref_boxes: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list[float]:
    """Greedy matching, highest score first, each detection to the unmatched reference
    box of highest IoU where that IoU >= FACE_MATCH_IOU: the IoUs of the matched pairs."""
    if not len(ref_boxes) or not len(boxes):
        return []
    iou = box_iou(boxes, ref_boxes)
    free = np.ones(len(ref_boxes), dtype=bool)
    matched = []
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(free, iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= FACE_MATCH_IOU:
            free[j] = False
            matched.append(float(cand[j]))
    return matched


def detector_score(scores_of, boxes_of):
    def score(fp32: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, float]:
        s_ref, s_q = scores_of(fp32), scores_of(q)
        n_ref = n_q = 0
        ious: list[float] = []
        for i in range(len(s_ref)):
            ref_boxes, _ = detections(s_ref[i], lambda k, i=i: boxes_of(fp32, i, k))
            boxes, scores = detections(s_q[i], lambda k, i=i: boxes_of(q, i, k))
            n_ref, n_q = n_ref + len(ref_boxes), n_q + len(boxes)
            ious += match(ref_boxes, boxes, scores)
        tp = len(ious)
        precision = tp / n_q if n_q else float("nan")
        recall = tp / n_ref if n_ref else float("nan")
        return {"fp32_detections": n_ref, "detections": n_q, "matched": tp,
                "precision": precision, "recall": recall,
                "f1": 2 * tp / (n_ref + n_q) if n_ref + n_q else float("nan"),
                "mean_iou": float(np.mean(ious)) if ious else float("nan"),
                "score_r": pearson(s_ref, s_q),
                "score_max_diff": float(np.abs(s_ref - s_q).max())}
    return score


DETECTOR_COLUMNS = [
    Column("detections", "detections", "{:.0f}", fp32=True),
    Column("matched", "matched", "{:.0f}"),
    Column("precision", "precision", "{:.3f}"),
    Column("recall", "recall", "{:.3f}"),
    Column("f1", "F1", "{:.3f}"),
    Column("mean_iou", "mean IoU", "{:.3f}"),
    Column("score_r", "score r", "{:.5f}"),
    Column("score_max_diff", "max abs score diff", "{:.4f}"),
]


def after_last_conv(model: onnx.ModelProto) -> list[str]:
    """The nodes between the last Convs and the graph outputs (walking back from the
    outputs, stopping at Conv nodes): Ultra-Light's head reshapes and concatenation,
    Softmax and in-graph box decoding (Slice, Mul, Add, Exp, Div, Sub, Concat). Found by
    data flow, so the same nodes in any topological order (ONNX Runtime's pre-processed
    graph reorders them)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen: dict[str, onnx.NodeProto] = {}
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.op_type == "Conv" or node.name in seen:
            continue
        seen[node.name] = node
        stack += list(node.input)
    return [n.name for n in model.graph.node if n.name in seen]


def face_entries(zoo: str) -> list[TaskEntry]:
    paths = face_photos(zoo)
    cal_text, eval_text, split = _split_description(paths)
    entries = []
    for filename, name in (("version-RFB-320.onnx", "Ultra-Light RFB-320"),
                           ("version-slim-320.onnx", "Ultra-Light slim-320")):
        x = face_inputs(paths, (320, 240), bgr_raw=False)
        entries.append(TaskEntry(
            name=name, group="detector", path=os.path.join(zoo, "face", filename),
            calibration=x[:FACE_CALIBRATION], evaluation=x[FACE_CALIBRATION:],
            calibration_description=cal_text + "; resized to 320×240, RGB (x − 127) / 128",
            evaluation_description=eval_text, notes=[split],
            score=detector_score(ultraface_scores, ultraface_boxes),
            variants=[("decoding in float", after_last_conv)]))
    x = face_inputs(paths, (320, 320), bgr_raw=True)
    entries.append(TaskEntry(
        name="YuNet n 320", group="detector",
        path=os.path.join(zoo, "face", "yunet_n_320_320.onnx"),
        calibration=x[:FACE_CALIBRATION], evaluation=x[FACE_CALIBRATION:],
        calibration_description=cal_text + "; resized to 320×320, BGR 0..255",
        evaluation_description=eval_text, notes=[split],
        score=detector_score(yunet_scores, yunet_boxes)))
    return entries
