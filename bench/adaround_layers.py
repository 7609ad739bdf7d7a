"""AdaRound per layer on the zoo's ResNet8 under the ``w4a8`` preset's options (int4
weights, weight range search; ``--samples`` CIFAR-10 test images, ``--iterations`` Adam
steps, one thread): the time of each layer in ``recovery.adaround``, and the engine's
set-up per layer, the median of ``--rounds``: the layer's ``_core.AdaRoundGrams``, one
batch of ones and ``_core.adaround_layer`` with one Adam step (what the engine does besides
the optimization and the model runs). The rounded weights and codes go to an ``.npz``, so
that two builds can be compared bit for bit.

    PYTHONPATH=python .venv/bin/python bench/adaround_layers.py --out /tmp/a.npz
    PYTHONPATH=python .venv/bin/python bench/adaround_layers.py --compare /tmp/a.npz /tmp/b.npz
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnx.numpy_helper

import onnxquant as oq
from onnxquant import _core
from onnxquant._model import model_to_bytes
from onnxquant._shapes import infer_dtypes
from onnxquant.quantize import upgrade_for_int4
from onnxquant.recovery import adaround

ZOO = os.environ.get("ONNXQUANT_ZOO", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "zoo"))


def _setup_seconds(model, options, rounds: int) -> tuple[list[float], list[float]]:
    """Per layer, the medians over ``rounds`` of the engine's set-up: the
    layer's AdaRoundGrams (built from the model's bytes before the change,
    from the one AdaRoundModel after), and, after one batch of ones,
    adaround_layer with one Adam step."""
    proto = upgrade_for_int4(model)
    data, dtypes = model_to_bytes(proto), infer_dtypes(proto)
    native = options.to_native(data, dtypes, proto)
    layers = _layers(data, dtypes, native)
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in (*proto.graph.input, *proto.graph.value_info)}
    grams_s, layer_s = [], []
    for layer in layers:
        x = np.ones(shapes.get(layer["input"], [1]), dtype=np.float32)
        a, b = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            grams = _grams(data, dtypes, native, layer["node"])
            a.append(time.perf_counter() - t0)
            grams.add([x], [], 1)
            t0 = time.perf_counter()
            _adaround_layer(data, dtypes, native, layer["node"], grams)
            b.append(time.perf_counter() - t0)
        grams_s.append(statistics.median(a))
        layer_s.append(statistics.median(b))
    return grams_s, layer_s


# The binding before and after AdaRoundModel: the old one took the model bytes in
# AdaRoundGrams and adaround_layer (each parsed and planned them); the new one
# parses and plans once (AdaRoundModel) and adaround_layer takes the Grams. The
# set-up time of the new one is timed as a layer of adaround() pays it: the
# AdaRoundModel is built once per model, not per layer.
_NEW = hasattr(_core, "AdaRoundModel")


def _layers(data, dtypes, native):
    if _NEW:
        return _core.AdaRoundModel(data, dtypes, native).layers
    return _core.adaround_targets(data, dtypes, native)[0]


_PLANNED = {}


def _grams(data, dtypes, native, node):
    if not _NEW:
        return _core.AdaRoundGrams(data, dtypes, native, node)
    if "model" not in _PLANNED:
        _PLANNED["model"] = _core.AdaRoundModel(data, dtypes, native)
    return _core.AdaRoundGrams(_PLANNED["model"], node)


def _adaround_layer(data, dtypes, native, node, grams):
    if _NEW:
        return _core.adaround_layer(grams, iterations=1, threads=1)
    return _core.adaround_layer(data, dtypes, native, node, grams, iterations=1, threads=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the rounded weights and times here (.npz)")
    p.add_argument("--compare", nargs=2, metavar="NPZ")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    if args.compare:
        a, b = (np.load(f) for f in args.compare)
        for kind in ("w:", "codes:"):
            keys = sorted(k for k in a.files if k.startswith(kind))
            assert keys == sorted(k for k in b.files if k.startswith(kind))
            same = [k for k in keys if a[k].tobytes() == b[k].tobytes()]
            print(f"{len(same)} of {len(keys)} {'weights' if kind == 'w:' else 'codes'} "
                  "bit-identical")
        for name in ("layer_seconds", "grams_seconds", "call_seconds"):
            print(f"{name}: mean {a[name].mean() * 1e3:.3f} ms -> {b[name].mean() * 1e3:.3f} ms "
                  f"per layer ({len(a[name])} layers)")
        return
    model = oq.optimize_model(os.path.join(ZOO, "cifar10", "resnet8_cifar10.onnx"))
    images = np.load(os.path.join(ZOO, "cifar10", "cifar10_test.npz"))["images"]
    samples = [images[i:i + 1].transpose(0, 3, 1, 2).astype(np.float32)
               for i in range(args.samples)]
    options = oq.QuantOptions(weight_type="int4", weight_range="mse")
    runs = []
    for _ in range(args.runs):
        rounded, record = adaround(model, samples, options=options,
                                   iterations=args.iterations, threads=1, progress=False)
        runs.append([layer.seconds for layer in record.layers])
    layer_seconds = np.median(np.array(runs), axis=0)
    grams_s, call_s = (np.array(v) for v in _setup_seconds(model, options, args.rounds))
    print(f"{len(record.layers)} layers, {args.iterations} iterations, {args.samples} samples, "
          f"median of {args.runs} runs: {layer_seconds.mean() * 1e3:.2f} ms per layer; "
          f"AdaRoundGrams {grams_s.mean() * 1e3:.3f} ms, adaround_layer with one step "
          f"{call_s.mean() * 1e3:.3f} ms per layer")
    if args.out:
        weights = {f"w:{t.name}": onnx.numpy_helper.to_array(t)
                   for t in rounded.graph.initializer
                   if t.name in {layer.weight for layer in record.layers}}
        codes = {f"codes:{layer.node}": layer.codes for layer in record.layers}
        np.savez(args.out, layer_seconds=layer_seconds, grams_seconds=grams_s,
                 call_seconds=call_s, **weights, **codes)


if __name__ == "__main__":
    main()
