"""onnxquant: post-training INT8 quantization of ONNX models.

The pipeline, in the style of FuriosaAI's quantizer::

    import onnx, onnxquant as oq
    model = oq.optimize_model(onnx.load("model.onnx"))
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(samples)
    ranges = calibrator.compute_range()
    quantized = oq.quantize(model, ranges)
    onnx.save(quantized, "model.int8.onnx")
"""

from onnxquant.errors import (
    CalibrationDataError,
    InternalError,
    InvalidArgumentError,
    ModelError,
    OnnxQuantError,
    RangeMissingError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "CalibrationDataError",
    "InternalError",
    "InvalidArgumentError",
    "ModelError",
    "OnnxQuantError",
    "RangeMissingError",
    "UnsupportedModelError",
]
