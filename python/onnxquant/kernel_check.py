"""Will ONNX Runtime's integer kernels compute what the QDQ model says?

ONNX Runtime runs a QDQ Conv, Gemm or MatMul with int8 weights as an integer
GEMM. On x86 CPUs with AVX2 or AVX-512 but no VNNI, its uint8 x int8 kernels
add each pair of products (uint8 activation code x int8 weight code) in
16 bits with saturation before accumulating in 32 bits: two products of up
to 255 x 127 can exceed 32 767, and the kernel then computes something else
than the model. VNNI and AMX kernels, uint8 x uint8 kernels, depthwise
convolutions and ARM64's kernels accumulate exactly (docs/architecture.md,
"Integer kernels").

:func:`check_kernels` finds the nodes concerned: it replays samples through
the float model, quantizes each such node's input with the calibrated range,
and simulates the pair sums exactly as those kernels pair them. Without
samples it gives the worst case over any input in the quantized range (the
conservative rule). :func:`quantize` uses it for ``target="portable"``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxquant import _core
from onnxquant.errors import OnnxQuantError, first_line

__all__ = ["KernelCheck", "KernelCheckResult", "check_kernels", "choose_remedies"]

#: The int16 limit of a pair sum.
PAIR_SUM_LIMIT = 32767

#: The share of the checked nodes' multiply-adds that kernel_remedy="auto" may move to
#: ONNX Runtime's exact uint8 x uint8 kernels (up to 2x slower on VNNI CPUs).
EXACT_KERNEL_BUDGET = 0.03

#: How much the pair-sum peaks observed on the replayed samples are grown before the weight
#: range is fitted to them, for inputs beyond those samples: with 10 %, the remedied
#: models/cifar networks saturated 36 to 2 378 of 0.2 to 17 G pair sums on 1 000 unseen
#: test images (at most 4.5 % of an output's rounding noise), against 121 223 of 17 G
#: (220 %) for ViT with none and 64 samples (docs/architecture.md).
KERNEL_CHECK_HEADROOM = 0.1

#: The precision cost (:func:`_precision_cost`) from which kernel_remedy="auto" considers
#: the exact kernels for a node: a smaller weight range that at least doubles the weights'
#: rounding noise, on average over the output channels.
EXACT_KERNEL_MIN_COST = 1.0


@dataclass(frozen=True)
class KernelCheck:
    """The kernel check of one quantized node with a weight.

    ``kind``: ``"pair_sums"`` (uint8 x int8 kernel, saturates without VNNI),
    ``"exact"`` (a kernel that cannot saturate: depthwise Conv, uint8 or
    7-bit weights) or ``"not_fused"`` (ONNX Runtime runs it in float), with
    ``detail`` saying why. ``bound``: the largest |pair sum| any input in the
    quantized range could give. With samples: ``rows`` (activation rows or
    patches), ``pair_sums`` computed, ``saturated`` ones, ``peak`` (largest
    |pair sum|), and ``error_ratio``: the squared error saturation adds to the
    node's outputs over the squared error of rounding them to the output's
    quantization step (0 when nothing saturates; 1 doubles the output's
    quantization noise).
    """

    node: str
    op_type: str
    input: str
    kind: str
    detail: str = ""
    bound: int = 0
    rows: int = 0
    pair_sums: int = 0
    saturated: int = 0
    peak: int = 0
    error_ratio: float = 0.0

    @property
    def observed(self) -> bool:
        """Whether samples reached this node."""
        return self.rows > 0

    @property
    def can_saturate(self) -> bool:
        """Whether some input in the quantized range could saturate it."""
        return self.kind == "pair_sums" and self.bound > PAIR_SUM_LIMIT

    @classmethod
    def from_native(cls, d: Mapping[str, Any]) -> KernelCheck:
        noise = float(d["noise_energy"])
        error = float(d["error_energy"])
        ratio = error / noise if noise > 0 else (float("inf") if error > 0 else 0.0)
        return cls(node=d["node"], op_type=d["op_type"], input=d["input"], kind=d["kind"],
                   detail=d["detail"], bound=int(d["bound"]), rows=int(d["rows"]),
                   pair_sums=int(d["pair_sums"]), saturated=int(d["saturated"]),
                   peak=int(d["peak"]), error_ratio=ratio)


@dataclass(frozen=True)
class KernelCheckResult:
    """What :func:`check_kernels` found: one :class:`KernelCheck` per node,
    the samples replayed, and per node that saturates the per-channel weight
    qmax that would keep its pair sums within int16 (``channel_qmax``)."""

    nodes: tuple[KernelCheck, ...]
    samples: int
    channel_qmax: Mapping[str, tuple[int, ...]]

    @property
    def saturating(self) -> tuple[KernelCheck, ...]:
        """The nodes that saturated on the samples, or, for nodes the samples
        did not reach, that could saturate (the conservative rule)."""
        return tuple(n for n in self.nodes if n.node in self.channel_qmax)


def _dtypes(model: onnx.ModelProto, dtypes: Mapping[str, int] | None) -> dict[str, int]:
    if dtypes is not None:
        return dict(dtypes)
    from onnxquant._shapes import infer_dtypes

    return infer_dtypes(model)


def check_kernels(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]],
                  feeds: Iterable[Mapping[str, np.ndarray]] = (), *,
                  headroom: float = 0.0,
                  native_options: _core.QuantOptions | None = None,
                  dtypes: Mapping[str, int] | None = None,
                  providers: Sequence[str] | None = None,
                  workspace=None, spill: bool = False,
                  model_bytes: bytes | None = None, replay=None,
                  planned: _core.PlannedModel | None = None) -> KernelCheckResult:
    """Simulates ONNX Runtime's 16-bit pair sums for every quantized node with
    a weight of a normalised ``model``.

    ``ranges`` are the calibrated ranges (as for :func:`quantize`; without
    ``native_options``, each Softmax output's is replaced by the fixed one
    quantize gives it by default); ``feeds``
    are model inputs ({input name: array}) to replay, e.g. a calibrator's
    retained samples; ``headroom`` grows the observed peaks by that fraction
    before ``channel_qmax`` is fitted to them; ``native_options`` the
    engine's options (default
    ``QuantOptions()``'s); ``model_bytes`` the serialized ``model``, where the
    caller has it (default None: serialized here). Nodes no feed reaches (or
    all of them, without feeds) are judged by their worst case. ``model`` may
    be a skeleton (``onnxquant._payloads``), whose payloads lie in files;
    ``workspace`` is then where a session may gather them. ``spill`` (default
    False; needs ``workspace``): for large models, the engine's quantized
    weights and the model's session are never held at once: the replayed
    activations go to files of ``workspace`` while the session (which maps the
    weights from their files rather than copying them) runs, and the checker
    reads them back after it is closed. ``replay`` (default None): a context
    manager factory, ``replay(names)``, yielding ``run(feed) -> arrays of
    names`` from a session already open on this very model (a calibrator's),
    or None where it cannot; the feeds then run there instead of in a session
    of the check's own (whose creation dominates on large graphs).

    Raises:
        RangeMissingError: a planned tensor without a valid range.
        CalibrationDataError: ONNX Runtime failing on a feed.
    """
    from onnxquant.quantize import QuantOptions

    options = native_options if native_options is not None else QuantOptions().to_native()
    if native_options is None:
        # As quantize with default options: every Softmax output takes its fixed
        # range (quantize passes its ranges with that done, and its options).
        from onnxquant._softmax_range import with_softmax_output_ranges

        ranges = with_softmax_output_ranges(model.graph, ranges)
    from onnxquant._model import model_to_bytes

    types = _dtypes(model, dtypes)
    data = model_bytes if model_bytes is not None else model_to_bytes(model)

    def make_checker():
        if planned is not None:
            # The weights it quantizes go on to planned.quantize(), which
            # then need not quantize them again; not for a large model,
            # whose quantized weights and session are never held at once.
            return planned.kernel_checker(dict(ranges), keep_weights=not spill)
        return _core.KernelChecker(data, types, options, dict(ranges))

    checker = make_checker()
    names = checker.inputs()
    count = 0
    feeds = list(feeds)
    spilled = []
    if names and feeds:
        if spill:
            del checker
        with contextlib.ExitStack() as stack:
            run = None
            if replay is not None and not spill:
                run = stack.enter_context(replay(names))
            if run is None:
                run = stack.enter_context(
                    _own_session(data, names, types, providers, workspace, spill))
            for feed in feeds:
                arrays = {n: np.ascontiguousarray(o, dtype=np.float32)
                          for n, o in zip(names, _run(run, feed))}
                if spill:
                    path = os.path.join(workspace.path, f"replayed-{len(spilled)}.npz")
                    np.savez(path, **{str(i): arrays[n] for i, n in enumerate(names)})
                    spilled.append(path)
                else:
                    checker.add(arrays)
                del arrays
                count += len(next(iter(feed.values()))) if feed else 0
        if spill:
            checker = make_checker()
            for path in spilled:
                with np.load(path) as replayed:
                    checker.add({n: replayed[str(i)] for i, n in enumerate(names)})
                os.remove(path)
    nodes = tuple(KernelCheck.from_native(d) for d in checker.results())
    qmax = {k: tuple(v)  # ints already
            for k, v in checker.channel_qmax(bound_unobserved=True,
                                             headroom=headroom).items()}
    return KernelCheckResult(nodes=nodes, samples=count, channel_qmax=qmax)


@contextlib.contextmanager
def _own_session(data: bytes, names: list[str], types: Mapping[str, int],
                 providers: Sequence[str] | None, workspace, large: bool):
    """A session of the model with ``names`` exposed, for the block."""
    import onnxruntime as ort

    from onnxquant._payloads import ort_session

    options = ort.SessionOptions()
    # BASIC keeps every exposed tensor intact (as for calibration).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    if large:  # ONNX Runtime maps the weights instead of packing copies
        options.add_session_config_entry("session.disable_prepacking", "1")
    exposed = onnx.ModelProto()
    exposed_bytes, outputs = _core.expose_tensors(data, names, dict(types))
    exposed.ParseFromString(exposed_bytes)
    try:
        session = ort_session(exposed, workspace, options, providers)
    except OnnxQuantError:
        raise
    except Exception as e:  # ORT's errors derive from Exception only
        from onnxquant.errors import UnsupportedModelError

        first = first_line(e)
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load the model to replay the kernel-check samples "
            f"({first}); pass target='exact' to skip the check.") from e
    try:
        yield lambda feed: session.run(outputs, dict(feed))
    finally:
        del session


def _run(run, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    from onnxquant.errors import CalibrationDataError

    try:
        return run(feed)
    except Exception as e:  # ORT's errors derive from Exception only
        raise CalibrationDataError(
            f"ONNX Runtime failed on a kernel-check sample: {str(e).strip()}") from e


def _precision_cost(qmax: tuple[int, ...]) -> float:
    """How much lowering the weight codes to ``qmax`` raises the weights' rounding
    noise, on average over the channels: mean of (127 / q)^2 - 1."""
    return sum([(127.0 / q) ** 2 - 1.0 for q in qmax]) / max(len(qmax), 1)


def choose_remedies(result: KernelCheckResult, remedy: str,
                    budget: float = EXACT_KERNEL_BUDGET,
                    min_cost: float = EXACT_KERNEL_MIN_COST) -> dict[str, str]:
    """Per saturating node of ``result``, the remedy ``quantize`` applies:
    ``remedy`` itself, or for ``"auto"``: ``"uint8_weights"`` (exact kernels,
    no precision lost) on the nodes where a smaller weight range would cost
    most precision for the time the exact kernels cost, among those where it
    would at least double the weights' rounding noise (``min_cost``), as long
    as they hold at most ``budget`` of the checked nodes' multiply-adds, and
    ``"channel_range"`` on the others. Typically the first Conv over image
    pixels, whose pair sums reach twice the int16 range in most channels but
    whose multiply-adds are a few percent of the model's, runs exactly. Without
    samples (nothing observed) ``"auto"`` means ``"channel_range"``."""
    if remedy != "auto":
        return {node: remedy for node in result.channel_qmax}
    chosen = {node: "channel_range" for node in result.channel_qmax}
    # Multiply-adds per node: two per pair sum.
    total = sum(2 * n.pair_sums for n in result.nodes if n.kind == "pair_sums")
    if total <= 0:
        return chosen
    candidates = []
    for n in result.nodes:
        if n.node in chosen and n.observed:
            share = 2 * n.pair_sums / total
            cost = _precision_cost(result.channel_qmax[n.node])
            if cost >= min_cost:
                candidates.append((cost / max(share, 1e-12), share, n.node))
    spent = 0.0
    for _ratio, share, node in sorted(candidates, reverse=True):
        if spent + share <= budget:
            chosen[node] = "uint8_weights"
            spent += share
    return chosen
