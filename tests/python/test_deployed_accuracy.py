"""Accuracy as deployed: the fused integer kernels, beside their emulation.

The CPU's kernel path (onnxquant.cpu), the paired figures
(onnxquant.evaluate.evaluate_deployed) and ONNX Runtime's AVX2 kernels under
qemu-x86_64 -cpu Haswell (onnxquant.qemu), on crafted inputs whose answers are
worked out by hand, then on the demo's Fashion-MNIST CNN.
"""

from __future__ import annotations

import math
import os
import platform

import numpy as np
import onnx
import pytest

import onnxquant as oq
from onnxquant.cpu import cpu_kernels
from onnxquant.evaluate import (DIVERGENCE_POINTS, deployed_top1, evaluate_deployed,
                                make_session, predict)
from onnxquant.qemu import predict_avx2, qemu_available

# ----------------------------------------------------------------- CPU flags


def _cpuinfo(flags: str, key: str = "flags", name: str = "Test CPU") -> str:
    one = f"processor\t: 0\nmodel name\t: {name}\n{key}\t\t: {flags}\n"
    return one + "\n" + one.replace("processor\t: 0", "processor\t: 1")


# Kernel paths of ONNX Runtime's MLAS (platform.cpp) for real CPU generations.
@pytest.mark.parametrize("flags, saturates", [
    ("fpu sse2 sse4_1 avx avx2 fma", True),                            # Haswell, Zen 2
    ("sse2 avx avx2 avx512f avx512dq avx512bw avx512vl", True),        # Skylake-SP
    ("avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni", False),    # Cascade Lake, Zen 4
    ("avx2 avx_vnni", False),                                           # Alder Lake
    ("avx2 avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8", False),  # Sapphire R.
    ("fpu sse2 sse4_1", False),                                         # no AVX2: SSE2 widening
], ids=["avx2", "avx512-core", "avx512-vnni", "avx-vnni", "amx", "sse"])
def test_x86_kernel_path_follows_the_flags(flags, saturates):
    k = cpu_kernels(_cpuinfo(flags), machine="x86_64")
    assert k.saturates is saturates
    assert k.exact is (not saturates)
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    assert k.flags == tuple(f for f in wanted if f in flags.split())
    assert k.name == "Test CPU"
    assert ("saturate" in str(k)) is saturates


def test_arm64_kernels_are_exact():
    k = cpu_kernels(_cpuinfo("fp asimd aes asimddp i8mm", key="Features"), machine="aarch64")
    assert k.saturates is False and k.flags == ("asimddp", "i8mm")
    k = cpu_kernels(_cpuinfo("fp asimd", key="Features"), machine="aarch64")
    assert k.saturates is False and k.flags == ()
    assert "none of asimddp i8mm" in str(k)


def test_unknown_systems_say_so():
    k = cpu_kernels("", machine="riscv64")
    assert k.saturates is None and not k.exact and k.kernel == "unknown"
    assert "not readable" in str(k)
    assert cpu_kernels("", machine="x86_64").saturates is None  # no flags to read


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo")
def test_this_cpu_flags_come_from_proc_cpuinfo():
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        words = set(f.read().split())
    k = cpu_kernels()
    assert set(k.flags) <= words
    assert k.kernel in str(k)


# ----------------------------------------------------- the paired figures


def _logits(predicted: list[int], classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[predicted]


def test_paired_figures_worked_by_hand():
    labels = np.array([0, 1, 2, 0])
    fp32 = _logits([0, 1, 2, 0])        # 4 of 4 right
    emulated = _logits([0, 1, 2, 1])    # 3 of 4
    fused = _logits([0, 2, 2, 1])       # 2 of 4
    acc = deployed_top1(fp32, emulated, fused, labels, kernels="test")
    assert acc.fp32 == 100.0
    assert acc.fused.candidate == 50.0 and acc.emulated.candidate == 75.0
    assert acc.gap == -25.0
    # correct_fused - correct_emulated per image: 0, -1, 0, 0; mean -1/4,
    # sample variance (3 (1/4)^2 + (3/4)^2) / 3 = 1/4, SE = sqrt(1/4) / sqrt(4).
    assert acc.gap_se == pytest.approx(100 * 0.5 / 2)
    # correct_fp32 - correct_fused: 0, 1, 0, 1: variance 1/3, SE sqrt(1/3) / 2.
    assert acc.fused.paired_se == pytest.approx(100 * math.sqrt(1 / 3) / 2)
    assert acc.fused_vs_emulated.agreement == 75.0
    assert acc.kernels_diverge
    text = str(acc)
    assert text.index("as deployed") < text.index("emulated") and "WARNING" in text


def test_a_gap_within_half_a_point_is_not_flagged():
    labels = np.zeros(1000, dtype=np.int64)
    fp32 = emulated = _logits([0] * 1000)
    fused = _logits([1] * 4 + [0] * 996)  # 0.4 point below the emulation
    acc = deployed_top1(fp32, emulated, fused, labels, kernels="test")
    assert acc.gap == pytest.approx(-0.4)
    assert abs(acc.gap) <= DIVERGENCE_POINTS and not acc.kernels_diverge
    assert "WARNING" not in str(acc)


def test_unknown_kernels_are_refused(small_cnn_model):
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(oq.InvalidArgumentError, match="kernels='avx512'.*'native'.*'avx2'"):
        evaluate_deployed(small_cnn_model, small_cnn_model, x, np.zeros(2), kernels="avx512")


# --------------------------------------------------------- QEMU, crafted

# x = 1.0 quantizes to code 255 (scale 1/255), both weights to 127 (scale
# 1/127): the exact accumulator is 2 x 255 x 127 = 64 770, i.e. y = 2.0; a
# kernel adding the pair in 16 bits saturates at 32 767, y = 32767 / 32385.
SATURATING_CONV = """
<ir_version: 8, opset_import: ["" : 13]>
pair (float[N, 2, 1, 1] x) => (float[N, 1, 1, 1] y)
<float xs = {0.003921569}, uint8 xz = {0}, int8[1, 2, 1, 1] wq = {127, 127},
 float[1] ws = {0.007874016}, float ys = {0.01}, uint8 yz = {0}> {
    xq = QuantizeLinear (x, xs, xz)
    xd = DequantizeLinear (xq, xs, xz)
    wd = DequantizeLinear <axis = 0> (wq, ws)
    c = Conv (xd, wd)
    yq = QuantizeLinear (c, ys, yz)
    y = DequantizeLinear (yq, ys, yz)
}
"""
_EXACT = 2 * 255 * 127 * 0.003921569 * 0.007874016
_SATURATED = 32767 * 0.003921569 * 0.007874016
_STEP = 0.01  # the output's scale: results are exact to half a step


def test_qemu_reproduces_the_avx2_saturation(qemu, parse_model):
    model = parse_model(SATURATING_CONV)
    x = np.ones((2, 2, 1, 1), np.float32)
    fused = predict_avx2(model, x, timeout=120)
    assert fused.ravel() == pytest.approx([_SATURATED] * 2, abs=_STEP / 2)
    emulated = predict(make_session(model, emulate=True), x)
    assert emulated.ravel() == pytest.approx([_EXACT] * 2, abs=_STEP / 2)
    if cpu_kernels().exact:  # and this CPU's own kernels do not saturate
        native = predict(make_session(model, emulate=False), x)
        assert native.ravel() == pytest.approx([_EXACT] * 2, abs=_STEP / 2)


def test_qemu_predicts_what_native_does_on_a_float_model(qemu, small_cnn_model):
    x = np.random.default_rng(3).standard_normal((64, 3, 8, 8)).astype(np.float32)
    native = predict(make_session(small_cnn_model), x)
    emulated_cpu = predict_avx2(small_cnn_model, x, batch_size=16, timeout=120)
    assert emulated_cpu.shape == native.shape
    np.testing.assert_allclose(emulated_cpu, native, rtol=1e-4, atol=1e-5)
    assert (emulated_cpu.argmax(1) == native.argmax(1)).all()


def test_a_failing_run_under_qemu_quotes_its_error(qemu, small_cnn_model):
    x = np.zeros((2, 3, 8, 8), np.int64)  # the model takes float
    with pytest.raises(oq.QemuError, match=r"model 'small_cnn'.*exit status") as info:
        predict_avx2(small_cnn_model, x, timeout=120)
    assert "tensor(int64)" in str(info.value)
    assert "TCG" not in str(info.value)


def test_a_run_past_its_timeout_says_what_to_do(qemu, small_cnn_model):
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(oq.QemuError, match="did not finish.*fewer samples"):
        predict_avx2(small_cnn_model, x, timeout=0.01)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="QEMU runs on x86-64 hosts")
def test_missing_qemu_says_how_to_install_it(monkeypatch, tmp_path, small_cnn_model):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not qemu_available()
    with pytest.raises(oq.QemuError, match="apt-get install qemu-user"):
        predict_avx2(small_cnn_model, np.zeros((1, 3, 8, 8), np.float32))


def test_qemu_needs_an_x86_64_host(monkeypatch, small_cnn_model):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert not qemu_available()
    with pytest.raises(oq.QemuError, match="x86-64 Linux host.*aarch64"):
        predict_avx2(small_cnn_model, np.zeros((1, 3, 8, 8), np.float32))


# ------------------------------------------- the demo's Fashion-MNIST CNN

FASHION = "/usr/share/datasets/fashion-mnist"
AVX2_IMAGES = 2000  # about 10 s per model under QEMU


@pytest.fixture(scope="module")
def fashion():
    if not os.path.isdir(FASHION):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from onnxquant.demo import default_demo_data

    data = default_demo_data()
    model = oq.optimize_model(data.model)
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(data.calibration[i:i + 1] for i in range(len(data.calibration)))
    ranges = cal.compute_range()
    return {"model": model, "x": data.test_inputs, "y": data.test_labels,
            "portable": oq.quantize(model, ranges, calibrator=cal),
            "exact": oq.quantize(model, ranges, target="exact")}


def test_fashion_cnn_as_deployed_on_this_cpu(fashion, deployed_tolerance):
    acc = evaluate_deployed(fashion["model"], fashion["portable"], fashion["x"], fashion["y"])
    assert acc.fused.count == 10000 and acc.fp32 > 88.0
    assert acc.fused.drop <= 1.0 + 2 * acc.fused.paired_se, str(acc)
    assert abs(acc.gap) <= deployed_tolerance(acc.gap_se), str(acc)


@pytest.mark.skipif(not cpu_kernels().exact, reason="full-range weights are exact only on "
                    "VNNI, AMX and ARM kernels")
def test_full_range_weights_are_exact_on_this_cpu(fashion, deployed_tolerance):
    acc = evaluate_deployed(fashion["model"], fashion["exact"], fashion["x"], fashion["y"])
    assert abs(acc.gap) <= deployed_tolerance(acc.gap_se), str(acc)


def test_fashion_cnn_as_deployed_on_avx2(fashion, avx2_accuracy, deployed_tolerance):
    x, y = fashion["x"][:AVX2_IMAGES], fashion["y"][:AVX2_IMAGES]
    acc = evaluate_deployed(fashion["model"], fashion["portable"], x, y, kernels="avx2",
                            timeout=300)
    assert acc.fused.drop <= 1.0 + 2 * acc.fused.paired_se, str(acc)
    assert abs(acc.gap) <= deployed_tolerance(acc.gap_se), str(acc)


def test_full_range_weights_lose_accuracy_on_avx2(fashion, avx2_accuracy,
                                                   deployed_tolerance):
    """The check has teeth: the unprotected model saturates on AVX2 (measured:
    92.05 % emulated, 86.55 % fused on these 2 000 images)."""
    x, y = fashion["x"][:AVX2_IMAGES], fashion["y"][:AVX2_IMAGES]
    acc = evaluate_deployed(fashion["model"], fashion["exact"], x, y, kernels="avx2",
                            timeout=300)
    assert acc.gap < -deployed_tolerance(acc.gap_se), str(acc)
    assert acc.kernels_diverge and "WARNING" in str(acc)


def test_onnx_files_evaluate_like_models(fashion, tmp_path):
    path = tmp_path / "int8.onnx"
    onnx.save(fashion["portable"], path)
    x, y = fashion["x"][:500], fashion["y"][:500]
    from_file = evaluate_deployed(fashion["model"], path, x, y)
    in_memory = evaluate_deployed(fashion["model"], fashion["portable"], x, y)
    assert from_file.fused == in_memory.fused and from_file.emulated == in_memory.emulated
