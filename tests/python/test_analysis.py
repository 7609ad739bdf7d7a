"""Per-tensor error of an INT8 model against FP32."""

from __future__ import annotations

import numpy as np

import onnxquant as oq
from onnxquant.analysis import tensor_sqnr


def test_tensor_sqnr_ranks_a_clipped_tensor_lowest(small_cnn_model):
    model = oq.optimize_model(small_cnn_model)
    rng = np.random.default_rng(0)
    samples = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(20)]
    cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, batch_size=1)
    cal.collect_data(samples)
    ranges = cal.compute_range()
    good = tensor_sqnr(model, oq.quantize(model, ranges), samples)
    assert good and all(v > 20 for v in good.values()), good  # 8 bits: well above 20 dB
    # Shrink one tensor's range tenfold: it clips, and its SQNR falls below all others.
    victim = next(iter(ranges))
    lo, hi = ranges[victim]
    bad = tensor_sqnr(model, oq.quantize(model, {**ranges, victim: (lo / 10, hi / 10)}),
                      samples)
    assert next(iter(bad)) == victim
    assert bad[victim] < good[victim] - 10
