"""Peak memory and time of each step on a model past protobuf's 2 GB limit.

Writes a synthetic model with external data (MatMul + Add + Relu blocks of
width W, float32 weights written straight to the data file, so that this
process never holds them), then runs, in a fresh subprocess:

1. ``optimize_model(path)``: the model read from its files;
2. ``Calibrator(model, ...)``, ``collect_data`` (random samples) and
   ``compute_range``;
3. ``quantize(model, ranges, calibrator=...)`` and ``save_model(...,
   external_data=True)``.

With ``--from-path``, the normalised model is saved with external data
(``save_model``) and dropped after step 1, and steps 2 and 3 take its path.

For each step it prints the peak resident set (``VmHWM``, reset before the
step) above the resident set after a warm-up (the same steps on a one-layer
model, so that what the first use of onnxquant and ONNX Runtime allocates
once is in the baseline), i.e. including the model the caller holds, and its
ratio to the model's size (the target is at most 2).

    .venv/bin/python bench/large_model.py [--gib 3] [--width 4096] [--from-path] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _proc import reset_peak, status_kib


def write_model(folder: str, gib: float, width: int) -> tuple[str, int]:
    """The model file and its size in bytes of weights."""
    import numpy as np
    import onnx
    import onnx.helper as oh

    layer = width * width * 4 + width * 4
    layers = max(1, round(gib * (1 << 30) / layer))
    data_name = "large.onnx.data"
    rng = np.random.default_rng(0)
    nodes, inits, x, offset = [], [], "x", 0
    with open(os.path.join(folder, data_name), "wb") as data:
        for i in range(layers):
            for name, shape in ((f"w{i}", (width, width)), (f"b{i}", (width,))):
                values = (rng.standard_normal(shape, dtype=np.float32)
                          * np.float32(1.0 / np.sqrt(width)))
                data.write(values.tobytes())
                tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT,
                                          dims=shape)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)),
                                   ("length", str(values.nbytes))):
                    tensor.external_data.add(key=key, value=value)
                offset += values.nbytes
                inits.append(tensor)
            nodes += [oh.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                      oh.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                      oh.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
            x = f"r{i}"
    graph = oh.make_graph(nodes, "large", [oh.make_tensor_value_info("x", 1, ["N", width])],
                          [oh.make_tensor_value_info(x, 1, ["N", width])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    path = os.path.join(folder, "large.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path, offset


def warm_up(rng) -> None:
    """The three steps on a one-layer model, so that the baseline includes
    what the first use of onnxquant and ONNX Runtime allocates once."""
    import numpy as np
    import onnx
    import onnx.helper as oh

    import onnxquant as oq

    w = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "warm",
                          [oh.make_tensor_value_info("x", 1, ["N", 64])],
                          [oh.make_tensor_value_info("y", 1, ["N", 64])], [w])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    model = oq.optimize_model(model)
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data([rng.standard_normal((1, 64), dtype=np.float32)])
    oq.quantize(model, calibrator.compute_range(), calibrator=calibrator)


def child(path: str, out: str, width: int, samples: int, from_path: bool) -> None:
    import numpy as np
    import onnx  # noqa: F401 - imported before the baseline
    import onnxruntime  # noqa: F401

    import onnxquant as oq

    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((1, width), dtype=np.float32) for _ in range(samples)]
    warm_up(rng)
    base = status_kib("VmRSS") * 1024
    steps = {}

    def step(name, run):
        reset_peak()
        start = time.perf_counter()
        value = run()
        steps[name] = {"seconds": time.perf_counter() - start,
                       "peak_bytes": status_kib("VmHWM") * 1024 - base,
                       "held_bytes": status_kib("VmRSS") * 1024 - base}
        return value

    model = step("optimize_model", lambda: oq.optimize_model(path))
    if from_path:
        normalised = os.path.join(os.path.dirname(out), "large.normalised.onnx")
        step("save_model (normalised, external data)",
             lambda: oq.save_model(model, normalised, external_data=True))
        model = normalised  # the caller holds a path, not the weights

    def calibrate():
        calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
        calibrator.collect_data(feeds)
        return calibrator, calibrator.compute_range()

    calibrator, ranges = step("Calibrator + collect_data + compute_range", calibrate)

    def quantize_and_save():
        quantized = oq.quantize(model, ranges, calibrator=calibrator)
        oq.save_model(quantized, out, external_data=True, source=path)

    step("quantize + save_model", quantize_and_save)
    print(json.dumps({"baseline_bytes": base, "steps": steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=3.0, help="weights in GiB (default 3)")
    parser.add_argument("--width", type=int, default=4096, help="layer width (default 4096)")
    parser.add_argument("--samples", type=int, default=8, help="calibration samples")
    parser.add_argument("--dir", default=None,
                        help="where the model and the output are written (default: a "
                             "temporary directory, removed at the end)")
    parser.add_argument("--from-path", action="store_true",
                        help="save the normalised model with external data, drop it, and "
                             "give its path to Calibrator and quantize")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.width, args.samples, args.from_path)
        return
    folder = args.dir or tempfile.mkdtemp(prefix="onnxquant-bench-")
    try:
        os.makedirs(folder, exist_ok=True)
        start = time.perf_counter()
        path, size = write_model(folder, args.gib, args.width)
        print(f"model: {path}, {size / (1 << 30):.2f} GiB of weights "
              f"(written in {time.perf_counter() - start:.0f} s)", flush=True)
        out = os.path.join(folder, "large.int8.onnx")
        done = subprocess.run([sys.executable, __file__, "--width", str(args.width),
                               "--samples", str(args.samples), "--child", path, out]
                              + (["--from-path"] if args.from_path else []),
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the run failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"baseline after the warm-up: {result['baseline_bytes'] / (1 << 20):.0f} MiB")
        print(f"{'step':44s} {'time s':>7s} {'peak GiB':>9s} {'x model':>8s} {'held GiB':>9s}")
        for name, s in result["steps"].items():
            print(f"{name:44s} {s['seconds']:7.1f} {s['peak_bytes'] / (1 << 30):9.2f} "
                  f"{s['peak_bytes'] / size:8.2f} {s['held_bytes'] / (1 << 30):9.2f}")
        files = sorted(os.listdir(folder))
        print("written: " + ", ".join(
            f"{f} ({os.path.getsize(os.path.join(folder, f)) / (1 << 20):.0f} MiB)"
            for f in files if f.startswith("large.int8")))
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
