"""Malformed but parseable models: the native engine refuses each with a
ModelError that names the node or tensor, instead of crashing the process.

Each case here crashed the interpreter (or allocated until the machine ran out
of memory) before the engine validated its input (cpp/onnxquant/validate_model.h).
"""

from __future__ import annotations

import os
import random

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

import onnxquant as oq
from onnxquant import _core

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _conv_model(op: str, weight: np.ndarray, bias: np.ndarray | None = None,
                weight_dims: list[int] | None = None) -> onnx.ModelProto:
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    inits = [onnx.numpy_helper.from_array(weight.astype(np.float32), "w")]
    if weight_dims is not None:  # dims that do not describe the payload
        del inits[0].dims[:]
        inits[0].dims.extend(weight_dims)
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(bias.astype(np.float32), "b"))
    graph = oh.make_graph(
        [oh.make_node(op, inputs, ["y"], name="conv")], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "c", "h", "w"])],
        inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    types = {o: onnx.TensorProto.FLOAT for n in model.graph.node for o in n.output}
    types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _native_entry_points(model: onnx.ModelProto):
    """Calls of every native entry point on ``model``."""
    data = model.SerializeToString()
    types = _dtypes(model)
    ranges = {name: (-1.0, 1.0) for name in types}
    options = _core.QuantOptions()
    output = model.graph.output[0].name if model.graph.output else "y"
    return {
        "run_passes": lambda: _core.run_passes(data, list(_core.pass_names())),
        "make_plan": lambda: _core.make_plan(data, types, options),
        "quantize": lambda: _core.quantize(data, types, options, ranges),
        "expose_tensors": lambda: _core.expose_tensors(data, [output], types),
        "kernel_check": lambda: _core.KernelChecker(data, types, options, ranges),
    }


_CASES = {
    "conv_scalar_weight": (
        lambda: _conv_model("Conv", np.array(0.5)),
        r"node 'conv' \(Conv\) has a weight 'w' of rank 0"),
    "conv_transpose_scalar_weight": (
        lambda: _conv_model("ConvTranspose", np.array(0.5)),
        r"node 'conv' \(ConvTranspose\) has a weight 'w' of rank 0"),
    "zero_output_channels_with_bias": (
        lambda: _conv_model("Conv", np.zeros((0, 2, 1, 1)), np.ones(1)),
        r"node 'conv' \(Conv\) has a bias 'b' of shape \[1\] for 0 output channels"),
    "bias_longer_than_channels": (
        lambda: _conv_model("Conv", np.ones((2, 2, 1, 1)), np.ones(7)),
        r"node 'conv' \(Conv\) has a bias 'b' of shape \[7\] for 2 output channels"),
    "dims_product_wraps_int64": (
        lambda: _conv_model("Conv", np.ones(4), weight_dims=[2**32 + 1, 2**32 - 1, -4]),
        r"Initializer 'w' has a negative dim"),
    "dims_product_overflows_int64": (
        lambda: _conv_model("Conv", np.ones(4), weight_dims=[2**32 + 1, 2**32 - 1, 4]),
        r"Initializer 'w' has dims whose product exceeds"),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_native_entry_points_refuse_by_name(case):
    build, message = _CASES[case]
    for call in _native_entry_points(build()).values():
        with pytest.raises(oq.ModelError, match=message):
            call()


@pytest.mark.parametrize("case", sorted(_CASES))
def test_optimize_model_refuses_by_name(case):
    build, message = _CASES[case]
    if case.startswith("dims_"):
        # ONNX's checker, which optimize_model runs on the model as given,
        # catches these before the engine, naming the tensor.
        message = r"fails ONNX's checker .*\(Tensor dimension product overflow \(tensor name: w\)"
    with pytest.raises(oq.ModelError, match=message):
        oq.optimize_model(build())


def test_nodes_out_of_topological_order_are_a_model_error():
    graph = oh.make_graph(
        [oh.make_node("Relu", ["t"], ["y"], name="second"),
         oh.make_node("Relu", ["x"], ["t"], name="first")], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    for call in _native_entry_points(model).values():
        with pytest.raises(oq.ModelError,
                           match=r"node 'second' \(Relu\) reads tensor 't' before "
                                 r"node 'first' \(Relu\) writes it.*topological order"):
            call()
    # optimize_model runs ONNX's checker on the model as given first; it
    # names the node too.
    with pytest.raises(oq.ModelError,
                       match=r"fails ONNX's checker.*topologically sorted.*second"):
        oq.optimize_model(model)


def _mutants(model: onnx.ModelProto, count: int, seed: int):
    """Copies of ``model`` with one field of one node or initializer broken, of
    the kinds that crashed the engine: weights of the wrong rank, dims that do
    not match the payload, biases of the wrong length, inputs removed, nodes
    swapped."""
    rng = random.Random(seed)
    for _ in range(count):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        kind = rng.randrange(6)
        if kind == 0 and g.initializer:
            t = rng.choice(g.initializer)
            del t.dims[:]  # a scalar that still holds its payload
        elif kind == 1 and g.initializer:
            t = rng.choice(g.initializer)
            if t.dims:
                t.dims[rng.randrange(len(t.dims))] = rng.choice(
                    [0, -1, 2**32 + 1, rng.randrange(1, 1024)])
        elif kind == 2 and g.initializer:
            t = rng.choice(g.initializer)
            t.dims.append(rng.choice([0, 2, 2**31]))
        elif kind == 3 and g.node:
            n = rng.choice(g.node)
            if n.input:
                del n.input[rng.randrange(len(n.input))]
        elif kind == 4 and len(g.node) > 1:
            i, j = rng.sample(range(len(g.node)), 2)
            a, b = onnx.NodeProto(), onnx.NodeProto()
            a.CopyFrom(g.node[i])
            b.CopyFrom(g.node[j])
            g.node[i].CopyFrom(b)
            g.node[j].CopyFrom(a)
        elif kind == 5 and g.node and g.initializer:
            n = rng.choice(g.node)
            n.input.append(rng.choice(g.initializer).name)
        yield m


def _zoo_and_cifar_models(zoo_dir):
    paths = [os.path.join(zoo_dir, "mnist", "mnist_cnn.onnx"),
             os.path.join(zoo_dir, "cifar10", "resnet8_cifar10.onnx"),
             os.path.join(_REPO, "models", "cifar", "resnet.onnx")]
    return [onnx.load(p) for p in paths if os.path.exists(p)]


def test_mutated_zoo_and_cifar_models_never_crash(zoo_dir):
    models = _zoo_and_cifar_models(zoo_dir)
    assert models
    refused = 0
    for k, model in enumerate(models):
        normalized = oq.optimize_model(model)
        for mutant in _mutants(normalized, 60, seed=k):
            for call in _native_entry_points(mutant).values():
                try:
                    call()
                except oq.OnnxQuantError as e:
                    assert not isinstance(e, oq.InternalError), str(e)
                    refused += 1
    assert refused > 0  # the mutations do reach the checks
