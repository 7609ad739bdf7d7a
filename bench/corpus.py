"""A corpus of architectures through onnxquant (issue 10, item 10).

Each model (bench/corpus_models.py: torchvision's classifiers, detectors and
segmenters, small random-init ``transformers`` models) is exported, batch 1,
by torch's TorchScript exporter (``dynamo=False``, opset 17) and/or its dynamo
exporter (``dynamo=True``, opset 18), then goes through

    optimize_model -> Calibrator (MIN_MAX_ASYM, 8 random samples) -> compute_range
    -> quantize(calibrator=..., return_report=True) -> ONNX Runtime

in a child process of its own, stopped after ``--timeout`` seconds, so that an
exporter's crash or hang does not take the bench down. Recorded per model and
exporter: the outcome (``ok``; ``refused``: an ``OnnxQuantError``, class and
first line; ``untyped_error``: any other exception from onnxquant or ONNX
Runtime on its output, a bug; ``export_failure``; ``skipped``: ONNX over
500 MB; ``timeout``; ``crash``: the child died), node counts, the share of
Conv/ConvTranspose/Gemm/MatMul MACs that ONNX Runtime runs on integer kernels
(``onnxquant.analysis.mac_share`` with the report), the float nodes by reason
and the float islands of ONNX Runtime's graph, the seconds of each step, and
the cosine of the INT8 output to the FP32 output (the exported model) on a
sample not used for calibration, with ONNX Runtime's default session options
(fused, the headline) and with ``session.disable_quant_qdq = 1`` (emulated).

Results are merged into ``--output-json`` (one entry per model and exporter,
so runs of subsets accumulate) and rendered to ``--output-md``.

    PYTHONPATH=python .venv/bin/python bench/corpus.py --exporter torchscript --limit 10
    PYTHONPATH=python .venv/bin/python bench/corpus.py --only resnet18 hf_bert --exporter both

Threads: one (torch, the calibrator, ONNX Runtime), so the times are those of
one core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus_models
import corpus_report

MAX_BYTES = 500 * 1024 * 1024
OPSETS = {"torchscript": 17, "dynamo": 18}
CALIBRATION_SAMPLES = 8
MAX_ISLANDS = 10


# ------------------------------------------------------------------ child

#: Random batches that set the BatchNorm running statistics of a randomly initialised
#: image model (``_settle_batch_norm``).
BN_BATCHES = 4
BN_BATCH_SIZE = 4


def _settle_batch_norm(module, entry) -> bool:
    """Sets the running mean and variance of every BatchNorm layer of an image model to
    their average over a few random batches (training mode, cumulative average), as a
    trained network has them. At initialisation (mean 0, variance 1) the activations of a
    random MobileNet or EfficientNet shrink layer by layer to ~1e-9, and the comparison of
    INT8 with FP32 measures nothing. Returns whether the model had any."""
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or entry.family not in ("classification", "segmentation"):
        return False
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    rng = np.random.default_rng(1)
    module.train()
    with torch.no_grad():
        for _ in range(BN_BATCHES):
            batch = np.concatenate([entry.inputs(rng)[0] for _ in range(BN_BATCH_SIZE)])
            module(torch.from_numpy(batch))
    return True


#: The seed of torch's random initialisation: without it each run draws other weights,
#: and a row's cosine moves by up to 0.007 between runs (efficientnet_b1: 0.987, 0.995).
INIT_SEED = 0


def _export(entry, exporter: str, path: Path) -> None:
    import torch

    torch.manual_seed(INIT_SEED)
    module = entry.build()
    _settle_batch_norm(module, entry)
    module = module.eval()
    args = tuple(torch.from_numpy(a) for a in entry.inputs(np.random.default_rng(0)))
    kwargs = {"external_data": False} if exporter == "dynamo" else {}
    # Grad left enabled: under no_grad torch's attention takes its fused fast
    # path (aten::_native_multi_head_attention), which has no ONNX export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=exporter == "dynamo",
                          opset_version=OPSETS[exporter], input_names=list(entry.input_names),
                          **kwargs)


def _parameter_bytes(entry) -> int:
    import torch

    try:  # on the meta device: no memory for the weights
        with torch.device("meta"):
            module = entry.build()
    except (NotImplementedError, RuntimeError):  # an init that copies data (RegNet)
        module = entry.build()
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _feed(model, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
    from onnxquant._shapes import graph_inputs

    names = [i.name for i in graph_inputs(model)]
    if len(names) != len(sample):
        raise ValueError(f"the exported model has inputs {names}, the sample {len(sample)}")
    return dict(zip(names, sample))


def _session(path: str, emulated: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if emulated:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _cosine(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float | None:
    """The lowest cosine over the float outputs whose shapes agree (None when
    none do: data-dependent shapes such as detections)."""
    cosines = []
    for a, b in zip(reference, outputs):
        if a.dtype.kind != "f" or a.shape != b.shape or a.size == 0:
            continue
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        norm = np.linalg.norm(a64) * np.linalg.norm(b64)
        cosines.append(float(a64 @ b64 / norm) if norm > 0 else float(np.array_equal(a, b)))
    return min(cosines) if cosines else None


def _float_reasons(report) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in report.float_nodes:
        key = f"{node.op_type}: {node.reason}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _islands(report) -> dict:
    if report.runtime is None:
        return {"count": None, "note": report.runtime_note}
    islands = report.runtime.islands_on_dequantized_data
    return {"count": len(islands), "first": [str(i) for i in islands[:MAX_ISLANDS]]}


def _raised_in(error: BaseException) -> str:
    """The innermost frame of the traceback outside torch (the model's own code, e.g.
    transformers' mask construction), as ``package/file.py:line function``: where an
    exporter failed, which its first message line often does not say."""
    frames = traceback.extract_tb(error.__traceback__)
    outside = [f for f in frames if "/torch/" not in f.filename] or frames
    if not outside:
        return ""
    frame = outside[-1]
    parts = Path(frame.filename).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts \
        else Path(frame.filename).name
    return f"{short}:{frame.lineno} {frame.name}"


def _export_failure(error: BaseException) -> dict:
    from onnxquant.errors import first_line

    return {"status": "export_failure", "error": type(error).__name__,
            "message": first_line(error)[:500], "where": _raised_in(error)}


def _error(step: str, error: BaseException) -> dict:
    from onnxquant.errors import OnnxQuantError, first_line

    return {"status": "refused" if isinstance(error, OnnxQuantError) else "untyped_error",
            "step": step, "error": type(error).__name__, "message": first_line(error),
            "traceback": traceback.format_exc(limit=-3)[-2000:]}


def _quantize(result: dict, path: Path, entry, workdir: Path) -> None:
    import onnx

    import onnxquant as oq
    from onnxquant.analysis import mac_share

    times = result["seconds"]
    rng = np.random.default_rng(1)
    step = "optimize"
    try:
        start = time.perf_counter()
        model = oq.optimize_model(str(path))
        times["optimize"] = time.perf_counter() - start
        result["nodes_optimized"] = len(model.graph.node)
        step = "calibrate"
        start = time.perf_counter()
        calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, threads=1)
        calibrator.collect_data([_feed(model, entry.inputs(rng))
                                 for _ in range(CALIBRATION_SAMPLES)])
        ranges = calibrator.compute_range()
        times["calibrate"] = time.perf_counter() - start
        step = "quantize"
        start = time.perf_counter()
        quantized, report = oq.quantize(model, ranges, calibrator=calibrator,
                                        return_report=True)
        times["quantize"] = time.perf_counter() - start
        result["nodes_quantized"] = len(report.quantized_nodes)
        result["float_nodes"] = _float_reasons(report)
        result["islands"] = _islands(report)
        step = "mac_share"
        share = mac_share(model, quantized, report)
        qdq = mac_share(model, quantized)
        result["macs"] = {"total": share.total, "int8": share.int8,
                          "share": share.share, "qdq_share": qdq.share,
                          "unknown_nodes": len(share.unknown),
                          "largest_float": dict(list(share.float_nodes.items())[:5])}
        step = "runtime"
        int8_path = workdir / "model.int8.onnx"
        onnx.save(quantized, str(int8_path))
        sample = _feed(model, entry.inputs(np.random.default_rng(99)))
        reference = _session(str(path)).run(None, sample)
        result["cosine_fused"] = _cosine(reference, _session(str(int8_path)).run(None, sample))
        result["cosine_emulated"] = _cosine(
            reference, _session(str(int8_path), emulated=True).run(None, sample))
        result["status"] = "ok"
    except Exception as error:  # noqa: BLE001 (every failure is the measurement)
        result.update(_error(step, error))


def run_child(name: str, exporter: str) -> dict:
    """Exports and quantizes one model; returns its record."""
    import onnx
    import torch

    torch.set_num_threads(1)
    entry = next(e for e in corpus_models.corpus() if e.name == name)
    result: dict = {"model": name, "family": entry.family, "exporter": exporter,
                    "opset": OPSETS[exporter], "init_seed": INIT_SEED, "seconds": {}}
    try:  # building the model is the exporter's side too (a bad config: the bench's)
        if _parameter_bytes(entry) > MAX_BYTES:
            return {**result, "status": "skipped", "message": "parameters exceed 500 MB"}
    except Exception as error:  # noqa: BLE001
        return {**result, **_export_failure(error), "step": "build"}
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        workdir = Path(tmp)
        path = workdir / "model.onnx"
        start = time.perf_counter()
        try:
            _export(entry, exporter, path)
        except Exception as error:  # noqa: BLE001
            return {**result, **_export_failure(error)}
        result["seconds"]["export"] = time.perf_counter() - start
        size = sum(f.stat().st_size for f in workdir.iterdir())
        result["onnx_mb"] = size / 2**20
        if size > MAX_BYTES:
            return {**result, "status": "skipped", "message": "ONNX exceeds 500 MB"}
        result["nodes_exported"] = len(onnx.load(str(path), load_external_data=False)
                                       .graph.node)
        _quantize(result, path, entry, workdir)
    return result


# ----------------------------------------------------------------- parent

def _run_isolated(name: str, exporter: str, timeout: float, log_dir: Path) -> dict:
    """Runs one model in a child process (its own session, killed whole on
    timeout); returns its record, or a timeout/crash record."""
    log = log_dir / f"{name}.{exporter}.log"
    out = log_dir / f"{name}.{exporter}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", name, "--exporter", exporter,
               "--child-output", str(out)]
    start = time.perf_counter()
    with open(log, "w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = None
    base = {"model": name, "exporter": exporter, "wall_seconds": time.perf_counter() - start}
    if code is None:
        return {**base, "status": "timeout", "message": f"stopped after {timeout:.0f} s"}
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return {**base, "status": "crash", "message": f"exit code {code}: {tail[0][:300]}"}
    return {**json.loads(out.read_text()), **base}


def _machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def _load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"runs": [], "results": {}}


def _selected(args) -> list[str]:
    names = [e.name for e in corpus_models.corpus()]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown model(s): {', '.join(unknown)}")
        names = list(dict.fromkeys(args.only))  # in the order given
    return names[:args.limit] if args.limit else names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="models to run")
    parser.add_argument("--exporter", choices=["torchscript", "dynamo", "both"],
                        default="both")
    parser.add_argument("--limit", type=int, default=0, help="the first N models only")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--output-json", type=Path, default=HERE / "results" / "corpus.json")
    parser.add_argument("--output-md", type=Path, default=HERE.parent / "docs" / "coverage.md")
    parser.add_argument("--render-only", action="store_true",
                        help="render --output-json to --output-md without running")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.child_output.write_text(json.dumps(run_child(args.child, args.exporter)))
        return
    data = _load(args.output_json)
    if not args.render_only:
        exporters = ["torchscript", "dynamo"] if args.exporter == "both" else [args.exporter]
        data["runs"].append({
            "command": "bench/corpus.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(),
            "torchvision_native_ops": corpus_models.torchvision_has_ops()})
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="corpus-logs-") as logs:
            for name in _selected(args):
                for exporter in exporters:
                    record = _run_isolated(name, exporter, args.timeout, Path(logs))
                    data["results"][f"{name}/{exporter}"] = record
                    args.output_json.write_text(json.dumps(data, indent=1))
                    print(corpus_report.one_line(record), flush=True)
    all_names = [e.name for e in corpus_models.corpus()]
    args.output_md.write_text(corpus_report.render(data, all_names))


if __name__ == "__main__":
    main()
