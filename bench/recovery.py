"""Recovery techniques in W8A8 per-tensor power-of-two: plain PTQ against each technique
alone and all together, top-1 as deployed.

For each model (the zoo's ResNet8 and the models/cifar networks, the entries of
bench/accuracy.py) and each power-of-two rule (``QuantOptions(per_channel=False,
power_of_two="ceil" | "mse")``):

- plain: optimize_model, MIN_MAX_ASYM calibration, quantize;
- WRS: the same with ``weight_range="mse"`` (per-tensor weight range search);
- CLE: ``recovery.equalize_cross_layer(power_of_two=True)`` before calibration (Clip
  stops a chain);
- CLE unaligned: the same without ``power_of_two`` (the alignment's effect);
- CLE r6: the same with ``replace_relu6=True`` (only for models with a Clip);
- BC: ``recovery.correct_bias`` (with the quantization options) before calibration;
- all: CLE, then BC with ``weight_range="mse"``, calibrated and quantized with it;
- all r6: the same with ``replace_relu6=True`` (models with a Clip).

The first ``--calibration`` images of each entry's calibration set calibrate and correct;
top-1 on ``--test-images`` test images drawn with numpy.random.default_rng(0) (the CIFAR-10
test file is sorted by class: its first 2 000 images are two classes), ONNX Runtime's
default session options (fused integer kernels). Run time of each technique is printed
after the table (CLE: the engine call; BC: model runs included; WRS: quantize with the
search less quantize without).

    PYTHONPATH=python .venv/bin/python bench/recovery.py [--models resnet8 cifar-resnet ...]

``--weights-only``: the diagnostic of where the gap sits: top-1 with only the weights
quantized (emulated, activations float), for plain, WRS and CLE.

``--smooth-quant``: SmoothQuant instead, in W8A8 as deployed (``QuantOptions()``: per-channel
weights, the default portable target; ``--mode pow2`` or ``w4a8`` for per-tensor power-of-two
or int4 weights, which the alpha search then emulates), for MatMul models (default:
``cifar-vit``): plain PTQ
against ``recovery.smooth_quant`` with alpha searched and with each ``--alphas`` value,
calibrated with ``--method`` (default MSE_ASYM, the ViT's best in docs/accuracy.md) on the
same images as the plain model (``--model-scope``: also one alpha searched for the whole
model); top-1 fused and emulated (diagnostic), and the pass's run time:

    PYTHONPATH=python nice -n 10 .venv/bin/python bench/recovery.py --smooth-quant \
        --calibration 500 --test-images 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnxruntime as ort

ort.set_default_logger_severity(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import MODELS  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO  # noqa: E402
from onnxquant import _core, recovery  # noqa: E402

DEFAULT_MODELS = ("resnet8", "cifar-resnet", "cifar-mobilenetv2", "cifar-efficientnet",
                  "cifar-convnext", "cifar-vit")
COLUMNS = ("plain", "WRS", "CLE", "CLE unaligned", "CLE r6", "BC", "all", "all r6")


def correct(model, x: np.ndarray, y: np.ndarray, batch: int = 100) -> np.ndarray:
    """Per test image, whether ``model`` (default session: fused) classifies it right."""
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    out = [s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).argmax(axis=1) == y


def top1(model, x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float(np.mean(correct(model, x, y)))


def cell(hits: np.ndarray, plain: np.ndarray) -> str:
    """Top-1, and the paired difference to plain with its standard error (points)."""
    d = hits.astype(np.float64) - plain.astype(np.float64)
    se = 100.0 * float(np.std(d, ddof=1)) / np.sqrt(len(d))
    return f"{100.0 * hits.mean():.2f} ({100.0 * d.mean():+.2f} ± {se:.2f})"


def quantized(model, samples: list[np.ndarray], options: oq.QuantOptions):
    cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
    cal.collect_data(samples)
    return oq.quantize(model, cal.compute_range(), options=options, calibrator=cal)


def search_seconds(model, power_of_two: bool) -> float:
    """Run time of the per-tensor weight range search over every Conv, Gemm and MatMul
    weight of ``model`` (what weight_range="mse" adds to quantize)."""
    inits = {t.name: t for t in model.graph.initializer}
    weights = [onh.to_array(inits[n.input[1]]).astype(np.float32)
               for n in model.graph.node
               if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1
               and n.input[1] in inits]
    t = time.perf_counter()
    for w in weights:
        _core.search_weight_scales(np.ascontiguousarray(w), -1, 127, power_of_two)
    return time.perf_counter() - t


def weights_only(model, options: oq.QuantOptions):
    """``model`` with its planned weights replaced by their quantized values (activations
    float): the diagnostic of how much the weights alone lose."""
    from onnxquant._model import model_to_bytes
    from onnxquant._shapes import infer_dtypes

    data, _ = _core.emulate_quantized_weights(model_to_bytes(model), infer_dtypes(model),
                                              options.to_native())
    out = onnx.ModelProto()
    out.ParseFromString(data)
    return out


def run_weights_only(key: str, args) -> None:
    entry = MODELS[key](args.zoo)
    test = entry.test.subset(args.test_images)
    model = oq.optimize_model(entry.path)
    eq, _ = recovery.equalize_cross_layer(model, power_of_two=True)
    cells = [f"{top1(model, test.x, test.y):.2f}"]
    for rule in args.rules:
        base = oq.QuantOptions(per_channel=False, power_of_two=rule)
        search = oq.QuantOptions(per_channel=False, power_of_two=rule, weight_range="mse")
        cells += [f"{top1(weights_only(model, base), test.x, test.y):.2f}",
                  f"{top1(weights_only(model, search), test.x, test.y):.2f}",
                  f"{top1(weights_only(eq, base), test.x, test.y):.2f}"]
    print(f"| {entry.name} | " + " | ".join(cells) + " |", flush=True)


def run_model(key: str, args, timings: list[str], notes: list[str]) -> None:
    entry = MODELS[key](args.zoo)
    test = entry.test.subset(args.test_images)
    samples = [entry.calibration[i:i + 1] for i in range(args.calibration)]
    model = oq.optimize_model(entry.path)
    has_clip = any(n.op_type == "Clip" for n in model.graph.node)
    fp32 = top1(model, test.x, test.y)
    eq, eq_rec = recovery.equalize_cross_layer(model, power_of_two=True)
    unaligned, _ = recovery.equalize_cross_layer(model)
    eq6, eq6_rec = (recovery.equalize_cross_layer(model, replace_relu6=True, power_of_two=True)
                    if has_clip else (None, None))
    if has_clip:
        notes.append(f"{entry.name}: FP32 {fp32:.2f}; with ReLU6 -> ReLU (CLE r6) "
                     f"{top1(eq6, test.x, test.y):.2f}; CLE pairs {len(eq_rec.pairs)} "
                     f"(Clip stops {len(eq_rec.clips_stopped)}), with r6 {len(eq6_rec.pairs)} "
                     f"({eq6_rec.seconds:.2f} s)")
    for rule in args.rules:
        base = oq.QuantOptions(per_channel=False, power_of_two=rule)
        search = oq.QuantOptions(per_channel=False, power_of_two=rule, weight_range="mse")
        x, y = test.x, test.y
        acc: dict[str, np.ndarray | None] = {}
        acc["plain"] = correct(quantized(model, samples, base), x, y)
        acc["WRS"] = correct(quantized(model, samples, search), x, y)
        acc["CLE"] = correct(quantized(eq, samples, base), x, y)
        acc["CLE unaligned"] = correct(quantized(unaligned, samples, base), x, y)
        acc["CLE r6"] = correct(quantized(eq6, samples, base), x, y) if has_clip else None
        bc, bc_rec = recovery.correct_bias(model, samples, options=base)
        acc["BC"] = correct(quantized(bc, samples, base), x, y)
        both, _ = recovery.correct_bias(eq, samples, options=search)
        acc["all"] = correct(quantized(both, samples, search), x, y)
        if has_clip:
            both6, _ = recovery.correct_bias(eq6, samples, options=search)
            acc["all r6"] = correct(quantized(both6, samples, search), x, y)
        else:
            acc["all r6"] = None
        cells = " | ".join(
            "—" if acc[c] is None else
            f"{100.0 * acc[c].mean():.2f}" if c == "plain" else cell(acc[c], acc["plain"])
            for c in COLUMNS)
        print(f"| {entry.name} | {rule} | {fp32:.2f} | {cells} |", flush=True)
        timings.append(
            f"| {entry.name} | {rule} | {search_seconds(model, True):.2f} | {eq_rec.seconds:.2f} "
            f"({len(eq_rec.pairs)} pairs, {eq_rec.sweeps} sweeps) | {bc_rec.seconds:.2f} "
            f"({len(bc_rec.corrections)} layers, {bc_rec.rounds} runs × {bc_rec.samples} "
            f"samples) |")


def emulated_correct(model, x: np.ndarray, y: np.ndarray, batch: int = 100) -> np.ndarray:
    """As ``correct``, with QDQ emulated in float (the diagnostic)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    s = ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    out = [s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).argmax(axis=1) == y


SMOOTH_MODES = {"w8a8": oq.QuantOptions(),
                "pow2": oq.QuantOptions(per_channel=False, power_of_two="ceil"),
                "w4a8": oq.QuantOptions(weight_type="int4")}


def run_smooth_quant(key: str, args) -> None:
    """One model: plain W8A8 against SmoothQuant (searched, then each fixed alpha)."""
    entry = MODELS[key](args.zoo)
    test = entry.test.subset(args.test_images)
    samples = [entry.calibration[i:i + 1] for i in range(args.calibration)]
    model = oq.optimize_model(entry.path)
    options = SMOOTH_MODES[args.mode]
    fp32 = correct(model, test.x, test.y)

    def quantize(m):
        cal = oq.Calibrator(m, args.method, options=options)
        cal.collect_data(samples)
        return oq.quantize(m, cal.compute_range(), options=options, calibrator=cal)

    plain_q = quantize(model)
    plain = correct(plain_q, test.x, test.y)
    plain_emulated = emulated_correct(plain_q, test.x, test.y)
    print(f"| {entry.name} | plain | — | — | {100 * fp32.mean():.2f} "
          f"| {100 * plain.mean():.2f} | {100 * plain_emulated.mean():.2f} | — |", flush=True)
    for alpha in [None] + (["model"] if args.model_scope else []) + list(args.alphas):
        scope = "model" if alpha == "model" else "group"
        alpha = None if alpha == "model" else alpha
        smoothed, rec = recovery.smooth_quant(model, samples, alpha=alpha, options=options,
                                              alpha_scope=scope)
        q = quantize(smoothed)
        hits = correct(q, test.x, test.y)
        applied = [g for g in rec.groups if g.applied]
        alphas = sorted({round(g.alpha, 2) for g in applied})
        span = (f"{min(alphas):.2f}–{max(alphas):.2f}" if len(alphas) > 1 else
                f"{alphas[0]:.2f}" if alphas else "—")
        before = np.mean([g.error_before for g in applied]) if applied else 0.0
        after = np.mean([g.error_after for g in applied]) if applied else 0.0
        label = ("SmoothQuant, alpha searched" + (" per model" if scope == "model" else "")
                 if alpha is None else f"SmoothQuant, alpha {alpha}")
        print(f"| {entry.name} | {label} | {len(applied)} of {len(rec.groups)} ({span}) "
              f"| {before:.2e} → {after:.2e} | {100 * fp32.mean():.2f} | {cell(hits, plain)} "
              f"| {100 * emulated_correct(q, test.x, test.y).mean():.2f} | {rec.seconds:.2f} |",
              flush=True)
        if alpha is None and scope == "group":
            for g in rec.groups:
                print(f"<!-- {g.activation}: {g.absorb}, alpha {g.alpha:.2f}, applied "
                      f"{g.applied}, s {g.scale_min:.3g}..{g.scale_max:.3g}, error "
                      f"{g.error_before:.3g} -> {g.error_after:.3g} -->", flush=True)
            for activation, reason in rec.skipped:
                print(f"<!-- skipped {activation}: {reason} -->", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--rules", nargs="+", default=["ceil", "mse"], choices=["ceil", "mse"])
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--calibration", type=int, default=200)
    p.add_argument("--zoo", default=DEFAULT_ZOO)
    p.add_argument("--weights-only", action="store_true",
                   help="diagnostic instead: top-1 with only the weights quantized (emulated, "
                        "activations float), plain, WRS and CLE, per rule")
    p.add_argument("--smooth-quant", action="store_true",
                   help="SmoothQuant instead, in W8A8 default options (see the docstring)")
    p.add_argument("--alphas", nargs="*", type=float, default=[0.25, 0.5, 0.75],
                   help="fixed alphas tried beside the search (--smooth-quant)")
    p.add_argument("--method", default="MSE_ASYM", help="calibration method (--smooth-quant)")
    p.add_argument("--model-scope", action="store_true",
                   help="--smooth-quant: also one alpha searched for the whole model")
    p.add_argument("--mode", default="w8a8", choices=list(SMOOTH_MODES),
                   help="--smooth-quant: w8a8 (QuantOptions()), pow2 (per_channel=False, "
                        "power_of_two='ceil') or w4a8 (weight_type='int4')")
    args = p.parse_args()
    if args.smooth_quant:
        if args.models == list(DEFAULT_MODELS):
            args.models = ["cifar-vit"]
        print(f"command: python bench/recovery.py {' '.join(sys.argv[1:])}")
        print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
              f"onnxquant {oq.__version__}, onnxruntime {ort.__version__}")
        described = {"w8a8": "QuantOptions()",
                     "pow2": "QuantOptions(per_channel=False, power_of_two='ceil')",
                     "w4a8": "QuantOptions(weight_type='int4')"}[args.mode]
        print(f"{args.mode} ({described}), {args.method}, "
              f"{args.calibration} calibration images; "
              f"top-1 % on {args.test_images} drawn test images, default session (fused); "
              "in brackets: paired difference to plain ± its standard error (points); "
              "emulated: disable_quant_qdq (diagnostic); error: the groups' mean relative "
              "quantized-MatMul error in the engine's search, before → after; s: the pass's "
              "run time (statistics, search and rewrite)\n")
        print("| model | config | groups smoothed (alpha) | error | FP32 | fused | emulated "
              "| s |")
        print("|---|---|---|---|---:|---:|---:|---:|")
        for key in args.models:
            run_smooth_quant(key, args)
        return
    if args.weights_only:
        print(f"command: python bench/recovery.py {' '.join(sys.argv[1:])}")
        print("weights only (emulated), per-tensor power-of-two; top-1 % on "
              f"{args.test_images} drawn test images\n")
        head = " | ".join(f"{c} {r}" for r in args.rules for c in ("plain", "WRS", "CLE"))
        print(f"| model | FP32 | {head} |")
        print("|---|---:|" + "---:|" * (3 * len(args.rules)))
        for key in args.models:
            run_weights_only(key, args)
        return
    print(f"command: python bench/recovery.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
          f"onnxquant {oq.__version__}, onnxruntime {ort.__version__}")
    print(f"W8A8 per-tensor power-of-two; {args.calibration} calibration images, MIN_MAX_ASYM; "
          f"top-1 % on {args.test_images} drawn test images, default session (fused); "
          "in brackets: paired difference to plain ± its standard error (points)\n")
    print("| model | pow2 | FP32 | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---:|" + "---:|" * len(COLUMNS))
    timings: list[str] = []
    notes: list[str] = []
    for key in args.models:
        run_model(key, args, timings, notes)
    for line in notes:
        print(f"\n{line}")
    print("\nRun time of each technique (s):\n")
    print("| model | pow2 | WRS (search, all weights) | CLE | BC |")
    print("|---|---|---:|---:|---:|")
    for line in timings:
        print(line)


if __name__ == "__main__":
    main()
