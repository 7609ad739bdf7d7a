"""Calibration samples: checking them against the model, and batching them.

A sample is what one ``session.run`` takes: a list of arrays in input order, a
dict by input name, or (for a model with one input) a single array, each with
the batch dimension the model expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper

from onnxquant._shapes import graph_inputs, tensor_shape
from onnxquant.errors import CalibrationDataError

__all__ = ["InputSpec", "SampleBatcher", "batch_samples", "check_sample", "input_specs"]

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, and shape (None or a dim_param
    string for a dynamic dim; ``shape`` None when the rank is unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    @property
    def dynamic_batch(self) -> bool:
        """True when the first dim exists and is not a fixed number."""
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def shape_text(self) -> str:
        if self.shape is None:
            return "(any rank)"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers excluded), in order."""
    specs = []
    for value in graph_inputs(model):
        elem = value.type.tensor_type.elem_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else None
        specs.append(InputSpec(value.name, dtype, tensor_shape(value)))
    return specs


def _names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(f"'{s.name}'" for s in specs)


def _as_mapping(sample: object, specs: Sequence[InputSpec], index: int) -> dict[str, object]:
    if isinstance(sample, Mapping):
        names = {s.name for s in specs}
        unknown = [k for k in sample if k not in names]
        if unknown:
            raise CalibrationDataError(
                f"Sample {index} has input '{unknown[0]}', which the model does not take; "
                f"the model's inputs are {_names(specs)}.")
        missing = [s.name for s in specs if s.name not in sample]
        if missing:
            raise CalibrationDataError(
                f"Sample {index} lacks input '{missing[0]}'; the model's inputs are "
                f"{_names(specs)}.")
        return dict(sample)
    if isinstance(sample, (list, tuple)):
        if len(sample) != len(specs):
            raise CalibrationDataError(
                f"Sample {index} holds {len(sample)} arrays, but the model takes "
                f"{len(specs)} inputs: {_names(specs)} (in this order).")
        return {s.name: a for s, a in zip(specs, sample)}
    if isinstance(sample, np.ndarray):
        if len(specs) != 1:
            raise CalibrationDataError(
                f"Sample {index} is a single array, but the model takes {len(specs)} "
                f"inputs: {_names(specs)}. Pass a list in this order or a dict by name.")
        return {specs[0].name: sample}
    raise CalibrationDataError(
        f"Sample {index} is a {type(sample).__name__}; a sample is a list of numpy arrays "
        f"in input order, a dict by input name, or a numpy array for a one-input model. "
        f"The model's inputs are {_names(specs)}.")


def _check_array(spec: InputSpec, array: object, index: int,
                 check_finite: bool = True) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise CalibrationDataError(
            f"Sample {index}, input '{spec.name}': expected a numpy array, got "
            f"{type(array).__name__}.")
    if spec.dtype is not None and array.dtype != spec.dtype:
        raise CalibrationDataError(
            f"Sample {index}, input '{spec.name}': expected dtype {spec.dtype}, got "
            f"{array.dtype}. Convert it, e.g. x.astype(numpy.{spec.dtype}).")
    if array.size == 0:
        raise CalibrationDataError(
            f"Sample {index}, input '{spec.name}' is empty (shape {list(array.shape)}): "
            "a sample without values adds nothing to the statistics and would leave "
            "every range (0, 0). Drop it, or check how the samples are sliced.")
    if spec.shape is not None:
        fits = array.ndim == len(spec.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(spec.shape, array.shape))
        if not fits:
            raise CalibrationDataError(
                f"Sample {index}, input '{spec.name}': expected shape {spec.shape_text()}, "
                f"got {list(array.shape)}. A sample carries the batch dimension the "
                "model expects (a fixed-batch-1 model takes [1, ...]).")
    if check_finite:
        _check_finite(spec, array, index)
    return array


def _has_nonfinite(array: np.ndarray) -> bool:
    return array.dtype.kind in "fc" and not np.isfinite(array).all()


def _check_finite(spec: InputSpec, array: np.ndarray, index: int) -> None:
    if _has_nonfinite(array):
        bad = "NaN" if np.isnan(array).any() else "Inf"
        raise CalibrationDataError(
            f"Sample {index}, input '{spec.name}' contains {bad}; calibration inputs must "
            "be finite. Drop or repair that sample.")


def check_sample(sample: object, specs: Sequence[InputSpec], index: int,
                 check_finite: bool = True) -> Sample:
    """Checks one sample against the model's inputs and returns it as a dict.

    Raises CalibrationDataError naming the sample index and input for an unknown
    or missing input (listing the expected names), a dtype or shape that does
    not fit (giving both), or NaN/Inf in a float input (unless
    ``check_finite`` is False: the caller checks the batch).
    """
    mapping = _as_mapping(sample, specs, index)
    return {s.name: _check_array(s, mapping[s.name], index, check_finite) for s in specs}


def _reject_container(samples: object, specs: Sequence[InputSpec]) -> None:
    if isinstance(samples, np.ndarray):
        spec = specs[0] if len(specs) == 1 else None
        if spec is None or spec.shape is None or samples.ndim != len(spec.shape) + 1:
            expected = "" if spec is None else f" ({spec.shape_text()} for '{spec.name}')"
            raise CalibrationDataError(
                f"collect_data got one array of shape {list(samples.shape)}; an array is "
                "taken as samples along axis 0 only for a one-input model and with one axis "
                f"more than the input{expected}. Wrap a single sample in a list: "
                "collect_data([sample]).")
    elif isinstance(samples, (Mapping, str, bytes)):
        raise CalibrationDataError(
            f"collect_data takes an iterable of samples, not a {type(samples).__name__}; "
            "wrap a single sample in a list: collect_data([sample]).")


class SampleBatcher:
    """Checks samples and groups them into the feeds of ``session.run``.

    Where every input's first dim is dynamic and ``batch_size`` > 1, up to
    ``batch_size`` consecutive samples are concatenated along axis 0 (samples
    whose other dims differ start a new batch); otherwise each sample is one
    feed. Samples that do not fill a batch wait for the next :meth:`add`
    until :meth:`flush`, so the feeds depend only on the sequence of samples,
    not on how it was split into calls. At most one batch is held.
    """

    def __init__(self, specs: Sequence[InputSpec], batch_size: int, start: int = 0) -> None:
        self._specs = list(specs)
        self._batch_size = batch_size
        self._stack = batch_size > 1 and bool(specs) and all(s.dynamic_batch for s in specs)
        self._pending: list[Sample] = []
        self._rows = 0  # along axis 0, in pending
        self._next = start  # the index of the next sample

    @property
    def pending(self) -> int:
        """Samples checked but not yet fed."""
        return len(self._pending)

    @property
    def accepted(self) -> int:
        """Samples checked so far (fed or pending)."""
        return self._next

    def _batch(self) -> tuple[Sample, int]:
        group, first_index = self._pending, self._next - len(self._pending)
        self._pending, self._rows = [], 0
        feed = _concatenate(group)
        # Stacked samples are checked for NaN/Inf as one batch (one pass
        # instead of one per sample); the sample at fault is then looked for.
        for spec in self._specs:
            if _has_nonfinite(feed[spec.name]):
                for i, sample in enumerate(group):
                    _check_finite(spec, sample[spec.name], first_index + i)
        return feed, len(group)

    def add(self, samples: Iterable[object]) -> Iterator[tuple[Sample, int]]:
        """Checks ``samples`` and yields ``(feed, number of samples in it)``
        for every batch they complete (see :func:`batch_samples` for what a
        sample may be)."""
        _reject_container(samples, self._specs)
        try:
            iterator = iter(samples)
        except TypeError as e:
            raise CalibrationDataError(
                f"collect_data takes an iterable of samples, not a "
                f"{type(samples).__name__}.") from e
        first = self._specs[0].name if self._specs else ""
        for sample in iterator:
            checked = check_sample(sample, self._specs, self._next,
                                   check_finite=not self._stack)
            if not self._stack:
                self._next += 1
                yield checked, 1
                continue
            if self._pending and not _stackable(self._pending[0], checked):
                yield self._batch()
            self._pending.append(checked)
            self._next += 1
            self._rows += checked[first].shape[0]
            if self._rows >= self._batch_size:
                yield self._batch()
        # What waits for the next call is checked now, so that a NaN is
        # reported by the call that brought it.
        for i, sample in enumerate(self._pending):
            for spec in self._specs:
                _check_finite(spec, sample[spec.name], self._next - len(self._pending) + i)

    def flush(self) -> Iterator[tuple[Sample, int]]:
        """Yields the pending samples as one feed, if any."""
        if self._pending:
            yield self._batch()


def batch_samples(samples: Iterable[object], specs: Sequence[InputSpec], batch_size: int,
                  start: int = 0) -> Iterator[tuple[Sample, int]]:
    """Checks the samples and yields ``(feed, number of samples in it)``.

    ``samples`` is an iterable of samples; for a one-input model it may also be
    one array with an axis more than the input, axis 0 indexing samples.
    Batching as in :class:`SampleBatcher`, flushed at the end. ``start``
    numbers the first sample in error messages.
    """
    batcher = SampleBatcher(specs, batch_size, start)
    yield from batcher.add(samples)
    yield from batcher.flush()


def _stackable(a: Sample, b: Sample) -> bool:
    return all(a[name].shape[1:] == b[name].shape[1:] for name in a)


def _concatenate(samples: list[Sample]) -> Sample:
    if len(samples) == 1:
        return samples[0]
    return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}
