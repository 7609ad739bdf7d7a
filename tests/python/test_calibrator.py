"""Calibrator: ranges from the data fed, sample checks, memory, reports."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

import onnxquant as oq
from onnxquant.calibrator import default_threads

ASYM = oq.CalibrationMethod.MIN_MAX_ASYM
SYM = oq.CalibrationMethod.MIN_MAX_SYM


@pytest.fixture()
def scale_shift(scale_shift_model):
    return oq.optimize_model(scale_shift_model)


def _rows(rng, count, low=-3.0, high=5.0):
    return [(rng.random((1, 8), dtype=np.float32) * (high - low) + low).astype(np.float32)
            for _ in range(count)]


def _expected_asym(values: np.ndarray) -> tuple[float, float]:
    return min(float(values.min()), 0.0), max(float(values.max()), 0.0)


def test_method_values_are_fixed():
    assert [m.value for m in oq.CalibrationMethod] == list(range(10))
    assert oq.CalibrationMethod.SQNR_SYM.name == "SQNR_SYM"


def test_minmax_asym_equals_numpy_over_uneven_chunks(scale_shift):
    rng = np.random.default_rng(0)
    samples = _rows(rng, 57)
    calibrator = oq.Calibrator(scale_shift, ASYM, batch_size=4)
    assert set(calibrator.tensors) == {"x", "t", "y"}
    for start, stop in [(0, 1), (1, 12), (12, 13), (13, 57)]:
        calibrator.collect_data(iter(samples[start:stop]))
    assert calibrator.num_samples == 57
    x = np.concatenate(samples)
    t = x * np.float32(2.0)
    y = t + np.float32(-1.0)
    ranges = calibrator.compute_range()
    assert ranges == {"x": _expected_asym(x), "t": _expected_asym(t), "y": _expected_asym(y)}
    assert all(type(v) is float for pair in ranges.values() for v in pair)
    assert json.loads(json.dumps(ranges)) == {k: list(v) for k, v in ranges.items()}


def test_asym_range_always_contains_zero(scale_shift):
    calibrator = oq.Calibrator(scale_shift, ASYM)
    calibrator.collect_data([np.full((1, 8), 3.0, np.float32)])
    ranges = calibrator.compute_range()
    assert ranges["x"] == (0.0, 3.0)
    assert ranges["y"] == (0.0, 5.0)


def test_minmax_sym(scale_shift):
    calibrator = oq.Calibrator(scale_shift, SYM)
    samples = [np.array([[0.5, 1, 2, 3, 4, 0.25, 1.5, 2.5]], np.float32)]
    calibrator.collect_data(samples)
    ranges = calibrator.compute_range()
    assert ranges["x"] == (0.0, 4.0)  # nothing negative: [0, a]
    assert ranges["y"] == (-7.0, 7.0)  # 2x - 1 spans [0, 7]
    calibrator.collect_data([np.full((1, 8), -6.0, np.float32)])
    assert calibrator.compute_range()["x"] == (-6.0, 6.0)


def test_batching_and_threads_do_not_change_ranges(scale_shift):
    samples = _rows(np.random.default_rng(1), 45, -10.0, 10.0)
    results = []
    for batch_size, threads in [(1, 1), (7, 2), (32, 3), (100, 1)]:
        calibrator = oq.Calibrator(scale_shift, ASYM, batch_size=batch_size, threads=threads)
        calibrator.collect_data(samples)
        results.append(calibrator.compute_range())
    assert all(r == results[0] for r in results[1:])


def test_a_generator_may_refill_one_buffer(scale_shift):
    # Statistics are added on a worker thread while the model runs on the next
    # sample; a generator that refills the buffer it yielded must still give
    # the statistics of what it yielded each time.
    samples = _rows(np.random.default_rng(2), 30, -4.0, 9.0)

    def refilled():
        buffer = np.empty((1, 8), np.float32)
        for s in samples:
            buffer[...] = s
            yield buffer

    results = []
    for source in (refilled(), [s.copy() for s in samples]):
        calibrator = oq.Calibrator(scale_shift, oq.CalibrationMethod.ENTROPY_SYM, batch_size=1)
        calibrator.collect_data(source)
        results.append({t: calibrator.histogram(t) for t in calibrator.tensors})
    for t in results[1]:
        low, width, counts = results[0][t]
        assert (low, width) == results[1][t][:2]
        np.testing.assert_array_equal(counts, results[1][t][2])


def test_batches_split_where_shapes_differ(parse_model):
    model = oq.optimize_model(parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, M] x) => (float[N, M] y) <float[1] two = {2.0}> { y = Mul(x, two) }
    """))
    samples = [np.full((1, width), float(k), np.float32)
               for k, width in enumerate([3, 3, 5, 5, 5, 3])]
    calibrator = oq.Calibrator(model, ASYM, batch_size=32)
    calibrator.collect_data(samples)
    assert calibrator.num_samples == 6
    assert calibrator.compute_range()["y"] == (0.0, 10.0)


def test_sample_forms_dict_list_array(scale_shift):
    x = np.array([[1, -2, 3, -4, 5, -6, 7, -8]], np.float32)
    calibrator = oq.Calibrator(scale_shift, ASYM)
    calibrator.collect_data([{"x": x}, [x * 2], x * 3])
    assert calibrator.num_samples == 3
    assert calibrator.compute_range()["x"] == (-24.0, 21.0)


def test_memory_does_not_grow_with_sample_count(scale_shift):
    big = np.random.default_rng(2).random((1, 8), dtype=np.float32)

    def stream(count):
        for i in range(count):
            yield big + np.float32(i % 5)

    calibrator = oq.Calibrator(scale_shift, ASYM, batch_size=16)
    calibrator.collect_data(stream(200))  # warm up
    tracemalloc.start()
    try:
        calibrator.collect_data(stream(200))
        after_few = tracemalloc.get_traced_memory()[0]
        calibrator.collect_data(stream(5000))
        after_many = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 5000 kept samples and outputs would hold > 500 kB; nothing may accumulate.
    assert after_many - after_few < 64 * 1024
    assert calibrator.num_samples == 5400


def test_nan_and_inf_in_intermediate_tensors_are_counted(parse_model):
    model = oq.optimize_model(parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4] x) => (float[1, 4] y) <float[1] c = {3.0}> {
            t = Log(x)
            y = Mul(t, c)
        }
    """))
    calibrator = oq.Calibrator(model, ASYM)
    assert set(calibrator.tensors) == {"t", "y"}
    calibrator.collect_data([np.array([[0.0, 1.0, np.e, -1.0]], np.float32)])
    ranges = calibrator.compute_range()
    assert ranges["t"] == pytest.approx((0.0, 1.0), abs=1e-6)  # -inf and NaN left out
    report = calibrator.report
    counts = {c.tensor: c for c in report.nonfinite}
    assert counts["t"].neg_inf == 1 and counts["t"].nan == 1
    assert counts["y"].neg_inf == 1
    assert report.degraded == ()
    assert "NaN" in str(report)


def test_tensor_without_finite_values_degrades_to_zero_range(parse_model):
    model = oq.optimize_model(parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4] x) => (float[1, 4] y) <float[1] c = {3.0}> {
            t = Log(x)
            y = Mul(t, c)
        }
    """))
    calibrator = oq.Calibrator(model, ASYM)
    calibrator.collect_data([np.zeros((1, 4), np.float32)])
    ranges = calibrator.compute_range()
    assert ranges == {"t": (0.0, 0.0), "y": (0.0, 0.0)}
    assert set(calibrator.report.degraded) == {"t", "y"}
    assert calibrator.report.to_dict()["nonfinite"][0]["neg_inf"] == 4


def test_progress_bar(scale_shift, capsys):
    calibrator = oq.Calibrator(scale_shift, ASYM)
    calibrator.collect_data(_rows(np.random.default_rng(3), 5), progress=True)
    assert "5/5" in capsys.readouterr().err
    # Samples left waiting for a batch by the first call are not counted again.
    calibrator.collect_data(_rows(np.random.default_rng(4), 30), progress=True)
    err = capsys.readouterr().err
    assert "30/30" in err and "35/30" not in err


def test_default_thread_budget_is_positive():
    assert default_threads() >= 1


# ---------------------------------------------------------------------------
# Bad samples and arguments
# ---------------------------------------------------------------------------

@pytest.fixture()
def calibrator(scale_shift):
    return oq.Calibrator(scale_shift, ASYM)


def test_unknown_input_name(calibrator):
    with pytest.raises(oq.CalibrationDataError, match=r"'image'.*inputs are 'x'"):
        calibrator.collect_data([{"image": np.zeros((1, 8), np.float32)}])


def test_missing_input_name(parse_model):
    model = oq.optimize_model(parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4] a, float[1, 4] b) => (float[1, 4] y) { y = Add(a, b) }
    """))
    calibrator = oq.Calibrator(model, ASYM)
    with pytest.raises(oq.CalibrationDataError, match=r"lacks input 'b'.*'a', 'b'"):
        calibrator.collect_data([{"a": np.zeros((1, 4), np.float32)}])
    with pytest.raises(oq.CalibrationDataError, match=r"1 arrays.*2 inputs"):
        calibrator.collect_data([[np.zeros((1, 4), np.float32)]])
    with pytest.raises(oq.CalibrationDataError, match="single array"):
        calibrator.collect_data([np.zeros((1, 4), np.float32)])


def test_wrong_dtype(calibrator):
    with pytest.raises(oq.CalibrationDataError,
                       match=r"Sample 0, input 'x': expected dtype float32, got float64"):
        calibrator.collect_data([np.zeros((1, 8))])


def test_wrong_shape(calibrator):
    with pytest.raises(oq.CalibrationDataError, match=r"'x'.*\[N, 8\].*\[1, 9\]"):
        calibrator.collect_data([np.zeros((1, 9), np.float32)])
    with pytest.raises(oq.CalibrationDataError, match=r"'x'.*\[N, 8\].*\[8\]"):
        calibrator.collect_data([np.zeros(8, np.float32)])


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_nonfinite_model_input_names_sample(calibrator, bad, word):
    good = np.zeros((1, 8), np.float32)
    broken = good.copy()
    broken[0, 3] = bad
    with pytest.raises(oq.CalibrationDataError, match=rf"Sample 2, input 'x' contains {word}"):
        calibrator.collect_data([good, good, broken])


def test_nonfinite_sample_is_named_inside_a_full_batch(scale_shift):
    # Stacked batches are checked for NaN/Inf as a whole: the sample named must
    # still be the one at fault, counted across batches and calls.
    calibrator = oq.Calibrator(scale_shift, ASYM, batch_size=8)
    samples = [np.full((1, 8), i, np.float32) for i in range(50)]
    calibrator.collect_data(samples[:5])
    samples[37] = samples[37].copy()
    samples[37][0, 6] = np.inf
    with pytest.raises(oq.CalibrationDataError, match=r"Sample 42, input 'x' contains Inf"):
        calibrator.collect_data(samples)


def test_sample_numbers_continue_across_calls(calibrator):
    calibrator.collect_data([np.zeros((1, 8), np.float32)] * 3)
    with pytest.raises(oq.CalibrationDataError, match="Sample 4"):
        calibrator.collect_data([np.zeros((1, 8), np.float32), np.zeros((1, 8), np.int32)])


def test_empty_calibration_set(calibrator):
    with pytest.raises(oq.CalibrationDataError, match="empty"):
        calibrator.compute_range()
    calibrator.collect_data([])
    with pytest.raises(oq.CalibrationDataError, match="empty"):
        calibrator.compute_range()


def test_array_of_samples(calibrator):
    samples = np.arange(3 * 1 * 8, dtype=np.float32).reshape(3, 1, 8)  # axis 0: samples
    calibrator.collect_data(samples)
    assert calibrator.num_samples == 3
    assert calibrator.compute_range()["x"] == (0.0, 23.0)


def test_array_instead_of_iterable_of_samples(calibrator):
    with pytest.raises(oq.CalibrationDataError, match=r"shape \[1, 8\].*\[sample\]"):
        calibrator.collect_data(np.zeros((1, 8), np.float32))
    with pytest.raises(oq.CalibrationDataError, match="iterable of samples"):
        calibrator.collect_data({"x": np.zeros((1, 8), np.float32)})


@pytest.mark.parametrize("kwargs, word", [
    ({"method": "MINMAX"}, "Unknown calibration method"),
    ({"method": 10}, "Unknown calibration method"),
    ({"percentage": 0}, "percentage"),
    ({"batch_size": 0}, "batch_size"),
    ({"threads": 0}, "threads"),
    ({"options": {"per_channel": False}}, "QuantOptions"),
])
def test_bad_arguments(scale_shift, kwargs, word):
    kwargs = {"method": ASYM, **kwargs}
    with pytest.raises(oq.InvalidArgumentError, match=word):
        oq.Calibrator(scale_shift, **kwargs)


@pytest.mark.parametrize("shape", [(0, 8), (1, 0)])
def test_empty_sample_is_refused_by_name(calibrator, shape):
    with pytest.raises(oq.CalibrationDataError,
                       match=rf"Sample 1, input 'x' is empty \(shape \[{shape[0]}, {shape[1]}\]\)"):
        calibrator.collect_data([np.ones((1, 8), np.float32), np.zeros(shape, np.float32)])


def test_chunking_does_not_change_the_batches(scale_shift, monkeypatch):
    """Samples that do not fill a batch wait for the next call: the runs, and
    so the ranges, depend on the sequence of samples only."""
    runs = []
    samples = _rows(np.random.default_rng(3), 20)
    for chunks in ([20], [1] * 20, [7, 6, 7]):
        calibrator = oq.Calibrator(scale_shift, ASYM, batch_size=8)
        session = calibrator._session
        sizes = []
        monkeypatch.setattr(calibrator, "_session", type("S", (), {
            "run": lambda self, names, feed: (sizes.append(len(feed["x"])),
                                              session.run(names, feed))[1]})())
        start = 0
        for size in chunks:
            calibrator.collect_data(samples[start:start + size])
            start += size
        assert calibrator.num_samples == 20
        ranges = calibrator.compute_range()
        runs.append((sizes, ranges))
    assert runs[0][0] == [8, 8, 4]
    assert runs[1] == runs[0] and runs[2] == runs[0]


def _state(calibrator, path):
    calibrator.save(path)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), data[8 + size:]


def _write_state(path, header, body, *, fix_checksum=True):
    import hashlib

    if fix_checksum:
        header = {**header, "body_sha256": hashlib.sha256(body).hexdigest()}
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


@pytest.fixture()
def saved(scale_shift, tmp_path):
    calibrator = oq.Calibrator(scale_shift, ASYM)
    calibrator.collect_data(_rows(np.random.default_rng(4), 10))
    path = tmp_path / "state.oqcal"
    header, body = _state(calibrator, path)
    return calibrator, path, header, body


def test_state_with_swapped_tensor_names_is_refused(saved, scale_shift):
    calibrator, path, header, body = saved
    assert calibrator.tensors == ("x", "t", "y")
    t, y = b"\x01\x00\x00\x00t", b"\x01\x00\x00\x00y"
    assert body.count(t) == 1 and body.count(y) == 1
    swapped = body.replace(t, b"\0SWAP").replace(y, t).replace(b"\0SWAP", y)
    _write_state(path, header, swapped, fix_checksum=False)
    with pytest.raises(oq.CalibrationDataError,
                       match=r"state '.*state\.oqcal' is corrupt \(its statistics do not "
                             "match their checksum"):
        oq.Calibrator.load(path, scale_shift, ASYM)
    # Even with a checksum that fits, the names are checked against the plan.
    _write_state(path, header, swapped)
    with pytest.raises(oq.CalibrationDataError,
                       match=r"state '.*state\.oqcal' is corrupt: its statistics name 'y' "
                             "where 't' was expected"):
        oq.Calibrator.load(path, scale_shift, ASYM)


def test_state_of_other_inputs_or_tensors_is_refused(saved, scale_shift):
    calibrator, path, header, body = saved
    _write_state(path, {**header, "inputs": [["x", "float32", [None, 16]]]}, body)
    with pytest.raises(oq.CalibrationDataError,
                       match=r"saved for a model with inputs x float32 \[None, 16\], and "
                             r"this model takes x float32 \[None, 8\]"):
        oq.Calibrator.load(path, scale_shift, ASYM)
    _write_state(path, {**header, "tensors": ["x", "y", "t"]}, body)
    with pytest.raises(oq.CalibrationDataError, match="calibrates other tensors"):
        oq.Calibrator.load(path, scale_shift, ASYM)
    _write_state(path, {**header, "model_sha256": "0" * 64}, body)
    with pytest.raises(oq.CalibrationDataError, match="saved for another model"):
        oq.Calibrator.load(path, scale_shift, ASYM)


@pytest.mark.parametrize("damage, word", [
    (lambda h, b: (h, b[:-3]), "do not match their checksum"),
    (lambda h, b: ({**h, "num_samples": "ten"}, b), "lacks a valid 'num_samples'"),
    (lambda h, b: ({**h, "stats_bytes": len(b) + 1}, b), "sizes do not fit"),
    (lambda h, b: ({**h, "format": "onnxquant.calibrator/2"}, b), "earlier onnxquant"),
])
def test_corrupt_state_gives_a_typed_error_naming_the_file(saved, scale_shift, damage, word):
    _calibrator, path, header, body = saved
    header, body = damage(header, body)
    _write_state(path, header, body, fix_checksum=word != "do not match their checksum")
    with pytest.raises(oq.CalibrationDataError, match=r"'.*state\.oqcal'") as info:
        oq.Calibrator.load(path, scale_shift, ASYM)
    assert word in str(info.value)


def test_state_round_trip_keeps_ranges(saved, scale_shift):
    calibrator, path, _header, _body = saved
    back = oq.Calibrator.load(path, scale_shift, ASYM)
    assert back.compute_range() == calibrator.compute_range()
    assert back.num_samples == 10


def test_vit_ranges_do_not_depend_on_the_chunks():
    """models/cifar's ViT: one sample per call used to run ONNX Runtime at
    batch 1, whose arithmetic differs in the last bits from batch 32's and
    changed a range; now the batches are the same whatever the chunks, and
    so are the ranges and the quantized model, bit for bit."""
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "cifar", "vit.onnx")
    model = oq.optimize_model(path)
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((1, 3, 32, 32), dtype=np.float32) for _ in range(40)]
    results = []
    for chunks in ([40], [1] * 40, [3, 17, 20]):
        calibrator = oq.Calibrator(model, ASYM)
        start = 0
        for size in chunks:
            calibrator.collect_data(samples[start:start + size])
            start += size
        ranges = calibrator.compute_range()
        quantized = oq.quantize(model, ranges, calibrator=calibrator)
        results.append((ranges, quantized.SerializeToString()))
    assert results[1] == results[0]
    assert results[2] == results[0]
