"""ONNX Runtime's AVX2 kernels under QEMU: several models at a time (``run_avx2``)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnxquant.errors import QemuError
from onnxquant.qemu import predict_avx2

from .common import first_line


@dataclass
class Avx2Job:
    """One model's fused outputs under ``qemu-x86_64 -cpu Haswell`` (or why there are
    none), with the seconds the run took."""

    model: bytes
    inputs: np.ndarray
    outputs: np.ndarray | None = None
    seconds: float = 0.0
    error: str | None = None


def run_avx2(jobs: list[Avx2Job], workers: int, threads: int | None,
             timeout: float | None) -> float:
    """Runs ``jobs`` (``onnxquant.qemu.predict_avx2``, default session options: fused
    integer kernels), ``workers`` at a time, each ONNX Runtime with ``threads`` intra-op
    threads; fills in each job's outputs or error. Returns the wall time in seconds."""
    def one(job: Avx2Job) -> None:
        start = time.perf_counter()
        try:
            job.outputs = predict_avx2(job.model, job.inputs, threads=threads, timeout=timeout)
        except QemuError as e:
            job.error = first_line(e)
        job.seconds = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, jobs))
    return time.perf_counter() - start
