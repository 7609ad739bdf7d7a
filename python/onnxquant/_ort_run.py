"""ONNX Runtime on arrays: session options and batched prediction.

This module imports only numpy and onnxruntime, never onnxquant, because it
is also the program that :mod:`onnxquant.qemu` runs under an emulated CPU,
as a script: onnxquant's native extension need not run there. Run as a
script, it reads a JSON job (argument 1)::

    {"inputs": "in.npz", "outputs": "out.npz", "batch_size": 256,
     "threads": null, "runs": [{"model": "m.onnx", "emulate": false}, ...]}

runs every model on the array ``inputs`` of ``in.npz`` and writes the first
output of run ``i`` to ``out.npz`` as ``output<i>``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort


def session_options(*, emulate: bool, threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime's default session options, except that ``emulate=True``
    sets ``session.disable_quant_qdq = 1`` (QDQ pairs run as float arithmetic
    instead of fused integer kernels) and ``threads`` sets the intra-op threads."""
    so = ort.SessionOptions()
    if emulate:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
    return so


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


def run_job(job_path: str) -> None:
    """Runs the job described by the JSON file ``job_path`` (module docstring)."""
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    with np.load(job["inputs"]) as data:
        inputs = data["inputs"]
    outputs = {}
    for i, run in enumerate(job["runs"]):
        session = ort.InferenceSession(
            run["model"], session_options(emulate=run["emulate"], threads=job["threads"]),
            providers=["CPUExecutionProvider"])
        outputs[f"output{i}"] = predict(session, inputs, job["batch_size"])
    np.savez(job["outputs"], **outputs)


if __name__ == "__main__":
    run_job(sys.argv[1])
