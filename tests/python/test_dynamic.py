"""Dynamic quantization of MatMul and Gemm (onnxquant.quantize_dynamic),
checked against ONNX Runtime and an independent numpy computation of
DynamicQuantizeLinear and MatMulInteger as the ONNX specification defines
them."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnx.parser
import onnxruntime as ort
import pytest

import onnxquant as oq
from onnxquant.analysis import mac_share
from onnxquant.cpu import cpu_kernels

_K, _N = 16, 12


def _model() -> onnx.ModelProto:
    """A MatMul with a constant weight, a Gemm (transB, alpha, beta, bias),
    and a MatMul of two activations, reading the same input twice."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[6, {_K}] x, float[{_N}, 5] b) => (float[6, {_N}] h, float[6, 5] z) {{
            m = MatMul(x, w)
            h = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, wt, c)
            z = MatMul(m, b)
        }}""")
    w = rng.normal(size=(_K, _N)).astype(np.float32)
    w[:, 3] *= 20  # one column far larger: per-column scales matter
    model.graph.initializer.extend([
        onh.from_array(w, "w"),
        onh.from_array(rng.normal(size=(_N, _K)).astype(np.float32), "wt"),
        onh.from_array(rng.normal(size=(_N,)).astype(np.float32), "c")])
    return oq.optimize_model(model)


def _inputs(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": (rng.normal(size=(6, _K)) + 0.3).astype(np.float32),
            "b": rng.normal(size=(_N, 5)).astype(np.float32)}


def _run(model: onnx.ModelProto, feed, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
         save: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if save:
        options.optimized_model_filepath = save
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _dynamic_quantize_linear(x: np.ndarray):
    """DynamicQuantizeLinear as the ONNX specification defines it."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((hi - lo) / 255)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    codes = np.clip(np.rint(x / scale) + zero, 0, 255)
    return codes.astype(np.int64), scale, int(zero)


def _weight_codes(w: np.ndarray, qmax: int):
    scale = (np.abs(w).max(axis=0) / qmax).astype(np.float32)
    return np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int64), scale


def _uint8_times_int8(a: np.ndarray, zero: int, b: np.ndarray, pair_sums: bool) -> np.ndarray:
    """MatMulInteger of uint8 codes ``a`` (zero point ``zero``) and int8
    codes ``b`` (zero point 0): exactly, as the specification defines it, or
    (``pair_sums``) as x86 CPUs without VNNI compute it, where VPMADDUBSW adds
    the products of raw codes k and k + 1 in 16 bits, saturating, before the
    zero point's term sum(b) * zero is taken off."""
    if not pair_sums:
        return (a - zero) @ b
    if a.shape[1] % 2:
        a, b = np.pad(a, ((0, 0), (0, 1))), np.pad(b, ((0, 1), (0, 0)))
    products = a[:, :, None] * b[None, :, :]
    pairs = np.clip(products[:, 0::2] + products[:, 1::2], -32768, 32767)
    return pairs.sum(axis=1) - zero * b.sum(axis=0)


def _reference(feed, qmax: int,
               pair_sums: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The outputs of the dynamic model, computed from the spec in numpy; the
    products of activations and weights add as this CPU's ONNX Runtime
    kernels add them (``pair_sums`` None: as :func:`cpu_kernels` says)."""
    if pair_sums is None:
        pair_sums = bool(cpu_kernels().saturates)
    model = _model()
    init = {i.name: onh.to_array(i) for i in model.graph.initializer}
    x = feed["x"]
    xq, xs, xz = _dynamic_quantize_linear(x)
    wq, ws = _weight_codes(init["w"], qmax)
    m = _uint8_times_int8(xq, xz, wq, pair_sums).astype(np.float32) * (xs * ws)
    wtq, wts = _weight_codes(init["wt"].T * np.float32(0.5), qmax)
    h = _uint8_times_int8(xq, xz, wtq, pair_sums).astype(np.float32) * (xs * wts) \
        + 2 * init["c"]
    mq, ms, mz = _dynamic_quantize_linear(m)
    bq, bs, bz = _dynamic_quantize_linear(feed["b"])
    z = ((mq - mz) @ (bq - bz)).astype(np.float32) * (ms * bs)
    return h, z


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _check_outputs(quantized: onnx.ModelProto, qmax: int) -> None:
    """ONNX Runtime (default session: DynamicQuantizeMatMul) gives the
    specification's outputs (with this CPU's 16-bit pair sums where its
    kernels have them), and stays close to FP32, except where full-range
    weights meet kernels that saturate (what target="portable" is for)."""
    feed = _inputs()
    h, z = _run(quantized, feed)
    h_ref, z_ref = _reference(feed, qmax)
    np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-4 * np.abs(h_ref).max())
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4 * np.abs(z_ref).max())
    if qmax == 127 and cpu_kernels().saturates:
        return
    for got, want in zip((h, z), _run(_model(), feed)):
        assert _cosine(got, want) > 0.999


@pytest.mark.parametrize("target, qmax", [("portable", 63), ("exact", 127)])
def test_outputs_match_the_specification_and_fp32(target, qmax):
    _check_outputs(oq.quantize_dynamic(_model(), target=target), qmax)


def test_the_reference_models_the_saturating_kernels():
    """The two forms of the reference differ where a pair of products of
    full-range codes passes 32 767, and agree where weights stay in 63."""
    feed = _inputs()
    exact, saturated = _reference(feed, 127, False), _reference(feed, 127, True)
    assert np.abs(exact[0] - saturated[0]).max() > 0.1
    portable = _reference(feed, 63, False), _reference(feed, 63, True)
    np.testing.assert_array_equal(portable[0][0], portable[1][0])
    np.testing.assert_array_equal(portable[0][1], portable[1][1])


def test_structure_weights_and_fusion(tmp_path):
    quantized, report = oq.quantize_dynamic(_model(), return_report=True)
    ops = [n.op_type for n in quantized.graph.node]
    assert "MatMul" not in ops and "Gemm" not in ops
    assert ops.count("MatMulInteger") == 3
    # x is quantized once for its two readers; m and b once each.
    assert ops.count("DynamicQuantizeLinear") == 3
    assert len(report.quantized) == 3 and report.float_nodes == ()
    init = {i.name: onh.to_array(i) for i in quantized.graph.initializer}
    integer = [n for n in quantized.graph.node if n.op_type == "MatMulInteger"]
    weights = [init[n.input[1]] for n in integer if n.input[1] in init]
    assert len(weights) == 2
    for codes in weights:
        assert codes.dtype == np.int8 and np.abs(codes).max() == 63
        # One zero point and (through the Mul) one scale per output column.
    zero_points = [init[n.input[3]] for n in integer if n.input[3] in init]
    assert all(z.shape == (_N,) and not z.any() for z in zero_points)
    assert not {"w", "wt", "c"} & init.keys()  # the float weights are gone
    # ONNX Runtime fuses each pattern into one integer kernel with a float
    # output: DynamicQuantizeMatMul where the DynamicQuantizeLinear has one
    # reader, MatMulIntegerToFloat where it is shared.
    path = str(tmp_path / "optimized.onnx")
    _run(quantized, _inputs(), ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, path)
    fused = [n.op_type for n in onnx.load(path).graph.node]
    assert fused.count("DynamicQuantizeMatMul") + fused.count("MatMulIntegerToFloat") == 3
    assert "MatMulInteger" not in fused and "Cast" not in fused
    # Every MatMul/Gemm MAC runs in INT8.
    assert mac_share(_model(), quantized).share == 1.0


def test_options_leave_nodes_float_and_say_why():
    model = _model()
    gemm = next(n.name for n in model.graph.node if n.op_type == "Gemm")
    quantized, report = oq.quantize_dynamic(
        model, exclude_nodes=[gemm], quantize_activation_matmul=False, return_report=True)
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("Gemm") == 1
    reasons = dict(report.float_nodes)
    assert reasons[gemm] == "excluded"
    assert any("two activations" in r for r in reasons.values())
    share = mac_share(model, quantized)
    assert 0 < share.share < 1 and gemm in share.float_nodes


def test_per_tensor_weights_have_one_scale():
    quantized = oq.quantize_dynamic(_model(), per_channel=False)
    init = {i.name: onh.to_array(i) for i in quantized.graph.initializer}
    zero_points = [init[n.input[3]] for n in quantized.graph.node
                   if n.op_type == "MatMulInteger" and n.input[3] in init]
    assert zero_points and all(z.shape == () for z in zero_points)


@pytest.mark.parametrize("kwargs, match", [
    ({"op_types": ["Conv"]}, "Conv"),
    ({"target": "vnni"}, "target"),
    ({"exclude_nodes": ["nope"]}, "nope"),
    ({"exclude_nodes": "nope"}, "list of names"),
    ({"per_channel": 1}, "per_channel"),
])
def test_bad_options_raise_typed_errors(kwargs, match):
    with pytest.raises(oq.InvalidArgumentError, match=match):
        oq.quantize_dynamic(_model(), **kwargs)


def test_requires_a_normalised_model_and_refuses_a_quantized_one(tmp_path):
    raw = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x, float[3, 2] w) => (float[2, 2] y) { y = MatMul(x, w) }""")
    with pytest.raises(oq.ModelError, match="optimize_model"):
        oq.quantize_dynamic(raw)
    with pytest.raises(oq.UnsupportedModelError):
        oq.quantize_dynamic(oq.quantize_dynamic(_model()))
    path = os.path.join(tmp_path, "m.onnx")
    onnx.save(_model(), path)
    assert any(n.op_type == "MatMulInteger" for n in oq.quantize_dynamic(path).graph.node)


def test_a_weight_a_body_also_reads_is_kept():
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["b_out"])], "then",
        [], [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [4, 3])])
    other = helper.make_graph(
        [helper.make_node("Neg", ["w"], ["e_out"])], "else",
        [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [4, 3])])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]),
         helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 3])],
        [onh.from_array(w, "w")])
    model = oq.optimize_model(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]))
    quantized = oq.quantize_dynamic(model)
    x = rng.normal(size=(2, 4)).astype(np.float32)
    y, z = _run(quantized, {"x": x, "cond": np.array(True)})
    np.testing.assert_array_equal(z, w)
    assert np.abs(y - x @ w).max() < 0.05 * np.abs(x @ w).max()


def test_command_line_dynamic(tmp_path, capsys):
    import json

    from onnxquant.cli import main

    path, out, report = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "r.json"
    onnx.save(_model(), str(path))
    assert main(["quantize", str(path), "-o", str(out), "--dynamic", "--target", "exact",
                 "--float-activation-matmul", "--report-json", str(report), "-q"]) == 0
    quantized = onnx.load(str(out))
    assert [n.op_type for n in quantized.graph.node].count("MatMulInteger") == 2
    feed = _inputs()
    h, _ = _run(quantized, feed)
    np.testing.assert_allclose(h, _reference(feed, 127)[0], rtol=1e-4, atol=1e-3)
    written = json.loads(report.read_text())["report"]
    assert len(written["quantized"]) == 2 and written["weight_qmax"] == 127
    assert "two activations" in written["float_nodes"][0]["reason"]
    assert "MatMulInteger" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # --dynamic and --calibration-data exclude each other
        main(["quantize", str(path), "-o", str(out), "--dynamic", "--calibration-data", "x"])
