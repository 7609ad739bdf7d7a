"""Why a random-init vision transformer loses its class token to INT8 (docs/coverage.md).

``hf_deit`` keeps a fused cosine of 0.777 to FP32 in the corpus, ``hf_vit`` 0.98. Both
classify from one row of the residual stream (the class token, row 0), and activations
are quantized per tensor: the step of each residual tensor is set by its largest rows
(the patch tokens), whatever the size of row 0. This script measures that, on the
corpus's own export (TorchScript, ``INIT_SEED``), calibration (MIN_MAX_ASYM on the 8
samples of ``default_rng(1)``) and held-out sample (``default_rng(99)``):

1. Per residual-stream tensor (the quantized Concat and Add outputs of shape
   [1, tokens, hidden]): the quantization step, the RMS of row 0 and of the patch rows
   (FP32), and the SQNR of row 0 and of the patch rows in the INT8 model run emulated
   (the error accumulated up to that tensor), next to the SQNR that this tensor's own
   rounding alone gives row 0.
2. The fused cosine (ONNX Runtime, default session options) of the logits, on the held-out
   sample and as mean and minimum over 20 more (``default_rng(5)``), for: the defaults;
   the residual Adds (both inputs activations) at int16 or float (``overrides``), all of
   them, the first or last half, or one at a time (its output tensor at int16, or the
   node kept float, as ``exclude_nodes`` does); other calibration methods; and the
   same network re-exported with only its class/distillation tokens and position
   embeddings re-initialised: trunc-normal(0.02) as ``transformers`` initialises ViT's,
   or normal(0.28), the RMS of the patch rows.

    PYTHONPATH=python .venv/bin/python bench/cls_token_probe.py hf_deit hf_vit
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


def _export(entry, path: Path, tweak) -> None:
    """``corpus._export`` (TorchScript) with ``tweak(embeddings)`` applied after the build."""
    import torch

    torch.manual_seed(corpus.INIT_SEED)
    module = entry.build()
    corpus._settle_batch_norm(module, entry)
    module = module.eval()
    if tweak is not None:
        inner = module.model
        embeddings = getattr(inner, inner.base_model_prefix).embeddings
        with torch.no_grad():
            tweak(embeddings)
    args = tuple(torch.from_numpy(a) for a in entry.inputs(np.random.default_rng(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False,
                          opset_version=corpus.OPSETS["torchscript"],
                          input_names=list(entry.input_names))


def _tokens(init):
    def tweak(embeddings) -> None:
        for name in ("cls_token", "distillation_token", "position_embeddings"):
            if getattr(embeddings, name, None) is not None:
                init(getattr(embeddings, name))
    return tweak


def _with_outputs(model, names: list[str]):
    import onnx

    copy = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return copy


def _session(model, emulated: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if emulated:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _db(reference: np.ndarray, approx: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = np.sum((reference - approx) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


def _quantizers(quantized) -> dict[str, tuple[float, int]]:
    """Scale and zero point of each uint8 activation Q, keyed by the FP32 tensor name (the
    quantizer renames a producer's output to ``<name>_float``)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    found = {}
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3 \
                and values.get(node.input[2], np.zeros(0)).dtype == np.uint8:
            found[node.input[0].removesuffix("_float")] = (
                float(values[node.input[1]]), int(values[node.input[2]]))
    return found


def _row_table(model, quantized, sample, patches: int) -> list[str]:
    """The last ``patches`` rows are the patch tokens, those before them the class (and
    distillation) tokens."""
    qparams = _quantizers(quantized)
    names = [n.output[0] for n in model.graph.node
             if n.op_type in ("Add", "Concat") and n.output[0] in qparams]
    fp32 = dict(zip(names, _session(_with_outputs(model, names)).run(names, sample)))
    int8 = dict(zip(names, _session(_with_outputs(quantized, names), emulated=True)
                    .run(names, sample)))
    hidden = fp32[names[-1]].shape[-1]
    lines = ["| tensor | step | RMS row 0 | RMS patch rows | row 0 alone (dB) "
             "| row 0 accumulated (dB) | patch rows accumulated (dB) |", "|---" * 7 + "|"]
    for name in names:
        x, y = fp32[name], int8[name]
        if x.ndim != 3 or x.shape[-1] != hidden or x.shape[1] <= patches:
            continue
        special = x.shape[1] - patches
        scale, zero = qparams[name]
        alone = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
        label = name.split("/model/")[-1].split("/", 1)[-1].removesuffix("_output_0")
        lines.append(
            f"| {label} | {scale:.4f} | {np.sqrt(np.mean(x[0, 0] ** 2)):.4f} "
            f"| {np.sqrt(np.mean(x[0, special:] ** 2)):.4f} | {_db(x[0, 0], alone[0, 0]):.1f} "
            f"| {_db(x[0, 0], y[0, 0]):.1f} | {_db(x[0, special:], y[0, special:]):.1f} |")
    return lines


def _residual_adds(model) -> list[str]:
    constants = {t.name for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "Add" and not constants & set(n.input)
            and all(i in produced and produced[i].op_type != "Constant" for i in n.input)]


class _Case:
    """One exported network with the corpus's calibration and held-out samples."""

    def __init__(self, entry, path: Path) -> None:
        import onnxquant as oq

        self.model = oq.optimize_model(str(path))
        rng = np.random.default_rng(1)
        feeds = [corpus._feed(self.model, entry.inputs(rng))
                 for _ in range(corpus.CALIBRATION_SAMPLES)]
        self.feeds = feeds
        self.calibrator = oq.Calibrator(self.model, oq.CalibrationMethod.MIN_MAX_ASYM,
                                        threads=1)
        self.calibrator.collect_data(feeds)
        self.ranges = self.calibrator.compute_range()
        more = np.random.default_rng(5)
        self.held = [corpus._feed(self.model, entry.inputs(np.random.default_rng(99)))]
        self.held += [corpus._feed(self.model, entry.inputs(more)) for _ in range(20)]
        reference = _session(self.model)
        self.reference = [reference.run(None, s) for s in self.held]

    def quantize(self, overrides=None):
        import onnxquant as oq

        options = oq.QuantOptions(overrides=overrides or {})
        return oq.quantize(self.model, self.ranges, calibrator=self.calibrator,
                           options=options)

    def recalibrated(self, method: str):
        """The defaults with ranges from another calibration method."""
        import onnxquant as oq

        calibrator = oq.Calibrator(self.model, getattr(oq.CalibrationMethod, method), threads=1)
        calibrator.collect_data(self.feeds)
        return oq.quantize(self.model, calibrator.compute_range(), calibrator=calibrator)

    def cosines(self, quantized) -> str:
        session = _session(quantized)
        found = [corpus._cosine(r, session.run(None, s))
                 for r, s in zip(self.reference, self.held)]
        return f"{found[0]:.4f} | {np.mean(found[1:]):.4f} | {np.min(found[1:]):.4f}"


def probe(entry, workdir: Path) -> list[str]:
    import torch

    path = workdir / "model.onnx"
    _export(entry, path, None)
    case = _Case(entry, path)
    default = case.quantize()
    vision = corpus_models._VISION
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    lines = [f"### {entry.name}", ""] + _row_table(case.model, default, case.held[0], patches)
    lines += ["", "| variant | cosine (held-out) | mean of 20 | min of 20 |", "|---|---|---|---|",
              f"| defaults | {case.cosines(default)} |"]
    adds = _residual_adds(case.model)
    half = len(adds) // 2
    for label, group in ((f"{len(adds)} residual Adds", adds),
                         (f"first {half} residual Adds", adds[:half]),
                         (f"last {len(adds) - half} residual Adds", adds[half:])):
        for kind in ("int16", "float"):
            quantized = case.quantize({name: {"activation_type": kind} for name in group})
            lines.append(f"| {label} {kind} | {case.cosines(quantized)} |")
    produced = {n.name: n.output[0] for n in case.model.graph.node}
    for name in adds:
        label = name.split("/model/")[-1].split("/", 1)[-1]
        tensor = case.quantize({produced[name]: {"activation_type": "int16"}})
        kept = case.quantize({name: {"activation_type": "float"}})
        lines += [f"| {label}: output tensor int16 | {case.cosines(tensor)} |",
                  f"| {label}: node float | {case.cosines(kept)} |"]
    for method in ("PERCENTILE_ASYM", "MSE_ASYM", "ENTROPY_ASYM", "SQNR_ASYM", "MIN_MAX_SYM"):
        lines.append(f"| calibrated with {method} | {case.cosines(case.recalibrated(method))} |")
    inits = (("tokens and position embeddings trunc-normal(0.02)",
              lambda p: torch.nn.init.trunc_normal_(p, std=0.02)),
             ("tokens and position embeddings normal(0.28)",
              lambda p: torch.nn.init.normal_(p, std=0.28)),
             ("tokens and position embeddings zero", torch.nn.init.zeros_))
    for label, init in inits:
        variant = workdir / "variant.onnx"
        _export(entry, variant, _tokens(init))
        other = _Case(entry, variant)
        lines.append(f"| re-initialised: {label} | {other.cosines(other.quantize())} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="corpus vision transformers (hf_deit, hf_vit)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    entries = {e.name: e for e in corpus_models.corpus()}
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="cls-probe-") as tmp, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print("\n".join(probe(entries[name], Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
