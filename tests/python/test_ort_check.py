"""The import-time check of ONNX Runtime (onnxquant._ort_check): a typed
ImportError naming the extras when no ONNX Runtime is importable, a warning
when two distributions install the onnxruntime package."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import warnings

import onnxruntime
import pytest

import onnxquant as oq
from onnxquant import _ort_check

pytestmark = pytest.mark.smoke


class _FakeDist:
    """What _ort_check reads of an importlib.metadata.Distribution."""

    def __init__(self, name, top_level=None, files=()):
        self.metadata = {"Name": name}
        self._top_level = top_level
        self.files = list(files)

    def read_text(self, filename):
        return self._top_level if filename == "top_level.txt" else None


def _fake_environment(monkeypatch, dists):
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))


def test_the_distributions_that_install_the_onnxruntime_package_are_found(monkeypatch):
    _fake_environment(monkeypatch, [
        _FakeDist("onnxruntime-gpu", "onnxruntime\n"),
        _FakeDist("numpy", "numpy\n"),
        _FakeDist("onnxruntime-extensions", "onnxruntime_extensions\n"),
        _FakeDist("onnxruntime-genai", "onnxruntime_genai\n"),
        _FakeDist("ort-nightly", None, ["onnxruntime/__init__.py", "onnxruntime/capi/x.so"]),
        _FakeDist("onnxruntime-tools", None, ["onnxruntime_tools/__init__.py"]),
        _FakeDist("onnxruntime", "onnxruntime\n"),
        _FakeDist("onnxruntime", "onnxruntime\n"),  # the same one on a second path
    ])
    assert _ort_check.onnxruntime_distributions() == ["onnxruntime", "onnxruntime-gpu",
                                                      "ort-nightly"]


def test_two_onnxruntime_distributions_warn_naming_both(monkeypatch):
    _fake_environment(monkeypatch, [_FakeDist("onnxruntime", "onnxruntime\n"),
                                    _FakeDist("onnxruntime-openvino", "onnxruntime\n")])
    with pytest.warns(oq.OnnxRuntimeConflictWarning) as record:
        _ort_check.check_onnxruntime()
    message = str(record[0].message)
    assert "onnxruntime, onnxruntime-openvino" in message
    assert "pip uninstall onnxruntime onnxruntime-openvino" in message


def test_one_onnxruntime_distribution_does_not_warn(monkeypatch):
    _fake_environment(monkeypatch, [_FakeDist("onnxruntime-gpu", "onnxruntime\n"),
                                    _FakeDist("onnxruntime-extensions",
                                              "onnxruntime_extensions\n")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ort_check.check_onnxruntime()


def test_no_onnxruntime_raises_a_typed_import_error_naming_the_extras(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(oq.OnnxRuntimeMissingError) as info:
        _ort_check.check_onnxruntime()
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, oq.MissingExtraError)
    assert "onnxquant[cpu]" in str(info.value) and "onnxquant[gpu]" in str(info.value)


def test_this_environment_has_the_one_distribution_that_was_imported():
    dists = _ort_check.onnxruntime_distributions()
    assert len(dists) == 1
    assert importlib.metadata.version(dists[0]) == onnxruntime.__version__


def test_import_onnxquant_without_onnxruntime_fails_with_the_typed_error():
    # A None entry in sys.modules makes `import onnxruntime` fail as if absent.
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "try:\n"
            "    import onnxquant\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.startswith("OnnxRuntimeMissingError ")
    assert "onnxquant[cpu]" in out
