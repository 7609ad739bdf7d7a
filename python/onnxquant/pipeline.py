"""One call from a float model file to a quantized one: :func:`quantize_model`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from onnxquant._model import ModelLike, data_file_name, model_files, save_model
from onnxquant.errors import InvalidArgumentError
from onnxquant.report import QuantizationReport

if TYPE_CHECKING:
    from onnxquant.recipes import RecipeReport

__all__ = ["quantize_model"]


def _reader_samples(reader) -> Iterator[object]:
    """The dicts an ONNX Runtime ``CalibrationDataReader`` returns, until
    ``get_next()`` returns None."""
    while True:
        sample = reader.get_next()
        if sample is None:
            return
        yield sample


def _samples(samples: object) -> Iterable[object]:
    # Duck typing: an ONNX Runtime CalibrationDataReader has get_next(), and
    # its base class's __len__ raises, so it is never iterated directly.
    if callable(getattr(samples, "get_next", None)):
        return _reader_samples(samples)
    if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Iterable):
        raise InvalidArgumentError(
            "samples must be an iterable of samples (each a dict by input name, a list "
            "of arrays in input order, or an array for a one-input model) or an ONNX "
            "Runtime CalibrationDataReader (an object with get_next()), got "
            f"{type(samples).__name__}.")
    return samples


def _options(options: dict[str, object]):
    from onnxquant.quantize import QuantOptions

    known = [f.name for f in dataclasses.fields(QuantOptions)]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise InvalidArgumentError(
            f"quantize_model got an unknown option '{unknown[0]}'; its options are those "
            f"of QuantOptions: {', '.join(known)}.")
    return QuantOptions(**options)


def _recipe_is_dynamic(recipe: object) -> bool:
    """Whether ``recipe`` (a Recipe, a preset's name or a JSON path) has
    options with mode="dynamic"; False where it cannot be loaded (loading it
    again in apply_recipe raises the error that names why)."""
    from onnxquant.errors import OnnxQuantError
    from onnxquant.recipes import Recipe

    try:
        loaded = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)
    except (OnnxQuantError, TypeError):
        return False
    return loaded.options.dynamic


def _refuse_overwrite(model: ModelLike, output: str) -> bool:
    """Raises InvalidArgumentError when ``output`` or its data file is the
    input model or one of its data files; returns whether the input keeps
    external data."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    inputs = model_files(model)
    data = os.path.join(os.path.dirname(os.path.abspath(output)), data_file_name(output))
    for target in (output, data):
        if os.path.realpath(target) in inputs or \
                os.path.realpath(target) == os.path.realpath(model):
            raise InvalidArgumentError(
                f"quantize_model: output '{output}' is the input model "
                f"'{os.fspath(model)}' (or one of its data files), which onnxquant never "
                "overwrites; choose another output path.")
    return len(inputs) > 1


def quantize_model(model: ModelLike, output: str | os.PathLike, samples: object = None,
                   method: object = "MIN_MAX_ASYM", *,
                   input_shapes: Mapping[str, object] | None = None,
                   percentage: float = 99.99, progress: bool = False,
                   recipe: object = None,
                   **options) -> QuantizationReport | RecipeReport:
    """Quantizes a float model in one call and writes the result.

    Runs :func:`~onnxquant.optimize_model`, a :class:`~onnxquant.Calibrator`
    with ``method`` over ``samples`` (``collect_data``, then
    ``compute_range``), :func:`~onnxquant.quantize` with the calibrator (so
    that ``target="portable"`` replays its samples), and
    :func:`~onnxquant.save_model` to ``output``: the steps of the
    furiosa-style API, which remains the way to reuse one calibration for
    several methods or options.

    Args:
        model: the float model: a path (read only; its external data is read
            from beside it), a ModelProto (not modified) or bytes.
        output: where the quantized model goes, written whole or not at all.
            It must not be the input model nor one of its data files. With
            external data in, external data out (``<output>.data``); else
            inline, unless past 2 GB.
        samples: an iterable of samples, as
            :meth:`~onnxquant.Calibrator.collect_data` takes (a sample is a
            dict by input name, a list of arrays in input order, or an array
            for a one-input model), or an ONNX Runtime
            ``CalibrationDataReader``: any object with ``get_next()``, read
            until it returns None. With ``mode="dynamic"`` (no calibration)
            they are not read and may be None (the default; static mode
            needs them).
        method: the :class:`~onnxquant.CalibrationMethod`, its name or value
            (default ``"MIN_MAX_ASYM"``, the command line's default).
        input_shapes: passed to :func:`~onnxquant.optimize_model` (default
            None).
        percentage: the percentile of PERCENTILE methods (default 99.99).
        progress: show a progress bar while calibrating (default False).
        recipe: a :class:`~onnxquant.Recipe`, a preset's name or a recipe
            JSON file's path (default None): run through
            :func:`~onnxquant.apply_recipe`, which takes the method and the
            options from the recipe (``method`` and ``**options`` must then
            be left at their defaults), and return its
            :class:`~onnxquant.RecipeReport`.
        **options: :class:`~onnxquant.QuantOptions` fields
            (``activation_type``, ``per_channel``, ``exclude_nodes``,
            ``op_types``, ``quantize_activation_matmul``,
            ``reduce_weight_range``, ``target``, ``kernel_remedy``,
            ``quantize_silu``, ``mode``, ...), given to both the calibrator
            and quantize. ``mode="dynamic"`` skips the calibrator: quantize
            runs without ranges.

    Returns:
        The :class:`~onnxquant.QuantizationReport`, with the calibration's
        report inside (with ``mode="dynamic"``, the
        :class:`~onnxquant.dynamic.DynamicReport`); with ``recipe``, the
        :class:`~onnxquant.RecipeReport`.

    Raises:
        InvalidArgumentError: an option that is not a QuantOptions field (named)
            or outside its domain, an unknown method, samples of another
            kind, or ``output`` that is the input (checked before any work).
        CalibrationDataError: no samples, or samples that do not fit the
            model.
        ModelError, UnsupportedModelError: as ``optimize_model``,
            ``Calibrator``, ``quantize`` and ``save_model`` raise them.
    """
    from onnxquant.calibrator import Calibrator, _method
    from onnxquant.optimize import optimize_model
    from onnxquant.quantize import quantize

    output = os.fspath(output)
    opts = _options(options)
    method = _method(method)
    dynamic = opts.dynamic or (recipe is not None and _recipe_is_dynamic(recipe))
    feed = None if dynamic and samples is None else _samples(samples)
    external = _refuse_overwrite(model, output)
    if recipe is not None:
        from onnxquant.recipes import apply_recipe

        if options or method.name != "MIN_MAX_ASYM":
            given = ", ".join(list(options) + (["method"] if method.name != "MIN_MAX_ASYM"
                                                else []))
            raise InvalidArgumentError(
                f"quantize_model got a recipe and also {given}; the recipe sets the method "
                "and the options: change them in the recipe instead.")
        result = apply_recipe(model, feed, recipe, input_shapes=input_shapes,
                              percentage=percentage, progress=progress)
        quantized, report = result.model, result.report
    elif opts.dynamic:
        normalised = optimize_model(model, input_shapes=input_shapes)
        quantized, report = quantize(normalised, None, options=opts, return_report=True)
    else:
        normalised = optimize_model(model, input_shapes=input_shapes)
        calibrator = Calibrator(normalised, method, percentage=percentage, options=opts)
        calibrator.collect_data(feed, progress=progress)
        ranges = calibrator.compute_range()
        quantized, report = quantize(normalised, ranges, options=opts, calibrator=calibrator,
                                     return_report=True)
    source = model if isinstance(model, (str, os.PathLike)) else None
    save_model(quantized, output, external_data=True if external else None, source=source)
    return report
