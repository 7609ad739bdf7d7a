"""Calibration: running the model on samples and choosing activation ranges."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxquant import _core
from onnxquant._graph_walk import node_bodies
from onnxquant._model import ModelLike, load_skeleton, write_bytes_atomic
from onnxquant._payloads import Workspace, canonical_bytes, ort_session
from onnxquant._softmax_range import softmax_outputs
from onnxquant._samples import SampleBatcher, check_sample, input_specs
from onnxquant._shapes import infer_dtypes
from onnxquant.errors import (
    CalibrationDataError,
    InternalError,
    InvalidArgumentError,
    OnnxQuantError,
    UnsupportedModelError,
    first_line,
)
from onnxquant.quantize import QuantOptions, options_or_default, require_normalized
from onnxquant.report import CalibrationReport, NonFiniteCount

__all__ = ["CalibrationMethod", "Calibrator", "default_threads"]

# /3: the model fingerprint covers external data; a checksum of the body and
# the model's inputs are in the header. /1 and /2 files are refused.
_STATE_FORMAT = "onnxquant.calibrator/4"
# /4: histograms count float32's extremes apart (format version 2).
_OLD_STATE_FORMATS = ("onnxquant.calibrator/1", "onnxquant.calibrator/2",
                      "onnxquant.calibrator/3")


def _feeds_to_bytes(feeds: Sequence[dict[str, np.ndarray]]) -> bytes:
    """The kernel-check samples as one .npz payload (b"" when none)."""
    if not feeds:
        return b""
    buffer = io.BytesIO()
    arrays = {f"{i}/{name}": a for i, feed in enumerate(feeds) for name, a in feed.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _feeds_from_bytes(data: bytes) -> list[dict[str, np.ndarray]]:
    if not data:
        return []
    feeds: dict[int, dict[str, np.ndarray]] = {}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        for key in npz.files:
            index, name = key.split("/", 1)
            feeds.setdefault(int(index), {})[name] = npz[key]
    return [feeds[i] for i in sorted(feeds)]


_HEADER_FIELDS = {"model_sha256": str, "inputs": list, "tensors": list, "num_samples": int,
                  "stats_bytes": int, "body_sha256": str}


def _read_state(path: str) -> tuple[dict, bytes]:
    """The header and body of a calibrator state file, checked for form and
    against its checksum."""
    def corrupt(why: str) -> CalibrationDataError:
        return CalibrationDataError(
            f"Calibrator state '{path}' is corrupt ({why}); write it again with "
            "Calibrator.save.")

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CalibrationDataError(
            f"Calibrator state '{path}' cannot be read: {e.strerror}.") from e
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise CalibrationDataError(
            f"'{path}' is not onnxquant calibrator state (no header it could read, or a "
            "truncated one); write it with Calibrator.save.")
    try:
        header = json.loads(data[8:8 + size].decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CalibrationDataError(
            f"'{path}' is not onnxquant calibrator state (no readable header); write it "
            "with Calibrator.save.") from e
    if not isinstance(header, dict) or not str(header.get("format", "")).startswith(
            "onnxquant.calibrator/"):
        raise CalibrationDataError(
            f"'{path}' is not onnxquant calibrator state (unknown format); write it with "
            "Calibrator.save.")
    if header["format"] in _OLD_STATE_FORMATS:
        raise CalibrationDataError(
            f"Calibrator state '{path}' was written by an earlier onnxquant "
            f"({header['format']}), whose files cannot be checked against the model; "
            "calibrate again and save it with this version.")
    if header["format"] != _STATE_FORMAT:
        raise CalibrationDataError(
            f"Calibrator state '{path}' has format {header['format']!r}, which this "
            f"onnxquant does not read ({_STATE_FORMAT}).")
    for key, kind in _HEADER_FIELDS.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise corrupt(f"its header lacks a valid '{key}'")
    body = data[8 + size:]
    if hashlib.sha256(body).hexdigest() != header["body_sha256"]:
        raise corrupt("its statistics do not match their checksum: the file was altered "
                      "or truncated")
    if not 0 <= header["stats_bytes"] <= len(body) or header["num_samples"] < 0:
        raise corrupt("its header's sizes do not fit the file")
    return header, body


class CalibrationMethod(enum.IntEnum):
    """How :meth:`Calibrator.compute_range` turns statistics into ranges.

    Each method has an asymmetric (``_ASYM``: [min, max], widened to contain 0)
    and a symmetric (``_SYM``: [-a, a], or [0, a] when nothing is negative)
    form. docs/calibration.md defines each method; every one is computed from
    the same histograms, so one :meth:`Calibrator.collect_data` serves all.
    """

    MIN_MAX_ASYM = 0
    MIN_MAX_SYM = 1
    ENTROPY_ASYM = 2
    ENTROPY_SYM = 3
    PERCENTILE_ASYM = 4
    PERCENTILE_SYM = 5
    MSE_ASYM = 6
    MSE_SYM = 7
    SQNR_ASYM = 8
    SQNR_SYM = 9


# Ops whose outputs are bounded by construction: clipping methods keep their
# observed range unless clip_bounded_outputs is set.
_BOUNDED_OUTPUT_OPS = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "Tanh"})
_FLOAT = 1  # onnx.TensorProto.FLOAT


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has
    one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


_COLLECT = ("plan", "all")


_CONTROL_FLOW = ("If", "Loop", "Scan")


def _graphs(graph) -> Iterator:
    """``graph``, then the bodies of its If, Loop and Scan nodes, depth first."""
    yield graph
    for node in graph.node:
        if node.op_type in _CONTROL_FLOW and node.domain in ("", "ai.onnx"):
            for body in node_bodies(node):
                yield from _graphs(body)


def _float_tensors(model, dtypes: dict[str, int], planned: Sequence[str]) -> tuple[str, ...]:
    """The planned tensors, then every other float32 graph input and node output
    of the main graph and of its If/Loop/Scan bodies, in graph order: all a
    plan for any options can need."""
    names = dict.fromkeys(planned)
    for graph in _graphs(model.graph):
        initializers = {t.name for t in graph.initializer}
        for value in graph.input:
            if value.name not in initializers and dtypes.get(value.name) == _FLOAT:
                names.setdefault(value.name)
        for node in graph.node:
            for output in node.output:
                if output and dtypes.get(output) == _FLOAT:
                    names.setdefault(output)
    return tuple(names)


def _weighted_inputs(model, plan: dict) -> list[str]:
    """The activation inputs of the main graph's planned nodes with a weight
    (what the kernel check replays), in plan order."""
    by_name = {n.name: n for n in model.graph.node}
    out = []
    for q in plan["quantized_nodes"]:
        node = by_name.get(q["node"])
        if q["weight_input"] < 0 or q.get("scope") or node is None:
            continue
        act = 1 if q["weight_input"] == 0 else 0
        if act < len(node.input) and node.input[act]:
            out.append(node.input[act])
    return list(dict.fromkeys(out))


def _method(method: object) -> CalibrationMethod:
    if isinstance(method, str):
        try:
            return CalibrationMethod[method.upper()]
        except KeyError:
            pass
    elif isinstance(method, int) and not isinstance(method, bool):
        try:
            return CalibrationMethod(method)
        except ValueError:
            pass
    names = ", ".join(m.name for m in CalibrationMethod)
    raise InvalidArgumentError(f"Unknown calibration method {method!r}; choose one of {names}.")


def _percentage(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0.0 < value <= 100.0:
        raise InvalidArgumentError(f"percentage must be in (0, 100], got {value!r}.")
    return float(value)


def _session(skeleton, workspace: Workspace, threads: int,
             providers: Sequence[str] | None, large: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if large:
        # Without pre-packed copies, ONNX Runtime maps the weights from their
        # file instead of copying them: pages the kernel can drop again.
        options.add_session_config_entry("session.disable_prepacking", "1")
    # BASIC keeps every graph output (the exposed tensors among them) intact.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort_session(skeleton, workspace, options, providers)


def _spec_json(spec) -> list:
    return [spec.name, str(spec.dtype), [d if isinstance(d, int) else None
                                         for d in (spec.shape or ())]]


class Calibrator:
    """Collects activation statistics of a normalised model and computes ranges.

    Args:
        model: the output of :func:`~onnxquant.optimize_model` (ModelProto,
            bytes or path; never modified).
        method: a :class:`CalibrationMethod` (or its name or value): the
            default of :meth:`compute_range`.
        percentage: the percentile of PERCENTILE methods, in (0, 100]
            (default 99.99).
        ignore_zero_spike: ENTROPY methods leave the values exactly 0 (the
            spike of ReLU outputs, often most of a tensor) out of the KL
            divergence (default True). With the spike kept, the divergence of
            a ReLU output is dominated by its zero bin and the search picks
            its narrowest candidate, clipping most of the range
            (docs/accuracy.md: ResNet8 60.5 % instead of 75.7 %).
        clip_bounded_outputs: whether the methods that clip (ENTROPY,
            PERCENTILE, MSE, SQNR) may also clip the outputs of Sigmoid,
            HardSigmoid, Softmax and Tanh (default False: those take the
            MIN_MAX range of the method's symmetry). Such outputs are bounded
            by construction and their tails carry the signal: clipping the
            gates of squeeze-and-excitation blocks to their bulk turned an
            EfficientNet into a constant classifier under ENTROPY
            (docs/accuracy.md).
        options: the :class:`~onnxquant.QuantOptions` that ``quantize`` will use
            (default: ``QuantOptions()``); they decide which tensors the plan
            calibrates, so pass the same ones to both. Options with
            ``mode="dynamic"`` are refused (InvalidArgumentError): that mode
            computes activation scales at run time, so there is nothing to
            calibrate; call ``quantize(model, None, options=...)`` without a
            Calibrator.
        batch_size: where every input's first (batch) dim is dynamic,
            consecutive samples are concatenated into batches of up to this many
            rows per ``session.run`` (default 32; 1 runs samples one by one).
            This assumes that samples are independent along the batch axis, as
            in any model whose batch dim is truly a batch.
        threads: the thread budget of the process (default None: the CPUs this
            process may use). ONNX Runtime's intra-op pool gets all of it and
            runs without spinning; the native statistics, which run between two
            ``session.run`` calls and never beside them, get all of it too. The
            ranges do not depend on the thread count.
        providers: ONNX Runtime execution providers (default the CPU provider).
        kernel_check_samples: how many of the first samples fed are kept (a
            copy, at most this many, whatever the number fed) for
            :func:`~onnxquant.quantize`'s kernel check, which replays them to
            find the nodes whose integer kernels would saturate on CPUs
            without VNNI (default 128; 0 keeps none, and quantize then applies
            its conservative rule).
        collect: which tensors are observed. ``"plan"`` (default): those the
            plan for ``options`` calibrates; ``quantize`` then needs options
            that plan no other tensor (the same options, typically), and
            refuses others naming the option that differs. ``"all"``: every
            float tensor of the main graph, so that ``quantize`` takes any
            options after one calibration, at a cost in time and memory
            (docs/user_guide.md, "Options after calibration": up to 2x the
            collection time and 1.8x the memory on models/cifar's ConvNeXt
            and ViT, 1.26x and 1.15x on the zoo's ResNet8).

    The model's weights reach the engine and ONNX Runtime as files
    (``onnxquant._payloads``), never inside its bytes, so models past 2 GB
    work. For a model whose initializers hold 1 GiB or more, the ONNX Runtime
    session is opened for each :meth:`collect_data` call that runs samples
    (and once in :meth:`compute_range` for samples waiting for a full batch)
    and closed after, with weight pre-packing off, and the weights wait in a
    temporary file meanwhile (removed with the calibrator): at most the
    caller's model and one copy of the weights are in memory at a time.

    Raises:
        ModelError: the model was not normalised by ``optimize_model``.
        UnsupportedModelError: the model is already quantized (names the first
            quantized node), or ONNX Runtime cannot load it.
        InvalidArgumentError: an argument outside its domain.
    """

    def __init__(self, model: ModelLike, method: CalibrationMethod | str | int, *,
                 percentage: float = 99.99, ignore_zero_spike: bool = True,
                 clip_bounded_outputs: bool = False,
                 options: QuantOptions | None = None,
                 batch_size: int = 32, threads: int | None = None,
                 providers: Sequence[str] | None = None,
                 kernel_check_samples: int = 128, collect: str = "plan") -> None:
        self._method = _method(method)
        self._percentage = _percentage(percentage)
        self._ignore_zero_spike = bool(ignore_zero_spike)
        self._clip_bounded_outputs = bool(clip_bounded_outputs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if isinstance(kernel_check_samples, bool) or \
                not isinstance(kernel_check_samples, int) or kernel_check_samples < 0:
            raise InvalidArgumentError(
                f"kernel_check_samples must be an int >= 0, got {kernel_check_samples!r}.")
        self._check_limit = kernel_check_samples
        self._check_feeds: list[dict[str, np.ndarray]] = []
        self._check_count = 0
        if threads is None:
            threads = default_threads()
        elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidArgumentError(f"threads must be an int >= 1, got {threads!r}.")
        if collect not in _COLLECT:
            raise InvalidArgumentError(
                f"collect must be 'plan' (the tensors the options plan) or 'all' (every "
                f"float tensor, so that quantize takes any options), got {collect!r}.")
        options = options_or_default(options)
        if options.dynamic:
            raise InvalidArgumentError(
                "options have mode='dynamic', which computes activation scales at run time: "
                "there is nothing to calibrate. Call onnxquant.quantize(model, None, "
                "options=options) without a Calibrator (quantize_model and apply_recipe "
                "skip calibration in that mode).")
        self._batch_size = batch_size
        self._threads = threads
        self._options = options
        self._providers = providers
        self._collect = collect
        self._session = None
        self._workspace = Workspace()
        try:
            self._prepare(model)
        except BaseException:
            self._workspace.close()
            raise
        self._stats = _core.HistogramSet(list(self._tensors))
        self._num_samples = 0
        self._batcher = SampleBatcher(self._specs, batch_size)
        # Serializes collect_data, the readers that run waiting samples, save
        # and merge across threads (the native statistics take their own lock
        # too).
        self._lock = threading.RLock()

    def _prepare(self, model: ModelLike) -> None:
        # The weights never cross to the engine or ONNX Runtime inside the
        # model's bytes: they lie in files (onnxquant._payloads).
        skeleton = load_skeleton(model, self._workspace)
        work = skeleton.model
        require_normalized(work, "Calibrator")
        self._specs = input_specs(work)
        dtypes = infer_dtypes(work, providers=self._providers, workspace=self._workspace)
        data = skeleton.to_bytes()
        self._fingerprint = skeleton.fingerprint
        self._dtypes = dtypes
        self._graph_sha = hashlib.sha256(canonical_bytes(work)).hexdigest()
        # Weight types change no calibrated tensor (and int4 is planned on
        # the opset-21 model quantize converts to): planned as int8 here.
        native, resolved = self._options.resolve(data, dtypes, work)
        native.weight_type = _core.WeightType.INT8
        native.node_weight_types = {}
        self._tensor_methods = {t: _method(m) for t, m in resolved.tensor_methods.items()}
        plan = _core.make_plan(data, dtypes, native)
        self._tensors = tuple(plan["calibrated"])
        if self._collect == "all":
            self._tensors = _float_tensors(work, dtypes, self._tensors)
        main = {v.name for v in work.graph.input} | \
            {o for n in work.graph.node for o in n.output}
        # Tensors of If/Loop/Scan bodies: only the samples that run their body
        # reach them.
        self._in_bodies = frozenset(t for t in self._tensors if t not in main)
        producers = {o: n.op_type for g in _graphs(work.graph) for n in g.node
                     for o in n.output}
        self._bounded = frozenset(t for t in self._tensors
                                  if producers.get(t) in _BOUNDED_OUTPUT_OPS)
        # Softmax outputs whose range quantize fixes (not those the options'
        # overrides keep at their calibrated range).
        self._fixed_softmax = frozenset(
            t for t in softmax_outputs(work.graph)
            if t in self._tensors and t not in resolved.calibrated_outputs)
        inputs = {s.name for s in self._specs}
        self._fetch = [t for t in self._tensors if t not in inputs]
        self._from_feed = [t for t in self._tensors if t in inputs]
        # A large model's session is open only while it runs samples, so that
        # it and quantize never hold the weights at once; the augmented model
        # and its payload file stay in the workspace meanwhile.
        self._keep_session = not skeleton.large
        self._augmented = None
        self._outputs: list[str] = []
        # The inputs of weighted nodes that the statistics do not need (they
        # take another tensor's range): exposed too, so that quantize's kernel
        # check can replay its samples in this session.
        fetched = set(self._fetch)
        check = [t for t in _weighted_inputs(work, plan) if t not in inputs and t not in fetched]
        self._check_outputs: dict[str, str] = {}
        if self._fetch or check:
            augmented = onnx.ModelProto()
            # Tensors of bodies reach the graph's outputs under new names.
            augmented_bytes, outputs = _core.expose_tensors(data, self._fetch + check, dtypes)
            self._outputs = outputs[:len(self._fetch)]
            self._check_outputs = dict(zip(check, outputs[len(self._fetch):]))
            augmented.ParseFromString(augmented_bytes)
            self._augmented = augmented
            session = self._open_session()
            produced = {o.name for o in session.get_outputs()}
            lost = [t for t, o in zip(self._fetch + check, outputs) if o not in produced]
            if lost:
                raise InternalError(
                    f"The calibration session does not return tensor '{lost[0]}'; this is a "
                    "bug in onnxquant, please report it with the model.")
            if self._keep_session:
                self._session = session
        if self._keep_session:
            # ONNX Runtime has read (or mapped) the payloads.
            self._workspace.close()

    def _open_session(self):
        try:
            return _session(self._augmented, self._workspace, self._threads, self._providers,
                            large=not self._keep_session)
        except OnnxQuantError:
            raise
        except Exception as e:  # ORT's errors derive from Exception only
            first = first_line(e)
            raise UnsupportedModelError(
                f"ONNX Runtime cannot load the model to calibrate it ({first}). Pass "
                "the model optimize_model returned, and check that ONNX Runtime runs "
                "the original model.") from e

    @contextlib.contextmanager
    def _running(self) -> Iterator[Callable[[], object]]:
        """Yields ``session()``, which returns the session (None without
        tensors to fetch); a calibrator that does not keep its session opens
        one on the first call and closes it at the end of the block."""
        if self._augmented is None or self._session is not None:
            yield lambda: self._session
            return
        opened = []

        def session():
            if not opened:
                opened.append(self._open_session())
            return opened[0]

        try:
            yield session
        finally:
            opened.clear()

    @contextlib.contextmanager
    def _replay(self, names: Sequence[str]) -> Iterator[Callable[[dict], list] | None]:
        """Yields ``run(feed)``, the arrays of ``names`` for one feed, computed
        by this calibrator's session (quantize's kernel check replays its
        samples there instead of opening a session of its own); None when the
        calibrator does not observe every name."""
        outputs = {**self._check_outputs, **dict(zip(self._fetch, self._outputs))}
        inputs = {s.name for s in self._specs}
        if any(n not in outputs and n not in inputs for n in names):
            yield None
            return
        wanted = [outputs[n] for n in names if n in outputs]
        with self._lock, self._running() as session:
            def run(feed: dict) -> list:
                got = dict(zip(wanted, session().run(wanted, dict(feed)))) if wanted else {}
                return [feed[n] if n in inputs else got[outputs[n]] for n in names]

            yield run

    def _dtypes_of(self, model: onnx.ModelProto) -> dict[str, int] | None:
        """The tensor types found for the model, when ``model`` (a skeleton)
        has the graph this calibrator was made for (else None): quantize then
        need not run type inference again. Types depend on the graph, not on
        where the weights' payloads lie, which the comparison leaves out."""
        if hashlib.sha256(canonical_bytes(model)).hexdigest() != self._graph_sha:
            return None
        return dict(self._dtypes)

    @property
    def method(self) -> CalibrationMethod:
        """The calibration method."""
        return self._method

    @property
    def options(self) -> QuantOptions:
        """The quantization options the plan was made with."""
        return self._options

    @property
    def collect(self) -> str:
        """``"plan"`` (the tensors the options plan) or ``"all"`` (every float
        tensor of the main graph)."""
        return self._collect

    @property
    def tensors(self) -> tuple[str, ...]:
        """The tensors calibrated (the plan's, or with ``collect="all"`` every
        float tensor of the main graph), in graph order."""
        return self._tensors

    @property
    def num_samples(self) -> int:
        """Samples fed so far."""
        return self._num_samples + self._batcher.pending

    @property
    def kernel_check_feeds(self) -> tuple[dict[str, np.ndarray], ...]:
        """The retained samples (up to ``kernel_check_samples`` of the first
        fed), as the model inputs ``{input name: array}`` of the runs they
        were fed in."""
        self._flush()
        return tuple(self._check_feeds)

    def _retain(self, feed: dict[str, np.ndarray], count: int) -> None:
        room = self._check_limit - self._check_count
        if room <= 0:
            return
        if count > room:  # a stacked batch: keep its first rows
            feed = {k: v[:room] for k, v in feed.items()}
            count = room
        self._check_feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        self._check_count += count

    def collect_data(self, samples: Iterable[object], progress: bool = False) -> None:
        """Runs the model on ``samples`` and adds what the planned tensors hold
        to the statistics. May be called again to add more samples.

        ``samples`` is an iterable of samples; a sample is a list of numpy
        arrays in input order, a dict by input name, or a numpy array for a
        one-input model, with the batch dimension the model expects. They are
        read one at a time; memory does not grow with their number.
        Where samples are stacked into batches (``batch_size``), those that
        do not fill one wait for the next call (or for the methods that read
        the statistics, which run them first): the batches, and so the
        ranges, do not depend on how the samples are split into calls.
        ``progress`` (default False) shows a tqdm progress bar.

        Safe to call from several threads: concurrent calls on one
        calibrator are serialized (each runs whole, one after the other), so
        no sample is lost; ``compute_range`` from another thread meanwhile
        sees the samples fed so far.

        Raises:
            CalibrationDataError: a sample with an unknown or missing input
                name, a dtype or shape that does not fit, no values (an empty
                array), or NaN/Inf in an input (naming the sample and input);
                or ONNX Runtime failing on a sample (here, or where waiting
                samples are run).
        """
        bar = None
        if progress:
            from tqdm import tqdm

            total = len(samples) if hasattr(samples, "__len__") else None
            bar = tqdm(total=total, unit="sample", desc="Calibrating")
        try:
            with self._lock:
                with self._running() as session:
                    first = self._batcher.accepted
                    for feed, count in self._batcher.add(samples):
                        self._feed(session, feed, count)
                        if bar is not None:  # this call's samples run so far
                            bar.update(self._batcher.accepted - first - bar.n)
                    if bar is not None:  # and those that wait for a full batch
                        bar.update(self._batcher.accepted - first - bar.n)
        finally:
            if bar is not None:
                bar.close()

    def _feed(self, session, feed: dict[str, np.ndarray], count: int) -> None:
        self._update(session, feed, count)
        self._retain(feed, count)
        self._num_samples += count

    def _flush(self) -> None:
        """Runs the samples that wait for a full batch (collect_data keeps
        them, so that the batches, and the ranges, do not depend on how the
        samples were split into calls)."""
        with self._lock:
            if self._batcher.pending:
                with self._running() as session:
                    for feed, count in self._batcher.flush():
                        self._feed(session, feed, count)

    def _update(self, session, feed: dict[str, np.ndarray], count: int) -> None:
        arrays = {t: feed[t] for t in self._from_feed}
        if self._fetch:
            try:
                outputs = session().run(self._outputs, feed)
            except Exception as e:  # ORT's errors derive from Exception only
                first = self._num_samples
                which = f"sample {first}" if count == 1 else \
                    f"samples {first} to {first + count - 1}"
                raise CalibrationDataError(
                    f"ONNX Runtime failed on {which}: {str(e).strip()}") from e
            arrays.update(zip(self._fetch, outputs))
        if arrays:
            self._stats.update(
                {t: np.ascontiguousarray(a, dtype=np.float32) for t, a in arrays.items()},
                self._threads)

    def compute_range(self, method: CalibrationMethod | str | int | None = None, *,
                      percentage: float | None = None) -> dict[str, tuple[float, float]]:
        """Returns ``{tensor name: (min, max)}`` as plain Python floats for every
        calibrated tensor (JSON-serialisable).

        ``method`` (default: the calibrator's) may be any of the ten: every
        method reads the same histograms, so ranges for several methods come
        from one :meth:`collect_data` without running the model again.
        ``percentage`` overrides the calibrator's for PERCENTILE methods.
        Tensors given a ``"method"`` by the options' ``overrides`` take that
        method's range instead.
        docs/calibration.md defines each method. Outputs of Sigmoid,
        HardSigmoid, Softmax and Tanh take the MIN_MAX range of the method's
        symmetry unless the calibrator has ``clip_bounded_outputs``. A
        Softmax output's range is the one observed (the method's), not the
        fixed [0, 255/256] the quantized model gives it: :func:`quantize`
        applies that (to ranges from any source, and not where the node's
        ``overrides`` entry says ``{"output_range": "calibrated"}``), and its
        report's ``softmax_ranges`` show both. NaN and
        Inf in intermediate tensors, and float32's extremes (finite values of
        magnitude >= 1e30, as attention masks hold), are left out of the
        statistics and counted in :attr:`report` (so that a mask's
        -3.4e38 does not stretch the range of the scores beside it);
        a tensor without any finite value gets ``(0.0, 0.0)`` and is listed in
        ``report.degraded``. A tensor inside an If, Loop or Scan body that no
        sample reached (a branch no sample takes) has no range: it is left
        out, and ``quantize`` keeps that body float, saying why.

        Raises:
            CalibrationDataError: no sample was fed.
            InvalidArgumentError: an unknown method or a percentage outside
                (0, 100].
        """
        self._flush()
        if self._num_samples == 0:
            raise CalibrationDataError(
                "The calibration set is empty: call collect_data(samples) with at least one "
                "sample before compute_range().")
        chosen = self._method if method is None else _method(method)
        pct = self._percentage if percentage is None else _percentage(percentage)
        ranges = self._ranges_of(chosen, pct)
        # The options' per-tensor methods (QuantOptions.overrides).
        for other in sorted(set(self._tensor_methods.values())):
            if other == chosen:
                continue
            theirs = self._ranges_of(other, pct)
            ranges.update({t: theirs[t] for t, m in self._tensor_methods.items()
                           if m == other and t in theirs})
        unreached = self._unreached()
        return {name: (float(ranges[name][0]), float(ranges[name][1]))
                for name in self._tensors if name not in unreached}

    def _ranges_of(self, chosen: CalibrationMethod, pct: float) -> dict:
        """Every observed tensor's range by ``chosen`` (bounded outputs as
        compute_range says)."""
        ranges = self._stats.compute_ranges(int(chosen), pct, self._ignore_zero_spike,
                                            self._threads)
        if self._bounded and not self._clip_bounded_outputs and \
                chosen not in (CalibrationMethod.MIN_MAX_ASYM, CalibrationMethod.MIN_MAX_SYM):
            full = CalibrationMethod.MIN_MAX_SYM if chosen.name.endswith("_SYM") else \
                CalibrationMethod.MIN_MAX_ASYM
            whole = self._stats.compute_ranges(int(full), pct, self._ignore_zero_spike,
                                               self._threads)
            ranges.update({t: whole[t] for t in self._bounded})
        return ranges

    def _unreached(self) -> frozenset[str]:
        """The tensors of bodies that no sample reached (no value at all)."""
        if not self._in_bodies:
            return frozenset()
        stats = self._stats.stats()
        return frozenset(t for t in self._in_bodies
                         if not any(stats[t][k] for k in ("count", "nan", "pos_inf", "neg_inf",
                                                          "pos_extreme", "neg_extreme")))

    def statistics(self) -> dict[str, dict[str, float]]:
        """Per tensor: exact ``min`` and ``max`` of the finite values, ``count``,
        ``zeros``, ``nan``, ``pos_inf``, ``neg_inf``, ``pos_extreme`` and
        ``neg_extreme`` (finite, magnitude >= 1e30), and the histogram's
        ``bin_width`` and number of ``bins``."""
        self._flush()
        return self._stats.stats()

    def histogram(self, tensor: str) -> tuple[float, float, np.ndarray]:
        """``(low edge, bin width, counts)`` of one tensor's histogram (bins
        anchored at 0 with a power-of-two width)."""
        self._flush()
        return self._stats.histogram(tensor)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the collected statistics (whole or not at all), so that
        calibration can be resumed or split across processes or machines;
        :meth:`load` reads them back for the same normalised model. The file
        records the model's fingerprint, inputs and calibrated tensors, and a
        checksum of the statistics."""
        with self._lock:  # one consistent state, not one mid-collect_data
            self._flush()
            stats = self._stats.serialize()
            body = stats + _feeds_to_bytes(self._check_feeds)
            num_samples, check_count = self._num_samples, self._check_count
        stats_size = len(stats)
        header = json.dumps({"format": _STATE_FORMAT, "model_sha256": self._fingerprint,
                             "inputs": [_spec_json(s) for s in self._specs],
                             "options": dataclasses.asdict(self._options),
                             "tensors": list(self._tensors),
                             "collect": self._collect,
                             "num_samples": num_samples,
                             "stats_bytes": stats_size,
                             "body_sha256": hashlib.sha256(body).hexdigest(),
                             "kernel_check_samples": check_count}).encode()
        write_bytes_atomic(path, len(header).to_bytes(8, "little") + header + body)

    @classmethod
    def load(cls, path: str | os.PathLike, model: ModelLike,
             method: CalibrationMethod | str | int, **kwargs) -> Calibrator:
        """A calibrator for ``model`` holding the statistics :meth:`save`
        wrote; ``method`` and the keywords are those of the constructor.

        Before anything is used, the file is checked against its checksum
        and against the model: its inputs (names, dtypes, shapes), its
        fingerprint (graph and weights), the calibrated tensors (names, in
        order, in the header and in the statistics) and the retained samples.

        Raises:
            CalibrationDataError: the file is missing, not calibrator state,
                written by an earlier onnxquant, corrupt (truncated, altered),
                or saved for another model or other options; the message
                names the file and what differs.
        """
        path = os.fspath(path)
        header, body = _read_state(path)
        calibrator = cls(model, method, **kwargs)
        calibrator._check_state(path, header)
        stats_size = header["stats_bytes"]
        try:
            stats = _core.HistogramSet.deserialize(body[:stats_size])
            feeds = _feeds_from_bytes(body[stats_size:])
        except (InvalidArgumentError, ValueError, OSError, KeyError,
                zipfile.BadZipFile) as e:
            raise CalibrationDataError(
                f"Calibrator state '{path}' is corrupt ({e}); write it again with "
                "Calibrator.save.") from e
        if list(stats.names) != list(calibrator._tensors):
            wrong = next((f"'{a}' where '{b}' was expected" for a, b in
                          zip(stats.names, calibrator._tensors) if a != b),
                         f"{len(stats.names)} tensors where {len(calibrator._tensors)} "
                         "were expected")
            raise CalibrationDataError(
                f"Calibrator state '{path}' is corrupt: its statistics name {wrong}, so "
                "they do not belong to the tensors its header lists. Write it again with "
                "Calibrator.save.")
        for index, feed in enumerate(feeds):
            try:
                check_sample(feed, calibrator._specs, index)
            except CalibrationDataError as e:
                raise CalibrationDataError(
                    f"Calibrator state '{path}' is corrupt: its retained samples do not fit "
                    f"the model ({e})") from e
        calibrator._stats = stats
        calibrator._num_samples = header["num_samples"]
        calibrator._batcher = SampleBatcher(calibrator._specs, calibrator._batch_size,
                                            calibrator._num_samples)
        for feed in feeds:
            count = len(next(iter(feed.values()))) if feed else 0
            calibrator._retain(feed, count)
        return calibrator

    def _check_state(self, path: str, header: dict) -> None:
        """Compares a state file's header with this calibrator's model."""
        inputs = [_spec_json(s) for s in self._specs]
        if header["inputs"] != inputs:
            def text(specs):
                return ", ".join(f"{n} {d} {list(s)}" for n, d, s in specs)

            raise CalibrationDataError(
                f"Calibrator state '{path}' was saved for a model with inputs "
                f"{text(header['inputs'])}, and this model takes {text(inputs)}: load it "
                "with the normalised model it was saved with.")
        if header["model_sha256"] != self._fingerprint:
            raise CalibrationDataError(
                f"Calibrator state '{path}' was saved for another model (its fingerprint, "
                "over the graph and every weight, differs): load it with the normalised "
                "model it was saved with.")
        saved = header.get("collect", "plan")
        if saved != self._collect:
            raise CalibrationDataError(
                f"Calibrator state '{path}' was saved by a Calibrator with collect={saved!r}, "
                f"and this one has collect={self._collect!r}: load it with "
                f"collect={saved!r}.")
        if header["tensors"] != list(self._tensors):
            raise CalibrationDataError(
                f"Calibrator state '{path}' calibrates other tensors than this calibrator "
                f"({len(header['tensors'])} against {len(self._tensors)}): it was saved with "
                "other QuantOptions; pass the same options.")

    def merge(self, other: Calibrator) -> None:
        """Adds the statistics of ``other`` (same model and options, e.g. run on
        another share of the samples); the result equals one calibrator fed
        both shares.

        Raises:
            CalibrationDataError: ``other`` calibrates another model or
                other tensors.
        """
        if not isinstance(other, Calibrator):
            raise InvalidArgumentError(
                f"merge takes a Calibrator, got {type(other).__name__}.")
        if other._fingerprint != self._fingerprint or other._tensors != self._tensors:
            raise CalibrationDataError(
                "Cannot merge calibrators of different models or options: build both from "
                "the same normalised model and QuantOptions.")
        # Both locks, always in the same order, so that a.merge(b) and
        # b.merge(a) in two threads cannot deadlock.
        first, second = sorted((self, other), key=id)
        with first._lock, second._lock:
            self._flush()
            other._flush()
            self._stats.merge(other._stats)
            self._num_samples += other._num_samples
            self._batcher = SampleBatcher(self._specs, self._batch_size, self._num_samples)
            for feed in list(other._check_feeds):
                self._retain(feed, len(next(iter(feed.values()))) if feed else 0)

    @property
    def report(self) -> CalibrationReport:
        """What calibration saw so far: samples, NaN/Inf counts, tensors without
        a finite value."""
        self._flush()
        # Only the tensors with a special count or none finite: the others
        # add nothing to the report (a dict per tensor is costly on large
        # graphs).
        stats = self._stats.stats(unusual_only=True)
        special = ("nan", "pos_inf", "neg_inf", "pos_extreme", "neg_extreme")
        nonfinite = tuple(
            NonFiniteCount(t, *(int(stats[t][k]) for k in special),
                           int(stats[t]["count"]) + sum(int(stats[t][k]) for k in special))
            for t in self._tensors if t in stats and any(stats[t][k] for k in special))
        degraded = tuple(t for t in self._tensors
                         if self._num_samples and t in stats and stats[t]["count"] == 0)
        return CalibrationReport(self._num_samples, self._method.name, nonfinite, degraded)

    def __repr__(self) -> str:
        return (f"Calibrator({self._method.name}, {len(self._tensors)} tensors, "
                f"{self._num_samples} samples)")
