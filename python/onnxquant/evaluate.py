"""Running a model on labelled data: FP32 against INT8.

Helpers for the main job, the tests and the benchmarks. They run ONNX Runtime
on the CPU; an INT8 (QDQ) model runs either with its QuantizeLinear /
DequantizeLinear pairs emulated in float (``emulate=True``: the result does
not depend on the CPU's integer instructions) or with ONNX Runtime's fused
integer kernels (``emulate=False``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["Accuracy", "compare_top1", "make_session", "predict"]


def make_session(model: onnx.ModelProto | bytes | str, *, emulate: bool = True,
                 threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for ``model``.

    ``emulate=True`` sets ``session.disable_quant_qdq = 1``, so QDQ pairs run
    as float arithmetic instead of being fused into integer kernels.
    """
    so = ort.SessionOptions()
    if emulate:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _batches(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), batch):
        yield x[start:start + batch]


def predict(session: ort.InferenceSession, inputs: np.ndarray,
            batch_size: int = 256) -> np.ndarray:
    """The first output of a one-input model for every row of ``inputs``.

    ``inputs`` has the model input's layout with axis 0 as the batch axis,
    holding every sample. Rows are fed ``batch_size`` at a time where the
    model's batch dimension is dynamic, and in the model's fixed batch
    otherwise (one by one for a fixed-batch-1 model).
    """
    meta = session.get_inputs()[0]
    batch_dim = meta.shape[0] if meta.shape else None
    fixed = isinstance(batch_dim, int)
    step = batch_dim if fixed else batch_size
    outs = [session.run(None, {meta.name: chunk})[0]
            for chunk in _batches(inputs, step)]
    return np.concatenate(outs, axis=0)


@dataclass(frozen=True)
class Accuracy:
    """Top-1 of a reference and a candidate model on the same images."""

    reference: float       # top-1, percent
    candidate: float       # top-1, percent
    agreement: float       # percent of images where both predict the same
    paired_se: float       # standard error of the paired difference, points
    count: int

    @property
    def drop(self) -> float:
        """Reference minus candidate top-1, in points."""
        return self.reference - self.candidate


def compare_top1(reference_logits: np.ndarray, candidate_logits: np.ndarray,
                 labels: np.ndarray) -> Accuracy:
    """Top-1 of two models' outputs against ``labels``, with the standard
    error of the paired difference (per image: correct_ref - correct_cand)."""
    a = (reference_logits.reshape(len(labels), -1).argmax(1) == labels)
    b = (candidate_logits.reshape(len(labels), -1).argmax(1) == labels)
    d = a.astype(np.float64) - b.astype(np.float64)
    n = len(labels)
    se = float(d.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else math.inf
    agree = (reference_logits.reshape(n, -1).argmax(1) ==
             candidate_logits.reshape(n, -1).argmax(1))
    return Accuracy(reference=float(a.mean() * 100), candidate=float(b.mean() * 100),
                    agreement=float(agree.mean() * 100), paired_se=se, count=n)
