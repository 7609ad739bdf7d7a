"""Where the ViT's INT8 gap to ONNX Runtime's quantize_static sits: paired one-change runs.

On ``models/cifar/vit.onnx`` onnxquant's default (``quantize(model, ranges,
calibrator=...)``, MSE_ASYM as ``bench/accuracy.py`` chooses it on the validation split)
scored 0.31 points of top-1 below ONNX Runtime's ``quantize_static`` MinMax on the 10 000
test images (fused, paired SE 0.13). This script changes one thing at a time, on either
side, and measures every variant on the same images:

* onnxquant's side: the Softmax outputs given ONNX Runtime's range [0, 1] (scale 1/255
  instead of max/255); ONNX Runtime's activation ranges (read back from its model) for
  every tensor onnxquant plans; ``float_outputs=False``; ``quantize_activation_matmul=False``;
  ``target="exact"``; the LayerNorm scale and shift (gamma, beta) replaced by the values
  ONNX Runtime's model dequantizes them to (uint8 per tensor), the rest unchanged.
* ONNX Runtime's side: the decomposed LayerNorms, the decomposed GELUs, or both left out of
  quantization (``nodes_to_exclude``: the nodes onnxquant's plan keeps float); the LayerNorm
  gamma and beta in float (their DequantizeLinear replaced by the float tensor, the
  activation Q/DQ kept); onnxquant's ranges written into ONNX Runtime's Q/DQ pairs for the
  tensors both plan (onnxquant's ranges on ONNX Runtime's structure).

Every model runs with ONNX Runtime's default session options (fused integer kernels on this
CPU). For each variant the table gives top-1 on the test set and on the validation split
(5 000 held-out training images: a second, independent sample of images), the paired
differences to ONNX Runtime's and onnxquant's unchanged models on both, and the fidelity to
FP32 on the test set: the mean KL divergence of the softmax outputs, the SQNR of the logits
and the share of images whose top-1 class is FP32's. ``--seeds`` repeats everything with
other calibration draws (500 of the 45 000 training images, ``default_rng(seed)``).

The LayerNorm and GELU nodes are found by the names ``models/cifar/nets.py``'s export gives
them (``.../norm1/``, ``.../norm2/``, ``/norm/``; ``.../mlp.1/``): a diagnostic of this
model, not a general tool.

    PYTHONPATH=python .venv/bin/python bench/vit_gap.py [--seeds 0 1] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import CIFAR_DIR, cifar_data_module  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO, draw, log, table  # noqa: E402
from accuracy_lib.ort_quant import ort_preprocess, ort_quantize, ort_ranges  # noqa: E402
from onnxquant.evaluate import make_session  # noqa: E402

#: The method bench/accuracy.py chooses for the ViT on the validation split.
OUR_METHOD = "MSE_ASYM"
#: The two models every variant is compared with (paired, on the same images).
ORT_REFERENCE = "ORT MinMax"
OUR_REFERENCE = f"onnxquant default ({OUR_METHOD})"
#: LayerNorm gamma/beta initializers and the nodes of the decomposed LayerNorms and GELUs,
#: by the names of the TorchScript export of models/cifar/nets.py.
LN_PARAM = re.compile(r"(^|\.)norm\d?\.(weight|bias)$")
LN_NODE = re.compile(r"/norm\d?/")
GELU_NODE = re.compile(r"/mlp\.1/")


@dataclass
class Data:
    calibration: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_data(zoo: str, seed: int) -> Data:
    """bench/accuracy.py's CIFAR sets, with the calibration drawn by ``default_rng(seed)``."""
    data = cifar_data_module()
    x_train, _, x_val, y_val, _ = data.load_train_val(zoo)
    x_test, y_test = data.load_test(zoo)
    return Data(data.preprocess(x_train[draw(len(x_train), 500, seed=seed)]),
                data.preprocess(x_test), y_test.astype(np.int64),
                data.preprocess(x_val), y_val.astype(np.int64))


def logits(model: onnx.ModelProto | str, x: np.ndarray, threads: int | None) -> np.ndarray:
    """Logits of ``model`` run with ONNX Runtime's default session options (fused)."""
    session = make_session(model, emulate=False, threads=threads)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 500]})[0]
                           for i in range(0, len(x), 500)])


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error, in points, of correct(a) - correct(b) per image."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return 100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))


# ---- onnxquant's side ---------------------------------------------------------------------

def ln_params_as_ort(ours: onnx.ModelProto, ort: onnx.ModelProto) -> onnx.ModelProto:
    """``ours`` with each LayerNorm gamma/beta replaced by the value ONNX Runtime's model
    dequantizes it to."""
    inits = {t.name: numpy_helper.to_array(t) for t in ort.graph.initializer}
    values = {}
    for node in ort.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            base = node.input[0].removesuffix("_quantized")
            if LN_PARAM.search(base):
                q, s, z = (inits[n] for n in node.input[:3])
                values[base] = ((q.astype(np.float32) - z.astype(np.float32)) * s
                                ).astype(np.float32)
    out = onnx.ModelProto()
    out.CopyFrom(ours)
    for t in out.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


# ---- ONNX Runtime's side ------------------------------------------------------------------

def float_ln_params(ort: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """``ort`` with the DequantizeLinear of each LayerNorm gamma/beta replaced by the float
    tensor (the activation Q/DQ pairs kept)."""
    floats = {t.name: t for t in fp32.graph.initializer if LN_PARAM.search(t.name)}
    inits = {t.name for t in ort.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(ort)
    keep = []
    for node in out.graph.node:
        base = node.input[0].removesuffix("_quantized") if node.input else ""
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and base in floats:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(floats[base])
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def with_ranges(ort: onnx.ModelProto, ranges: dict[str, tuple[float, float]]
                ) -> onnx.ModelProto:
    """``ort`` with the uint8 scale and zero point of every activation Q/DQ pair whose tensor
    has a range in ``ranges`` set from that range (onnxquant's arithmetic: the range widened
    to contain 0, scale = width / 255, zero point rounded half to even)."""
    out = onnx.ModelProto()
    out.CopyFrom(ort)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        name = node.input[0].removesuffix("_QuantizeLinear_Input")
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or name not in ranges:
            continue
        low, high = min(ranges[name][0], 0.0), max(ranges[name][1], 0.0)
        scale = np.float32((high - low) / 255)
        zero = np.uint8(np.clip(np.rint(-low / scale), 0, 255))
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.array(scale),
                                                              node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.array(zero), node.input[2]))
    return out


# ---- the runs -----------------------------------------------------------------------------

def variants(model: onnx.ModelProto, data: Data, workdir: str
             ) -> list[tuple[str, Callable[[], onnx.ModelProto]]]:
    """(label, builder) of every model measured, the two references first."""
    input_name = model.graph.input[0].name
    normalised = os.path.join(workdir, "normalised.onnx")
    onnx.save(model, normalised)
    source = ort_preprocess(normalised, workdir, True, [])
    graph = onnx.load(source).graph
    ln = [n.name for n in graph.node if LN_NODE.search(n.name)]
    gelu = [n.name for n in graph.node if GELU_NODE.search(n.name)]
    cache = os.path.join(workdir, "ort_calibration.json")
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(data.calibration[i:i + 1] for i in range(len(data.calibration)))
    ranges = cal.compute_range(oq.CalibrationMethod[OUR_METHOD])
    built: dict[str, onnx.ModelProto] = {}

    def ort(exclude: tuple[str, ...] = ()) -> onnx.ModelProto:
        key = f"ort {exclude}"
        if key not in built:
            path = os.path.join(workdir, f"ort_{len(built)}.onnx")
            ort_quantize(source, path, input_name, data.calibration, "MinMax",
                         nodes_to_exclude=list(exclude), calibration_cache=cache)
            built[key] = onnx.load(path)
        return built[key]

    def ours(r=ranges, **kwargs) -> onnx.ModelProto:
        if kwargs:  # a plan of its own: its own collection of the tensors it needs
            c = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM,
                              options=oq.QuantOptions(**kwargs))
            c.collect_data(data.calibration[i:i + 1] for i in range(len(data.calibration)))
            return oq.quantize(model, c.compute_range(oq.CalibrationMethod[OUR_METHOD]),
                               calibrator=c, **kwargs)
        return oq.quantize(model, r, calibrator=cal)

    def ours_default() -> onnx.ModelProto:
        if "ours" not in built:
            built["ours"] = ours()
        return built["ours"]

    softmax_01 = {k: ((0.0, 1.0) if "Softmax" in k else v) for k, v in ranges.items()}
    return [
        (ORT_REFERENCE, ort),
        (OUR_REFERENCE, ours_default),
        ("onnxquant, Softmax outputs [0, 1] (scale 1/255)", lambda: ours(softmax_01)),
        ("onnxquant, ONNX Runtime's activation ranges",
         lambda: ours({k: ort_ranges(ort()).get(k, v) for k, v in ranges.items()})),
        ("onnxquant, float_outputs=False", lambda: ours(float_outputs=False)),
        ("onnxquant, quantize_activation_matmul=False",
         lambda: ours(quantize_activation_matmul=False)),
        ("onnxquant, target=\"exact\"",
         lambda: oq.quantize(model, ranges, calibrator=cal, target="exact")),
        ("onnxquant, LayerNorm gamma/beta as ONNX Runtime rounds them",
         lambda: ln_params_as_ort(ours_default(), ort())),
        ("ORT, LayerNorms excluded", lambda: ort(tuple(ln))),
        ("ORT, GELUs excluded", lambda: ort(tuple(gelu))),
        ("ORT, LayerNorms and GELUs excluded", lambda: ort(tuple(ln + gelu))),
        ("ORT, LayerNorm gamma/beta in float", lambda: float_ln_params(ort(), model)),
        ("ORT structure, onnxquant's ranges", lambda: with_ranges(ort(), ranges)),
    ]


def measure_seed(model: onnx.ModelProto, zoo: str, seed: int, threads: int | None,
                 workdir: str) -> list[list[str]]:
    data = load_data(zoo, seed)
    fp32_test = logits(model, data.x_test, threads)
    fp32_val = logits(model, data.x_val, threads)
    ref = log_softmax(fp32_test)
    rows: list[list[str]] = []
    refs: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # "ort", "ours": correct (test, val)
    rows.append([str(seed), "FP32", f"{100 * np.mean(fp32_test.argmax(1) == data.y_test):.2f}",
                 "", "", f"{100 * np.mean(fp32_val.argmax(1) == data.y_val):.2f}", "", "",
                 "", "", ""])
    for label, build in variants(model, data, workdir):
        t = time.perf_counter()
        q = build()
        z_test, z_val = logits(q, data.x_test, threads), logits(q, data.x_val, threads)
        c_test, c_val = z_test.argmax(1) == data.y_test, z_val.argmax(1) == data.y_val
        if label == ORT_REFERENCE:
            refs["ort"] = (c_test, c_val)
        elif label == OUR_REFERENCE:
            refs["ours"] = (c_test, c_val)
        cells = [label, f"{100 * c_test.mean():.2f}"]
        for which, c in ((0, c_test), (1, c_val)):
            if which == 1:
                cells.append(f"{100 * c_val.mean():.2f}")
            for key in ("ort", "ours"):
                other = refs.get(key)
                cells.append("—" if other is None or other[which] is c
                             else "{:+.2f} ± {:.2f}".format(*paired(c, other[which])))
        kl = (np.exp(ref) * (ref - log_softmax(z_test))).sum(axis=1).mean()
        sqnr = 10 * np.log10((fp32_test.astype(np.float64) ** 2).sum()
                             / ((fp32_test - z_test).astype(np.float64) ** 2).sum())
        agree = 100 * np.mean(z_test.argmax(1) == fp32_test.argmax(1))
        cells += [f"{kl:.5f}", f"{sqnr:.2f}", f"{agree:.2f}"]
        rows.append([str(seed)] + cells)
        log(f"  seed {seed}: {label}: {cells[1]} test, {cells[4]} validation "
            f"({time.perf_counter() - t:.1f} s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=DEFAULT_ZOO)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="calibration draws (default_rng(seed)); 0 is bench/accuracy.py's")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", help="also write the Markdown table here")
    args = ap.parse_args(argv)
    model = oq.optimize_model(os.path.join(CIFAR_DIR, "vit.onnx"))
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as workdir:
            rows += measure_seed(model, args.zoo, seed, args.threads, workdir)
    header = ["seed", "model", "test top-1", "− ORT (test)", "− onnxquant (test)",
              "val top-1", "− ORT (val)", "− onnxquant (val)", "KL to FP32 (test)",
              "logit SQNR dB", "top-1 = FP32's %"]
    text = "\n".join(table(header, rows, ["---:", "---"] + ["---:"] * 9))
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
