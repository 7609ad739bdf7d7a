"""Running a model on labelled data: FP32 against INT8, as deployed.

Helpers for the main job, the tests and the benchmarks. They run ONNX Runtime
on the CPU; an INT8 (QDQ) model runs either with ONNX Runtime's default
session options, which fuse QuantizeLinear / DequantizeLinear pairs into
integer kernels (``emulate=False``: what users deploy, and what depends on the
CPU's integer instructions, see :mod:`onnxquant.cpu`), or with the pairs
emulated in float (``emulate=True``: a diagnostic that hides what the kernels
do). :func:`evaluate_deployed` gives both at once, the fused figure first,
on this CPU's kernels or on the AVX2 kernels through QEMU
(:mod:`onnxquant.qemu`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxquant._ort_run import predict, session_options
from onnxquant.cpu import cpu_kernels
from onnxquant.errors import InvalidArgumentError
from onnxquant.qemu import QEMU_CPU, predict_avx2

__all__ = ["Accuracy", "DIVERGENCE_POINTS", "DeployedAccuracy", "KERNELS", "compare_top1",
           "deployed_top1", "evaluate_deployed", "kernels_description", "make_session",
           "predict"]

# Fused and emulated top-1 further apart than this (points) are reported as
# the integer kernels diverging from the emulation.
DIVERGENCE_POINTS = 0.5
# Where evaluate_deployed runs the fused model.
KERNELS = ("native", "avx2")


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike, *, emulate: bool = True,
                 threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for ``model``.

    ``emulate=True`` sets ``session.disable_quant_qdq = 1``, so QDQ pairs run
    as float arithmetic instead of being fused into integer kernels;
    ``emulate=False`` keeps ONNX Runtime's default session options (the
    deployed model). A ``ModelProto`` past 2 GB works: its weights reach
    ONNX Runtime through a temporary file (``onnxquant._payloads``).
    """
    so = session_options(emulate=emulate, threads=threads)
    if isinstance(model, onnx.ModelProto):
        from onnxquant._payloads import Workspace, ort_session, split_model

        with Workspace() as workspace:  # ONNX Runtime reads or maps it at once
            skeleton = split_model(model, workspace, fingerprint=False).model
            return ort_session(skeleton, workspace, so, ["CPUExecutionProvider"])
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


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


@dataclass(frozen=True)
class DeployedAccuracy:
    """INT8 top-1 as deployed, beside its emulation and FP32, on the same images.

    ``fused`` (the headline): FP32 as reference, INT8 run with ONNX Runtime's
    default session options (QDQ fused into integer kernels) as candidate.
    ``emulated`` (a diagnostic): FP32 against INT8 with QDQ emulated in float.
    ``fused_vs_emulated``: the emulated INT8 as reference, the fused one as
    candidate; its ``paired_se`` is the standard error of the per-image
    difference correct_fused - correct_emulated. ``kernels`` says which
    integer kernels ran the fused model.
    """

    fused: Accuracy
    emulated: Accuracy
    fused_vs_emulated: Accuracy
    kernels: str

    @property
    def fp32(self) -> float:
        """FP32 top-1, percent."""
        return self.fused.reference

    @property
    def gap(self) -> float:
        """Fused minus emulated INT8 top-1, in points."""
        return self.fused.candidate - self.emulated.candidate

    @property
    def gap_se(self) -> float:
        """Standard error of :attr:`gap` (paired per image), in points."""
        return self.fused_vs_emulated.paired_se

    @property
    def kernels_diverge(self) -> bool:
        """True when fused and emulated top-1 differ by more than
        :data:`DIVERGENCE_POINTS`: the emulated figure does not describe the
        deployed model (on a CPU without VNNI, typically saturation)."""
        return abs(self.gap) > DIVERGENCE_POINTS

    def lines(self) -> list[str]:
        """A human-readable summary, the deployed figure first."""
        f, e = self.fused, self.emulated
        out = [f"{'FP32 top-1:':41s}{self.fp32:6.2f} %",
               f"{'INT8 top-1, as deployed (fused kernels):':41s}{f.candidate:6.2f} %"
               f"   (drop {f.drop:+.2f} ± {f.paired_se:.2f} points)",
               f"{'INT8 top-1, QDQ emulated (diagnostic):':41s}{e.candidate:6.2f} %"
               f"   (drop {e.drop:+.2f} ± {e.paired_se:.2f} points)",
               f"fused - emulated: {self.gap:+.2f} ± {self.gap_se:.2f} points; "
               f"predictions agree on {self.fused_vs_emulated.agreement:.2f} % of "
               f"{f.count} samples"]
        if self.kernels_diverge:
            out.append(f"WARNING: the integer kernels and the emulation differ by more "
                       f"than {DIVERGENCE_POINTS} point: trust the fused figure, not the "
                       f"emulated one")
        out.append(f"integer kernels: {self.kernels}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def deployed_top1(fp32_logits: np.ndarray, emulated_logits: np.ndarray,
                  fused_logits: np.ndarray, labels: np.ndarray,
                  kernels: str) -> DeployedAccuracy:
    """A :class:`DeployedAccuracy` from the three models' outputs on the same
    samples (axis 0) and their ``labels``; ``kernels`` describes where the
    fused outputs were computed."""
    return DeployedAccuracy(fused=compare_top1(fp32_logits, fused_logits, labels),
                            emulated=compare_top1(fp32_logits, emulated_logits, labels),
                            fused_vs_emulated=compare_top1(emulated_logits, fused_logits,
                                                           labels),
                            kernels=kernels)


def kernels_description(kernels: str = "native") -> str:
    """What runs the fused model for ``evaluate_deployed(kernels=...)``."""
    if kernels == "native":
        return str(cpu_kernels())
    if kernels == "avx2":
        return (f"AVX2 (VPMADDUBSW) under qemu-x86_64 -cpu {QEMU_CPU}, "
                "pairs of products saturate at 16 bits")
    raise InvalidArgumentError(
        f"kernels={kernels!r} is not one of {', '.join(map(repr, KERNELS))}: 'native' runs "
        "this CPU's integer kernels, 'avx2' ONNX Runtime's AVX2 kernels under QEMU.")


def evaluate_deployed(model: onnx.ModelProto | bytes | str | os.PathLike,
                      quantized: onnx.ModelProto | bytes | str | os.PathLike,
                      inputs: np.ndarray, labels: np.ndarray, *, kernels: str = "native",
                      batch_size: int = 256, threads: int | None = None,
                      timeout: float | None = None) -> DeployedAccuracy:
    """Top-1 of the FP32 ``model`` and of its INT8 ``quantized`` form on
    ``inputs`` (a one-input model's layout, axis 0 indexing samples) against
    ``labels``: INT8 as deployed (ONNX Runtime's default session options,
    fused integer kernels) and with QDQ emulated in float, with paired
    standard errors.

    ``kernels="native"``: the fused model runs on this CPU's kernels
    (:func:`onnxquant.cpu.cpu_kernels` says which). ``kernels="avx2"``: it runs
    on ONNX Runtime's AVX2 kernels under ``qemu-x86_64 -cpu Haswell``
    (:func:`onnxquant.qemu.predict_avx2`, about 50 times slower: pass a
    subset; ``timeout`` applies to that run); FP32 and the emulated INT8 model,
    float arithmetic, run natively.

    Raises :class:`~onnxquant.errors.InvalidArgumentError` for another
    ``kernels``, :class:`~onnxquant.errors.QemuError` where QEMU is needed
    and missing or fails.
    """
    description = kernels_description(kernels)
    if kernels == "avx2":
        fused = predict_avx2(quantized, inputs, batch_size=batch_size, threads=threads,
                             timeout=timeout)
    else:
        fused = predict(make_session(quantized, emulate=False, threads=threads), inputs,
                        batch_size)
    fp32 = predict(make_session(model, emulate=False, threads=threads), inputs, batch_size)
    emulated = predict(make_session(quantized, emulate=True, threads=threads), inputs,
                       batch_size)
    return deployed_top1(fp32, emulated, fused, labels, description)
