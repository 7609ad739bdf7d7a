"""float_outputs: the last Gemm of a classifier writes float logits as ONNX
Runtime's QGemm (an integer kernel), instead of rounding them to 8 bits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxquant as oq
from onnxquant.datasets import load_fashion_mnist
from onnxquant.demo import default_model_path


@pytest.fixture()
def calibrated(small_cnn_model, image_batches):
    model = oq.optimize_model(small_cnn_model)
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM", collect="all")
    calibrator.collect_data(image_batches)
    return model, calibrator, image_batches


def _producer(model, tensor):
    return next(n for n in model.graph.node if tensor in n.output)


def test_logits_stay_float_and_run_as_qgemm(calibrated, run_model):
    model, calibrator, batches = calibrated
    ranges = calibrator.compute_range()
    output = model.graph.output[0].name
    float_out, report = oq.quantize(model, ranges, calibrator=calibrator, return_report=True)
    rounded = oq.quantize(model, ranges, calibrator=calibrator, float_outputs=False)
    assert _producer(float_out, output).op_type == "Gemm"
    assert _producer(rounded, output).op_type == "DequantizeLinear"
    gemm = next(n for n in report.quantized_nodes if n.op_type == "Gemm")
    assert gemm.runs_as == "com.microsoft:QGemm (integer)", gemm.runs_as
    assert output not in report.qdq_tensors

    x = np.concatenate(list(batches))
    (want,) = run_model(model, {"image": x})
    (got_float,) = run_model(float_out, {"image": x})
    (got_rounded,) = run_model(rounded, {"image": x})
    # The same integer Gemm, less one rounding of its output: never further from FP32.
    assert np.abs(got_float - want).mean() < np.abs(got_rounded - want).mean()
    # Rounded logits fall on one 8-bit grid (ties); float ones keep their own values.
    assert len(np.unique(got_rounded)) < len(np.unique(got_float))


def test_quantized_outputs_need_the_calibrator_to_know(calibrated):
    model, _, batches = calibrated
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")  # plans float logits
    calibrator.collect_data(batches)
    with pytest.raises(oq.InvalidArgumentError, match=r"float_outputs=False here, True in the"):
        oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                    float_outputs=False)


def test_remedy_of_a_float_output_gemm_says_so():
    """The demo CNN's classifier Gemm gets a kernel remedy: its reason must not
    compare the error with the rounding noise of an output that is not rounded."""
    model = oq.optimize_model(onnx.load(default_model_path()))
    train, _ = load_fashion_mnist("train")
    calibrator = oq.Calibrator(model, "MIN_MAX_ASYM")
    calibrator.collect_data(train[i:i + 1, None].astype(np.float32) / 255 for i in range(128))
    _, report = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                            return_report=True)
    text = str(report)
    gemm = [line for line in text.splitlines() if "Gemm" in line and "channel_range" in line]
    assert gemm, text
    assert all("its output is float" in line and "inf x" not in line for line in gemm), gemm
