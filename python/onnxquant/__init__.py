"""onnxquant: post-training INT8 quantization of ONNX models.

In one call::

    import onnxquant as oq
    report = oq.quantize_model("model.onnx", "model.int8.onnx", samples)

The pipeline, in the style of FuriosaAI's quantizer, for control::

    import onnx, onnxquant as oq
    model = oq.optimize_model(onnx.load("model.onnx"))
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data(samples)
    ranges = calibrator.compute_range()
    quantized = oq.quantize(model, ranges)
    onnx.save(quantized, "model.int8.onnx")
"""

# Set before the submodules are imported: they read it.
__version__ = "0.1.0"

# Before anything imports onnxruntime: a typed error naming the extras when it
# is missing, a warning when two ORT distributions overwrite each other.
from onnxquant._ort_check import (
    OnnxRuntimeConflictWarning,
    OnnxRuntimeMissingError,
    check_onnxruntime,
)

check_onnxruntime()

from onnxquant.calibrator import CalibrationMethod, Calibrator
from onnxquant.analyze import (
    LayerAnalysis,
    RangeWarning,
    TensorAnalysis,
    analyze,
)
from onnxquant.errors import (
    CalibrationDataError,
    InternalError,
    InvalidArgumentError,
    MissingExtraError,
    ModelError,
    OnnxQuantError,
    QemuError,
    RangeMissingError,
    UnsupportedModelError,
)
from onnxquant._model import save_model
from onnxquant.editor import (
    ModelEditor,
    TensorQuantization,
    TensorType,
    get_output_names,
    get_pure_input_names,
    io_quantization,
)
from onnxquant.mixed_precision import MixedPrecisionResult, Promotion, mixed_precision
from onnxquant.optimize import FixedShapeWarning, optimize_model
from onnxquant.pipeline import quantize_model
from onnxquant.preprocessing import fold_preprocessing, pixel_tensor_name
from onnxquant.quantize import QuantOptions, quantize
from onnxquant.dynamic import DynamicReport, quantize_dynamic
from onnxquant import recovery
from onnxquant.recipes import (
    AdaRound,
    BiasCorrection,
    CrossLayerEqualization,
    Recipe,
    RecipeReport,
    RecipeResult,
    SmoothQuant,
    apply_recipe,
    recipes,
)
from onnxquant.pow2_ranges import power_of_two_activation_ranges
from onnxquant.ranges import load_ort_calibration, load_ranges, save_ranges, save_tensorrt_cache
from onnxquant.report import CalibrationReport, QuantizationReport

__all__ = [
    "AdaRound",
    "BiasCorrection",
    "CrossLayerEqualization",
    "Recipe",
    "RecipeReport",
    "RecipeResult",
    "SmoothQuant",
    "apply_recipe",
    "recipes",
    "power_of_two_activation_ranges",
    "CalibrationDataError",
    "CalibrationMethod",
    "CalibrationReport",
    "Calibrator",
    "DynamicReport",
    "FixedShapeWarning",
    "InternalError",
    "InvalidArgumentError",
    "LayerAnalysis",
    "MissingExtraError",
    "MixedPrecisionResult",
    "ModelEditor",
    "ModelError",
    "OnnxQuantError",
    "OnnxRuntimeConflictWarning",
    "OnnxRuntimeMissingError",
    "Promotion",
    "QemuError",
    "QuantOptions",
    "QuantizationReport",
    "RangeMissingError",
    "RangeWarning",
    "TensorAnalysis",
    "TensorQuantization",
    "TensorType",
    "UnsupportedModelError",
    "analyze",
    "fold_preprocessing",
    "get_output_names",
    "mixed_precision",
    "get_pure_input_names",
    "io_quantization",
    "load_ort_calibration",
    "load_ranges",
    "load_samples",
    "optimize_model",
    "pixel_tensor_name",
    "quantize",
    "quantize_dynamic",
    "quantize_model",
    "save_model",
    "save_ranges",
    "save_tensorrt_cache",
]


def __getattr__(name: str):
    # Lazy, so that ``python -m onnxquant.data`` runs a module not yet imported.
    if name == "load_samples":
        from onnxquant.data import load_samples

        return load_samples
    raise AttributeError(f"module 'onnxquant' has no attribute {name!r}")
