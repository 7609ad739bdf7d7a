"""The notebooks run top to bottom (they only call the public API)."""

from __future__ import annotations

import glob
import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(_REPO, "notebooks", "*.ipynb")))


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        message = f"{module} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
    for module in ("nbclient", "nbformat", "ipykernel", "torch", "onnxscript"):
        _require(module)
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "FP32" in outputs and "INT8" in outputs


def test_there_is_a_notebook():
    assert any(p.endswith("01_start_to_finish.ipynb") for p in NOTEBOOKS)
    assert any(p.endswith("02_calibration_methods.ipynb") for p in NOTEBOOKS)
    assert any(p.endswith("03_accuracy_recovery.ipynb") for p in NOTEBOOKS)
    assert any(p.endswith("04_deploy.ipynb") for p in NOTEBOOKS)
