"""onnx, onnxruntime and onnxquant._core load together in any order: the
engine's renamed lite protobuf cannot collide with the one inside the onnx
wheel (two registrations of onnx.proto would abort the process)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke  # also run at the lower bounds (scripts/test_lower_bounds.sh)

SCRIPT = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
import onnxquant._core as core
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
out, _ = core.run_passes(m.SerializeToString(), core.pass_names())
back = onnx.load_from_string(out)
onnx.checker.check_model(back, full_check=True)
y = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(
    None, {"x": np.array([[-1, 0, 1, 2]], np.float32)})[0]
print("ok", back.graph.node[0].op_type, y.tolist())
"""


@pytest.mark.parametrize("order", list(itertools.permutations(
    ["onnx", "onnxruntime", "onnxquant._core"])))
def test_modules_import_and_work_together(order):
    result = subprocess.run([sys.executable, "-c", SCRIPT, *order], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok Relu [[0.0, 0.0, 1.0, 2.0]]"
