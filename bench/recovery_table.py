"""Issue 12's recovery table: each technique alone and the mode's recipe against plain PTQ,
in W8A8 per-tensor power-of-two, W4A8 per-channel and W8A8 default, top-1 as deployed.

For each model (the zoo's ResNet8 and the models/cifar networks, the entries of
bench/accuracy.py) and each mode, every column is one ``oq.apply_recipe`` call (so
``optimize_model``, the steps, MIN_MAX_ASYM calibration and ``quantize``) with a recipe
built from the mode's ``QuantOptions``:

- plain: no step, ``weight_range="minmax"``;
- WRS: no step, ``weight_range="mse"`` (the per-channel or per-tensor weight range search);
- CLE: ``CrossLayerEqualization`` (aligned to powers of two in the pow2 mode);
- CLE+HBA: the same with ``absorb_high_bias=True`` (high-bias absorption);
- act MSE (pow2 mode only): ``Recipe(activation_power_of_two="mse")``;
- BC: ``BiasCorrection``;
- AdaRound, SmoothQuant: the recipe steps of those names when the package has them (one
  entry each in ``TECHNIQUES`` below; SmoothQuant only on models with MatMul weights);
- recipe: the mode's preset (``npu_pow2``, ``w4a8``, ``cpu_default``), as shipped;
- best: the preset or one of the mode's candidates (``Mode.candidates``, and the preset with
  AdaRound or SmoothQuant appended once they exist), whichever scores highest on
  ``--validation-images`` validation images, measured on the test images (``--no-best``
  leaves it out).

The first ``--calibration`` images of each entry's calibration set calibrate (and feed bias
correction); top-1 on ``--test-images`` test images drawn with numpy.random.default_rng(0),
ONNX Runtime's default session options. W8A8 runs fused (integer kernels); ONNX Runtime has
no int4 kernels for Conv, Gemm or MatMul, so W4A8 runs DQ(int4) -> float op there (the
weights' error is emulated, the rest fused): the "runs as" column says so. In brackets: the
paired difference to plain on the same images ± its standard error (points).

    PYTHONPATH=python .venv/bin/python bench/recovery_table.py [--write]
        [--models resnet8 ...] [--modes "W8A8 pow2" ...] [--columns plain CLE ...]

``--write`` puts the table between the markers of docs/accuracy.md and the run times of
``resnet`` and ``mobilenetv2`` between those of docs/benchmarks.md (each section appended at
the end when its markers are missing); the other sections of both files are left as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import MODELS  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO, REPO  # noqa: E402
from recovery import cell, correct  # noqa: E402

# The module (oq.recipes is the function listing the presets).
rc = importlib.import_module("onnxquant.recipes")
DEFAULT_MODELS = ("resnet8", "cifar-resnet", "cifar-mobilenetv2", "cifar-efficientnet",
                  "cifar-convnext", "cifar-vit")
TIMED_MODELS = ("cifar-resnet", "cifar-mobilenetv2")


@dataclasses.dataclass(frozen=True)
class Mode:
    options: oq.QuantOptions
    preset: str
    runs_as: str
    power_of_two: bool = False
    # Recipes besides the preset that "best" chooses among (on the validation set).
    candidates: tuple[tuple[str, Callable[[oq.Recipe], oq.Recipe]], ...] = ()


def _with_method(method: str) -> Callable[[oq.Recipe], oq.Recipe]:
    return lambda r: dataclasses.replace(r, method=method)


def _without_cle(r: oq.Recipe) -> oq.Recipe:
    return dataclasses.replace(r, steps=tuple(s for s in r.steps
                                              if not isinstance(s, rc.CrossLayerEqualization)))


def _search(rule: str | None = None) -> Callable[[oq.Recipe], oq.Recipe]:
    def change(r: oq.Recipe) -> oq.Recipe:
        extra = {"power_of_two": rule} if rule else {}
        return dataclasses.replace(r, options=dataclasses.replace(r.options, weight_range="mse",
                                                                  **extra))
    return change


MODES = {
    "W8A8 pow2": Mode(oq.QuantOptions(per_channel=False, power_of_two="ceil"), "npu_pow2",
                      "fused", power_of_two=True,
                      candidates=(("+act MSE", lambda r: dataclasses.replace(
                                      r, activation_power_of_two="mse")),
                                  ("+PERCENTILE_ASYM", _with_method("PERCENTILE_ASYM")),
                                  ("-WRS", lambda r: dataclasses.replace(
                                      r, options=dataclasses.replace(
                                          r.options, weight_range="minmax"))))),
    "W4A8": Mode(oq.QuantOptions(weight_type="int4"), "w4a8",
                 "emulated weights: DQ(int4) -> float Conv/Gemm/MatMul (no int4 kernels), "
                 "the rest fused",
                 candidates=(("-CLE", _without_cle), ("+WRS", _search()))),
    "W8A8": Mode(oq.QuantOptions(), "cpu_default", "fused",
                 candidates=(("+BC", lambda r: dataclasses.replace(
                     r, steps=(rc.BiasCorrection(),))),)),
}
# Issue 12's targets for the recipe, as a share of FP32's top-1 (None: no target).
TARGETS = {
    "W8A8 pow2": {k: 0.99 for k in DEFAULT_MODELS},
    "W4A8": {"resnet8": 0.98, "cifar-resnet": 0.98, "cifar-convnext": 0.98,
             "cifar-mobilenetv2": 0.95, "cifar-efficientnet": 0.95},
    "W8A8": {},
}


@dataclasses.dataclass(frozen=True)
class Context:
    mode: Mode
    has_matmul_weights: bool


def _late_candidates() -> tuple[tuple[str, Callable[[oq.Recipe], oq.Recipe]], ...]:
    """"best" candidates for the techniques that land later: the preset with the step
    added in its place in the recipe order, in every mode (left out where the preset
    already has it)."""
    out = []
    for name in ("AdaRound", "SmoothQuant"):
        if hasattr(rc, name):
            out.append((f"+{name}", lambda r, cls=getattr(rc, name): _with_step(r, cls())))
    return tuple(out)


def _with_step(r: oq.Recipe, step) -> oq.Recipe:
    if any(s.kind == step.kind for s in r.steps):
        raise oq.InvalidArgumentError(f"the preset already runs {step.kind}")
    steps = sorted(r.steps + (step,), key=lambda s: rc._ORDER.index(s.kind))
    return dataclasses.replace(r, steps=tuple(steps))


def _plain_options(mode: Mode) -> oq.QuantOptions:
    return dataclasses.replace(mode.options, weight_range="minmax")


def _steps(*steps) -> Callable[[Context], oq.Recipe]:
    def build(ctx: Context) -> oq.Recipe:
        return oq.Recipe(steps=tuple(s(ctx) for s in steps), options=_plain_options(ctx.mode))
    return build


def _cle(**extra) -> Callable[[Context], object]:
    return lambda ctx: rc.CrossLayerEqualization(power_of_two=ctx.mode.power_of_two, **extra)


def _optional_step(name: str, applies: Callable[[Context], bool] = lambda ctx: True):
    """The recipe step ``name`` of onnxquant.recipes alone, when the package has it."""
    def build(ctx: Context) -> oq.Recipe | None:
        if not applies(ctx):
            return None
        return oq.Recipe(steps=(getattr(rc, name)(),), options=_plain_options(ctx.mode))
    return build


# Column -> the recipe it runs (None: not applicable, shown as "—"). A technique that lands
# later is one entry here.
TECHNIQUES: dict[str, Callable[[Context], oq.Recipe | None]] = {
    "plain": _steps(),
    "WRS": lambda ctx: oq.Recipe(options=dataclasses.replace(ctx.mode.options,
                                                             weight_range="mse")),
    "CLE": _steps(_cle()),
    # Power-of-two activation scales by squared error (the pow2 mode only).
    "act MSE": lambda ctx: oq.Recipe(options=_plain_options(ctx.mode),
                                     activation_power_of_two="mse")
    if ctx.mode.power_of_two else None,
}
if "absorb_high_bias" in {f.name for f in dataclasses.fields(rc.CrossLayerEqualization)}:
    TECHNIQUES["CLE+HBA"] = _steps(_cle(absorb_high_bias=True))
TECHNIQUES["BC"] = _steps(lambda ctx: rc.BiasCorrection())
if hasattr(rc, "AdaRound"):
    TECHNIQUES["AdaRound"] = _optional_step("AdaRound")
if hasattr(rc, "SmoothQuant"):
    TECHNIQUES["SmoothQuant"] = _optional_step("SmoothQuant",
                                               lambda ctx: ctx.has_matmul_weights)
TECHNIQUES["recipe"] = lambda ctx: oq.Recipe.preset(ctx.mode.preset)

BEGIN = "<!-- recovery-table:begin (bench/recovery_table.py --write) -->"
END = "<!-- recovery-table:end -->"


def has_matmul_weights(model) -> bool:
    inits = {t.name for t in model.graph.initializer}
    return any(n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits
               for n in model.graph.node)


def run_model(key: str, args, rows: list[str], timings: list[str], misses: list[str]) -> None:
    entry = MODELS[key](args.zoo)
    test = entry.test.subset(args.test_images)
    samples = [entry.calibration[i:i + 1] for i in range(args.calibration)]
    model = oq.optimize_model(entry.path)
    fp32 = correct(model, test.x, test.y)
    val = entry.validation.subset(args.validation_images) if args.best else None
    best_label: dict[str, str] = {}
    for mode_name in args.modes:
        mode = MODES[mode_name]
        ctx = Context(mode, has_matmul_weights(model))
        hits: dict[str, np.ndarray | None] = {}
        seconds: dict[str, float] = {}
        steps: dict[str, str] = {}
        for column in args.columns:
            recipe = TECHNIQUES[column](ctx)
            if recipe is None:
                hits[column] = None
                continue
            start = time.perf_counter()
            result = oq.apply_recipe(entry.path, samples, recipe)
            seconds[column] = time.perf_counter() - start
            hits[column] = correct(result.model, test.x, test.y)
            steps[column] = ", ".join(f"{t.technique} {t.seconds:.2f} s"
                                      for t in result.report.techniques)
        if args.best:
            # "best": the preset or one of the mode's candidates, whichever scores highest
            # on the validation images (the first on a tie), then measured on the test set.
            preset = oq.Recipe.preset(mode.preset)
            options = [(mode.preset, preset)]
            for label, change in mode.candidates + _late_candidates():
                try:
                    options.append((f"{mode.preset} {label}", change(preset)))
                except oq.InvalidArgumentError as e:  # a step order the recipe refuses
                    print(f"{entry.name}, {mode_name}: candidate {label} left out: {e}")
            scored = []
            for label, recipe in options:
                start = time.perf_counter()
                model_q = oq.apply_recipe(entry.path, samples, recipe).model
                seconds[label] = time.perf_counter() - start
                steps[label] = ""
                scored.append((float(correct(model_q, val.x, val.y).mean()), label, model_q))
            top = max(s[0] for s in scored)
            _, label, model_q = next(s for s in scored if s[0] == top)
            hits["best"] = correct(model_q, test.x, test.y)
            best_label[mode_name] = label
        plain = hits.get("plain")
        cells = []
        for column in args.columns + (["best"] if args.best else []):
            h = hits[column]
            if h is None:
                cells.append("—")
            elif column == "plain" or plain is None:
                cells.append(f"{100.0 * h.mean():.2f}")
            else:
                cells.append(cell(h, plain))
        target = TARGETS[mode_name].get(key)
        share = ""
        final = "best" if args.best else "recipe"
        if final in hits and hits[final] is not None:
            ratio = hits[final].mean() / fp32.mean()
            verdict = "" if target is None else (
                f" (target {100 * target:.0f} %: {'met' if ratio >= target else '**missed**'})")
            share = f"{100.0 * ratio:.1f} %{verdict}"
            if target is not None and ratio < target:
                misses.append(f"{entry.name}, {mode_name}: {final} {100.0 * ratio:.1f} % of "
                              f"FP32, target {100 * target:.0f} %")
        runs = "fused" if mode.runs_as == "fused" else "emulated weights"
        chosen = f" | {best_label[mode_name]}" if args.best else ""
        row = (f"| {entry.name} | {mode_name} | {runs} | {100.0 * fp32.mean():.2f} | "
               + " | ".join(cells) + f"{chosen} | {share} |")
        rows.append(row)
        print(row, flush=True)
        if key in TIMED_MODELS:
            base = seconds.get("plain")
            for column in list(args.columns) + [k for k in seconds if k not in args.columns]:
                if column not in seconds:
                    continue
                extra = "" if base is None or column == "plain" else \
                    f"{seconds[column] - base:+.1f}"
                timings.append(f"| {entry.name} | {mode_name} | {column} | "
                               f"{seconds[column]:.1f} | {extra} | {steps.get(column) or '—'} |")


def table_text(args, rows: list[str], misses: list[str], minutes: float) -> str:
    head = " | ".join(args.columns)
    lines = [
        "## Recovery techniques: the full table (issue 12)",
        "",
        "```text",
        f"command: python bench/recovery_table.py {' '.join(sys.argv[1:])}",
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
        f"onnxquant {oq.__version__}, onnxruntime {ort.__version__}; {minutes:.1f} min",
        "```",
        "",
        f"Generated by `bench/recovery_table.py --write`; do not edit between the markers. "
        f"{args.calibration} calibration images (MIN_MAX_ASYM; they also feed bias "
        f"correction); top-1 % on {args.test_images} test images drawn with "
        "`numpy.random.default_rng(0)`, ONNX Runtime's default session. **runs as**: "
        "*fused* is integer kernels (as deployed); *emulated weights* is W4A8, which ONNX "
        "Runtime runs as DQ(int4) → float Conv/Gemm/MatMul because it has no int4 kernels "
        "for them (the rest of the graph fused). Each column is one `oq.apply_recipe` with "
        "the mode's options: **plain** no technique (`weight_range=\"minmax\"`); **WRS** the "
        "weight range search (`weight_range=\"mse\"`); **CLE** cross-layer equalization "
        "(power-of-two aligned in the pow2 mode); **CLE+HBA** the same with high-bias "
        "absorption; **act MSE** (pow2 mode only) each activation's power-of-two scale "
        "chosen by squared error on the calibration histogram "
        "(`Recipe(activation_power_of_two=\"mse\")`); **BC** bias correction; **recipe** "
        "the mode's preset as shipped (`npu_pow2`, `w4a8`, `cpu_default`), and its share "
        "of FP32 against issue 12's target. In brackets: the paired difference to plain "
        "± its standard error "
        "(points). AdaRound and SmoothQuant columns appear when those recipe steps exist. "
        "**best** (left out with `--no-best`): the preset or one of the mode's candidates "
        "(W8A8 pow2: the preset with `activation_power_of_two=\"mse\"`, with the "
        "PERCENTILE_ASYM method, and without the weight search; in every mode, the preset "
        "with AdaRound or SmoothQuant appended once those steps exist; W4A8: the preset "
        "without CLE, and with the weight search; W8A8: bias correction alone), whichever "
        f"scores highest on {args.validation_images} validation images (held-out "
        "training images drawn with "
        "`numpy.random.default_rng(0)`, never test images), then measured on the test "
        "images; **best is** names it; **best / FP32** is its share of FP32's top-1 "
        "against issue 12's target.",
        "",
        f"| model | mode | runs as | FP32 | {head} | "
        + ("best | best is | best / FP32 |" if args.best else "recipe / FP32 |"),
        "|---|---|---|---:|" + "---:|" * len(args.columns)
        + ("---:|---|---|" if args.best else "---|"),
        *rows,
        "",
    ]
    lines += ([f"Targets missed: {'; '.join(misses)}."] if misses else
              ["Every target of the rows above is met."])
    return "\n".join(lines) + "\n"


def timing_text(args, timings: list[str]) -> str:
    return "\n".join([
        "## Recovery techniques: run time per technique (issue 12's table)",
        "",
        "The run of docs/accuracy.md, \"Recovery techniques: the full table\", on this "
        f"machine's {os.cpu_count()} cores (with other jobs running: indicative). "
        "**s**: wall time of the column's `oq.apply_recipe` (optimize_model, the steps, "
        f"calibration on {args.calibration} images, quantize); **vs plain**: less plain's; "
        "**steps**: each technique's own time from the recipe report (bias correction "
        "includes its ONNX Runtime runs, batches of 32; the weight range search entry "
        "times the report's check, the search itself runs inside quantize and shows in "
        "**vs plain**).",
        "",
        "| model | mode | column | s | vs plain | steps |",
        "|---|---|---|---:|---:|---|",
        *timings,
        "",
    ]) + "\n"


def write_section(path: str, text: str) -> None:
    """Replaces the text between BEGIN and END in ``path`` (appends both at the end when
    missing); the rest of the file is kept byte for byte."""
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    block = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in doc and END in doc:
        start = doc.index(BEGIN)
        stop = doc.index(END, start) + len(END)
        if doc[stop:stop + 1] == "\n":
            stop += 1
        doc = doc[:start] + block + doc[stop:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--columns", nargs="+", default=list(TECHNIQUES), choices=list(TECHNIQUES))
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--calibration", type=int, default=200)
    p.add_argument("--zoo", default=DEFAULT_ZOO)
    p.add_argument("--no-best", dest="best", action="store_false",
                   help="leave out the \"best\" column (the preset or a candidate, chosen on "
                        "the validation set)")
    p.add_argument("--validation-images", type=int, default=1000,
                   help="validation images (drawn) that choose \"best\" (default 1000)")
    p.add_argument("--write", action="store_true",
                   help="write the table into docs/accuracy.md and the run times into "
                        "docs/benchmarks.md, between their markers")
    args = p.parse_args()
    start = time.perf_counter()
    rows: list[str] = []
    timings: list[str] = []
    misses: list[str] = []
    print(f"| model | mode | runs as | FP32 | {' | '.join(args.columns)} | "
          + ("best | best is | best / FP32 |" if args.best else "recipe / FP32 |"))
    for key in args.models:
        run_model(key, args, rows, timings, misses)
    minutes = (time.perf_counter() - start) / 60.0
    table = table_text(args, rows, misses, minutes)
    times = timing_text(args, timings)
    print("\n" + table + "\n" + times)
    if args.write:
        write_section(os.path.join(REPO, "docs", "accuracy.md"), table)
        write_section(os.path.join(REPO, "docs", "benchmarks.md"), times)


if __name__ == "__main__":
    main()
