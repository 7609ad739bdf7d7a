"""Noise sensitivity of the corpus's FP32 models (a diagnostic for docs/coverage.md).

A randomly initialised deep network can amplify a small perturbation layer by
layer. This bench measures how much: for each model, exported as bench/corpus.py
exports it (TorchScript, batch norm settled), the cosine of the FP32 output
with the input perturbed by Gaussian noise at a given signal-to-noise ratio,
against the FP32 output of the clean input. 8-bit quantization of one tensor
over its range is noise of roughly 40 dB; a model whose FP32 cosine already
falls below 0.99 from that one perturbation of its input cannot reach 0.99
with every tensor quantized.

    PYTHONPATH=python .venv/bin/python bench/corpus_noise.py mnasnet0_5 resnet18

Prints one line per model: the lowest cosine over three inputs, per SNR.
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


def perturbed_cosine(session, entry, snr_db: float, inputs: int = 3) -> float:
    """The lowest cosine, over ``inputs`` random inputs, of the output with the first
    input perturbed at ``snr_db`` to the output of the clean input."""
    names = [i.name for i in session.get_inputs()]
    cosines = []
    for i in range(inputs):
        sample = entry.inputs(np.random.default_rng(100 + i))
        reference = session.run(None, dict(zip(names, sample)))
        x = sample[0]
        noise = np.random.default_rng(7 + i).standard_normal(x.shape)
        noise *= np.sqrt(np.mean(x.astype(np.float64) ** 2) / 10 ** (snr_db / 10)
                         / np.mean(noise ** 2))
        noisy = [(x + noise).astype(x.dtype)] + list(sample[1:])
        cosines.append(corpus._cosine(reference, session.run(None, dict(zip(names, noisy)))))
    return min(cosines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--snr", type=float, nargs="+", default=[40.0, 50.0])
    args = parser.parse_args()
    entries = {e.name: e for e in corpus_models.corpus()}
    print("model | " + " | ".join(f"cos at {s:g} dB" for s in args.snr))
    for name in args.models:
        entry = entries[name]
        if not entry.name.startswith("hf_") and entry.family != "classification" \
                and entry.family != "segmentation":
            continue
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "model.onnx"
            corpus._export(entry, "torchscript", path)
            session = corpus._session(str(path))
            figures = [perturbed_cosine(session, entry, snr) for snr in args.snr]
        print(f"{name} | " + " | ".join(f"{c:.4f}" for c in figures), flush=True)


if __name__ == "__main__":
    main()
