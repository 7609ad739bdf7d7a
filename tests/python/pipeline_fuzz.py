"""Mutated models through optimize_model -> Calibrator -> quantize: every
failure must be an onnxquant error (the error contract of the public API).

Seeds: three small opset-13 models and an opset-11 one with a dynamic batch.
Run as a script, in a process of its own so that a crash of the native engine
cannot take the caller down; it prints one JSON object: the number of cases,
how many ended at each stage, the typed errors by class, and each escape (an
exception that is not an OnnxQuantError) with its type, message and the
onnxquant frames it passed.

    python tests/python/pipeline_fuzz.py --cases 200 --seed 0 [--after-optimize]

Mutations (one to three per case, seeded): initializer dims, data types and
data lengths, input/output element types and dims, node inputs, attributes,
op types and domains, opset and IR versions, deleted or swapped nodes, graph
outputs. Only mutants that ``onnx.checker`` accepts are kept (others stop at
optimize_model's checker); ``--after-optimize`` mutates the normalised model
instead, so that Calibrator and quantize see what optimize_model would refuse.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import traceback

import numpy as np
import onnx
import onnx.helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import SCALE_SHIFT, SIGMOID_GATE, SMALL_CNN, parse

import onnxquant as oq

# Opset 11 with a dynamic batch read back by Shape: the conversion path.
_W = ", ".join(f"{(i % 7 - 3) / 7:.3f}" for i in range(48 * 4))
_OPSET11 = f"""
<ir_version: 6, opset_import: ["" : 11]>
g (float[N, 3, 4, 4] x) => (float[N, 4] y)
<float[48, 4] w = {{{_W}}}, int64[1] zero = {{0}}, int64[1] minus_one = {{-1}}> {{
    s = Shape(x)
    n = Gather<axis = 0>(s, zero)
    target = Concat<axis = 0>(n, minus_one)
    f = Reshape(x, target)
    h = MatMul(f, w)
    y = Softmax<axis = 1>(h)
}}
"""

_OPS = ("Relu", "Conv", "Gemm", "MatMul", "Add", "Mul", "Softmax", "Reshape", "Concat",
        "Flatten", "GlobalAveragePool", "Sigmoid", "Identity", "Transpose", "Clip",
        "MaxPool", "Foo")


def _mutate(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    kind = rng.randrange(14)
    node = rng.choice(g.node)
    if kind == 0 and g.initializer:
        t = rng.choice(g.initializer)
        if t.dims:
            i = rng.randrange(len(t.dims))
            t.dims[i] = rng.choice([0, 1, 2, t.dims[i] + 1, -1, 7])
    elif kind == 1 and g.initializer:
        rng.choice(g.initializer).data_type = rng.choice([2, 3, 6, 7, 9, 10, 11, 16, 0])
    elif kind == 2:
        rng.choice(g.input).type.tensor_type.elem_type = rng.choice([0, 2, 6, 7, 10, 11])
    elif kind == 3 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(["", "nope", g.input[0].name])
    elif kind == 4:
        if node.attribute:
            a = rng.choice(node.attribute)
            if a.type == onnx.AttributeProto.INTS and a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([0, -1, 5, 100])
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, -1, 5, 100])
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = rng.choice([0.0, float("nan"), -1.0])
        else:
            node.attribute.append(onnx.helper.make_attribute("axis", rng.choice([0, 3])))
    elif kind == 5:
        node.op_type = rng.choice(_OPS)
    elif kind == 6:
        out.opset_import[0].version = rng.choice([1, 7, 9, 11, 12, 14, 18, 21, 23, 30])
    elif kind == 7:
        out.ir_version = rng.choice([0, 3, 5, 9, 11, 13, 14, 15])
    elif kind == 8 and len(g.node) > 1:
        del g.node[rng.randrange(len(g.node))]
    elif kind == 9 and len(g.node) > 1:
        i, j = rng.sample(range(len(g.node)), 2)
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    elif kind == 10 and g.initializer:
        t = rng.choice(g.initializer)
        if t.raw_data:
            t.raw_data = t.raw_data[: len(t.raw_data) // 2]
        elif t.float_data:
            del t.float_data[len(t.float_data) // 2:]
    elif kind == 11:
        dims = rng.choice([*g.input, *g.output]).type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                d.dim_value = rng.choice([0, 2, 5, 1000])
            else:
                d.dim_param = "Z"
    elif kind == 12:
        node.domain = rng.choice(["com.microsoft", "foo", "ai.onnx.ml", "ai.onnx"])
    elif kind == 13:
        g.output[0].name = rng.choice([g.node[0].output[0], "nothing", g.input[0].name])
    return out


def _samples(model: onnx.ModelProto) -> list[list[np.ndarray]]:
    initializers = {t.name for t in model.graph.initializer}
    feed = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1
                for d in value.type.tensor_type.shape.dim]
        feed.append(np.random.default_rng(0).standard_normal(dims).astype(np.float32))
    return [feed, feed]


def _run(model: onnx.ModelProto, after_optimize: bool, rng: random.Random) -> str:
    """Runs the pipeline; returns the stage reached ("done" at the end)."""
    optimized = oq.optimize_model(model)
    if after_optimize:
        optimized = _mutate(optimized, rng)
    stage = "calibrator"
    try:
        calibrator = oq.Calibrator(optimized, "MIN_MAX_ASYM")
        stage = "collect"
        calibrator.collect_data(_samples(optimized))
        stage = "quantize"
        oq.quantize(optimized, calibrator.compute_range(), calibrator=calibrator,
                    return_report=True)
    except oq.OnnxQuantError as e:
        e.stage = stage
        raise
    return "done"


def fuzz(cases: int, seed: int, after_optimize: bool) -> dict:
    rng = random.Random(seed)
    seeds = [parse(SMALL_CNN), parse(SCALE_SHIFT), parse(SIGMOID_GATE), parse(_OPSET11)]
    stages: collections.Counter = collections.Counter()
    typed: collections.Counter = collections.Counter()
    escapes = []
    for case in range(cases):
        base = rng.choice(seeds)
        model = base
        for _ in range(30):  # keep mutants the checker accepts
            model = base
            for _ in range(rng.choice([1, 1, 2, 3])):
                model = _mutate(model, rng)
            try:
                onnx.checker.check_model(model)
                break
            except onnx.checker.ValidationError:
                continue
        try:
            stages[_run(model, after_optimize, rng)] += 1
        except oq.OnnxQuantError as e:
            stages[getattr(e, "stage", "optimize")] += 1
            typed[type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001 - what the contract forbids
            frames = [f"{os.path.basename(f.filename)}:{f.lineno}"
                      for f in traceback.extract_tb(e.__traceback__)
                      if "onnxquant" in f.filename][-3:]
            escapes.append({"case": case, "type": f"{type(e).__module__}.{type(e).__name__}",
                            "message": str(e)[:300], "frames": frames})
    return {"cases": cases, "stages": dict(stages), "typed": dict(typed), "escapes": escapes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--after-optimize", action="store_true")
    args = ap.parse_args()
    print(json.dumps(fuzz(args.cases, args.seed, args.after_optimize)))


if __name__ == "__main__":
    main()
