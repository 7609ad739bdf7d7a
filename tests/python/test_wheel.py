"""The distributable wheel (scripts/build_wheel.sh): manylinux-tagged by
auditwheel, carrying the protobuf-lite library _core links, with py.typed and
the _core stub; installed into a fresh virtual environment, it runs the
README's one-call example with Debian's protobuf libraries out of the
loader's reach."""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The tag a wheel built on Debian 12 gets, stated in the README: glibc 2.34
#: or newer. Another build machine gives another tag: update both together.
TAG = "manylinux_2_34_x86_64"

# The README's one-call example on a small model, then ONNX Runtime on the
# result against the float model; prints where protobuf-lite was loaded from.
EXAMPLE = r"""
import json
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
import onnxquant as oq

rng = np.random.default_rng(0)
w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
graph = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
     helper.make_node("Relu", ["c"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
          "model.onnx")
samples = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(32)]

report = oq.quantize_model("model.onnx", "model.int8.onnx", samples)

x = samples[0]
fp32 = ort.InferenceSession("model.onnx").run(None, {"x": x})[0]
int8 = ort.InferenceSession("model.int8.onnx").run(None, {"x": x})[0]
print("error", float(np.abs(int8 - fp32).max()), "span", float(fp32.max() - fp32.min()))
print("quantize_linear", sum(n.op_type == "QuantizeLinear"
                             for n in onnx.load("model.int8.onnx").graph.node))
maps = open("/proc/self/maps").read().split("\n")
print("protobuf", json.dumps(sorted({line.split()[-1] for line in maps
                                     if "libprotobuf" in line})))
"""


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        pytest.skip("the manylinux wheel is built on x86-64 Linux")
    if not os.path.exists(os.path.join(_REPO, ".venv", "bin", "python")):
        _skip_or_fail("no .venv in the checkout: bash scripts/setup.sh --test makes it")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(["bash", os.path.join(_REPO, "scripts", "build_wheel.sh"), str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = glob.glob(str(out / "onnxquant-*.whl"))
    assert len(wheels) == 1, wheels
    # auditwheel show: the tag, and no library outside the policy left to the system.
    assert f'consistent with the following platform tag: "{TAG}"' in " ".join(
        done.stdout.split()), done.stdout
    system_part = done.stdout.split("system-provided shared libraries")[1]
    assert "libprotobuf" not in system_part
    return wheels[0]


def test_wheel_is_manylinux_and_carries_protobuf_lite_and_types(wheel):
    assert os.path.basename(wheel).endswith(f"-cp{sys.version_info.major}"
                                            f"{sys.version_info.minor}-{TAG}.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.startswith("onnxquant.libs/libprotobuf-lite") for n in names), names
    assert "onnxquant/py.typed" in names
    assert "onnxquant/_core.pyi" in names
    assert any(n.startswith("onnxquant/_core.") and n.endswith(".so") for n in names)


def _hidden_system_protobuf() -> list[str]:
    """The files of Debian's protobuf libraries (the loader's default path)."""
    found = set()
    for folder in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"):
        for path in glob.glob(os.path.join(folder, "libprotobuf*.so*")):
            found.add(os.path.realpath(path))
    return sorted(found)


def test_fresh_venv_runs_the_readme_example_without_debian_protobuf(wheel, tmp_path):
    if shutil.which("unshare") is None:
        _skip_or_fail("unshare (util-linux) is needed to hide Debian's protobuf")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        _skip_or_fail("unshare --mount is not permitted here (needs root): "
                      + probe.stderr.decode(errors="replace").strip())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    constraints = os.path.join(_REPO, "scripts", "constraints", "latest.txt")
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", constraints, f"onnxquant[cpu] @ file://{wheel}"],
                   check=True, timeout=900, cwd=tmp_path)
    (tmp_path / "example.py").write_text(EXAMPLE)
    # In a private mount namespace, /dev/null over each of Debian's protobuf
    # libraries: loading one of them would fail.
    hidden = _hidden_system_protobuf()
    assert hidden, "Debian's protobuf libraries are not where the build found them"
    hide = " ".join(f"mount --bind /dev/null '{path}' &&" for path in hidden)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    done = subprocess.run(["unshare", "--mount", "sh", "-c", f"{hide} exec {py} example.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    loaded = json.loads(lines["protobuf"])
    assert loaded and all(f"{os.sep}onnxquant.libs{os.sep}" in path for path in loaded), loaded
    assert int(lines["quantize_linear"]) >= 2
    error, span = (float(v) for v in lines["error"].replace("span ", "").split())
    assert 0 < error < 0.05 * span  # quantized, not FP32, and close to it


def test_core_stub_declares_every_binding_and_nothing_else():
    import ast

    from onnxquant import _core

    stub_path = os.path.join(os.path.dirname(_core.__file__), "_core.pyi")
    with open(stub_path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
        elif isinstance(node, ast.Assign):
            declared.update(t.id for t in node.targets if isinstance(t, ast.Name))
    public = {name for name in dir(_core) if not name.startswith("_")}
    assert public == {name for name in declared if not name.startswith("_")}
