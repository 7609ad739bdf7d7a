"""Cross-check of W4A8 accuracy: the FP32 model with its Conv/Gemm weights replaced by a
numpy int4 per-channel fake-quantization (scale max|w| / 7 per output channel, round half
to even, clip to [-7, 7]; activations left float), top-1 beside FP32's.

    PYTHONPATH=python .venv/bin/python bench/int4_reference.py [--model resnet8] [--images 1000]

Top-1 on test images drawn with numpy.random.default_rng(0), batches of 100, ONNX Runtime's
default session. docs/accuracy.md ("W4A8 and mixed precision") quotes it.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import MODELS  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO  # noqa: E402


def int4_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose Conv and Gemm weights are int4 fake-quantized per channel."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    axes = {}
    for n in out.graph.node:
        if n.op_type == "Conv":
            axes[n.input[1]] = 0
        elif n.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in n.attribute)
            axes[n.input[1]] = 0 if trans_b else 1
    for t in out.graph.initializer:
        if t.name not in axes:
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        reduce = tuple(i for i in range(w.ndim) if i != axes[t.name])
        scale = (np.abs(w).max(axis=reduce, keepdims=True) / 7).astype(np.float32)
        scale[scale == 0] = 1
        q = (np.clip(np.round(w / scale), -7, 7) * scale).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(q, t.name))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8", choices=list(MODELS))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--zoo", default=DEFAULT_ZOO)
    args = p.parse_args()
    entry = MODELS[args.model](DEFAULT_ZOO if args.zoo is None else args.zoo)
    model = oq.optimize_model(entry.path)
    test = entry.test.subset(args.images)

    def top1(m: onnx.ModelProto) -> float:
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        out = np.concatenate([s.run(None, {name: test.x[i:i + 100]})[0]
                              for i in range(0, len(test.x), 100)])
        return 100.0 * float(np.mean(out.argmax(1) == test.y))

    print(f"{entry.name}: FP32 {top1(model):.2f}, int4 weights (numpy, activations float) "
          f"{top1(int4_weights(model)):.2f} on {len(test.y)} drawn test images")


if __name__ == "__main__":
    main()
