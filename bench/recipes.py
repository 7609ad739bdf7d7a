"""A recipe preset against plain PTQ in the preset's mode, top-1 as deployed.

For each model (entries of bench/accuracy.py): plain is optimize_model, MIN_MAX_ASYM
calibration and quantize with the preset's QuantOptions and no technique (weight_range
"minmax": the search is one of the techniques); the preset
column is ``oq.apply_recipe(model, samples, preset)``. Same images as bench/recovery.py:
the first ``--calibration`` images of each entry's calibration set calibrate (and feed
bias correction); top-1 on ``--test-images`` test images drawn with
numpy.random.default_rng(0), ONNX Runtime's default session options (fused integer
kernels). In brackets: the paired difference to plain ± its standard error (points). The
column "without weight search" runs the preset's steps with weight_range="minmax"; "search's
effect" is the preset against that column, paired on the same images.

``--adaround``: three more columns. "without AdaRound" is the preset's steps less its
AdaRound step (the ``w4a8`` preset has one); "AdaRound alone" is plain's options (weight
range search off) with only an AdaRound step; then AdaRound's own time in that run (the
whole apply_recipe in brackets). ``--iterations`` and ``--adaround-samples`` set the steps
per layer and the samples (the first calibration images; 0: all) of every AdaRound step,
the preset's included, and ``--adaround-inputs`` their ``inputs`` ("fp32" or "quantized").

    PYTHONPATH=python .venv/bin/python bench/recipes.py [--preset npu_pow2] [--models ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import onnxruntime as ort

ort.set_default_logger_severity(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import MODELS  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO  # noqa: E402
from recovery import cell, correct, quantized  # noqa: E402

DEFAULT_MODELS = ("resnet8", "cifar-resnet", "cifar-mobilenetv2")


def run_model(key: str, args) -> None:
    entry = MODELS[key](args.zoo)
    test = entry.test.subset(args.test_images)
    samples = [entry.calibration[i:i + 1] for i in range(args.calibration)]
    recipe = oq.Recipe.preset(args.preset)
    recipe = dataclasses.replace(recipe, steps=tuple(
        dataclasses.replace(s, iterations=args.iterations, max_samples=args.adaround_samples,
                            inputs=args.adaround_inputs)
        if s.kind == "adaround" else s for s in recipe.steps))
    model = oq.optimize_model(entry.path)
    fp32 = correct(model, test.x, test.y)
    # Plain: the preset's mode without any technique (weight range search off too).
    options = dataclasses.replace(recipe.options, weight_range="minmax")
    plain = correct(quantized(model, samples, options), test.x, test.y)
    start = time.perf_counter()
    result = oq.apply_recipe(entry.path, samples, recipe)
    seconds = time.perf_counter() - start
    hits = correct(result.model, test.x, test.y)
    no_search = effect = "—"
    if recipe.options.weight_range == "mse":
        without = dataclasses.replace(recipe, options=options)
        other = correct(oq.apply_recipe(entry.path, samples, without).model, test.x, test.y)
        no_search = cell(other, plain)
        # The search's own effect: the preset against its steps without it, paired.
        effect = cell(hits, other).split(" ", 1)[1].strip("()")
    changed = "; ".join(t.summary for t in result.report.techniques).replace("|", "\\|")
    extra = ""
    if args.adaround:
        step = oq.AdaRound(iterations=args.iterations, max_samples=args.adaround_samples,
                           inputs=args.adaround_inputs)
        without = dataclasses.replace(
            recipe, steps=tuple(s for s in recipe.steps if s.kind != "adaround"))
        alone = oq.Recipe(steps=(step,), options=options, method=recipe.method)
        t0 = time.perf_counter()
        res_alone = oq.apply_recipe(entry.path, samples, alone)
        t_alone = time.perf_counter() - t0
        ada_s = sum(t.seconds for t in res_alone.report.techniques if t.technique == "adaround")
        res_without = oq.apply_recipe(entry.path, samples, without)
        extra = (f"{cell(correct(res_without.model, test.x, test.y), plain)} | "
                 f"{cell(correct(res_alone.model, test.x, test.y), plain)} | "
                 f"{ada_s:.1f} ({t_alone:.1f}) | ")
    print(f"| {entry.name} | {100.0 * fp32.mean():.2f} | {100.0 * plain.mean():.2f} | "
          f"{cell(hits, plain)} | {no_search} | {effect} | {extra}{seconds:.1f} | {changed} |",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="npu_pow2", choices=sorted(oq.recipes()))
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--calibration", type=int, default=200)
    p.add_argument("--zoo", default=DEFAULT_ZOO)
    p.add_argument("--adaround", action="store_true",
                   help="add the AdaRound-alone and preset + AdaRound columns")
    p.add_argument("--iterations", type=int, default=1000, help="AdaRound steps per layer")
    p.add_argument("--adaround-samples", type=int, default=0,
                   help="AdaRound samples per layer (0: all calibration images)")
    p.add_argument("--adaround-inputs", default="fp32", choices=["fp32", "quantized"],
                   help="the inputs of every AdaRound step (recovery.adaround's inputs)")
    args = p.parse_args()
    print(f"command: python bench/recipes.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
          f"onnxquant {oq.__version__}, onnxruntime {ort.__version__}")
    print(f"preset {args.preset}: {oq.Recipe.preset(args.preset).to_dict()}")
    print(f"{args.calibration} calibration images; top-1 % on {args.test_images} drawn test "
          "images, default session (fused)\n")
    ada = (f"{args.preset} without AdaRound | AdaRound alone | AdaRound s (whole run s) | "
           if args.adaround else "")
    print(f"| model | FP32 | plain | {args.preset} | {args.preset} without weight search | "
          f"search's effect | {ada}recipe s | what the recipe changed |")
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if args.adaround else "") +
          "---:|---|")
    for key in args.models:
        run_model(key, args)


if __name__ == "__main__":
    main()
