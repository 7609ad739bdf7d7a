"""Ranges in and out: onnxquant's range files, TensorRT's calibration cache,
ONNX Runtime's calibration.json, and `onnxquant quantize --ranges`."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import onnxquant as oq
from onnxquant.cli import main
from onnxquant.ranges import RANGES_FORMAT, tensorrt_scale_hex

pytestmark = pytest.mark.smoke  # also run at the lower bounds (scripts/test_lower_bounds.sh)


@pytest.fixture()
def normalised(small_cnn_model):
    return oq.optimize_model(small_cnn_model)


@pytest.fixture()
def calibrated(normalised, image_batches):
    calibrator = oq.Calibrator(normalised, "MIN_MAX_ASYM", threads=1)
    calibrator.collect_data(image_batches)
    return calibrator, calibrator.compute_range()


def _write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- onnxquant's range files -------------------------------------------------


def test_round_trip_is_exact_and_keeps_order(tmp_path, normalised, calibrated):
    calibrator, ranges = calibrated
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges, model=calibrator)
    loaded = oq.load_ranges(path, model=normalised)
    assert loaded == ranges and list(loaded) == list(ranges)
    assert all(type(v) is float for pair in loaded.values() for v in pair)
    document = json.loads(path.read_text())
    assert document["format"] == RANGES_FORMAT
    assert document["method"] == "MIN_MAX_ASYM"  # the calibrator's
    assert document["model_sha256"] == calibrator._fingerprint
    # One tensor a line.
    assert sum('": [' in line for line in path.read_text().splitlines()) == len(ranges)


def test_floats_read_back_bit_for_bit(tmp_path):
    ranges = {"a": (-1 / 3, 2 / 3), "b": (-0.0, 5e-324), "c": (-3.4028234663852886e38, 1e-38),
              "d": (float(np.float32(0.1)), float(np.float32(0.1)))}
    path = tmp_path / "r.json"
    oq.save_ranges(path, ranges)
    loaded = oq.load_ranges(path)
    for name, (low, high) in ranges.items():
        assert struct.pack("<dd", *loaded[name]) == struct.pack("<dd", low, high)


def test_method_is_recorded_by_name(tmp_path):
    path = tmp_path / "r.json"
    oq.save_ranges(path, {"x": (0.0, 1.0)}, method=oq.CalibrationMethod.MSE_SYM)
    assert json.loads(path.read_text())["method"] == "MSE_SYM"
    oq.save_ranges(path, {"x": (0.0, 1.0)}, method="percentile_asym")
    assert json.loads(path.read_text())["method"] == "PERCENTILE_ASYM"
    oq.save_ranges(path, {"x": (0.0, 1.0)})
    assert json.loads(path.read_text())["method"] is None


def test_quantize_with_loaded_ranges_equals_quantize_with_computed(tmp_path, normalised,
                                                                   calibrated):
    _, ranges = calibrated
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges, model=normalised)
    first = oq.quantize(normalised, ranges, target="exact")
    second = oq.quantize(normalised, oq.load_ranges(path, normalised), target="exact")
    assert first.SerializeToString() == second.SerializeToString()


def test_fingerprint_does_not_depend_on_how_the_model_is_given(tmp_path, normalised,
                                                               calibrated):
    calibrator, ranges = calibrated
    model_path = tmp_path / "normalised.onnx"
    oq.save_model(normalised, model_path)
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges, model=str(model_path))
    assert json.loads(path.read_text())["model_sha256"] == calibrator._fingerprint
    assert oq.load_ranges(path, model=normalised.SerializeToString()) == ranges
    assert oq.load_ranges(path, model=calibrator) == ranges


def test_a_later_process_checks_the_file_against_the_same_model(tmp_path, small_cnn_model,
                                                               normalised, calibrated):
    # optimize_model in another process gives the same fingerprint: a range
    # file is checked against a model normalised again later.
    _, ranges = calibrated
    raw = tmp_path / "cnn.onnx"
    onnx.save(small_cnn_model, raw)
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges, model=normalised)
    code = ("import sys, onnxquant as oq; m = oq.optimize_model(sys.argv[1]); "
            "print(len(oq.load_ranges(sys.argv[2], m)))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code, str(raw), str(path)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(ranges))


def test_file_of_another_model_is_refused(tmp_path, calibrated, scale_shift_model):
    calibrator, ranges = calibrated
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges, model=calibrator)
    other = oq.optimize_model(scale_shift_model)
    with pytest.raises(oq.CalibrationDataError, match="saved for another model") as info:
        oq.load_ranges(path, model=other)
    assert str(path) in str(info.value)


def test_same_graph_other_weights_is_another_model(tmp_path, small_cnn_model, calibrated):
    calibrator, ranges = calibrated
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges, model=calibrator)
    tuned = onnx.ModelProto()
    tuned.CopyFrom(small_cnn_model)
    w1 = next(t for t in tuned.graph.initializer if t.name == "w1")
    w1.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w1) * 1.01, "w1"))
    with pytest.raises(oq.CalibrationDataError, match="another model"):
        oq.load_ranges(path, model=oq.optimize_model(tuned))


def test_tensor_the_model_lacks_is_named(tmp_path, normalised, calibrated):
    _, ranges = calibrated
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, {**ranges, "ghost": (0.0, 1.0)})  # no model: no fingerprint
    assert "ghost" in oq.load_ranges(path)  # nothing to check it against
    with pytest.raises(oq.CalibrationDataError, match="tensor 'ghost'") as info:
        oq.load_ranges(path, model=normalised)
    assert str(path) in str(info.value)


def test_unnormalised_model_is_refused(tmp_path, small_cnn_model, calibrated):
    _, ranges = calibrated
    path = tmp_path / "ranges.json"
    oq.save_ranges(path, ranges)
    with pytest.raises(oq.ModelError, match="optimize_model"):
        oq.load_ranges(path, model=small_cnn_model)
    with pytest.raises(oq.ModelError, match="optimize_model"):
        oq.save_ranges(path, ranges, model=small_cnn_model)


@pytest.mark.parametrize("value", ["[1.0, 0.5]", "[NaN, 1.0]", "[0.0, Infinity]",
                                   "[-Infinity, 0.0]", '"0.5"', "[1.0]", "[0, 1, 2]",
                                   "[true, 2.0]", '{"min": 0, "max": 1}', "null",
                                   '["0", "1"]'])
def test_invalid_range_in_file_names_tensor_and_file(tmp_path, value):
    path = _write(tmp_path / "r.json", f'{{"format": "{RANGES_FORMAT}", "method": null, '
                                       f'"model_sha256": null, "ranges": {{"ok": [0, 1], '
                                       f'"bad/tensor": {value}}}}}')
    with pytest.raises(oq.CalibrationDataError, match="tensor 'bad/tensor'") as info:
        oq.load_ranges(path)
    assert path in str(info.value) and "min <= max" in str(info.value)


@pytest.mark.parametrize("text, message", [
    ('{"format": "onnxquant.ranges/1", "ranges": {"a": [0, 1]', "is not JSON"),
    ("", "is not JSON"),
    ('{"ranges": {"a": [0, 1]}}', "not an onnxquant range file"),
    ('[["a", 0, 1]]', "not an onnxquant range file"),
    ('{"format": "onnxquant.ranges/9", "ranges": {}}', "does not read"),
    ('{"format": "onnxquant.ranges/1", "ranges": [["a", 0, 1]]}', "must be a dict"),
    ('{"format": "onnxquant.ranges/1", "ranges": {"a": [0, 1], "a": [0, 2]}}', "'a' twice"),
    ('{"format": "onnxquant.ranges/1", "model_sha256": 7, "ranges": {}}', "model_sha256"),
])
def test_file_that_is_not_a_range_file(tmp_path, text, message):
    path = _write(tmp_path / "r.json", text)
    with pytest.raises(oq.CalibrationDataError, match=message) as info:
        oq.load_ranges(path)
    assert path in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(oq.CalibrationDataError, match="cannot be read"):
        oq.load_ranges(tmp_path / "absent.json")


@pytest.mark.parametrize("value", [(1.0, 0.0), (math.nan, 1.0), (0.0, math.inf), (1.0,),
                                   "ab", None, (True, 1.0)])
def test_save_refuses_invalid_range_and_keeps_the_old_file(tmp_path, value):
    path = tmp_path / "r.json"
    oq.save_ranges(path, {"x": (0.0, 1.0)})
    before = path.read_bytes()
    with pytest.raises(oq.InvalidArgumentError, match="tensor 'y'"):
        oq.save_ranges(path, {"x": (0.0, 1.0), "y": value})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left


def test_save_checks_names_against_the_model(tmp_path, normalised):
    with pytest.raises(oq.InvalidArgumentError, match="tensor 'ghost'"):
        oq.save_ranges(tmp_path / "r.json", {"ghost": (0.0, 1.0)}, model=normalised)
    assert not (tmp_path / "r.json").exists()


def test_save_argument_errors(tmp_path):
    with pytest.raises(oq.InvalidArgumentError, match="Unknown calibration method"):
        oq.save_ranges(tmp_path / "r.json", {"x": (0.0, 1.0)}, method="MEDIAN")
    with pytest.raises(oq.InvalidArgumentError, match="must be a dict"):
        oq.save_ranges(tmp_path / "r.json", [("x", 0.0, 1.0)])
    with pytest.raises(oq.InvalidArgumentError, match="Cannot write"):
        oq.save_ranges(tmp_path / "no" / "r.json", {"x": (0.0, 1.0)})


def test_numpy_values_are_accepted(tmp_path):
    path = tmp_path / "r.json"
    oq.save_ranges(path, {"x": np.array([-1.5, 2.25], dtype=np.float32),
                          "y": (np.float32(0.1), np.float64(0.2))})
    assert oq.load_ranges(path) == {"x": (-1.5, 2.25), "y": (float(np.float32(0.1)), 0.2)}


# --- TensorRT's calibration cache --------------------------------------------

# Written by hand from TensorRT's documented format: a header
# TRT-<version>-<calibrator>, then "<tensor>: <float32 scale, big-endian hex>",
# scale = amax / 127: 1.27 / 127 = 0.01 is 0x3c23d70a, 2.54 / 127 = 0.02 is
# 0x3ca3d70a, 127 / 127 = 1.0 is 0x3f800000; a zero range gets 1e-8
# (0x322bcc77).
GOLDEN_TRT = """\
TRT-8601-EntropyCalibration2
input:0: 3f800000
conv1/out: 3c23d70a
neg: 3ca3d70a
dead: 322bcc77
"""


def test_tensorrt_cache_matches_the_golden_file(tmp_path):
    ranges = {"input:0": (0.0, 127.0), "conv1/out": (-0.5, 1.27), "neg": (-2.54, 1.0),
              "dead": (0.0, 0.0)}
    path = tmp_path / "calib.cache"
    oq.save_tensorrt_cache(path, ranges)
    assert path.read_text() == GOLDEN_TRT


def test_tensorrt_header_takes_version_and_calibrator(tmp_path):
    path = tmp_path / "calib.cache"
    oq.save_tensorrt_cache(path, {"x": (-1.27, 0.0)}, version=7000,
                           algorithm="MinMaxCalibration")
    assert path.read_text() == "TRT-7000-MinMaxCalibration\nx: 3c23d70a\n"


def test_tensorrt_scale_is_amax_over_127(calibrated, tmp_path):
    _, ranges = calibrated
    path = tmp_path / "calib.cache"
    oq.save_tensorrt_cache(path, ranges)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2" and len(lines) == len(ranges) + 1
    for line in lines[1:]:
        name, _, digits = line.rpartition(": ")
        scale = struct.unpack(">f", bytes.fromhex(digits))[0]
        low, high = ranges[name]
        assert scale == pytest.approx(max(abs(low), abs(high)) / 127, rel=1e-7)
    assert tensorrt_scale_hex(1.27) == "3c23d70a"


def test_tensorrt_cache_errors(tmp_path):
    path = tmp_path / "calib.cache"
    with pytest.raises(oq.InvalidArgumentError, match="version"):
        oq.save_tensorrt_cache(path, {"x": (0.0, 1.0)}, version="8601")
    with pytest.raises(oq.InvalidArgumentError, match="line break"):
        oq.save_tensorrt_cache(path, {"x\ny": (0.0, 1.0)})
    with pytest.raises(oq.InvalidArgumentError, match="tensor 'x'"):
        oq.save_tensorrt_cache(path, {"x": (2.0, 1.0)})
    assert not path.exists()


# --- ONNX Runtime's calibration.json -----------------------------------------


def test_ort_table_from_tensors_data(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    # Arrays, as ONNX Runtime's calibrators give them (numpy scalars serialise
    # only in versions after ONNX Runtime 1.22).
    values = {"a": (np.array([-1.25], np.float32), np.array([3.5], np.float32)),
              "b/c:0": (np.array(0.0, np.float32), np.array(0.1, np.float32))}
    write_calibration_table(TensorsData(CalibrationMethod.MinMax, values), dir=str(tmp_path))
    expected = {k: (float(lo.item()), float(hi.item())) for k, (lo, hi) in values.items()}
    assert oq.load_ort_calibration(tmp_path / "calibration.json") == expected
    assert oq.load_ort_calibration(tmp_path) == expected  # the directory it wrote to


def test_ort_table_from_a_dict_of_tensor_data(tmp_path):
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    table = {"x": TensorData(lowest=np.array([-0.5], np.float32),
                             highest=np.array([0.75], np.float32)),
             "y": TensorData(lowest=np.array(-2.0, np.float32), highest=np.array(2.0, np.float32),
                             hist=np.array([1, 2]), bins=np.array([0.0, 1.0, 2.0]))}
    write_calibration_table(table, dir=str(tmp_path))
    assert oq.load_ort_calibration(tmp_path) == {"x": (-0.5, 0.75), "y": (-2.0, 2.0)}


def test_older_list_form(tmp_path):
    path = _write(tmp_path / "calibration.json", '{"x": [-1.0, 2.0]}')
    assert oq.load_ort_calibration(path) == {"x": (-1.0, 2.0)}


def test_ort_calibration_quantizes_the_model(tmp_path, small_cnn_model, normalised,
                                             image_batches, calibrated):
    # ONNX Runtime calibrates the raw model; its ranges quantize the normalised one.
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.quant_utils import write_calibration_table

    raw = tmp_path / "cnn.onnx"
    onnx.save(small_cnn_model, raw)
    ort_calibrator = create_calibrator(str(raw), calibrate_method=CalibrationMethod.MinMax,
                                       augmented_model_path=str(tmp_path / "aug.onnx"))

    class Reader:  # ONNX Runtime's CalibrationDataReader protocol
        def __init__(self):
            self.rows = iter(image_batches)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"image": row}

    ort_calibrator.collect_data(Reader())
    write_calibration_table(ort_calibrator.compute_data(), dir=str(tmp_path))
    ranges = oq.load_ort_calibration(tmp_path, model=normalised)
    _, ours = calibrated
    assert set(ours) <= set(ranges)
    for name, (low, high) in ours.items():  # MIN_MAX_ASYM also contains 0
        assert min(ranges[name][0], 0.0) == pytest.approx(low, rel=1e-6, abs=1e-7)
        assert max(ranges[name][1], 0.0) == pytest.approx(high, rel=1e-6, abs=1e-7)
    quantized = oq.quantize(normalised, ranges)
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


def test_ort_table_with_model_keeps_the_model_tensors(tmp_path, normalised):
    path = _write(tmp_path / "calibration.json",
                  '{"image": [-1.0, 2.0], "bn_out_folded_away": [0.0, 1.0]}')
    assert oq.load_ort_calibration(path) == {"image": (-1.0, 2.0),
                                             "bn_out_folded_away": (0.0, 1.0)}
    assert oq.load_ort_calibration(path, model=normalised) == {"image": (-1.0, 2.0)}
    other = _write(tmp_path / "other.json", '{"q": [0.0, 1.0], "r": [0.0, 1.0]}')
    with pytest.raises(oq.CalibrationDataError, match="no tensor of the model"):
        oq.load_ort_calibration(other, model=normalised)


@pytest.mark.parametrize("entry", [
    '{"lowest": 2.0, "highest": 1.0, "CLS": "TensorData"}',
    ('{"lowest": {"data": NaN, "dtype": "float32", "CLS": "numpy.array"}, '
     '"highest": 1.0, "CLS": "TensorData"}'),
    '{"highest": 1.0, "CLS": "TensorData"}',
    '{"lowest": "low", "highest": 1.0, "CLS": "TensorData"}',
])
def test_invalid_ort_entry_names_tensor_and_file(tmp_path, entry):
    path = _write(tmp_path / "calibration.json", f'{{"good": [0, 1], "conv/out": {entry}}}')
    with pytest.raises(oq.CalibrationDataError, match="tensor 'conv/out'") as info:
        oq.load_ort_calibration(path)
    assert path in str(info.value)


def test_load_ranges_points_to_the_ort_reader(tmp_path):
    path = _write(tmp_path / "calibration.json",
                  '{"x": {"lowest": 0.0, "highest": 1.0, "CLS": "TensorData"}}')
    with pytest.raises(oq.CalibrationDataError, match="load_ort_calibration"):
        oq.load_ranges(path)


# --- the command line --------------------------------------------------------


@pytest.fixture()
def files(tmp_path, small_cnn_model, image_batches):
    model = tmp_path / "cnn.onnx"
    onnx.save(small_cnn_model, model)
    data = tmp_path / "cal.npz"
    np.savez(data, image=image_batches[:, 0])
    return tmp_path, str(model), str(data)


def test_cli_saves_ranges_and_quantizes_with_them(files, capsys):
    folder, model, data = files
    ranges = str(folder / "ranges.json")
    first, second = str(folder / "a.onnx"), str(folder / "b.onnx")
    assert main(["quantize", model, "-o", first, "--calibration-data", data, "-q",
                 "--target", "exact", "--save-ranges", ranges]) == 0
    capsys.readouterr()
    with open(ranges, encoding="utf-8") as f:
        assert json.load(f)["method"] == "MIN_MAX_ASYM"
    assert main(["quantize", model, "-o", second, "--ranges", ranges, "--target",
                 "exact"]) == 0
    captured = capsys.readouterr()
    assert "read ranges" in captured.out and "calibrate" not in captured.out
    assert onnx.load(first).SerializeToString() == onnx.load(second).SerializeToString()


def test_cli_refuses_ranges_of_another_model(files, tmp_path, capsys):
    folder, model, _ = files
    ranges = str(folder / "ranges.json")
    oq.save_ranges(ranges, {"image": (-1.0, 2.0)}, model=oq.optimize_model(
        onnx.parser.parse_model("""
            <ir_version: 8, opset_import: ["" : 13]>
            g (float[N, 4] image) => (float[N, 4] y) { y = Relu(image) }""")))
    assert main(["quantize", model, "-o", str(folder / "q.onnx"), "--ranges", ranges]) == 2
    err = capsys.readouterr().err
    assert "saved for another model" in err and ranges in err
    assert not (folder / "q.onnx").exists()


def test_cli_ranges_and_calibration_data_exclude_each_other(files, capsys):
    folder, model, data = files
    ranges = str(folder / "ranges.json")
    oq.save_ranges(ranges, {"image": (-1.0, 2.0)})
    with pytest.raises(SystemExit) as info:
        main(["quantize", model, "-o", str(folder / "q.onnx"), "--ranges", ranges,
              "--calibration-data", data])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["quantize", model, "-o", str(folder / "q.onnx"), "--ranges", ranges,
                 "--save-ranges", str(folder / "again.json")]) == 2
    assert "--save-ranges" in capsys.readouterr().err
    assert main(["quantize", model, "-o", ranges, "--ranges", ranges]) == 2
    assert "is an input" in capsys.readouterr().err
