"""ONNX Runtime on its AVX2 integer kernels, on any x86-64 Linux host.

A CPU with VNNI or AMX runs ONNX Runtime's exact integer kernels; the
deployment may run on one without (AVX2, or AVX-512 before VNNI), whose
kernels saturate (:mod:`onnxquant.cpu`). QEMU's user-mode emulator,
``qemu-x86_64 -cpu Haswell`` (Debian/Ubuntu package ``qemu-user``), runs this
same Python interpreter on an emulated CPU with AVX2 and FMA but no AVX-512
and no VNNI, so ONNX Runtime picks its AVX2 kernels. It is about 50 times
slower than native: evaluate a subset (a few thousand small images).

The model runs in a subprocess that imports only numpy and onnxruntime
(:mod:`onnxquant._ort_run`); arrays travel through temporary ``.npz`` files.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx

from onnxquant.errors import QemuError

__all__ = ["QEMU_CPU", "predict_avx2", "qemu_available", "qemu_executable"]

QEMU_CPU = "Haswell"  # AVX2 and FMA; QEMU emulates no AVX-512 and no VNNI
_EXECUTABLES = ("qemu-x86_64", "qemu-x86_64-static")
# QEMU's TCG lacks a few features of the Haswell model (pcid, x2apic, TSX, ...)
# that ONNX Runtime does not use; it warns about each on every start.
_TCG_WARNING = "TCG doesn't support requested feature"
# The worker runs as a script (runpy adds no folder of it to sys.path, so the
# package's modules cannot shadow numpy's or onnxruntime's imports).
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ort_run.py")
_LAUNCHER = ("import runpy, sys; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def qemu_executable() -> str | None:
    """The path of ``qemu-x86_64`` (or ``qemu-x86_64-static``) on PATH, or None."""
    for name in _EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _host_is_x86_64_linux() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64",
                                                                                "amd64")


def qemu_available() -> bool:
    """True when :func:`predict_avx2` can run here: an x86-64 Linux host (QEMU
    runs this same interpreter, an x86-64 program) with ``qemu-x86_64`` on PATH."""
    return _host_is_x86_64_linux() and qemu_executable() is not None


def _require_qemu() -> str:
    if not _host_is_x86_64_linux():
        raise QemuError(
            f"running ONNX Runtime's AVX2 kernels under QEMU needs an x86-64 Linux host "
            f"(this one is {platform.machine()} {sys.platform}): qemu-x86_64 runs this "
            f"same Python interpreter, {sys.executable}. Run the check on an x86-64 machine.")
    path = qemu_executable()
    if path is None:
        raise QemuError(
            "qemu-x86_64 is not installed (looked on PATH for "
            f"{' and '.join(_EXECUTABLES)}): install it with 'apt-get install qemu-user' "
            "(Debian, Ubuntu) to run ONNX Runtime's AVX2 integer kernels on this CPU.")
    return path


def _label(model: onnx.ModelProto | bytes | str | os.PathLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return f"'{os.fspath(model)}'"
    if isinstance(model, onnx.ModelProto):
        return f"model '{model.graph.name}'"
    return "the model bytes"


def _model_file(model: onnx.ModelProto | bytes | str | os.PathLike, folder: str,
                index: int) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.abspath(os.fspath(model))
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else bytes(model)
    path = os.path.join(folder, f"model{index}.onnx")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _stderr_tail(text: str, lines: int = 20) -> str:
    kept = [line for line in text.splitlines() if _TCG_WARNING not in line]
    return "\n".join(kept[-lines:])


def predict_avx2(model: onnx.ModelProto | bytes | str | os.PathLike, inputs: np.ndarray, *,
                 emulate: bool = False, batch_size: int = 256, threads: int | None = None,
                 timeout: float | None = None) -> np.ndarray:
    """The first output of a one-input model for every row of ``inputs``,
    computed by ONNX Runtime under ``qemu-x86_64 -cpu Haswell``: on its AVX2
    kernels, with the default session options (``emulate=False``: QDQ fused
    into integer kernels) or with QDQ emulated in float (``emulate=True``).

    ``inputs`` and ``batch_size`` as for :func:`onnxquant.evaluate.predict`;
    ``threads``: ONNX Runtime's intra-op threads (default: its own);
    ``timeout``: seconds before the run is abandoned (default: none).

    Raises :class:`~onnxquant.errors.QemuError` when QEMU is missing (the
    message says to ``apt-get install qemu-user``), the host is not x86-64
    Linux, or the emulated run fails or times out (its error output quoted).
    """
    qemu = _require_qemu()
    with tempfile.TemporaryDirectory(prefix="onnxquant-qemu-") as folder:
        job = {"inputs": os.path.join(folder, "inputs.npz"),
               "outputs": os.path.join(folder, "outputs.npz"),
               "batch_size": int(batch_size), "threads": threads,
               "runs": [{"model": _model_file(model, folder, 0), "emulate": bool(emulate)}]}
        np.savez(job["inputs"], inputs=np.ascontiguousarray(inputs))
        job_path = os.path.join(folder, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)
        command = [qemu, "-cpu", QEMU_CPU, sys.executable, "-c", _LAUNCHER, _WORKER, job_path]
        try:
            # cwd: a folder of ours, so nothing there shadows a module.
            result = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                                    timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise QemuError(
                f"ONNX Runtime under 'qemu-x86_64 -cpu {QEMU_CPU}' did not finish "
                f"{_label(model)} on {len(inputs)} samples in {timeout} s; emulation is "
                "about 50 times slower than native: evaluate fewer samples or allow "
                "more time.") from e
        if result.returncode != 0:
            raise QemuError(
                f"ONNX Runtime under 'qemu-x86_64 -cpu {QEMU_CPU}' failed on "
                f"{_label(model)} (exit status {result.returncode}); check that the model "
                f"runs natively with onnxquant.evaluate.predict. Its error output:\n"
                f"{_stderr_tail(result.stderr)}")
        with np.load(job["outputs"]) as outputs:
            return outputs["output0"]
