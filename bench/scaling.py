"""How onnxquant's graph work grows with the number of nodes.

For each graph family and size the script builds a float model, then times

1. ``optimize_model``;
2. ``Calibrator`` set-up (the constructor: types, plan, exposed tensors and ONNX Runtime's
   session), then one ``collect_data`` of a single sample (not part of the scaling target,
   shown for scale);
3. ``quantize`` with the calibrator (so the kernel check replays its sample).

Each stage's time is split into what onnxquant does itself (the engine and the Python around
it) and what it calls outside: ONNX shape inference, ``onnx.checker`` and ONNX Runtime
(session creation and runs). The growth exponent is the slope of log(time) over log(nodes),
fitted by least squares over the sizes from 4k nodes on.

Families (opset 17, float32):

- ``chain``: ``y = x + c_1 + c_2 + ... + c_n``, one Add with its own constant [64] per node;
- ``block``: a transformer encoder block of width 64 (4 heads of 16, feed-forward 128,
  sequence 16) repeated until the size is reached: LayerNormalization, Q/K/V MatMul + Add,
  Reshape, Transpose, attention MatMul, Div, Softmax, MatMul, Transpose, Reshape, output
  MatMul + Add, residual Add, LayerNormalization, feed-forward MatMul + Add, GELU decomposed
  as torch exports it (Div, Erf, Add, Mul, Mul), MatMul + Add, residual Add: 33 nodes;
- ``torch``: ``torch.nn.TransformerEncoder`` (d_model 64, 4 heads, feed-forward 128, eval
  mode) exported by torch's TorchScript exporter at opset 17, with as many layers as reach
  the size.

Sizes are node counts before ``optimize_model``. A family stops growing once one size took
more than ``--budget`` seconds in all (default 300), so that a quadratic build does not run
for hours.

    PYTHONPATH=python .venv/bin/python bench/scaling.py
    PYTHONPATH=python .venv/bin/python bench/scaling.py --families chain --sizes 1000 4000

Times are CPU seconds of the process (``time.process_time``), so that other work on a shared
machine does not count; run it on one core (``taskset -c 0``), so that they are also the
wall-clock time on an idle core. The calibrator's ONNX Runtime session gets one thread
(``threads=1``). Each size is built once, saved, then measured ``--repeat`` times (default 3),
each time in a new Python process that loads the saved model, as a user's script would: no
measurement inherits the heap of the build (the torch export) or of a smaller size. Per stage
the fastest run counts (the others differ by what else ran on the machine). The report goes
to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
import onnx.checker
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx.shape_inference

import onnxquant as oq
from onnxquant import _core, _payloads, _shapes, calibrator, kernel_check

OPSET = 17
WIDTH = 64
HEADS = 4
FFN = 128
SEQ = 16
BLOCK_NODES = 33


# ---------------------------------------------------------------- graphs

def chain_model(n: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in range(n):
        c = f"c{i}"
        inits.append(onh.from_array(rng.uniform(-0.01, 0.01, WIDTH).astype(np.float32), c))
        out = "y" if i == n - 1 else f"t{i}"
        nodes.append(oh.make_node("Add", [prev, c], [out], name=f"add{i}"))
        prev = out
    graph = oh.make_graph(
        nodes, "chain",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, WIDTH])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, WIDTH])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    model.ir_version = 8
    x = rng.standard_normal((1, WIDTH)).astype(np.float32)
    return model, {"x": x}


def _block(b: int, x: str, rng: np.random.Generator, nodes: list, inits: list) -> str:
    """Appends transformer block `b` reading `x`; returns its output name."""
    p = f"b{b}_"

    def const(name: str, value: np.ndarray) -> str:
        inits.append(onh.from_array(value.astype(np.float32), p + name))
        return p + name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(oh.make_node(op, inputs, [p + name], name=p + name + "_node", **attrs))
        return p + name

    def linear(h: str, name: str, n_in: int, n_out: int) -> str:
        w = const(name + "_w", rng.standard_normal((n_in, n_out)) / math.sqrt(n_in))
        bias = const(name + "_b", rng.standard_normal(n_out) * 0.02)
        return node("Add", [node("MatMul", [h, w], name + "_mm"), bias], name)

    head = WIDTH // HEADS
    split, merge = p + "split_shape", p + "merge_shape"
    inits.append(onh.from_array(np.array([1, SEQ, HEADS, head], np.int64), split))
    inits.append(onh.from_array(np.array([1, SEQ, WIDTH], np.int64), merge))
    ln1 = node("LayerNormalization",
               [x, const("ln1_g", np.ones(WIDTH)), const("ln1_b", np.zeros(WIDTH))],
               "ln1", axis=-1, epsilon=1e-5)
    q = node("Transpose", [node("Reshape", [linear(ln1, "q", WIDTH, WIDTH), split], "q_r")],
             "q_t", perm=[0, 2, 1, 3])
    k = node("Transpose", [node("Reshape", [linear(ln1, "k", WIDTH, WIDTH), split], "k_r")],
             "k_t", perm=[0, 2, 3, 1])
    v = node("Transpose", [node("Reshape", [linear(ln1, "v", WIDTH, WIDTH), split], "v_r")],
             "v_t", perm=[0, 2, 1, 3])
    scores = node("Div", [node("MatMul", [q, k], "qk"),
                          const("scale", np.array(math.sqrt(head)))], "scores")
    probs = node("Softmax", [scores], "probs", axis=-1)
    ctx = node("Transpose", [node("MatMul", [probs, v], "ctx")], "ctx_t", perm=[0, 2, 1, 3])
    merged = node("Reshape", [ctx, merge], "ctx_r")
    h1 = node("Add", [x, linear(merged, "o", WIDTH, WIDTH)], "res1")
    ln2 = node("LayerNormalization",
               [h1, const("ln2_g", np.ones(WIDTH)), const("ln2_b", np.zeros(WIDTH))],
               "ln2", axis=-1, epsilon=1e-5)
    f = linear(ln2, "ff1", WIDTH, FFN)
    erf = node("Erf", [node("Div", [f, const("sqrt2", np.array(math.sqrt(2.0)))], "g_div")],
               "g_erf")
    g = node("Mul", [node("Mul", [f, node("Add", [erf, const("one", np.array(1.0))],
                                                  "g_add")], "g_mul"),
                     const("half", np.array(0.5))], "gelu")
    return node("Add", [h1, linear(g, "ff2", FFN, WIDTH)], "res2")


def block_model(n: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    nodes: list = []
    inits: list = []
    x = "x"
    for b in range(max(1, round(n / BLOCK_NODES))):
        x = _block(b, x, rng, nodes, inits)
    nodes.append(oh.make_node("Identity", [x], ["y"], name="output"))
    graph = oh.make_graph(
        nodes, "blocks",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, SEQ, WIDTH])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, SEQ, WIDTH])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((1, SEQ, WIDTH)).astype(np.float32)}


def torch_model(n: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    import io

    import torch

    torch.manual_seed(0)

    def export(layers: int) -> onnx.ModelProto:
        layer = torch.nn.TransformerEncoderLayer(WIDTH, HEADS, FFN, dropout=0.0,
                                                 batch_first=True)
        net = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
        buffer = io.BytesIO()
        # Grad left enabled: under no_grad the layer takes its fused fast path
        # (aten::_transformer_encoder_layer_fwd), which has no ONNX export.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.randn(1, SEQ, WIDTH),), buffer, dynamo=False,
                              opset_version=OPSET, input_names=["x"], output_names=["y"])
        return onnx.load_from_string(buffer.getvalue())

    per_layer = len(export(2).graph.node) - len(export(1).graph.node)
    model = export(max(1, round(n / per_layer)))
    x = np.random.default_rng(0).standard_normal((1, SEQ, WIDTH)).astype(np.float32)
    return model, {"x": x}


FAMILIES: dict[str, Callable[[int], tuple[onnx.ModelProto, dict[str, np.ndarray]]]] = {
    "chain": chain_model, "block": block_model, "torch": torch_model}


# ---------------------------------------------------------------- timing

class Clock:
    """Accumulates the time spent in wrapped callables, by label."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth:  # nested inside another timed call: counted there
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[label] += time.process_time() - start
                self._depth -= 1
        return timed


@contextlib.contextmanager
def instrumented(clock: Clock):
    """Times the external calls (shape inference, checker, ONNX Runtime) and the
    engine's entry points for the duration."""
    patches = [
        (onnx.shape_inference, "infer_shapes", "shape inference"),
        (onnx.checker, "check_model", "checker"),
        (calibrator, "_session", "ORT session"),
        (_payloads, "ort_session", "ORT session"),  # the kernel check's own session
        (kernel_check, "_run", "ORT run"),
        (_shapes, "_ort_dtypes", "ORT session"),
        (_core, "run_passes", "engine"),
        (_core, "make_plan", "engine"),
        (_core, "expose_tensors", "engine"),
        (_core, "quantize", "engine"),
        (_core, "KernelChecker", "engine"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, label in patches:
            setattr(obj, name, clock.wrap(label, getattr(obj, name)))
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


EXTERNAL = ("shape inference", "checker", "ORT session", "ORT run")


def timed(fn: Callable):
    clock = Clock()
    with instrumented(clock):
        start = time.process_time()
        result = fn()
        total = time.process_time() - start
    return result, total, dict(clock.spent)


def measure(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict:
    """Times the three stages on ``model`` in this process."""
    row = {"nodes": len(model.graph.node)}
    optimized, row["optimize"], row["optimize_parts"] = timed(
        lambda: oq.optimize_model(model))
    cal, row["setup"], row["setup_parts"] = timed(
        lambda: oq.Calibrator(optimized, oq.CalibrationMethod.MIN_MAX_ASYM, threads=1))
    _, row["collect"], _ = timed(lambda: cal.collect_data([feed]))
    ranges = cal.compute_range()
    _, row["quantize"], row["quantize_parts"] = timed(
        lambda: oq.quantize(optimized, ranges, calibrator=cal))
    return row


STAGES = ("optimize", "setup", "collect", "quantize")


def run_one(family: str, n: int, repeat: int, workdir: str) -> dict:
    """Builds the model here, then measures it ``repeat`` times, each in a new
    process that only loads it (so no run inherits the heap of the build or
    of another run); per stage, the fastest run's times."""
    model, feed = FAMILIES[family](n)
    path = os.path.join(workdir, f"{family}-{n}.onnx")
    onnx.save(model, path)
    np.savez(path + ".npz", **feed)
    del model
    runs = []
    for _ in range(repeat):
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path],
                               capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise RuntimeError(f"{family} at {n} nodes failed:\n{child.stderr[-4000:]}")
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    row = {"family": family, "nodes": runs[0]["nodes"]}
    for stage in STAGES:
        best = min(runs, key=lambda r: r[stage])
        row[stage] = best[stage]
        if stage + "_parts" in best:
            row[stage + "_parts"] = best[stage + "_parts"]
    return row


def child(path: str) -> None:
    model = onnx.load(path)
    with np.load(path + ".npz") as data:
        feed = {k: data[k] for k in data.files}
    print(json.dumps(measure(model, feed)))


# ---------------------------------------------------------------- report

def own(row: dict, stage: str) -> float:
    parts = row[stage + "_parts"]
    return row[stage] - sum(parts.get(k, 0.0) for k in EXTERNAL)


def slope(points: list[tuple[int, float]]) -> float | None:
    points = [(n, t) for n, t in points if n >= 3500 and t > 0]
    if len(points) < 2:
        return None
    xs = np.log([n for n, _ in points])
    ys = np.log([t for _, t in points])
    return float(np.polyfit(xs, ys, 1)[0])


def fmt(t: float) -> str:
    return f"{t:.2f}" if t < 100 else f"{t:.0f}"


def print_table(rows: list[dict]) -> None:
    print("| family | nodes | optimize_model s (own / shape inf.) | Calibrator set-up s "
          "(own / ORT session / shape inf.) | collect 1 sample s | quantize s "
          "(own / ORT / shape inf. / checker) | optimize + quantize s | own total s |")
    print("|---|---:|---|---|---:|---|---:|---:|")
    for r in rows:
        o, s, q = r["optimize_parts"], r["setup_parts"], r["quantize_parts"]
        ort_q = q.get("ORT session", 0.0) + q.get("ORT run", 0.0)
        own_total = own(r, "optimize") + own(r, "setup") + own(r, "quantize")
        print(f"| {r['family']} | {r['nodes']} "
              f"| {fmt(r['optimize'])} ({fmt(own(r, 'optimize'))} / "
              f"{fmt(o.get('shape inference', 0.0))}) "
              f"| {fmt(r['setup'])} ({fmt(own(r, 'setup'))} / "
              f"{fmt(s.get('ORT session', 0.0))} / {fmt(s.get('shape inference', 0.0))}) "
              f"| {fmt(r['collect'])} "
              f"| {fmt(r['quantize'])} ({fmt(own(r, 'quantize'))} / {fmt(ort_q)} / "
              f"{fmt(q.get('shape inference', 0.0))} / {fmt(q.get('checker', 0.0))}) "
              f"| {fmt(r['optimize'] + r['quantize'])} | {fmt(own_total)} |")


def print_exponents(rows: list[dict]) -> None:
    print()
    print("Growth exponent (slope of log time over log nodes, sizes >= 4k):")
    print()
    print("| family | optimize_model | Calibrator set-up | quantize | "
          "optimize + quantize | own total |")
    print("|---|---:|---:|---:|---:|---:|")
    for family in dict.fromkeys(r["family"] for r in rows):
        fr = [r for r in rows if r["family"] == family]

        def fit(f: Callable[[dict], float]) -> str:
            k = slope([(r["nodes"], f(r)) for r in fr])
            return "-" if k is None else f"{k:.2f}"

        print(f"| {family} | {fit(lambda r: r['optimize'])} | {fit(lambda r: r['setup'])} "
              f"| {fit(lambda r: r['quantize'])} "
              f"| {fit(lambda r: r['optimize'] + r['quantize'])} "
              f"| {fit(lambda r: own(r, 'optimize') + own(r, 'setup') + own(r, 'quantize'))} |")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000, 16000, 64000])
    parser.add_argument("--budget", type=float, default=300.0,
                        help="stop growing a family after a size that took longer (s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per size, each in a new process; the fastest counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"CPU: {cpu_name()}, {cpus} CPU(s) usable; onnxquant {oq.__version__}, "
          f"onnx {onnx.__version__}, onnxruntime {ort_version()}; "
          f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"times: CPU seconds of the process; each size run {args.repeat} times, each in a "
          "new process, the fastest run per stage")
    print()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxquant-scaling-") as workdir:
        for family in args.families:
            for n in sorted(args.sizes):
                start = time.monotonic()
                row = run_one(family, n, args.repeat, workdir)
                rows.append(row)
                spent = time.monotonic() - start
                print(f"{family} {row['nodes']} nodes: optimize {row['optimize']:.2f} s, "
                      f"set-up {row['setup']:.2f} s, quantize {row['quantize']:.2f} s "
                      f"({spent:.1f} s wall with building and {args.repeat} runs)",
                      file=sys.stderr, flush=True)
                if spent > args.budget:
                    print(f"{family}: stopped after {row['nodes']} nodes ({spent:.0f} s > "
                          f"--budget {args.budget:.0f} s)", file=sys.stderr)
                    break
    print_table(rows)
    print_exponents(rows)


if __name__ == "__main__":
    main()
