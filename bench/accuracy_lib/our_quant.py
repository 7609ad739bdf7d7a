"""onnxquant's side: the method columns (``OurConfig``) and one Calibrator collection per set."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import onnx

import onnxquant as oq

from .common import _samples


def has_method_api() -> bool:
    """True once ``Calibrator.compute_range`` takes the method (one collection, ten methods)."""
    return "method" in inspect.signature(oq.Calibrator.compute_range).parameters


@dataclass(frozen=True)
class OurConfig:
    """An onnxquant column: a method, and Calibrator keywords that differ from the defaults."""

    method: str
    calibrator_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.calibrator_kwargs)
        return f"{self.method} ({extra})" if extra else self.method


def calibrator_default(name: str) -> object:
    p = inspect.signature(oq.Calibrator.__init__).parameters.get(name)
    return inspect.Parameter.empty if p is None else p.default


def our_configs(variants: bool) -> list[OurConfig]:
    """The ten methods with the Calibrator's defaults, then (``variants``) ENTROPY with the
    other ``ignore_zero_spike`` (ReLU outputs are mostly exact zeros; that spike decides the
    KL search) and the other ``clip_bounded_outputs`` (Sigmoid/Softmax outputs clipped or
    not), where this onnxquant has the options."""
    configs = [OurConfig(m.name) for m in oq.CalibrationMethod]
    for keyword in ("ignore_zero_spike", "clip_bounded_outputs"):
        default = calibrator_default(keyword)
        if variants and isinstance(default, bool):
            configs += [OurConfig(m, ((keyword, not default),))
                        for m in ("ENTROPY_ASYM", "ENTROPY_SYM")]
    return configs


def our_calibration(model: onnx.ModelProto, calibration: np.ndarray,
                    options: oq.QuantOptions, methods: list[oq.CalibrationMethod], **kwargs
                    ) -> dict[str, tuple[oq.Calibrator, dict[str, tuple[float, float]]] |
                              Exception]:
    """Method name -> (the Calibrator, its ranges), or the exception that method raised;
    ``kwargs`` go to the Calibrator. The Calibrator is what ``quantize(calibrator=...)``
    takes: with ``target="portable"`` it replays the Calibrator's first samples."""
    out: dict[str, tuple[oq.Calibrator, dict[str, tuple[float, float]]] | Exception] = {}
    if has_method_api():
        cal = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, options=options,
                            **kwargs)
        cal.collect_data(_samples(calibration))
        for m in methods:
            try:
                out[m.name] = (cal, cal.compute_range(m))
            except (NotImplementedError, oq.OnnxQuantError) as e:
                out[m.name] = e
        return out
    for m in methods:  # before the histogram Calibrator: one collection per method
        try:
            cal = oq.Calibrator(model, m, options=options, **kwargs)
        except NotImplementedError as e:
            out[m.name] = e
            continue
        cal.collect_data(_samples(calibration))
        out[m.name] = (cal, cal.compute_range())
    return out


def our_ranges(model: onnx.ModelProto, calibration: np.ndarray, options: oq.QuantOptions,
               methods: list[oq.CalibrationMethod], **kwargs
               ) -> dict[str, dict[str, tuple[float, float]] | Exception]:
    """Method name -> ranges (or the exception that method raised); ``kwargs`` go to the
    Calibrator."""
    return {k: v if isinstance(v, Exception) else v[1]
            for k, v in our_calibration(model, calibration, options, methods,
                                        **kwargs).items()}


def default_percentage() -> object:
    """The percentile PERCENTILE methods use by default (a Calibrator or compute_range
    parameter named ``percentage``)."""
    for function in (oq.Calibrator.compute_range, oq.Calibrator.__init__):
        p = inspect.signature(function).parameters.get("percentage")
        if p is not None and p.default not in (inspect.Parameter.empty, None):
            return p.default
    return "unknown"
