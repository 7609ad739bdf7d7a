"""Builds a ResNet-18-size ONNX model for 32x32 inputs with random weights.

The CIFAR variant of ResNet-18 (He et al. 2016; the layout most CIFAR code
uses): a 3x3 stride-1 stem of 64 channels (no max pool), four stages of two
BasicBlocks with 64, 128, 256 and 512 channels (stride 2 and a 1x1 projection
shortcut at the first block of stages 2 to 4), Conv -> BatchNormalization ->
Relu, residual Add, GlobalAveragePool, Flatten, Gemm to 10 classes. 11.2 M
parameters, about 0.56 GFLOP per image. The batch dimension is dynamic.

The weights are random (He-normal, so activations stay finite through the 8
blocks); they serve for timing and memory, not accuracy. BatchNormalization is
left unfolded (random statistics), as in an exported model: ``optimize_model``
folds it. The stem's weights are divided by 255 so raw 0..255 pixels (the
CIFAR-10 ResNet8's input convention) can be fed unchanged.

    .venv/bin/python bench/resnet18_cifar.py [OUT.onnx]
        (default: build/bench/resnet18_cifar.onnx)

Nothing this writes is committed.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "bench",
                            "resnet18_cifar.onnx")


def build(seed: int = 0, num_classes: int = 10) -> onnx.ModelProto:
    """Returns the model (opset 13, IR 7), checked by ``onnx.checker``."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(prefix: str, array: np.ndarray) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(array.astype(np.float32), n))
        return n

    def conv_bn(x: str, cin: int, cout: int, k: int, stride: int, relu: bool,
                gain: float = 1.0) -> str:
        std = gain * np.sqrt(2.0 / (cin * k * k))
        w = const("W", rng.normal(0.0, std, (cout, cin, k, k)))
        y = name("conv")
        nodes.append(helper.make_node("Conv", [x, w], [y], name=name("Conv"),
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        scale = const("bn_scale", rng.uniform(0.5, 1.0, cout))
        bias = const("bn_bias", rng.normal(0.0, 0.1, cout))
        mean = const("bn_mean", rng.normal(0.0, 0.1, cout))
        var = const("bn_var", rng.uniform(0.8, 1.2, cout))
        z = name("bn")
        nodes.append(helper.make_node("BatchNormalization", [y, scale, bias, mean, var], [z],
                                      name=name("BatchNormalization"), epsilon=1e-5))
        if not relu:
            return z
        r = name("relu")
        nodes.append(helper.make_node("Relu", [z], [r], name=name("Relu")))
        return r

    def basic_block(x: str, cin: int, cout: int, stride: int) -> str:
        h = conv_bn(x, cin, cout, 3, stride, relu=True)
        # Small gain on the branch's last conv keeps the residual sum's
        # variance from doubling at every block (zero-init-gamma style).
        h = conv_bn(h, cout, cout, 3, 1, relu=False, gain=0.5)
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = conv_bn(x, cin, cout, 1, stride, relu=False)
        s = name("add")
        nodes.append(helper.make_node("Add", [h, shortcut], [s], name=name("Add")))
        r = name("relu")
        nodes.append(helper.make_node("Relu", [s], [r], name=name("Relu")))
        return r

    x = conv_bn("input", 3, 64, 3, 1, relu=True, gain=1.0 / 255.0 * 3.0)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = basic_block(x, cin, cout, stride)
            cin = cout
    pooled = name("gap")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled],
                                  name=name("GlobalAveragePool")))
    flat = name("flat")
    nodes.append(helper.make_node("Flatten", [pooled], [flat], name=name("Flatten"), axis=1))
    fc_w = const("fc_W", rng.normal(0.0, np.sqrt(1.0 / 512), (num_classes, 512)))
    fc_b = const("fc_b", np.zeros(num_classes))
    nodes.append(helper.make_node("Gemm", [flat, fc_w, fc_b], ["logits"], name=name("Gemm"),
                                  transB=1))

    graph = helper.make_graph(
        nodes, "resnet18_cifar_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="onnxquant-bench")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def ensure(path: str = DEFAULT_PATH) -> str:
    """Writes the model to ``path`` unless it is there already; returns the path."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        onnx.save(build(), path)
    return path


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    onnx.save(build(), out)
    m = onnx.load(out)
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    print(f"wrote {out}: {len(m.graph.node)} nodes, {params / 1e6:.1f} M parameters")
