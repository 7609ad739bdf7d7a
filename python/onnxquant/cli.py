"""The ``onnxquant`` command line.

``onnxquant quantize model.onnx -o model.int8.onnx --calibration-data data.npz``
normalises the model, calibrates it on the samples of the ``.npz`` file,
quantizes it, writes the result and prints the report and the time of each
step. Errors a user can cause print as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator

from onnxquant._signals import Terminated, orderly_termination
from onnxquant.errors import CalibrationDataError, InvalidArgumentError, OnnxQuantError

__all__ = ["build_parser", "main", "run_analyze", "run_demo", "run_quantize"]

EXIT_USAGE = 2


@contextlib.contextmanager
def _step(name: str, times: dict[str, float]) -> Iterator[None]:
    print(f"{name}...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    times[name] = time.perf_counter() - start
    print(f"{name}: {times[name]:.2f} s", file=sys.stderr, flush=True)


def run_quantize(args: argparse.Namespace) -> int:
    """The ``quantize`` subcommand."""
    from onnxquant._model import data_file_name, model_files, save_model, write_bytes_atomic
    from onnxquant.calibrator import Calibrator
    from onnxquant.data import load_samples
    from onnxquant.optimize import optimize_model
    from onnxquant.quantize import QuantOptions, quantize
    from onnxquant.ranges import load_ranges, save_ranges

    # Fail before the slow steps on what can be checked now.
    if args.calibration_data is not None and not os.path.exists(args.calibration_data):
        raise CalibrationDataError(
            f"Calibration data file '{args.calibration_data}' does not exist.")
    if args.ranges is not None:
        load_ranges(args.ranges)  # readable, and every range valid
        if args.save_ranges:
            raise InvalidArgumentError(
                "--save-ranges writes the ranges calibration computes; with --ranges there "
                "is no calibration (the ranges are already in that file).")
    model_inputs = model_files(args.model)
    inputs = model_inputs + [os.path.realpath(p) for p in (args.calibration_data, args.ranges)
                             if p is not None]
    for label, target in (("-o", args.output), ("--report-json", args.report_json),
                          ("--save-ranges", args.save_ranges)):
        if target and os.path.realpath(target) in inputs:
            given = "the ranges" if args.ranges is not None else "the calibration data"
            raise InvalidArgumentError(
                f"{label} '{target}' is an input (the model, one of its data files or "
                f"{given}), which onnxquant never overwrites; choose another path.")
    outputs = {os.path.realpath(args.output),
               os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(args.output)),
                                             data_file_name(args.output)))}
    for label, target in (("--report-json", args.report_json),
                          ("--save-ranges", args.save_ranges)):
        if target and os.path.realpath(target) in outputs:
            raise InvalidArgumentError(
                f"{label} '{target}' is where the model (or its data) goes; "
                "choose another path.")
    if args.report_json and args.save_ranges and \
            os.path.realpath(args.report_json) == os.path.realpath(args.save_ranges):
        raise InvalidArgumentError(
            "--report-json and --save-ranges name the same file; choose two paths.")
    options = QuantOptions(
        activation_type=args.activation_type, per_channel=args.per_channel,
        exclude_nodes=tuple(args.exclude_node), op_types=args.op_types,
        quantize_activation_matmul=not args.float_activation_matmul,
        reduce_weight_range=args.reduce_weight_range, target=args.target,
        kernel_remedy=args.kernel_remedy, quantize_silu=args.quantize_silu,
        power_of_two=args.power_of_two, weight_range=args.weight_range,
        float_outputs=not args.quantized_outputs, masks=args.masks,
        weight_type=args.weight_type, block_size=args.block_size,
        mode="dynamic" if args.dynamic else "static")
    times: dict[str, float] = {}
    if args.recipe is not None:
        return _run_recipe(args, model_inputs, times)
    if args.dynamic:
        return _run_dynamic(args, options, model_inputs, times)
    with _step("optimize", times):
        model = optimize_model(args.model)
    calibrator = None
    if args.ranges is not None:
        with _step("read ranges", times):
            ranges = load_ranges(args.ranges, model)
    else:
        with _step("read samples", times):
            samples = load_samples(args.calibration_data, model, max_samples=args.max_samples)
        with _step("plan", times):
            calibrator = Calibrator(model, args.method, percentage=args.percentage,
                                    ignore_zero_spike=not args.keep_zero_spike,
                                    clip_bounded_outputs=args.clip_bounded_outputs,
                                    options=options, batch_size=args.batch_size,
                                    threads=args.threads)
        with _step(f"calibrate ({len(samples)} samples)", times):
            calibrator.collect_data(samples, progress=not args.quiet)
        with _step("compute ranges", times):
            ranges = calibrator.compute_range()
    with _step("quantize", times):
        quantized, report = quantize(model, ranges, options=options, calibrator=calibrator,
                                     return_report=True)
    # External data out where the input had it (else only past 2 GB).
    external = True if len(model_inputs) > 1 else None
    with _step("save", times):
        save_model(quantized, args.output, external_data=external, source=args.model)
        if args.save_ranges:
            save_ranges(args.save_ranges, ranges, model=calibrator)
        if args.report_json:
            text = json.dumps({"report": report.to_dict(), "ranges": ranges,
                               "seconds": times}, indent=2)
            write_bytes_atomic(args.report_json, (text + "\n").encode("utf-8"))
    print(report)
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    print(f"wrote {args.output}")
    return 0


# The flags a recipe sets (dest, flag): refused beside --recipe.
_RECIPE_FLAGS = (
    ("method", "--method"), ("activation_type", "--activation-type"),
    ("masks", "--masks"), ("power_of_two", "--power-of-two"),
    ("weight_range", "--weight-range"), ("weight_type", "--weight-type"),
    ("block_size", "--block-size"), ("per_channel", "--no-per-channel"),
    ("exclude_node", "--exclude-node"), ("op_types", "--op-types"),
    ("float_activation_matmul", "--float-activation-matmul"),
    ("reduce_weight_range", "--reduce-weight-range"), ("quantize_silu", "--quantize-silu"),
    ("quantized_outputs", "--quantized-outputs"), ("target", "--target"),
    ("kernel_remedy", "--kernel-remedy"), ("ranges", "--ranges"),
    ("dynamic", "--dynamic"), ("save_ranges", "--save-ranges"))


def _run_recipe(args: argparse.Namespace, model_inputs: list[str],
                times: dict[str, float]) -> int:
    """``quantize --recipe``: apply_recipe on the samples, save."""
    from onnxquant._model import save_model, write_bytes_atomic
    from onnxquant.data import load_samples
    from onnxquant.optimize import optimize_model
    from onnxquant.recipes import Recipe, apply_recipe

    defaults = build_parser().parse_args(["quantize", "m", "-o", "o",
                                          "--calibration-data", "c"])
    given = [flag for dest, flag in _RECIPE_FLAGS
             if getattr(args, dest) != getattr(defaults, dest)]
    if given:
        raise InvalidArgumentError(
            f"--recipe sets the method and the quantization options; {given[0]} cannot be "
            "given with it: write it in a recipe JSON file instead.")
    if args.calibration_data is None:
        raise CalibrationDataError("--recipe needs --calibration-data (its techniques and "
                                   "calibration run on those samples).")
    recipe = Recipe.load(args.recipe)
    with _step("read samples", times):
        samples = list(load_samples(args.calibration_data, optimize_model(args.model),
                                    max_samples=args.max_samples))
    with _step(f"recipe {recipe.name or args.recipe} ({len(samples)} samples)", times):
        result = apply_recipe(args.model, samples, recipe, percentage=args.percentage,
                              progress=not args.quiet)
    with _step("save", times):
        save_model(result.model, args.output,
                   external_data=True if len(model_inputs) > 1 else None, source=args.model)
        if args.report_json:
            text = json.dumps({"report": result.report.to_dict(), "seconds": times}, indent=2)
            write_bytes_atomic(args.report_json, (text + "\n").encode("utf-8"))
    print(result.report)
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    print(f"wrote {args.output}")
    return 0


def _run_dynamic(args: argparse.Namespace, options, model_inputs: list[str],
                 times: dict[str, float]) -> int:
    """``quantize --dynamic``: optimize_model, quantize with ``options``
    (mode="dynamic"), save."""
    from onnxquant._model import save_model, write_bytes_atomic
    from onnxquant.optimize import optimize_model
    from onnxquant.quantize import quantize

    if args.save_ranges:
        raise InvalidArgumentError(
            "--save-ranges writes calibrated ranges; --dynamic computes them at run time.")
    with _step("optimize", times):
        model = optimize_model(args.model)
    with _step("quantize (dynamic)", times):
        quantized, report = quantize(model, None, options=options, return_report=True)
    with _step("save", times):
        save_model(quantized, args.output, external_data=True if len(model_inputs) > 1
                   else None, source=args.model)
        if args.report_json:
            text = json.dumps({"report": report.to_dict(), "seconds": times}, indent=2)
            write_bytes_atomic(args.report_json, (text + "\n").encode("utf-8"))
    print(report)
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    print(f"wrote {args.output}")
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    """The ``analyze`` subcommand: per-tensor SQNR (alone, accumulated), the
    range guard, and figures."""
    from onnxquant.analyze import analyze, figure_name
    from onnxquant.data import load_samples
    from onnxquant.optimize import optimize_model

    if not os.path.exists(args.calibration_data):
        raise CalibrationDataError(f"Sample file '{args.calibration_data}' does not exist.")
    model = optimize_model(args.model)
    samples = list(load_samples(args.calibration_data, model, max_samples=args.max_samples))
    result = analyze(model, args.quantized, samples, methods=args.methods,
                     clip_limit=args.clip_limit, resolution_limit=args.resolution_limit,
                     warn=False, batch_size=args.batch_size)
    print(result)
    if args.figures:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(args.figures, exist_ok=True)
        paths = []
        ax = result.plot_sqnr()
        paths.append(os.path.join(args.figures, "sqnr.png"))
        ax.figure.savefig(paths[-1], dpi=120)
        plt.close(ax.figure)
        shown = list(args.histogram)
        if not shown and result:
            shown = [r.tensor for r in result.flagged()] + \
                [min(result, key=lambda r: r.alone_db).tensor]
        for tensor in dict.fromkeys(shown):
            ax = result.plot_histogram(tensor)
            paths.append(os.path.join(args.figures, figure_name(tensor)))
            ax.figure.savefig(paths[-1], dpi=120)
            plt.close(ax.figure)
        print("wrote " + ", ".join(paths))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The ``demo`` subcommand: quantize a model on real data and print FP32
    against INT8 top-1 and the time of each step."""
    from onnxquant import demo

    if args.model is None:
        data = demo.default_demo_data(num_calibration=args.num_calibration,
                                      seed=args.seed, data_root=args.data_root)
    else:
        if not (args.calibration_data and args.test_data):
            raise CalibrationDataError(
                "demo --model needs --calibration-data and --test-data (.npz files whose "
                "keys are the model's input name, the test file with 'labels').")
        data = demo.npz_demo_data(args.model, args.calibration_data, args.test_data,
                                  num_calibration=args.num_calibration, seed=args.seed)
    demo.run_demo(data, method=args.method, output=args.output, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``onnxquant`` command."""
    from onnxquant import __version__
    from onnxquant.calibrator import CalibrationMethod

    parser = argparse.ArgumentParser(
        prog="onnxquant",
        description="Post-training INT8 quantization of ONNX models (QDQ format).")
    parser.add_argument("--version", action="version", version=f"onnxquant {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = commands.add_parser(
        "quantize", help="quantize a float ONNX model with calibration samples",
        description="Normalise MODEL (opset >= 13, batch norm folded), run it on the "
                    "calibration samples to collect activation ranges, and write the INT8 "
                    "QDQ model. Prints the report and the time of each step.")
    q.add_argument("model", help="the float .onnx model (read only)")
    q.add_argument("-o", "--output", required=True,
                   help="where to write the quantized .onnx model (written whole or not at all)")
    source = q.add_mutually_exclusive_group(required=True)
    source.add_argument("--calibration-data", default=None, metavar="NPZ",
                        help="an .npz whose keys are the model's input names, arrays in the "
                             "model's layout and dtype, axis 0 indexing samples (see "
                             "'python -m onnxquant.data' to convert the zoo's sets)")
    source.add_argument("--ranges", default=None, metavar="JSON",
                        help="quantize with these ranges (a file onnxquant.save_ranges or "
                             "--save-ranges wrote for this model) instead of calibrating; "
                             "the calibration options are then unused, and --target "
                             "portable applies its rule for models without samples")
    source.add_argument("--dynamic", action="store_true",
                        help="no calibration: quantize MatMul/Gemm dynamically "
                             "(DynamicQuantizeLinear + MatMulInteger, activation scales "
                             "computed at run time; QuantOptions(mode='dynamic')); "
                             "--exclude-node, --op-types, --no-per-channel, "
                             "--float-activation-matmul, --reduce-weight-range and --target "
                             "apply, and the other quantization flags must keep their "
                             "defaults")
    q.add_argument("--recipe", default=None, metavar="NAME_OR_JSON",
                   help="a recipe: a preset (cpu_default, npu_pow2, w4a8) or a recipe JSON "
                        "file; it sets the method and the quantization options and runs its "
                        "techniques (cross-layer equalization, bias correction) before "
                        "calibration, so it takes none of the method and option flags")
    q.add_argument("--method", default="MIN_MAX_ASYM",
                   choices=[m.name for m in CalibrationMethod],
                   help="how ranges are chosen from the statistics (default MIN_MAX_ASYM)")
    q.add_argument("--percentage", type=float, default=99.99, metavar="P",
                   help="the percentile kept by PERCENTILE methods, in (0, 100] "
                        "(default 99.99)")
    q.add_argument("--keep-zero-spike", action="store_true",
                   help="ENTROPY methods keep exact zeros (the spike of ReLU outputs) in the "
                        "KL divergence; by default they are left out")
    q.add_argument("--clip-bounded-outputs", action="store_true",
                   help="let clipping methods clip the outputs of Sigmoid, HardSigmoid, "
                        "Softmax and Tanh too; by default they keep their observed range")
    q.add_argument("--activation-type", choices=("uint8", "int8", "int16"), default="uint8",
                   help="activation integer type: uint8 fuses into ONNX Runtime's CPU "
                        "integer kernels, int8 suits TFLite-style targets and NPUs, int16 "
                        "(W8A16) runs as DQ -> float op -> Q (default uint8)")
    q.add_argument("--masks", choices=("float", "saturate"), default="float",
                   help="nodes that read or write tensors where calibration saw |x| >= 1e30 "
                        "or +-Inf (attention masks) stay float (default), or are quantized "
                        "with those values saturating")
    q.add_argument("--power-of-two", choices=("off", "ceil", "mse"), default="off",
                   help="power-of-two scales for weights and activations (NPUs, DSPs); "
                        "with --no-per-channel the per-tensor power-of-two mode (default off)")
    q.add_argument("--weight-range", choices=("minmax", "mse"), default="minmax",
                   help="each weight channel's clipping: max|w|, or the squared-error "
                        "minimum (weight range search; default minmax)")
    q.add_argument("--weight-type", choices=("int8", "int4"), default="int8",
                   help="weight integer type: int4 ([-7, 7], converts the model to opset 21; "
                        "ONNX Runtime runs DQ -> float op) (default int8)")
    q.add_argument("--block-size", type=int, default=0, metavar="N",
                   help="with --weight-type int4: one scale per block of N rows of a MatMul "
                        "weight (blocks along the reduction axis); 0: per channel (default)")
    q.add_argument("--no-per-channel", dest="per_channel", action="store_false",
                   help="one scale per weight instead of one per output channel")
    q.add_argument("--exclude-node", action="append", default=[], metavar="NAME",
                   help="keep this node in float (repeat for several)")
    q.add_argument("--op-types", nargs="+", default=None, metavar="OP",
                   help="quantize only these op types, e.g. Conv Gemm (default: every op "
                        "the plan supports)")
    q.add_argument("--float-activation-matmul", action="store_true",
                   help="keep MatMul of two activations (attention) in float")
    q.add_argument("--reduce-weight-range", action="store_true",
                   help="7-bit weights [-63, 63] in every layer")
    q.add_argument("--quantize-silu", action="store_true",
                   help="Q/DQ inside x*sigmoid(x) too, so that ONNX Runtime runs the SiLU as "
                        "integer ops (faster; default: the SiLU runs in float)")
    q.add_argument("--quantized-outputs", action="store_true",
                   help="quantize a Gemm or MatMul output that is a model output too "
                        "(default: left float, as ONNX Runtime's QGemm and "
                        "MatMulIntegerToFloat write it)")
    q.add_argument("--target", choices=("portable", "exact"), default="portable",
                   help="portable (default): right on every CPU's integer kernels, x86 "
                        "without VNNI included (nodes whose 16-bit pair sums would saturate "
                        "there are changed, and listed); exact: full-range weights for "
                        "kernels that accumulate exactly (VNNI, AMX, ARM64)")
    q.add_argument("--kernel-remedy", choices=("auto", "channel_range", "uint8_weights", "float"),
                   default="auto",
                   help="what --target portable does to such a node: channel_range (a smaller "
                        "weight range in the channels concerned), uint8_weights (exact, slower "
                        "kernels), float; default auto: uint8_weights within 3 %% of the "
                        "multiply-adds where a smaller range would cost most, else channel_range")
    q.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="use only the first N samples of the file (default: all)")
    q.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="samples run together where the batch dim is dynamic (default 32)")
    q.add_argument("--threads", type=int, default=None, metavar="N",
                   help="thread budget for ONNX Runtime and the statistics (default: the "
                        "CPUs this process may use)")
    q.add_argument("--save-ranges", default=None, metavar="JSON",
                   help="also write the calibrated ranges (onnxquant.save_ranges' format), "
                        "for a later 'quantize --ranges'")
    q.add_argument("--report-json", default=None, metavar="PATH",
                   help="also write the report, the ranges and the step times as JSON")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(handler=run_quantize)

    a = commands.add_parser(
        "analyze", help="per-tensor error of an INT8 model, the ranges each method would "
                        "choose, and ranges that clip or lose resolution",
        description="Run MODEL and QUANTIZED on the samples and print, per quantized tensor, "
                    "its SQNR with only its own Q/DQ pair (alone) and with every layer "
                    "quantized (accumulated), its range, the share of values the range clips "
                    "and the share below one step; flagged ranges come with a remedy.")
    a.add_argument("model", help="the float .onnx model QUANTIZED was made from (normalised "
                                 "as quantize does)")
    a.add_argument("quantized", help="the quantized .onnx model")
    a.add_argument("--calibration-data", required=True, metavar="NPZ",
                   help="samples (.npz keyed by input name, as for quantize)")
    a.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="use only the first N samples of the file (default: all)")
    a.add_argument("--methods", nargs="+", default=[m.name for m in CalibrationMethod],
                   choices=[m.name for m in CalibrationMethod], metavar="METHOD",
                   help="methods whose ranges are computed (default: all ten)")
    a.add_argument("--clip-limit", type=float, default=0.01, metavar="SHARE",
                   help="flag a range that clips more than this share of a tensor "
                        "(default 0.01; any clipping of a tensor feeding an output is flagged)")
    a.add_argument("--resolution-limit", type=float, default=0.5, metavar="SHARE",
                   help="flag a Concat input with more than this share of its nonzero values "
                        "below one step of the shared range (default 0.5)")
    a.add_argument("--figures", default=None, metavar="DIR",
                   help="write sqnr.png and histogram_<tensor>.png here (needs matplotlib)")
    a.add_argument("--histogram", action="append", default=[], metavar="TENSOR",
                   help="tensor whose histogram to draw (repeat; default: the flagged ones "
                        "and the one with the lowest SQNR alone)")
    a.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="samples run together where the batch dim is dynamic (default 32)")
    a.set_defaults(handler=run_analyze)

    d = commands.add_parser(
        "demo", help="quantize a model on real data and compare FP32 with INT8",
        description="Quantize a model on real data and print FP32 against INT8 accuracy.")
    d.add_argument("--model", default=None,
                   help="a one-input classifier .onnx (default: the built-in Fashion-MNIST "
                        "CNN, calibrated and evaluated on Debian's dataset-fashion-mnist)")
    d.add_argument("--calibration-data", default=None, metavar="NPZ",
                   help="with --model: samples to draw calibration samples from")
    d.add_argument("--test-data", default=None, metavar="NPZ",
                   help="with --model: labelled evaluation samples ('labels' key)")
    d.add_argument("--num-calibration", type=int, default=500, metavar="N",
                   help="calibration samples drawn with numpy.random.default_rng(seed) "
                        "(default 500)")
    d.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    d.add_argument("--data-root", default=None,
                   help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)")
    d.add_argument("-o", "--output", default=None,
                   help="also write the quantized model here")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.add_argument("--method", default="MIN_MAX_ASYM",
                   choices=[m.name for m in CalibrationMethod],
                   help="calibration method (default MIN_MAX_ASYM)")
    d.set_defaults(handler=run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0, 2 on an error, 128 +
    the signal's number after SIGTERM, SIGHUP or SIGINT, with every temporary
    file removed)."""
    args = build_parser().parse_args(argv)
    try:
        with orderly_termination():
            return args.handler(args)
    except Terminated as e:
        print(f"onnxquant: stopped by signal {e.signum}; no partial file left",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("onnxquant: interrupted; no partial file left", file=sys.stderr)
        return 128 + signal.SIGINT
    except (OnnxQuantError, NotImplementedError) as e:
        print(f"onnxquant: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"onnxquant: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
