"""INT8 top-1 as deployed (fused integer kernels) of onnxquant and ONNX Runtime's quantize_static.

For each classifier entry the script

1. normalises the model once with ``onnxquant.optimize_model``; that graph is the FP32
   reference and the input of *both* quantizers (saved to a temporary file for ONNX Runtime);
2. onnxquant: one ``Calibrator`` collection on the calibration samples serves all ten
   ``CalibrationMethod`` values (``compute_range(method)``); each range set goes through the
   default ``quantize(model, ranges, calibrator=calibrator)`` (``target="portable"``: the
   kernel check replays the Calibrator's first 128 samples), whose report gives the kernel
   remedies;
3. ONNX Runtime: ``quant_pre_process`` and then ``quantize_static`` (QDQ, per-channel,
   QUInt8 activations, QInt8 weights) with MinMax, Entropy and Percentile, each with
   ``reduce_range`` False and True (one calibration per method, through its
   ``calibration_cache_path``), on the same samples;
4. runs every INT8 model with ONNX Runtime's default session options, which fuse QDQ into
   this CPU's integer kernels (the headline), on the test set and, where the entry has one,
   the validation set, and with QDQ emulated in float (``session.disable_quant_qdq = 1``,
   a diagnostic) on the test set (``onnxquant.evaluate``);
5. chooses each tool's best configuration on the validation set (fused), or takes its
   default (MIN_MAX_ASYM; MinMax without reduce_range) where there is none; quantizes
   onnxquant's choice again with ``target="exact"`` (fused on the test set);
6. runs both choices on ONNX Runtime's AVX2 kernels under ``qemu-x86_64 -cpu Haswell``
   (``onnxquant.qemu.predict_avx2``, two models at a time) on 2 000 test images, beside the
   emulated figure on the same images;
7. reports top-1 with paired standard errors: INT8 against FP32, fused against emulated
   (agreement: |fused - emulated| <= max(0.3, 2 SE)), ours against ONNX Runtime's (a tie
   under 2 SE), exact against portable.

A second part (on by default; ``--no-tasks`` leaves it out, ``--tasks-only`` runs only it)
measures the zoo's models without labels here, INT8 against FP32 in each task's metric:
the face detectors (detections matched to FP32's as pseudo-labels: precision, recall, F1,
mean IoU, score correlation), super-resolution (PSNR against FP32 and against a reference)
and Basic Pitch (output correlation), onnxquant's methods beside ONNX Runtime's, with the
same normalised graph and calibration samples, fused (headline) and emulated.

    PYTHONPATH=python .venv/bin/python bench/accuracy.py [--quick] [--output docs/accuracy.md]
    PYTHONPATH=python .venv/bin/python bench/accuracy.py --tasks-only

The code lives in the package ``bench/accuracy_lib`` (imported from here: running this file
puts ``bench/`` on ``sys.path``); this file holds the command line and the main loop. Model
entries live in ``MODELS`` in ``accuracy_lib/classifiers.py`` (key -> builder); add a builder
to add a row. An entry whose model or data is missing (the models/cifar networks before
they are trained, Fashion-MNIST without Debian's package) is skipped with a note. Task
entries live in ``TASKS`` in ``accuracy_lib/task_registry.py`` (key -> builder of
``TaskEntry`` list; the builders are in ``accuracy_lib/task_faces.py``, ``task_superres.py``
and ``task_audio.py``, the report tables in ``TASK_GROUPS``). The other modules: ``common``
(constants, helpers), ``our_quant`` and ``ort_quant`` (each tool's calibration and
quantization), ``measure`` (classifier runs, choices and statistics), ``avx2`` (QEMU runs),
``tasks`` (task entries and ``measure_task``) and ``render`` (the Markdown report).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time

import onnxruntime as ort
from accuracy_lib.classifiers import (
    CIFAR_DIR,
    CIFAR_METHODS,
    CIFAR_ORT_METHODS,
    DEFAULT_MODELS,
    MODELS,
    MissingModel,
)
from accuracy_lib.common import (
    AVX2_IMAGES,
    DEFAULT_ZOO,
    ORT_METHODS,
    QUICK_AVX2_IMAGES,
    QUICK_TEST,
    QUICK_VALIDATION,
    EntryFailed,
    first_line,
    log,
)
from accuracy_lib.measure import measure
from accuracy_lib.our_quant import our_configs
from accuracy_lib.render import render
from accuracy_lib.task_registry import TASKS
from accuracy_lib.tasks import TASK_METHODS, TASK_ORT_METHODS, measure_task

import onnxquant as oq
from onnxquant._model import write_bytes_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    methods = [m.name for m in oq.CalibrationMethod]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=DEFAULT_ZOO,
                    help="the zoo folder (default $ONNXQUANT_ZOO or ../shared/zoo)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                    help="classifier entries to run (default: all but the -dynamo ones); an "
                         "entry whose model file is missing is skipped with a note")
    labels = [c.label for c in our_configs(True)]
    ap.add_argument("--cifar-methods", nargs="+", choices=labels, default=list(CIFAR_METHODS),
                    metavar="METHOD",
                    help="onnxquant columns run on the models/cifar networks (default "
                         "%(default)s; a label with a keyword is quoted whole)")
    ap.add_argument("--cifar-ort-methods", nargs="+", choices=ORT_METHODS,
                    default=list(CIFAR_ORT_METHODS),
                    help="ONNX Runtime methods run on the models/cifar networks "
                         "(default %(default)s)")
    ap.add_argument("--no-tasks", dest="tasks", action="store_false",
                    help="leave out the detectors, super-resolution and audio section")
    ap.add_argument("--tasks-only", action="store_true",
                    help="run only the detectors, super-resolution and audio section")
    ap.add_argument("--tasks", dest="task_keys", nargs="+", choices=list(TASKS),
                    default=list(TASKS), help="task entries to run (default all)")
    ap.add_argument("--task-methods", nargs="+", choices=methods, default=list(TASK_METHODS),
                    help="onnxquant methods of the task section (default %(default)s)")
    ap.add_argument("--task-ort-methods", nargs="+", choices=ORT_METHODS,
                    default=list(TASK_ORT_METHODS),
                    help="ONNX Runtime methods of the task section (default %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_TEST} test and {QUICK_VALIDATION} validation images, drawn "
                         f"at random, and {QUICK_AVX2_IMAGES} AVX2 images")
    ap.add_argument("--output", help="write the Markdown report here (it is always printed)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads for evaluation (default: its own)")
    ap.add_argument("--int8", nargs="*", choices=methods, default=[],
                    help="onnxquant methods also run with int8 activations, fused and "
                         "emulated (default none)")
    ap.add_argument("--avx2-images", type=int, default=None,
                    help=f"test images run on the AVX2 kernels under QEMU (default "
                         f"{AVX2_IMAGES}, {QUICK_AVX2_IMAGES} with --quick; 0 leaves the "
                         "AVX2 part out)")
    ap.add_argument("--avx2-workers", type=int, default=2,
                    help="QEMU runs at a time (default %(default)s)")
    ap.add_argument("--avx2-threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads of each QEMU run (default: the "
                         "CPUs available divided by --avx2-workers)")
    ap.add_argument("--avx2-timeout", type=float, default=3600,
                    help="seconds before a QEMU run is abandoned (default %(default)s)")
    ap.add_argument("--no-avx2-ort-reduce-range", dest="avx2_ort_reduce_range",
                    action="store_false",
                    help="leave out ONNX Runtime's best configuration with "
                         "reduce_range=True (its advice for CPUs without VNNI) under QEMU, "
                         "where it is not its best overall")
    ap.add_argument("--no-exact", dest="exact", action="store_false",
                    help="leave out onnxquant's chosen method with target=\"exact\"")
    ap.add_argument("--no-ort-preprocess", dest="ort_preprocess", action="store_false",
                    help="skip quant_pre_process before quantize_static")
    ap.add_argument("--no-tensor-errors", dest="tensor_errors", action="store_false",
                    help="leave out the per-tensor error figures (SQNR of each quantized "
                         "tensor, on 256 test images)")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="leave out ENTROPY with the non-default ignore_zero_spike and "
                         "clip_bounded_outputs")
    args = ap.parse_args(argv)
    if args.tasks_only and not args.tasks:
        ap.error("--tasks-only and --no-tasks exclude each other")
    if args.avx2_images is None:
        args.avx2_images = QUICK_AVX2_IMAGES if args.quick else AVX2_IMAGES
    args.configs = our_configs(args.variants)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _run_entry(measure_entry, entry, args: argparse.Namespace, done: list,
               skipped: list[tuple[str, str]]) -> None:
    """Measures ``entry`` in a temporary directory: its result goes to ``done``, or
    (entry name, why) to ``skipped`` when it fails as a whole."""
    with tempfile.TemporaryDirectory(prefix="oq-accuracy-") as workdir:
        try:
            done.append(measure_entry(entry, args, workdir))
        except EntryFailed as e:
            log(f"{entry.name}: {e}")
            skipped.append((entry.name, str(e)))
            return
    log(f"{entry.name}: {done[-1].seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice and progress
    ort.set_default_logger_severity(3)  # unused-initializer warnings of the zoo's models
    start = time.perf_counter()
    results, skipped = [], []
    for key in [] if args.tasks_only else args.models:
        t = time.perf_counter()
        try:
            entry = MODELS[key](args.zoo)
        except MissingModel as e:
            log(f"{e.name}: skipped: {e}")
            skipped.append((e.name, str(e)))
            continue
        if entry.path.startswith(CIFAR_DIR + os.sep):
            entry = dataclasses.replace(entry, methods=tuple(args.cifar_methods),
                                        ort_methods=tuple(args.cifar_ort_methods))
        if args.quick:
            entry = dataclasses.replace(
                entry, test=entry.test.subset(QUICK_TEST),
                validation=entry.validation.subset(QUICK_VALIDATION) if entry.validation
                else None)
        log(f"{entry.name}: data loaded in {time.perf_counter() - t:.1f} s")
        _run_entry(measure, entry, args, results, skipped)
    times = {"classifiers": time.perf_counter() - start}
    t_tasks = time.perf_counter()
    tasks, skipped_tasks = [], []
    for key in args.task_keys if args.tasks else []:
        t = time.perf_counter()
        try:
            entries = TASKS[key](args.zoo)
        except Exception as e:  # noqa: BLE001 - e.g. a missing zoo file: reported
            log(f"{key}: skipped: {first_line(e)}")
            skipped_tasks.append((key, first_line(e)))
            continue
        log(f"{key}: data loaded in {time.perf_counter() - t:.1f} s")
        for entry in entries:
            log(entry.name)
            _run_entry(measure_task, entry, args, tasks, skipped_tasks)
    times["tasks"] = time.perf_counter() - t_tasks
    times["total"] = time.perf_counter() - start
    report = render(results, args, times, tasks, skipped, skipped_tasks)
    print(report, end="")
    if args.output:
        # Whole or not at all: an interrupted run leaves the old report.
        write_bytes_atomic(args.output, report.encode())
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
