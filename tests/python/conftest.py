"""Shared fixtures: the real-model zoo, small models built from ONNX text, the
tolerance of the accuracy tests, and ONNX Runtime's AVX2 kernels under QEMU.
The pytest header names this CPU's integer kernels."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from onnxquant.cpu import cpu_kernels
from onnxquant.qemu import qemu_executable

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _skip_or_fail(message: str) -> None:
    """Skips the test, or fails it under CI=true, where everything it needs is installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def zoo_dir() -> str:
    """The real-model zoo: $ONNXQUANT_ZOO, else ../shared/zoo beside the checkout.

    Absent, the tests that need it are skipped, except under CI=true where its
    absence is an error.
    """
    path = os.environ.get("ONNXQUANT_ZOO") or os.path.join(_REPO, "..", "shared", "zoo")
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        message = (f"the model zoo is not at {path}; set ONNXQUANT_ZOO to its folder "
                   "(see ../shared/zoo/README.md)")
        _skip_or_fail(message)
    return path


def pytest_report_header(config) -> list[str]:
    del config
    qemu = qemu_executable() or "not installed (apt-get install qemu-user)"
    return [f"cpu: {cpu_kernels()}", f"qemu-x86_64: {qemu}"]


def _deployed_tolerance(se: float) -> float:
    return max(0.3, 2 * se)


@pytest.fixture(scope="session")
def deployed_tolerance():
    """``deployed_tolerance(se)``: how far apart fused and emulated INT8 top-1
    may be (points), given the paired standard error of their difference:
    max(0.3, 2 se)."""
    return _deployed_tolerance


@pytest.fixture(scope="session")
def qemu() -> None:
    """ONNX Runtime's AVX2 kernels can run under qemu-x86_64 here.

    Skipped on hosts that are not x86-64 Linux (QEMU runs this same
    interpreter); where qemu-x86_64 is missing, skipped with the command
    that installs it, except under CI=true where that is an error.
    """
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        pytest.skip("AVX2 kernels are emulated only on x86-64 Linux hosts")
    if qemu_executable() is None:
        _skip_or_fail("qemu-x86_64 is not installed: apt-get install qemu-user")


@pytest.fixture(scope="session")
def avx2_accuracy(qemu) -> None:
    """Accuracy on the AVX2 kernels is measured under QEMU where this CPU's
    own kernels are exact (VNNI, AMX); where they saturate, the tests on the
    native kernels already measured that path."""
    del qemu
    if cpu_kernels().saturates:
        pytest.skip(f"this CPU's own kernels saturate ({cpu_kernels().kernel}): the "
                    "native tests cover that path")


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX text syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Runs ``model`` in ONNX Runtime on the CPU."""
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# Elementwise: results do not depend on batching or threads, bit for bit.
SCALE_SHIFT = """
<ir_version: 8, opset_import: ["" : 13]>
scale_shift (float[N, 8] x) => (float[N, 8] y)
<float[1] two = {2.0}, float[1] one = {-1.0}> {
    t = Mul(x, two)
    y = Add(t, one)
}
"""

# Conv + Relu + Conv + GlobalAveragePool + Flatten + Gemm, dynamic batch.
_W1 = ", ".join(f"{((i * 37) % 17 - 8) / 40:.3f}" for i in range(4 * 3 * 3 * 3))
_W2 = ", ".join(f"{((i * 53) % 19 - 9) / 50:.3f}" for i in range(4 * 4 * 3 * 3))
_W3 = ", ".join(f"{((i * 29) % 13 - 6) / 20:.3f}" for i in range(4 * 5))
SMALL_CNN = f"""
<ir_version: 8, opset_import: ["" : 13]>
small_cnn (float[N, 3, 8, 8] image) => (float[N, 5] logits)
<float[4, 3, 3, 3] w1 = {{{_W1}}}, float[4] b1 = {{0.1, -0.2, 0.05, 0.0}},
 float[4, 4, 3, 3] w2 = {{{_W2}}}, float[4] b2 = {{0.0, 0.1, -0.1, 0.2}},
 float[4, 5] w3 = {{{_W3}}}, float[5] b3 = {{0.1, 0.2, 0.3, 0.4, 0.5}}> {{
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (image, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (r1, w2, b2)
    r2 = Relu (c2)
    pooled = GlobalAveragePool (r2)
    flat = Flatten (pooled)
    logits = Gemm (flat, w3, b3)
}}
"""


SIGMOID_GATE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 64] x) => (float[N, 64] z) <float[1] two = {2.0}, float[1] three = {3.0}> {
    t = Mul (x, two)
    y = Sigmoid (t)
    z = Mul (y, three)
}
"""


@pytest.fixture()
def sigmoid_gate_model() -> onnx.ModelProto:
    """z = 3 sigmoid(2x) on [N, 64] (Mul, Sigmoid, Mul), opset 13, not yet optimized."""
    return parse(SIGMOID_GATE)


@pytest.fixture()
def gate_samples() -> np.ndarray:
    """400 samples [1, 64] as [400, 1, 64], like a squeeze-and-excitation gate's input:
    mostly near -2.5 (gate closed), a rare tail up to 3 (gate open)."""
    rng = np.random.default_rng(5)
    x = rng.laplace(-2.5, 0.3, (400, 64)).astype(np.float32)
    tail = rng.random(x.shape) < 0.002
    x[tail] = rng.uniform(0.0, 3.0, int(tail.sum()))
    return x[:, None, :]


@pytest.fixture()
def scale_shift_model() -> onnx.ModelProto:
    """y = 2x - 1 on [N, 8] (Mul, Add), opset 13, not yet optimized."""
    return parse(SCALE_SHIFT)


@pytest.fixture()
def small_cnn_model() -> onnx.ModelProto:
    """A small CNN on [N, 3, 8, 8], opset 13, not yet optimized."""
    return parse(SMALL_CNN)


@pytest.fixture()
def image_batches() -> np.ndarray:
    """40 samples [1, 3, 8, 8] as one array [40, 1, 3, 8, 8], values in [-1, 2)."""
    rng = np.random.default_rng(7)
    return (rng.random((40, 1, 3, 8, 8), dtype=np.float32) * 3 - 1).astype(np.float32)


@pytest.fixture(scope="session")
def parse_model():
    """``parse_model(text)``: a checked model from ONNX text syntax."""
    return parse


@pytest.fixture(scope="session")
def run_model():
    """``run_model(model, feeds)``: its outputs in ONNX Runtime (CPU)."""
    return run
