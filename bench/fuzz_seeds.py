"""Writes the fuzzer's seed corpus from the zoo's and models/cifar's models.

Each model is written normalised by onnxquant.optimize_model (the form the plan
and QDQ insertion read) and as it is (the form the passes read), both
*thinned*: every float tensor (initializer or Constant value) keeps its first
``--keep`` entries along its first two axes (the channels; kernels keep their
size), a grouped convolution whose group no longer divides its weight gets
one that does, and the nodes lose their doc strings and metadata_props (which
the engine does not read; the dynamo exporter's fill most of its models).
The graph (nodes, other attributes, names, the ranks of the tensors) is
unchanged, and so is the agreement of each node's own tensors with
one another (a Conv's weight and bias, a BatchNormalization's parameters and
the weight before it, a Gemm's weight and bias), which is all the engine
checks; only the payloads shrink (and the notes go). An execution then costs a
millisecond or so instead of most of a second under the sanitizers. The
smallest models (under ``--whole-below`` bytes) are also written whole.

Usage: python bench/fuzz_seeds.py ZOO_DIR OUT_DIR [--keep N]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnx.numpy_helper

import onnxquant as oq

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _thin_tensor(t: onnx.TensorProto, keep: int) -> None:
    if t.data_type not in _FLOATS or t.data_location == onnx.TensorProto.EXTERNAL:
        return
    a = onnx.numpy_helper.to_array(t)
    if a.ndim == 0:
        return
    small = np.ascontiguousarray(a[tuple(slice(0, keep) for _ in a.shape[:2])])
    t.CopyFrom(onnx.numpy_helper.from_array(small, t.name))


def _fit_group(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> None:
    """A grouped Conv/ConvTranspose whose thinned weight's first dim no longer
    divides by its group gets a group that fits: the first dim where the conv
    is depthwise (one channel per group), else 1."""
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    for a in node.attribute:
        if a.name == "group" and w is not None and len(w.dims) >= 2 and \
                a.i > 1 and w.dims[0] % a.i:
            a.i = w.dims[0] if w.dims[1] == 1 else 1


def _strip_node_notes(graph: onnx.GraphProto) -> None:
    """Drops what the engine never reads from nodes: their doc strings and
    metadata_props (the torch.onnx dynamo exporter writes each node's stack
    and module path there, three quarters of its models' bytes once the
    tensors are thinned), in bodies too."""
    for node in graph.node:
        node.ClearField("doc_string")
        if hasattr(node, "metadata_props"):
            del node.metadata_props[:]
        for a in node.attribute:
            if a.HasField("g"):
                _strip_node_notes(a.g)
            for g in a.graphs:
                _strip_node_notes(g)


def thin(model: onnx.ModelProto, keep: int) -> onnx.ModelProto:
    """A copy of ``model`` with every float tensor cut to ``keep`` entries
    along its first two axes (channels; kernels keep their size), and
    without the nodes' doc strings and metadata."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _strip_node_notes(out.graph)
    for t in out.graph.initializer:
        _thin_tensor(t, keep)
    for node in out.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                _thin_tensor(a.t, keep)
    weights = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            _fit_group(node, weights)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("out")
    parser.add_argument("--keep", type=int, default=4,
                        help="entries kept per axis of a float tensor (default 4)")
    parser.add_argument("--whole-below", type=int, default=64 << 10,
                        help="also write models smaller than this whole (default 64 KiB)")
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.zoo, "*", "*.onnx")))
    paths += sorted(glob.glob(os.path.join(_REPO, "models", "cifar", "*.onnx")))
    if not paths:
        print(f"no models under {args.zoo} or models/cifar", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    written = 0
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        raw = onnx.load(path)
        forms = {"raw": raw}
        try:
            forms["normalized"] = oq.optimize_model(raw)
        except oq.OnnxQuantError as e:
            print(f"{name}: not normalised ({type(e).__name__}: {e})", file=sys.stderr)
        for form, model in forms.items():
            seeds = {f"{name}.{form}.thin": thin(model, args.keep)}
            if model.ByteSize() < args.whole_below:
                seeds[f"{name}.{form}"] = model
            for seed, m in seeds.items():
                with open(os.path.join(args.out, seed + ".onnx"), "wb") as f:
                    f.write(m.SerializeToString())
                written += 1
    print(f"{written} seeds in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
