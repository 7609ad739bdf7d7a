"""Runs an ONNX Runtime session batch after batch into reused output buffers.

``session.run`` allocates fresh memory for the outputs of every call. A
calibration session returns many large outputs (every planned tensor), and
touching that fresh memory (page faults, cache misses) costs a good part of
what binning them does. With an I/O binding the outputs are written in place
into the same buffers batch after batch, allocated once per input shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BoundRunner"]

# Input shapes whose buffers are kept at once (full batches and a shorter last
# one are the usual two).
_KEPT_SHAPES = 2


class BoundRunner:
    """``run(feed)`` returns the outputs ``fetch`` of ``session`` on ``feed``.

    The first call for an input shape runs ``session.run`` and keeps its output
    arrays; later calls with that shape write into them through an I/O
    binding, so the arrays returned are only valid until the next call. Where the binding is refused (an output whose
    shape depends on the input values, an exotic provider), it falls back to
    ``session.run`` for good. :meth:`release` frees the buffers.
    """

    def __init__(self, session, fetch: Sequence[str]) -> None:
        self._session = session
        self._fetch = list(fetch)
        self._bound: dict[tuple, tuple[object, list[np.ndarray]]] = {}
        self._enabled = True

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        key = tuple((name, a.shape, a.dtype.str) for name, a in feed.items())
        entry = self._bound.get(key)
        if entry is not None:
            binding, buffers = entry
            try:
                for name, array in feed.items():
                    binding.bind_cpu_input(name, np.ascontiguousarray(array))
                self._session.run_with_iobinding(binding)
                return buffers
            except Exception:  # noqa: BLE001 - refused: run the plain way from now on
                self.release()
                self._enabled = False
        outputs = self._session.run(self._fetch, feed)
        if self._enabled and len(self._bound) < _KEPT_SHAPES:
            self._bind(key, outputs)
        return outputs

    def _bind(self, key: tuple, outputs: list[np.ndarray]) -> None:
        if not all(isinstance(o, np.ndarray) and o.dtype.kind in "fiub" for o in outputs):
            return
        # The arrays session.run just returned (views of memory ONNX Runtime
        # allocated, kept alive by them) are the caller's for this batch and
        # become the buffers of the next ones: no second set is allocated.
        buffers = [o if o.flags.c_contiguous and o.flags.writeable
                   else np.empty(o.shape, o.dtype) for o in outputs]
        try:
            binding = self._session.io_binding()
            for name, buffer in zip(self._fetch, buffers):
                binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape),
                                    buffer.ctypes.data)
        except Exception:  # noqa: BLE001 - no binding here: run the plain way
            self._enabled = False
            return
        self._bound[key] = (binding, buffers)

    def release(self) -> None:
        """Frees the buffers (the next run of each shape allocates again)."""
        self._bound.clear()
