"""Which integer kernels ONNX Runtime runs on this CPU, and whether they are exact.

An INT8 QDQ model run with ONNX Runtime's default session options computes
its Conv, Gemm and MatMul with uint8 x int8 integer kernels chosen from the
CPU's instruction sets (MLAS's ``platform.cpp``). On x86-64 CPUs with AVX2 or
AVX-512 but no VNNI, those kernels multiply with VPMADDUBSW, which adds each
pair of uint8 x int8 products in 16 bits with saturation: 255 x 127 + 255 x
127 = 64 770 becomes 32 767. With VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, and on
ARM64, the products are added in 32 bits: the kernels are exact.
:func:`cpu_kernels` reads the flags from ``/proc/cpuinfo`` (Linux) and says
which path ONNX Runtime takes.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

__all__ = ["CpuKernels", "X86_FLAGS", "ARM64_FLAGS", "cpu_kernels"]

# The flags that decide ONNX Runtime's uint8 x int8 kernel, in /proc/cpuinfo's
# spelling. AVX-512 "core" is taken as avx512f + avx512bw (every CPU with
# AVX512BW also has the DQ and VL subsets MLAS checks); AMX as amx_int8.
X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM64_FLAGS = ("asimddp", "i8mm")

_X86 = ("x86_64", "amd64", "i386", "i686")
_ARM64 = ("aarch64", "arm64")


@dataclass(frozen=True)
class CpuKernels:
    """A CPU and the uint8 x int8 kernel ONNX Runtime picks on it."""

    machine: str              # platform.machine(), e.g. "x86_64", "aarch64"
    name: str                 # the CPU's model name where /proc/cpuinfo gives one
    flags: tuple[str, ...]    # those of X86_FLAGS / ARM64_FLAGS this CPU has
    kernel: str               # e.g. "AVX2 (VPMADDUBSW)", "AVX-512 VNNI", "unknown"
    saturates: bool | None    # True: products add in pairs in 16 bits with
                              # saturation; None: not known on this system
    flags_known: bool = True  # False where /proc/cpuinfo gave no flags

    @property
    def exact(self) -> bool:
        """True when the integer kernels are known to be exact (no saturation)."""
        return self.saturates is False

    def __str__(self) -> str:
        if self.saturates is None:
            verdict = "exactness not known on this system"
        elif self.saturates:
            verdict = "pairs of products saturate at 16 bits"
        else:
            verdict = "exact"
        if self.flags:
            flags = " ".join(self.flags)
        elif self.flags_known:
            flags = "none of " + " ".join(
                ARM64_FLAGS if self.machine.lower() in _ARM64 else X86_FLAGS)
        else:
            flags = "not readable"
        return (f"{self.name} ({self.machine}); ISA flags: {flags}; "
                f"ONNX Runtime uint8 x int8 kernels: {self.kernel}, {verdict}")


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _fields(cpuinfo: str) -> dict[str, str]:
    """The first value of each key of /proc/cpuinfo (the first processor's)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _x86_kernel(have: set[str]) -> tuple[str, bool]:
    # In the order of MLAS's platform.cpp: AMX overrides everything; the
    # AVX-512 kernels override AVX-VNNI's; AVX2 is the base of all of them.
    if "amx_int8" in have:
        return "AMX", False
    if "avx512f" in have and "avx512bw" in have:
        if "avx512_vnni" in have:
            return "AVX-512 VNNI", False
        return "AVX-512 (VPMADDUBSW)", True
    if "avx_vnni" in have:
        return "AVX-VNNI", False
    if "avx2" in have:
        return "AVX2 (VPMADDUBSW)", True
    return "SSE2 (16-bit widening)", False


def _arm64_kernel(have: set[str]) -> tuple[str, bool]:
    if "i8mm" in have:
        return "NEON I8MM (UMMLA)", False
    if "asimddp" in have:
        return "NEON dot product (UDOT)", False
    return "NEON (widening multiply)", False


def cpu_kernels(cpuinfo: str | None = None, machine: str | None = None) -> CpuKernels:
    """The ISA flags of this CPU that decide ONNX Runtime's integer kernels,
    and the uint8 x int8 kernel it takes.

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (default: read it; ``None``
    where it cannot be read, as on macOS and Windows). ``machine``: default
    ``platform.machine()``. Never raises: what cannot be known is reported as
    ``kernel="unknown"``, ``saturates=None``.
    """
    machine = machine or platform.machine() or "unknown"
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    fields = _fields(text or "")
    name = fields.get("model name") or platform.processor() or machine
    arch = machine.lower()
    if arch in _X86 and "flags" in fields:
        have = set(fields["flags"].split())
        kernel, saturates = _x86_kernel(have)
        flags = tuple(f for f in X86_FLAGS if f in have)
    elif arch in _ARM64 and "features" in fields:
        have = set(fields["features"].split())
        kernel, saturates = _arm64_kernel(have)
        flags = tuple(f for f in ARM64_FLAGS if f in have)
    elif arch in _ARM64:  # every ARM64 kernel of ONNX Runtime is exact
        return CpuKernels(machine=machine, name=name, flags=(), kernel="NEON",
                          saturates=False, flags_known=False)
    else:
        return CpuKernels(machine=machine, name=name, flags=(), kernel="unknown",
                          saturates=None, flags_known=False)
    return CpuKernels(machine=machine, name=name, flags=flags, kernel=kernel,
                      saturates=saturates)
