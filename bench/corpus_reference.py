"""onnxquant against ONNX Runtime's own quantizer on corpus models (a diagnostic for
docs/coverage.md).

A low cosine in the corpus can come from onnxquant or from the model (a random
network that amplifies small errors). This bench separates the two: each model is
exported as bench/corpus.py exports it (TorchScript, seeded random init, batch norm
settled), normalised by ``optimize_model``, calibrated on the same 8 random samples,
and quantized three ways:

- onnxquant's defaults (the corpus's headline; ``target="portable"``, which narrows
  the weights of channels whose 16-bit pair sums would saturate on CPUs without VNNI);
- onnxquant with ``target="exact"`` (full-range int8 weights everywhere);
- ``onnxruntime.quantization.quantize_static`` on the same normalised model and
  samples: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration.

Printed per model: the fused cosine (ONNX Runtime, default session options) of each
to the FP32 output on the corpus's held-out sample. Where onnxquant's ``exact`` and
ONNX Runtime's quantizer agree and both fall short, the loss is the model's.

    PYTHONPATH=python .venv/bin/python bench/corpus_reference.py inception_v3 googlenet
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus
import corpus_models
import corpus_report


def _ort_quantized(optimized: str, feeds: list[dict], out: str) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    quantize_static(optimized, out, Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def compare(entry, workdir: Path) -> dict[str, float | None]:
    """The fused cosines of the three quantized models of ``entry``."""
    import onnx

    import onnxquant as oq

    exported, optimized = workdir / "model.onnx", workdir / "model.opt.onnx"
    corpus._export(entry, "torchscript", exported)
    model = oq.optimize_model(str(exported))
    onnx.save(model, str(optimized))
    rng = np.random.default_rng(1)  # the corpus's calibration samples
    feeds = [corpus._feed(model, entry.inputs(rng)) for _ in range(corpus.CALIBRATION_SAMPLES)]
    calibrator = oq.Calibrator(model, oq.CalibrationMethod.MIN_MAX_ASYM, threads=1)
    calibrator.collect_data(feeds)
    ranges = calibrator.compute_range()
    sample = corpus._feed(model, entry.inputs(np.random.default_rng(99)))
    reference = corpus._session(str(exported)).run(None, sample)

    def cosine(path: Path) -> float | None:
        return corpus._cosine(reference, corpus._session(str(path)).run(None, sample))

    figures = {}
    for label, target in (("default", "portable"), ("exact", "exact")):
        path = workdir / f"model.{label}.onnx"
        onnx.save(oq.quantize(model, ranges, calibrator=calibrator, target=target), str(path))
        figures[label] = cosine(path)
    path = workdir / "model.ort.onnx"
    _ort_quantized(str(optimized), feeds, str(path))
    figures["onnxruntime"] = cosine(path)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    entries = {e.name: e for e in corpus_models.corpus()}
    print("model | onnxquant default | onnxquant target=exact | onnxruntime quantize_static")
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="corpus-ref-") as tmp, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figures = compare(entries[name], Path(tmp))
        print(f"{name} | " + " | ".join(corpus_report._num(c) for c in figures.values()),
              flush=True)


if __name__ == "__main__":
    main()
