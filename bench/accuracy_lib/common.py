"""Constants, the labelled image set and small helpers shared by the accuracy benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnx

import onnxquant as oq
from onnxquant.cpu import cpu_kernels
from onnxquant.qemu import qemu_executable

#: bench/ (this package's parent folder).
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(HERE)
DEFAULT_ZOO = os.environ.get("ONNXQUANT_ZOO", os.path.join(REPO, "..", "shared", "zoo"))

#: The library's default method: onnxquant's choice where an entry has no validation set,
#: and the one whose per-tensor errors and ranges are reported.
DEFAULT_METHOD = "MIN_MAX_ASYM"
#: ONNX Runtime's calibration methods compared, in table order.
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
#: ONNX Runtime's choice where an entry has no validation set: quantize_static's defaults
#: (MinMax, reduce_range=False).
ORT_DEFAULT_METHOD = "MinMax"
#: ONNX Runtime's defaults for the extra options of each method (onnxruntime 1.31
#: ``calibrate.create_calibrator``), written down for the report; the script passes none.
ORT_DEFAULTS = {
    "MinMax": "symmetric=False, moving_average=False",
    "Entropy": "num_bins=128, num_quantized_bins=128, symmetric=False",
    "Percentile": "num_bins=2048, percentile=99.999, symmetric=True",
}
QUICK_TEST = 2000
QUICK_VALIDATION = 1000
#: Test images run on ONNX Runtime's AVX2 kernels under QEMU (about 50 times slower than
#: native), and with ``--quick``.
AVX2_IMAGES = 2000
QUICK_AVX2_IMAGES = 200
#: Fused and emulated top-1 agree when |fused - emulated| <= max(AGREEMENT_POINTS,
#: 2 paired SE) (the tolerance of tests/python's accuracy tests).
AGREEMENT_POINTS = 0.3


@dataclass
class LabelledSet:
    """Inputs (axis 0 indexes images, in the model's layout and dtype) and integer labels."""

    x: np.ndarray
    y: np.ndarray
    description: str

    def subset(self, n: int) -> LabelledSet:
        """``n`` images drawn with ``numpy.random.default_rng(0)``, in order (not the first
        ``n``: a set may be sorted by class, as cifar10_test.npz is)."""
        if n >= len(self.y):
            return self
        pick = draw(len(self.y), n, seed=0)
        return LabelledSet(self.x[pick], self.y[pick],
                           f"{self.description}; {n} of them drawn with "
                           "numpy.random.default_rng(0) (--quick)")


def draw(total: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct indices of ``range(total)`` drawn with
    ``numpy.random.default_rng(seed)``, in file order (as ``python -m onnxquant.data
    --count`` draws them, so both give the same samples)."""
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _samples(calibration: np.ndarray):
    return (calibration[i:i + 1] for i in range(len(calibration)))


class EntryFailed(RuntimeError):
    """A step without which an entry has no row (e.g. ``optimize_model`` failing)."""


def optimize(path: str) -> onnx.ModelProto:
    try:
        return oq.optimize_model(path)
    except Exception as e:  # the entry is reported as not measured
        raise EntryFailed(f"oq.optimize_model failed: {first_line(e)}") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def is_tie(difference: float, se: float) -> bool:
    return difference == 0 or abs(difference) < 2 * se


def agreement_met(gap: float, se: float) -> bool:
    """Whether fused and emulated top-1 ``gap`` points apart agree:
    |gap| <= max(AGREEMENT_POINTS, 2 se)."""
    return abs(gap) <= max(AGREEMENT_POINTS, 2 * se)


def qemu_version() -> str:
    """The first line of ``qemu-x86_64 --version``, or why there is none."""
    path = qemu_executable()
    if path is None:
        return "not installed"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"{path} (version unknown: {first_line(e)})"
    return out.strip().splitlines()[0] if out.strip() else path


def available_cpus() -> int:
    """The CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


def cpu_description() -> tuple[str, list[str], int]:
    """The CPU's name, its ISA flags that decide ONNX Runtime's integer
    kernels (onnxquant.cpu), and the CPUs this process may use."""
    kernels = cpu_kernels()
    return kernels.name, list(kernels.flags), available_cpus()


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        # Changes to docs/ (this report among them) do not change what is measured.
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain",
                                "--untracked-files=no", "--", ".", ":(exclude)docs"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None
          ) -> list[str]:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]
